"""Pallas kernels for tiled contrastive losses: one row-reduction forward and
one row-gradient backward, each driven two ways.

Both kernels own a block of `block_q` rows of zq and walk over the column
blocks of zk, recomputing `logits = scale * zq zk^T + bias` tile by tile in
on-chip memory; no [Bq, Bk] array ever exists in device memory.

* "loop" driver (Triton, and interpret mode): grid = (row blocks,); the zk
  operand is passed whole (a pointer on GPU) and a `lax.fori_loop` inside the
  kernel loads one `block_k` slice per step, carrying the running statistics
  in registers, as JAX's Triton flash attention does.
* "grid" driver (Mosaic TPU): grid = (row blocks, column blocks) with the
  column axis "arbitrary"; BlockSpecs bring one zk tile into VMEM per step and
  the running statistics live in VMEM scratch, initialised at the first column
  block and written out at the last (the TPU flash-attention pattern). Block
  shapes obey the (8, 128) tiling: D is padded to 128 lanes, row statistics are
  [rows, 128] lane-replicated, column statistics [8, cols].

Callers pass operands already padded (see `primitives.py`): rows to a multiple
of lcm(block_q, block_k), D to `KernelConfig.padded_dim` (`pallas_kernels.backend`).
`n_q` / `n_k` give the real sizes; padded cells are masked out of every sum.

Scalars (`scale`, `bias` as f32[2]; the diagonal `offset` as int32[1]) are
runtime inputs, so a ring can pass a traced offset per step.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.backend import KernelConfig

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
    grid_driver: bool


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
        grid_driver=cfg.driver == "grid",
    )


def _cell_ids(q_block, k_block, geo: _Geometry) -> tuple[jax.Array, jax.Array]:
    """Global (row [bq, 1|bk], col [1|bq, bk]) indices of one tile's cells."""
    shape = (geo.block_q, geo.block_k)
    if geo.grid_driver:  # Mosaic wants full-shape iotas.
        rows = lax.broadcasted_iota(jnp.int32, shape, 0)
        cols = lax.broadcasted_iota(jnp.int32, shape, 1)
    else:  # Triton lowers 1-D aranges broadcast to 2-D.
        rows = jnp.arange(geo.block_q, dtype=jnp.int32)[:, None]
        cols = jnp.arange(geo.block_k, dtype=jnp.int32)[None, :]
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


def _walk_columns(geo: _Geometry, init: Callable, step: Callable, load_k: Callable,
                  finish: Callable, scratch: Sequence) -> None:
    """Runs `step(k_block, carry, *load_k(k_block))` over all column blocks.

    Loop driver: a fori_loop carrying values (`scratch` is empty). Grid driver: one
    step per program along grid axis 1, the carry kept in `scratch` refs.
    """
    if not geo.grid_driver:
        body = lambda k_block, carry: step(k_block, carry, *load_k(k_block))
        finish(lax.fori_loop(0, geo.num_k_blocks, body, init()))
        return
    k_block = pl.program_id(1)

    @pl.when(k_block == 0)
    def _init():
        for ref, value in zip(scratch, init()):
            ref[...] = value

    carry = step(k_block, tuple(ref[...] for ref in scratch), *load_k(None))
    for ref, value in zip(scratch, carry):
        ref[...] = value

    @pl.when(k_block == geo.num_k_blocks - 1)
    def _finish():
        finish(tuple(ref[...] for ref in scratch))


def _k_slice(geo: _Geometry, k_block):
    """Column-block slice of a whole-array ref (loop driver) or everything (grid)."""
    if k_block is None:
        return slice(None)
    return pl.ds(pl.multiple_of(k_block * geo.block_k, geo.block_k), geo.block_k)


def _forward_kernel(scal_ref, off_ref, zq_ref, zk_ref, out_ref, *scratch, tiles, geo):
    q_block = pl.program_id(0)
    zq = zq_ref[...]
    scale, bias, offset = scal_ref[0], scal_ref[1], off_ref[0]

    def load_k(k_block):
        return (zk_ref[_k_slice(geo, k_block), :],)

    def step(k_block, carry, zk):
        logits, valid, diag = _logit_tile(zq, zk, scale, bias, offset, q_block, k_block, geo)
        return tiles.fwd_update(carry, logits, valid, diag)

    def finish(carry):
        out_ref[...] = tiles.fwd_finalize(carry)

    init = lambda: tiles.fwd_init((geo.block_q, geo.lanes))
    _walk_columns(geo, init, step, load_k, finish, scratch)


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
        cols = _k_slice(geo, k_block)
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

    _walk_columns(geo, init, step, load_k, finish, scratch)


class _Specs:
    """BlockSpecs of one driver; `rows(w)` / `cols(h)` are per-row / per-column blocks."""

    def __init__(self, cfg: KernelConfig, geo: _Geometry, n_q_rows: int, n_k_rows: int, dim: int):
        self.cfg, self.geo, self.dim = cfg, geo, dim
        n_q_blocks = n_q_rows // geo.block_q
        if cfg.driver == "grid":
            self.grid = (n_q_blocks, geo.num_k_blocks)
            smem = pl.BlockSpec(memory_space=pltpu.SMEM)
            self.scalars = [smem, smem]
            self.rows = lambda width: pl.BlockSpec((geo.block_q, width), lambda i, k: (i, 0))
            self.cols = lambda height: pl.BlockSpec((height, geo.block_k), lambda i, k: (0, k))
        else:
            self.grid = (n_q_blocks,)
            self.scalars = [pl.BlockSpec((2,), lambda i: (0,)), pl.BlockSpec((1,), lambda i: (0,))]
            self.rows = lambda width: pl.BlockSpec((geo.block_q, width), lambda i: (i, 0))
            self.cols = lambda height: pl.BlockSpec((height, n_k_rows), lambda i: (0, 0))

    def call(self, kernel, in_specs, out_specs, out_shape, scratch_shapes, name):
        cfg = self.cfg
        kwargs = {}
        if cfg.driver == "grid":
            kwargs["scratch_shapes"] = scratch_shapes
            if not cfg.interpret:
                kwargs["compiler_params"] = pltpu.CompilerParams(
                    dimension_semantics=(pltpu.PARALLEL, pltpu.ARBITRARY))
        elif not cfg.interpret:
            # Unmeasured heuristic: more warps once a tile or the [block_q, D]
            # accumulator gets large.
            big = self.geo.block_q * max(self.geo.block_k, self.dim) >= 128 * 128
            kwargs["compiler_params"] = pltriton.CompilerParams(
                num_warps=cfg.num_warps or (8 if big else 4),
                num_stages=cfg.num_stages or 2,
            )
        return pl.pallas_call(
            kernel, grid=self.grid, in_specs=in_specs, out_specs=out_specs,
            out_shape=out_shape, interpret=cfg.interpret, name=name, **kwargs,
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
    specs = _Specs(cfg, geo, zq.shape[0], zk.shape[0], zq.shape[1])
    width = geo.lanes
    zk_spec = _zk_spec(cfg, geo, zk.shape)
    scratch = [pltpu.VMEM((geo.block_q, width), jnp.float32)
               for _ in tiles.fwd_init((1, 1))] if cfg.driver == "grid" else []
    kernel = functools.partial(_forward_kernel, tiles=tiles, geo=geo)
    return specs.call(
        kernel,
        in_specs=[*specs.scalars, specs.rows(zq.shape[1]), zk_spec],
        out_specs=specs.rows(width),
        out_shape=jax.ShapeDtypeStruct((zq.shape[0], width), jnp.float32),
        scratch_shapes=scratch,
        name=f"contrastive_{tiles.__name__.strip('_').lower()}_fwd",
    )(scalars, offset, zq, zk)


def _zk_spec(cfg: KernelConfig, geo: _Geometry, zk_shape) -> pl.BlockSpec:
    if cfg.driver == "grid":
        return pl.BlockSpec((geo.block_k, zk_shape[1]), lambda i, k: (k, 0))
    return pl.BlockSpec(zk_shape, lambda i: (0, 0))


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
    specs = _Specs(cfg, geo, zq.shape[0], zk.shape[0], zq.shape[1])
    rows, dp, width = zq.shape[0], zq.shape[1], geo.lanes
    out_specs = [specs.rows(dp)]
    out_shape = [jax.ShapeDtypeStruct((rows, dp), jnp.float32)]
    scratch = [pltpu.VMEM((geo.block_q, dp), jnp.float32)]
    if tiles.has_bias_grad:
        out_specs.append(specs.rows(width))
        out_shape.append(jax.ShapeDtypeStruct((rows, width), jnp.float32))
        scratch.append(pltpu.VMEM((geo.block_q, width), jnp.float32))
    kernel = functools.partial(_backward_kernel, tiles=tiles, geo=geo)
    outs = specs.call(
        kernel,
        in_specs=[*specs.scalars, specs.rows(dp), _zk_spec(cfg, geo, zk.shape),
                  *[specs.rows(width)] * len(q_vecs),
                  *[specs.cols(k_vecs[0].shape[0])] * len(k_vecs), *[specs.rows(width)] * len(pos_in)],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=scratch if cfg.driver == "grid" else [],
        name=f"contrastive_{tiles.__name__.strip('_').lower()}_bwd",
    )(scalars, offset, zq, zk, *q_vecs, *k_vecs, *pos_in)
    return outs[0], (outs[1] if tiles.has_bias_grad else None)
