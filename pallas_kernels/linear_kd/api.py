"""Fused linear KD: KD through the output head without [N, V] logits (formulas: docs/kernels.md).

`fused_linear_kd(h_s, W_s, teacher, T)` is the mean over N of
`T^2 * D(softmax(teacher_logits / T), softmax(h_s @ W_s / T))`, the teacher
given as logits [N, V] or as its own hidden states and head
`(h_t [N, Ht], W_t [Ht, V])`. Its inputs are checked once, here
(`common.check_fused_inputs`); `impl=` (IMPLS) then chooses:
- "reference": `reference.py`, builds the [N, V] logits; the ground truth.
- "chunked": pure JAX, `chunking=` (CHUNKINGS):
  "rows" (`rows_chunked_xla.py`, Liger-style: each row chunk's full [chunk, V] logits
  exist briefly, loss and gradients formed in one pass; three GEMMs like the
  naive path; memory O(chunk * V + H * V)), "vocab" (`chunked_xla.py`, a
  lax.scan over V tiles with online LSEs; memory O(N * tile + H * V) but a
  fourth GEMM: its backward recomputes the logits tiles), or "auto" (rows,
  unless even ROWS_MIN_CHUNK rows of V would exceed the rows budget).
- "pallas": `pallas_impl.py` kernels on `backend` (None: Triton on GPU;
  "interpret" on CPU). Where they cannot run: a ValueError, or with
  fallback=True one warning and "chunked" (`pallas_kernels.dispatch`).
Gradients flow to h_s and W_s only; the teacher gets zero gradients.

`fused_linear_kd_ce` adds a label cross-entropy and per-row weights (the
distill task's `alpha * KD + (1 - alpha) * masked CE`) and returns per-row
statistics; impl "reference" or "chunked" (rows).
"""
from __future__ import annotations

from typing import Any

import jax

from pallas_kernels.backend import check_positive_int
from pallas_kernels.dispatch import check_impl, run_impl
from pallas_kernels.linear_kd import pallas_impl, rows_chunked_xla
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE, fused_linear_kd_chunked
from pallas_kernels.linear_kd.common import check_fused_inputs, check_row_inputs
from pallas_kernels.linear_kd.reference import fused_linear_kd_ce_reference, fused_linear_kd_reference

IMPLS = ("reference", "chunked", "pallas")
CHUNKINGS = ("auto", "rows", "vocab")
ROWS_MIN_CHUNK = 16  # "auto" tiles the vocabulary when fewer rows than this fit the budget


def resolve_chunking(chunking: str, vocab: int) -> str:
    """"rows" or "vocab" for `chunking` in CHUNKINGS (see the module docstring)."""
    if chunking not in CHUNKINGS:
        raise ValueError(f"Unknown chunking {chunking!r}; expected one of {CHUNKINGS}.")
    if chunking != "auto":
        return chunking
    return "rows" if ROWS_MIN_CHUNK * vocab <= rows_chunked_xla.CHUNK_ELEMENTS else "vocab"


def fused_linear_kd(
    h_s: jax.Array, w_s: jax.Array, teacher: Any, temperature: float, *, kind: str = "kl",
    beta: float = 0.5, impl: str = "reference", tile: int = DEFAULT_TILE, fallback: bool = False,
    backend: str | None = None, chunking: str = "auto", row_chunk: int | None = None,
) -> jax.Array:
    """Mean over N of `T^2 * D(softmax(teacher/T), softmax(h_s @ W_s / T))`, f32 scalar.

    Args:
      h_s: student hidden states [N, H]; w_s: student head [H, V].
      teacher: teacher logits [N, V], or a tuple (h_t [N, Ht], W_t [Ht, V]).
      temperature: static Python number > 0.
      kind: "kl" (forward), "rkl" (reverse), "jsd" (normalised, `beta` in [0, 1]).
      impl: "reference" | "chunked" | "pallas".
      tile: V tile of chunking="vocab" (any size; V need not be a multiple).
      fallback: for impl="pallas", run "chunked" (with a warning) where the
        kernel cannot run instead of raising ValueError.
      backend: Pallas backend for impl="pallas" (None = auto; "interpret" on CPU).
      chunking: of impl="chunked": "auto" | "rows" | "vocab".
      row_chunk: rows per chunk of chunking="rows" (None: `rows_chunked_xla.default_row_chunk`).
    """
    teacher, loss = check_fused_inputs(h_s, w_s, teacher, temperature, kind, beta)
    check_positive_int("tile", tile)
    if row_chunk is not None:
        check_positive_int("row_chunk", row_chunk)
    way = resolve_chunking(chunking, w_s.shape[1])

    def chunked() -> jax.Array:
        if way == "rows":
            return rows_chunked_xla.fused_linear_kd_rows(h_s, w_s, teacher, loss, row_chunk)
        return fused_linear_kd_chunked(h_s, w_s, teacher, loss, tile)

    def pallas() -> jax.Array:
        return pallas_impl.fused_linear_kd_loss(h_s, w_s, teacher, loss, backend=backend)

    return run_impl("fused_linear_kd", impl, {
        "reference": lambda: fused_linear_kd_reference(h_s, w_s, teacher, loss),
        "chunked": chunked,
        "pallas": pallas,
    }, fallback)


def fused_linear_kd_ce(
    h_s: jax.Array, w_s: jax.Array, teacher: Any, temperature: float, *, labels: jax.Array,
    kd_weights: jax.Array, ce_weights: jax.Array | None = None, kind: str = "kl",
    beta: float = 0.5, impl: str = "chunked", row_chunk: int | None = None,
) -> tuple[jax.Array, rows_chunked_xla.RowAux]:
    """`sum_n kd_weights[n] T^2 D_n + ce_weights[n] CE(h_s @ W_s, labels)_n` and per-row stats.

    Args:
      h_s [N, H], w_s [H, V], teacher, temperature, kind, beta: as `fused_linear_kd`.
      labels: [N] int class ids (read only where ce_weights != 0).
      kd_weights, ce_weights: [N] f32 per-row weights, no gradients (ce_weights
        None: no CE term). Means: 1/N; a masked mean: mask / max(sum(mask), 1).
      impl: "reference" (builds [N, V]) | "chunked" (row chunks).
    Returns:
      (f32 scalar, RowAux of [N] rows: kd = T^2 D_n, ce = CE_n, student and
      teacher top-1), the rows without gradients.
    """
    check_impl(impl, ("reference", "chunked"))
    teacher, loss = check_fused_inputs(h_s, w_s, teacher, temperature, kind, beta)
    check_row_inputs(h_s.shape[0], labels, kd_weights, ce_weights)
    if impl == "reference":
        return fused_linear_kd_ce_reference(h_s, w_s, teacher, loss, labels, kd_weights, ce_weights)
    return rows_chunked_xla.fused_linear_kd_ce_rows(h_s, w_s, teacher, loss, labels, kd_weights, ce_weights,
                                            row_chunk)
