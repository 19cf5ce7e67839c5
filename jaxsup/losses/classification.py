"""Per-example classification loss and correctness (tasks and evaluators share it)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """logits [B, K], integer labels [B] -> {"loss": CE [B], "correct": top-1 hit [B] f32}."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss": loss, "correct": correct}
