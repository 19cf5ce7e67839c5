"""Differentiable block primitives on top of the kernels (custom_vjp).

Each takes unpadded operands and a `KernelConfig`, pads (rows to
`cfg.row_multiple`, D to `cfg.padded_dim`), runs the kernels and slices the
results. Gradients w.r.t. the temperature use `sum_ij W_ij S_ij =
sum_i zq_i . dzq_i` (S = scale zq zk^T, dzq = scale W zk), so the kernels only
produce embedding gradients (and, for the sigmoid bias, per-row sums of W).

  softmax_pair:  (zq, zk, log_t, offset) -> (row_lse [Bq], col_lse [Bk])
  sigmoid_pair:  (zq, zk, log_t, b, offset) -> row_sums [Bq]
  symmetric_lse: (z, log_t) -> row_lse [N] of S = exp(log_t) z z^T, self excluded
  clip_loss:     (zimg, ztxt, log_t) -> CLIP loss, positives included
  nt_xent_loss:  (z1, z2, tau) -> NT-Xent loss, positives included

The two whole losses' backward subtracts the positives' weight (g_row + g_col on
the positive cells) inside the kernel's f32 tiles, before the tile is cast for the
matmul, and casts the result once to the input dtype: `p - 1` is formed in f32, so
a confident row keeps its gradient. The forward's positives use `stored_f32`, the
values the kernels read.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.backend import KernelConfig
from pallas_kernels.contrastive import tile_math as tiles_lib
from pallas_kernels.contrastive.common import stored_f32
from pallas_kernels.contrastive.pallas_body import row_grad, row_reduce


def _pad(z: jax.Array, cfg: KernelConfig) -> jax.Array:
    """[n, D] -> [round_up(n, row_multiple), padded_dim(D)] with zeros."""
    n, d = z.shape
    rows = -(-n // cfg.row_multiple) * cfg.row_multiple
    return jnp.pad(z, ((0, rows - n), (0, cfg.padded_dim(d) - d)))


def _row_vec(v: jax.Array, rows: int, cfg: KernelConfig) -> jax.Array:
    """[n] -> [rows, W] zero-padded, lane-replicated."""
    v = jnp.pad(v.astype(jnp.float32), (0, rows - v.shape[0]))
    return jnp.broadcast_to(v[:, None], (rows, cfg.vec_lanes))


def _col_vec(v: jax.Array, rows: int, cfg: KernelConfig) -> jax.Array:
    """[n] -> [H, rows] zero-padded, sublane-replicated."""
    v = jnp.pad(v.astype(jnp.float32), (0, rows - v.shape[0]))
    return jnp.broadcast_to(v[None, :], (cfg.vec_sublanes, rows))


def _scalars(log_t: jax.Array, bias: jax.Array | float = 0.0) -> jax.Array:
    return jnp.stack([jnp.exp(log_t), bias]).astype(jnp.float32)


def _offset(offset: jax.Array) -> jax.Array:
    return jnp.reshape(offset, (1,)).astype(jnp.int32)


def _log_t_grad(zq_p: jax.Array, dzq_p: jax.Array) -> jax.Array:
    return jnp.sum(stored_f32(zq_p) * dzq_p)


def _unpad(dz_p: jax.Array, like: jax.Array, f32: bool = False) -> jax.Array:
    """The unpadded gradient, in like's dtype (f32 when `f32`)."""
    dz = dz_p[: like.shape[0], : like.shape[1]]
    return dz if f32 else dz.astype(like.dtype)


def _positive_inputs(positives, r_q: int, r_k: int, cfg: KernelConfig) -> tuple[dict, dict]:
    """row_grad's (pos_offsets, pos_w) for the row pass and the column pass (offsets negated)."""
    if positives is None:
        return {}, {}
    offsets, w_row, w_col = positives
    return (dict(pos_offsets=tuple(offsets), pos_w=_row_vec(w_row, r_q, cfg)),
            dict(pos_offsets=tuple(-o for o in offsets), pos_w=_row_vec(w_col, r_k, cfg)))


def positive_logits(za: jax.Array, zb: jax.Array) -> jax.Array:
    """Row-wise za_i . zb_i in f32 -> [B], from the values the kernels read (`stored_f32`)."""
    return jnp.sum(stored_f32(za) * stored_f32(zb), axis=1)


# ----------------------------------------------------------------------------- softmax


def softmax_pair_forward(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, offset):
    """(row_lse [Bq], col_lse [Bk]) of exp(log_t) zq zk^T, cells `col - row == offset`
    excluded when `has_diag`."""
    n_q, n_k = zq.shape[0], zk.shape[0]
    zq_p, zk_p, scal, off = _pad(zq, cfg), _pad(zk, cfg), _scalars(log_t), _offset(offset)
    kw = dict(has_diag=has_diag)
    row = row_reduce(tiles_lib.SOFTMAX, cfg, zq_p, zk_p, scal, off, n_q=n_q, n_k=n_k, **kw)
    col = row_reduce(tiles_lib.SOFTMAX, cfg, zk_p, zq_p, scal, -off, n_q=n_k, n_k=n_q, **kw)
    return row[:n_q, 0], col[:n_k, 0]


def softmax_pair_backward(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, offset,
                          row_lse, col_lse, g_row, g_col, f32: bool = False,
                          positives: tuple[tuple[int, ...], jax.Array, jax.Array] | None = None):
    """Gradients of `sum g_row * row_lse + sum g_col * col_lse` -> (dzq, dzk, dlog_t),
    dzq / dzk in the inputs' dtype (f32 when `f32`).

    `positives = (offsets, w_row [Bq], w_col [Bk])` adds `-sum_i w_row[i] S_ij` over the
    cells `j - i` in offsets (static), inside the f32 tiles; w_col[j] is the same
    weight seen from column j (w_row of its partner row).

    `row_lse` / `col_lse` must be the LSEs the cotangents refer to: a block's
    own, or the final ones after combining blocks (see pallas_impl.py, "Ring use").
    """
    n_q, n_k = zq.shape[0], zk.shape[0]
    zq_p, zk_p, scal, off = _pad(zq, cfg), _pad(zk, cfg), _scalars(log_t), _offset(offset)
    r_q, r_k = zq_p.shape[0], zk_p.shape[0]
    q_side = [_row_vec(row_lse, r_q, cfg), _row_vec(g_row, r_q, cfg)]
    k_side = [_col_vec(col_lse, r_k, cfg), _col_vec(g_col, r_k, cfg)]
    pos_q, pos_k = _positive_inputs(positives, r_q, r_k, cfg)
    kw = dict(has_diag=has_diag)
    dzq, _ = row_grad(tiles_lib.SOFTMAX, cfg, zq_p, zk_p, scal, off, q_side, k_side, n_q=n_q, n_k=n_k,
                      **kw, **pos_q)
    q_side = [_row_vec(col_lse, r_k, cfg), _row_vec(g_col, r_k, cfg)]
    k_side = [_col_vec(row_lse, r_q, cfg), _col_vec(g_row, r_q, cfg)]
    dzk, _ = row_grad(tiles_lib.SOFTMAX, cfg, zk_p, zq_p, scal, -off, q_side, k_side, n_q=n_k, n_k=n_q,
                      **kw, **pos_k)
    return _unpad(dzq, zq, f32), _unpad(dzk, zk, f32), _log_t_grad(zq_p, dzq)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def softmax_pair(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, offset):
    """Differentiable `softmax_pair_forward` (w.r.t. zq, zk, log_t)."""
    return softmax_pair_forward(cfg, has_diag, zq, zk, log_t, offset)


def _softmax_pair_fwd(cfg, has_diag, zq, zk, log_t, offset):
    row, col = softmax_pair_forward(cfg, has_diag, zq, zk, log_t, offset)
    return (row, col), (zq, zk, log_t, offset, row, col)


def _softmax_pair_bwd(cfg, has_diag, residuals, cotangents):
    zq, zk, log_t, offset, row, col = residuals
    dzq, dzk, dlog_t = softmax_pair_backward(cfg, has_diag, zq, zk, log_t, offset,
                                             row, col, *cotangents)
    return dzq, dzk, dlog_t.astype(log_t.dtype), None


softmax_pair.defvjp(_softmax_pair_fwd, _softmax_pair_bwd)


# ----------------------------------------------------------------------------- symmetric


def _symmetric_forward(cfg: KernelConfig, z, log_t):
    n = z.shape[0]
    z_p = _pad(z, cfg)
    row = row_reduce(tiles_lib.SOFTMAX, cfg, z_p, z_p, _scalars(log_t), _offset(jnp.zeros(())),
                     n_q=n, n_k=n, has_diag=True)
    return row[:n, 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def symmetric_lse(cfg: KernelConfig, z, log_t):
    """Row LSE [N] of `exp(log_t) z z^T` without the diagonal (one forward pass).

    Because S is symmetric, the backward is a single kernel call: with
    dS_ij = g_i P_ij, dz = scale (dS + dS^T) z and (dS + dS^T)_ij =
    g_i exp(S_ij - lse_i) + g_j exp(S_ij - lse_j) -- the softmax tile weight
    with the same vectors on both sides.
    """
    return _symmetric_forward(cfg, z, log_t)


def _symmetric_fwd(cfg, z, log_t):
    row = _symmetric_forward(cfg, z, log_t)
    return row, (z, log_t, row)


def _symmetric_backward(cfg: KernelConfig, z, log_t, row, g, f32: bool = False, pos_offsets=()):
    """(dz, dlog_t f32) of `sum g * row` for symmetric_lse's rows; dz as in `_unpad`.

    `pos_offsets` (static) adds `-sum (g_i + g_j) S_ij` over the cells `j - i` in it
    (NT-Xent's positives at +-N), inside the f32 tiles (as a weight on dS + dS^T)."""
    pos = {} if not pos_offsets else dict(pos_offsets=tuple(pos_offsets),
                                          pos_w=_row_vec(g + jnp.roll(g, g.shape[0] // 2), _pad(z, cfg).shape[0], cfg))
    z_p = _pad(z, cfg)
    r = z_p.shape[0]
    dz, _ = row_grad(
        tiles_lib.SOFTMAX, cfg, z_p, z_p, _scalars(log_t), _offset(jnp.zeros(())),
        [_row_vec(row, r, cfg), _row_vec(g, r, cfg)],
        [_col_vec(row, r, cfg), _col_vec(g, r, cfg)],
        n_q=z.shape[0], n_k=z.shape[0], has_diag=True, **pos,
    )
    # sum_ij (dS + dS^T)_ij S_ij = 2 sum dS * S.
    return _unpad(dz, z, f32), 0.5 * _log_t_grad(z_p, dz)


def _symmetric_bwd(cfg, residuals, g):
    z, log_t, row = residuals
    dz, dlog_t = _symmetric_backward(cfg, z, log_t, row, g)
    return dz, dlog_t.astype(log_t.dtype)


symmetric_lse.defvjp(_symmetric_fwd, _symmetric_bwd)


# ----------------------------------------------------------------------------- sigmoid


def sigmoid_pair_forward(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, b, offset):
    """Row sums [Bq] of -log sigmoid(y (exp(log_t) zq zk^T + b)), y = +1 on the
    cells `col - row == offset` when `has_diag`, else -1."""
    zq_p, zk_p = _pad(zq, cfg), _pad(zk, cfg)
    rows = row_reduce(tiles_lib.SIGMOID, cfg, zq_p, zk_p, _scalars(log_t, b), _offset(offset),
                      n_q=zq.shape[0], n_k=zk.shape[0], has_diag=has_diag)
    return rows[: zq.shape[0], 0]


def sigmoid_pair_backward(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, b, offset, g_row):
    """Gradients of `sum g_row * row_sums` -> (dzq, dzk, dlog_t, db)."""
    n_q, n_k = zq.shape[0], zk.shape[0]
    zq_p, zk_p = _pad(zq, cfg), _pad(zk, cfg)
    scal, off = _scalars(log_t, b), _offset(offset)
    r_q, r_k = zq_p.shape[0], zk_p.shape[0]
    zeros_k = jnp.zeros((n_k,), jnp.float32)
    dzq, db_rows = row_grad(
        tiles_lib.SIGMOID, cfg, zq_p, zk_p, scal, off,
        [_row_vec(g_row, r_q, cfg)], [_col_vec(zeros_k, r_k, cfg)],
        n_q=n_q, n_k=n_k, has_diag=has_diag,
    )
    dzk, _ = row_grad(
        tiles_lib.SIGMOID, cfg, zk_p, zq_p, scal, -off,
        [_row_vec(zeros_k, r_k, cfg)], [_col_vec(g_row, r_q, cfg)],
        n_q=n_k, n_k=n_q, has_diag=has_diag,
    )
    db = jnp.sum(db_rows[:n_q, 0])
    return _unpad(dzq, zq), _unpad(dzk, zk), _log_t_grad(zq_p, dzq), db


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def sigmoid_pair(cfg: KernelConfig, has_diag: bool, zq, zk, log_t, b, offset):
    """Differentiable `sigmoid_pair_forward` (w.r.t. zq, zk, log_t, b)."""
    return sigmoid_pair_forward(cfg, has_diag, zq, zk, log_t, b, offset)


def _sigmoid_pair_fwd(cfg, has_diag, zq, zk, log_t, b, offset):
    rows = sigmoid_pair_forward(cfg, has_diag, zq, zk, log_t, b, offset)
    return rows, (zq, zk, log_t, b, offset)


def _sigmoid_pair_bwd(cfg, has_diag, residuals, g_row):
    zq, zk, log_t, b, offset = residuals
    dzq, dzk, dlog_t, db = sigmoid_pair_backward(cfg, has_diag, zq, zk, log_t, b, offset, g_row)
    return dzq, dzk, dlog_t.astype(log_t.dtype), db.astype(b.dtype), None


sigmoid_pair.defvjp(_sigmoid_pair_fwd, _sigmoid_pair_bwd)


# ----------------------------------------------------------------------------- whole losses


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def clip_loss(cfg: KernelConfig, zimg, ztxt, log_t):
    """CLIP `0.5 (mean(row_lse - pos) + mean(col_lse - pos))`, pos_i = exp(log_t) zimg_i.ztxt_i."""
    return _clip_fwd(cfg, zimg, ztxt, log_t)[0]


def _clip_fwd(cfg, zimg, ztxt, log_t):
    row, col = softmax_pair_forward(cfg, False, zimg, ztxt, log_t, jnp.zeros((), jnp.int32))
    pos = jnp.exp(log_t).astype(jnp.float32) * positive_logits(zimg, ztxt)
    return 0.5 * (jnp.mean(row - pos) + jnp.mean(col - pos)), (zimg, ztxt, log_t, row, col)


def _clip_bwd(cfg, residuals, g):
    zimg, ztxt, log_t, row, col = residuals
    n = zimg.shape[0]
    w = jnp.full((n,), 0.5 * g / n, jnp.float32)
    # d loss / d pos_i = -g / n = -(w_i + w_i): the kernel subtracts it on the diagonal in f32.
    dzi, dzt, dlog_t = softmax_pair_backward(cfg, False, zimg, ztxt, log_t, jnp.zeros((), jnp.int32),
                                             row, col, w, w, f32=True, positives=((0,), 2 * w, 2 * w))
    return dzi.astype(zimg.dtype), dzt.astype(ztxt.dtype), dlog_t.astype(log_t.dtype)


clip_loss.defvjp(_clip_fwd, _clip_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def nt_xent_loss(cfg: KernelConfig, z1, z2, tau):
    """NT-Xent `mean(lse) - mean(pos)` over the 2N views [z1; z2], pos_i = z1_i.z2_i / tau."""
    return _nt_xent_fwd(cfg, z1, z2, tau)[0]


def _nt_xent_fwd(cfg, z1, z2, tau):
    lse = _symmetric_forward(cfg, jnp.concatenate([z1, z2]), -jnp.log(tau))
    pos = positive_logits(z1, z2) / tau.astype(jnp.float32)
    return jnp.mean(lse) - jnp.mean(pos), (z1, z2, tau, lse)


def _nt_xent_bwd(cfg, residuals, g):
    z1, z2, tau, lse = residuals
    n, inv_tau = z1.shape[0], 1.0 / tau.astype(jnp.float32)
    z = jnp.concatenate([z1, z2])
    # d loss / d pos_i = -g / n = -(g_i + g_{i+n}) with g_i = g / 2n: the kernel subtracts it
    # at the cells (i, i + n) and (i + n, i) of (dS + dS^T), in f32.
    dz, dlog_t = _symmetric_backward(cfg, z, -jnp.log(tau), lse, jnp.full((2 * n,), g / (2 * n)), f32=True,
                                     pos_offsets=(n, -n))
    dz1, dz2 = dz[:n], dz[n:]
    dtau = -dlog_t * inv_tau  # log_t = -log(tau)
    return dz1.astype(z1.dtype), dz2.astype(z2.dtype), dtau.astype(tau.dtype)


nt_xent_loss.defvjp(_nt_xent_fwd, _nt_xent_bwd)
