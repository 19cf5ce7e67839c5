"""Metric writers: JSONL + TensorBoard event files in the workdir, and a progress line.

Only process 0 writes. `MetricWriter.write(step, {"train/loss": ...})`.
TensorBoard files need the `tensorboard` package (extra `[tb]`); without it
they are skipped with one log line. In a terminal, progress is one line
rewritten in place (step/s, loss, elapsed time, ETA); otherwise (CI, logs)
plain lines.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

log = logging.getLogger("jaxsup")


def _tb_writer(logdir: str):
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        log.info("tensorboard not installed (pip install 'jaxsup[tb]'): no event files.")
        return None
    writer = EventFileWriter(logdir)

    def write(step: int, scalars: Mapping[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))
        writer.flush()

    write.close = writer.close
    return write


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Device scalars -> Python floats (one host transfer)."""
    host = jax.device_get(dict(metrics))
    return {k: float(np.asarray(v)) for k, v in host.items()}


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard; prints progress."""

    def __init__(self, workdir: str, total_steps: int, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._clock = clock
        self._start = clock()
        self._first: tuple[int, float] | None = None  # (step, time) of the first progress line
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = _tb_writer(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb(step, scalars)

    def progress(self, step: int, scalars: Mapping[str, float]) -> None:
        """One progress line: step, loss, steps/s, elapsed time (since the writer started), ETA."""
        if not self.enabled:
            return
        now = self._clock()
        self._first = self._first or (step, now)
        eta = eta_seconds(step, self.total_steps, *self._first, now)
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items())
        timing = f"elapsed={format_duration(now - self._start)} eta={'?' if eta is None else format_duration(eta)}"
        line = f"step {step}/{self.total_steps} {shown} {timing}"
        if self.interactive:
            sys.stderr.write("\r" + line[:200].ljust(120))
            sys.stderr.flush()
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.interactive and self.enabled:
            sys.stderr.write("\n")
        if self._tb is not None:
            self._tb.close()


def format_duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def eta_seconds(step: int, total: int, first_step: int, first_time: float, now: float) -> float | None:
    """Time left at the mean rate since (first_step, first_time); None before a step has been timed."""
    if step <= first_step or now <= first_time:
        return None
    return (total - step) * (now - first_time) / (step - first_step)


class StepTimer:
    """Steps/s and examples/s between two `lap` calls, and the share of that time spent waiting for input.

    perf/input_wait_frac: seconds in `next(batches)` (added with `waited`) / seconds of the lap;
    near 1 the run is input-bound (the device idles while the host makes batches).
    """

    INPUT_BOUND = 0.5  # at or above this, the progress line shows input_wait_frac

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self._t = time.perf_counter()
        self._step: int | None = None
        self._wait = 0.0

    def waited(self, seconds: float) -> None:
        self._wait += seconds

    def lap(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        out = {}
        if self._step is not None and step > self._step:
            dt = (now - self._t) / (step - self._step)
            out = {"perf/step_time_s": dt, "perf/steps_per_s": 1.0 / dt, "perf/examples_per_s": self.batch_size / dt,
                   "perf/input_wait_frac": min(self._wait / max(now - self._t, 1e-12), 1.0)}
        self._t, self._step, self._wait = now, step, 0.0
        return out


def progress_keys(last: Mapping[str, float]) -> dict[str, float]:
    """What the progress line shows: loss, steps/s, and input_wait_frac when the run is input-bound."""
    keys = ["train/loss", "perf/steps_per_s"]
    if last.get("perf/input_wait_frac", 0.0) >= StepTimer.INPUT_BOUND:
        keys.append("perf/input_wait_frac")
    return {k: last[k] for k in keys if k in last}


# Dense bf16 peak FLOP/s per device (vendor datasheets); matched as substrings
# of `jax.devices()[0].device_kind`, first match wins.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e / "TPU v5 lite"
    ("TPU v4", 275e12),
    ("TPU v3", 123e12),
)


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: `override` if > 0, else the table, else None (e.g. CPU)."""
    if override > 0:
        return float(override)
    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


def compiled_stats(compiled: Any) -> dict[str, float]:
    """FLOPs per device and XLA temp/argument bytes of a compiled (AOT) function."""
    stats: dict[str, float] = {}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
        stats["flops_per_device"] = float(cost["flops"])
    memory = compiled.memory_analysis()
    if memory is not None:
        stats["temp_bytes"] = float(memory.temp_size_in_bytes)
        stats["argument_bytes"] = float(memory.argument_size_in_bytes)
    return stats


def mfu(flops_per_device: float | None, step_time_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s per device over the peak."""
    if not flops_per_device or not peak or step_time_s <= 0:
        return None
    return flops_per_device / step_time_s / peak


class Profiler:
    """jax.profiler trace covering the steps in `steps` (first..last), into workdir/profile."""

    def __init__(self, workdir: str, steps) -> None:
        steps = sorted(int(s) for s in steps)
        self.first, self.last = (steps[0], steps[-1]) if steps else (None, None)
        self.logdir = os.path.join(workdir, "profile")
        self.active = False

    def before_step(self, step: int) -> None:
        if step == self.first and jax.process_index() == 0:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False
            log.info("Profiler trace of steps %d..%d written to %s", self.first, self.last, self.logdir)
