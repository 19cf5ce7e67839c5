"""Fused linear knowledge distillation: KD through the output head without [N, V] logits.

`fused_linear_kd(h_s, W_s, teacher, T, *, kind, beta, impl, tile, fallback,
backend, chunking, row_chunk)` equals `distill.kd_loss(h_s @ W_s,
teacher_logits, T, kind, beta)` (mean over N of `T^2 * D`), the teacher given
as logits [N, V] or as `(h_t [N, Ht], W_t [Ht, V])`;
`fused_linear_kd_ce(...)` adds a label CE with per-row weights and returns
per-row statistics (the distill task's fused head). Both are
`pallas_kernels.linear_kd.api`'s, which keeps every implementation.
`linear_head_operands` turns a Dense head's params into those operands.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.linear_kd.api import CHUNKINGS, fused_linear_kd, fused_linear_kd_ce
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE
from pallas_kernels.linear_kd.common import RowAux

__all__ = ["CHUNKINGS", "DEFAULT_TILE", "RowAux", "fused_linear_kd", "fused_linear_kd_ce",
           "linear_head_operands"]


def linear_head_operands(features: jax.Array, head: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """(h [N, D(+1)], W [D(+1), V]) with `h @ W == features @ kernel + bias`.

    features [N, D]; head: a Dense's params {"kernel" [D, V], optional "bias" [V]}.
    A bias becomes a last row of W against a column of ones in h; W takes the
    features' dtype (as flax's Dense computes in its dtype).
    """
    kernel = head["kernel"].astype(features.dtype)
    if "bias" not in head:
        return features, kernel
    ones = jnp.ones((features.shape[0], 1), features.dtype)
    bias = head["bias"].astype(features.dtype)[None, :]
    return jnp.concatenate([features, ones], axis=1), jnp.concatenate([kernel, bias], axis=0)
