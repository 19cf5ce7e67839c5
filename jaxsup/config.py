"""The common module of experiment configs: generic fields, task sections, switches.

Every `configs/*.py` imports only `ml_collections` and this module (no JAX,
no task modules), and has `get_config(arg=None)`:

  - `base_config(task)` gives every generic field with its default plus the
    sections the task reads (`TASK_SECTIONS`), each with its defaults. A task's
    sections are declared next to its code, in `jaxsup/tasks/<task>/section.py`
    (fields, defaults, one-line docs, valid ranges; no JAX).
  - `derive(__file__, "other.py", arg)` loads a sibling config to build on
    (the one way to derive one config from another); `set_task(c, task)`
    switches a derived config to another task, adding that task's sections.
  - `parse_switches(arg, known)` reads "a,b,key=value" switches; a misspelt
    switch is a ConfigError listing the known ones.

`--config.key=value` overrides any field; a misspelt key is an error (configs
are locked by the entry point and by `load_config`).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from jaxsup import config_fields, config_ranges
from jaxsup.config_fields import teacher_spec  # noqa: F401 (configs and scripts import it from here)
from jaxsup.errors import ConfigError
from jaxsup.tasks.sections import DECLARATIONS

ConfigDict = ml_collections.ConfigDict
# The task sections: each task's `section.py` declares the sections it owns and those it reads.
TASK_SECTIONS: dict[str, tuple[str, ...]] = {task: d.reads for task, d in DECLARATIONS.items()}
SECTIONS: dict[str, Any] = {name: fields for d in DECLARATIONS.values() for name, fields in d.sections.items()}


def section(name: str) -> ConfigDict:
    """A fresh copy of one task section with its defaults."""
    if name not in SECTIONS:
        raise ConfigError(f"Unknown config section {name!r}; known: {sorted(SECTIONS)}.")
    return ConfigDict(config_fields.defaults(SECTIONS[name]))


def value_ranges() -> dict[str, config_ranges.Range]:
    """Every declared range: the generic fields' (config_ranges.RANGES) and each task section's."""
    out = dict(config_ranges.RANGES)
    for name, fields in SECTIONS.items():
        out.update(config_fields.ranges(name, fields))
    return out


def check_values(config: ConfigDict) -> None:
    """ConfigError naming key, value and range for the first value outside its declared range."""
    config_ranges.check_ranges(config, value_ranges())


def check_section_values(config: ConfigDict) -> None:
    """check_values for the sections config.task reads only (what a task checks when it is built)."""
    ranges = {key: valid for name in TASK_SECTIONS.get(config.task, ()) if name in config
              for key, valid in config_fields.ranges(name, SECTIONS[name]).items()}
    config_ranges.check_ranges(config, ranges)


def field_docs() -> dict[str, str]:
    """{"section.field": one-line doc} of every task section."""
    out: dict[str, str] = {}
    for name, fields in SECTIONS.items():
        out.update(config_fields.docs(name, fields))
    return out


def base_config(task: str = "supervised") -> ConfigDict:
    """Every generic field with its default, plus the sections `task` reads."""
    c = ConfigDict()
    c.seed = 0
    c.task = task  # registry name (jaxsup/tasks)
    c.model_name = "cnn"  # registry name (jaxsup/models)
    c.model = ConfigDict()  # kwargs of the model

    c.data = ConfigDict()
    c.data.name = "digits"  # a local registered dataset or a TFDS name
    c.data.data_dir = ""  # TFDS root; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.path = ""  # a dataset written by `python -m jaxsup.data.convert` (read instead of the TFDS name)
    c.data.train_split = "train"
    c.data.batch_guide = ""  # .npz of pseudo-classes: no two of one class in a batch (data/guided_batches.py)
    c.data.preprocess = ("image_to_float", "label_to_int32", "keep:image,label")
    c.data.eval_preprocess = ()  # () -> same as preprocess
    c.data.prefetch = 4
    c.data.workers = 2  # threads preparing batches (jaxsup/data/loader/pipeline.py; measured best on 2 cores)
    c.data.worker_processes = 0  # grain worker processes on top (many-core hosts: sidesteps the GIL)
    # a reinforcement (python -m jaxsup.data.reinforce): stored teacher targets replace the teacher forward
    c.reinforced = ""

    c.batch_size = 128  # global, over all processes and devices
    c.total_steps = 1000

    c.optim = ConfigDict(dict(
        name="adamw",  # adamw | sgd | lars
        lr=1e-3, schedule="cosine",  # cosine | constant
        warmup_steps=100, end_lr_factor=0.0, weight_decay=1e-4, b1=0.9, b2=0.999,
        momentum=0.9, nesterov=False,
        clip_norm=1.0,  # 0 disables global-norm clipping
        freeze=(),  # regexes (re.search) on param paths ("img/..."): those get no update (LiT's locked tower)
        lars_trust_coefficient=0.001,
    ))

    # Mesh axes: -1 takes the remaining devices.
    c.mesh = (("data", -1), ("model", 1))
    c.batch_axes = ("data",)
    # ((regex on "params/..."/"opt_state/..." paths, tactic), ...); unmatched -> replicated;
    # preset names expand in place: ("fsdp",), ("fsdp_tp",), ("data_parallel",) (jaxsup/sharding_rules.py).
    c.partition_rules = ((".*", "replicate"),)

    c.log_every = 50
    # keep >= 1; strict: an unreadable newest checkpoint stops the run instead of resuming from the one before.
    c.checkpoint = ConfigDict(dict(every=500, keep=2, async_save=True, strict=False))

    # name -> ConfigDict(type=<registered evaluator>, split, every, batch_size, ...)
    c.evals = ConfigDict()
    c.nan_policy = "stop"  # stop: raise naming the metrics | skip: drop the update, count it
    c.max_consecutive_skips = 5  # nan_policy=skip: more non-finite steps in a row than this stop the run

    # Scale and performance.
    c.grad_accum_steps = 1  # micro-batches per step (must divide the per-device batch)
    c.profile_steps = ()  # e.g. (10, 12): jax.profiler trace of steps 10..12 into workdir/profile
    c.peak_flops_per_device = 0.0  # for MFU; 0 -> table in jaxsup/metrics.py (none on CPU)
    return set_task(c, task)


def set_task(config: ConfigDict, task: str) -> ConfigDict:
    """Sets config.task and adds the sections that task reads (with defaults) if missing."""
    if task not in TASK_SECTIONS:
        raise ConfigError(f"Unknown task {task!r}; known: {sorted(TASK_SECTIONS)}.")
    config.task = task
    for name in TASK_SECTIONS[task]:
        if name not in config:
            config[name] = section(name)
    return config


def parse_switches(arg: str | None, known: Sequence[str], valued: Sequence[str] = ()) -> dict[str, Any]:
    """"a,b,key=value" -> {"a": True, "b": True, "key": "value"}.

    Args:
      known: switches without a value; valued: switches written key=value.
    Raises ConfigError naming a switch that is not known, listing the known ones.
    """
    out: dict[str, Any] = {}
    for item in (arg or "").split(","):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if (eq and key not in valued) or (not eq and key not in known):
            listed = [*known, *(f"{v}=..." for v in valued)]
            raise ConfigError(f"Unknown config switch {item!r}; known switches: {listed}.")
        out[key] = value if eq else True
    return out


def _load(path: str, arg: str | None) -> ConfigDict:
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"jaxsup_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def derive(here: str, sibling: str, arg: str | None = None) -> ConfigDict:
    """The config `sibling` (a file next to `here`, usually __file__) with `arg`, to build on."""
    return _load(os.path.join(os.path.dirname(os.path.abspath(here)), sibling), arg)


def apply_overrides(config: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
    """Sets dotted keys ({"optim.lr": 0.1}); a key the config lacks is a ConfigError naming it."""
    for key, value in overrides.items():
        if not has_key(config, key):
            raise ConfigError(f"unknown config key {key!r}: {closest_keys(config, key)}")
        *parents, leaf = key.split(".")
        target = config
        for name in parents:
            target = target[name]
        setattr(target, leaf, value)
    return config


def has_key(config: ConfigDict, key: str) -> bool:
    """True if the dotted key ("optim.lr") names a field of the config."""
    node: Any = config
    for name in key.split("."):
        if not isinstance(node, ConfigDict) or name not in node:
            return False
        node = node[name]
    return True


def closest_keys(config: ConfigDict, key: str) -> str:
    """A hint for an unknown dotted key: the fields of its deepest existing parent."""
    node: Any = config
    path: list[str] = []
    for name in key.split(".")[:-1]:
        if not isinstance(node, ConfigDict) or name not in node:
            break
        node, path = node[name], [*path, name]
    where = "config." + ".".join(path) if path else "the config"
    fields = sorted(node.keys()) if isinstance(node, ConfigDict) else []
    return f"{where} has fields {fields}"


def load_config(spec: str, overrides: dict[str, Any] | None = None) -> ConfigDict:
    """Loads "configs/x.py[:arg]" like the command line does, locks it, applies overrides."""
    path, _, arg = spec.partition(":")
    config = _load(path, arg)
    config.lock()
    return apply_overrides(config, overrides or {})


def digits_schedule(config: ConfigDict, *, batch_size: int, lr: float, save_every: int, steps: int = 600,
                    eval_type: str = "distill") -> ConfigDict:
    """The short digits runs' schedule: `steps` steps (50 warmup), a log line every 50, a
    checkpoint and an `eval_type` evaluation of the 360 test digits every `save_every` steps."""
    config.batch_size = batch_size
    config.total_steps = steps
    config.optim.lr = lr
    config.optim.warmup_steps = 50
    config.log_every = 50
    config.checkpoint.every = save_every
    config.evals = dict(test=dict(type=eval_type, split="test", every=save_every, batch_size=360))
    return config


def shrink_for_runlocal(config: ConfigDict, steps: int = 20) -> ConfigDict:
    """The `runlocal` switch: a smoke run of `steps` steps that logs, evaluates and checkpoints."""
    config.total_steps = steps
    config.log_every = max(steps // 4, 1)
    config.checkpoint.every = max(steps // 2, 1)
    for ev in config.evals.values():
        ev.every = max(steps // 2, 1)
    return config
