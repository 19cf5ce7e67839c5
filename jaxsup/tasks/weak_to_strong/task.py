"""Weak-to-strong student (Burns et al. 2023), task "weak_to_strong", and its weak labels.

A strong model is trained on split B with the soft labels a weak supervisor
(trained on a disjoint split A) gave to B; the true labels of B are never
read by the loss (the student configs drop them from the train batches).
The whole pipeline (weak -> labels -> ceiling -> students -> PGR report) is
`python -m jaxsup.w2s` (jaxsup/w2s/pipeline.py).

Weak labels: the .npz of `jaxsup.data.labels.weak_labels` (probs [N, K], index [N],
split, dataset). The task reorders them by index into a table [N, K] that is placed,
replicated, in `frozen["weak_probs"]` (N*K*4 bytes per device: fine for
digits/CIFAR, a data-pipeline join would be the way for ImageNet-size N*K),
and each step reads the rows of the batch's "index".

config.w2s (defaults in `jaxsup.config`):
  weak_labels  path of the .npz (required)
  weak_split   the supervisor's train split; if set, checked disjoint from
               data.train_split (ValueError naming the overlap)
  loss         "aux" (auxiliary confidence loss) | "soft_ce" (naive baseline)
  aux_coef     final mixing weight alpha in [0, 1]
  warmup_frac  fraction of total_steps over which alpha ramps up linearly
  augment, crop_scale  device augmentation, as in task "distill"
config.finetune: the strong model's warm start (task "finetune" fields, e.g.
init_from a SimCLR run's "params/encoder"; "" -> random init).
Params / task_state layout as task "supervised" ("params", BatchNorm stats at
the top of task_state), so a student can be a teacher with the defaults.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup import sharding
from jaxsup.data.datasets import splits
from jaxsup.data.labels import weak_labels
from jaxsup.errors import ConfigError
from jaxsup.losses import weak as weak_losses
from jaxsup.tasks.base import DataInfo, register_task
from jaxsup.tasks.common import ImageClassifier, augment_images, check_augment, num_outputs

LOSSES = ("aux", "soft_ce")
WEAK_PROBS = "weak_probs"


def validate_w2s_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad config.w2s field."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"w2s.loss={cfg.loss!r} is not one of {LOSSES}.")
    for name in ("aux_coef", "warmup_frac"):
        value = float(cfg[name])
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"w2s.{name} must lie in [0, 1], got {cfg[name]!r}.")
    check_augment(cfg.augment, "w2s.augment")


@register_task("weak_to_strong", section="w2s")
class WeakToStrong(ImageClassifier):
    """Strong student on a weak supervisor's soft labels (aux confidence loss or plain soft CE)."""

    warm_start_section = "finetune"

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        cfg = self.cfg
        validate_w2s_fields(cfg)
        train_split = config.data.train_split
        if cfg.weak_split:
            roles = {"w2s.weak_split": cfg.weak_split, "data.train_split": train_split}
            splits.check_disjoint(roles, {r: data.split_ranges(s) for r, s in roles.items()}, config.data.name)
        self.num_classes = num_outputs(self.model, data.example["image"])
        self.num_examples = data.num_examples(train_split)

    def load_frozen(self):
        table = weak_labels.load_weak_labels(self.cfg.weak_labels, self.config.data.train_split,
                                             self.config.data.name, self.num_examples, self.num_classes)
        return {WEAK_PROBS: jax.device_put(jnp.asarray(table), sharding.replicated(self.mesh))}

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        cfg = self.cfg
        images = augment_images(jax.random.fold_in(rng, 0), batch["image"], cfg.augment, cfg.crop_scale)
        logits, task_state = self._apply(params, task_state, images, train=True)
        weak_probs = frozen[WEAK_PROBS][batch["index"]]
        metrics = {"weak_agreement": weak_losses.hard_label_agreement(logits, weak_probs)}
        if cfg.loss == "aux":
            alpha = weak_losses.aux_alpha(step, self.config.total_steps, float(cfg.aux_coef), float(cfg.warmup_frac))
            loss = weak_losses.aux_confidence_loss(logits, weak_probs, alpha)
            metrics["alpha"] = alpha
        else:
            loss = weak_losses.soft_label_ce(logits, weak_probs)
        if "label" in batch:  # monitoring only, when the train preprocess keeps labels
            metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (metrics, task_state)
