"""Weak-to-strong losses (Burns et al. 2023): training a strong student on a weak
supervisor's soft labels `w` [B, K].

- `soft_label_ce`: the naive baseline `mean_i CE(f_i, w_i)`.
- `aux_confidence_loss`: `mean_i CE(f_i, (1 - a) w_i + a hard(f)_i)`, where
  `hard(f)` hardens the student's own predictions `p = softmax(f)` so that
  their class balance matches the weak labels' batch mean `w_bar = mean_i w_i`
  [K]. `hard(f)` is a constant (no gradient), as in the reference.

Hardening rule (`hardened_predictions`):

  K = 2:  hard_i = class 0 iff p_i0 >= quantile_i(p_i0, w_bar_1)
          (openai/weak-to-strong `loss.py::logconf_loss_fn`, ties included)
  K > 2:  tau_k  = quantile_i(p_ik, 1 - w_bar_k)
          hard_i = onehot(argmax_k (p_ik - tau_k))   (ties -> the lowest class index)

Quantiles interpolate linearly over the batch with NumPy's / torch's `lerp`
(exact when the two neighbours are equal). Each class's threshold is placed so
that a fraction `w_bar_k` of the batch clears it; an example goes to the class
it clears by the widest margin (for K = 2 the same rule in exact arithmetic;
the binary branch applies logconf's comparison literally so that rounding
cannot move a row). For K > 2 the balance is that of the weak labels only
approximately (exactly when every example clears exactly one threshold).

Determinism under `jit`: the probabilities are materialised once
(`lax.optimization_barrier`) and both the threshold and the comparison read
that one buffer. Without it XLA may compute them in two fusions whose last
bits differ, and the row that sits exactly on the threshold (e.g. all weak
labels in one class: the threshold is the batch min or max) changes class.

The mixing weight warms up linearly and smoothly (`aux_alpha`):
`a(t) = aux_coef * min(1, (t / T) / warmup_frac)`, unlike the reference, which
ramps `a = aux_coef * t/T` up to `warmup_frac` and then jumps to `aux_coef`.
The quantiles are taken over whatever batch the loss sees (the global batch
under jit; one micro-batch with gradient accumulation).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup.losses.distill import soft_ce
from pallas_kernels.linear_kd.common import check_logit_pair, check_unit_interval


def check_weak_pair(logits: jax.Array, weak_probs: jax.Array) -> None:
    """Raises ValueError unless logits and weak_probs are both [B, K] with K >= 2."""
    check_logit_pair(logits, weak_probs, ("Student logits", "weak labels"),
                     "[B, K] with the same batch size B and number of classes K")
    if jnp.shape(logits)[1] < 2:
        raise ValueError(f"Weak-to-strong losses need K >= 2 classes, got logits {jnp.shape(logits)}.")


def aux_alpha(step: Any, total_steps: int, aux_coef: float, warmup_frac: float) -> jax.Array:
    """Mixing weight `aux_coef * min(1, (step / total_steps) / warmup_frac)` (f32 scalar).

    warmup_frac = 0 gives `aux_coef` from the first step.
    """
    check_unit_interval("aux_coef", aux_coef)
    check_unit_interval("warmup_frac", warmup_frac)
    if not total_steps > 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps!r}.")
    if warmup_frac == 0:
        return jnp.asarray(aux_coef, jnp.float32)
    frac = jnp.asarray(step, jnp.float32) / float(total_steps)
    return aux_coef * jnp.minimum(1.0, frac / float(warmup_frac))


def lerp_quantile(values: jax.Array, level: jax.Array) -> jax.Array:
    """Linear-interpolation quantile of values [B] at `level` in [0, 1], as NumPy and torch compute it.

    Sorted neighbours a <= b at fraction t: `a + (b - a) t` for t < 0.5, else `b - (b - a)(1 - t)`,
    so a threshold between equal values is exactly that value (jnp.quantile's
    `a (1 - t) + b t` can miss it by an ulp).
    """
    ordered = jnp.sort(values)
    position = jnp.clip(level, 0.0, 1.0) * (values.shape[0] - 1)
    low = jnp.floor(position)
    frac = position - low
    a = ordered[low.astype(jnp.int32)]
    b = ordered[jnp.ceil(position).astype(jnp.int32)]
    return jnp.where(frac < 0.5, a + (b - a) * frac, b - (b - a) * (1.0 - frac))


def hardened_predictions(probs: jax.Array, weak_probs: jax.Array) -> jax.Array:
    """One-hot [B, K] f32 (no gradient): the student's predictions hardened to the weak balance.

    probs, weak_probs [B, K] (rows are distributions); see the module docstring.
    """
    check_weak_pair(probs, weak_probs)
    probs = jax.lax.optimization_barrier(jax.lax.stop_gradient(probs.astype(jnp.float32)))
    weak_mean = jax.lax.stop_gradient(jnp.mean(weak_probs.astype(jnp.float32), axis=0))
    num_classes = probs.shape[1]
    if num_classes == 2:  # logconf_loss_fn: class 0 iff p_0 >= quantile(p_0, mean weak_1)
        classes = jnp.where(probs[:, 0] >= lerp_quantile(probs[:, 0], weak_mean[1]), 0, 1)
    else:
        levels = jnp.clip(1.0 - weak_mean, 0.0, 1.0)
        thresholds = jax.vmap(lerp_quantile, in_axes=(1, 0))(probs, levels)  # [K]
        classes = jnp.argmax(probs - thresholds[None, :], axis=-1)
    return jax.nn.one_hot(classes, num_classes, dtype=jnp.float32)


def aux_confidence_loss(
    logits: jax.Array, weak_probs: jax.Array, alpha: Any, *, weights: jax.Array | None = None
) -> jax.Array:
    """`mean_i CE(logits_i, (1 - alpha) weak_i + alpha hard(logits)_i)`; logits, weak [B, K].

    alpha in [0, 1] (checked when concrete); alpha = 0 is `soft_label_ce`.
    weights [B]: optional per-example weights of the mean.
    """
    check_weak_pair(logits, weak_probs)
    check_unit_interval("alpha", alpha)
    logits = logits.astype(jnp.float32)
    hard = hardened_predictions(jax.nn.softmax(logits, axis=-1), weak_probs)
    alpha = jnp.asarray(alpha, jnp.float32)
    targets = (1.0 - alpha) * weak_probs.astype(jnp.float32) + alpha * hard
    return soft_ce(logits, targets, weights=weights)


def soft_label_ce(logits: jax.Array, weak_probs: jax.Array, *, weights: jax.Array | None = None) -> jax.Array:
    """Naive weak-to-strong baseline `mean_i CE(logits_i, weak_i)`; logits, weak [B, K]."""
    check_weak_pair(logits, weak_probs)
    return soft_ce(logits, weak_probs, weights=weights)


def hard_label_agreement(logits: jax.Array, weak_probs: jax.Array) -> jax.Array:
    """Fraction of rows whose student top-1 equals the weak labels' top-1 (f32 scalar)."""
    check_weak_pair(logits, weak_probs)
    return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(weak_probs, -1))


__all__ = [
    "aux_alpha", "aux_confidence_loss", "check_weak_pair", "hard_label_agreement",
    "hardened_predictions", "soft_label_ce",
]
