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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxsup import checkpoint, cli, config as config_lib, distributed, experiment, metrics as metrics_lib, plot, sharding, workdir as workdir_lib
from jaxsup.data.loader import guided_batches, pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import splits
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


class CompiledSteps:
    """The train step compiled ahead of time once per batch shape: one executable per sequence
    bucket (NaFlex), so after warm-up the compilations are the buckets used. `first`: the first one."""

    def __init__(self, step_fn: Any, state: Any, frozen: Any, batch: dict):
        self.step_fn = step_fn
        self.compiled: dict[tuple, Any] = {}
        self.first = self.get(state, frozen, batch)

    def get(self, state: Any, frozen: Any, batch: dict) -> Any:
        key = tuple((jax.tree_util.keystr(path), tuple(leaf.shape), str(leaf.dtype))
                    for path, leaf in jax.tree_util.tree_leaves_with_path(batch))
        if key not in self.compiled:
            if self.compiled:
                log.info("Compiling the train step for a new batch shape: %s", key)
            self.compiled[key] = self.step_fn.lower(state, frozen, batch).compile()
        return self.compiled[key]

    def __call__(self, state: Any, frozen: Any, batch: dict) -> Any:
        return self.get(state, frozen, batch)(state, frozen, batch)


def example_global(example: dict, batch_sharding, config) -> dict:
    """A zero global batch shaped like the train batches (to compile when no step is left)."""
    shape = lambda x: jax.ShapeDtypeStruct((config.batch_size, *x.shape[1:]), x.dtype, sharding=batch_sharding)  # noqa: E731
    return jax.tree.map(shape, example)


def nonfinite_names(metrics: dict[str, float]) -> list[str]:
    return [k for k, v in metrics.items() if not np.isfinite(v)]


class NonFiniteGuard:
    """The nan policy, checked in batches: the loop keeps each step's metrics on device and
    `check()` fetches the pending `train/nonfinite` flags in one transfer (only at log, eval
    and save steps: no host sync per step). The step itself already dropped a non-finite
    update on device; here 'stop' raises naming the first such step, and 'skip' counts
    them and raises once more than `max_consecutive` come in a row.
    """

    def __init__(self, policy: str, max_consecutive: int):
        self.policy, self.max_consecutive = policy, int(max_consecutive)
        self.skipped = 0  # non-finite steps skipped by this process's run
        self._in_a_row = 0
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, step_metrics: dict) -> None:
        self._pending.append((step, step_metrics))

    def check(self, last_saved: int | None) -> None:
        """Raises NonFiniteError per the policy for the pending steps (see the class docstring)."""
        pending, self._pending = self._pending, []
        flags = jax.device_get([m["train/nonfinite"] for _, m in pending])
        for (step, step_metrics), flag in zip(pending, flags):
            if not float(flag):
                self._in_a_row = 0
                continue
            bad = nonfinite_names(metrics_lib.to_floats(step_metrics))
            if self.policy == "stop":
                raise NonFiniteError(f"Non-finite {bad} at step {step}; the update was not applied and no checkpoint "
                                     f"was written for it or after it (last saved step: {last_saved}).")
            self.skipped, self._in_a_row = self.skipped + 1, self._in_a_row + 1
            log.warning("Step %d: non-finite %s, update skipped (%d so far).", step, bad, self.skipped)
            if self._in_a_row > self.max_consecutive:
                raise NonFiniteError(
                    f"{self._in_a_row} non-finite steps in a row up to step {step} (config.max_consecutive_skips="
                    f"{self.max_consecutive}), {self.skipped} skipped in all; stopping: the run no longer learns "
                    f"(last saved step: {last_saved}).")


def check_run_options(config) -> None:
    """ConfigError for a bad nan policy or a value outside its declared range (before anything is built or written)."""
    config_lib.check_values(config)
    if config.nan_policy not in NAN_POLICIES:
        raise ConfigError(f"config.nan_policy={config.nan_policy!r}; expected one of {NAN_POLICIES}.")
    if int(config.max_consecutive_skips) < 0:
        raise ConfigError(f"config.max_consecutive_skips={config.max_consecutive_skips}; expected >= 0.")


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Runs config.total_steps (resuming from workdir); returns the last metrics.

    The workdir is checked (WorkdirError) and, on process 0, locked for the run:
    a second run on it stops at once naming the holder.
    """
    check_run_options(config)
    fresh = not os.path.exists(workdir)
    workdir = workdir_lib.prepare(workdir)
    lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        return _train_and_evaluate(config, workdir)
    except BaseException:
        if lock is not None and fresh:  # refused before it recorded anything: leave no workdir behind
            lock.release()
            workdir_lib.remove_if_unused(workdir)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
    # ------------------------------------------------------------------ setup
    writer = metrics_lib.MetricWriter(workdir, config.total_steps)
    log.info("Devices: %d (%s), processes: %d", jax.device_count(), jax.default_backend(), jax.process_count())

    # ------------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(config.batch_size, mesh, config.batch_axes)
    batch_sharding = sharding.batch_sharding(mesh, config.batch_axes)

    # ------------------------------------------------------------------- data
    train_source = splits.open_split(config.data, config.data.train_split)
    train_data = pipeline.train_dataset(
        train_source, preprocess.build(config.data.preprocess), config.batch_size, config.seed,
        guide=guided_batches.load_guide(config.data, len(train_source)),
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
        state, meta = ckpt.restore_newest_readable(
            checkpoint.abstract_tree(setup.abstract_state, setup.state_shardings), strict=config.checkpoint.strict)
        checkpoint.check_same_run(meta, config, ckpt.directory)
        if note := checkpoint.schedule_change(meta, config):
            log.warning("Resuming: %s", note)
        log.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
    else:
        state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(setup.init_rng)
        state = state.replace(**dict(zip(("params", "task_state"), task.warm_start(state.params, state.task_state))))
    start_step = int(state.step)
    if jax.process_index() == 0:  # The run really starts (or resumes) here: its record follows.
        workdir_lib.drop_replayed_metrics(workdir, start_step, evals_rerun=start_step >= config.total_steps)
        workdir_lib.write_config(config.to_json_best_effort(indent=2), workdir)

    # ------------------------------------------------------------ jitted step
    batches = pipeline.train_iterator(train_data, start_step, **pipeline.loader_options(config.data))
    first_batch = pipeline.to_global(next(batches), batch_sharding) if start_step < config.total_steps else None
    compile_start = time.perf_counter()
    train_step = CompiledSteps(setup.step_fn, state, frozen, first_batch or example_global(example, batch_sharding, config))
    perf = {"perf/compile_s": time.perf_counter() - compile_start, **{
        f"perf/{k}": v for k, v in metrics_lib.compiled_stats(train_step.first).items()}}
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

    read_back = False

    def save(step: int) -> None:
        nonlocal read_back
        saved = ckpt.save(step, state, {"step": step, "seed": config.seed, "config": config.to_json_best_effort()})
        if saved and not read_back:  # the run's first save: a run that could never resume stops now
            ckpt.check_readable(step)
            read_back = True

    # ------------------------------------------------------------------- loop
    ckpt.install_sigterm_handler()
    timer = metrics_lib.StepTimer(config.batch_size)
    profiler = metrics_lib.Profiler(workdir, config.profile_steps)
    writer.write(start_step, perf)
    last: dict[str, float] = {}
    guard = NonFiniteGuard(config.nan_policy, config.max_consecutive_skips)
    single_process = jax.process_count() == 1
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            waiting = time.perf_counter()
            batch = first_batch if step == start_step + 1 else pipeline.to_global(next(batches), batch_sharding)
            timer.waited(time.perf_counter() - waiting)
            profiler.before_step(step)
            state, step_metrics = train_step(state, frozen, batch)
            profiler.after_step(step, step_metrics)
            guard.add(step, step_metrics)
            is_log = step % config.log_every == 0 or step == config.total_steps
            is_eval = any(ev.every and step % ev.every == 0 for ev in config.evals.values()) or step == config.total_steps
            is_save = ckpt.should_save(step, config.total_steps)
            # A SIGTERM is shared between processes (a host all-gather) only at log/eval/save steps;
            # with one process it is read every step (no sync at all).
            preempted = (single_process or is_log or is_eval or is_save) and distributed.any_process(ckpt.preempted)
            if is_log or is_eval or preempted or is_save:
                guard.check(ckpt.latest_step())  # the one host sync: before anything is logged or saved
            if is_log:
                last = {**metrics_lib.to_floats(step_metrics), **timer.lap(step), "train/skipped_steps": guard.skipped}
                utilisation = metrics_lib.mfu(perf.get("perf/flops_per_device"), last.get("perf/step_time_s", 0), peak)
                if utilisation is not None:
                    last["perf/mfu"] = utilisation
                writer.write(step, last)
                writer.progress(step, metrics_lib.progress_keys(last))
            if is_eval:
                last.update(run_evals(step))
            if is_save or preempted:
                save(step)
            if preempted:
                log.warning("SIGTERM: saved step %d, exiting.", step)
                break
        if start_step >= config.total_steps:
            last.update(run_evals(start_step))
        log.info("Done at step %d: %d non-finite step(s) skipped (nan_policy=%s).",
                 int(state.step), guard.skipped, config.nan_policy)
    finally:
        ckpt.close()
        writer.close()
    if jax.process_index() == 0:
        try:
            plot.write_run_plot(workdir)
        except (OSError, ValueError) as err:  # the run is saved and recorded: a picture never fails it
            log.warning("No metrics.png for %s: %s", workdir, err)
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
    last = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    if jax.process_index() == 0:
        print(summary_line(FLAGS.workdir, last), flush=True)


def summary_line(workdir: str, last: dict[str, float]) -> str:
    """The run's last line: its workdir and the eval metrics it ended with (train/perf left out)."""
    evals = {k: v for k, v in sorted(last.items()) if not k.startswith(("train/", "perf/"))}
    shown = " ".join(f"{k}={v:.4g}" for k, v in evals.items()) or "no eval metrics"
    return f"jaxsup: done: workdir={workdir} {shown}"


if __name__ == "__main__":
    define_flags()
    cli.run(main)
