"""What every contrastive implementation shares: the three losses' static facts
(`LOSSES`) and the input checks of the public entry points (`api.py`, `ring.py`)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.backend import check_positive_int

F32 = jnp.float32
Metrics = dict[str, jax.Array]


class Loss(NamedTuple):
    """One contrastive loss: its name in messages, its embeddings and scalars."""

    name: str
    embeddings: tuple[str, str]
    scalars: tuple[str, ...]


LOSSES = {
    "softmax": Loss("softmax_contrastive", ("zimg", "ztxt"), ("log_t",)),
    "sigmoid": Loss("sigmoid_contrastive", ("zimg", "ztxt"), ("log_t", "b")),
    "nt_xent": Loss("nt_xent", ("z1", "z2"), ("tau",)),
}


def check_embeddings(name: str, x: Any, y: Any, x_name: str, y_name: str) -> None:
    """Raises ValueError unless x and y are float arrays of one shape [B, D], B, D >= 1."""
    for arg, arg_name in ((x, x_name), (y, y_name)):
        shape = jnp.shape(arg)
        if len(shape) != 2:
            raise ValueError(f"{name}: {arg_name} must be 2-D [B, D], got shape {shape}.")
        if not jnp.issubdtype(jnp.result_type(arg), jnp.floating):
            raise ValueError(f"{name}: {arg_name} must be floating, got {jnp.result_type(arg)}.")
        if 0 in shape:
            raise ValueError(f"{name}: {arg_name} must be non-empty, got shape {shape}.")
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(
            f"{name}: {x_name} {jnp.shape(x)} and {y_name} {jnp.shape(y)} must have the "
            "same [B, D] shape."
        )


def scalar_f32(name: str, value: Any, value_name: str) -> jax.Array:
    """A scalar (or size-1) parameter as an f32 [] array; ValueError otherwise."""
    if jnp.size(value) != 1:
        raise ValueError(f"{name}: {value_name} must be a scalar, got shape {jnp.shape(value)}.")
    return jnp.reshape(jnp.asarray(value), ()).astype(F32)


def check_inputs(
    loss: str, x: Any, y: Any, scalars: tuple[Any, ...], tile: Any, name: str | None = None
) -> tuple[int, tuple[jax.Array, ...]]:
    """Validates `LOSSES[loss]`'s inputs x, y [B, D], its scalars and the tile.

    Returns (tile, the scalars as f32 []); ValueError (prefixed `name`, by
    default the loss's) otherwise.
    """
    spec = LOSSES[loss]
    name = name or spec.name
    check_embeddings(name, x, y, *spec.embeddings)
    tile = check_positive_int(f"{name}: tile", tile)
    return tile, tuple(scalar_f32(name, v, k) for k, v in zip(spec.scalars, scalars))


def logit_params(loss: str, scalars: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """f32 scalars -> the logits' (scale,) or (scale, bias): exp(log_t) [, b], or 1 / tau."""
    if loss == "nt_xent":
        return (1.0 / scalars[0],)
    return (jnp.exp(scalars[0]), *scalars[1:])
