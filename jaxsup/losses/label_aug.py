"""Self-supervised label augmentation (SLA, Lee et al. 2020): joint (class x rotation) labels.

M rotations t_m (m = 0..M-1, t_m rotates by m * 360/M degrees; M in {1, 2, 4}).
A joint classifier has K * M outputs laid out as [K, M] (joint label y * M + m).

  rotate_all(x)                 [B, H, W, C] -> [M, B, H, W, C], view m rotated by t_m
  sla_loss(z, y)                z [M, B, K*M] joint logits of view m; mean_{m,b} CE(z[m, b], y_b * M + m)
  aggregated_logits(z)          [B, K]: (1/M) sum_m z[m, b, (k, m)]   (SLA+AG; softmax of it is P_agg)
  single_logits(z)              [B, K]: z[0, b, (k, 0)]              (SLA+SI: unrotated input only)
  self_distill_loss(v, z_agg)   KL(softmax(z_agg) || softmax(v)), mean over B, teacher gradient-stopped
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

ROTATIONS = (1, 2, 4)


def rotate_all(images: jax.Array, num_rotations: int) -> jax.Array:
    """images [B, H, W, C] (H == W unless M <= 2) -> [M, B, H, W, C]; view m rotated by m * 360/M degrees."""
    quarter = 4 // num_rotations
    return jnp.stack([jnp.rot90(images, k=m * quarter, axes=(1, 2)) for m in range(num_rotations)])


def joint_labels(labels: jax.Array, num_rotations: int) -> jax.Array:
    """labels [B] -> [M, B] joint labels y * M + m."""
    m = jnp.arange(num_rotations, dtype=labels.dtype)[:, None]
    return labels[None, :] * num_rotations + m


def sla_loss(joint_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """joint_logits [M, B, K*M], labels [B] -> scalar mean CE on the joint labels."""
    num_rotations = joint_logits.shape[0]
    targets = joint_labels(labels, num_rotations)
    return optax.softmax_cross_entropy_with_integer_labels(joint_logits.astype(jnp.float32), targets).mean()


def _class_rotation(joint_logits: jax.Array) -> jax.Array:
    """[M, B, K*M] -> [M, B, K, M]."""
    num_rotations = joint_logits.shape[0]
    return joint_logits.reshape(*joint_logits.shape[:2], -1, num_rotations)


def aggregated_logits(joint_logits: jax.Array) -> jax.Array:
    """[M, B, K*M] -> [B, K]: the mean over views m of the logit of (k, m) on view m."""
    per_view = _class_rotation(joint_logits)  # [M, B, K, M]
    diag = jnp.stack([per_view[m, :, :, m] for m in range(per_view.shape[0])])  # [M, B, K]
    return diag.astype(jnp.float32).mean(axis=0)


def single_logits(joint_logits: jax.Array) -> jax.Array:
    """[M, B, K*M] -> [B, K]: the unrotated view's logits of (k, rotation 0)."""
    return _class_rotation(joint_logits)[0, :, :, 0].astype(jnp.float32)


def self_distill_loss(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) [B, K] each, mean over B; no gradient to the teacher."""
    teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
    log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    log_teacher = jnp.log(jnp.clip(teacher, 1e-30))
    return jnp.sum(teacher * (log_teacher - log_student), axis=-1).mean()
