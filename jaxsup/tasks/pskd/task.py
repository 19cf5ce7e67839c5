"""Self-knowledge distillation, PS-KD (Kim et al. 2021), task "pskd".

The model is its own teacher: example x at epoch t is trained with soft-target
cross-entropy towards `(1 - a_t) onehot(y) + a_t p_{t-1}(x)`, where
`p_{t-1}(x)` is the model's softmax output for x the last time it was seen
(one epoch earlier) and `a_t = alpha_T * t / T` (t the current epoch, counted
from 0, T the number of epochs of the run). Targets come from
`jaxsup.losses.distill.pskd_targets`.

The per-example buffer `task_state["pskd_prev_probs"]` [N, K] (N = length of
data.train_split) is read and then overwritten at the batch's "index"
entries each step; it lives in task_state, so it is checkpointed and a resumed
run continues with the same targets. The model's own collections (BatchNorm
stats) sit next to it at the top level of task_state, as in task
"supervised", so a PS-KD run can be a distillation teacher with the default
subtrees ("params", "task_state").

config.pskd: alpha_T (0.8), augment / crop_scale as in task "distill" (defaults in jaxsup.config).
Epochs: t = floor(step * batch_size / N) (grain reshuffles every epoch and
each example appears once per epoch), T = total_steps * batch_size / N.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup.errors import ConfigError
from jaxsup.losses import distill as distill_losses
from jaxsup.tasks.base import DataInfo, register_task
from jaxsup.tasks.common import ImageClassifier, augment_images, check_augment

PREV_PROBS = "pskd_prev_probs"


def epoch_of(step: jax.Array, batch_size: int, num_examples: int) -> jax.Array:
    """Epoch (f32, whole number) that the batch of `step` starts in."""
    return jnp.floor(step.astype(jnp.float32) * batch_size / num_examples)


@register_task("pskd", section="pskd")
class PSKD(ImageClassifier):
    """Supervised model trained on its own previous-epoch predictions (progressive self-KD)."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        if not 0.0 <= float(self.cfg.alpha_T) <= 1.0:
            raise ConfigError(f"pskd.alpha_T must lie in [0, 1], got {self.cfg.alpha_T!r}.")
        check_augment(self.cfg.augment, "pskd.augment")
        self.num_examples = data.num_examples(config.data.train_split)
        self.num_epochs = config.total_steps * config.batch_size / self.num_examples

    def init(self, rng, batch):
        params, model_state = super().init(rng, batch)
        logits, _ = self._apply(params, model_state, batch["image"], train=False)
        prev = jnp.zeros((self.num_examples, logits.shape[-1]), jnp.float32)
        return params, {**model_state, PREV_PROBS: prev}

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen
        model_state = {k: v for k, v in task_state.items() if k != PREV_PROBS}
        prev_probs = task_state[PREV_PROBS]
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], self.cfg.augment, self.cfg.crop_scale)
        logits, model_state = self._apply(params, model_state, images, train=True)
        index, labels = batch["index"], batch["label"]
        epoch = epoch_of(step, self.config.batch_size, self.num_examples)
        targets = distill_losses.pskd_targets(
            labels, prev_probs[index], float(self.cfg.alpha_T), epoch, self.num_epochs
        )
        loss = distill_losses.soft_ce(logits, targets)
        probs = jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32)))
        new_state = {**model_state, PREV_PROBS: prev_probs.at[index].set(probs)}
        metrics = {
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "alpha": float(self.cfg.alpha_T) * epoch / self.num_epochs,
        }
        return loss, (metrics, new_state)

    def predict(self, params, task_state, frozen, batch):
        model_state = {k: v for k, v in task_state.items() if k != PREV_PROBS}
        return super().predict(params, model_state, frozen, batch)
