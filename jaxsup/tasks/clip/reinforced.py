"""The CLIP task's stored teachers: checks of config.reinforced and the teachers' sides of the KD.

A reinforcement of CLIP teachers (`python -m jaxsup.data.reinforce --captions ...`, docs/reinforced.md)
replayed by the host op `reinforce:DIR` delivers per example "reinforced_zimg" [T, E] (the T
teachers' unit image embeddings of the replayed crop) and "reinforced_ztxt" [T, E] (of the
caption the op picked, tokenized by the student's own `tokenize` op); each teacher's log logit
scale is in DIR/reinforce.json. The KD terms are those of an online teacher (jaxsup.losses.clip_kd),
averaged over the T teachers.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup.data.host import reinforce_store
from jaxsup.errors import ConfigError
from jaxsup.losses import clip_kd

TARGETS = reinforce_store.CLIP_TARGETS


def check_reinforced(config: Any, example: dict[str, Any], embed_dim: int) -> jax.Array:
    """The stored teachers' log_t [T] f32; ConfigError naming what config.reinforced needs that the config lacks."""
    opts, directory = config.clip, config.reinforced
    info = reinforce_store.check_replayed(config.data.preprocess, directory)
    if info.get("kind") != "clip":
        raise ConfigError(f"config.reinforced={directory!r} stores {info.get('kind')!r} teacher targets, not CLIP "
                          "embeddings: train it with task 'distill'.")
    missing = [k for k in TARGETS if k not in example]
    if missing:
        raise ConfigError(f"config.reinforced: the train batches lack {missing}: list them in the 'keep:' op.")
    if opts.teacher:
        raise ConfigError(f"config.reinforced={directory!r} and config.clip.teacher={opts.teacher!r} are both set: "
                          "the stored teachers replace the online one; set one of them.")
    if opts.grad_cache_micro_batches > 1:
        raise ConfigError("config.reinforced (distillation) does not combine with clip.grad_cache_micro_batches > 1.")
    if not (opts.kd_weight or opts.feature_kd_weight):
        raise ConfigError("config.reinforced needs clip.kd_weight or clip.feature_kd_weight > 0 "
                          "(both are 0: the stored embeddings would be unused).")
    stored_dim = int(example["reinforced_zimg"].shape[-1])
    if opts.feature_kd_weight and stored_dim != embed_dim:
        raise ConfigError(f"clip.feature_kd_weight > 0 needs the student's embed_dim ({embed_dim}) to equal the "
                          f"stored teachers' ({stored_dim}).")
    return jnp.asarray([s["log_t"] for s in info["teacher_scales"]], jnp.float32)


def stored_sides(batch: dict[str, jax.Array], log_t: jax.Array) -> list[clip_kd.Side]:
    """One (zimg [B, E], ztxt [B, E], log_t []) per stored teacher, from the batch's [B, T, E] targets."""
    zimg, ztxt = batch["reinforced_zimg"], batch["reinforced_ztxt"]
    return [(zimg[:, t], ztxt[:, t], log_t[t]) for t in range(zimg.shape[1])]


def kd_terms(student: clip_kd.Side, teachers: list[clip_kd.Side], opts: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """kd_weight x logit KD (+ feature_kd_weight x feature KD), each the mean over the teachers; (loss, metrics)."""
    metrics = {"kd_logit": sum(clip_kd.logit_kd(student, t) for t in teachers) / len(teachers)}
    loss = opts.kd_weight * metrics["kd_logit"]
    if opts.feature_kd_weight or student[0].shape[-1] == teachers[0][0].shape[-1]:
        metrics["kd_feature"] = sum(clip_kd.feature_kd(student, t) for t in teachers) / len(teachers)
        loss = loss + opts.feature_kd_weight * metrics["kd_feature"]
    return loss, metrics
