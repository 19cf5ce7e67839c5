"""Per-tile math of the contrastive losses, shared by every implementation.

Online statistics (the XLA paths: `chunked_xla.py`, `ring.py`): per row (or
column) a running max, sum of exp(logit - max) and global argmax (`MaxStats`),
merged one [rows, tile] logit tile at a time (`merge_tile`) or one block's
log-sum-exp at a time (`merge_lse`). Masked logits are -inf; arrays are f32.

Kernel tile families (the Pallas kernels, `pallas_body.py`): a tile is
`logits [bq, bk] = scale * zq_tile zk_tile^T + bias` (f32) with `valid
[bq, bk]` (False on padded rows/columns) and `diag [bq, bk]` (the cells with
`col - row == offset`, or None when no offset was given). Row statistics are
`[bq, W]` arrays whose W lanes all hold the same value: W = 1 on Triton and in
interpret mode, W = 128 on TPU (Mosaic keeps per-row state lane-replicated,
as its flash attention does). `widen` tiles them to `[bq, bk]`. Column
statistics arrive as `[1, bk]` and broadcast directly. Each family provides:
  fwd_init(shape) -> carry;  fwd_update(carry, logits, valid, diag) -> carry;
  fwd_finalize(carry) -> [bq, W] row result;
  bwd_weight(logits, valid, diag, q_vecs, k_vecs) -> dLoss/dlogits [bq, bk];
  n_vecs: how many per-row vectors the backward reads on each side;
  has_bias_grad: whether the backward also sums the weights per row (db).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

F32 = jnp.float32


# ------------------------------------------------------------ online statistics (XLA)


class MaxStats(NamedTuple):
    """Online statistics of the logits seen so far along one axis, each [n].

    max: running maximum (-inf before any unmasked logit).
    sumexp: sum of exp(logit - max) (unused, zero, for max-only passes).
    argmax: int32 global index of the first maximum.
    """

    max: jax.Array
    sumexp: jax.Array
    argmax: jax.Array


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
    # int32 after the offset too: under jax_enable_x64 an offset from arange is int64 (scan carries stay int32).
    tile_arg = (jnp.argmax(s, axis=axis) + index_offset).astype(jnp.int32)
    new_max = jnp.maximum(stats.max, tile_max)
    argmax = jnp.where(tile_max > stats.max, tile_arg, stats.argmax)
    sumexp = stats.sumexp
    if with_sumexp:
        shift = _finite_or_zero(new_max)
        sumexp = sumexp * jnp.exp(stats.max - shift) + jnp.sum(
            jnp.exp(s - jnp.expand_dims(shift, axis)), axis=axis
        )
    return MaxStats(new_max, sumexp, argmax)


def merge_lse(stats: MaxStats, block: MaxStats, block_lse: jax.Array) -> MaxStats:
    """Merges a block of logits, given as its log-sum-exp `block_lse` [n] and
    its max / argmax `block` (a max-only pass), into running statistics."""
    new_max = jnp.maximum(stats.max, block.max)
    shift = _finite_or_zero(new_max)
    sumexp = stats.sumexp * jnp.exp(stats.max - shift) + jnp.exp(block_lse - shift)
    argmax = jnp.where(block.max > stats.max, block.argmax, stats.argmax).astype(jnp.int32)
    return MaxStats(new_max, sumexp, argmax)


# ------------------------------------------------------------ kernel tile families (Pallas)

# Finite "minus infinity": exp(MASK - m) underflows to 0 without inf - inf NaNs.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def widen(row_stat: jax.Array, width: int) -> jax.Array:
    """[bq, W] lane-replicated row statistic -> something broadcastable to [bq, width]."""
    lanes = row_stat.shape[1]
    if lanes == 1 or lanes == width:
        return row_stat
    return jnp.tile(row_stat, (1, width // lanes))


def _softplus(x: jax.Array) -> jax.Array:
    """log(1 + exp(x)), stable for large |x| (written out so it lowers everywhere)."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _sigmoid(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)); exp overflow gives 1/inf = 0, which is the right limit."""
    return 1.0 / (1.0 + jnp.exp(-x))


class _SoftmaxTiles:
    """Online log-sum-exp over columns; self-pairs (diag) are excluded.

    Backward: with per-row (lse_q, g_q) and per-column (lse_k, g_k), the
    gradient of `sum_i g_q[i] lse_q[i] + sum_j g_k[j] lse_k[j]` w.r.t. the
    logits is `g_q[i] exp(S_ij - lse_q[i]) + g_k[j] exp(S_ij - lse_k[j])`.
    """

    n_vecs = 2
    has_bias_grad = False

    @staticmethod
    def _mask(valid, diag):
        return valid if diag is None else jnp.logical_and(valid, jnp.logical_not(diag))

    @staticmethod
    def fwd_init(shape):
        return jnp.full(shape, MASK_VALUE, jnp.float32), jnp.zeros(shape, jnp.float32)

    @classmethod
    def fwd_update(cls, carry, logits, valid, diag):
        m_prev, l_prev = carry
        keep = cls._mask(valid, diag)
        logits = jnp.where(keep, logits, MASK_VALUE)
        m_next = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
        p = jnp.exp(logits - widen(m_next, logits.shape[1]))
        p = jnp.where(keep, p, 0.0)
        l_next = jnp.exp(m_prev - m_next) * l_prev + jnp.sum(p, axis=1, keepdims=True)
        return m_next, l_next

    @staticmethod
    def fwd_finalize(carry):
        m, l = carry
        return m + jnp.log(l)  # l == 0 (no valid column) gives -inf: the empty LSE.

    @classmethod
    def bwd_weight(cls, logits, valid, diag, q_vecs, k_vecs):
        (lse_q, g_q), (lse_k, g_k) = q_vecs, k_vecs
        width = logits.shape[1]
        p_row = jnp.exp(logits - widen(lse_q, width))
        p_col = jnp.exp(logits - lse_k)
        weight = widen(g_q, width) * p_row + g_k * p_col
        return jnp.where(cls._mask(valid, diag), weight, 0.0)

    @staticmethod
    def minus_positives(weight, positive, pos_w):
        """weight - pos_w[i] on row i's positive cells: the gradient of `-sum_i pos_w[i] S_i,partner(i)`."""
        return weight - jnp.where(positive, widen(pos_w, weight.shape[1]), 0.0)


class _SigmoidTiles:
    """Row sums of `softplus(-y * logits)`, y = +1 on diag, -1 elsewhere.

    Backward: d softplus(-y l)/dl = -y sigmoid(-y l), weighted by
    `g_q[i] + g_k[j]` (cotangents of row sums and of column sums).
    """

    n_vecs = 1
    has_bias_grad = True

    @staticmethod
    def _signed(logits, diag):
        """-y * logits."""
        return logits if diag is None else jnp.where(diag, -logits, logits)

    @staticmethod
    def fwd_init(shape):
        return (jnp.zeros(shape, jnp.float32),)

    @classmethod
    def fwd_update(cls, carry, logits, valid, diag):
        (acc,) = carry
        terms = jnp.where(valid, _softplus(cls._signed(logits, diag)), 0.0)
        return (acc + jnp.sum(terms, axis=1, keepdims=True),)

    @staticmethod
    def fwd_finalize(carry):
        return carry[0]

    @classmethod
    def bwd_weight(cls, logits, valid, diag, q_vecs, k_vecs):
        (g_q,), (g_k,) = q_vecs, k_vecs
        signed = cls._signed(logits, diag)
        slope = _sigmoid(signed)  # d softplus(signed) / d signed
        slope = slope if diag is None else jnp.where(diag, -slope, slope)  # times -y
        weight = (widen(g_q, logits.shape[1]) + g_k) * slope
        return jnp.where(valid, weight, 0.0)


SOFTMAX = _SoftmaxTiles
SIGMOID = _SigmoidTiles
