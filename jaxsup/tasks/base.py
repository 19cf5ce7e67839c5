"""The Task interface: one training objective, chosen by `config.task`.

A task owns its model(s) and turns a batch into a loss. train.py never
branches on the method: it calls only these methods.

  Task(config, mesh, data)         data: DataInfo (below); a task does no I/O of its own
  init(rng, batch)                 -> (params, task_state)
  warm_start(params, task_state)   -> (params, task_state) after a fresh init, never on
                                      resume (e.g. pretrained weights onto their shardings)
  load_frozen()                    -> frozen pytree (e.g. teacher params), {} if none
  loss_fn(params, task_state, frozen, batch, rng, step)
                                   -> (loss, (metrics, new_task_state))
  predict(params, task_state, frozen, batch) -> dict of outputs for evaluators

`task_state` is checkpointed with the params but gets no gradients (BatchNorm
statistics, EMA teachers, per-example buffers). `frozen` is restored at
start-up and never saved or updated. A task's config fields live in the
sections its `section.py` declares (`jaxsup.config.TASK_SECTIONS`), with defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
from jax.sharding import Mesh

from jaxsup import config as config_lib, registry
from jaxsup.errors import ConfigError

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a task may know of its data, handed in by the experiment assembly.

    example: the first preprocessed train example as a batch of one (NumPy, for shapes).
    num_examples(split): number of examples in a split of config.data.
    split_ranges(split): [(base split, start, stop)] absolute example ranges of a split string.
    eval_batches(split): global, sharded, padded batches of a split (with "mask" [B]),
        for one pass at start-up (e.g. teacher class means).
    """

    example: dict[str, Any]
    num_examples: Callable[[str], int]
    split_ranges: Callable[[str], list[tuple[str, int, int]]]
    eval_batches: Callable[[str], Iterator[Batch]]


class Task:
    """Base class: subclasses set up models in __init__ and implement the methods.

    SECTION (set by `register_task`) names the task's own config section, declared in its
    section.py; it is bound to `self.cfg` after its declared ranges are checked.
    """

    SECTION = ""

    def __init__(self, config: Any, mesh: Mesh, data: DataInfo):
        self.config = config
        self.mesh = mesh
        self.data = data
        check_sections(config)
        config_lib.check_section_values(config)  # the ranges its section.py declares
        self.cfg = config[self.SECTION] if self.SECTION else None
        self.check_section(self.cfg)

    @staticmethod
    def check_section(cfg: Any) -> None:
        """ConfigError naming a bad field of the task's own section (set by `register_task(check=)`)."""

    def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
        raise NotImplementedError

    def warm_start(self, params: Any, task_state: Any) -> tuple[Any, Any]:
        return params, task_state

    def load_frozen(self) -> Any:
        return {}

    def loss_fn(self, params, task_state, frozen, batch: Batch, rng: jax.Array, step: jax.Array):
        raise NotImplementedError

    def predict(self, params, task_state, frozen, batch: Batch) -> dict[str, jax.Array]:
        raise NotImplementedError


def register_task(name: str, section: str = "", check: Callable[[Any], None] | None = None) -> Callable[[type], type]:
    """Registers a Task subclass as task `name`; its own config `section` is bound to self.cfg and
    `check(self.cfg)` (ConfigError naming a bad field beyond the declared ranges) runs when it is built."""
    def wrap(cls: type) -> type:
        cls.SECTION = section
        if check is not None:
            cls.check_section = staticmethod(check)
        return registry.register("task", name)(cls)

    return wrap


def check_sections(config: Any) -> None:
    """Raises ConfigError if the config lacks a section its task reads (config.base_config(task) adds them)."""
    missing = [s for s in config_lib.TASK_SECTIONS.get(config.task, ()) if s not in config]
    if missing:
        raise ConfigError(
            f"config.task={config.task!r} reads config.{missing[0]}, which the config lacks: start the "
            f"config from jaxsup.config.base_config({config.task!r})."
        )
