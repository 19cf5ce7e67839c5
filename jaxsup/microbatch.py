"""Cutting a global batch into micro-batches (gradient accumulation, GradCache).

Micro-batch i holds rows i, i+k, i+2k, ...: every device keeps an equal
share of each micro-batch, so no data moves between devices.
"""
from __future__ import annotations

from typing import Any

import jax

from jaxsup.errors import ConfigError


def check_micro_batches(batch_size: int, k: int, shards: int, field: str) -> None:
    """Raises ConfigError unless k >= 1 micro-batches divide the per-device batch.

    Args:
      batch_size: global batch size; shards: devices the batch is split over;
      field: the config key that set k, for the message (e.g. "grad_accum_steps").
    """
    if k < 1:
        raise ConfigError(f"config.{field} must be >= 1, got {k}.")
    if batch_size % (k * shards):
        raise ConfigError(
            f"config.{field}={k} micro-batches do not divide the per-device batch "
            f"(batch_size={batch_size} over {shards} devices)."
        )


def split_micro_batches(batch: dict[str, jax.Array], k: int, sharding: jax.sharding.Sharding | None) -> Any:
    """[B, ...] -> [k, B/k, ...] with micro-batch i = rows i::k (leaf by leaf)."""

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"{k} micro-batches do not divide the batch dimension {x.shape[0]}.")
        y = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        return y if sharding is None else jax.lax.with_sharding_constraint(y, sharding)

    return jax.tree.map(split, batch)
