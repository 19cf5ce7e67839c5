"""Pallas kernels for tiled contrastive losses: one row-reduction forward and
one row-gradient backward, each driven two ways.

Both kernels own a block of `block_q` rows of zq and walk over the column
blocks of zk, recomputing `logits = scale * zq zk^T + bias` tile by tile in
on-chip memory; no [Bq, Bk] array ever exists in device memory.

The two drivers differ only in how the columns are walked, in iotas, BlockSpecs,
scratch and launch parameters; each lives in its own module:

* `pallas_triton.py`, the "loop" driver (Triton, and interpret mode): one program
  per row block, a `lax.fori_loop` over the column blocks of the whole zk operand.
* `pallas_mosaic_tpu.py`, the "grid" driver (Mosaic TPU): a 2-D grid, one zk tile
  in VMEM per step, the running statistics in VMEM scratch.

Callers pass operands already padded (see `pallas_vjp.py`): rows to a multiple
of lcm(block_q, block_k), D to `KernelConfig.padded_dim` (`pallas_kernels.backend`).
`n_q` / `n_k` give the real sizes; padded cells are masked out of every sum.

Scalars (`scale`, `bias` as f32[2]; the diagonal `offset` as int32[1]) are
runtime inputs, so a ring can pass a traced offset per step.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.backend import KernelConfig
from pallas_kernels.contrastive.pallas_mosaic_tpu import GridDriver
from pallas_kernels.contrastive.pallas_triton import LoopDriver

DRIVERS = {"loop": LoopDriver, "grid": GridDriver}

_NT_DIMS = (((1,), (1,)), ((), ()))  # zq [bq, D] . zk [bk, D] -> [bq, bk]
_NN_DIMS = (((1,), (0,)), ((), ()))  # w [bq, bk] . zk [bk, D] -> [bq, D]


class _Geometry(NamedTuple):
    """Static facts about one kernel call."""

    block_q: int
    block_k: int
    num_k_blocks: int
    n_q: int
    n_k: int
    has_diag: bool
    pos_offsets: tuple[int, ...]  # backward only: cells `col - row == o` are positives (see row_grad)
    precision: lax.Precision
    lanes: int
    driver: type  # LoopDriver | GridDriver


def _geometry(cfg: KernelConfig, zq, zk, n_q: int, n_k: int, has_diag: bool,
              pos_offsets: tuple[int, ...] = ()) -> _Geometry:
    if zq.shape[0] % cfg.block_q or zk.shape[0] % cfg.block_k:
        raise ValueError(f"padded rows {zq.shape[0]}, {zk.shape[0]} do not fit blocks {cfg}")
    exact = zq.dtype == jnp.float32 or zk.dtype == jnp.float32
    return _Geometry(
        block_q=cfg.block_q,
        block_k=cfg.block_k,
        num_k_blocks=zk.shape[0] // cfg.block_k,
        n_q=n_q,
        n_k=n_k,
        has_diag=has_diag,
        pos_offsets=tuple(int(o) for o in pos_offsets),
        precision=lax.Precision.HIGHEST if exact else lax.Precision.DEFAULT,
        lanes=cfg.vec_lanes,
        driver=DRIVERS[cfg.driver],
    )


def _cell_ids(q_block, k_block, geo: _Geometry) -> tuple[jax.Array, jax.Array]:
    """Global (row [bq, 1|bk], col [1|bq, bk]) indices of one tile's cells."""
    rows, cols = geo.driver.local_cell_ids(geo.block_q, geo.block_k)
    return rows + q_block * geo.block_q, cols + k_block * geo.block_k


def _positive_cells(q_block, k_block, geo: _Geometry) -> jax.Array:
    """[bq, bk] bool: the cells `col - row` in geo.pos_offsets."""
    rows, cols = _cell_ids(q_block, k_block, geo)
    hit = functools.reduce(jnp.logical_or, [cols - rows == o for o in geo.pos_offsets])
    return jnp.broadcast_to(hit, (geo.block_q, geo.block_k))


def _logit_tile(zq, zk, scale, bias, offset, q_block, k_block, geo: _Geometry):
    """logits [bq, bk] f32, valid [bq, bk] (real rows and columns), diag or None."""
    dots = lax.dot_general(
        zq, zk, _NT_DIMS, precision=geo.precision, preferred_element_type=jnp.float32
    )
    logits = scale * dots + bias
    rows, cols = _cell_ids(q_block, k_block, geo)
    valid = jnp.logical_and(rows < geo.n_q, cols < geo.n_k)
    diag = (cols - rows == offset) if geo.has_diag else None
    return logits, valid, diag


def _forward_kernel(scal_ref, off_ref, zq_ref, zk_ref, out_ref, *scratch, tiles, geo):
    q_block = pl.program_id(0)
    zq = zq_ref[...]
    scale, bias, offset = scal_ref[0], scal_ref[1], off_ref[0]

    def load_k(k_block):
        return (zk_ref[geo.driver.k_slice(geo, k_block), :],)

    def step(k_block, carry, zk):
        logits, valid, diag = _logit_tile(zq, zk, scale, bias, offset, q_block, k_block, geo)
        return tiles.fwd_update(carry, logits, valid, diag)

    def finish(carry):
        out_ref[...] = tiles.fwd_finalize(carry)

    init = lambda: tiles.fwd_init((geo.block_q, geo.lanes))
    geo.driver.walk_columns(geo, init, step, load_k, finish, scratch)


def _backward_kernel(scal_ref, off_ref, zq_ref, zk_ref, *refs, tiles, geo):
    n = tiles.n_vecs
    q_vec_refs, k_vec_refs, out_refs = refs[:n], refs[n:2 * n], refs[2 * n:]
    pos_ref = None
    if geo.pos_offsets:
        pos_ref, out_refs = out_refs[0], out_refs[1:]
    n_out = 2 if tiles.has_bias_grad else 1
    out_refs, scratch = out_refs[:n_out], out_refs[n_out:]
    q_block = pl.program_id(0)
    zq = zq_ref[...]
    scale, bias, offset = scal_ref[0], scal_ref[1], off_ref[0]
    q_vecs = tuple(ref[...] for ref in q_vec_refs)

    def load_k(k_block):
        cols = geo.driver.k_slice(geo, k_block)
        return zk_ref[cols, :], tuple(ref[0:1, cols] for ref in k_vec_refs)

    def step(k_block, carry, zk, k_vecs):
        logits, valid, diag = _logit_tile(zq, zk, scale, bias, offset, q_block, k_block, geo)
        weight = tiles.bwd_weight(logits, valid, diag, q_vecs, k_vecs)
        if geo.pos_offsets:  # in f32, before the cast: p - 1 survives where p ~ 1
            positive = jnp.logical_and(valid, _positive_cells(q_block, k_block, geo))
            weight = tiles.minus_positives(weight, positive, pos_ref[...])
        dz = carry[0] + lax.dot_general(
            weight.astype(zk.dtype), zk, _NN_DIMS,
            precision=geo.precision, preferred_element_type=jnp.float32,
        )
        if tiles.has_bias_grad:
            return dz, carry[1] + jnp.sum(weight, axis=1, keepdims=True)
        return (dz,)

    def finish(carry):
        out_refs[0][...] = scale * carry[0]
        if tiles.has_bias_grad:
            out_refs[1][...] = carry[1]

    def init():
        dz = jnp.zeros((geo.block_q, zq.shape[1]), jnp.float32)
        if tiles.has_bias_grad:
            return dz, jnp.zeros((geo.block_q, geo.lanes), jnp.float32)
        return (dz,)

    geo.driver.walk_columns(geo, init, step, load_k, finish, scratch)


def _call(specs, kernel, in_specs, out_specs, out_shape, scratch_shapes, name):
    """pl.pallas_call on the driver's grid, with its launch parameters."""
    return pl.pallas_call(
        kernel, grid=specs.grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        interpret=specs.cfg.interpret, name=name, **specs.call_kwargs(scratch_shapes),
    )


def _check_operands(zq, zk, scalars, offset):
    if zq.ndim != 2 or zk.ndim != 2 or zq.shape[1] != zk.shape[1]:
        raise ValueError(f"zq {zq.shape} and zk {zk.shape} must be [rows, D] with the same D")
    if scalars.shape != (2,) or offset.shape != (1,):
        raise ValueError(f"scalars {scalars.shape} must be (2,), offset {offset.shape} (1,)")


def row_reduce(tiles, cfg: KernelConfig, zq, zk, scalars, offset, *,
               n_q: int, n_k: int, has_diag: bool) -> jax.Array:
    """Forward: per-row statistic of `tiles` over all columns.

    Args:
      tiles: tiles.SOFTMAX (row LSE) or tiles.SIGMOID (row sums of -log sigmoid).
      zq: [Rq, Dp] padded rows; zk: [Rk, Dp]; scalars: f32[2] = (scale, bias);
      offset: int32[1], cells with `col - row == offset` are the diagonal.
      n_q, n_k: real (unpadded) row counts.
    Returns:
      [Rq, W] f32, all W lanes equal (W = cfg.vec_lanes).
    """
    _check_operands(zq, zk, scalars, offset)
    geo = _geometry(cfg, zq, zk, n_q, n_k, has_diag)
    specs = geo.driver(cfg, geo, zq.shape[0], zk.shape[0], zq.shape[1])
    width = geo.lanes
    scratch = geo.driver.scratch([(geo.block_q, width)] * len(tiles.fwd_init((1, 1))))
    kernel = functools.partial(_forward_kernel, tiles=tiles, geo=geo)
    return _call(
        specs, kernel,
        in_specs=[*specs.scalars, specs.rows(zq.shape[1]), specs.zk(zk.shape)],
        out_specs=specs.rows(width),
        out_shape=jax.ShapeDtypeStruct((zq.shape[0], width), jnp.float32),
        scratch_shapes=scratch,
        name=f"contrastive_{tiles.__name__.strip('_').lower()}_fwd",
    )(scalars, offset, zq, zk)


def row_grad(tiles, cfg: KernelConfig, zq, zk, scalars, offset, q_vecs, k_vecs, *,
             n_q: int, n_k: int, has_diag: bool, pos_offsets: Sequence[int] = (),
             pos_w: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Backward: `dzq = scale * W zk` with W = tiles.bwd_weight per tile.

    Args:
      zq, zk, scalars, offset, n_q, n_k, has_diag: as in `row_reduce`.
      pos_offsets, pos_w: static offsets and [Rq, W] per-row weights (lane-replicated):
        cells `col - row == o` (o in pos_offsets) of row i hold a positive with
        the term `-pos_w[i] * S_ij`; its weight is subtracted in the f32 tile
        before the tile is cast to zk's dtype for the matmul.
      q_vecs: `tiles.n_vecs` arrays [Rq, W] (per-row inputs, lane-replicated).
      k_vecs: `tiles.n_vecs` arrays [H, Rk] (per-column inputs, H = cfg.vec_sublanes).
    Returns:
      dzq [Rq, Dp] f32 and, for families with a bias, per-row sums of W [Rq, W]
      (else None).
    """
    _check_operands(zq, zk, scalars, offset)
    if len(q_vecs) != tiles.n_vecs or len(k_vecs) != tiles.n_vecs:
        raise ValueError(f"expected {tiles.n_vecs} row and column vectors")
    if bool(pos_offsets) != (pos_w is not None):
        raise ValueError("pos_offsets and pos_w go together")
    pos_in = [] if pos_w is None else [pos_w]
    geo = _geometry(cfg, zq, zk, n_q, n_k, has_diag, tuple(pos_offsets))
    specs = geo.driver(cfg, geo, zq.shape[0], zk.shape[0], zq.shape[1])
    rows, dp, width = zq.shape[0], zq.shape[1], geo.lanes
    out_specs = [specs.rows(dp)]
    out_shape = [jax.ShapeDtypeStruct((rows, dp), jnp.float32)]
    scratch = [(geo.block_q, dp)]
    if tiles.has_bias_grad:
        out_specs.append(specs.rows(width))
        out_shape.append(jax.ShapeDtypeStruct((rows, width), jnp.float32))
        scratch.append((geo.block_q, width))
    kernel = functools.partial(_backward_kernel, tiles=tiles, geo=geo)
    outs = _call(
        specs, kernel,
        in_specs=[*specs.scalars, specs.rows(dp), specs.zk(zk.shape),
                  *[specs.rows(width)] * len(q_vecs),
                  *[specs.cols(k_vecs[0].shape[0])] * len(k_vecs), *[specs.rows(width)] * len(pos_in)],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=geo.driver.scratch(scratch),
        name=f"contrastive_{tiles.__name__.strip('_').lower()}_bwd",
    )(scalars, offset, zq, zk, *q_vecs, *k_vecs, *pos_in)
    return outs[0], (outs[1] if tiles.has_bias_grad else None)
