"""Fused linear KD: fwd+bwd time (wall and CPU) and XLA temp memory of each variant vs the naive path.

    python benchmarks/fused_linear_kd.py                  # the issue's three measurements
    python benchmarks/fused_linear_kd.py --time 1024,512,16384,float32 --memory none \
        --variants reference,rows,vocab --iters 5 [--json out.json]

Variants: "reference" (naive: `h @ W` [N, V] then KD, XLA's autodiff),
"rows" (impl="chunked", chunking="rows": row chunks, three GEMMs), "vocab"
(chunking="vocab": V tiles, four GEMMs), "auto" (the chunking `api` picks per
shape), "pallas" (skipped with the reason where its kernels cannot run) and
"gemms" (no loss: just the three GEMMs, the floor any exact path pays).

`--time N,H,V,dtype` cases (repeatable): every variant is compiled
(`jit(value_and_grad)` w.r.t. h_s and W_s, teacher logits [N, V]) and run once
to warm up, then the variants run interleaved `--iters` times (so load from
other processes hits them alike); the median wall time and the median process
CPU time (all threads) are reported with their ratios to "reference".
`--memory N,H,V,dtype` cases are compiled only and report
`memory_analysis().temp_size_in_bytes`. Targets (issue 17): rows time <= 0.8x
reference at the f32 and bf16 time cases; temp memory <= 1/50 at the memory case.

CPU result (2 cores shared with other jobs, jax 0.10.2), one run of the defaults:
see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxsup.losses.fused_linear_kd import fused_linear_kd
from bench_io import write_report  # a sibling module

VARIANTS = {
    "reference": dict(impl="reference"),
    "rows": dict(impl="chunked", chunking="rows"),
    "vocab": dict(impl="chunked", chunking="vocab"),
    "auto": dict(impl="chunked", chunking="auto"),
    "pallas": dict(impl="pallas"),
    "gemms": None,  # the floor: only h @ W, dz @ W^T and h^T @ dz, the three GEMMs every exact path does
}
DEFAULT_TIME = ("2048,1024,32768,float32", "1024,1024,32768,bfloat16")
DEFAULT_MEMORY = ("8192,1024,131072,float32",)
TIME_TARGET, MEMORY_TARGET = 0.8, 1 / 50


def parse_case(text: str) -> tuple[int, int, int, str]:
    """"N,H,V,dtype" -> (N, H, V, dtype)."""
    n, h, v, dtype = text.split(",")
    return int(n), int(h), int(v), str(jnp.dtype(dtype))


def make_step(variant: str, kind: str):
    """Jitted value_and_grad of the loss w.r.t. (h_s, W_s); teacher logits [N, V] ("gemms": the three GEMMs)."""
    if variant == "gemms":
        return jax.jit(lambda h_s, w_s, z: (h_s @ w_s, z @ w_s.T, h_s.T @ z))

    def loss(h_s, w_s, teacher):
        return fused_linear_kd(h_s, w_s, teacher, 2.0, kind=kind, **VARIANTS[variant])

    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def structs(case) -> tuple:
    n, h, v, dtype = case
    return tuple(jax.ShapeDtypeStruct(s, dtype) for s in ((n, h), (h, v), (n, v)))


def compile_variant(variant: str, case, kind: str):
    """(compiled, temp bytes) or the reason it cannot run here (str)."""
    try:
        compiled = make_step(variant, kind).lower(*structs(case)).compile()
    except ValueError as err:  # e.g. "pallas" where no kernel backend runs
        return f"skipped: {str(err).split('(')[0].strip()}"
    except Exception as err:  # noqa: BLE001  (e.g. out of memory: recorded, the other variants go on)
        return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def random_inputs(case, seed: int = 0) -> tuple:
    keys = jax.random.split(jax.random.key(seed), 3)
    scales = (1.0, 0.03, 2.0)
    return tuple((jax.random.normal(k, s.shape) * c).astype(s.dtype)
                 for k, s, c in zip(keys, structs(case), scales))


def interleaved_medians(runs: dict, inputs: tuple, iters: int) -> dict[str, tuple[float, float]]:
    """variant -> (median wall s, median process CPU s), the variants run in turn."""
    for name, compiled in list(runs.items()):
        try:
            jax.block_until_ready(compiled(*inputs))
        except Exception as err:  # noqa: BLE001  (e.g. out of memory at run time)
            print(f"{name}: failed at its first run: {type(err).__name__}: {str(err)[:160]}")
            del runs[name]
    times = {name: [] for name in runs}
    for _ in range(iters):
        for name, compiled in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(*inputs))
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for name, t in times.items()}


def measure_case(case, variants: list[str], kind: str, iters: int | None) -> dict:
    """One case's rows: {variant: {temp_mib, [wall_ms, cpu_ms], ratios} or {skipped}}."""
    compiled = {name: compile_variant(name, case, kind) for name in variants}
    rows = {name: {"skipped": c} for name, c in compiled.items() if isinstance(c, str)}
    ok = {name: c for name, c in compiled.items() if not isinstance(c, str)}
    rows.update({name: {} for name in ok})  # rows in the order of `variants`
    rows = {name: rows[name] for name in variants}
    timed = interleaved_medians({n: c[0] for n, c in ok.items()}, random_inputs(case), iters) if iters else {}
    ref = ok.get("reference")
    for name, (_, temp) in ok.items():
        row = {"temp_mib": temp / 2**20}
        if ref:
            row["mem_ratio"] = temp / max(ref[1], 1)
        if iters and name not in timed:
            row["skipped"] = "failed at its first run (see the log)"
        if name in timed:
            row["wall_ms"], row["cpu_ms"] = (1e3 * t for t in timed[name])
            if "reference" in timed:
                row["wall_ratio"] = timed[name][0] / timed["reference"][0]
                row["cpu_ratio"] = timed[name][1] / timed["reference"][1]
        rows[name] = row
    return rows


def fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def print_case(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print("| variant | wall ms | cpu ms | temp MiB | wall/ref | cpu/ref | mem/ref |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        if "skipped" in row:
            print(f"| {name} | {row['skipped'][:80]} | | | | | |")
            continue
        print(f"| {name} | {fmt(row, 'wall_ms', ',.1f')} | {fmt(row, 'cpu_ms', ',.1f')} | "
              f"{row['temp_mib']:,.1f} | {fmt(row, 'wall_ratio', '.3f')} | {fmt(row, 'cpu_ratio', '.3f')} | "
              f"{fmt(row, 'mem_ratio', '.4f')} |", flush=True)


def check_targets(results: list[dict]) -> list[str]:
    """One line per target: the measured ratio, and whether it is met."""
    lines = []
    for result in results:
        rows_row = result["rows"].get("rows", {})
        if result["timed"] and "wall_ratio" in rows_row:
            met = rows_row["wall_ratio"] <= TIME_TARGET
            lines.append(f"time {result['case']}: rows/reference wall {rows_row['wall_ratio']:.3f} "
                         f"(cpu {rows_row['cpu_ratio']:.3f}) target <= {TIME_TARGET}: {'met' if met else 'MISSED'}")
        if not result["timed"]:
            for name in ("rows", "vocab", "auto"):
                ratio = result["rows"].get(name, {}).get("mem_ratio")
                if ratio is not None:
                    met = ratio <= MEMORY_TARGET
                    lines.append(f"memory {result['case']}: {name}/reference {ratio:.4f} = 1/{1 / ratio:.0f} "
                                 f"target <= 1/50: {'met' if met else 'MISSED'}")
    return lines


def run(time_cases, memory_cases, variants: list[str], kind: str = "kl", iters: int = 3) -> dict:
    """Every case measured and printed; the report as a dict (what --json writes)."""
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"device: {device}; jax {jax.__version__}; kind={kind}; median of {iters}, interleaved")
    results = []
    for text, timed in [(c, True) for c in time_cases] + [(c, False) for c in memory_cases]:
        case = parse_case(text)
        rows = measure_case(case, variants, kind, iters if timed else None)
        what = f"fwd+bwd time and temp memory, median of {iters}" if timed else "temp memory (compile only)"
        print_case(f"{what}: N={case[0]} H={case[1]} V={case[2]} {case[3]}", rows)
        results.append({"case": text, "timed": timed, "rows": rows})
    targets = check_targets(results)
    print("\n" + "\n".join(targets))
    return {"device": device, "jax": jax.__version__, "kind": kind, "iters": iters,
            "results": results, "targets": targets}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time", nargs="+", default=list(DEFAULT_TIME), help="N,H,V,dtype (timed)")
    parser.add_argument("--memory", nargs="+", default=list(DEFAULT_MEMORY),
                        help="N,H,V,dtype (compile only); 'none' for no memory case")
    parser.add_argument("--variants", default="reference,rows,vocab,pallas,gemms")
    parser.add_argument("--kind", default="kl", choices=["kl", "rkl", "jsd"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    memory = [] if args.memory == ["none"] else args.memory
    time_cases = [] if args.time == ["none"] else args.time
    report = run(time_cases, memory, args.variants.split(","), args.kind, args.iters)
    return write_report(report, args.json)


if __name__ == "__main__":
    main()
