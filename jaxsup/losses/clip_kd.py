"""Image-text distillation from a CLIP teacher (open_clip's DistillClipLoss; CLIP-KD, Yang et al. 2024).

    logit_kd(student, teacher)    the student's image->text and text->image softmax over the
                                  batch similarity matrix against the teacher's (KL; open_clip's
                                  soft-target CE less the teacher's entropy)
    feature_kd(student, teacher)  squared distance of the unit embeddings, image and text

Each side is `(zimg [B, E], ztxt [B, E], log_t [])`: unit embeddings and the log logit scale
(similarity logits = exp(log_t) * zimg @ ztxt.T, [B, B]). The teacher is a constant (no
gradient flows to it). Full B x B matrices: the reference form, for one device's batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsup.losses.distill import soft_ce

Side = tuple[jax.Array, jax.Array, jax.Array]


def similarity_logits(zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array) -> jax.Array:
    """exp(log_t) * zimg @ ztxt.T in float32: [B, B], row i = image i against every text."""
    return jnp.exp(log_t.astype(jnp.float32)) * (zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T)


def _kl_rows(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Mean over rows of KL(softmax(teacher row) || softmax(student row)) = soft CE - teacher entropy."""
    p = jax.nn.softmax(teacher_logits, axis=1)
    entropy = -jnp.mean(jnp.sum(p * jax.nn.log_softmax(teacher_logits, axis=1), axis=1))
    return soft_ce(student_logits, p) - entropy


def logit_kd(student: Side, teacher: Side) -> jax.Array:
    """(KL over image rows + KL over text columns) / 2 of the teacher's and the student's [B, B] softmax.

    open_clip's DistillClipLoss is the soft-target cross-entropy; this differs from it by the
    teacher's entropy, a constant: the same gradients, and 0 when the student matches.
    """
    s = similarity_logits(*student)
    t = jax.lax.stop_gradient(similarity_logits(*teacher))
    return (_kl_rows(s, t) + _kl_rows(s.T, t.T)) / 2


def feature_kd(student: Side, teacher: Side) -> jax.Array:
    """Mean over the batch of ||zimg_s - zimg_t||^2 and ||ztxt_s - ztxt_t||^2, averaged over the two."""
    def sq(a, b):
        diff = a.astype(jnp.float32) - jax.lax.stop_gradient(b.astype(jnp.float32))
        return jnp.mean(jnp.sum(diff * diff, axis=-1))

    if student[0].shape[-1] != teacher[0].shape[-1]:
        raise ValueError(f"feature_kd: student embeddings {student[0].shape} and teacher {teacher[0].shape} "
                         "differ in width; give both towers the same embed_dim.")
    return (sq(student[0], teacher[0]) + sq(student[1], teacher[1])) / 2
