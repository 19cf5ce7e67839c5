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

from typing import Any

import jax
import numpy as np

from jaxsup import registry
from jaxsup.evaluators.base import Predict
from jaxsup.evaluators.features import TrainTestFeatureEvaluator, normalize_rows
from jaxsup.errors import ConfigError

WEIGHTINGS = ("uniform", "similarity")


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, num_classes: int,
    weighting: str = "similarity", temperature: float = 0.07, chunk: int = 1024,
) -> np.ndarray:
    """[M] predicted labels of test_x [M, D] from train_x [N, D], train_y [N] by cosine k-NN."""
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"Unknown knn weighting {weighting!r}; expected one of {WEIGHTINGS}.")
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
class KnnEvaluator(TrainTestFeatureEvaluator):
    """See the module docstring."""

    name = "knn"

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        if cfg.get("weighting", "similarity") not in WEIGHTINGS:
            raise ConfigError(f"Unknown knn weighting {cfg.weighting!r}; expected one of {WEIGHTINGS}.")
        super().__init__(cfg, data_cfg, batch_sharding)

    def evaluate(self, predict: Predict) -> dict[str, float]:
        cfg = self.cfg
        x_train, y_train, x_test, y_test, num_classes = self.train_test_features(predict)
        pred = knn_predict(x_train, y_train, x_test, int(cfg.get("k", 20)), num_classes,
                           cfg.get("weighting", "similarity"), float(cfg.get("temperature", 0.07)))
        return {"top1": float((pred == y_test).mean()), "count": float(len(y_test))}
