"""The evaluator interface.

An evaluator subclasses `Evaluator`, is registered with
`registry.register("evaluator", name)`, is built as
`Evaluator(cfg, data_cfg, batch_sharding)` (cfg = one entry of config.evals,
data_cfg = config.data), and `evaluate(predict)` returns a dict of metrics,
where `predict(batch)` maps a global batch to the task's outputs (e.g.
{"logits": [B, K]}). Evaluators read data through `self.batches(split)`
(jaxsup.data.loader.pipeline.eval_global_batches) and never import tasks. An entry
may name its own dataset: cfg.dataset (+ cfg.data_dir) and cfg.preprocess
override config.data for that evaluator only.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import ml_collections

from jaxsup.data.loader.pipeline import eval_global_batches

Predict = Callable[[dict[str, jax.Array]], dict[str, jax.Array]]


def eval_data_config(cfg: Any, data_cfg: Any) -> ml_collections.ConfigDict:
    """data_cfg with the evaluator's overrides: cfg.dataset -> name, cfg.data_dir, cfg.path, cfg.preprocess."""
    out = ml_collections.ConfigDict(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg))
    if cfg.get("dataset"):
        out.name = cfg.dataset
        out.data_dir = cfg.get("data_dir", "")
        out.path = cfg.get("path", "")  # a converted dataset (jaxsup.data.convert), else the TFDS name
    if cfg.get("preprocess"):
        out.eval_preprocess = tuple(cfg.preprocess)
    return out


class Evaluator:
    """Keeps cfg, the evaluator's data config and the batch sharding; subclasses define evaluate()."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        self.cfg = cfg
        self.data_cfg = eval_data_config(cfg, data_cfg)
        self.sharding = batch_sharding

    def batches(self, split: str | None = None) -> Iterator[dict[str, jax.Array]]:
        """Global eval batches of `split` (default cfg.split); padding rows have mask 0."""
        return eval_global_batches(self.data_cfg, split or self.cfg.split, self.cfg.batch_size, self.sharding)

    def evaluate(self, predict: Predict) -> dict[str, float]:
        """Metrics of the task's outputs over the evaluator's split."""
        raise NotImplementedError
