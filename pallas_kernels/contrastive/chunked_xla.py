"""The chunked XLA block math: a `lax.scan` over column tiles (no [Ba, Bc] array).

Shapes: row embeddings `a` [Ba, D], column embeddings `c` [Bc, D], logits
`S = scale * a @ c.T` [Ba, Bc], seen one column tile [Ba, tile] at a time.
Tiles are sliced inside the scan body with `lax.dynamic_slice_in_dim` (no
transposed copy of c); c is zero padded to a tile multiple and the padding
masked.

- `lse_forward` / `lse_backward`: online log-sum-exp per row (running max)
  and, optionally, per column (each tile holds whole columns; a column's
  statistics may arrive from other row blocks, as on a device ring); the
  backward recomputes each tile, `dS = g_row * softmax_row(S) + g_col *
  softmax_col(S)`.
- `log_sigmoid_forward` / `log_sigmoid_backward`: `sum_ij log sigmoid(-(S_ij + b))`.
- `ScanBlocks(tile)`: these as the block math of `blockwise_vjp.py`, whose
  custom_vjp losses make impl="chunked" (one block) and the ring.
- `argmax_pass`: a max-only pass (no exp, no gradient) for the metrics of
  implementations that compute the loss elsewhere (Pallas).

Masked logits (padding columns; the self-similarity for NT-Xent) are -inf:
they add exp(-inf) = 0 to a log-sum-exp and log sigmoid(+inf) = 0 to the
sigmoid sum, and get zero gradient in both. All sums are in float32.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.contrastive.tile_math import F32, MaxStats, init_stats, merge_tile, zeros_like_f32

# Column tile of the chunked path (and of each block on a device ring). On CPU
# (2 cores, d=256, f32, fwd+bwd) the CPU time is flat across tiles 256..1024
# (B=4096: 320 ms for each; B=16384: 5.66-5.73 s; tile 128 is 10% slower
# there), while the scratch memory grows with the tile (B=16384: 64 / 97 /
# 161 MiB for 256 / 512 / 1024, vs ~4 GiB for the reference). 512 keeps that
# below 1/40 of the reference and gives accelerators, where XLA runs this path
# when Pallas cannot, matmuls wide enough. See benchmarks/contrastive_loss.py.
DEFAULT_TILE = 512


class Tile(NamedTuple):
    """What a scan step sees of one column tile."""

    start: jax.Array  # first (local) column of the tile
    c: jax.Array  # [tile, D] column embeddings (zero padded)
    g: jax.Array  # [Ba, tile] f32 unscaled products a @ c.T
    s: jax.Array  # [Ba, tile] f32 scaled logits, masked entries -inf
    cols: Any  # per-column inputs sliced to this tile ([tile, ...] leaves), or None


def _pad_leading(x: jax.Array, n: int) -> jax.Array:
    if x.shape[0] == n:
        return x
    return jnp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def num_tiles(n_cols: int, tile: int) -> tuple[int, int]:
    """(tile actually used, number of tiles): the tile is clamped to n_cols."""
    tile = max(1, min(tile, n_cols))
    return tile, -(-n_cols // tile)


def scan_column_tiles(
    a: jax.Array,
    c: jax.Array,
    scale: jax.Array,
    step: Callable[[Any, Tile], tuple[Any, Any]],
    carry: Any,
    col_xs: Any = None,
    *,
    tile: int,
    row_offset: jax.Array | int = 0,
    col_offset: jax.Array | int = 0,
    exclude_diagonal: bool = False,
) -> tuple[Any, Any]:
    """Runs `step(carry, Tile)` over column tiles of `S = scale * a @ c.T`.

    Args:
      a: [Ba, D] row embeddings; c: [Bc, D] column embeddings; scale: f32 scalar.
      col_xs: pytree of per-column inputs with leading dim Bc (zero padded and
        handed to `step` tile by tile as `Tile.cols`).
      row_offset, col_offset: global index of a's first row and c's first
        column (for argmax indices and the diagonal mask).
      exclude_diagonal: mask logits whose global row and column indices match.
    Returns:
      (final carry, per-column outputs of `step` with leading dim Bc).
    """
    n_rows, n_cols = a.shape[0], c.shape[0]
    tile, n_tiles = num_tiles(n_cols, tile)
    n_pad = n_tiles * tile
    c_pad = _pad_leading(c, n_pad)
    col_xs = jax.tree.map(
        lambda x: _pad_leading(x, n_pad).reshape(n_tiles, tile, *x.shape[1:]), col_xs
    )
    needs_mask = exclude_diagonal or n_pad != n_cols

    def body(carry, xs):
        t, cols = xs
        start = t * tile
        c_t = lax.dynamic_slice_in_dim(c_pad, start, tile, axis=0)
        g = jnp.dot(a, c_t.T, preferred_element_type=F32)
        s = scale * g
        if needs_mask:
            col_idx = start + jnp.arange(tile)[None, :]
            keep = col_idx < n_cols
            if exclude_diagonal:
                row_idx = row_offset + jnp.arange(n_rows)[:, None]
                keep = keep & (row_idx != col_offset + col_idx)
            s = jnp.where(keep, s, -jnp.inf)
        return step(carry, Tile(start, c_t, g, s, cols))

    carry, ys = lax.scan(body, carry, (jnp.arange(n_tiles), col_xs))
    ys = jax.tree.map(lambda y: y.reshape(n_pad, *y.shape[2:])[:n_cols], ys)
    return carry, ys


# ---------------------------------------------------------------- log-sum-exp


def lse_forward(
    a: jax.Array,
    c: jax.Array,
    scale: jax.Array,
    rows: MaxStats,
    cols: MaxStats | None,
    *,
    tile: int,
    row_offset: jax.Array | int = 0,
    col_offset: jax.Array | int = 0,
    exclude_diagonal: bool = False,
    with_sumexp: bool = True,
) -> tuple[MaxStats, MaxStats | None]:
    """Merges the logits of `a` [Ba, D] x `c` [Bc, D] into row stats [Ba] and,
    unless `cols` is None, column stats [Bc]. Argmax indices are global."""

    def step(rows, t: Tile):
        rows = merge_tile(rows, t.s, 1, col_offset + t.start, with_sumexp)
        if t.cols is None:
            return rows, None
        return rows, merge_tile(t.cols, t.s, 0, row_offset, with_sumexp)

    return scan_column_tiles(
        a, c, scale, step, rows, cols, tile=tile, row_offset=row_offset,
        col_offset=col_offset, exclude_diagonal=exclude_diagonal,
    )


def lse_backward(
    a: jax.Array,
    c: jax.Array,
    scale: jax.Array,
    row_lse: jax.Array,
    g_row: jax.Array,
    col_lse: jax.Array | None = None,
    g_col: jax.Array | None = None,
    *,
    tile: int,
    row_offset: jax.Array | int = 0,
    col_offset: jax.Array | int = 0,
    exclude_diagonal: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cotangents (da [Ba, D], dc [Bc, D], dscale []) in f32 of
    `<g_row, row_lse> + <g_col, col_lse>` given the final LSEs (recomputes S)."""
    with_cols = col_lse is not None

    def step(carry, t: Tile):
        da, dscale = carry
        ds = g_row[:, None] * jnp.exp(t.s - row_lse[:, None])
        if with_cols:
            lse_c, g_c = t.cols
            ds = ds + g_c[None, :] * jnp.exp(t.s - lse_c[None, :])
        da = da + jnp.dot(ds, t.c, preferred_element_type=F32)
        dc = jnp.dot(ds.T, a, preferred_element_type=F32)
        return (da, dscale + jnp.sum(ds * t.g)), dc

    init = (zeros_like_f32(a, a.shape), zeros_like_f32(a))
    col_xs = (col_lse, g_col) if with_cols else None
    (da, dscale), dc = scan_column_tiles(
        a, c, scale, step, init, col_xs, tile=tile, row_offset=row_offset,
        col_offset=col_offset, exclude_diagonal=exclude_diagonal,
    )
    return da * scale, dc * scale, dscale


# ---------------------------------------------------------------- log-sigmoid


def log_sigmoid_forward(
    a: jax.Array,
    c: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    rows: MaxStats,
    *,
    tile: int,
    col_offset: jax.Array | int = 0,
) -> tuple[jax.Array, MaxStats]:
    """(sum_ij log sigmoid(-(S_ij + bias)) as f32 [], updated row max stats)."""

    def step(carry, t: Tile):
        total, rows = carry
        total = total + jnp.sum(jax.nn.log_sigmoid(-(t.s + bias)))
        return (total, merge_tile(rows, t.s, 1, col_offset + t.start, False)), None

    (total, rows), _ = scan_column_tiles(
        a, c, scale, step, (zeros_like_f32(a), rows), tile=tile, col_offset=col_offset
    )
    return total, rows


def log_sigmoid_backward(
    a: jax.Array, c: jax.Array, scale: jax.Array, bias: jax.Array, g: jax.Array, *, tile: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Cotangents (da, dc, dscale, dbias) in f32 of `g * log_sigmoid_forward(...)[0]`."""

    def step(carry, t: Tile):
        da, dscale, dbias = carry
        ds = -g * jax.nn.sigmoid(t.s + bias)
        da = da + jnp.dot(ds, t.c, preferred_element_type=F32)
        dc = jnp.dot(ds.T, a, preferred_element_type=F32)
        return (da, dscale + jnp.sum(ds * t.g), dbias + jnp.sum(ds)), dc

    zero = zeros_like_f32(a)
    (da, dscale, dbias), dc = scan_column_tiles(
        a, c, scale, step, (zeros_like_f32(a, a.shape), zero, zero), tile=tile
    )
    return da * scale, dc * scale, dscale, dbias


# ---------------------------------------------------------------- block math


class ScanBlocks(NamedTuple):
    """Block math (the protocol in `blockwise_vjp.py`) by a `lax.scan` over
    column tiles of `tile` columns."""

    tile: int

    def softmax_forward(self, a, c, scale, rows, cols, **offsets):
        return lse_forward(a, c, scale, rows, cols, tile=self.tile, **offsets)

    def softmax_backward(self, a, c, scale, row_lse, g_row, col_lse, g_col, **offsets):
        return lse_backward(a, c, scale, row_lse, g_row, col_lse, g_col, tile=self.tile, **offsets)

    def sigmoid_forward(self, a, c, scale, bias, rows, *, col_offset=0):
        return log_sigmoid_forward(a, c, scale, bias, rows, tile=self.tile, col_offset=col_offset)

    def sigmoid_backward(self, a, c, scale, bias, g):
        return log_sigmoid_backward(a, c, scale, bias, g, tile=self.tile)


def as_blocks(blocks: Any) -> Any:
    """A block-math object; an int is the tile of `ScanBlocks`."""
    return ScanBlocks(blocks) if isinstance(blocks, int) else blocks


def argmax_pass(
    a: jax.Array, c: jax.Array, scale: jax.Array, tile: int, mode: str, with_cols: bool
) -> tuple[jax.Array, jax.Array | None]:
    """Row (and column) int32 argmax [b] of the logits by a max-only tile pass
    (no exp, no gradient): metrics for paths that compute the loss elsewhere."""
    cols = init_stats(c.shape[0], c) if with_cols else None
    rows, cols = lse_forward(
        a, c, scale, init_stats(a.shape[0], a), cols, tile=tile,
        exclude_diagonal=mode == "nt_xent", with_sumexp=False,
    )
    return rows.argmax, cols.argmax if with_cols else None
