"""Task "distill" with config.reinforced=DIR: the config check and the fused-head loss on stored targets.

The batch carries the stored teacher's top-k targets (`reinforced_logits` [B, k],
`reinforced_indices` [B, k], `reinforced_lse_rest` [B]); there is no teacher model.
With distill.fused_head=True the sparse top-k loss comes from the student's
features and head weights (`jaxsup.losses.topk_kd_fused`: V column tiles, no
[B, V] logits) and equals the unfused `topk_kd_kl` / `topk_soft_ce` of the logits.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
from jax.sharding import PartitionSpec as P

from jaxsup import sharding
from jaxsup.data.host import reinforce_store
from jaxsup.errors import ConfigError
from jaxsup.losses.topk_kd_fused import label_ce_rows, topk_kd_fused_rows
from jaxsup.tasks.common import masked_mean

TARGET_KEYS = reinforce_store.CLASSIFIER_TARGETS


def check_reinforced(config: Any, example: dict, num_classes: int) -> dict[str, Any]:
    """The stored teacher's info; ConfigError naming what config.reinforced needs that the config lacks."""
    cfg, directory = config.distill, config.reinforced
    info = reinforce_store.check_replayed(config.data.preprocess, directory)
    if info.get("kind", "classifier") != "classifier":
        raise ConfigError(f"config.reinforced={directory!r} stores {info['kind']!r} teacher embeddings, not "
                          "classifier logits: train it with task 'clip'.")
    missing = [k for k in TARGET_KEYS if k not in example]
    if missing:
        raise ConfigError(f"config.reinforced: the train batches lack {missing}: list them in the 'keep:' op.")
    if cfg.kind not in ("kl", "soft_ce") or float(cfg.nd_lambda) > 0 or cfg.augment != "none":
        raise ConfigError("config.reinforced needs distill.kind 'kl' or 'soft_ce', augment='none' and "
                          f"nd_lambda=0; got {cfg.kind!r}, {cfg.augment!r}, {cfg.nd_lambda}.")
    if cfg.fused_head and cfg.fused_teacher == "features":
        raise ConfigError("config.reinforced with distill.fused_head=True needs distill.fused_teacher='logits', "
                          "not 'features': there is no teacher model, only its stored top-k logits.")
    if info["num_classes"] != num_classes:
        raise ConfigError(f"The stored teacher at {directory!r} has {info['num_classes']} classes, the student "
                          f"{num_classes}.")
    if info["topk"] < info["num_classes"] and float(info["temperature"]) != float(cfg.temperature):
        raise ConfigError(f"distill.temperature={cfg.temperature} but {directory!r} stores the rest at "
                          f"T = {info['temperature']} (rerun the reinforcement with --temperature).")
    return info


class FusedRows(NamedTuple):
    """Per-row results [B] of `fused_rows`: KD rows, label CE rows (None without labels), student top-1."""

    kd: jax.Array
    ce: jax.Array | None
    student_top1: jax.Array


def fused_rows(h: jax.Array, w: jax.Array, batch: dict, labels: jax.Array | None, *, kind: str,
               temperature: float) -> FusedRows:
    """Sparse top-k KD rows of `h @ w` against the batch's stored targets (kind "kl": T^2 KL, "soft_ce")
    and, given labels [B] int, the T = 1 label CE rows; h [B, D], w [D, V]. No [B, V] logits."""
    targets = [batch[k] for k in TARGET_KEYS]
    kd, top1 = topk_kd_fused_rows(h, w, *targets, temperature, kind=kind)
    return FusedRows(kd, None if labels is None else label_ce_rows(h, w, labels), top1)


def fused_rows_per_shard(mesh, batch_axes, h: jax.Array, w: jax.Array, batch: dict, labels: jax.Array | None,
                         **kw: Any) -> FusedRows:
    """`fused_rows`; on a mesh that splits the batch, per batch shard (shard_map over the data axes:
    rows stay sharded, W replicated and its gradient summed by the transpose), so each device scans
    the head's tiles for its own rows only instead of GSPMD gathering the batch."""
    targets = {k: batch[k] for k in TARGET_KEYS}
    if sharding.num_batch_shards(mesh, batch_axes) == 1:
        return fused_rows(h, w, targets, labels, **kw)

    def per_shard(h, w, targets, *label):
        rows = fused_rows(h, w, targets, label[0] if label else None, **kw)
        return tuple(r for r in rows if r is not None)

    rows_spec = P(sharding.data_axes(mesh, batch_axes))
    args = (h, w, targets) + (() if labels is None else (labels,))
    in_specs = (rows_spec, P(), {k: rows_spec for k in TARGET_KEYS}) + (rows_spec,) * (len(args) - 3)
    out = jax.shard_map(per_shard, mesh=mesh, in_specs=in_specs, out_specs=(rows_spec,) * (len(args) - 1),
                        check_vma=False)(*args)
    return FusedRows(out[0], out[1] if labels is not None else None, out[-1])


def stored_teacher_top1(batch: dict) -> jax.Array:
    """[B] int: the stored teacher's top-1 class (its first kept index; the store keeps them in order)."""
    return batch["reinforced_indices"][:, 0]


def weighted_loss(rows: FusedRows, mask: jax.Array | None, alpha: float) -> jax.Array:
    """alpha mean(KD rows) + (1 - alpha) CE rows' mean over mask [B] (the unfused path's total)."""
    loss = alpha * rows.kd.mean()
    if rows.ce is not None:
        loss = loss + (1.0 - alpha) * masked_mean(rows.ce, mask)
    return loss
