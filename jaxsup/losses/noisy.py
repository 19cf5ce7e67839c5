"""Learning with noisy labels: Co-teaching (Han et al. 2018) and feature compression by
dropout (Chen et al., "Compressing Features for Learning with Noisy Labels").

  keep_fraction(t)          R(t) = 1 - tau * min(t / T_k, 1)       (T_k = gradual_frac * total steps)
  small_loss_mask(l, n)     [B] 1 on the n rows of smallest loss l [B] (ties: lower row first)
  coteaching_loss(l1, l2, R)
      m1 = small_loss_mask(l1, floor(R * B)), m2 likewise from l2 (gradient-stopped)
      L = sum(l1 * m2) / sum(m2) + sum(l2 * m1) / sum(m1)
      (net 1 learns from the rows net 2 finds clean, and vice versa)
  feature_dropout(rng, h, p, kind)
      "dropout": h * Bernoulli(1 - p) / (1 - p);  "nested": h[:, j] kept iff j < b, b ~ Geometric(p)
      (1 + number of failures, per row), no rescaling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DROPOUT_KINDS = ("dropout", "nested")


def keep_fraction(step: jax.Array, total_steps: int, forget_rate: float, gradual_frac: float) -> jax.Array:
    """R(t) = 1 - forget_rate * min(1, t / (gradual_frac * total_steps)); 1 - forget_rate if gradual_frac = 0."""
    if gradual_frac == 0:
        return jnp.asarray(1.0 - forget_rate, jnp.float32)
    ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / (gradual_frac * total_steps))
    return 1.0 - forget_rate * ramp


def small_loss_mask(losses: jax.Array, num_keep: jax.Array) -> jax.Array:
    """losses [B] -> [B] f32, 1 on the num_keep rows with the smallest loss (stable order on ties)."""
    rank = jnp.argsort(jnp.argsort(jax.lax.stop_gradient(losses), stable=True), stable=True)
    return (rank < num_keep).astype(jnp.float32)


def coteaching_loss(loss1: jax.Array, loss2: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-example losses of nets 1, 2 [B], keep fraction R -> (L, mask chosen by net 1, by net 2)."""
    num_keep = jnp.maximum(jnp.floor(keep * loss1.shape[0]), 1.0)
    m1, m2 = small_loss_mask(loss1, num_keep), small_loss_mask(loss2, num_keep)
    loss = jnp.sum(loss1 * m2) / jnp.sum(m2) + jnp.sum(loss2 * m1) / jnp.sum(m1)
    return loss, m1, m2


def feature_dropout(rng: jax.Array, features: jax.Array, rate: float, kind: str = "dropout") -> jax.Array:
    """features [B, D] -> compressed features [B, D] (identity if rate = 0)."""
    if kind not in DROPOUT_KINDS:
        raise ValueError(f"dropout kind {kind!r} is not one of {DROPOUT_KINDS}")
    if rate == 0.0:
        return features
    if kind == "dropout":
        keep = jax.random.bernoulli(rng, 1.0 - rate, features.shape)
        return jnp.where(keep, features / (1.0 - rate), 0.0).astype(features.dtype)
    b = jax.random.geometric(rng, rate, (features.shape[0], 1))  # >= 1
    return jnp.where(jnp.arange(features.shape[1])[None, :] < b, features, 0.0).astype(features.dtype)
