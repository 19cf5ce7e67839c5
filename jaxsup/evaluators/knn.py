"""Cosine k-nearest-neighbour classification on frozen features (evaluator "knn").

Each example of `split` takes the k most cosine-similar examples of
`train_split` and votes for their labels; weighting "uniform" gives each
neighbour one vote, "similarity" gives exp(sim / temperature) (Wu et al.
2018, DINO). The class with most votes wins (ties: the lowest class id).
Reports top1, count.

cfg fields: split, train_split, batch_size, k (20), weighting ("similarity"),
temperature (0.07), output ("features"), label_key ("label"); optional
dataset / data_dir / preprocess.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from jaxsup import registry
from jaxsup.evaluators.base import Predict
from jaxsup.evaluators.features import eval_data_config, extract, normalize_rows

WEIGHTINGS = ("uniform", "similarity")


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, num_classes: int,
    weighting: str = "similarity", temperature: float = 0.07, chunk: int = 1024,
) -> np.ndarray:
    """[M] predicted labels of test_x [M, D] from train_x [N, D], train_y [N] by cosine k-NN."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown knn weighting {weighting!r}; expected one of {WEIGHTINGS}.")
    k = min(k, len(train_x))
    train_x = normalize_rows(train_x)
    preds = []
    for s in range(0, len(test_x), chunk):
        sims = normalize_rows(test_x[s : s + chunk]) @ train_x.T  # [m, N]
        nbr = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        nbr_sims = np.take_along_axis(sims, nbr, axis=1)
        weights = np.ones_like(nbr_sims) if weighting == "uniform" else np.exp(nbr_sims / temperature)
        votes = np.zeros((len(sims), num_classes))
        np.add.at(votes, (np.arange(len(sims))[:, None], train_y[nbr]), weights)
        preds.append(votes.argmax(axis=1))
    return np.concatenate(preds)


@registry.register("evaluator", "knn")
class KnnEvaluator:
    """See the module docstring."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        if not cfg.get("train_split"):
            raise ValueError("knn needs cfg.train_split (the neighbours' split) and cfg.split.")
        if cfg.get("weighting", "similarity") not in WEIGHTINGS:
            raise ValueError(f"Unknown knn weighting {cfg.weighting!r}; expected one of {WEIGHTINGS}.")
        self.cfg = cfg
        self.data_cfg = eval_data_config(cfg, data_cfg)
        self.sharding = batch_sharding

    def evaluate(self, predict: Predict) -> dict[str, float]:
        cfg = self.cfg
        output, label_key = cfg.get("output", "features"), cfg.get("label_key", "label")
        get = functools.partial(extract, predict, self.data_cfg, batch_size=cfg.batch_size, sharding=self.sharding,
                                inputs=("image",), outputs=(output,), keys=(label_key,))
        train, test = get(split=cfg.train_split), get(split=cfg.split)
        y_train, y_test = train[label_key].astype(np.int64), test[label_key].astype(np.int64)
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        pred = knn_predict(train[output], y_train, test[output], int(cfg.get("k", 20)), num_classes,
                           cfg.get("weighting", "similarity"), float(cfg.get("temperature", 0.07)))
        return {"top1": float((pred == y_test).mean()), "count": float(len(y_test))}
