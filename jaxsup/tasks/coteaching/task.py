"""Co-teaching for noisy labels (Han et al. 2018), task "coteaching", with optional feature
compression by dropout (Chen et al. 2022).

Training labels are corrupted deterministically (`jaxsup.data.labels.noise`, config.label_noise:
rate, kind "symmetric" | "pair", seed) from the example's position "index" in the
split; the clean "label" is read only for monitoring (`label_precision`: the share of
the rows each net selects whose observed label is the true one). Evaluation uses
the clean test labels.

Two networks (`config.model_name` + `config.model` backbones with num_classes=None,
each with its own Dense(K) head on the features, optionally compressed by
`feature_dropout` ("dropout" | "nested") while training), initialised differently.
Each step, on per-example CE losses l1, l2 [B] of the observed labels:
  R(t) = 1 - forget_rate * min(1, t / (gradual_frac * total_steps))
  m_k = the floor(R * B) smallest-loss rows of net k (gradient-stopped)
  L = mean(l1 over m2) + mean(l2 over m1)
forget_rate < 0 uses label_noise.rate (the paper's tau = noise rate); forget_rate = 0
is the baseline: both nets trained with plain CE on every (noisy) row.

predict -> "logits" (net 1), "logits_2" (net 2).
config.coteaching: forget_rate, gradual_frac, feature_dropout, dropout_kind, augment, crop_scale.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxsup.data.labels import noise
from jaxsup.errors import ConfigError
from jaxsup.losses import noisy
from jaxsup.tasks.base import DataInfo, Task, register_task
from jaxsup.tasks.common import apply_with_state, augment_images, build_backbone, check_augment, split_variables

NETS = ("net1", "net2")


def validate_fields(noise_cfg: Any, cfg: Any, num_classes: Any) -> None:
    """Raises ConfigError naming a bad config.label_noise / config.coteaching field."""
    if not num_classes:
        raise ConfigError("task coteaching needs config.model.num_classes.")
    if noise_cfg.kind not in noise.KINDS:
        raise ConfigError(f"label_noise.kind={noise_cfg.kind!r} is not one of {noise.KINDS}.")
    if cfg.dropout_kind not in noisy.DROPOUT_KINDS:
        raise ConfigError(f"coteaching.dropout_kind={cfg.dropout_kind!r} is not one of {noisy.DROPOUT_KINDS}.")
    check_augment(cfg.augment, "coteaching.augment")


@register_task("coteaching", section="coteaching")
class CoTeaching(Task):
    """Two backbone + head networks exchanging their small-loss rows."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        self.noise_cfg = config.label_noise
        self.num_classes = config.model.get("num_classes")
        validate_fields(self.noise_cfg, self.cfg, self.num_classes)
        rate = float(self.cfg.forget_rate)
        self.forget_rate = float(self.noise_cfg.rate) if rate < 0 else rate
        self.backbone = build_backbone(config.model_name, config.model)
        self.head = nn.Dense(self.num_classes)

    def init(self, rng, batch):
        params, state = {}, {}
        for name, key in zip(NETS, jax.random.split(rng)):
            k_b, k_h = jax.random.split(key)
            p, state[name] = split_variables(self.backbone.init(k_b, batch["image"], train=False))
            feats, _ = self.backbone.apply({"params": p, **state[name]}, batch["image"], train=False)
            params[name] = {"backbone": p, "head": self.head.init(k_h, feats)["params"]}
        return params, state

    def _logits(self, params, model_state, images, train: bool, rng=None):
        """One net: images -> (logits [B, K] f32, new model_state); features compressed when training."""
        (feats, _), model_state = apply_with_state(self.backbone, params["backbone"], model_state, images, train=train)
        if train:
            feats = noisy.feature_dropout(rng, feats, float(self.cfg.feature_dropout), self.cfg.dropout_kind)
        return self.head.apply({"params": params["head"]}, feats).astype(jnp.float32), model_state

    def observed_labels(self, batch) -> jax.Array:
        """The noisy training labels [B] of the batch's examples."""
        n = self.noise_cfg
        return noise.noisy_labels(batch["label"], batch["index"], self.num_classes, float(n.rate), n.kind, int(n.seed))

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen
        cfg = self.cfg
        k_aug, *k_drop = jax.random.split(rng, 3)
        images = augment_images(k_aug, batch["image"], cfg.augment, cfg.crop_scale)
        observed = self.observed_labels(batch)
        losses, new_state = [], {}
        for name, key in zip(NETS, k_drop):
            logits, new_state[name] = self._logits(params[name], task_state[name], images, True, key)
            losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, observed))
        keep = noisy.keep_fraction(step, self.config.total_steps, self.forget_rate, float(cfg.gradual_frac))
        loss, m1, m2 = noisy.coteaching_loss(losses[0], losses[1], keep)
        clean = (observed == batch["label"]).astype(jnp.float32)
        metrics = {
            "keep_fraction": keep,
            "noise_rate": 1.0 - clean.mean(),
            "label_precision_1": jnp.sum(m1 * clean) / jnp.sum(m1),
            "label_precision_2": jnp.sum(m2 * clean) / jnp.sum(m2),
            "ce_1": losses[0].mean(),
        }
        return loss, (metrics, new_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        out = [self._logits(params[n], task_state[n], batch["image"], train=False)[0] for n in NETS]
        return {"logits": out[0], "logits_2": out[1]}
