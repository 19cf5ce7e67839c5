"""Per-tile math of fused linear KD, shared by the chunked scan and the Pallas kernels.

Notation (all f32): `s = student_logits / T`, `t = teacher_logits / T`,
`lq = s - LSE(s)`, `lp = t - LSE(t)`, `q = exp(lq)` (student), `p = exp(lp)`
(teacher). Per-row divergences (before the `T^2` factor):

- "kl":  `KL(p || q) = sum p (lp - lq)`; d/ds = `q - p`.
- "rkl": `KL(q || p) = sum q (lq - lp)`; d/ds = `q (lq - lp - KL(q||p))`.
- "jsd": generalized Jensen-Shannon divergence, normalised so that its limits
  are the two KLs: with `m = beta p + (1 - beta) q`,
  `JSD_beta = [beta KL(p || m) + (1 - beta) KL(q || m)] / (beta (1 - beta))`.
  As beta -> 0 it tends to `KL(p || q)`, as beta -> 1 to `KL(q || p)`; at
  beta = 0 and 1 it is defined as those limits (`common.resolve_kind`). It is
  the GKD (Agarwal et al.) JSD(beta) divided by `beta (1 - beta)`.
  d/ds = `q (lq - lm - KL(q || m)) / beta`.

The tile functions take `[n, v]` tiles of scaled logits and `[n]` row
statistics; they use only elementwise ops and row reductions, so the same code
runs inside `lax.scan` bodies and inside Pallas (Triton) kernels. Invalid
(padding) columns are handled by the caller with `valid` masks.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------
# Online statistics (pass 1): running max / sum for both LSEs, plus the one
# expectation that gives the KL (or reverse KL) value without a second pass.
# ----------------------------------------------------------------------------
class OnlineStats(NamedTuple):
    """Per-row running statistics, each [n] f32."""

    max_s: jax.Array
    sum_s: jax.Array
    max_t: jax.Array
    sum_t: jax.Array
    acc: jax.Array  # kl: sum e^(t-max_t)(t-s); rkl: sum e^(s-max_s)(s-t); jsd: unused


def online_stats_init(n: int) -> OnlineStats:
    """Empty statistics for n rows."""
    neg_inf = jnp.full((n,), -jnp.inf, jnp.float32)
    zeros = jnp.zeros((n,), jnp.float32)
    return OnlineStats(neg_inf, zeros, neg_inf, zeros, zeros)


def online_stats_update(
    stats: OnlineStats, s: jax.Array, t: jax.Array, valid: jax.Array, kind: str
) -> OnlineStats:
    """Folds one tile of scaled logits s, t [n, v] (valid [1 or n, v]) into stats."""
    s = jnp.where(valid, s, -jnp.inf)
    t = jnp.where(valid, t, -jnp.inf)
    max_s = jnp.maximum(stats.max_s, jnp.max(s, axis=1))
    max_t = jnp.maximum(stats.max_t, jnp.max(t, axis=1))
    rescale_s = jnp.exp(stats.max_s - max_s)
    rescale_t = jnp.exp(stats.max_t - max_t)
    exp_s = jnp.exp(s - max_s[:, None])
    exp_t = jnp.exp(t - max_t[:, None])
    sum_s = stats.sum_s * rescale_s + jnp.sum(exp_s, axis=1)
    sum_t = stats.sum_t * rescale_t + jnp.sum(exp_t, axis=1)
    if kind == "kl":
        terms = jnp.where(valid, exp_t * (t - s), 0.0)
        acc = stats.acc * rescale_t + jnp.sum(terms, axis=1)
    elif kind == "rkl":
        terms = jnp.where(valid, exp_s * (s - t), 0.0)
        acc = stats.acc * rescale_s + jnp.sum(terms, axis=1)
    else:
        acc = stats.acc
    return OnlineStats(max_s, sum_s, max_t, sum_t, acc)


def online_stats_finalize(
    stats: OnlineStats, kind: str
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Returns (lse_s [n], lse_t [n], row divergence [n] or None for "jsd")."""
    lse_s = stats.max_s + jnp.log(stats.sum_s)
    lse_t = stats.max_t + jnp.log(stats.sum_t)
    if kind == "kl":
        return lse_s, lse_t, stats.acc / stats.sum_t - lse_t + lse_s
    if kind == "rkl":
        return lse_s, lse_t, stats.acc / stats.sum_s - lse_s + lse_t
    return lse_s, lse_t, None


# ----------------------------------------------------------------------------
# Per-tile terms once the LSEs are known.
# ----------------------------------------------------------------------------
def _log_mixture(lp: jax.Array, lq: jax.Array, beta: float) -> jax.Array:
    """log(beta p + (1 - beta) q), elementwise, stable."""
    a = lp + math.log(beta)
    b = lq + math.log1p(-beta)
    top = jnp.maximum(a, b)
    return top + jnp.log(jnp.exp(a - top) + jnp.exp(b - top))


def jsd_tile_terms(
    s: jax.Array, t: jax.Array, lse_s: jax.Array, lse_t: jax.Array, beta: float
) -> tuple[jax.Array, jax.Array]:
    """JSD_beta terms [n, v] and KL(q || m) terms [n, v] (the gradient's row scalar)."""
    lq = s - lse_s[:, None]
    lp = t - lse_t[:, None]
    lm = _log_mixture(lp, lq, beta)
    kl_q_m = jnp.exp(lq) * (lq - lm)
    kl_p_m = jnp.exp(lp) * (lp - lm)
    div = (beta * kl_p_m + (1.0 - beta) * kl_q_m) / (beta * (1.0 - beta))
    return div, kl_q_m


def student_grad_tile(
    s: jax.Array,
    t: jax.Array,
    lse_s: jax.Array,
    lse_t: jax.Array,
    row_c: jax.Array,
    kind: str,
    beta: float,
) -> jax.Array:
    """d(row divergence)/ds for one tile [n, v]; `row_c` [n] as documented above."""
    lq = s - lse_s[:, None]
    lp = t - lse_t[:, None]
    q = jnp.exp(lq)
    if kind == "kl":
        return q - jnp.exp(lp)
    if kind == "rkl":
        return q * (lq - lp - row_c[:, None])
    lm = _log_mixture(lp, lq, beta)
    return q * (lq - lm - row_c[:, None]) * (1.0 / beta)
