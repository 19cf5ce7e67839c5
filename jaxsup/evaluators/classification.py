"""Top-1 accuracy and mean cross-entropy of the task's logits on a split."""
from __future__ import annotations


import jax
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.evaluators.base import Evaluator, Predict
from jaxsup.losses.classification import classification_metrics


@jax.jit
def _masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    m = classification_metrics(logits, labels)
    return jnp.stack([(m["loss"] * mask).sum(), (m["correct"] * mask).sum(), mask.sum()])


@registry.register("evaluator", "classification")
class ClassificationEvaluator(Evaluator):
    """cfg: split, batch_size, output ("logits"), label_key ("label")."""

    def evaluate(self, predict: Predict) -> dict[str, float]:
        output = self.cfg.get("output", "logits")
        label_key = self.cfg.get("label_key", "label")
        totals = jnp.zeros(3)
        for batch in self.batches():
            logits = predict(batch)[output]
            totals = totals + _masked_sums(logits, batch[label_key], batch["mask"])
        loss_sum, correct, count = (float(x) for x in jax.device_get(totals))
        return {"top1": correct / count, "loss": loss_sum / count, "count": count}
