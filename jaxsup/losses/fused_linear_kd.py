"""Fused linear knowledge distillation: KD through the output head without [N, V] logits.

`fused_linear_kd(h_s, W_s, teacher, T, *, kind, beta, impl, tile, fallback,
backend)` equals `distill.kd_loss(h_s @ W_s, teacher_logits, T, kind, beta)`
(mean over N of `T^2 * D`), the teacher given as logits [N, V] or as
`(h_t [N, Ht], W_t [Ht, V])`. It is `pallas_kernels.linear_kd.api`'s, which
keeps every implementation ("reference" | "chunked" | "pallas").
"""
from __future__ import annotations

from pallas_kernels.linear_kd.api import fused_linear_kd
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE

__all__ = ["DEFAULT_TILE", "fused_linear_kd"]
