"""Linear probe on frozen features (evaluator "linear_probe").

Features of `train_split` and `split` (predict output `output`, default
"features") are standardised with the train mean/std; a multinomial logistic
regression `softmax(x W + b)` is fit full-batch with optax L-BFGS on
  mean_i CE(x_i W + b, y_i) + (l2 / 2) ||W||^2
(b not penalised), from zeros, for `steps` iterations. Reports top1 on
`split`, train_top1, count.

cfg fields: split, train_split, batch_size, output ("features"), label_key
("label"), l2 (1e-4), steps (300), num_classes (default: max label + 1);
optional dataset / data_dir / preprocess.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsup import registry
from jaxsup.evaluators.base import Predict
from jaxsup.evaluators.features import TrainTestFeatureEvaluator


def standardize(train: np.ndarray, test: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) [N, D] minus the train mean, divided by the train std (+eps)."""
    mean, std = train.mean(axis=0), train.std(axis=0) + eps
    return (train - mean) / std, (test - mean) / std


def probe_objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, l2: float) -> jax.Array:
    """mean CE of x [N, D] @ W [D, K] + b [K] against y [N], plus l2/2 ||W||^2."""
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic_regression(x: jax.Array, y: jax.Array, num_classes: int, l2: float, steps: int) -> dict[str, jax.Array]:
    """L-BFGS fit of the probe on x [N, D] f32, y [N] int -> {"w": [D, K], "b": [K]}."""
    params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32), "b": jnp.zeros((num_classes,), jnp.float32)}
    objective = functools.partial(probe_objective, x=x, y=y, l2=l2)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(params, updates), state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, solver.init(params)))
    return params


def probe_accuracy(params: dict[str, jax.Array], x: np.ndarray, y: np.ndarray) -> float:
    logits = np.asarray(x @ np.asarray(params["w"]) + np.asarray(params["b"]))
    return float((logits.argmax(axis=1) == y).mean())


@registry.register("evaluator", "linear_probe")
class LinearProbeEvaluator(TrainTestFeatureEvaluator):
    """See the module docstring."""

    name = "linear_probe"

    def evaluate(self, predict: Predict) -> dict[str, float]:
        cfg = self.cfg
        x_train, y_train, x_test, y_test, num_classes = self.train_test_features(predict)
        x_train, x_test = standardize(x_train.astype(np.float32), x_test.astype(np.float32))
        y_train, y_test = y_train.astype(np.int32), y_test.astype(np.int32)
        params = fit_logistic_regression(
            jnp.asarray(x_train), jnp.asarray(y_train), num_classes, float(cfg.get("l2", 1e-4)), int(cfg.get("steps", 300))
        )
        return {"top1": probe_accuracy(params, x_test, y_test), "train_top1": probe_accuracy(params, x_train, y_train),
                "count": float(len(y_test))}
