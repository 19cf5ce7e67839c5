"""The Pallas implementation of fused linear KD (impl="pallas"): backend, blocks, padding.

Supported: backends "triton" (NVIDIA GPU) and "interpret" (any machine, slow;
for tests). "mosaic_gpu" and "mosaic_tpu" raise BackendUnavailableError (the
kernel loops over V inside one program, a Triton idiom; a TPU version would
grid over V with scratch accumulators).

Inputs whose N, H, Ht or V are not multiples of the blocks are zero-padded
before the kernel (for W that is a copy of the weight; shapes that are
multiples of the blocks are passed through untouched).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.backend import (
    BackendUnavailableError,
    KernelConfig,
    check_positive_int,
    fit_triton_block,
    resolve_backend,
)
from pallas_kernels.linear_kd.common import KdLoss
from pallas_kernels.linear_kd.pallas_triton import Static, fused_kd_padded

KERNEL_BACKENDS = ("triton", "interpret")
DEFAULT_BLOCKS = {"block_n": 64, "block_v": 128, "block_h": 64}


def _block(name: str, requested: int | None, dim: int, backend: str) -> int:
    """Block size for a dim: the request (or default), shrunk to fit small dims."""
    block = check_positive_int(name, DEFAULT_BLOCKS[name] if requested is None else requested)
    if backend == "triton":
        return fit_triton_block(name, block, dim)
    return min(block, dim)


def _pad_to(x: jax.Array, multiples: tuple[int, int]) -> jax.Array:
    pads = [(0, -d % m) for d, m in zip(x.shape, multiples)]
    return jnp.pad(x, pads) if any(p for _, p in pads) else x


def fused_linear_kd_loss(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss, *,
    backend: str | None = None, block_n: int | None = None, block_v: int | None = None,
    block_h: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> jax.Array:
    """Mean over N of `T^2 * D(softmax(teacher/T), softmax(h_s @ W_s / T))`, f32 scalar.

    h_s [N, H], w_s [H, V]; teacher `(logits [N, V],)` or `(h_t [N, Ht], W_t
    [Ht, V])` and `loss`, as `common.check_fused_inputs` returns them.
    Differentiable in h_s and w_s (custom VJP); the teacher gets zeros.
    Raises BackendUnavailableError where the kernel cannot run (backend=None
    picks Triton on GPU; on CPU pass backend="interpret").
    """
    backend = resolve_backend(backend)
    if backend not in KERNEL_BACKENDS:
        raise BackendUnavailableError(
            f"fused linear KD has no {backend!r} kernel; it supports {KERNEL_BACKENDS}."
        )
    (n, h), v = h_s.shape, w_s.shape[1]
    hidden = max([h] + ([teacher[0].shape[1]] if len(teacher) == 2 else []))
    cfg = KernelConfig(
        driver="loop",
        interpret=backend == "interpret",
        block_q=_block("block_n", block_n, n, backend),
        block_k=_block("block_v", block_v, v, backend),
        block_h=_block("block_h", block_h, hidden, backend),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    bn, bv, bh = cfg.block_q, cfg.block_k, cfg.block_h
    h_s = _pad_to(h_s, (bn, bh))
    w_s = _pad_to(w_s, (bh, bv))
    if len(teacher) == 1:
        teacher = (_pad_to(jax.lax.stop_gradient(teacher[0]), (bn, bv)),)
    else:
        teacher = tuple(
            _pad_to(jax.lax.stop_gradient(x), m) for x, m in zip(teacher, ((bn, bh), (bh, bv)))
        )
    return fused_kd_padded(h_s, w_s, teacher, Static(loss, n_rows=n, vocab=v, cfg=cfg))
