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
loss impl (`--impls`, default reference, chunked, pallas, with
`clip.fallback=False`), runs their steps interleaved (so load from other
processes hits them alike) and prints ratios against the first impl. An impl
that cannot run here (pallas on CPU) is reported as skipped with the reason.
`--remat on|off|both` sets the towers' `remat` (both: every variant with and
without). `--synthetic` feeds random data of the config's shapes (no dataset
needed: image side from its `size=` / `central_crop:` op, tokens from the text
tower's max_len and vocab). `--json PATH` also writes the table.

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
import re
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsup import metrics as metrics_lib, sharding
from jaxsup.config import load_config
from jaxsup.data.loader import batching, pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import splits
from jaxsup.experiment import build_experiment
from jaxsup.step import TrainState
from bench_io import write_report  # a sibling module

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


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images [B, S, S, 3] and int32 tokens [B, L] (or labels [B]) for the keys the
    config's `keep:` op lists; S from its image ops, L and the vocabulary from its text tower."""
    ops = list(config.data.preprocess)
    keys = next(op.split(":", 1)[1].split(",") for op in reversed(ops) if op.startswith("keep:"))
    sizes = [int(m) for op in ops for m in re.findall(r"(?:size=|central_crop:)(\d+)", op)]
    rng = np.random.default_rng(seed)
    batch = {}
    if "image" in keys:
        side = sizes[-1] if sizes else 224
        batch["image"] = rng.integers(0, 256, (batch_size, side, side, 3), dtype=np.uint8)
    if "tokens" in keys:
        text = config.model.text_kwargs
        batch["tokens"] = rng.integers(1, max(int(text.vocab_size), 2), (batch_size, int(text.max_len)),
                                       dtype=np.int32)
    if "label" in keys:
        batch["label"] = rng.integers(0, int(config.model.get("num_classes", 10) or 10), (batch_size,),
                                      dtype=np.int32)
    return batch


def remat_overrides(config, remat: bool) -> dict[str, Any]:
    """Overrides setting `remat` on a two-tower config's towers, else on `model`."""
    if "image_kwargs" in config.model:
        return {f"model.{tower}": {**config.model[tower].to_dict(), "remat": remat}
                for tower in ("image_kwargs", "text_kwargs") if tower in config.model}
    return {"model": {**config.model.to_dict(), "remat": remat}}


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


def build_variants(args, overrides: dict[str, Any]) -> dict[str, Any]:
    """variant name -> config: one per --impls (with --compare) times one per --remat setting."""
    base = load_config(args.config, overrides)
    impls = {"step": {}}
    if args.compare:
        if base.task != "clip":
            raise ValueError(f"--compare needs a 'clip' task config; {args.config} has task {base.task!r}.")
        impls = {impl: {"clip.impl": impl, "clip.fallback": False} for impl in args.impls.split(",")}
    remats = {"off": [False], "on": [True], "both": [False, True], "": [None]}[args.remat]
    variants = {}
    for impl, impl_overrides in impls.items():
        for remat in remats:
            name = impl if remat is None else f"{impl}{'+remat' if remat else ''}"
            extra = {} if remat is None else remat_overrides(base, remat)
            variants[name] = load_config(args.config, {**overrides, **impl_overrides, **extra})
    return variants


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/x.py[:arg]")
    parser.add_argument("--override", nargs="*", default=[], help="config key=value (Python literals)")
    parser.add_argument("--batch", type=int, required=True, help="global batch size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak_flops", type=float, default=0.0, help="peak FLOP/s per device (0: table)")
    parser.add_argument("--compare", action="store_true", help="clip task: one variant per contrastive loss impl")
    parser.add_argument("--impls", default=",".join(IMPLS), help="impls of --compare (the first is the ratios' base)")
    parser.add_argument("--remat", default="", choices=["", "off", "on", "both"], help="the towers' remat")
    parser.add_argument("--synthetic", action="store_true", help="random data of the config's shapes")
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument("--per_device", action="store_true", help="--batch is per device (times the device count)")
    args = parser.parse_args(argv)
    if args.per_device:
        args.batch *= jax.device_count()

    overrides = {**parse_overrides(args.override), "batch_size": args.batch}
    base = load_config(args.config, overrides)
    mesh = sharding.make_mesh(base.mesh)
    sharding.check_batch_divisible(args.batch, mesh, base.batch_axes)
    batch = synthetic_batch(base, args.batch) if args.synthetic else tiled_batch(base, args.batch)
    built, rows = {}, {}
    for name, config in build_variants(args, overrides).items():
        try:
            built[name] = build_train_step(config, mesh, batch)
        except ValueError as err:  # e.g. impl="pallas" where its kernels cannot run
            print(f"{name}: skipped: {err}")
            rows[name] = {"skipped": str(err)[:200]}
        except Exception as err:  # noqa: BLE001  (e.g. out of memory: recorded, the other variants still run)
            print(f"{name}: failed: {type(err).__name__}: {err}")
            rows[name] = {"skipped": f"failed: {type(err).__name__}: {str(err)[:200]}"}
    times = time_steps(built, args.steps, args.warmup)

    peak_override = args.peak_flops or base.peak_flops_per_device
    peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind, peak_override)
    print(f"{args.config} batch={args.batch} backend={jax.default_backend()} devices={jax.device_count()} "
          f"({jax.devices()[0].device_kind}) steps={args.steps} (median) peak={peak or 'n/a'}")
    header = (f"{'variant':16} {'compile s':>9} {'step ms':>9} {'cpu ms':>9} {'ex/s':>9} {'temp MiB':>9} "
              f"{'GFLOP/dev':>9} {'MFU':>6} {'step/ref':>8} {'cpu/ref':>8} {'mem/ref':>8}")
    print(header)
    print("-" * len(header))
    ref = next(iter(built), None)
    for name, b in built.items():
        wall, cpu = times[name]
        flops, temp = b.stats.get("flops_per_device"), b.stats.get("temp_bytes", 0.0)
        utilisation = metrics_lib.mfu(flops, wall, peak)
        ref_wall, ref_cpu = times[ref]
        row = {"compile_s": b.compile_s, "step_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "examples_per_s": args.batch / wall,
               "temp_mib": temp / 2**20, "gflop_per_device": (flops or 0) / 1e9, "mfu": utilisation,
               "step_ratio": wall / ref_wall, "cpu_ratio": cpu / ref_cpu,
               "mem_ratio": temp / max(built[ref].stats.get("temp_bytes", 0.0), 1)}
        rows[name] = row
        print(f"{name:16} {b.compile_s:9.1f} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {args.batch / wall:9.0f} "
              f"{temp / 2**20:9.1f} {(flops or 0) / 1e9:9.2f} "
              f"{'n/a' if utilisation is None else f'{utilisation:.1%}':>6} "
              f"{row['step_ratio']:8.2f} {row['cpu_ratio']:8.2f} {row['mem_ratio']:8.3f}", flush=True)
    report = {"config": args.config, "batch": args.batch, "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "devices": jax.device_count(), "peak_flops": peak,
              "base": ref, "variants": rows}
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
