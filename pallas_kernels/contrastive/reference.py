"""Ground truth of the contrastive losses: plain jnp over the full logit matrix.

Every function here materialises the [Bq, Bk] logits; the other
implementations (chunked, ring, Pallas) must agree with them to f32 rounding.
Products accumulate in f32 (bf16 inputs: exact products). Matmuls default to
HIGHEST precision, so the comparison does not depend on the platform's default
(TF32 on GPUs, bf16 passes on TPUs); impl="reference" (`api.py`), a training
path, passes `precision=None`: the platform default.

  softmax_contrastive, sigmoid_contrastive, nt_xent -> (loss, metrics)
  cacr -> (loss, metrics); cacr_attraction: its positive term (shared with chunked)
  pair_logsumexp, sigmoid_pair_row_sums: one block of a ring (Pallas primitives)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
HIGHEST = lax.Precision.HIGHEST
Metrics = dict[str, jax.Array]
Precision = lax.Precision | None


def similarity(zq: jax.Array, zk: jax.Array, precision: Precision = HIGHEST) -> jax.Array:
    """Dot products in f32: [Bq, D] x [Bk, D] -> [Bq, Bk]."""
    return jnp.matmul(zq, zk.T, precision=precision, preferred_element_type=F32)


def diagonal_mask(n_rows: int, n_cols: int, offset: jax.Array | int | None) -> jax.Array:
    """[n_rows, n_cols] bool, True where `col - row == offset` (all False if None)."""
    if offset is None:
        return jnp.zeros((n_rows, n_cols), bool)
    rows = jnp.arange(n_rows)[:, None]
    cols = jnp.arange(n_cols)[None, :]
    return cols - rows == offset


def _top1(argmax: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean((argmax == target).astype(F32))


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


def _sigmoid_row_sums(logits: jax.Array, positive_offset: jax.Array | int | None) -> jax.Array:
    """Per-row `sum_j -log sigmoid(y_ij logits_ij)`, y = +1 on the offset diagonal."""
    labels = jnp.where(diagonal_mask(*logits.shape, positive_offset), 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=1)


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
    return _sigmoid_row_sums(jnp.exp(log_t) * similarity(zq, zk) + b, positive_offset)


def softmax_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array, precision: Precision = HIGHEST
) -> tuple[jax.Array, Metrics]:
    """CLIP loss `0.5 (CE(S, diag) + CE(S^T, diag))`, `S = exp(log_t) zimg ztxt^T`.

    zimg, ztxt: [B, D]. Returns (f32 scalar, metrics without gradient:
    mean_positive_logit, img2txt_top1, txt2img_top1).
    """
    logits = jnp.exp(log_t) * similarity(zimg, ztxt, precision)
    positives = jnp.diagonal(logits)
    row_loss = jax.nn.logsumexp(logits, axis=1) - positives
    col_loss = jax.nn.logsumexp(logits, axis=0) - positives
    loss = 0.5 * (jnp.mean(row_loss) + jnp.mean(col_loss))
    logits, ids = lax.stop_gradient(logits), jnp.arange(logits.shape[0])
    return loss, {
        "mean_positive_logit": jnp.mean(jnp.diagonal(logits)),
        "img2txt_top1": _top1(jnp.argmax(logits, 1), ids),
        "txt2img_top1": _top1(jnp.argmax(logits, 0), ids),
    }


def sigmoid_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array, b: jax.Array,
    precision: Precision = HIGHEST,
) -> tuple[jax.Array, Metrics]:
    """SigLIP loss `-(1/B) sum_ij log sigmoid(y_ij (exp(log_t) zimg_i.ztxt_j + b))`.

    zimg, ztxt: [B, D]; y = +1 on the diagonal, -1 elsewhere. Returns (f32
    scalar, metrics: mean_positive_logit, mean_negative_logit (nan if B == 1),
    img2txt_top1; logits including the bias).
    """
    n = zimg.shape[0]
    logits = jnp.exp(log_t) * similarity(zimg, ztxt, precision) + b
    loss = jnp.sum(_sigmoid_row_sums(logits, 0)) / n
    logits, eye = lax.stop_gradient(logits), jnp.eye(n, dtype=bool)
    return loss, {
        "mean_positive_logit": jnp.mean(jnp.diagonal(logits)),
        "mean_negative_logit": jnp.sum(jnp.where(eye, 0.0, logits)) / (n * (n - 1)),
        "img2txt_top1": _top1(jnp.argmax(logits, 1), jnp.arange(n)),
    }


def nt_xent(
    z1: jax.Array, z2: jax.Array, tau: jax.Array | float, precision: Precision = HIGHEST
) -> tuple[jax.Array, Metrics]:
    """SimCLR NT-Xent over the 2N views `[z1; z2]` ([N, D] each), logits `s / tau`.

    For view k the positive is its twin (k +/- N); self-similarity is excluded
    from the denominator. Returns (the mean over the 2N views, f32 scalar;
    metrics: mean_positive_logit, top1 (argmax over j != k is the twin)).
    """
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2], axis=0)
    logits = similarity(z, z, precision) / tau
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    twins = (jnp.arange(2 * n) + n) % (2 * n)
    positives = logits[jnp.arange(2 * n), twins]
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - positives)
    logits = lax.stop_gradient(logits)
    return loss, {
        "mean_positive_logit": jnp.mean(logits[jnp.arange(2 * n), twins]),
        "top1": _top1(jnp.argmax(logits, 1), twins),
    }


def squared_norms(x: jax.Array) -> jax.Array:
    """Squared L2 norms in f32: [..., D] -> [...]."""
    x = x.astype(F32)
    return jnp.sum(x * x, axis=-1)


def cacr_attraction(
    z: jax.Array, t_pos: float, alpha: float, precision: Precision = HIGHEST
) -> tuple[jax.Array, jax.Array]:
    """CACR's attraction over the K views of each image (z: [K, N, D]).

    Query (k, i) pulls its positives (l, i), l != k, with cost
    `c = alpha ||z_ki - z_li||^2` and weights `softmax_l(t_pos ||z_ki - z_li||^2)`
    (farther positives pulled harder). Returns (mean over the K N queries of the
    weighted cost, f32 []; mean positive squared distance, f32 []). Memory K^2 N.
    """
    k = z.shape[0]
    dots = jnp.einsum("kid,lid->kli", z, z, precision=precision, preferred_element_type=F32)
    norms = squared_norms(z)  # [K, N]
    dist = norms[:, None, :] + norms[None, :, :] - 2.0 * dots  # [K, K, N]
    self_pair = jnp.eye(k, dtype=bool)[:, :, None]
    weights = jax.nn.softmax(jnp.where(self_pair, -jnp.inf, t_pos * dist), axis=1)
    attraction = alpha * jnp.mean(jnp.sum(jnp.where(self_pair, 0.0, weights * dist), axis=1))
    mean_dist = jnp.sum(jnp.where(self_pair, 0.0, dist)) / (k * (k - 1) * z.shape[1])
    return attraction, mean_dist


def cacr(
    z: jax.Array, t_pos: float, t_neg: float, alpha: float, beta: float, precision: Precision = HIGHEST
) -> tuple[jax.Array, Metrics]:
    """CACR loss (Zheng et al.): contrastive attraction + contrastive repulsion.

    z: [K, N, D], K >= 2 views of N >= 2 images. Attraction: `cacr_attraction`.
    Repulsion: every view r of the K N is a query; its negatives are the views
    of the other images, weighted `softmax_j(-t_neg d_rj)` with
    `d = ||z_r - z_j||^2` (closer negatives pushed harder), cost `-beta d`.
    The weights are part of the loss (differentiated, as in the paper's code).
    Returns (attraction + mean repulsion, f32 []; metrics without gradient:
    attraction, repulsion, positive_sqdist, negative_sqdist (weighted)).
    """
    k, n, d = z.shape
    attraction, pos_dist = cacr_attraction(z, t_pos, alpha, precision)
    flat = z.reshape(k * n, d)
    norms = squared_norms(flat)
    dist = norms[:, None] + norms[None, :] - 2.0 * similarity(flat, flat, precision)
    image = jnp.arange(k * n) % n
    same_image = image[:, None] == image[None, :]
    weights = jax.nn.softmax(jnp.where(same_image, -jnp.inf, -t_neg * dist), axis=1)
    neg_dist = jnp.sum(jnp.where(same_image, 0.0, weights * dist), axis=1)  # [K N]
    repulsion = -beta * jnp.mean(neg_dist)
    metrics = {"attraction": attraction, "repulsion": repulsion, "positive_sqdist": pos_dist,
               "negative_sqdist": jnp.mean(neg_dist)}
    return attraction + repulsion, jax.tree.map(lax.stop_gradient, metrics)


REFERENCE = {"softmax": softmax_contrastive, "sigmoid": sigmoid_contrastive, "nt_xent": nt_xent}
