"""Pseudo-label self-training with an EMA teacher, task "pseudo_label".

A few examples are labelled (`labelled_split`, a leading slice of
data.train_split: those whose position in the split is below its length),
the rest are not. Each step, on one batch mixing both:

  L = CE_labelled(student(x'), y)  +  lambda_u(t) * PL

  PL = (1 / #unlabelled) * sum_{unlabelled i} 1[max_k p_T(k | x_i) >= threshold] * CE(student(x'_i), argmax p_T(x_i))

x' is the student's (optionally augmented) view, x the clean image the
teacher sees; p_T = softmax(teacher logits / temperature). The true labels of
unlabelled rows are masked before the loss (used only for the monitoring
metric `pseudo_accuracy`). lambda_u ramps up linearly over `rampup_frac` of
training; `unlabelled_weight = 0` is the labels-only baseline (same batches).

Teacher: an exponential moving average of the student, kept in
`task_state["ema_teacher"]` = {"params", "model_state"} (checkpointed, no
gradient). Each step, before labelling, it moves towards the student:

  teacher <- ema_decay * teacher + (1 - ema_decay) * target

with target = theta (the student's current params). "Learning from the
future" (future_lr = eta > 0): target = theta' = theta - eta * grad CE_labelled(theta),
the student one plain SGD step ahead on the labelled loss; theta' only moves
the teacher and is never applied to the student (the optimizer updates theta
from L as usual). future_lr = 0 is exactly the plain EMA teacher. Non-param
collections (BatchNorm stats) of the teacher follow the student's by the
same EMA. The teacher starts as a copy of the initial student.

config.pseudo_label (defaults in `jaxsup.config`): labelled_split,
threshold, unlabelled_weight, rampup_frac, ema_decay, temperature,
future_lr, augment, crop_scale. predict() returns "logits" (student) and
"teacher_logits" (EMA teacher), so the "distill" evaluator reports both.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsup.tasks.base import DataInfo, register_task
from jaxsup.tasks.common import ImageClassifier, augment_images, check_augment, labelled_mask, leading_slice_count, masked_mean

EMA = "ema_teacher"


def validate_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad config.pseudo_label field."""
    check_augment(cfg.augment, "pseudo_label.augment")


def ema_update(teacher: Any, target: Any, decay: float) -> Any:
    """decay * teacher + (1 - decay) * target, leaf by leaf (gradient-stopped)."""
    return jax.lax.stop_gradient(optax.incremental_update(target, teacher, 1.0 - decay))


def rampup(step: jax.Array, total_steps: int, frac: float) -> jax.Array:
    """min(1, (step / total_steps) / frac); 1 when frac = 0."""
    if frac == 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / total_steps / frac)


@register_task("pseudo_label", section="pseudo_label", check=validate_fields)
class PseudoLabel(ImageClassifier):
    """Student + EMA teacher: CE on labelled rows, thresholded teacher pseudo-labels on the rest."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.num_labelled = leading_slice_count(config, self.cfg.labelled_split, "pseudo_label.labelled_split",
                                                data.num_examples)

    # ------------------------------------------------------------------ state
    def init(self, rng, batch):
        params, model_state = super().init(rng, batch)
        teacher = jax.tree.map(jnp.copy, {"params": params, "model_state": model_state})
        return params, {**model_state, EMA: teacher}

    @staticmethod
    def split_state(task_state: dict) -> tuple[dict, dict]:
        """task_state -> (student model_state, teacher {"params", "model_state"})."""
        return {k: v for k, v in task_state.items() if k != EMA}, task_state[EMA]

    def teacher_logits(self, teacher: dict, images: jax.Array) -> jax.Array:
        logits, _ = self._apply(teacher["params"], teacher["model_state"], images, train=False)
        return jax.lax.stop_gradient(logits.astype(jnp.float32))

    # ------------------------------------------------------------------- loss
    def labelled_ce(self, params, model_state, images, labels, labelled):
        """(masked mean CE over labelled rows, logits [B, K], new model_state)."""
        logits, model_state = self._apply(params, model_state, images, train=True)
        rows = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return masked_mean(rows, labelled), (logits, model_state)

    def ema_target(self, params, model_state, images, labels, labelled):
        """theta, or with future_lr > 0 the virtual next student theta - eta * grad CE_labelled."""
        eta = float(self.cfg.future_lr)
        if eta == 0.0:
            return jax.lax.stop_gradient(params)
        frozen_params = jax.lax.stop_gradient(params)
        grads = jax.grad(lambda p: self.labelled_ce(p, model_state, images, labels, labelled)[0])(frozen_params)
        return jax.tree.map(lambda p, g: p - eta * g, frozen_params, grads)

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen
        cfg = self.cfg
        model_state, teacher = self.split_state(task_state)
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], cfg.augment, cfg.crop_scale)
        labelled = labelled_mask(batch["index"], self.num_labelled)
        labels = jnp.where(labelled > 0, batch["label"], 0)  # unlabelled rows never see their label
        unlabelled = 1.0 - labelled

        target = self.ema_target(params, model_state, images, labels, labelled)
        teacher = {
            "params": ema_update(teacher["params"], target, float(cfg.ema_decay)),
            "model_state": ema_update(teacher["model_state"], model_state, float(cfg.ema_decay)),
        }
        t_probs = jax.nn.softmax(self.teacher_logits(teacher, batch["image"]) / float(cfg.temperature), axis=-1)
        pseudo = jnp.argmax(t_probs, axis=-1)
        confident = (jnp.max(t_probs, axis=-1) >= float(cfg.threshold)).astype(jnp.float32) * unlabelled

        ce, (logits, model_state) = self.labelled_ce(params, model_state, images, labels, labelled)
        pseudo_rows = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), pseudo)
        pseudo_ce = jnp.sum(confident * pseudo_rows) / jnp.maximum(jnp.sum(unlabelled), 1.0)
        weight = float(cfg.unlabelled_weight) * rampup(step, self.config.total_steps, float(cfg.rampup_frac))
        loss = ce + weight * pseudo_ce
        metrics = {
            "labelled_ce": ce,
            "pseudo_ce": pseudo_ce,
            "unlabelled_weight": weight,
            "mask_rate": jnp.sum(confident) / jnp.maximum(jnp.sum(unlabelled), 1.0),
            "pseudo_accuracy": masked_mean(pseudo == batch["label"], confident),  # monitoring only
            "accuracy": masked_mean(jnp.argmax(logits, -1) == labels, labelled),
            "labelled_fraction": jnp.mean(labelled),
        }
        return loss, (metrics, {**model_state, EMA: teacher})

    def predict(self, params, task_state, frozen, batch):
        del frozen
        model_state, teacher = self.split_state(task_state)
        logits, _ = self._apply(params, model_state, batch["image"], train=False)
        return {"logits": logits, "teacher_logits": self.teacher_logits(teacher, batch["image"])}
