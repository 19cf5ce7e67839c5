"""SimCLR self-supervised pretraining (task "simclr"): K augmented views, NT-Xent or CACR.

Encoder: any registered image model (`config.model_name`, `config.model`;
set num_classes=None so it returns features [B, D]); projection head:
`jaxsup.models.heads.SimCLRHead(**config.simclr.head)`. Batch: {"image":
[N, H, W, C] float in [0, 1]}; labels are never read. The K views come from
`jaxsup.data.device.augment.simclr_augment` with keys split from the step RNG, and
are encoded in one forward pass ([K N, ...], so BatchNorm statistics are over
all views of the global batch). The configs use LARS (config.optim.name), as
SimCLR does.

config.simclr fields:
  loss: "nt_xent" (SimCLR; with K > 2 views the mean of NT-Xent over the K(K-1)/2 view pairs)
        | "cacr" (contrastive attraction + repulsion, `jaxsup.losses.contrastive.cacr`)
  views: K >= 2 augmented views per image
  tau: NT-Xent temperature
  reduction: NT-Xent's "mean" over the 2N views (default; exactly half of official
        SimCLR's loss_a + loss_b, gradients too) | "simclr" (that official sum, so SimCLR
        learning rates port unchanged). simclr_resnet50_imagenet.py (SimCLR's LARS
        recipe) uses "simclr"; the digits configs use "mean".
  cacr: kwargs of the CACR loss (t_pos, t_neg, alpha, beta)
  impl: "reference" | "chunked" | "pallas" | "ring" (as in task "clip"); tile, fallback, axis;
        CACR takes "reference" | "chunked"
  augment: kwargs of simclr_augment (crop_scale, flip, jitter_strength, blur_prob, ...)
  head: kwargs of SimCLRHead (num_layers, hidden_dim, output_dim, use_bn)

Params / task_state layout: {"encoder": ..., "head": ...}.
predict(batch) outputs: "features" [N, D] (encoder output, what a linear
probe reads), "z" [N, output_dim] (unit-norm head output).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup.data.device.augment import simclr_augment
from jaxsup.losses import contrastive
from jaxsup.errors import ConfigError, DataError
from jaxsup.models.two_tower import l2_normalize
from jaxsup.tasks.base import Batch, DataInfo, Task, register_task
from jaxsup.tasks.common import apply_with_state, build_model, check_contrastive_options, split_variables


LOSSES = ("nt_xent", "cacr")


def nt_xent_loss(z1: jax.Array, z2: jax.Array, opts: dict[str, Any], mesh) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NT-Xent of the views z1, z2 [N, E] with the configured implementation."""
    return contrastive.nt_xent(z1, z2, opts["tau"], impl=opts["impl"], tile=opts["tile"], fallback=opts["fallback"],
                               mesh=mesh, axis=opts["axis"], reduction=opts["reduction"])


def multiview_loss(z: jax.Array, opts: Any, mesh) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured loss of K views z [K, N, E]: CACR over all K, or NT-Xent
    averaged over the K(K-1)/2 pairs of views (metrics averaged likewise)."""
    if opts.loss == "cacr":
        return contrastive.cacr(z, impl=opts.impl, tile=opts.tile, **opts.cacr)
    pairs = [nt_xent_loss(z[a], z[b], opts, mesh) for a in range(len(z)) for b in range(a + 1, len(z))]
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *pairs)


def check_loss_options(opts: Any, mesh) -> None:
    """ConfigError for an unknown loss or reduction, or an impl the loss lacks (views: its declared range)."""
    check_contrastive_options(opts, "simclr", mesh)
    if opts.loss not in LOSSES:
        raise ConfigError(f"Unknown config.simclr.loss {opts.loss!r}; expected one of {LOSSES}.")
    if opts.reduction not in contrastive.NT_XENT_REDUCTIONS:
        raise ConfigError(f"Unknown config.simclr.reduction {opts.reduction!r}; expected one of "
                          f"{tuple(contrastive.NT_XENT_REDUCTIONS)}.")
    if opts.loss == "cacr" and opts.impl not in contrastive.CACR_IMPLS:
        raise ConfigError(f"config.simclr.impl {opts.impl!r} is not available for loss 'cacr'; "
                          f"expected one of {contrastive.CACR_IMPLS}.")


@register_task("simclr", section="simclr")
class SimCLR(Task):
    """Encoder + projection head trained with NT-Xent on two augmented views."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        check_loss_options(self.cfg, mesh)
        self.encoder = build_model(config.model_name, config.model)
        self.head = build_model("simclr_head", self.cfg.head)
        self.augment = dict(self.cfg.augment)

    def _features(self, variables, images, train: bool, rng=None):
        """Encoder features [N, D] (+ updated encoder state); ValueError if not [N, D]."""
        (feats, _), state = apply_with_state(
            self.encoder, variables["params"], variables["state"], images, train=train,
            rngs=None if rng is None else {"dropout": rng},
        )
        if feats.ndim != 2:
            raise ConfigError(
                f"simclr: encoder {self.config.model_name!r} returned shape {feats.shape}; the projection head "
                "needs features [N, D] (set config.model.num_classes=None on a pooled model)."
            )
        return feats, state

    def init(self, rng, batch: Batch):
        k_enc, k_head = jax.random.split(rng)
        enc_params, enc_state = split_variables(self.encoder.init(k_enc, batch["image"], train=False))
        feats, _ = self._features({"params": enc_params, "state": enc_state}, batch["image"], train=False)
        head_params, head_state = split_variables(self.head.init(k_head, feats, train=False))
        return {"encoder": enc_params, "head": head_params}, {"encoder": enc_state, "head": head_state}

    def _embed(self, params, task_state, images, train: bool, rng=None):
        """images -> (features [N, D], unit-norm z [N, E], new task_state)."""
        feats, enc_state = self._features(
            {"params": params["encoder"], "state": task_state["encoder"]}, images, train, rng
        )
        (z, _), head_state = apply_with_state(self.head, params["head"], task_state["head"], feats, train=train)
        return feats, l2_normalize(z), {"encoder": enc_state, "head": head_state}

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, step
        if "image" not in batch:
            raise DataError(f"simclr task: batch has no 'image'; has {sorted(batch)}.")
        images = batch["image"]
        *view_keys, k_drop = jax.random.split(rng, self.cfg.views + 1)
        views = jnp.concatenate([simclr_augment(k, images, **self.augment) for k in view_keys])
        _, z, task_state = self._embed(params, task_state, views, train=True, rng=k_drop)
        loss, metrics = multiview_loss(z.reshape(self.cfg.views, images.shape[0], -1), self.cfg, self.mesh)
        return loss, (metrics, task_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        feats, z, _ = self._embed(params, task_state, batch["image"], train=False)
        return {"features": feats, "z": z}
