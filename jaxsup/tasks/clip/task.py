"""CLIP / SigLIP image-text contrastive pretraining (task "clip").

Model: `config.model_name = "two_tower"` with `config.model` its kwargs (image
and text towers, embed_dim); the task sets the model's `loss` from
`config.clip.loss`. Batch: {"image": [B, H, W, C] float, "tokens": [B, L] int32}.

config.clip fields (defaults in jaxsup.config):
  loss: "softmax" (CLIP) | "sigmoid" (SigLIP)
  impl: "reference" | "chunked" | "pallas" | "ring" (jaxsup.losses.contrastive; "ring":
        a device ring over mesh axis `axis`)
  tile: column tile of the chunked / ring paths
  fallback: impl="pallas" on a backend it cannot run on warns and uses "chunked"
  axis: the mesh axis the ring runs over ("data")
  block_impl: "chunked" | "pallas": the per-device block math of impl="ring"
  grad_cache_micro_batches: k > 1 computes the full-batch loss GradCache-style
        (jaxsup.losses.gradcache): activations of one micro-batch of B/k at a time
  tokenizer: "" or a tokenizer ("clip", a SentencePiece model path) whose vocabulary size
        becomes the text tower's vocab_size (set text_kwargs.vocab_size to 0)
  init_from: "" | a public checkpoint "open_clip:PATH" / "big_vision:PATH" | a run's workdir:
        pretrained weights after the fresh init (tasks.common.load_pretrained: shapes checked,
        image position embeddings resampled to this model's patch grid); init_subtree: where
        this model's tree starts in it; init_select: top-level entries to load, e.g.
        ("img", "img_proj") for LiT (with config.optim.freeze=("^img",): a locked image tower)
  teacher: "" | a CLIP teacher, "FORMAT:PATH" or a run's workdir, model `teacher_model`
        (two_tower kwargs; {} -> config.model): image-text distillation (open_clip's
        DistillClipLoss / CLIP-KD), loss += kd_weight * logit KD over the batch similarity
        matrix + feature_kd_weight * embedding distance (jaxsup.losses.clip_kd); both terms
        are logged as "kd_logit" / "kd_feature" whenever a teacher is set
  contrastive_weight: with a teacher, loss = contrastive_weight * CLIP loss + the KD terms
        (MobileCLIP's (1 - lambda) * CLIP + lambda * KD: contrastive_weight = 1 - lambda,
        kd_weight = lambda)

config.reinforced=DIR (a reinforcement of CLIP teachers, replayed by the host op
`reinforce:DIR`; docs/reinforced.md): the stored teachers' embeddings of the replayed
crop and caption ("reinforced_zimg" / "reinforced_ztxt" [B, T, E]) and their stored
log_t replace the online teacher (no teacher forward); the KD terms are averaged over
the T teachers (jaxsup.tasks.clip.reinforced). Online and stored teachers are
interchangeable: on the same batch both give the same loss.

predict(batch) outputs (each only when its input is in the batch, so a batch
with only "tokens" runs only the text tower):
  "zimg" [B, E], "features" [B, D] (image tower output before projection) from "image";
  "ztxt" [B, E], "txt_features" [B, D'] from "tokens".
"""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from jaxsup import sharding
from jaxsup.data.text.tokenizer import with_tokenizer_vocab
from jaxsup.errors import ConfigError, DataError
from jaxsup.losses import clip_kd, contrastive, gradcache
from jaxsup.microbatch import check_micro_batches
from jaxsup.models.two_tower import LOSS_TYPES
from jaxsup.tasks.base import Batch, DataInfo, Task, register_task
from jaxsup.tasks.clip import reinforced
from jaxsup.tasks.common import (
    apply_with_state, build_model, check_contrastive_options, load_pretrained, split_variables,
)


def contrastive_image_text_loss(
    zimg: jax.Array, ztxt: jax.Array, out: dict[str, Any], opts: dict[str, Any], mesh
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured CLIP (softmax) or SigLIP (sigmoid) loss of zimg, ztxt [B, E]."""
    kw = dict(impl=opts["impl"], tile=opts["tile"], fallback=opts["fallback"], mesh=mesh, axis=opts["axis"],
              block_impl=opts["block_impl"])
    if opts["loss"] == "softmax":
        return contrastive.softmax_contrastive(zimg, ztxt, out["log_t"], **kw)
    return contrastive.sigmoid_contrastive(zimg, ztxt, out["log_t"], out["bias"], **kw)


@register_task("clip", section="clip")
class Clip(Task):
    """Two-tower image-text contrastive training; see the module docstring."""

    def __init__(self, config: Any, mesh, data: DataInfo):
        super().__init__(config, mesh, data)
        opts = self.cfg
        check_contrastive_options(opts, "clip", mesh)
        if opts.loss not in LOSS_TYPES:
            raise ConfigError(f"Unknown config.clip.loss {opts.loss!r}; expected one of {LOSS_TYPES}.")
        kwargs = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
        if kwargs.get("loss", opts.loss) != opts.loss:
            raise ConfigError(
                f"config.model.loss {kwargs['loss']!r} contradicts config.clip.loss {opts.loss!r}; "
                "set only config.clip.loss."
            )
        self.model = build_model(config.model_name, {**kwargs, "loss": opts.loss, **with_tokenizer_vocab(kwargs, opts.tokenizer)})
        self.teacher = self._teacher_model(kwargs) if opts.teacher else None
        self.reinforced = config.get("reinforced", "")
        self.stored_log_t = None
        if self.reinforced:
            self.stored_log_t = reinforced.check_reinforced(config, data.example, int(self.model.embed_dim))
        if float(opts.contrastive_weight) != 1.0 and self.teacher is None and not self.reinforced:
            raise ConfigError("config.clip.contrastive_weight weighs the CLIP loss against KD: it needs "
                              "config.clip.teacher or config.reinforced.")
        k = opts.grad_cache_micro_batches
        check_micro_batches(config.batch_size, k, sharding.num_batch_shards(mesh, config.batch_axes),
                            "clip.grad_cache_micro_batches")
        if k > 1 and config.grad_accum_steps > 1:
            raise ConfigError("config.clip.grad_cache_micro_batches > 1 replaces grad_accum_steps; set one of them.")
        if k > 1 and self.teacher is not None:
            raise ConfigError("config.clip.teacher (distillation) does not combine with grad_cache_micro_batches > 1.")

    def _teacher_model(self, student_kwargs: dict[str, Any]):
        """The teacher two_tower: config.clip.teacher_model kwargs, or the student's."""
        opts = self.cfg
        kwargs = opts.teacher_model.to_dict() if hasattr(opts.teacher_model, "to_dict") else dict(opts.teacher_model)
        kwargs = kwargs or student_kwargs
        return build_model(self.config.model_name, {"loss": opts.loss, **kwargs, **with_tokenizer_vocab(kwargs, opts.tokenizer)})

    def warm_start(self, params, task_state):
        if not self.cfg.init_from:
            return params, task_state
        return load_pretrained(self.cfg.init_from, params, self.cfg.init_subtree, tuple(self.cfg.init_select)), task_state

    def load_frozen(self):
        """{"teacher": params} of config.clip.teacher on its shardings (config.partition_rules), or {}."""
        if self.teacher is None:
            return {}
        example = self.data.example
        abstract = jax.eval_shape(lambda: self.teacher.init(jax.random.key(0), example["image"], example["tokens"]))
        shards = sharding.tree_shardings({"params": abstract["params"]}, self.config.partition_rules, self.mesh)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract["params"],
                              shards["params"])
        return {"teacher": load_pretrained(self.cfg.teacher, target)}

    @staticmethod
    def _check_batch(batch: Batch, needed: tuple[str, ...]) -> None:
        missing = [k for k in needed if k not in batch]
        if missing:
            raise DataError(
                f"clip task: batch lacks {missing} (has {sorted(batch)}); the preprocess must produce "
                "'image' and 'tokens' (e.g. class_caption/pick_caption + tokenize)."
            )

    def init(self, rng, batch: Batch):
        self._check_batch(batch, ("image", "tokens"))
        variables = self.model.init(rng, batch["image"], batch["tokens"], train=False)
        return split_variables(variables)

    def _grad_cache_loss(self, params, task_state, batch, rng):
        """Full-batch loss at one micro-batch's activation memory (jaxsup.losses.gradcache)."""
        if task_state:
            raise ConfigError("config.clip.grad_cache_micro_batches > 1 needs a model without BatchNorm state.")

        def embed(p, micro_batch, rng_i):
            zimg, ztxt, _ = self.model.apply(
                {"params": p}, micro_batch["image"], micro_batch["tokens"], train=True, rngs={"dropout": rng_i}
            )
            return {"zimg": zimg, "ztxt": ztxt}

        def loss_of(p, emb):
            _, _, out = self.model.apply({"params": p}, None, None)  # log_t (and bias) only
            loss, metrics = contrastive_image_text_loss(emb["zimg"], emb["ztxt"], out, self.cfg, self.mesh)
            return loss, {**metrics, **{k: out[k] for k in ("t", "bias") if k in out}}

        axes = sharding.data_axes(self.mesh, self.config.batch_axes)
        loss, metrics = gradcache.cached_contrastive_loss(
            embed, loss_of, params, {"image": batch["image"], "tokens": batch["tokens"]},
            self.cfg["grad_cache_micro_batches"], rng=rng,
            micro_batch_sharding=NamedSharding(self.mesh, PartitionSpec(None, axes)),
        )
        return loss, (metrics, task_state)

    def loss_fn(self, params, task_state, frozen, batch, rng, step):
        del step
        self._check_batch(batch, ("image", "tokens"))
        if self.cfg["grad_cache_micro_batches"] > 1:
            return self._grad_cache_loss(params, task_state, batch, rng)
        (zimg, ztxt, out), task_state = apply_with_state(
            self.model, params, task_state, batch["image"], batch["tokens"], train=True, rngs={"dropout": rng}
        )
        loss, metrics = contrastive_image_text_loss(zimg, ztxt, out, self.cfg, self.mesh)
        metrics = {**metrics, "t": out["t"]}
        teachers = self._teacher_sides(frozen, batch)
        if teachers:
            kd, kd_metrics = reinforced.kd_terms((zimg, ztxt, out["log_t"]), teachers, self.cfg)
            metrics.update(contrastive_loss=loss, **kd_metrics)
            loss = self.cfg.contrastive_weight * loss + kd
        if "bias" in out:
            metrics["bias"] = out["bias"]
        return loss, (metrics, task_state)

    def _teacher_sides(self, frozen, batch: Batch) -> list[clip_kd.Side]:
        """The teachers' (zimg [B, E], ztxt [B, E], log_t []): stored (config.reinforced), online, or none."""
        if self.reinforced:
            return reinforced.stored_sides(batch, self.stored_log_t)
        if self.teacher is None:
            return []
        t_zimg, t_ztxt, t_out = self.teacher.apply({"params": frozen["teacher"]}, batch["image"], batch["tokens"],
                                                   train=False)
        return [(t_zimg, t_ztxt, t_out["log_t"])]

    def predict(self, params, task_state, frozen, batch):
        del frozen
        if "image" not in batch and "tokens" not in batch:
            raise DataError(f"clip predict needs 'image' and/or 'tokens'; batch has {sorted(batch)}.")
        (zimg, ztxt, out), _ = apply_with_state(
            self.model, params, task_state, batch.get("image"), batch.get("tokens"), train=False
        )
        outputs = {}
        if zimg is not None:
            outputs.update(zimg=zimg, features=out["img_features"])
        if ztxt is not None:
            outputs.update(ztxt=ztxt, txt_features=out["txt_features"])
        return outputs
