"""CLIP / SigLIP image-text contrastive pretraining (task "clip").

Model: `config.model_name = "two_tower"` with `config.model` its kwargs (image
and text towers, embed_dim); the task sets the model's `loss` from
`config.clip.loss`. Batch: {"image": [B, H, W, C] float, "tokens": [B, L] int32}.

config.clip fields:
  loss: "softmax" (CLIP) | "sigmoid" (SigLIP)
  impl: "reference" | "chunked" | "pallas" (jaxsup.losses.contrastive) | "ring"
        (jaxsup.losses.distributed: a device ring over mesh axis `axis`)
  tile: column tile of the chunked / ring paths
  fallback: impl="pallas" on a backend it cannot run on warns and uses "chunked"
  axis: the mesh axis the ring runs over ("data")

predict(batch) outputs (each only when its input is in the batch, so a batch
with only "tokens" runs only the text tower):
  "zimg" [B, E], "features" [B, D] (image tower output before projection) from "image";
  "ztxt" [B, E], "txt_features" [B, D'] from "tokens".
"""
from __future__ import annotations

from typing import Any

import jax

from jaxsup import registry
from jaxsup.losses import contrastive, distributed
from jaxsup.losses.dispatch import IMPLS
from jaxsup.models.two_tower import LOSS_TYPES
from jaxsup.tasks.base import Batch, Task, build_model, split_variables

CLIP_IMPLS = IMPLS + ("ring",)
DEFAULTS = dict(loss="softmax", impl="reference", tile=contrastive.DEFAULT_TILE, fallback=True, axis="data")


def task_options(config: Any, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """config.<name> merged over defaults; unknown keys raise naming the known ones."""
    given = config.get(name) or {}
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"config.{name} has unknown field(s) {unknown}; known: {sorted(defaults)}.")
    return {**defaults, **given}


def apply_with_state(model, params, model_state, *args, train: bool, rngs=None, **kwargs):
    """model.apply with non-param collections (BatchNorm stats); returns (outputs, new_state).

    In training the collections are mutable and come back updated; otherwise unchanged.
    """
    variables = {"params": params, **model_state}
    if train and model_state:
        outputs, new_state = model.apply(variables, *args, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
        return outputs, dict(new_state)
    return model.apply(variables, *args, train=train, rngs=rngs, **kwargs), model_state


def contrastive_image_text_loss(
    zimg: jax.Array, ztxt: jax.Array, out: dict[str, Any], opts: dict[str, Any], mesh
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured CLIP (softmax) or SigLIP (sigmoid) loss of zimg, ztxt [B, E]."""
    log_t = out["log_t"]
    if opts["impl"] == "ring":
        ring = dict(mesh=mesh, axis=opts["axis"], tile=opts["tile"])
        if opts["loss"] == "softmax":
            return distributed.sharded_softmax_contrastive(zimg, ztxt, log_t, **ring)
        return distributed.sharded_sigmoid_contrastive(zimg, ztxt, log_t, out["bias"], **ring)
    local = dict(impl=opts["impl"], tile=opts["tile"], fallback=opts["fallback"])
    if opts["loss"] == "softmax":
        return contrastive.softmax_contrastive(zimg, ztxt, log_t, **local)
    return contrastive.sigmoid_contrastive(zimg, ztxt, log_t, out["bias"], **local)


@registry.register("task", "clip")
class Clip(Task):
    """Two-tower image-text contrastive training; see the module docstring."""

    def __init__(self, config: Any, mesh):
        super().__init__(config, mesh)
        self.opts = task_options(config, "clip", DEFAULTS)
        if self.opts["loss"] not in LOSS_TYPES:
            raise ValueError(f"Unknown config.clip.loss {self.opts['loss']!r}; expected one of {LOSS_TYPES}.")
        if self.opts["impl"] not in CLIP_IMPLS:
            raise ValueError(f"Unknown config.clip.impl {self.opts['impl']!r}; expected one of {CLIP_IMPLS}.")
        if self.opts["impl"] == "ring" and self.opts["axis"] not in mesh.axis_names:
            raise ValueError(f"config.clip.axis {self.opts['axis']!r} is not a mesh axis {mesh.axis_names}.")
        kwargs = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
        if kwargs.get("loss", self.opts["loss"]) != self.opts["loss"]:
            raise ValueError(
                f"config.model.loss {kwargs['loss']!r} contradicts config.clip.loss {self.opts['loss']!r}; "
                "set only config.clip.loss."
            )
        self.model = build_model(config.model_name, {**kwargs, "loss": self.opts["loss"]})

    @staticmethod
    def _check_batch(batch: Batch, needed: tuple[str, ...]) -> None:
        missing = [k for k in needed if k not in batch]
        if missing:
            raise ValueError(
                f"clip task: batch lacks {missing} (has {sorted(batch)}); the preprocess must produce "
                "'image' and 'tokens' (e.g. class_caption/pick_caption + tokenize)."
            )

    def init(self, rng, batch: Batch):
        self._check_batch(batch, ("image", "tokens"))
        variables = self.model.init(rng, batch["image"], batch["tokens"], train=False)
        return split_variables(variables)

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del frozen, step
        self._check_batch(batch, ("image", "tokens"))
        (zimg, ztxt, out), task_state = apply_with_state(
            self.model, params, task_state, batch["image"], batch["tokens"], train=True, rngs={"dropout": rng}
        )
        loss, metrics = contrastive_image_text_loss(zimg, ztxt, out, self.opts, self.mesh)
        metrics = {**metrics, "t": out["t"]}
        if "bias" in out:
            metrics["bias"] = out["bias"]
        return loss, (metrics, task_state)

    def predict(self, params, task_state, frozen, batch):
        del frozen
        if "image" not in batch and "tokens" not in batch:
            raise ValueError(f"clip predict needs 'image' and/or 'tokens'; batch has {sorted(batch)}.")
        (zimg, ztxt, out), _ = apply_with_state(
            self.model, params, task_state, batch.get("image"), batch.get("tokens"), train=False
        )
        outputs = {}
        if zimg is not None:
            outputs.update(zimg=zimg, features=out["img_features"])
        if ztxt is not None:
            outputs.update(ztxt=ztxt, txt_features=out["txt_features"])
        return outputs
