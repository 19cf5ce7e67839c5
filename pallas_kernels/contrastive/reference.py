"""Ground truth for the contrastive kernels: plain jnp, full matrices, f32.

Every function here materialises the [Bq, Bk] logit matrix; the Pallas
kernels must agree with them to f32 rounding. Matmuls use HIGHEST precision
so the comparison does not depend on the platform's default (TF32 on GPUs,
bf16 passes on TPUs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def similarity(zq: jax.Array, zk: jax.Array) -> jax.Array:
    """Dot products in f32: [Bq, D] x [Bk, D] -> [Bq, Bk]."""
    zq, zk = zq.astype(jnp.float32), zk.astype(jnp.float32)
    return jnp.matmul(zq, zk.T, precision=_HIGHEST)


def diagonal_mask(n_rows: int, n_cols: int, offset: jax.Array | int | None) -> jax.Array:
    """[n_rows, n_cols] bool, True where `col - row == offset` (all False if None)."""
    if offset is None:
        return jnp.zeros((n_rows, n_cols), bool)
    rows = jnp.arange(n_rows)[:, None]
    cols = jnp.arange(n_cols)[None, :]
    return cols - rows == offset


def pair_logsumexp(
    zq: jax.Array, zk: jax.Array, log_t: jax.Array, self_offset: jax.Array | int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Row and column LSE of `S = exp(log_t) zq zk^T` with self-pairs excluded.

    Args:
      zq: [Bq, D]; zk: [Bk, D]; log_t: scalar log temperature (logit scale).
      self_offset: entries with `col - row == self_offset` are left out of both
        LSEs (None: nothing is left out).
    Returns:
      row_lse [Bq] (over columns) and col_lse [Bk] (over rows), f32.
    """
    logits = jnp.exp(log_t) * similarity(zq, zk)
    excluded = diagonal_mask(*logits.shape, self_offset)
    logits = jnp.where(excluded, -jnp.inf, logits)
    return jax.nn.logsumexp(logits, axis=1), jax.nn.logsumexp(logits, axis=0)


def sigmoid_pair_row_sums(
    zq: jax.Array,
    zk: jax.Array,
    log_t: jax.Array,
    b: jax.Array,
    positive_offset: jax.Array | int | None = None,
) -> jax.Array:
    """Per-row `sum_j -log sigmoid(y_ij (exp(log_t) zq_i.zk_j + b))` -> [Bq] f32.

    `y_ij = +1` where `j - i == positive_offset`, `-1` elsewhere (None: all -1).
    """
    logits = jnp.exp(log_t) * similarity(zq, zk) + b
    labels = jnp.where(diagonal_mask(*logits.shape, positive_offset), 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=1)


def softmax_contrastive_loss(zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array) -> jax.Array:
    """CLIP loss: `0.5 (CE(S, diag) + CE(S^T, diag))`, `S = exp(log_t) zimg ztxt^T`.

    zimg, ztxt: [B, D]. Returns an f32 scalar.
    """
    logits = jnp.exp(log_t) * similarity(zimg, ztxt)
    positives = jnp.diagonal(logits)
    row_loss = jax.nn.logsumexp(logits, axis=1) - positives
    col_loss = jax.nn.logsumexp(logits, axis=0) - positives
    return 0.5 * (jnp.mean(row_loss) + jnp.mean(col_loss))


def sigmoid_contrastive_loss(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array, b: jax.Array
) -> jax.Array:
    """SigLIP loss `-(1/B) sum_ij log sigmoid(y_ij (exp(log_t) zimg_i.ztxt_j + b))`.

    zimg, ztxt: [B, D]; y = +1 on the diagonal, -1 elsewhere. f32 scalar.
    """
    return jnp.sum(sigmoid_pair_row_sums(zimg, ztxt, log_t, b, 0)) / zimg.shape[0]


def nt_xent_loss(z1: jax.Array, z2: jax.Array, tau: jax.Array | float) -> jax.Array:
    """SimCLR NT-Xent over the 2N views `[z1; z2]` ([N, D] each), logits `s / tau`.

    For view k the positive is its twin (k +/- N); self-similarity is excluded
    from the denominator. Returns the mean over the 2N views, f32 scalar.
    """
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2], axis=0)
    logits = similarity(z, z) / tau
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    twins = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    positives = logits[jnp.arange(2 * n), twins]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positives)
