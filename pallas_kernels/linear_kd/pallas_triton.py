"""Pallas kernels for fused linear KD (Triton-lowered on GPU; interpret on CPU).

Inputs arrive padded (see `pallas_impl.py`): h_s [Np, Hp], W_s [Hp, Vp], teacher
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
Blocks (`KernelConfig`): block_q = block_n rows of N, block_k = block_v
columns of V, block_h of H. Every in-kernel array is [block_n, block_v],
[block_n, block_h], [block_h, block_v] or [block_n]: powers of two on Triton
(checked in pallas_impl.py).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.backend import KernelConfig
from pallas_kernels.linear_kd import tile_math as tiles
from pallas_kernels.linear_kd.common import KdLoss


class Static(NamedTuple):
    """Static settings of one fused-KD call (hashable: a custom_vjp nondiff arg)."""

    loss: KdLoss  # temperature, kind (resolved), beta
    n_rows: int  # true N (rows >= n_rows are padding)
    vocab: int  # true V (columns >= vocab are padding)
    cfg: KernelConfig  # block_q: rows of N, block_k: columns of V, block_h: chunk of H


def _pallas_call(kernel, cfg: KernelConfig, **kwargs):
    if cfg.interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415  (GPU only)

    params = plgpu.CompilerParams(num_warps=cfg.num_warps or 4, num_stages=cfg.num_stages or 2)
    return pl.pallas_call(kernel, compiler_params=params, **kwargs)


def _chunk(k, size: int):
    """The slice [k * size, (k + 1) * size)."""
    return pl.ds(pl.multiple_of(k * size, size), size)


def _matmul_tile(x_ref, w_ref, rows, cols, n_out: int, v_out: int, block_h: int) -> jax.Array:
    """f32 `x_ref[rows, :] @ w_ref[:, cols]` [n_out, v_out], looping over H chunks."""
    def body(k, acc):
        ks = _chunk(k, block_h)
        return acc + jnp.dot(x_ref[rows, ks], w_ref[ks, cols], preferred_element_type=jnp.float32)

    init = jnp.zeros((n_out, v_out), jnp.float32)
    return lax.fori_loop(0, x_ref.shape[1] // block_h, body, init)


def _logit_tiles(h_ref, w_ref, teacher_refs, rows, cols, n_out, st: Static):
    """Scaled student and teacher logits for (rows, cols), each [n_out, block_v] f32."""
    inv_t = 1.0 / st.loss.temperature
    s = _matmul_tile(h_ref, w_ref, rows, cols, n_out, st.cfg.block_k, st.cfg.block_h) * inv_t
    if len(teacher_refs) == 1:
        t = teacher_refs[0][rows, cols].astype(jnp.float32)
    else:
        h_t_ref, w_t_ref = teacher_refs
        t = _matmul_tile(h_t_ref, w_t_ref, rows, cols, n_out, st.cfg.block_k, st.cfg.block_h)
    return s, t * inv_t


def _column_mask(col_start, st: Static) -> jax.Array:
    """[1, block_v] True for real (non-padding) columns."""
    return (col_start + jnp.arange(st.cfg.block_k))[None, :] < st.vocab


def _v_slice(j, st: Static):
    start = pl.multiple_of(j * st.cfg.block_k, st.cfg.block_k)
    return start, pl.ds(start, st.cfg.block_k)


def _forward_kernel(*refs, st: Static, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    lse_s_ref, lse_t_ref, rows_ref, c_ref = refs[2 + n_teacher :]
    block_n = h_ref.shape[0]
    n_tiles = w_ref.shape[1] // st.cfg.block_k
    whole = slice(None)

    def tile(j):
        start, cols = _v_slice(j, st)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, whole, cols, block_n, st)
        return s, t, _column_mask(start, st)

    def stats_body(j, stats):
        s, t, valid = tile(j)
        return tiles.online_stats_update(stats, s, t, valid, st.loss.kind)

    stats = lax.fori_loop(0, n_tiles, stats_body, tiles.online_stats_init(block_n))
    lse_s, lse_t, rows = tiles.online_stats_finalize(stats, st.loss.kind)
    if st.loss.kind == "jsd":
        def jsd_body(j, acc):
            s, t, valid = tile(j)
            div, kl_q_m = tiles.jsd_tile_terms(s, t, lse_s, lse_t, st.loss.beta)
            return (
                acc[0] + jnp.sum(jnp.where(valid, div, 0.0), axis=1),
                acc[1] + jnp.sum(jnp.where(valid, kl_q_m, 0.0), axis=1),
            )

        zeros = jnp.zeros((block_n,), jnp.float32)
        rows, row_c = lax.fori_loop(0, n_tiles, jsd_body, (zeros, zeros))
    elif st.loss.kind == "rkl":
        row_c = rows
    else:
        row_c = jnp.zeros_like(rows)
    lse_s_ref[...] = lse_s
    lse_t_ref[...] = lse_t
    rows_ref[...] = rows
    c_ref[...] = row_c


def _dz_tile(s, t, valid, stat_refs, rows, dtype, st: Static) -> jax.Array:
    """row_scale * dD/ds for one tile, zero on padding columns, cast to `dtype`."""
    lse_s_ref, lse_t_ref, c_ref, scale_ref = stat_refs
    ds = tiles.student_grad_tile(
        s, t, lse_s_ref[rows], lse_t_ref[rows], c_ref[rows], st.loss.kind, st.loss.beta
    )
    return (jnp.where(valid, ds, 0.0) * scale_ref[rows][:, None]).astype(dtype)


def _dh_kernel(*refs, st: Static, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    stat_refs = refs[2 + n_teacher : 6 + n_teacher]
    (dh_ref,) = refs[6 + n_teacher :]
    block_n = h_ref.shape[0]
    n_h = h_ref.shape[1] // st.cfg.block_h
    whole = slice(None)
    h_chunk = functools.partial(_chunk, size=st.cfg.block_h)

    def zero_body(k, carry):
        dh_ref[:, h_chunk(k)] = jnp.zeros((block_n, st.cfg.block_h), dh_ref.dtype)
        return carry

    lax.fori_loop(0, n_h, zero_body, 0)

    def v_body(j, carry):
        start, cols = _v_slice(j, st)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, whole, cols, block_n, st)
        dz = _dz_tile(s, t, _column_mask(start, st), stat_refs, whole, w_ref.dtype, st)

        def h_body(k, inner):
            ks = h_chunk(k)
            dh_ref[:, ks] += lax.dot_general(
                dz, w_ref[ks, cols], (((1,), (1,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            return inner

        return lax.fori_loop(0, n_h, h_body, carry)

    lax.fori_loop(0, w_ref.shape[1] // st.cfg.block_k, v_body, 0)


def _dw_kernel(*refs, st: Static, n_teacher: int):
    h_ref, w_ref = refs[:2]
    teacher_refs = refs[2 : 2 + n_teacher]
    stat_refs = refs[2 + n_teacher : 6 + n_teacher]
    (dw_ref,) = refs[6 + n_teacher :]
    n_h = h_ref.shape[1] // st.cfg.block_h
    valid = _column_mask(pl.program_id(0) * st.cfg.block_k, st)
    whole = slice(None)
    h_chunk = functools.partial(_chunk, size=st.cfg.block_h)

    def zero_body(k, carry):
        dw_ref[h_chunk(k), :] = jnp.zeros((st.cfg.block_h, st.cfg.block_k), dw_ref.dtype)
        return carry

    lax.fori_loop(0, n_h, zero_body, 0)

    def n_body(i, carry):
        rows = _chunk(i, st.cfg.block_q)
        s, t = _logit_tiles(h_ref, w_ref, teacher_refs, rows, whole, st.cfg.block_q, st)
        dz = _dz_tile(s, t, valid, stat_refs, rows, h_ref.dtype, st)

        def h_body(k, inner):
            ks = h_chunk(k)
            dw_ref[ks, :] += lax.dot_general(
                h_ref[rows, ks], dz, (((0,), (0,)), ((), ())),
                preferred_element_type=jnp.float32,
            )
            return inner

        return lax.fori_loop(0, n_h, h_body, carry)

    lax.fori_loop(0, h_ref.shape[0] // st.cfg.block_q, n_body, 0)


def _teacher_specs(teacher, st: Static, by_rows: bool) -> list[pl.BlockSpec]:
    """BlockSpecs for the teacher operands: row blocks (forward, dh) or V tiles (dW)."""
    bn, bv = st.cfg.block_q, st.cfg.block_k
    if len(teacher) == 1:
        n, v = teacher[0].shape
        if by_rows:
            return [pl.BlockSpec((bn, v), lambda i: (i, 0))]
        return [pl.BlockSpec((n, bv), lambda j: (0, j))]
    (n, ht), (_, v) = teacher[0].shape, teacher[1].shape
    if by_rows:
        return [pl.BlockSpec((bn, ht), lambda i: (i, 0)), pl.BlockSpec((ht, v), lambda i: (0, 0))]
    return [pl.BlockSpec((n, ht), lambda j: (0, 0)), pl.BlockSpec((ht, bv), lambda j: (0, j))]


def _row_block_specs(h_s, w_s, teacher, st: Static) -> list[pl.BlockSpec]:
    """BlockSpecs of (h_s, W_s, *teacher) for a grid over row blocks (forward, dh)."""
    (_, h), v = h_s.shape, w_s.shape[1]
    return [
        pl.BlockSpec((st.cfg.block_q, h), lambda i: (i, 0)),
        pl.BlockSpec((h, v), lambda i: (0, 0)),
        *_teacher_specs(teacher, st, by_rows=True),
    ]


def _forward(h_s, w_s, teacher, st: Static):
    """Per-row (lse_s, lse_t, divergence, row_c), each [Np] f32."""
    n = h_s.shape[0]
    row_spec = pl.BlockSpec((st.cfg.block_q,), lambda i: (i,))
    row_out = jax.ShapeDtypeStruct((n,), jnp.float32)
    return _pallas_call(
        functools.partial(_forward_kernel, st=st, n_teacher=len(teacher)),
        st.cfg,
        grid=(n // st.cfg.block_q,),
        in_specs=_row_block_specs(h_s, w_s, teacher, st),
        out_specs=[row_spec] * 4,
        out_shape=[row_out] * 4,
        name="fused_kd_forward",
    )(h_s, w_s, *teacher)


def _backward(h_s, w_s, teacher, row_stats, st: Static):
    """(dh [Np, Hp] f32, dW [Hp, Vp] f32); row_stats = (lse_s, lse_t, row_c, row_scale)."""
    (n, h), v = h_s.shape, w_s.shape[1]
    by_row = pl.BlockSpec((st.cfg.block_q,), lambda i: (i,))
    dh = _pallas_call(
        functools.partial(_dh_kernel, st=st, n_teacher=len(teacher)),
        st.cfg,
        grid=(n // st.cfg.block_q,),
        in_specs=[*_row_block_specs(h_s, w_s, teacher, st), *[by_row] * 4],
        out_specs=pl.BlockSpec((st.cfg.block_q, h), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n, h), jnp.float32),
        name="fused_kd_dh",
    )(h_s, w_s, *teacher, *row_stats)
    all_rows = pl.BlockSpec((n,), lambda j: (0,))
    dw = _pallas_call(
        functools.partial(_dw_kernel, st=st, n_teacher=len(teacher)),
        st.cfg,
        grid=(v // st.cfg.block_k,),
        in_specs=[
            pl.BlockSpec((n, h), lambda j: (0, 0)),
            pl.BlockSpec((h, st.cfg.block_k), lambda j: (0, j)),
            *_teacher_specs(teacher, st, by_rows=False),
            *[all_rows] * 4,
        ],
        out_specs=pl.BlockSpec((h, st.cfg.block_k), lambda j: (0, j)),
        out_shape=jax.ShapeDtypeStruct((h, v), jnp.float32),
        name="fused_kd_dw",
    )(h_s, w_s, *teacher, *row_stats)
    return dh, dw


def _loss_from_rows(rows: jax.Array, st: Static) -> jax.Array:
    return st.loss.temperature**2 * jnp.sum(rows[: st.n_rows]) / st.n_rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_kd_padded(h_s, w_s, teacher, st: Static) -> jax.Array:
    """Mean over the first `st.n_rows` rows of `T^2 * D`, f32 scalar (padded inputs)."""
    _, _, rows, _ = _forward(h_s, w_s, teacher, st)
    return _loss_from_rows(rows, st)


def _fused_kd_fwd(h_s, w_s, teacher, st):
    lse_s, lse_t, rows, row_c = _forward(h_s, w_s, teacher, st)
    return _loss_from_rows(rows, st), (h_s, w_s, teacher, lse_s, lse_t, row_c)


def _fused_kd_bwd(st, residuals, g):
    h_s, w_s, teacher, lse_s, lse_t, row_c = residuals
    # s = z / T, loss = T^2 mean_n D_n  =>  dloss/dz = (T / N) dD/ds; padded rows: 0.
    is_real = jnp.arange(h_s.shape[0]) < st.n_rows
    row_scale = jnp.where(is_real, g * st.loss.temperature / st.n_rows, 0.0).astype(jnp.float32)
    dh, dw = _backward(h_s, w_s, teacher, (lse_s, lse_t, row_c, row_scale), st)
    zeros = jax.tree.map(jnp.zeros_like, teacher)
    return dh.astype(h_s.dtype), dw.astype(w_s.dtype), zeros


fused_kd_padded.defvjp(_fused_kd_fwd, _fused_kd_bwd)
