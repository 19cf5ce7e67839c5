"""Self-supervised label augmentation (SLA, Lee et al. 2020), task "sla".

Each image x of the batch is seen under M rotations t_m (M = 4: 0, 90, 180,
270 degrees), all M views in one forward pass of the backbone
(`config.model_name` + `config.model` with num_classes=None: features [M*B, D]).

mode "sla":      one softmax over K*M joint labels (y, m), head Dense(K*M):
                   L = mean_{m,b} CE(z(t_m x_b), y_b * M + m)
                 + sd_weight * [KL(P_agg(x) || softmax(v(x))) + sd_ce_weight * CE(v(x), y)]
                 P_agg = softmax of the aggregated logits (1/M) sum_m z(t_m x)_(k, m)
                 (gradient-stopped), v: a plain K-way head on the unrotated view's
                 features (self-distillation, "SLA+SD"; sd_weight = 0 drops it).
mode "augment":  the baseline: rotation as plain augmentation, head Dense(K),
                 L = mean_{m,b} CE(f(t_m x_b), y_b).
mode "none":     plain CE on the unrotated images (M views not used).

predict -> "logits" (SLA: aggregated over the M views, "SLA+AG"; baselines: the
unrotated view), "single_logits" (the unrotated view only: SLA+SI), "sd_logits"
(the plain head when self-distilling, else = "logits").

config.sla: mode, num_rotations (1 | 2 | 4), sd_weight, sd_ce_weight, augment,
crop_scale (device augmentation before the rotations). K is config.model.num_classes.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxsup.errors import ConfigError
from jaxsup.losses import label_aug
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.common import apply_with_state, augment_images, build_backbone, check_augment, split_variables

MODES = ("sla", "augment", "none")


def validate_fields(cfg: Any, num_classes: Any) -> None:
    """Raises ConfigError naming a bad config.sla field."""
    if cfg.mode not in MODES:
        raise ConfigError(f"sla.mode={cfg.mode!r} is not one of {MODES}.")
    if int(cfg.num_rotations) not in label_aug.ROTATIONS:
        raise ConfigError(f"sla.num_rotations={cfg.num_rotations!r} is not one of {label_aug.ROTATIONS}.")
    if not num_classes:
        raise ConfigError("task sla needs config.model.num_classes (the K of the K x M joint labels).")
    check_augment(cfg.augment, "sla.augment")


@register_task("sla", section="sla")
class SLA(Task):
    """Backbone + joint (class x rotation) head (+ plain self-distilled head); or a baseline head."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        cfg = self.cfg
        self.num_classes = config.model.get("num_classes")
        validate_fields(cfg, self.num_classes)
        self.num_rotations = int(cfg.num_rotations) if cfg.mode != "none" else 1
        self.backbone = build_backbone(config.model_name, config.model)
        joint = cfg.mode == "sla"
        self.head = nn.Dense(self.num_classes * (self.num_rotations if joint else 1), name="head")
        self.sd_head = nn.Dense(self.num_classes, name="sd_head") if joint and float(cfg.sd_weight) > 0 else None

    def init(self, rng, batch):
        k_b, k_h, k_s = jax.random.split(rng, 3)
        params, state = split_variables(self.backbone.init(k_b, batch["image"], train=False))
        feats, _ = self.backbone.apply({"params": params, **state}, batch["image"], train=False)
        params = {"backbone": params, "head": self.head.init(k_h, feats)["params"]}
        if self.sd_head is not None:
            params["sd_head"] = self.sd_head.init(k_s, feats)["params"]
        return params, state

    def _views(self, params, model_state, images, train: bool):
        """images [B, ...] -> (features [M, B, D], head outputs [M, B, K(*M)], new model_state)."""
        views = label_aug.rotate_all(images, self.num_rotations)
        flat = views.reshape(-1, *views.shape[2:])
        (feats, _), model_state = apply_with_state(self.backbone, params["backbone"], model_state, flat, train=train)
        feats = feats.reshape(self.num_rotations, -1, feats.shape[-1])
        return feats, self.head.apply({"params": params["head"]}, feats), model_state

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, step
        cfg = self.cfg
        images = augment_images(rng, batch["image"], cfg.augment, cfg.crop_scale)
        labels = batch["label"]
        feats, outputs, task_state = self._views(params, task_state, images, train=True)
        if cfg.mode != "sla":
            rows = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), labels[None])
            acc = (jnp.argmax(outputs[0], -1) == labels).mean()
            return rows.mean(), ({"accuracy": acc}, task_state)
        joint = label_aug.sla_loss(outputs, labels)
        agg = label_aug.aggregated_logits(outputs)
        metrics = {"joint_ce": joint, "accuracy": (jnp.argmax(agg, -1) == labels).mean()}
        loss = joint
        if self.sd_head is not None:
            sd_logits = self.sd_head.apply({"params": params["sd_head"]}, feats[0])
            kl = label_aug.self_distill_loss(sd_logits, agg)
            ce = optax.softmax_cross_entropy_with_integer_labels(sd_logits.astype(jnp.float32), labels).mean()
            loss = loss + float(cfg.sd_weight) * (kl + float(cfg.sd_ce_weight) * ce)
            metrics.update(sd_kl=kl, sd_ce=ce)
        return loss, (metrics, task_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        feats, outputs, _ = self._views(params, task_state, batch["image"], train=False)
        if self.cfg.mode != "sla":
            logits = outputs[0].astype(jnp.float32)
            return {"logits": logits, "single_logits": logits, "sd_logits": logits}
        agg = label_aug.aggregated_logits(outputs)
        sd = agg if self.sd_head is None else self.sd_head.apply({"params": params["sd_head"]}, feats[0])
        return {"logits": agg, "single_logits": label_aug.single_logits(outputs), "sd_logits": sd}
