"""The one entry point: train, evaluate, write metrics, checkpoint, resume.

    python -m jaxsup.train --config configs/supervised_digits.py[:arg] \
        --workdir DIR [--config.key=value ...]

Reads top to bottom as the path of the data: setup -> mesh -> data -> model
and task -> state -> restore -> jitted step -> loop (log, eval, checkpoint).
Resume is exact: the data order and every RNG derive from (seed, step).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxsup import checkpoint, distributed, metrics as metrics_lib, optim, registry, sharding
from jaxsup.data import pipeline, preprocess, sources

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs; resumes from it.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for the multi-process coordinator.")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any
    opt_state: Any
    task_state: Any  # checkpointed, no gradients (BN stats, EMA teacher, buffers)


NAN_POLICIES = ("stop", "skip")


def tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_train_step(task, optimizer: optax.GradientTransformation, schedule: optax.Schedule, seed: int):
    """step(state, frozen, batch) -> (state, metrics); a non-finite step changes nothing."""

    def train_step(state: TrainState, frozen: Any, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_of(params):
            return task.loss_fn(params, state.task_state, frozen, batch, rng, state.step)

        (loss, (task_metrics, task_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
        new_state = TrainState(state.step + 1, *tree_where(finite, (params, opt_state, task_state),
                                                           (state.params, state.opt_state, state.task_state)))
        out = {f"train/{k}": v for k, v in task_metrics.items()}
        out.update({"train/loss": loss, "train/grad_norm": grad_norm, "train/update_norm": update_norm, "train/lr": schedule(state.step),
                    "train/nonfinite": 1.0 - finite.astype(jnp.float32)})
        return new_state, out

    return train_step


def nonfinite_names(metrics: dict[str, float]) -> list[str]:
    return [k for k, v in metrics.items() if not np.isfinite(v)]


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs config.total_steps (resuming from workdir); returns the last metrics."""
    # ------------------------------------------------------------------ setup
    workdir = os.path.abspath(workdir)
    _write_config(config, workdir)
    writer = metrics_lib.MetricWriter(workdir, config.total_steps)
    log.info("Devices: %d (%s), processes: %d", jax.device_count(), jax.default_backend(), jax.process_count())

    if config.nan_policy not in NAN_POLICIES:
        raise ValueError(f"config.nan_policy={config.nan_policy!r}; expected one of {NAN_POLICIES}.")

    # ------------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(config.batch_size, mesh, config.batch_axes)
    batch_sharding = sharding.batch_sharding(mesh, config.batch_axes)

    # ------------------------------------------------------------------- data
    train_source = sources.open_source(config.data.name, config.data.train_split, config.data.data_dir or None)
    train_data = pipeline.train_dataset(
        train_source, preprocess.build(config.data.preprocess), config.batch_size, config.seed
    )

    # ----------------------------------------------------------- model + task
    task = registry.get("task", config.task)(config, mesh)
    optimizer, schedule = optim.make_optimizer(config.optim, config.total_steps)
    evaluators = {
        name: registry.get("evaluator", cfg.type)(cfg, config.data, batch_sharding)
        for name, cfg in config.evals.items()
    }

    # ------------------------------------------------------------------ state
    example = jax.tree.map(lambda x: jnp.asarray(x[:1]), train_data[0])

    def init_state(rng):
        params, task_state = task.init(rng, example)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), task_state)

    init_rng = jax.random.fold_in(jax.random.key(config.seed), -1 % 2**31)
    abstract_state = jax.eval_shape(init_state, init_rng)
    state_shardings = sharding.tree_shardings(abstract_state, config.partition_rules, mesh)
    frozen = task.load_frozen()
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)

    # ---------------------------------------------------------------- restore
    ckpt = checkpoint.Checkpointer(
        workdir, every=config.checkpoint.every, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(checkpoint.abstract_tree(abstract_state, state_shardings))
        log.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
    else:
        state = jax.jit(init_state, out_shardings=state_shardings)(init_rng)
    start_step = int(state.step)

    # ------------------------------------------------------------ jitted step
    train_step = jax.jit(
        make_train_step(task, optimizer, schedule, config.seed),
        in_shardings=(state_shardings, frozen_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    predict = jax.jit(task.predict)

    def run_evals(step: int) -> dict[str, float]:
        results = {}
        for name, ev in evaluators.items():
            fn = lambda batch: predict(state.params, state.task_state, frozen, batch)  # noqa: E731
            results.update({f"{name}/{k}": v for k, v in ev.evaluate(fn).items()})
        writer.write(step, results)
        log.info("eval step %d: %s", step, json.dumps(results))
        return results

    def save(step: int) -> None:
        ckpt.save(step, state, {"step": step, "seed": config.seed, "config": config.to_json_best_effort()})

    # ------------------------------------------------------------------- loop
    ckpt.install_sigterm_handler()
    timer = metrics_lib.StepTimer(config.batch_size)
    last: dict[str, float] = {}
    skipped = 0
    batches = pipeline.train_iterator(train_data, start_step, prefetch=config.data.prefetch)
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = pipeline.to_global(next(batches), batch_sharding)
            state, step_metrics = train_step(state, frozen, batch)
            if float(step_metrics["train/nonfinite"]):
                bad = nonfinite_names(metrics_lib.to_floats(step_metrics))
                if config.nan_policy == "stop":
                    raise FloatingPointError(
                        f"Non-finite {bad} at step {step}; the update was not applied and no checkpoint "
                        f"was written for it (last saved step: {ckpt.latest_step()})."
                    )
                skipped += 1
                log.warning("Step %d: non-finite %s, update skipped (%d so far).", step, bad, skipped)
            if step % config.log_every == 0 or step == config.total_steps:
                last = {**metrics_lib.to_floats(step_metrics), **timer.lap(step), "train/skipped_steps": skipped}
                writer.write(step, last)
                writer.progress(step, {k: v for k, v in last.items() if k in ("train/loss", "perf/steps_per_s")})
            if any(ev_cfg.every and step % ev_cfg.every == 0 for ev_cfg in config.evals.values()) or step == config.total_steps:
                last.update(run_evals(step))
            preempted = distributed.any_process(ckpt.preempted)
            if ckpt.should_save(step, config.total_steps) or preempted:
                save(step)
            if preempted:
                log.warning("SIGTERM: saved step %d, exiting.", step)
                break
        if start_step >= config.total_steps:
            last.update(run_evals(start_step))
    finally:
        ckpt.close()
        writer.close()
    return last


def setup_logging() -> None:
    """jaxsup's own messages at INFO; the libraries' (Orbax, absl) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s jaxsup %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv) -> None:
    del argv
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    if FLAGS.config is None:
        raise app.UsageError("--config is required (e.g. configs/supervised_digits.py).")
    setup_logging()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.init_timeout)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, FloatingPointError,
               distributed.DistributedInitError)


def run() -> None:
    """app.run(main), printing a user error (bad config, data, checkpoint) as one line."""
    try:
        app.run(main)
    except USER_ERRORS as err:
        if os.environ.get("JAXSUP_TRACEBACK"):
            raise
        message = str(err).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
        raise SystemExit(f"jaxsup: error: {type(err).__name__}: {message}\n(set JAXSUP_TRACEBACK=1 for the traceback)")


if __name__ == "__main__":
    run()
