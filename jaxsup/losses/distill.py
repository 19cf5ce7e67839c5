"""Knowledge-distillation losses on logits and features (arrays in, f32 scalars out).

Logit-level KD (Hinton et al.) compares temperature-softened distributions
`p = softmax(teacher / T)`, `q = softmax(student / T)` and scales by `T^2`:

- `kd_kl`:          `T^2 KL(p || q)` (forward KL, the classic KD loss)
- `kd_reverse_kl`:  `T^2 KL(q || p)`
- `kd_jsd`:         `T^2 JSD_beta`, with `m = beta p + (1 - beta) q` and
  `JSD_beta = [beta KL(p||m) + (1-beta) KL(q||m)] / (beta (1-beta))`: the GKD
  JSD(beta) divided by `beta (1 - beta)`, so it tends to the forward KL as
  beta -> 0 and to the reverse KL as beta -> 1; beta = 0 and 1 are defined as
  exactly those limits.

All reduce by the mean over examples (a weighted mean if `weights` [N] are
given). The teacher (logits, features, class means, previous predictions) is a
constant: no gradient flows into it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pallas_kernels.linear_kd import common
from pallas_kernels.linear_kd.reference import kd_divergence_rows


def _weighted_mean(rows: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Mean of rows [N], or sum(w * rows) / sum(w) (0 if all weights are 0)."""
    if weights is None:
        return jnp.mean(rows)
    if jnp.shape(weights) != rows.shape:
        raise ValueError(f"weights {jnp.shape(weights)} must be [N] = {rows.shape}.")
    weights = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
    total = jnp.sum(weights)
    return jnp.sum(weights * rows) / jnp.where(total > 0, total, 1.0)


def _check_labels(labels: jax.Array, n: int, what: str) -> None:
    if jnp.shape(labels) != (n,):
        raise ValueError(f"labels {jnp.shape(labels)} must be [N] = ({n},) to match {what}.")


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: Any,
    kind: str = "kl",
    beta: float = 0.5,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`T^2 * D(teacher, student)` averaged over examples; logits [N, K].

    kind: "kl" (forward), "rkl" (reverse) or "jsd" (with `beta` in [0, 1]).
    """
    rows = kd_divergence_rows(student_logits, teacher_logits, temperature, kind, beta)
    return _weighted_mean(rows, weights)


def kd_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: Any, *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Hinton KD: `T^2 KL(softmax(t/T) || softmax(s/T))`, mean over N; logits [N, K]."""
    return kd_loss(student_logits, teacher_logits, temperature, "kl", weights=weights)


def kd_reverse_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: Any, *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`T^2 KL(softmax(s/T) || softmax(t/T))`, mean over N; logits [N, K]."""
    return kd_loss(student_logits, teacher_logits, temperature, "rkl", weights=weights)


def kd_jsd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: Any,
    beta: float = 0.5,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`T^2 JSD_beta` (normalised; beta 0 -> forward KL, 1 -> reverse KL); logits [N, K]."""
    return kd_loss(student_logits, teacher_logits, temperature, "jsd", beta, weights=weights)


def soft_ce(
    logits: jax.Array, target_probs: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
    """Soft-target cross-entropy `-sum_k p_k log softmax(logits)_k`, mean over N.

    logits [N, K]; target_probs [N, K] (rows sum to 1; treated as constants).
    """
    if jnp.ndim(logits) != 2 or jnp.shape(logits) != jnp.shape(target_probs):
        raise ValueError(
            f"logits {jnp.shape(logits)} and target_probs {jnp.shape(target_probs)} "
            "must both be [N, K]."
        )
    targets = jax.lax.stop_gradient(target_probs.astype(jnp.float32))
    rows = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    return _weighted_mean(rows, weights)


def teacher_class_means(
    features: jax.Array, labels: jax.Array, num_classes: int
) -> jax.Array:
    """Unit-norm mean teacher feature per class [K, D] from features [M, D], labels [M].

    Raises ValueError naming the classes without examples (when labels are
    concrete; under `jit` such a class gives a NaN row).
    """
    if jnp.ndim(features) != 2:
        raise ValueError(f"features {jnp.shape(features)} must be [M, D].")
    _check_labels(labels, features.shape[0], f"features {features.shape}")
    counts = jax.ops.segment_sum(jnp.ones_like(labels, jnp.int32), labels, num_classes)
    if not isinstance(counts, jax.core.Tracer):
        empty = np.flatnonzero(np.asarray(counts) == 0)
        if empty.size:
            raise ValueError(
                f"teacher_class_means: classes {empty.tolist()} have no examples "
                f"(num_classes={num_classes}, {features.shape[0]} features)."
            )
    sums = jax.ops.segment_sum(features.astype(jnp.float32), labels, num_classes)
    return sums / jnp.linalg.norm(sums, axis=-1, keepdims=True)


def nd_loss(
    student_features: jax.Array,
    teacher_features: jax.Array,
    class_means: jax.Array,
    labels: jax.Array,
    lam: float,
) -> jax.Array:
    """Norm-and-direction feature KD: `lam * mean(1 - <f_s, c_y> / max(|f_s|, |f_t|))`.

    f_s, f_t [N, D]; class_means [K, D] (re-normalised to unit length, constant);
    labels [N]. The teacher features only set the norm target (constant).
    """
    f_s = student_features.astype(jnp.float32)
    if jnp.ndim(f_s) != 2 or f_s.shape != jnp.shape(teacher_features):
        raise ValueError(
            f"student features {jnp.shape(student_features)} and teacher features "
            f"{jnp.shape(teacher_features)} must both be [N, D]."
        )
    if jnp.ndim(class_means) != 2 or class_means.shape[1] != f_s.shape[1]:
        raise ValueError(
            f"class_means {jnp.shape(class_means)} must be [K, D] with D = {f_s.shape[1]}."
        )
    _check_labels(labels, f_s.shape[0], f"features {f_s.shape}")
    means = jax.lax.stop_gradient(class_means.astype(jnp.float32))
    unit_means = means / jnp.linalg.norm(means, axis=-1, keepdims=True)
    f_t = jax.lax.stop_gradient(teacher_features.astype(jnp.float32))
    norm = jnp.maximum(jnp.linalg.norm(f_s, axis=-1), jnp.linalg.norm(f_t, axis=-1))
    cosine_like = jnp.sum(f_s * unit_means[labels], axis=-1) / jnp.maximum(norm, 1e-12)
    return lam * jnp.mean(1.0 - cosine_like)


def pskd_targets(
    labels: jax.Array,
    prev_probs: jax.Array,
    alpha_T: float,
    step: Any,
    total_steps: Any,
) -> jax.Array:
    """PS-KD soft targets `(1 - a) onehot(labels) + a prev_probs` [N, K] f32.

    `a = alpha_T * step / total_steps`. The paper counts epochs (step = epoch,
    total_steps = number of epochs); any consistent unit works. prev_probs
    [N, K] are the model's predictions from the previous epoch (constant).
    """
    common.check_unit_interval("alpha_T", alpha_T)
    if jnp.ndim(prev_probs) != 2:
        raise ValueError(f"prev_probs {jnp.shape(prev_probs)} must be [N, K].")
    _check_labels(labels, prev_probs.shape[0], f"prev_probs {prev_probs.shape}")
    if not isinstance(total_steps, jax.core.Tracer) and not float(total_steps) > 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps!r}.")
    if not isinstance(step, jax.core.Tracer) and not isinstance(total_steps, jax.core.Tracer):
        if not 0 <= float(step) <= float(total_steps):
            raise ValueError(f"step {step!r} must lie in [0, total_steps={total_steps!r}].")
    alpha = alpha_T * jnp.asarray(step, jnp.float32) / jnp.asarray(total_steps, jnp.float32)
    onehot = jax.nn.one_hot(labels, prev_probs.shape[1], dtype=jnp.float32)
    prev = jax.lax.stop_gradient(prev_probs.astype(jnp.float32))
    return (1.0 - alpha) * onehot + alpha * prev
