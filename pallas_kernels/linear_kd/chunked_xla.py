"""The chunked XLA implementation of fused linear KD (impl="chunked"): pure JAX.

Pass 1 scans over V tiles keeping online log-sum-exps of both distributions
(and, for KL / reverse KL, the running expectation that gives the loss
value); "jsd" adds a value pass. The backward pass rescans the tiles,
recomputes the logits tile and writes gradient tiles: `dh += dZ W_tile^T`,
`dW[:, tile] = h^T dZ`. Peak memory is O(N * tile + N * H + H * V) (the last
for dW); no [N, V] array exists. W tiles are sliced inside the scan
(`lax.dynamic_slice_in_dim`); V need not be a multiple of `tile` (the last
tile is shifted left and its already-seen columns masked). Gradients flow to
h_s and W_s only; the teacher gets zero gradients.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.backend import check_positive_int
from pallas_kernels.linear_kd import tile_math as tiles
from pallas_kernels.linear_kd.common import KdLoss

DEFAULT_TILE = 4096


def tile_start_and_mask(index: jax.Array, tile: int, vocab: int) -> tuple[jax.Array, jax.Array]:
    """Start of tile `index` along a dim of size `vocab` (clamped to fit) and its
    mask of not-yet-seen positions [1, tile]."""
    nominal = index * tile
    start = jnp.minimum(nominal, vocab - tile)
    valid = (start + jnp.arange(tile)) >= nominal
    return start, valid[None, :]


def sliced(x: jax.Array, start: jax.Array, size: int, axis: int = 1) -> jax.Array:
    """Positions [start, start + size) of x along `axis` (columns of x [R, V] by default).

    On CPU, 16-bit floats are sliced as uint16 bit patterns: XLA:CPU's float
    normalisation otherwise widens the bf16 dynamic-slice to f32 and hoists an
    f32 copy of the whole operand out of the loop (seen: +4.5 GiB temp for
    bf16 teacher logits at N=8192, V=131072; with the bitcast, +2 GiB).
    """
    is_16bit_float = x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating)
    if not is_16bit_float or jax.default_backend() != "cpu":
        return lax.dynamic_slice_in_dim(x, start, size, axis=axis)
    bits = lax.bitcast_convert_type(x, jnp.uint16)
    return lax.bitcast_convert_type(lax.dynamic_slice_in_dim(bits, start, size, axis=axis), x.dtype)


def _scaled_logit_tiles(
    h_s: jax.Array, w_tile: jax.Array, teacher: tuple[jax.Array, ...], start: jax.Array,
    tile: int, inv_temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """Student and teacher logits / T for one column tile, each [N, tile] f32."""
    s = jnp.dot(h_s, w_tile, preferred_element_type=jnp.float32) * inv_temperature
    if len(teacher) == 1:
        t = sliced(teacher[0], start, tile).astype(jnp.float32)
    else:
        h_t, w_t = teacher
        t = jnp.dot(h_t, sliced(w_t, start, tile), preferred_element_type=jnp.float32)
    return s, lax.stop_gradient(t * inv_temperature)


def scan_column_tiles(body, init, w: jax.Array, tile: int):
    """Runs `body(carry, start, valid, w_tile) -> carry` over the column tiles of w [H, V]:
    w_tile [H, tile] starts at `start`, valid [1, tile] masks its already-seen columns."""
    vocab = w.shape[1]

    def step(carry, index):
        start, valid = tile_start_and_mask(index, tile, vocab)
        return body(carry, start, valid, sliced(w, start, tile)), None

    carry, _ = lax.scan(step, init, jnp.arange(-(-vocab // tile)))
    return carry


def _scan_tiles(body, init, h_s, w_s, teacher, tile, inv_temperature):
    """Runs `body(carry, start, valid, w_tile, s, t) -> carry` over all V tiles."""

    def tile_body(carry, start, valid, w_tile):
        s, t = _scaled_logit_tiles(h_s, w_tile, teacher, start, tile, inv_temperature)
        return body(carry, start, valid, w_tile, s, t)

    return scan_column_tiles(tile_body, init, w_s, tile)


def _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile):
    """Row statistics: (lse_s, lse_t, row divergence, row scalar c), each [N] f32."""
    inv_t = 1.0 / temperature

    def stats_body(stats, start, valid, w_tile, s, t):
        return tiles.online_stats_update(stats, s, t, valid, kind)

    init = tiles.online_stats_init(h_s.shape[0])
    stats = _scan_tiles(stats_body, init, h_s, w_s, teacher, tile, inv_t)
    lse_s, lse_t, rows = tiles.online_stats_finalize(stats, kind)
    if kind == "kl":
        return lse_s, lse_t, rows, jnp.zeros_like(rows)
    if kind == "rkl":
        return lse_s, lse_t, rows, rows

    def jsd_body(acc, start, valid, w_tile, s, t):
        div, kl_q_m = tiles.jsd_tile_terms(s, t, lse_s, lse_t, beta)
        return (
            acc[0] + jnp.sum(jnp.where(valid, div, 0.0), axis=1),
            acc[1] + jnp.sum(jnp.where(valid, kl_q_m, 0.0), axis=1),
        )

    zeros = jnp.zeros_like(lse_s)
    rows, row_c = _scan_tiles(jsd_body, (zeros, zeros), h_s, w_s, teacher, tile, inv_t)
    return lse_s, lse_t, rows, row_c


def _chunked_grads(h_s, w_s, teacher, residual_rows, row_scale, temperature, kind, beta, tile):
    """(dh [N, H] f32, dW [H, V] f32) with dZ = row_scale * dD/ds, tile by tile."""
    lse_s, lse_t, row_c = residual_rows
    vocab = w_s.shape[1]

    def grad_body(carry, start, valid, w_tile, s, t):
        ds = tiles.student_grad_tile(s, t, lse_s, lse_t, row_c, kind, beta)
        dz = jnp.where(valid, ds, 0.0) * row_scale[:, None]
        return accumulate_tile_grads(carry, dz, h_s, w_tile, start, valid)

    return _scan_tiles(grad_body, zero_grads(h_s, vocab), h_s, w_s, teacher, tile, 1.0 / temperature)


def zero_grads(h: jax.Array, vocab: int) -> tuple[jax.Array, jax.Array]:
    """The f32 (dh [N, H], dW [H, V]) accumulators of a tiled backward pass."""
    return jnp.zeros(h.shape, jnp.float32), jnp.zeros((h.shape[1], vocab), jnp.float32)


def accumulate_tile_grads(
    grads: tuple[jax.Array, jax.Array], dz: jax.Array, h: jax.Array, w_tile: jax.Array,
    start: jax.Array, valid: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Adds one tile's logit gradient dz [N, tile] (zero on invalid columns) to (dh [N, H], dW [H, V]):
    `dh += dz W_tile^T`, `dW[:, tile] = h^T dz` on the tile's valid columns."""
    dh, dw = grads
    dh = dh + lax.dot_general(
        dz.astype(w_tile.dtype), w_tile, (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    dw_tile = lax.dot_general(
        h, dz.astype(h.dtype), (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    old = lax.dynamic_slice_in_dim(dw, start, dz.shape[1], axis=1)
    dw = lax.dynamic_update_slice_in_dim(dw, jnp.where(valid, dw_tile, old), start, axis=1)
    return dh, dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _chunked_loss(h_s, w_s, teacher, temperature, kind, beta, tile):
    _, _, rows, _ = _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile)
    return temperature**2 * jnp.mean(rows)


def _chunked_loss_fwd(h_s, w_s, teacher, temperature, kind, beta, tile):
    lse_s, lse_t, rows, row_c = _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile)
    loss = temperature**2 * jnp.mean(rows)
    return loss, (h_s, w_s, teacher, (lse_s, lse_t, row_c))


def _chunked_loss_bwd(temperature, kind, beta, tile, residuals, g):
    h_s, w_s, teacher, rows = residuals
    # d(T^2 mean_n D_n)/dz = (T / N) dD/ds, since s = z / T.
    row_scale = jnp.full((h_s.shape[0],), g * temperature / h_s.shape[0], jnp.float32)
    dh, dw = _chunked_grads(h_s, w_s, teacher, rows, row_scale, temperature, kind, beta, tile)
    zeros = jax.tree.map(jnp.zeros_like, teacher)
    return dh.astype(h_s.dtype), dw.astype(w_s.dtype), zeros


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)


def fused_linear_kd_chunked(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss,
    tile: int = DEFAULT_TILE,
) -> jax.Array:
    """Mean over N of `T^2 * D` (f32 scalar) for h_s [N, H], w_s [H, V] and a
    teacher `(logits [N, V],)` or `(h_t [N, Ht], W_t [Ht, V])`, as
    `common.check_fused_inputs` returns them; `tile` columns of V per step."""
    tile = min(check_positive_int("tile", tile), w_s.shape[1])
    return _chunked_loss(h_s, w_s, teacher, *loss, tile)
