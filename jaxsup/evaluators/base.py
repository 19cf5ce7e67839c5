"""The evaluator interface.

An evaluator is registered with `registry.register("evaluator", name)`, is
built as `Evaluator(cfg, data_cfg, batch_sharding)` (cfg = one entry of
config.evals, data_cfg = config.data), and `evaluate(predict)` returns a dict
of metrics, where `predict(batch)` maps a global batch to the task's outputs
(e.g. {"logits": [B, K]}). Evaluators read data through
`jaxsup.data.pipeline.eval_global_batches` and never import tasks.
"""
from __future__ import annotations

from typing import Callable

import jax

Predict = Callable[[dict[str, jax.Array]], dict[str, jax.Array]]
