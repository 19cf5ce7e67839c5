"""Tiled contrastive-loss math: a `lax.scan` over column tiles, never a [B, B] array.

Shapes: row embeddings `a` [Ba, D], column embeddings `c` [Bc, D], logits
`S = scale * a @ c.T` [Ba, Bc] seen one column tile [Ba, tile] at a time.

Building blocks (pure functions, shared with the device ring in
`distributed.py`, which threads the same running statistics across devices):
- `lse_forward` / `lse_backward`: online log-sum-exp per row (running max)
  and, optionally, per column (each tile holds whole columns, and a column's
  statistics may be carried in from other row blocks); the backward recomputes
  each tile, `dS = g_row * softmax_row(S) + g_col * softmax_col(S)`.
- `log_sigmoid_forward` / `log_sigmoid_backward`: `sum_ij log sigmoid(-(S_ij + b))`
  (every pair as a negative; the caller adds the positives' correction).
- `tiled_lse`, `tiled_negative_log_sigmoid`: single-device `jax.custom_vjp`
  wrappers whose residuals are O(B*D + B), so peak memory is O(B*D + B*tile).

Masked logits (padding columns, and the self-similarity for NT-Xent) are set
to -inf: they add exp(-inf) = 0 to a log-sum-exp and log sigmoid(+inf) = 0 to
the sigmoid sum, and get zero gradient in both. All sums are in float32.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


class MaxStats(NamedTuple):
    """Online statistics of the logits seen so far along one axis, each [n].

    max: running maximum (-inf before any unmasked logit).
    sumexp: sum of exp(logit - max) (unused, zero, for max-only passes).
    argmax: int32 global index of the first maximum.
    """

    max: jax.Array
    sumexp: jax.Array
    argmax: jax.Array


class Tile(NamedTuple):
    """What a scan step sees of one column tile."""

    start: jax.Array  # first (local) column of the tile
    c: jax.Array  # [tile, D] column embeddings (zero padded)
    g: jax.Array  # [Ba, tile] f32 unscaled products a @ c.T
    s: jax.Array  # [Ba, tile] f32 scaled logits, masked entries -inf
    cols: Any  # per-column inputs sliced to this tile ([tile, ...] leaves), or None


def init_stats(n: int, like: jax.Array) -> MaxStats:
    """Empty statistics for n rows (or columns).

    Arrays are made `like` an input embedding so that, inside `shard_map`,
    they vary over the same mesh axes as the values later merged into them.
    """
    return MaxStats(
        jnp.full_like(like, -jnp.inf, F32, shape=(n,)),
        jnp.zeros_like(like, F32, shape=(n,)),
        jnp.zeros_like(like, jnp.int32, shape=(n,)),
    )


def zeros_like_f32(like: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """f32 zeros of `shape`, varying over the same mesh axes as `like`."""
    return jnp.zeros_like(like, F32, shape=shape)


def _finite_or_zero(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def stats_lse(stats: MaxStats) -> jax.Array:
    """Log-sum-exp [n] of all logits merged into `stats`."""
    return _finite_or_zero(stats.max) + jnp.log(stats.sumexp)


def merge_tile(
    stats: MaxStats, s: jax.Array, axis: int, index_offset: jax.Array, with_sumexp: bool
) -> MaxStats:
    """Merges the logits `s` (reduced along `axis`) into running statistics.

    `index_offset` turns a position along `axis` into a global index. Ties keep
    the earlier maximum, as `jnp.argmax` does on the full matrix.
    """
    tile_max = jnp.max(s, axis=axis)
    tile_arg = jnp.argmax(s, axis=axis).astype(jnp.int32) + index_offset
    new_max = jnp.maximum(stats.max, tile_max)
    argmax = jnp.where(tile_max > stats.max, tile_arg, stats.argmax)
    sumexp = stats.sumexp
    if with_sumexp:
        shift = _finite_or_zero(new_max)
        sumexp = sumexp * jnp.exp(stats.max - shift) + jnp.sum(
            jnp.exp(s - jnp.expand_dims(shift, axis)), axis=axis
        )
    return MaxStats(new_max, sumexp, argmax)


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


# ------------------------------------------------- single-device custom_vjp


class LseResult(NamedTuple):
    """Row (and column) log-sum-exp [B] and int32 argmax [B] of the logits."""

    row_lse: jax.Array
    row_argmax: jax.Array
    col_lse: jax.Array | None
    col_argmax: jax.Array | None


def _cotangents(a, c, scale, da, dc, dscale):
    return da.astype(a.dtype), dc.astype(c.dtype), dscale.astype(scale.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def tiled_lse(
    a: jax.Array, c: jax.Array, scale: jax.Array, tile: int, exclude_diagonal: bool, with_cols: bool
) -> LseResult:
    """Row (and, if with_cols, column) LSE of `scale * a @ c.T`, by column tiles.

    a: [Ba, D], c: [Bc, D], scale: f32 []. Differentiable in a, c and scale;
    the argmax outputs are integers (no gradient).
    """
    return _tiled_lse_fwd(a, c, scale, tile, exclude_diagonal, with_cols)[0]


def _tiled_lse_fwd(a, c, scale, tile, exclude_diagonal, with_cols):
    cols = init_stats(c.shape[0], c) if with_cols else None
    rows, cols = lse_forward(
        a, c, scale, init_stats(a.shape[0], a), cols, tile=tile, exclude_diagonal=exclude_diagonal
    )
    row_lse = stats_lse(rows)
    col_lse = stats_lse(cols) if with_cols else None
    out = LseResult(row_lse, rows.argmax, col_lse, cols.argmax if with_cols else None)
    return out, (a, c, scale, row_lse, col_lse)


def _tiled_lse_bwd(tile, exclude_diagonal, with_cols, res, g):
    a, c, scale, row_lse, col_lse = res
    da, dc, dscale = lse_backward(
        a, c, scale, row_lse, g.row_lse, col_lse, g.col_lse if with_cols else None,
        tile=tile, exclude_diagonal=exclude_diagonal,
    )
    return _cotangents(a, c, scale, da, dc, dscale)


tiled_lse.defvjp(_tiled_lse_fwd, _tiled_lse_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def tiled_negative_log_sigmoid(
    a: jax.Array, c: jax.Array, scale: jax.Array, bias: jax.Array, tile: int
) -> tuple[jax.Array, jax.Array]:
    """(sum_ij log sigmoid(-(scale * a_i.c_j + bias)) f32 [], int32 row argmax [Ba])."""
    return _tiled_nls_fwd(a, c, scale, bias, tile)[0]


def _tiled_nls_fwd(a, c, scale, bias, tile):
    total, rows = log_sigmoid_forward(a, c, scale, bias, init_stats(a.shape[0], a), tile=tile)
    return (total, rows.argmax), (a, c, scale, bias)


def _tiled_nls_bwd(tile, res, g):
    a, c, scale, bias = res
    da, dc, dscale, dbias = log_sigmoid_backward(a, c, scale, bias, g[0], tile=tile)
    return (*_cotangents(a, c, scale, da, dc, dscale), dbias.astype(bias.dtype))


tiled_negative_log_sigmoid.defvjp(_tiled_nls_fwd, _tiled_nls_bwd)


# ------------------------------------------------ losses from per-row parts
# Shared by the single-device chunked path and the device ring: `total` sums
# x [b, ...] (or a per-device scalar partial sum) over the global batch
# (jnp.sum here, psum of it on a ring).

Total = Callable[[jax.Array], jax.Array]


def local_total(x: jax.Array) -> jax.Array:
    """Sum over the leading (batch) axis of x [b, ...]; a scalar is returned as is."""
    return jnp.sum(x, axis=0) if jnp.ndim(x) else x


def row_dot(a: jax.Array, c: jax.Array) -> jax.Array:
    """[B] f32 row-wise dot products of a, c [B, D]."""
    return jnp.einsum("bd,bd->b", a, c, preferred_element_type=F32)


def _fraction(hits: jax.Array, n_total: int, total: Total) -> jax.Array:
    return total(hits.astype(F32)) / n_total


def softmax_loss_and_metrics(
    pos: jax.Array, res: LseResult, ids: jax.Array, n_total: int, total: Total
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP loss `mean(row_lse - pos)/2 + mean(col_lse - pos)/2` and metrics.

    pos: [b] positive logits; res: LSEs/argmaxes of these b rows and b
    columns; ids: [b] their global indices; n_total: global batch size.
    """
    loss = (total(res.row_lse - pos) + total(res.col_lse - pos)) / (2 * n_total)
    metrics = {
        "mean_positive_logit": total(pos) / n_total,
        "img2txt_top1": _fraction(res.row_argmax == ids, n_total, total),
        "txt2img_top1": _fraction(res.col_argmax == ids, n_total, total),
    }
    return loss, lax.stop_gradient(metrics)


def sigmoid_loss_and_metrics(
    neg_sum: jax.Array,
    a: jax.Array,
    c: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    row_argmax: jax.Array,
    ids: jax.Array,
    n_total: int,
    total: Total,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP loss from `neg_sum = sum_ij log sigmoid(-z_ij)` (all pairs, local
    rows) and the positives z_ii = scale a_i.c_i + bias, using
    log sigmoid(z) - log sigmoid(-z) = z. Metrics: mean positive / negative
    logit (the latter from (sum_i a_i).(sum_j c_j), O(B*D); nan if B == 1)
    and image->text top-1 of the row argmax."""
    pos = scale * row_dot(a, c) + bias
    pos_sum = total(pos)
    loss = -(total(neg_sum) + pos_sum) / n_total
    all_pairs = scale * jnp.dot(total(a.astype(F32)), total(c.astype(F32))) + n_total**2 * bias
    metrics = {
        "mean_positive_logit": pos_sum / n_total,
        "mean_negative_logit": (all_pairs - pos_sum) / (n_total * (n_total - 1)),
        "img2txt_top1": _fraction(row_argmax == ids, n_total, total),
    }
    return loss, lax.stop_gradient(metrics)


def nt_xent_views(z1: jax.Array, z2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stacks the two views [b, D] into z [2b, D]; returns it and each row's
    twin position [2b] in z (row k <-> row k + b)."""
    b = z1.shape[0]
    return jnp.concatenate([z1, z2]), (jnp.arange(2 * b) + b) % (2 * b)


def nt_xent_loss_and_metrics(
    pos: jax.Array, row_lse: jax.Array, row_argmax: jax.Array, twin_ids: jax.Array,
    n_views: int, total: Total,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NT-Xent `mean_k(lse_k - pos_k)` over all n_views views, and metrics
    (mean positive logit, top-1: the row argmax is the twin)."""
    loss = total(row_lse - pos) / n_views
    metrics = {
        "mean_positive_logit": total(pos) / n_views,
        "top1": _fraction(row_argmax == twin_ids, n_views, total),
    }
    return loss, lax.stop_gradient(metrics)
