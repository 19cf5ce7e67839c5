"""Fused linear knowledge distillation: KD through the output head without [N, V] logits.

`fused_linear_kd(h_s, W_s, teacher, T, *, kind, beta, impl, tile, fallback,
backend, chunking, row_chunk)` equals `distill.kd_loss(h_s @ W_s,
teacher_logits, T, kind, beta)` (mean over N of `T^2 * D`), the teacher given
as logits [N, V] or as `(h_t [N, Ht], W_t [Ht, V])`;
`fused_linear_kd_ce(...)` adds a label CE with per-row weights and returns
per-row statistics (the distill task's fused head). Both are
`pallas_kernels.linear_kd.api`'s, which keeps every implementation.
"""
from __future__ import annotations

from pallas_kernels.linear_kd.api import CHUNKINGS, fused_linear_kd, fused_linear_kd_ce
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE
from pallas_kernels.linear_kd.common import RowAux

__all__ = ["CHUNKINGS", "DEFAULT_TILE", "RowAux", "fused_linear_kd", "fused_linear_kd_ce"]
