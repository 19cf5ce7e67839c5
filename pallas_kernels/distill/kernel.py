"""Pallas kernels for fused linear KD (Triton-lowered on GPU; interpret on CPU).

Inputs arrive padded (see `api.py`): h_s [Np, Hp], W_s [Hp, Vp], teacher
logits [Np, Vp] or (h_t [Np, Htp], W_t [Htp, Vp]), every dim a multiple of
its block. Columns >= `vocab` are masked; padded rows get zero gradient
through `row_scale`.

Three kernels, in the style of the JAX Pallas flash-attention ops:
- forward, grid over row blocks: a `fori_loop` over V tiles computes the
  logits tile (inner loop over H chunks) and folds it into online LSEs and the
  KL / reverse-KL expectation; "jsd" adds a second V loop with known LSEs.
  Outputs per-row lse_s, lse_t, divergence and the gradient's row scalar.
- dh, grid over row blocks: V loop; recomputes the logits tile, forms
  dZ = row_scale * dD/ds and accumulates dh[:, h-chunk] += dZ W^T in its
  output block (each program owns its rows).
- dW, grid over V tiles: loop over row blocks; recomputes the logits tile and
  accumulates dW[h-chunk, tile] += h^T dZ (each program owns its columns).
Every in-kernel array is [block_n, block_v], [block_n, block_h],
[block_h, block_v] or [block_n]: powers of two on Triton (checked in api.py).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.distill import common


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static settings of one fused-KD call (hashable: a custom_vjp nondiff arg)."""

    vocab: int  # true V (columns >= vocab are padding)
    n_rows: int  # true N (rows >= n_rows are padding)
    temperature: float
    kind: str  # "kl" | "rkl" | "jsd" (already resolved)
    beta: float
    block_n: int
    block_v: int
    block_h: int  # H chunk for the student (and teacher) matmuls
    interpret: bool
    num_warps: int | None = None
    num_stages: int | None = None


def _pallas_call(kernel, cfg: KernelConfig, **kwargs):
    if cfg.interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415  (GPU only)

    params = plgpu.CompilerParams(num_warps=cfg.num_warps or 4, num_stages=cfg.num_stages or 2)
    return pl.pallas_call(kernel, compiler_params=params, **kwargs)


def _matmul_tile(x_ref, w_ref, rows, cols, n_out: int, v_out: int, block_h: int) -> jax.Array:
    """f32 `x_ref[rows, :] @ w_ref[:, cols]` [n_out, v_out], looping over H chunks."""
    def body(k, acc):
        ks = pl.ds(pl.multiple_of(k * block_h, block_h), block_h)
        return acc + jnp.dot(x_ref[rows, ks], w_ref[ks, cols], preferred_element_type=jnp.float32)

    init = jnp.zeros((n_out, v_out), jnp.float32)
    return lax.fori_loop(0, x_ref.shape[1] // block_h, body, init)


def _logit_tiles(h_ref, w_ref, teacher_refs, rows, cols, n_out, cfg: KernelConfig):
    """Scaled student and teacher logits for (rows, cols), each [n_out, block_v] f32."""
    inv_t = 1.0 / cfg.temperature
    s = _matmul_tile(h_ref, w_ref, rows, cols, n_out, cfg.block_v, cfg.block_h) * inv_t
    if len(teacher_refs) == 1:
        t = teacher_refs[0][rows, cols].astype(jnp.float32)
    else:
        h_t_ref, w_t_ref = teacher_refs
        t = _matmul_tile(h_t_ref, w_t_ref, rows, cols, n_out, cfg.block_v, cfg.block_h)
    return s, t * inv_t


def _column_mask(col_start, cfg: KernelConfig) -> jax.Array:
    """[1, block_v] True for real (non-padding) columns."""
    return (col_start + jnp.arange(cfg.block_v))[None, :] < cfg.vocab


def _v_slice(j, cfg: KernelConfig):
    start = pl.multiple_of(j * cfg.block_v, cfg.block_v)
    return start, pl.ds(start, cfg.block_v)


def _forward_kernel(*refs, cfg: KernelConfig, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    lse_s_ref, lse_t_ref, rows_ref, c_ref = refs[2 + n_teacher :]
    block_n = h_ref.shape[0]
    n_tiles = w_ref.shape[1] // cfg.block_v
    whole = slice(None)

    def tile(j):
        start, cols = _v_slice(j, cfg)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, whole, cols, block_n, cfg)
        return s, t, _column_mask(start, cfg)

    def stats_body(j, stats):
        s, t, valid = tile(j)
        return common.online_stats_update(stats, s, t, valid, cfg.kind)

    stats = lax.fori_loop(0, n_tiles, stats_body, common.online_stats_init(block_n))
    lse_s, lse_t, rows = common.online_stats_finalize(stats, cfg.kind)
    if cfg.kind == "jsd":
        def jsd_body(j, acc):
            s, t, valid = tile(j)
            div, kl_q_m = common.jsd_tile_terms(s, t, lse_s, lse_t, cfg.beta)
            return (
                acc[0] + jnp.sum(jnp.where(valid, div, 0.0), axis=1),
                acc[1] + jnp.sum(jnp.where(valid, kl_q_m, 0.0), axis=1),
            )

        zeros = jnp.zeros((block_n,), jnp.float32)
        rows, row_c = lax.fori_loop(0, n_tiles, jsd_body, (zeros, zeros))
    elif cfg.kind == "rkl":
        row_c = rows
    else:
        row_c = jnp.zeros_like(rows)
    lse_s_ref[...] = lse_s
    lse_t_ref[...] = lse_t
    rows_ref[...] = rows
    c_ref[...] = row_c


def _dz_tile(s, t, valid, stat_refs, rows, dtype, cfg: KernelConfig) -> jax.Array:
    """row_scale * dD/ds for one tile, zero on padding columns, cast to `dtype`."""
    lse_s_ref, lse_t_ref, c_ref, scale_ref = stat_refs
    ds = common.student_grad_tile(
        s, t, lse_s_ref[rows], lse_t_ref[rows], c_ref[rows], cfg.kind, cfg.beta
    )
    return (jnp.where(valid, ds, 0.0) * scale_ref[rows][:, None]).astype(dtype)


def _dh_kernel(*refs, cfg: KernelConfig, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    stat_refs = refs[2 + n_teacher : 6 + n_teacher]
    (dh_ref,) = refs[6 + n_teacher :]
    block_n = h_ref.shape[0]
    n_h = h_ref.shape[1] // cfg.block_h
    whole = slice(None)

    def h_chunk(k):
        return pl.ds(pl.multiple_of(k * cfg.block_h, cfg.block_h), cfg.block_h)

    def zero_body(k, carry):
        dh_ref[:, h_chunk(k)] = jnp.zeros((block_n, cfg.block_h), dh_ref.dtype)
        return carry

    lax.fori_loop(0, n_h, zero_body, 0)

    def v_body(j, carry):
        start, cols = _v_slice(j, cfg)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, whole, cols, block_n, cfg)
        dz = _dz_tile(s, t, _column_mask(start, cfg), stat_refs, whole, w_ref.dtype, cfg)

        def h_body(k, inner):
            ks = h_chunk(k)
            dh_ref[:, ks] += lax.dot_general(
                dz, w_ref[ks, cols], (((1,), (1,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            return inner

        return lax.fori_loop(0, n_h, h_body, carry)

    lax.fori_loop(0, w_ref.shape[1] // cfg.block_v, v_body, 0)


def _dw_kernel(*refs, cfg: KernelConfig, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    stat_refs = refs[2 + n_teacher : 6 + n_teacher]
    (dw_ref,) = refs[6 + n_teacher :]
    n_h = h_ref.shape[1] // cfg.block_h
    valid = _column_mask(pl.program_id(0) * cfg.block_v, cfg)
    whole = slice(None)

    def h_chunk(k):
        return pl.ds(pl.multiple_of(k * cfg.block_h, cfg.block_h), cfg.block_h)

    def zero_body(k, carry):
        dw_ref[h_chunk(k), :] = jnp.zeros((cfg.block_h, cfg.block_v), dw_ref.dtype)
        return carry

    lax.fori_loop(0, n_h, zero_body, 0)

    def n_body(i, carry):
        rows = pl.ds(pl.multiple_of(i * cfg.block_n, cfg.block_n), cfg.block_n)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, rows, whole, cfg.block_n, cfg)
        dz = _dz_tile(s, t, valid, stat_refs, rows, h_ref.dtype, cfg)

        def h_body(k, inner):
            ks = h_chunk(k)
            dw_ref[ks, :] += lax.dot_general(
                h_ref[rows, ks], dz, (((0,), (0,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            return inner

        return lax.fori_loop(0, n_h, h_body, carry)

    lax.fori_loop(0, h_ref.shape[0] // cfg.block_n, n_body, 0)


def _teacher_specs(teacher, cfg: KernelConfig, by_rows: bool) -> list[pl.BlockSpec]:
    """BlockSpecs for the teacher operands: row blocks (forward, dh) or V tiles (dW)."""
    bn, bv = cfg.block_n, cfg.block_v
    if len(teacher) == 1:
        n, v = teacher[0].shape
        if by_rows:
            return [pl.BlockSpec((bn, v), lambda i: (i, 0))]
        return [pl.BlockSpec((n, bv), lambda j: (0, j))]
    (n, ht), (_, v) = teacher[0].shape, teacher[1].shape
    if by_rows:
        return [pl.BlockSpec((bn, ht), lambda i: (i, 0)), pl.BlockSpec((ht, v), lambda i: (0, 0))]
    return [pl.BlockSpec((n, ht), lambda j: (0, 0)), pl.BlockSpec((ht, bv), lambda j: (0, j))]


def _forward(h_s, w_s, teacher, cfg: KernelConfig):
    """Per-row (lse_s, lse_t, divergence, row_c), each [Np] f32."""
    (n, h), v = h_s.shape, w_s.shape[1]
    row_spec = pl.BlockSpec((cfg.block_n,), lambda i: (i,))
    row_out = jax.ShapeDtypeStruct((n,), jnp.float32)
    return _pallas_call(
        functools.partial(_forward_kernel, cfg=cfg, n_teacher=len(teacher)),
        cfg,
        grid=(n // cfg.block_n,),
        in_specs=[
            pl.BlockSpec((cfg.block_n, h), lambda i: (i, 0)),
            pl.BlockSpec((h, v), lambda i: (0, 0)),
            *_teacher_specs(teacher, cfg, by_rows=True),
        ],
        out_specs=[row_spec] * 4,
        out_shape=[row_out] * 4,
        name="fused_kd_forward",
    )(h_s, w_s, *teacher)


def _backward(h_s, w_s, teacher, row_stats, cfg: KernelConfig):
    """(dh [Np, Hp] f32, dW [Hp, Vp] f32); row_stats = (lse_s, lse_t, row_c, row_scale)."""
    (n, h), v = h_s.shape, w_s.shape[1]
    by_row = pl.BlockSpec((cfg.block_n,), lambda i: (i,))
    dh = _pallas_call(
        functools.partial(_dh_kernel, cfg=cfg, n_teacher=len(teacher)),
        cfg,
        grid=(n // cfg.block_n,),
        in_specs=[
            pl.BlockSpec((cfg.block_n, h), lambda i: (i, 0)),
            pl.BlockSpec((h, v), lambda i: (0, 0)),
            *_teacher_specs(teacher, cfg, by_rows=True),
            *[by_row] * 4,
        ],
        out_specs=pl.BlockSpec((cfg.block_n, h), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n, h), jnp.float32),
        name="fused_kd_dh",
    )(h_s, w_s, *teacher, *row_stats)
    all_rows = pl.BlockSpec((n,), lambda j: (0,))
    dw = _pallas_call(
        functools.partial(_dw_kernel, cfg=cfg, n_teacher=len(teacher)),
        cfg,
        grid=(v // cfg.block_v,),
        in_specs=[
            pl.BlockSpec((n, h), lambda j: (0, 0)),
            pl.BlockSpec((h, cfg.block_v), lambda j: (0, j)),
            *_teacher_specs(teacher, cfg, by_rows=False),
            *[all_rows] * 4,
        ],
        out_specs=pl.BlockSpec((h, cfg.block_v), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((h, v), jnp.float32),
        name="fused_kd_dw",
    )(h_s, w_s, *teacher, *row_stats)
    return dh, dw


def _loss_from_rows(rows: jax.Array, cfg: KernelConfig) -> jax.Array:
    return cfg.temperature**2 * jnp.sum(rows[: cfg.n_rows]) / cfg.n_rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_kd_padded(h_s, w_s, teacher, cfg: KernelConfig) -> jax.Array:
    """Mean over the first `cfg.n_rows` rows of `T^2 * D`, f32 scalar (padded inputs)."""
    _, _, rows, _ = _forward(h_s, w_s, teacher, cfg)
    return _loss_from_rows(rows, cfg)


def _fused_kd_fwd(h_s, w_s, teacher, cfg):
    lse_s, lse_t, rows, row_c = _forward(h_s, w_s, teacher, cfg)
    return _loss_from_rows(rows, cfg), (h_s, w_s, teacher, lse_s, lse_t, row_c)


def _fused_kd_bwd(cfg, residuals, g):
    h_s, w_s, teacher, lse_s, lse_t, row_c = residuals
    # s = z / T, loss = T^2 mean_n D_n  =>  dloss/dz = (T / N) dD/ds; padded rows: 0.
    is_real = jnp.arange(h_s.shape[0]) < cfg.n_rows
    row_scale = jnp.where(is_real, g * cfg.temperature / cfg.n_rows, 0.0).astype(jnp.float32)
    dh, dw = _backward(h_s, w_s, teacher, (lse_s, lse_t, row_c, row_scale), cfg)
    zeros = jax.tree.map(jnp.zeros_like, teacher)
    return dh.astype(h_s.dtype), dw.astype(w_s.dtype), zeros


fused_kd_padded.defvjp(_fused_kd_fwd, _fused_kd_bwd)
