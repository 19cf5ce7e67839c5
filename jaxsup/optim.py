"""Optimizers from config, built only from optax pieces.

config.optim fields: name ("adamw" | "sgd" | "lars"), lr, warmup_steps,
schedule ("cosine" | "constant"), end_lr_factor, weight_decay, b1, b2,
momentum, nesterov, clip_norm (0 disables), lars_trust_coefficient, freeze
(regexes, `re.search`ed on param paths such as "img/encoder/..."; matching
params get a zero update, no optimizer state, and are left out of the
clipping norm: LiT's locked image tower).
Weight decay (and LARS's trust ratio) skip biases, norm scales and scalars.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import optax

from jaxsup.sharding import path_str
from jaxsup.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd", "lars")
SCHEDULES = ("cosine", "constant")


def decay_mask(params: Any) -> Any:
    """True for weight matrices/kernels (ndim >= 2), False for biases, norms, scalars."""

    def is_decayed(path, leaf) -> bool:
        name = path_str(path).lower()
        return leaf.ndim >= 2 and "norm" not in name and "bias" not in name

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to lr*end_lr_factor (or constant)."""
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"Unknown config.optim.schedule {cfg.schedule!r}; expected one of {SCHEDULES}.")
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup]
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.end_lr_factor,
    )


def make_optimizer(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, lr schedule) for config.optim."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"Unknown config.optim.name {cfg.name!r}; expected one of {OPTIMIZERS}.")
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
    elif cfg.name == "sgd":
        opt = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    else:
        opt = optax.lars(
            schedule,
            weight_decay=cfg.weight_decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=cfg.lars_trust_coefficient,
            trust_ratio_mask=decay_mask,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
        )
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    freeze = tuple(cfg.get("freeze", ()))
    if freeze:
        opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()},
                                    lambda params: frozen_labels(params, freeze))
    return opt, schedule


def frozen_labels(params: Any, patterns: tuple[str, ...]) -> Any:
    """"frozen" for each param whose path matches one of `patterns`, else "train"; ConfigError if none matches."""
    regexes = [re.compile(p) for p in patterns]
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if any(r.search(path_str(path)) for r in regexes) else "train", params)
    if "frozen" not in jax.tree.leaves(labels):
        raise ConfigError(f"config.optim.freeze={patterns} matches no parameter (paths look like "
                          f"{[path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:3]}).")
    return labels
