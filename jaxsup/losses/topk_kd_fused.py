"""Sparse top-k KD through the student's linear head, without [N, V] logits.

`topk_kd_kl_fused(h [N, D], W [D, V], topk_logits, topk_indices, lse_rest, T)`
equals `topk_kd.topk_kd_kl(h @ W, ...)` (and `topk_soft_ce_fused` equals
`topk_soft_ce`), but the student logits exist only one column tile [N, tile]
at a time. Everything the (k + 1)-outcome loss needs from the student comes
from `head_stats`, one `lax.scan` over the V tiles of W
(`pallas_kernels.linear_kd.chunked_xla.scan_column_tiles`, the tiles of
`fused_linear_kd`'s vocab chunking):

- `lse` [N]: logsumexp over all V of `s = h W / T`, folded tile by tile;
- `lse_rest` [N]: logsumexp over the classes NOT in topk_indices, folded the
  same way with the kept columns of each tile masked out (a [N, tile]
  scatter of the indices that fall in it); -inf when all V are kept;
- `kept` [N, k]: `s` at topk_indices, gathered from the tile that holds each;
- `top1` [N]: the student's argmax (the task's agreement metric).

Then `log q_i = kept_i - lse` and `log q_rest = lse_rest - lse`. The rest
mass is a logsumexp of the non-kept logits themselves, not `log(1 - sum q_i)`:
when the student puts almost all mass on the kept classes, `1 - sum q_i` (or
`log1p(-exp(lse_kept - lse))`) loses every digit of a q_rest below the f32
rounding of `lse` (~1e-7 relative), where the masked logsumexp keeps full
relative precision at any q_rest (the test `test_tiny_rest_mass_is_exact`).

Memory: `head_stats` is a `custom_vjp`; its residuals are the inputs and the
[N] logsumexps. The backward rescans the tiles, recomputes each logits tile
and writes `d/ds = g_lse softmax(s) + g_rest [j not kept] exp(s - lse_rest)
+ g_kept (scattered to its columns)`, then `dh += dz W_tile^T`,
`dW[:, tile] = h^T dz` (`chunked_xla.accumulate_tile_grads`): O(N * tile +
D * V) beyond the inputs (the f32 dW accumulator), never O(N * V). Two GEMMs
of N*D*V forward-and-back more than the unfused path (the backward recomputes
the logits). Gradients flow to h and W; the targets are constants.
`temperature` and `tile` are static Python numbers.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsup.losses.distill import _weighted_mean
from jaxsup.losses.topk_kd import check_targets, kl_rows, soft_ce_rows, teacher_buckets
from pallas_kernels.linear_kd.chunked_xla import (
    DEFAULT_TILE, accumulate_tile_grads, scan_column_tiles, zero_grads,
)

KINDS = ("kl", "soft_ce")


class HeadStats(NamedTuple):
    """What the sparse losses need of `s = h W / T` (module doc): f32 [N], [N], [N, k]; int32 [N]."""

    lse: jax.Array
    lse_rest: jax.Array
    kept: jax.Array
    top1: jax.Array


def _tile_positions(indices: jax.Array, start: jax.Array, valid: jax.Array, tile: int):
    """(column in the tile [N, k], clipped; whether it is there and not seen before [N, k])."""
    local = indices - start
    inside = (local >= 0) & (local < tile)
    local = jnp.clip(local, 0, tile - 1)
    return local, inside & valid[0][local]


def _scatter_add(local: jax.Array, new: jax.Array, values: jax.Array, tile: int) -> jax.Array:
    """[N, tile] zeros with `values` [N, k] added at the `new` positions (others dropped)."""
    n = local.shape[0]
    target = jnp.where(new, local, tile)  # out of range: dropped
    return jnp.zeros((n, tile), values.dtype).at[jnp.arange(n)[:, None], target].add(values, mode="drop")


def _kept_mask(local: jax.Array, new: jax.Array, tile: int) -> jax.Array:
    """[N, tile] bool: the tile's columns that are among the row's kept classes."""
    return _scatter_add(local, new, new.astype(jnp.float32), tile) > 0


def _logits_tile(h: jax.Array, w_tile: jax.Array, inv_t: float) -> jax.Array:
    return jnp.dot(h, w_tile, preferred_element_type=jnp.float32) * inv_t


def _forward(h, w, indices, temperature, tile) -> HeadStats:
    """`head_stats` without gradients: one scan over the V tiles."""
    n, k = indices.shape
    inv_t = 1.0 / temperature

    def body(carry, start, valid, w_tile):
        stats, best = carry  # best [N]: the logit at top1 so far
        s = jnp.where(valid, _logits_tile(h, w_tile, inv_t), -jnp.inf)
        local, new = _tile_positions(indices, start, valid, tile)
        is_kept = _kept_mask(local, new, tile)
        lse = jnp.logaddexp(stats.lse, jax.nn.logsumexp(s, axis=1))
        lse_rest = jnp.logaddexp(stats.lse_rest, jax.nn.logsumexp(jnp.where(is_kept, -jnp.inf, s), axis=1))
        kept = jnp.where(new, jnp.take_along_axis(s, local, axis=1), stats.kept)
        tile_top = jnp.argmax(s, axis=1)
        tile_best = jnp.max(s, axis=1)
        better = tile_best > best  # strict: the first of tied maxima wins, as argmax over V
        top1 = jnp.where(better, start + tile_top.astype(jnp.int32), stats.top1)
        return HeadStats(lse, lse_rest, kept, top1), jnp.where(better, tile_best, best)

    neg_inf = jnp.full((n,), -jnp.inf, jnp.float32)
    init = (HeadStats(neg_inf, neg_inf, jnp.zeros((n, k), jnp.float32), jnp.zeros((n,), jnp.int32)), neg_inf)
    stats, _ = scan_column_tiles(body, init, w, tile)
    return stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _head_stats(h, w, indices, temperature, tile):
    return _forward(h, w, indices, temperature, tile)


def _head_stats_fwd(h, w, indices, temperature, tile):
    stats = _forward(h, w, indices, temperature, tile)
    return stats, (h, w, indices, stats.lse, stats.lse_rest)


def _head_stats_bwd(temperature, tile, residuals, g: HeadStats):
    h, w, indices, lse, lse_rest = residuals
    inv_t = 1.0 / temperature
    # rows with every class kept have lse_rest = -inf and no rest term: a finite stand-in, masked below
    rest = jnp.where(jnp.isfinite(lse_rest), lse_rest, 0.0)

    def body(grads, start, valid, w_tile):
        s = _logits_tile(h, w_tile, inv_t)
        local, new = _tile_positions(indices, start, valid, tile)
        is_kept = _kept_mask(local, new, tile)
        ds = g.lse[:, None] * jnp.exp(s - lse[:, None])
        ds = ds + jnp.where(is_kept, 0.0, g.lse_rest[:, None] * jnp.exp(jnp.minimum(s - rest[:, None], 0.0)))
        ds = ds + _scatter_add(local, new, g.kept, tile)
        dz = jnp.where(valid, ds, 0.0) * inv_t
        return accumulate_tile_grads(grads, dz, h, w_tile, start, valid)

    dh, dw = scan_column_tiles(body, zero_grads(h, w.shape[1]), w, tile)
    return dh.astype(h.dtype), dw.astype(w.dtype), None


_head_stats.defvjp(_head_stats_fwd, _head_stats_bwd)


def head_stats(h: jax.Array, w: jax.Array, indices: jax.Array, temperature: float, *,
               tile: int = DEFAULT_TILE) -> HeadStats:
    """`HeadStats` of `s = h @ w / T` for h [N, D], w [D, V], indices [N, k] int (distinct per row);
    differentiable w.r.t. h and w (not top1); `tile` columns of V per scan step (V need not divide)."""
    if jnp.ndim(h) != 2 or jnp.ndim(w) != 2 or h.shape[1] != w.shape[0]:
        raise ValueError(f"h {jnp.shape(h)} must be [N, D] and W {jnp.shape(w)} [D, V] with the same D.")
    if jnp.ndim(indices) != 2 or indices.shape[0] != h.shape[0]:
        raise ValueError(f"indices {jnp.shape(indices)} must be [N, k] with N = {h.shape[0]}.")
    if isinstance(temperature, jax.core.Tracer) or not float(temperature) > 0:
        raise ValueError(f"temperature must be a static number > 0, got {temperature!r}.")
    if int(tile) < 1:
        raise ValueError(f"tile must be a positive int, got {tile!r}.")
    return _head_stats(h, w, indices.astype(jnp.int32), float(temperature), min(int(tile), w.shape[1]))


def topk_kd_fused_rows(
    h: jax.Array, w: jax.Array, topk_logits: jax.Array, topk_indices: jax.Array, lse_rest: jax.Array,
    temperature: float, *, kind: str = "kl", tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, jax.Array]:
    """(rows [N], student top-1 [N]): kind "kl" `T^2 KL` rows (`topk_kd.topk_kd_rows` of h @ w), "soft_ce"
    `-sum p log q` rows; h [N, D], w [D, V], topk_logits / topk_indices [N, k], lse_rest [N]."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}.")
    check_targets(h.shape[0], w.shape[1], topk_logits, topk_indices, lse_rest)
    stats = head_stats(h, w, topk_indices, temperature, tile=tile)
    log_p, log_p_rest, has_rest = teacher_buckets(topk_logits, lse_rest, jnp.float32(temperature))
    log_q = stats.kept - stats.lse[:, None]
    log_q_rest = jnp.where(has_rest, stats.lse_rest - stats.lse, 0.0)
    buckets = (log_p, log_q, log_p_rest, log_q_rest, has_rest)
    if kind == "soft_ce":
        return soft_ce_rows(*buckets), stats.top1
    return float(temperature) ** 2 * kl_rows(*buckets), stats.top1


def topk_kd_kl_fused(
    h: jax.Array, w: jax.Array, topk_logits: jax.Array, topk_indices: jax.Array, lse_rest: jax.Array,
    temperature: float, *, tile: int = DEFAULT_TILE, weights: jax.Array | None = None,
) -> jax.Array:
    """`topk_kd.topk_kd_kl(h @ w, topk_logits, topk_indices, lse_rest, T, weights=)` without [N, V] logits."""
    rows, _ = topk_kd_fused_rows(h, w, topk_logits, topk_indices, lse_rest, temperature, tile=tile)
    return _weighted_mean(rows, weights)


def topk_soft_ce_fused(
    h: jax.Array, w: jax.Array, topk_logits: jax.Array, topk_indices: jax.Array, lse_rest: jax.Array,
    temperature: float, *, tile: int = DEFAULT_TILE, weights: jax.Array | None = None,
) -> jax.Array:
    """`topk_kd.topk_soft_ce(h @ w, ...)` without [N, V] logits."""
    rows, _ = topk_kd_fused_rows(h, w, topk_logits, topk_indices, lse_rest, temperature, kind="soft_ce", tile=tile)
    return _weighted_mean(rows, weights)


def label_ce_rows(h: jax.Array, w: jax.Array, labels: jax.Array, *, tile: int = DEFAULT_TILE) -> jax.Array:
    """Cross-entropy rows [N] of `h @ w` (T = 1) against labels [N] int, without [N, V] logits."""
    stats = head_stats(h, w, labels[:, None], 1.0, tile=tile)
    return stats.lse - stats.kept[:, 0]
