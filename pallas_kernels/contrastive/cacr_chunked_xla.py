"""CACR's repulsion by a `lax.scan` over column tiles: memory O(Q*D + Q*tile).

Rows and columns are the same Q = K*N views `x` [Q, D] (row r is view r // N
of image r % N). For query r and a column j of another image the cost is
`d_rj = n_r + n_j - 2 x_r.x_j` (n: squared norms) and the weight
`w_rj = softmax_j(-t_neg d_rj) = softmax_j(t_neg (2 x_r.x_j - n_j))`: the row
constant n_r drops out. The forward keeps per row a running max m of these
logits and, shifted by m, the sums S0 = sum e, S1 = sum e x_r.x_j and
S2 = sum e n_j, so `E_r = sum_j w_rj d_rj = n_r + (S2 - 2 S1) / S0`.

Loss `R = -beta mean_r E_r`. With the weights differentiated,
`dE_r/dd_rj = w_rj (1 - t_neg (d_rj - E_r))`; call `G_rj = dR/dd_rj`. As
`dd_rj/dx_r = 2 (x_r - x_j)` and `dd_rj/dx_j = 2 (x_j - x_r)`, the backward
recomputes each tile's G and accumulates
`dx = 2 (rowsum G + colsum G) x - 2 (G x + G^T x)`, never holding [Q, Q].
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.contrastive.chunked_xla import Tile, scan_column_tiles
from pallas_kernels.contrastive.reference import cacr_attraction, squared_norms
from pallas_kernels.contrastive.tile_math import F32, zeros_like_f32


class RowSums(NamedTuple):
    """Online per-row statistics [Q] of the repulsion weights (shifted by max)."""

    max: jax.Array
    s0: jax.Array  # sum exp(u - max)
    s1: jax.Array  # sum exp(u - max) * x_r.x_j
    s2: jax.Array  # sum exp(u - max) * n_j


def _masked_logits(t: Tile, n_images: int, n_rows: int, col_norms: jax.Array, t_neg: float) -> jax.Array:
    """[Q, tile] f32 `t_neg (2 g - n_j)`; -inf on same-image and padding columns."""
    rows = jnp.arange(n_rows)[:, None] % n_images
    cols = (t.start + jnp.arange(t.g.shape[1]))[None, :] % n_images
    keep = (rows != cols) & jnp.isfinite(t.s)  # t.s is -inf on padding columns
    return jnp.where(keep, t_neg * (2.0 * t.g - col_norms[None, :]), -jnp.inf)


def _forward_sums(x: jax.Array, n_images: int, t_neg: float, tile: int) -> RowSums:
    q = x.shape[0]
    norms = squared_norms(x)

    def step(acc: RowSums, t: Tile):
        u = _masked_logits(t, n_images, q, t.cols, t_neg)
        new_max = jnp.maximum(acc.max, jnp.max(u, axis=1))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        decay = jnp.exp(acc.max - shift)
        e = jnp.exp(u - shift[:, None])
        return RowSums(new_max, acc.s0 * decay + jnp.sum(e, 1), acc.s1 * decay + jnp.sum(e * t.g, 1),
                       acc.s2 * decay + jnp.sum(e * t.cols[None, :], 1)), None

    zero = zeros_like_f32(x, (q,))
    init = RowSums(jnp.full_like(zero, -jnp.inf), zero, zero, zero)
    sums, _ = scan_column_tiles(x, x, jnp.ones((), F32), step, init, norms, tile=tile)
    return sums


def _expected_dist(x: jax.Array, sums: RowSums) -> jax.Array:
    """E_r = sum_j w_rj d_rj [Q] f32."""
    return squared_norms(x) + (sums.s2 - 2.0 * sums.s1) / sums.s0


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def repulsion(x: jax.Array, n_images: int, t_neg: float, beta: float, tile: int) -> tuple[jax.Array, jax.Array]:
    """(R = -beta mean_r E_r, mean_r E_r) of views x [Q, D], Q = K * n_images; f32 []."""
    return _repulsion_fwd(x, n_images, t_neg, beta, tile)[0]


def _repulsion_fwd(x, n_images, t_neg, beta, tile):
    sums = _forward_sums(x, n_images, t_neg, tile)
    expected = _expected_dist(x, sums)
    mean = jnp.mean(expected)
    return (-beta * mean, mean), (x, sums, expected)


def _repulsion_bwd(n_images, t_neg, beta, tile, res, cts):
    x, sums, expected = res
    g_loss, g_mean = cts
    q = x.shape[0]
    g_row = jnp.broadcast_to((g_mean - beta * g_loss) / q, (q,))  # dOut/dE_r
    lse = jnp.where(jnp.isfinite(sums.max), sums.max, 0.0) + jnp.log(sums.s0)
    row_norms = squared_norms(x)

    def step(carry, t: Tile):
        gx, row_g = carry
        u = _masked_logits(t, n_images, q, t.cols, t_neg)
        w = jnp.exp(u - lse[:, None])
        dist = row_norms[:, None] + t.cols[None, :] - 2.0 * t.g
        g = jnp.where(jnp.isfinite(u), g_row[:, None] * w * (1.0 - t_neg * (dist - expected[:, None])), 0.0)
        gx = gx + jnp.dot(g, t.c, preferred_element_type=F32)
        col_terms = (jnp.dot(g.T, x, preferred_element_type=F32), jnp.sum(g, axis=0))
        return (gx, row_g + jnp.sum(g, axis=1)), col_terms

    init = (zeros_like_f32(x, x.shape), zeros_like_f32(x, (q,)))
    (gx, row_g), (gtx, col_g) = scan_column_tiles(
        x, x, jnp.ones((), F32), step, init, row_norms, tile=tile)
    dx = 2.0 * (row_g + col_g)[:, None] * x.astype(F32) - 2.0 * (gx + gtx)
    return (dx.astype(x.dtype),)


repulsion.defvjp(_repulsion_fwd, _repulsion_bwd)


def cacr_chunked(z: jax.Array, t_pos: float, t_neg: float, alpha: float, beta: float,
                 tile: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`reference.cacr` with the repulsion chunked (z: [K, N, D]); same (loss, metrics)."""
    k, n, d = z.shape
    attraction, pos_dist = cacr_attraction(z, t_pos, alpha, precision=None)
    rep, neg_dist = repulsion(z.reshape(k * n, d), n, t_neg, beta, tile)
    metrics = {"attraction": attraction, "repulsion": rep, "positive_sqdist": pos_dist,
               "negative_sqdist": neg_dist}
    return attraction + rep, jax.tree.map(jax.lax.stop_gradient, metrics)
