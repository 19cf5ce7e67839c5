"""The Task interface: one training objective, chosen by `config.task`.

A task owns its model(s) and turns a batch into a loss. train.py never
branches on the method: it calls only these methods.

  init(rng, batch)                 -> (params, task_state)
  warm_start(params, task_state)   -> (params, task_state) after a fresh init, never on
                                      resume (e.g. pretrained weights onto their shardings)
  load_frozen()                    -> frozen pytree (e.g. teacher params), {} if none
  loss_fn(params, task_state, frozen, batch, rng, step)
                                   -> (loss, (metrics, new_task_state))
  predict(params, task_state, frozen, batch) -> dict of outputs for evaluators

`task_state` is checkpointed with the params but gets no gradients (BatchNorm
statistics, EMA teachers, per-example buffers). `frozen` is restored at
start-up and never saved or updated.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxsup import registry

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def build_model(name: str, kwargs: Any) -> nn.Module:
    """registry model `name` constructed from a ConfigDict/dict of kwargs."""
    cls = registry.get("model", name)
    kwargs = kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"Model {name!r} rejects config.model kwargs {sorted(kwargs)}: {err}") from err


def split_variables(variables: Any) -> tuple[Any, Any]:
    """flax variables -> (params, the other collections e.g. batch_stats)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of values [B] over rows with mask [B] == 1 (all rows if mask is None)."""
    values = values.astype(jnp.float32)
    if mask is None:
        return values.mean()
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


class Task:
    """Base class: subclasses set up models in __init__ and implement the methods."""

    def __init__(self, config: Any, mesh: Mesh):
        self.config = config
        self.mesh = mesh

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
        raise NotImplementedError

    def warm_start(self, params: Any, task_state: Any) -> tuple[Any, Any]:
        return params, task_state

    def load_frozen(self) -> Any:
        return {}

    def loss_fn(self, params, task_state, frozen, batch: Batch, rng: jax.Array, step: jax.Array):
        raise NotImplementedError

    def predict(self, params, task_state, frozen, batch: Batch) -> dict[str, jax.Array]:
        raise NotImplementedError
