"""Contrastive losses at growing batch: fwd+bwd time, TFLOP/s vs the measured bf16 matmul peak, until OOM.

    python benchmarks/contrastive_sweep.py [--loss softmax sigmoid] [--impl reference chunked pallas]
        [--start 16384] [--max-batch 1048576] [--dim 512] [--dtype bfloat16]
        [--max-step-s 1.0] [--deadline-s 110] [--json out.json]

For each loss, B doubles from `--start`; at each B every impl still in the
race is compiled (`benchmarks/contrastive_loss.compile_impl`), warmed up and
timed (the impls interleaved, min of `--repeats`, wall and CPU time). An impl
leaves the race at its first out-of-memory (compile or run: XLA's
RESOURCE_EXHAUSTED; any other error is recorded too), when its step took more than `--max-step-s`, or when
B would pass `--max-batch`; the sweep stops growing at `--deadline-s` seconds,
split evenly over the losses (what was measured is kept). TFLOP/s are model FLOPs (`model_flops`: the three
[B, B, d] matmuls) over wall time, as a fraction of the bf16 matmul peak
measured at the start of the same run. `largest_batch` per (loss, impl) is
the largest B that ran.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contrastive_loss as bench  # noqa: E402  (a sibling script, not a package)
from bench_io import write_report  # noqa: E402


def is_oom(err: Exception) -> bool:
    """True for XLA's out-of-memory errors (compile or run)."""
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def failure(err: Exception, when: str) -> dict:
    """The row of an impl that failed: {"oom": when} or {"error": the first line of the message}."""
    if is_oom(err):
        return {"oom": when}
    return {"error": f"{when}: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"}


def measure_batch(loss: str, impls: list[str], batch: int, args, peak: float) -> dict[str, dict]:
    """impl -> {wall_ms, cpu_ms, temp_mib, tflops, peak_fraction} or {oom} / {skipped} at one B."""
    rows, runs = {}, {}
    dtype = jnp.dtype(args.dtype)
    for impl in impls:
        try:
            result = bench.compile_impl(loss, impl, batch, args.dim, args.tile, dtype)
        except Exception as err:  # noqa: BLE001  (recorded; the impl leaves the race, the sweep goes on)
            rows[impl] = failure(err, "compile")
            continue
        if isinstance(result, str):
            rows[impl] = {"skipped": result[:200]}
        else:
            runs[impl] = result
    try:
        times = bench.time_impls(runs, args.repeats)
    except Exception:  # noqa: BLE001  (find which one failed: one at a time)
        times = {}
        for impl, run in list(runs.items()):
            try:
                times.update(bench.time_impls({impl: run}, args.repeats))
            except Exception as err:  # noqa: BLE001
                rows[impl] = failure(err, "run")
    for impl, (wall, cpu) in times.items():
        achieved = bench.model_flops(loss, batch, args.dim) / wall
        rows[impl] = {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3, "temp_mib": runs[impl][2] / 2**20,
                      "tflops": achieved / 1e12, "peak_fraction": achieved / peak}
    return rows


def sweep(args) -> dict:
    """The whole sweep as a dict (what --json writes); prints one line per (loss, B, impl)."""
    start_time = time.perf_counter()
    peak = bench.matmul_peak_flops(args.peak_size)
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} dim={args.dim} "
          f"dtype={args.dtype} measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)
    results, largest = {}, {}
    for index, loss in enumerate(args.loss):
        racing, batch = list(args.impl), args.start
        deadline = start_time + args.deadline_s * (index + 1) / len(args.loss)  # each loss gets its share
        while racing and batch <= args.max_batch and time.perf_counter() < deadline:
            rows = measure_batch(loss, racing, batch, args, peak)
            results.setdefault(loss, {})[str(batch)] = rows
            for impl, row in rows.items():
                print(f"{loss:8} B={batch:8d} {impl:10} " + " ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
                if "wall_ms" in row:
                    largest[f"{loss}/{impl}"] = batch
                if "wall_ms" not in row or row["wall_ms"] > 1e3 * args.max_step_s:
                    racing.remove(impl)
            batch *= 2
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "dim": args.dim,
            "dtype": args.dtype, "peak_tflops": peak / 1e12, "results": results, "largest_batch": largest,
            "seconds": time.perf_counter() - start_time}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", nargs="+", default=["softmax", "sigmoid"], choices=sorted(bench.LOSSES))
    parser.add_argument("--impl", nargs="+", default=["reference", "chunked", "pallas"])
    parser.add_argument("--start", type=int, default=16384)
    parser.add_argument("--max-batch", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tile", type=int, default=bench.contrastive.DEFAULT_TILE)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-step-s", type=float, default=1.0)
    parser.add_argument("--deadline-s", type=float, default=110.0)
    parser.add_argument("--peak-size", type=int, default=8192, help="side of the bf16 matmul measuring the peak")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = sweep(args)
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
