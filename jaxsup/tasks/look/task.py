"""LOOK supervised pre-training (leave-one-out kNN, Feng et al. 2022), task "look".

Backbone (`config.model_name` + `config.model`, num_classes=None) -> features [B, D],
unit-normalised for the loss. Only examples whose label is < look.pretrain_classes
take part (the rest of each batch is masked: the held-out classes are for transfer).
  loss "look": `jaxsup.losses.look.look_loss` against a memory of every train example's
               last features (task_state "memory" [N, D], "mem_labels" [N], "valid" [N];
               N = size of data.train_split, rows by the batch "index"), momentum-updated
               after each step (`update_memory`), leave-one-out, k nearest neighbours.
  loss "ce":   the baseline: a Dense(pretrain_classes) head on the features, plain CE.
predict -> "features" [B, D] (what the transfer evaluators read); "logits" in "ce" mode.
config.look: loss, k, tau, momentum, pretrain_classes, augment, crop_scale.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxsup.errors import ConfigError
from jaxsup.losses import look as look_lib
from jaxsup.models.two_tower import l2_normalize
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.common import (apply_with_state, augment_images, build_backbone, check_augment, masked_mean,
                                 split_variables)

LOSSES = ("look", "ce")
MEMORY = ("memory", "mem_labels", "valid")


def validate_fields(cfg: Any) -> None:
    """Raises ConfigError naming a bad config.look field."""
    if cfg.loss not in LOSSES:
        raise ConfigError(f"look.loss={cfg.loss!r} is not one of {LOSSES}.")
    check_augment(cfg.augment, "look.augment")


@register_task("look", section="look", check=validate_fields)
class Look(Task):
    """Backbone trained by leave-one-out kNN agreement over a feature memory (or CE)."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.num_train = data.num_examples(config.data.train_split)
        self.backbone = build_backbone(config.model_name, config.model)
        self.head = nn.Dense(int(self.cfg.pretrain_classes)) if self.cfg.loss == "ce" else None

    def init(self, rng, batch):
        k_b, k_h = jax.random.split(rng)
        params, state = split_variables(self.backbone.init(k_b, batch["image"], train=False))
        feats, _ = self.backbone.apply({"params": params, **state}, batch["image"], train=False)
        params = {"backbone": params}
        if self.head is not None:
            params["head"] = self.head.init(k_h, feats)["params"]
            return params, {"model": state}
        n, d = self.num_train, feats.shape[-1]
        return params, {"model": state, "memory": jnp.zeros((n, d), jnp.float32),
                        "mem_labels": jnp.zeros((n,), jnp.int32), "valid": jnp.zeros((n,), jnp.float32)}

    def _features(self, params, model_state, images, train: bool):
        (feats, _), model_state = apply_with_state(self.backbone, params["backbone"], model_state, images, train=train)
        return feats, model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, step
        cfg = self.cfg
        images = augment_images(rng, batch["image"], cfg.augment, cfg.crop_scale)
        labels, index = batch["label"], batch["index"] % self.num_train
        rows = (labels < int(cfg.pretrain_classes)).astype(jnp.float32)
        feats, model_state = self._features(params, task_state["model"], images, train=True)
        if self.head is not None:
            logits = self.head.apply({"params": params["head"]}, feats).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(rows > 0, labels, 0))
            acc = masked_mean(jnp.argmax(logits, -1) == labels, rows)
            return masked_mean(ce, rows), ({"accuracy": acc}, {"model": model_state})
        z = l2_normalize(feats.astype(jnp.float32))
        memory = [task_state[k] for k in MEMORY]
        per_row, has_pos = look_lib.look_loss(z, labels, index, *memory, k=int(cfg.k), tau=float(cfg.tau))
        counted = rows * has_pos
        loss = jnp.sum(per_row * counted) / jnp.maximum(rows.sum(), 1.0)
        new_memory = look_lib.update_memory(*memory, z, labels, index, rows, float(cfg.momentum))
        metrics = {"positive_rate": masked_mean(has_pos, rows), "memory_filled": jnp.mean(new_memory[2])}
        return loss, (metrics, {"model": model_state, **dict(zip(MEMORY, new_memory))})

    def predict(self, params, task_state, frozen, batch):
        del frozen
        feats, _ = self._features(params, task_state["model"], batch["image"], train=False)
        out = {"features": feats}
        if self.head is not None:
            out["logits"] = self.head.apply({"params": params["head"]}, feats)
        return out
