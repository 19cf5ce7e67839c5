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
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxsup import checkpoint, cli, distributed, experiment, metrics as metrics_lib, plot, sharding
from jaxsup.data import pipeline, preprocess, splits
from jaxsup.errors import ConfigError, NonFiniteError

log = logging.getLogger("jaxsup")
FLAGS = flags.FLAGS
NAN_POLICIES = ("stop", "skip")


def define_flags() -> None:
    """The command line of `python -m jaxsup.train` (defined only when run as a program)."""
    cli.define_config_flags("Directory for checkpoints, metrics and logs; resumes from it.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
    flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for the multi-process coordinator.")
    flags.DEFINE_integer("heartbeat_timeout", None, "Seconds without a heartbeat after which a peer process "
                         "counts as dead and the run stops (default: env JAXSUP_HEARTBEAT_TIMEOUT, else 100).")


def example_global(example: dict, batch_sharding, config) -> dict:
    """A zero global batch shaped like the train batches (to compile when no step is left)."""
    shape = lambda x: jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), x.dtype, sharding=batch_sharding)  # noqa: E731
    return jax.tree.map(shape, example)


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
        raise ConfigError(f"config.nan_policy={config.nan_policy!r}; expected one of {NAN_POLICIES}.")

    # ------------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(config.batch_size, mesh, config.batch_axes)
    batch_sharding = sharding.batch_sharding(mesh, config.batch_axes)

    # ------------------------------------------------------------------- data
    train_source = splits.open_split(config.data, config.data.train_split)
    train_data = pipeline.train_dataset(
        train_source, preprocess.build(config.data.preprocess), config.batch_size, config.seed
    )

    # ----------------------------------------------------------- model + task
    example = jax.tree.map(lambda x: jnp.asarray(x[:1]), train_data[0])
    setup = experiment.build_experiment(config, mesh, example)
    task, frozen = setup.task, setup.frozen
    evaluators = experiment.build_evaluators(config, mesh)

    # ------------------------------------------------------- state / restore
    ckpt = checkpoint.Checkpointer(
        workdir, every=config.checkpoint.every, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(checkpoint.abstract_tree(setup.abstract_state, setup.state_shardings))
        checkpoint.check_same_run(meta, config, ckpt.directory)
        log.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
    else:
        state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(setup.init_rng)
        state = state.replace(**dict(zip(("params", "task_state"), task.warm_start(state.params, state.task_state))))
    start_step = int(state.step)

    # ------------------------------------------------------------ jitted step
    batches = pipeline.train_iterator(train_data, start_step, prefetch=config.data.prefetch)
    first_batch = pipeline.to_global(next(batches), batch_sharding) if start_step < config.total_steps else None
    compile_start = time.perf_counter()
    train_step = setup.step_fn.lower(state, frozen, first_batch or example_global(example, batch_sharding, config)).compile()
    perf = {"perf/compile_s": time.perf_counter() - compile_start, **{
        f"perf/{k}": v for k, v in metrics_lib.compiled_stats(train_step).items()}}
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, config.peak_flops_per_device)
    log.info("Train step compiled: %s", json.dumps(perf))
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
    profiler = metrics_lib.Profiler(workdir, config.profile_steps)
    writer.write(start_step, perf)
    last: dict[str, float] = {}
    skipped = 0
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = first_batch if step == start_step + 1 else pipeline.to_global(next(batches), batch_sharding)
            profiler.before_step(step)
            state, step_metrics = train_step(state, frozen, batch)
            profiler.after_step(step, step_metrics)
            if float(step_metrics["train/nonfinite"]):
                bad = nonfinite_names(metrics_lib.to_floats(step_metrics))
                if config.nan_policy == "stop":
                    raise NonFiniteError(
                        f"Non-finite {bad} at step {step}; the update was not applied and no checkpoint "
                        f"was written for it (last saved step: {ckpt.latest_step()})."
                    )
                skipped += 1
                log.warning("Step %d: non-finite %s, update skipped (%d so far).", step, bad, skipped)
            if step % config.log_every == 0 or step == config.total_steps:
                last = {**metrics_lib.to_floats(step_metrics), **timer.lap(step), "train/skipped_steps": skipped}
                utilisation = metrics_lib.mfu(perf.get("perf/flops_per_device"), last.get("perf/step_time_s", 0), peak)
                if utilisation is not None:
                    last["perf/mfu"] = utilisation
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
    if jax.process_index() == 0:
        plot.write_run_plot(workdir)
    return last


def main(argv) -> None:
    del argv
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    if FLAGS.config is None:
        raise app.UsageError("--config is required (e.g. configs/supervised_digits.py).")
    cli.setup_logging()
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.init_timeout,
                           FLAGS.heartbeat_timeout)
    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
