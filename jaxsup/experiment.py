"""Experiment assembly: from a config to the task, the state and the jitted step on a mesh.

    data = data_info(config, mesh)              # what the task may know of its data
    task = build_task(config, mesh, data)       # registry task, no I/O of its own
    exp = build_experiment(config, mesh, example)  # task, optimizer, shardings, jitted step

train.py (and benchmarks/train_step.py) call these; the step maths itself is
in jaxsup.step, the objectives in jaxsup.tasks.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsup import optim, registry, sharding
from jaxsup.data.loader import pipeline
from jaxsup.data.datasets import splits
from jaxsup.microbatch import check_micro_batches
from jaxsup.step import TrainState, make_train_step
from jaxsup.tasks.base import DataInfo, Task


def data_info(config: Any, mesh: Mesh, example: dict[str, Any] | None = None) -> DataInfo:
    """The DataInfo of config.data: first train example, split sizes and ranges, eval batches."""
    batch_sharding = sharding.batch_sharding(mesh, config.batch_axes)
    return DataInfo(
        example=pipeline.example_batch(config.data) if example is None else example,
        num_examples=functools.partial(splits.num_examples, config.data),
        split_ranges=functools.partial(splits.split_ranges, config.data),
        eval_batches=lambda split: pipeline.eval_global_batches(config.data, split, config.batch_size, batch_sharding),
    )


def build_task(config: Any, mesh: Mesh, data: DataInfo | None = None) -> Task:
    """The registered task `config.task` on `mesh` (DataInfo from config.data if not given)."""
    return registry.get("task", config.task)(config, mesh, data or data_info(config, mesh))


@dataclasses.dataclass
class Experiment:
    """What train.py (and benchmarks/train_step.py) build before the loop."""

    task: Task
    init_state: Callable[[jax.Array], TrainState]  # jit it with out_shardings=state_shardings
    init_rng: jax.Array
    abstract_state: Any  # TrainState of ShapeDtypeStructs
    state_shardings: Any
    frozen: Any  # task.load_frozen(): teacher params etc., already on devices
    step_fn: Any  # jax.jit(train_step, in/out shardings, donated state): lower + compile it


def build_experiment(config: Any, mesh: Mesh, example: dict[str, Any]) -> Experiment:
    """Task, optimizer, state shardings and the jitted train step for `config` on `mesh`.

    Args:
      example: a batch of one example (arrays), for the shapes of init.
    """
    shards = sharding.num_batch_shards(mesh, config.batch_axes)
    check_micro_batches(config.batch_size, config.grad_accum_steps, shards, "grad_accum_steps")
    task = build_task(config, mesh, data_info(config, mesh, jax.tree.map(jax.device_get, example)))
    optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)

    def init_state(rng):
        params, task_state = task.init(rng, example)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), task_state)

    init_rng = jax.random.fold_in(jax.random.key(config.seed), -1 % 2**31)
    abstract_state = jax.eval_shape(init_state, init_rng)
    state_shardings = sharding.tree_shardings(abstract_state, config.partition_rules, mesh)
    frozen = task.load_frozen()
    micro_sharding = NamedSharding(mesh, PartitionSpec(None, sharding.data_axes(mesh, config.batch_axes)))
    step_fn = jax.jit(
        make_train_step(task, optimizer, schedule, config.seed, config.grad_accum_steps, micro_sharding),
        in_shardings=(state_shardings, jax.tree.map(lambda x: x.sharding, frozen),
                      sharding.batch_sharding(mesh, config.batch_axes)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    return Experiment(task, init_state, init_rng, abstract_state, state_shardings, frozen, step_fn)


def build_evaluators(config: Any, mesh: Mesh) -> dict[str, Any]:
    """name -> registered evaluator of each config.evals entry."""
    batch_sharding = sharding.batch_sharding(mesh, config.batch_axes)
    return {name: registry.get("evaluator", cfg.type)(cfg, config.data, batch_sharding)
            for name, cfg in config.evals.items()}
