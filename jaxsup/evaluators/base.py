"""Evaluator plumbing: eval data for a split, and a jitted predict over it.

An evaluator is registered with `registry.register("evaluator", name)`, is
built as `Evaluator(cfg, data_cfg, batch_sharding)` (cfg = one entry of
config.evals, data_cfg = config.data), and
`evaluate(predict)` returns a dict of metrics, where `predict(batch)` maps a
global batch to the task's outputs (e.g. {"logits": [B, K]}).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import jax

from jaxsup.data import pipeline, preprocess, sources

Predict = Callable[[dict[str, jax.Array]], dict[str, jax.Array]]


@functools.lru_cache(maxsize=None)
def eval_source(name: str, split: str, data_dir: str | None) -> Any:
    """The split's data source, opened once per process (evaluations repeat every K steps)."""
    return sources.open_source(name, split, data_dir)


def eval_global_batches(
    data_cfg: Any, split: str, batch_size: int, sharding: jax.sharding.Sharding
) -> Iterator[dict[str, jax.Array]]:
    """Global, sharded, padded batches of `split` (with a "mask" [B])."""
    source = eval_source(data_cfg.name, split, data_cfg.data_dir or None)
    pre = preprocess.build(data_cfg.get("eval_preprocess") or data_cfg.preprocess)
    for local in pipeline.eval_batches(source, pre, batch_size):
        yield pipeline.to_global(local, sharding)
