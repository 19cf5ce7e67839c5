"""The Pallas implementation (impl="pallas"): fused tiled contrastive losses.

`api.py` calls these with impl="pallas" (and `ring.PallasBlocks` the block
pallas_vjp); call them directly to set block sizes or Triton parameters.

Losses (f32 scalars, differentiable; never build the B x B matrix):
  softmax_contrastive_loss(zimg, ztxt, log_t)   CLIP, symmetric CE
  sigmoid_contrastive_loss(zimg, ztxt, log_t, b) SigLIP
  nt_xent_loss(z1, z2, tau)                      SimCLR NT-Xent over 2N views

Block primitives, for a device ring that combines blocks (see "Ring use"):
  softmax_pair_lse(zq, zk, log_t, self_offset=...) -> (row_lse [Bq], col_lse [Bk])
  softmax_pair_lse_backward(...)                   -> (dzq, dzk, dlog_t)
  sigmoid_pair_row_sums(zq, zk, log_t, b, positive_offset=...) -> row_sums [Bq]
  sigmoid_pair_row_sums_backward(...)              -> (dzq, dzk, dlog_t, db)
The forward primitives are differentiable (custom_vjp); the `_backward` ones
are the raw gradient kernels for a hand-written ring backward.

Diagonal offsets: in a block of rows zq (global row index q0 + i) against
columns zk (global k0 + j), the "diagonal" cells are `j - i == offset` with
`offset = q0 - k0`. For softmax they are excluded (NT-Xent self-pairs); for
sigmoid they are the positives (y = +1). The offset may be a traced int32
(it is a kernel input), e.g. `(my_index - source_index) * block_rows`; blocks
with `|offset| >= max(Bq, Bk)` simply have no diagonal cell. `None` means no
diagonal at all (statically).

Ring use (`ring.py` does this; n devices, device r holds zimg_r, ztxt_r of b rows each):
  softmax (CLIP): row = col = full(b, -inf); zt = ztxt_r
    for each of n steps: rl, cl = softmax_pair_lse(zimg_r, zt, log_t)
      row = logaddexp(row, rl); col = logaddexp(col, cl)
      (zt, col) = ppermute((zt, col), i -> i + 1)   # col travels with its block
    After n shifts every block is home, `col` is its final column LSE; the loss
    is 0.5 (psum(sum(row - pos)) + psum(sum(col - pos))) / B with pos the local
    diagonal logits. jax.grad through this loop is correct, since
    d lse_global / d lse_block = exp(lse_block - lse_global) composes with the
    primitive's own vjp to `g exp(S - lse_global)`, but it saves every step's
    text block. A memory-lean custom_vjp instead re-runs the ring backward:
    for each block call softmax_pair_lse_backward(zimg_r, zt, log_t, row, col,
    g_row, g_col) with the FINAL row/col LSEs and their cotangents, accumulate
    dzimg_r locally, and pass (zt, col, g_col, dzt) around, dzt accumulating.
  sigmoid (SigLIP): row_sums accumulate over the n steps with
    positive_offset = (r - src) * b (src = the step's text owner); total loss
    = psum(sum(row_sums)) / B. Backward as above with
    sigmoid_pair_row_sums_backward (its g_row = 1 / B), dzt travelling.
  NT-Xent: the 2N x 2N matrix as blocks of softmax_pair_lse with
    self_offset = (q0 - k0), using both outputs as for CLIP.

Backends (`backend=`, via pallas_kernels.backend.resolve_backend): None picks
"triton" on NVIDIA GPUs and "mosaic_tpu" on TPUs; on CPU only "interpret"
runs (BackendUnavailableError otherwise). "mosaic_gpu" is not implemented for
these kernels and raises BackendUnavailableError (use "triton").

Block sizes: `block_q` rows of zq per program, `block_k` rows of zk per inner
step. Triton/interpret: powers of two >= 16. The defaults keep the resident
zq tile plus its f32 [block_q, D] gradient accumulator, and each pipelined zk
tile, within ~64 KiB, clamped to [16, 64]: f32 D=128 -> 64/64, D=512 -> 16/32,
bf16 D=512 -> 16/64, bf16 D=1024 -> 16/32. D is padded to a power of two
(Triton) or a multiple of 128 (TPU); very wide D (>= 2048 in f32) will exceed
on-chip memory at any block size (these kernels keep all of D per tile).
TPU: multiples of 128 (default 128). The GPU defaults and the num_warps
heuristic are unmeasured guesses: tune them by timing on the target GPU (none
was available when they were chosen). Blocks larger than the (padded) batch
are shrunk to it.

Precision: f32 inputs use HIGHEST-precision dots (IEEE f32 on GPU, no TF32),
so results match the f32 reference; bf16 inputs use bf16 MXU/tensor-core dots
with f32 accumulation, and the backward casts its f32 tile weights to bf16
before the second matmul. The whole losses (`pallas_vjp.clip_loss`,
`pallas_vjp.nt_xent_loss`) subtract the positives' weight inside the f32 tile,
before that cast, so a confident row's p - 1 is formed in f32 (rounding p ~ 1 to
bf16 first lost it: 18-21x the gradient's size at CLIP loss 1e-4;
tests/kernels/test_contrastive_confident_bf16.py). The ring's Pallas blocks do the same
through `softmax_pair_lse_backward(positives=...)` on each row block's own block.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.backend import (
    TPU_LANES,
    TRITON_MIN_BLOCK,
    BackendUnavailableError,
    KernelConfig,
    fit_triton_block,
    resolve_backend,
)
from pallas_kernels.contrastive import pallas_vjp

_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _pow2_at_most(x: int) -> int:
    return 1 << (max(int(x), 1).bit_length() - 1)


def _default_blocks(driver: str, padded_dim: int, itemsize: int) -> tuple[int, int]:
    """Unmeasured on-chip budget heuristic (see module docstring), TPU: 128 x 128."""
    if driver == "grid":
        return TPU_LANES, TPU_LANES
    budget = 64 * 1024  # bytes
    # block_q: the resident zq tile plus the f32 [block_q, D] gradient accumulator.
    block_q = _pow2_at_most(budget // (padded_dim * (itemsize + 4)))
    # block_k: one zk tile per software-pipeline stage (shared memory).
    block_k = _pow2_at_most(budget // (padded_dim * itemsize))
    clamp = lambda b: min(64, max(TRITON_MIN_BLOCK, b))
    return clamp(block_q), clamp(block_k)


def _fit_block(name: str, block: int, driver: str, n_rows: int) -> int:
    """Validates a user block size and shrinks it to the padded problem size."""
    if driver == "grid":
        if block <= 0 or block % TPU_LANES:
            raise ValueError(f"{name}={block} must be a positive multiple of {TPU_LANES} on TPU")
        return min(block, -(-n_rows // TPU_LANES) * TPU_LANES)
    return fit_triton_block(name, block, n_rows)


def kernel_config(
    backend: str | None,
    *,
    n_rows: int,
    dim: int,
    dtype=jnp.float32,
    block_q: int | None = None,
    block_k: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> KernelConfig:
    """Resolves the backend and block sizes for `dtype` operands of `n_rows` rows
    (the larger side) and `dim` features. Raises BackendUnavailableError or ValueError."""
    name = resolve_backend(backend)
    if name == "mosaic_gpu":
        raise BackendUnavailableError(
            "The contrastive Pallas kernels have no Mosaic GPU version; use backend='triton'.")
    driver = "grid" if name == "mosaic_tpu" else "loop"
    probe = KernelConfig(driver, name == "interpret", 1, 1)
    default_q, default_k = _default_blocks(driver, probe.padded_dim(dim), jnp.dtype(dtype).itemsize)
    return KernelConfig(
        driver=driver,
        interpret=name == "interpret",
        block_q=_fit_block("block_q", block_q or default_q, driver, n_rows),
        block_k=_fit_block("block_k", block_k or default_k, driver, n_rows),
        num_warps=num_warps,
        num_stages=num_stages,
    )


def _check_embeddings(names: tuple[str, ...], *arrays, same_rows: bool) -> None:
    """ValueError unless all are [rows, D] float arrays of one dtype and D."""
    for name, z in zip(names, arrays):
        if not hasattr(z, "ndim") or z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 1:
            raise ValueError(f"{name} must be a non-empty [rows, D] array, got {getattr(z, 'shape', z)}")
        if z.dtype not in _DTYPES:
            raise ValueError(f"{name} has dtype {z.dtype}; expected float32, bfloat16 or float16")
    shapes = {n: z.shape for n, z in zip(names, arrays)}
    if len({z.shape[1] for z in arrays}) > 1 or (same_rows and len(set(shapes.values())) > 1):
        raise ValueError(f"shape mismatch: {shapes}")
    if len({z.dtype for z in arrays}) > 1:
        raise ValueError(f"dtype mismatch: { {n: str(z.dtype) for n, z in zip(names, arrays)} }")


def _scalar(name: str, x) -> jax.Array:
    """A float scalar as a 0-d array (f32 unless it already is a float array)."""
    x = jnp.asarray(x)
    if x.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {x.shape}")
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _offset(name: str, offset) -> tuple[bool, jax.Array]:
    if offset is None:
        return False, jnp.zeros((), jnp.int32)
    offset = jnp.asarray(offset)
    if offset.ndim != 0 or not jnp.issubdtype(offset.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer scalar or None, got {offset!r}")
    return True, offset.astype(jnp.int32)


def _config(zq, zk, backend, block_q, block_k, num_warps, num_stages) -> KernelConfig:
    return kernel_config(backend, n_rows=max(zq.shape[0], zk.shape[0]), dim=zq.shape[1],
                         dtype=zq.dtype, block_q=block_q, block_k=block_k,
                         num_warps=num_warps, num_stages=num_stages)


def softmax_contrastive_loss(
    zimg: jax.Array, ztxt: jax.Array, log_t, *, backend: str | None = None,
    block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> jax.Array:
    """CLIP loss `0.5 (CE(S, diag) + CE(S^T, diag))`, `S = exp(log_t) zimg ztxt^T`.

    zimg, ztxt: [B, D] (f32 / bf16 / f16); log_t: scalar. f32 scalar,
    differentiable w.r.t. zimg, ztxt and log_t.
    """
    _check_embeddings(("zimg", "ztxt"), zimg, ztxt, same_rows=True)
    log_t = _scalar("log_t", log_t)
    cfg = _config(zimg, ztxt, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.clip_loss(cfg, zimg, ztxt, log_t)


def sigmoid_contrastive_loss(
    zimg: jax.Array, ztxt: jax.Array, log_t, b, *, backend: str | None = None,
    block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> jax.Array:
    """SigLIP loss `-(1/B) sum_ij log sigmoid(y_ij (exp(log_t) zimg_i.ztxt_j + b))`.

    zimg, ztxt: [B, D]; y = +1 on the diagonal, -1 elsewhere; log_t, b:
    scalars. f32 scalar, differentiable w.r.t. zimg, ztxt, log_t and b.
    """
    _check_embeddings(("zimg", "ztxt"), zimg, ztxt, same_rows=True)
    log_t, b = _scalar("log_t", log_t), _scalar("b", b)
    cfg = _config(zimg, ztxt, backend, block_q, block_k, num_warps, num_stages)
    rows = pallas_vjp.sigmoid_pair(cfg, True, zimg, ztxt, log_t, b, jnp.zeros((), jnp.int32))
    return jnp.sum(rows) / zimg.shape[0]


def nt_xent_loss(
    z1: jax.Array, z2: jax.Array, tau, *, backend: str | None = None,
    block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> jax.Array:
    """SimCLR NT-Xent over the 2N views `[z1; z2]`, logits `z_k . z_j / tau`.

    z1, z2: [N, D]. For view k the positive is its twin; the self-similarity
    is excluded. Mean over the 2N views, f32 scalar. Differentiable w.r.t.
    z1, z2 and also tau (pass a Python float to keep it constant). One forward
    and one backward kernel pass over the symmetric 2N x 2N matrix.
    """
    _check_embeddings(("z1", "z2"), z1, z2, same_rows=True)
    tau = _scalar("tau", tau)
    z = jax.ShapeDtypeStruct((2 * z1.shape[0], z1.shape[1]), z1.dtype)  # the 2N views
    cfg = _config(z, z, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.nt_xent_loss(cfg, z1, z2, tau)


def softmax_pair_lse(
    zq: jax.Array, zk: jax.Array, log_t, *, self_offset=None, backend: str | None = None,
    block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One block's partial LSEs of `S = exp(log_t) zq zk^T`.

    zq: [Bq, D]; zk: [Bk, D]; self_offset: cells `j - i == self_offset` are
    excluded (None: none). Returns (row_lse [Bq], col_lse [Bk]) f32; a row or
    column with no remaining cell gets -inf. Differentiable w.r.t. zq, zk, log_t.
    """
    _check_embeddings(("zq", "zk"), zq, zk, same_rows=False)
    has_diag, offset = _offset("self_offset", self_offset)
    cfg = _config(zq, zk, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.softmax_pair(cfg, has_diag, zq, zk, _scalar("log_t", log_t), offset)


def softmax_pair_lse_backward(
    zq: jax.Array, zk: jax.Array, log_t, row_lse: jax.Array, col_lse: jax.Array,
    g_row: jax.Array, g_col: jax.Array, *, self_offset=None, backend: str | None = None,
    block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None, positives=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This block's share of the gradient of `sum g_row lse_row + sum g_col lse_col`
    (minus `sum_i w_row[i] S_i,i+o` for `positives = (offsets, w_row, w_col)`, see
    `pallas_vjp.softmax_pair_backward`: formed in the kernel's f32 tiles).

    row_lse [Bq] / col_lse [Bk]: the LSEs the cotangents g_row [Bq] / g_col
    [Bk] belong to -- pass the final (all-block) LSEs to get the block's
    contribution to the global gradient. Returns (dzq [Bq, D], dzk [Bk, D],
    dlog_t scalar f32).
    """
    _check_embeddings(("zq", "zk"), zq, zk, same_rows=False)
    for name, v, n in (("row_lse", row_lse, zq.shape[0]), ("g_row", g_row, zq.shape[0]),
                       ("col_lse", col_lse, zk.shape[0]), ("g_col", g_col, zk.shape[0])):
        if jnp.shape(v) != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {jnp.shape(v)}")
    has_diag, offset = _offset("self_offset", self_offset)
    cfg = _config(zq, zk, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.softmax_pair_backward(cfg, has_diag, zq, zk, _scalar("log_t", log_t),
                                            offset, row_lse, col_lse, g_row, g_col, positives=positives)


def sigmoid_pair_row_sums(
    zq: jax.Array, zk: jax.Array, log_t, b, *, positive_offset=None,
    backend: str | None = None, block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> jax.Array:
    """Per-row `sum_j -log sigmoid(y_ij (exp(log_t) zq_i.zk_j + b))` -> [Bq] f32.

    y = +1 on cells `j - i == positive_offset`, -1 elsewhere (None: all -1).
    Differentiable w.r.t. zq, zk, log_t, b.
    """
    _check_embeddings(("zq", "zk"), zq, zk, same_rows=False)
    has_diag, offset = _offset("positive_offset", positive_offset)
    cfg = _config(zq, zk, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.sigmoid_pair(cfg, has_diag, zq, zk, _scalar("log_t", log_t),
                                   _scalar("b", b), offset)


def sigmoid_pair_row_sums_backward(
    zq: jax.Array, zk: jax.Array, log_t, b, g_row: jax.Array, *, positive_offset=None,
    backend: str | None = None, block_q: int | None = None, block_k: int | None = None,
    num_warps: int | None = None, num_stages: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Gradient of `sum_i g_row[i] row_sums[i]` -> (dzq, dzk, dlog_t, db)."""
    _check_embeddings(("zq", "zk"), zq, zk, same_rows=False)
    if jnp.shape(g_row) != (zq.shape[0],):
        raise ValueError(f"g_row must have shape ({zq.shape[0]},), got {jnp.shape(g_row)}")
    has_diag, offset = _offset("positive_offset", positive_offset)
    cfg = _config(zq, zk, backend, block_q, block_k, num_warps, num_stages)
    return pallas_vjp.sigmoid_pair_backward(cfg, has_diag, zq, zk, _scalar("log_t", log_t),
                                            _scalar("b", b), offset, g_row)
