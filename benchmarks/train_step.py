"""Compile time, step time, examples/s, XLA temp memory and MFU of a config's train step.

    python benchmarks/train_step.py --config configs/clip_digits.py[:arg] --batch 4096 \
        [--override key=value ...] [--steps 5] [--warmup 1] [--peak_flops F] [--compare]

The step is built as `jaxsup.train` builds it (task from the registry, optax
optimizer, partition rules, `make_train_step`, jit with the state/batch
shardings and donation), on one real batch of the config's data tiled to
`--batch` rows. Reported: compile seconds, median step time over `--steps`
steps after `--warmup`, examples/s, `memory_analysis().temp_size_in_bytes`,
XLA FLOPs per device and MFU (peak from `jaxsup.metrics`, or `--peak_flops`;
none on CPU).

`--compare` (a "clip" task config) builds the same step once per contrastive
loss impl (reference, chunked, pallas, with `clip.fallback=False`), runs their
steps interleaved (so load from other processes hits them alike) and prints
ratios against reference. An impl that cannot run here (pallas on CPU) is
reported as skipped with the reason.

CPU result (2 cores shared with other jobs, jax 0.10.2, 1 device), CLIP softmax on
digits at global batch 4096 with tiny MLP towers (so the loss, not the towers, dominates):
    python benchmarks/train_step.py --config configs/clip_digits.py --batch 4096 --compare \
      --override model.image=mlp model.text=mlp model.embed_dim=64 \
      "model.image_kwargs={'widths': (16,), 'num_classes': None}" \
      "model.text_kwargs={'widths': (16,), 'num_classes': None}"
    variant    compile s   step ms    cpu ms      ex/s  temp MiB GFLOP/dev  step/ref  cpu/ref  mem/ref
    reference        4.9    1473.7     950.6      2779     262.4      7.12      1.00     1.00    1.000
    chunked          3.9     551.2     373.0      7431      25.5      1.23      0.37     0.39    0.097
    (pallas: skipped, its kernels do not run on CPU)
XLA's cost analysis counts a loop body once, so GFLOP/dev (and MFU) undercount
scan-based losses such as "chunked".
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsup import metrics as metrics_lib, sharding
from jaxsup.config import load_config
from jaxsup.data import batching, pipeline, preprocess, splits
from jaxsup.experiment import build_experiment
from jaxsup.step import TrainState

IMPLS = ("reference", "chunked", "pallas")


@dataclasses.dataclass
class BuiltStep:
    """A compiled train step and what it runs on."""

    step: Any  # compiled: (state, frozen, batch) -> (state, metrics); donates state
    state: TrainState
    frozen: Any
    batch: dict[str, jax.Array]
    compile_s: float
    stats: dict[str, float]  # flops_per_device, temp_bytes, argument_bytes


def build_train_step(config, mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> BuiltStep:
    """The train step exactly as jaxsup.train builds it (jaxsup.experiment.build_experiment), AOT-compiled."""
    setup = build_experiment(config, mesh, jax.tree.map(lambda x: jnp.asarray(x[:1]), batch))
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(setup.init_rng)
    global_batch = pipeline.to_global(batch, sharding.batch_sharding(mesh, config.batch_axes))
    start = time.perf_counter()
    compiled = setup.step_fn.lower(state, setup.frozen, global_batch).compile()
    compile_s = time.perf_counter() - start
    return BuiltStep(compiled, state, setup.frozen, global_batch, compile_s, metrics_lib.compiled_stats(compiled))


def tiled_batch(config, batch_size: int, unique: int = 256) -> dict[str, np.ndarray]:
    """`batch_size` rows of the config's preprocessed train data: `unique` real examples, tiled."""
    source = splits.open_split(config.data, config.data.train_split)
    count = min(unique, batch_size, len(source))
    stacked = batching.read_batch(source, preprocess.build(config.data.preprocess), np.arange(count))
    return jax.tree.map(lambda x: np.take(x, np.arange(batch_size) % count, axis=0), stacked)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["a.b=3", "c=(1, 2)", "d=name"] -> {"a.b": 3, "c": (1, 2), "d": "name"} (literals, else strings)."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--override {item!r}: expected key=value.")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def time_steps(built: dict[str, BuiltStep], steps: int, warmup: int) -> dict[str, tuple[float, float]]:
    """name -> (median wall s, median process-CPU s) per step; the builds' steps run interleaved."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
    for i in range(warmup + steps):
        for name, b in built.items():
            wall, cpu = time.perf_counter(), time.process_time()
            b.state, out = b.step(b.state, b.frozen, b.batch)
            jax.block_until_ready(out)
            if i >= warmup:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--override", nargs="*", default=[], help="config key=value (Python literals)")
    parser.add_argument("--batch", type=int, required=True, help="global batch size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak_flops", type=float, default=0.0, help="peak FLOP/s per device (0: table)")
    parser.add_argument("--compare", action="store_true", help="clip task: loss impl reference vs chunked vs pallas")
    args = parser.parse_args()

    overrides = {**parse_overrides(args.override), "batch_size": args.batch}
    base = load_config(args.config, overrides)
    mesh = sharding.make_mesh(base.mesh)
    sharding.check_batch_divisible(args.batch, mesh, base.batch_axes)
    batch = tiled_batch(base, args.batch)
    variants = {"step": base}
    if args.compare:
        if base.task != "clip":
            raise ValueError(f"--compare needs a 'clip' task config; {args.config} has task {base.task!r}.")
        variants = {impl: load_config(args.config, {**overrides, "clip.impl": impl, "clip.fallback": False})
                    for impl in IMPLS}
    built = {}
    for name, config in variants.items():
        try:
            built[name] = build_train_step(config, mesh, batch)
        except ValueError as err:  # e.g. impl="pallas" where its kernels cannot run
            print(f"{name}: skipped: {err}")
    times = time_steps(built, args.steps, args.warmup)

    peak_override = args.peak_flops or base.peak_flops_per_device
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, peak_override)
    print(f"{args.config} batch={args.batch} backend={jax.default_backend()} devices={jax.device_count()} "
          f"({jax.devices()[0].device_kind}) steps={args.steps} (median) peak={peak or 'n/a'}")
    ratios = f" {'step/ref':>8} {'cpu/ref':>8} {'mem/ref':>8}" if args.compare else ""
    header = (f"{'variant':10} {'compile s':>9} {'step ms':>9} {'cpu ms':>9} {'ex/s':>9} {'temp MiB':>9} "
              f"{'GFLOP/dev':>9} {'MFU':>6}" + ratios)
    print(header)
    print("-" * len(header))
    ref = built.get("reference")
    for name, b in built.items():
        wall, cpu = times[name]
        flops, temp = b.stats.get("flops_per_device"), b.stats.get("temp_bytes", 0.0)
        utilisation = metrics_lib.mfu(flops, wall, peak)
        line = (f"{name:10} {b.compile_s:9.1f} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {args.batch / wall:9.0f} "
                f"{temp / 2**20:9.1f} {(flops or 0) / 1e9:9.2f} "
                f"{'n/a' if utilisation is None else f'{utilisation:.1%}':>6}")
        if args.compare and ref is not None:
            ref_wall, ref_cpu = times["reference"]
            line += f" {wall / ref_wall:8.2f} {cpu / ref_cpu:8.2f} {temp / max(ref.stats['temp_bytes'], 1):8.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
