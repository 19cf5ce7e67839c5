"""What every contrastive implementation shares: the three losses' static facts
(`LOSSES`), the input checks of the public entry points (`api.py`, `ring.py`),
NT-Xent's reductions and `stored_f32`, the embeddings' values as a kernel reads them."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

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


# NT-Xent's reduction -> its factor on the mean over the 2N views. "mean" (jaxsup's
# default) is exactly half of official SimCLR's `loss_a + loss_b` (each the mean CE of
# one view's N rows), values and gradients; "simclr" is that official sum.
NT_XENT_REDUCTIONS = {"mean": 1.0, "simclr": 2.0}


def nt_xent_reduction_factor(reduction: str, name: str = "nt_xent") -> float:
    """The factor of `NT_XENT_REDUCTIONS[reduction]`; ValueError naming the known ones."""
    if reduction not in NT_XENT_REDUCTIONS:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; expected one of "
                         f"{tuple(NT_XENT_REDUCTIONS)}.")
    return NT_XENT_REDUCTIONS[reduction]


def stored_f32(z: jax.Array) -> jax.Array:
    """z [..., D] as float32 holding exactly the values of z's own dtype.

    With XLA's excess precision (on by default) a consumer fused with the op
    that produced bf16/f16 `z` in the same jit may read that op's unrounded f32
    result, while a kernel (or a matmul) reads the rounded buffer. Anything
    computed next to a kernel (the positive logits, their gradients) goes
    through this, so both see the same numbers: `reduce_precision` to z's dtype
    is the identity on rounded values and rounds unrounded ones the same way.
    """
    if z.dtype == F32:
        return z
    info = jnp.finfo(z.dtype)
    return lax.reduce_precision(z.astype(F32), exponent_bits=info.nexp, mantissa_bits=info.nmant)


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
