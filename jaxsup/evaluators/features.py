"""Shared by the representation evaluators: run predict over a split once, gather to host.

`extract(...)` returns NumPy arrays of the real (unpadded) rows in split order.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from jaxsup.data.loader import pipeline
from jaxsup.data.datasets import shards, sources
from jaxsup.data.loader.pipeline import eval_global_batches
from jaxsup.evaluators.base import Evaluator, Predict, eval_data_config  # noqa: F401 (re-exported)
from jaxsup.errors import ConfigError, DataError


def to_host(x: jax.Array) -> np.ndarray:
    """A global (possibly multi-process) array -> the full NumPy array on every process."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def extract(
    predict: Predict,
    data_cfg: Any,
    split: str,
    batch_size: int,
    sharding: jax.sharding.Sharding,
    inputs: Sequence[str],
    outputs: Sequence[str],
    keys: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """predict outputs and batch keys over a whole split, real rows only, in split order.

    Args:
      inputs: batch keys passed to predict (e.g. ("image",)), so only the needed towers run.
      outputs: predict output names to keep (e.g. ("zimg", "features")).
      keys: batch keys to keep as they are (e.g. ("label",)).
    Returns:
      {name: [N, ...]} for every name in outputs and keys.
    """
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in (*outputs, *keys)}
    for batch in eval_global_batches(data_cfg, split, batch_size, sharding):
        missing = [k for k in (*inputs, *keys) if k not in batch]
        if missing:
            raise DataError(f"Split {split!r} of {data_cfg.name!r}: eval batches lack {missing}; have {sorted(batch)}.")
        out = predict({k: batch[k] for k in inputs})
        absent = [k for k in outputs if k not in out]
        if absent:
            raise ConfigError(f"The task's predict returned {sorted(out)}, not {absent}.")
        real = to_host(batch["mask"]) > 0
        for k in outputs:
            chunks[k].append(to_host(out[k])[real])
        for k in keys:
            chunks[k].append(to_host(batch[k])[real])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def predict_rows(
    predict: Predict, inputs: dict[str, np.ndarray], output: str, batch_size: int, sharding: jax.sharding.Sharding
) -> np.ndarray:
    """predict over host arrays (same on every process) [N, ...] in global batches -> output [N, ...]."""
    n = len(next(iter(inputs.values())))
    local = pipeline.local_batch_size(batch_size)
    start = jax.process_index() * local
    rows = []
    for k in range(0, n, batch_size):
        idx = np.minimum(np.arange(k, k + batch_size), n - 1)[start : start + local]
        batch = pipeline.to_global({name: v[idx] for name, v in inputs.items()}, sharding)
        rows.append(to_host(predict(batch)[output]))
    return np.concatenate(rows)[:n]


def dataset_class_names(data_cfg: Any, label_key: str = "label") -> tuple[str, ...]:
    """Names of the ClassLabel feature `label_key` of data_cfg's dataset; ValueError if it has none."""
    if data_cfg.get("path"):  # converted by jaxsup.data.convert: an image folder keeps its class names
        names = shards.class_names(data_cfg.path, data_cfg.train_split)
        if not names or label_key != "label":
            raise DataError(f"Zero-shot class names missing: set the evaluator's class_names ({data_cfg.path!r} "
                            "is not an image-folder conversion).")
        return tuple(names)
    features = sources.dataset_info(data_cfg.name, data_cfg.get("data_dir") or None).features
    feature = features[label_key] if label_key in features else None
    names = getattr(feature, "names", None)
    if not names:
        raise DataError(
            f"Zero-shot class names missing: set the evaluator's class_names, or use a dataset whose "
            f"{label_key!r} is a ClassLabel (dataset {data_cfg.name!r} has features {sorted(features)})."
        )
    return tuple(names)


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """[N, D] rows scaled to unit L2 norm (float32)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """[N] 1.0 where labels[i] is among the k highest scores[i] (ties: strict-greater rank)."""
    true = np.take_along_axis(scores, labels[:, None].astype(np.int64), axis=1)
    rank = (scores > true).sum(axis=1)
    return (rank < k).astype(np.float64)


class TrainTestFeatureEvaluator(Evaluator):
    """Base of evaluators that fit on features of cfg.train_split and test on cfg.split.

    cfg: train_split, split, batch_size, output ("features"), label_key ("label").
    """

    name = "feature evaluator"

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        if not cfg.get("train_split"):
            raise ConfigError(f"{self.name} needs cfg.train_split (the split it fits on) and cfg.split.")
        super().__init__(cfg, data_cfg, batch_sharding)

    def train_test_features(self, predict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(x_train [N, D], y_train [N], x_test [M, D], y_test [M], num_classes) from `predict`."""
        cfg = self.cfg
        output, label_key = cfg.get("output", "features"), cfg.get("label_key", "label")
        get = functools.partial(extract, predict, self.data_cfg, batch_size=cfg.batch_size, sharding=self.sharding,
                                inputs=("image",), outputs=(output,), keys=(label_key,))
        train, test = get(split=cfg.train_split), get(split=cfg.split)
        y_train, y_test = train[label_key].astype(np.int64), test[label_key].astype(np.int64)
        num_classes = cfg.get("num_classes") or int(max(y_train.max(), y_test.max())) + 1
        return train[output], y_train, test[output], y_test, num_classes
