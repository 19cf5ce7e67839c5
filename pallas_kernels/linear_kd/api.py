"""Fused linear KD: KD through the output head without [N, V] logits (DESIGN.md §3).

`fused_linear_kd(h_s, W_s, teacher, T)` is the mean over N of
`T^2 * D(softmax(teacher_logits / T), softmax(h_s @ W_s / T))`, the teacher
given as logits [N, V] or as its own hidden states and head
`(h_t [N, Ht], W_t [Ht, V])`. Its inputs are checked once, here
(`common.check_fused_inputs`); `impl=` (IMPLS) then chooses:
- "reference": `reference.py`, builds the [N, V] logits; the ground truth.
- "chunked": `chunked_xla.py`, a lax.scan over V tiles with a custom_vjp;
  memory O(N * tile + N * H + H * V).
- "pallas": `pallas_ops.py` kernels on `backend` (None: Triton on GPU;
  "interpret" on CPU). Where they cannot run: a ValueError, or with
  fallback=True one warning and "chunked" (`pallas_kernels.dispatch`).
Gradients flow to h_s and W_s only; the teacher gets zero gradients.
"""
from __future__ import annotations

from typing import Any

import jax

from pallas_kernels.dispatch import import_kernels, run_impl
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE, fused_linear_kd_chunked
from pallas_kernels.linear_kd.common import check_fused_inputs
from pallas_kernels.linear_kd.reference import fused_linear_kd_reference

IMPLS = ("reference", "chunked", "pallas")


def fused_linear_kd(
    h_s: jax.Array, w_s: jax.Array, teacher: Any, temperature: float, *, kind: str = "kl",
    beta: float = 0.5, impl: str = "reference", tile: int = DEFAULT_TILE, fallback: bool = False,
    backend: str | None = None,
) -> jax.Array:
    """Mean over N of `T^2 * D(softmax(teacher/T), softmax(h_s @ W_s / T))`, f32 scalar.

    Args:
      h_s: student hidden states [N, H]; w_s: student head [H, V].
      teacher: teacher logits [N, V], or a tuple (h_t [N, Ht], W_t [Ht, V]).
      temperature: static Python number > 0.
      kind: "kl" (forward), "rkl" (reverse), "jsd" (normalised, `beta` in [0, 1]).
      impl: "reference" | "chunked" | "pallas".
      tile: V tile of "chunked" (any size; V need not be a multiple).
      fallback: for impl="pallas", run "chunked" (with a warning) where the
        kernel cannot run instead of raising ValueError.
      backend: Pallas backend for impl="pallas" (None = auto; "interpret" on CPU).
    """
    teacher, loss = check_fused_inputs(h_s, w_s, teacher, temperature, kind, beta)

    def pallas() -> jax.Array:
        ops = import_kernels("pallas_kernels.linear_kd.pallas_ops")
        return ops.fused_linear_kd_loss(h_s, w_s, teacher, loss, backend=backend)

    return run_impl("fused_linear_kd", impl, {
        "reference": lambda: fused_linear_kd_reference(h_s, w_s, teacher, loss),
        "chunked": lambda: fused_linear_kd_chunked(h_s, w_s, teacher, loss, tile),
        "pallas": pallas,
    }, fallback)
