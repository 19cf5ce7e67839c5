"""Teacher-student evaluation on a split: student and teacher top-1, their top-1
agreement, and the mean KL(teacher || student) of the softmax outputs.

Registered as "distill". cfg (one entry of config.evals): split, batch_size,
output ("logits", the student's), teacher_output ("teacher_logits"),
label_key ("label"), temperature (1.0: KL of the plain softmaxes; the KL is
never multiplied by T^2 here).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsup import registry
from jaxsup.evaluators.base import Evaluator, Predict
from jaxsup.errors import ConfigError

SUMS = ("student_correct", "teacher_correct", "agreement", "kl", "count")


@partial(jax.jit, static_argnames="temperature")
def distill_sums(
    student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, mask: jax.Array, temperature: float
) -> jax.Array:
    """Masked sums [5] (SUMS order) over a batch; logits [B, K], labels/mask [B]."""
    s = student_logits.astype(jnp.float32)
    t = teacher_logits.astype(jnp.float32)
    s_top1, t_top1 = jnp.argmax(s, -1), jnp.argmax(t, -1)
    kl = optax.kl_divergence(jax.nn.log_softmax(s / temperature), jax.nn.softmax(t / temperature))
    rows = jnp.stack([s_top1 == labels, t_top1 == labels, s_top1 == t_top1, kl, jnp.ones_like(kl)])
    return (rows.astype(jnp.float32) * mask).sum(axis=1)


@registry.register("evaluator", "distill")
class DistillEvaluator(Evaluator):
    """Returns top1 (student), teacher_top1, agreement, kl, count."""

    def __init__(self, cfg: Any, data_cfg: Any, batch_sharding: jax.sharding.Sharding):
        super().__init__(cfg, data_cfg, batch_sharding)
        self.temperature = float(cfg.get("temperature", 1.0))
        if not self.temperature > 0:
            raise ConfigError(f"distill evaluator temperature must be > 0, got {self.temperature!r}.")

    def evaluate(self, predict: Predict) -> dict[str, float]:
        output = self.cfg.get("output", "logits")
        teacher_output = self.cfg.get("teacher_output", "teacher_logits")
        label_key = self.cfg.get("label_key", "label")
        totals = jnp.zeros(len(SUMS))
        for batch in self.batches():
            outputs = predict(batch)
            if teacher_output not in outputs:
                raise ConfigError(
                    f"distill evaluator needs the task's predict() to return {teacher_output!r}; "
                    f"it returned {sorted(outputs)}."
                )
            totals = totals + distill_sums(
                outputs[output], outputs[teacher_output], batch[label_key], batch["mask"], self.temperature
            )
        sums = dict(zip(SUMS, (float(x) for x in jax.device_get(totals))))
        count = sums["count"]
        return {
            "top1": sums["student_correct"] / count,
            "teacher_top1": sums["teacher_correct"] / count,
            "agreement": sums["agreement"] / count,
            "kl": sums["kl"] / count,
            "count": count,
        }
