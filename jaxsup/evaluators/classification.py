"""Top-1 accuracy and mean cross-entropy of the task's logits on a split."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.data.pipeline import eval_global_batches
from jaxsup.evaluators.base import Predict
from jaxsup.losses.classification import classification_metrics


@jax.jit
def _masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    m = classification_metrics(logits, labels)
    return jnp.stack([(m["loss"] * mask).sum(), (m["correct"] * mask).sum(), mask.sum()])


@registry.register("evaluator", "classification")
class ClassificationEvaluator:
    """cfg: split, batch_size, output ("logits"), label_key ("label")."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        self.cfg = cfg
        self.data_cfg = data_cfg
        self.sharding = batch_sharding

    def evaluate(self, predict: Predict) -> dict[str, float]:
        output = self.cfg.get("output", "logits")
        label_key = self.cfg.get("label_key", "label")
        totals = jnp.zeros(3)
        for batch in eval_global_batches(self.data_cfg, self.cfg.split, self.cfg.batch_size, self.sharding):
            logits = predict(batch)[output]
            totals = totals + _masked_sums(logits, batch[label_key], batch["mask"])
        loss_sum, correct, count = (float(x) for x in jax.device_get(totals))
        return {"top1": correct / count, "loss": loss_sum / count, "count": count}
