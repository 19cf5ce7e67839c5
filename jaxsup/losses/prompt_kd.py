"""PromptKD (Li et al., CVPR 2024) losses: class logits against fixed text features, and the KD term.

A CLIP-style classifier scores an image embedding against K class text
features: `logits = scale * normalize(z) @ normalize(text).T`. PromptKD's
student (an image encoder + projector) is trained on unlabelled images to
match the prompt-tuned teacher's logits over the teacher's own pre-computed
class text features (shared by both at train and test time):

    L = T^2 KL(softmax(teacher_logits / T) || softmax(student_logits / T)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsup.losses.distill import kd_loss


def unit_rows(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Rows of [N, E] scaled to unit L2 norm (float32)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def class_logits(embeddings: jax.Array, text_features: jax.Array, scale: jax.Array) -> jax.Array:
    """embeddings [B, E], text_features [K, E], scale () -> scale * cos(embedding, class text) [B, K]."""
    return scale * unit_rows(embeddings) @ unit_rows(text_features).T


def prompt_kd_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, text_features: jax.Array,
                   scale: jax.Array, temperature: float) -> jax.Array:
    """Mean T^2 KL(teacher || student) of the class logits of [B, E] embeddings over text_features [K, E]."""
    teacher = jax.lax.stop_gradient(class_logits(teacher_embeddings, text_features, scale))
    return kd_loss(class_logits(student_embeddings, text_features, scale), teacher, temperature, "kl")
