"""Fields every experiment config has, with their defaults.

Experiment files in configs/ start from `base_config()` and set what differs;
`--config.key=value` overrides any field, and a misspelt key is an error
(configs are locked by the entry point).
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every generic field with its default (experiment files start from this)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "supervised"  # registry name (jaxsup/tasks)
    c.model_name = "cnn"  # registry name (jaxsup/models)
    c.model = ml_collections.ConfigDict()  # kwargs of the model

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # a local registered dataset or a TFDS name
    c.data.data_dir = ""  # TFDS root; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = "train"
    c.data.preprocess = ("image_to_float", "label_to_int32", "keep:image,label")
    c.data.eval_preprocess = ()  # () -> same as preprocess
    c.data.prefetch = 4

    c.batch_size = 128  # global, over all processes and devices
    c.total_steps = 1000

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | sgd | lars
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"  # cosine | constant
    c.optim.warmup_steps = 100
    c.optim.end_lr_factor = 0.0
    c.optim.weight_decay = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.clip_norm = 1.0  # 0 disables global-norm clipping
    c.optim.lars_trust_coefficient = 0.001

    # Mesh axes: -1 takes the remaining devices.
    c.mesh = (("data", -1), ("model", 1))
    c.batch_axes = ("data",)
    # (regex on "params/..."/"opt_state/..." paths, tactic); unmatched -> replicated.
    c.partition_rules = ((".*", "replicate"),)

    c.log_every = 50
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    c.checkpoint.async_save = True

    # name -> ConfigDict(type=<registered evaluator>, split, every, batch_size, ...)
    c.evals = ml_collections.ConfigDict()
    c.nan_policy = "stop"

    # Scale and performance.
    c.grad_accum_steps = 1  # micro-batches per step (must divide the per-device batch)
    c.profile_steps = ()  # e.g. (10, 12): jax.profiler trace of steps 10..12 into workdir/profile
    c.peak_flops_per_device = 0.0  # for MFU; 0 -> table in jaxsup/metrics.py (none on CPU)  # stop: raise naming the metrics | skip: drop the update, count it
    return c


def load_config(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """Loads "configs/x.py[:arg]" like the command line does, applies overrides, locks it.

    Args:
      spec: path to a config file, optionally followed by ":arg".
      overrides: {"optim.lr": 0.1, ...}; a key the config lacks raises.
    """
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"jaxsup_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.lock()
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        target = config
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return config


def shrink_for_runlocal(config: ml_collections.ConfigDict, steps: int = 20) -> ml_collections.ConfigDict:
    """The `runlocal` switch of the digits configs: a smoke run of `steps` steps that
    logs, evaluates and checkpoints along the way."""
    config.total_steps = steps
    config.log_every = max(steps // 4, 1)
    config.checkpoint.every = max(steps // 2, 1)
    for ev in config.evals.values():
        ev.every = max(steps // 2, 1)
    return config
