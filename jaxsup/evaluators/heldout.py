"""Transfer to classes a model did not train on: linear probe / k-NN restricted to `classes`.

Evaluators "heldout_linear_probe" and "heldout_knn" are "linear_probe" and "knn" on only
the examples (of both train_split and split) whose label is in cfg.classes (e.g.
(5, 6, 7, 8, 9)), relabelled 0..len(classes)-1 in that order. Other cfg fields as theirs.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from jaxsup import registry
from jaxsup.errors import ConfigError
from jaxsup.evaluators.knn import KnnEvaluator
from jaxsup.evaluators.linear_probe import LinearProbeEvaluator


def restrict(x: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x [N, D], y [N] with y in classes -> (x', y' relabelled by position in classes)."""
    classes = np.asarray(classes)
    keep = np.isin(y, classes)
    relabel = {int(c): i for i, c in enumerate(classes)}
    return x[keep], np.array([relabel[int(v)] for v in y[keep]], np.int64)


class HeldOutMixin:
    """Filters train_test_features to cfg.classes."""

    cfg: Any

    def train_test_features(self, predict):
        classes = tuple(self.cfg.get("classes", ()))
        if len(classes) < 2:
            raise ConfigError(f"{self.name} needs cfg.classes: at least two class ids, got {classes!r}.")
        x_train, y_train, x_test, y_test, _ = super().train_test_features(predict)
        return (*restrict(x_train, y_train, classes), *restrict(x_test, y_test, classes), len(classes))


@registry.register("evaluator", "heldout_linear_probe")
class HeldOutLinearProbe(HeldOutMixin, LinearProbeEvaluator):
    name = "heldout_linear_probe"


@registry.register("evaluator", "heldout_knn")
class HeldOutKnn(HeldOutMixin, KnnEvaluator):
    name = "heldout_knn"
