"""Supervised classification: cross-entropy on integer labels."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsup import registry
from jaxsup.tasks.base import Batch, Task, build_model, split_variables


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example CE loss and top-1 correctness, [B] each."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss": loss, "correct": correct}


@registry.register("task", "supervised")
class Supervised(Task):
    """`config.model_name` + `config.model` kwargs; batch {"image": [B,H,W,C], "label": [B]}."""

    def __init__(self, config: Any, mesh):
        super().__init__(config, mesh)
        self.model = build_model(config.model_name, config.model)

    def init(self, rng, batch: Batch):
        variables = self.model.init(rng, batch["image"], train=False)
        return split_variables(variables)

    def _apply(self, params, model_state, images, train: bool):
        variables = {"params": params, **model_state}
        if train and model_state:
            (logits, _), new_state = self.model.apply(variables, images, train=True, mutable=list(model_state))
            return logits, new_state
        logits, _ = self.model.apply(variables, images, train=train)
        return logits, model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, rng, step
        logits, task_state = self._apply(params, task_state, batch["image"], train=True)
        per_example = classification_metrics(logits, batch["label"])
        loss = per_example["loss"].mean()
        return loss, ({"accuracy": per_example["correct"].mean()}, task_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        logits, _ = self._apply(params, task_state, batch["image"], train=False)
        return {"logits": logits}
