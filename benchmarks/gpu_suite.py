"""Every GPU measurement in one call: `pytest -m gpu` and the three benchmarks, one JSON + Markdown report.

    benchmarks/gpu_suite.sh [--out DIR]      # on one H100/H200: under 9.5 minutes
    python benchmarks/gpu_suite.py --dry-run   # prints the plan, runs nothing
    python benchmarks/gpu_suite.py --cpu-smoke --out /tmp/smoke   # every stage at tiny size on CPU

Stages (each a subprocess with its own time limit, so a failure, an OOM or a
hang in one is recorded and the next still runs; the limits of the stages left
are cut to what remains of `--budget-s`):
  env           versions, devices, which of the project's packages import
  pytest_gpu    `pytest -m gpu` on the test files that hold gpu-marked tests
  contrastive   benchmarks/contrastive_sweep.py: reference / chunked / pallas,
                softmax and sigmoid, bf16, d = 512, B = 16k doubling until OOM
                (or 1 s per step), TFLOP/s vs the bf16 matmul peak measured there
  fused_kd      benchmarks/fused_linear_kd.py: reference / rows / vocab / pallas,
                f32 N=2048 H=1024 V=32768 and bf16 N=8192 H=4096 V=131072 timed,
                memory at N=8192 H=1024 V=131072
  train_step    benchmarks/train_step.py on configs/clip_vit_b16.py, batch 256 per
                device, synthetic data, chunked vs pallas (MFU, temp memory, step time)
  train_step_remat  the same with the towers' remat on
  host_jpeg     benchmarks/jpeg_scaling.py: the host JPEG path (crop + flip to uint8
                [32, 224, 224, 3]) with 1, 2, 4, 8, 16 threads vs processes, bare and
                through the pipeline, and the GIL share: what the GPU host's cores give
Output (at most 8 files, one folder): report.json (every stage's status, time,
command and numbers), report.md (the same as tables), log.txt (every stage's output).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "chex", "ml_collections", "grain",
            "tensorflow_datasets", "PIL", "sklearn", "triton")


@dataclasses.dataclass
class Stage:
    """One step of the plan: a command (argv, run from the repo root) and its time limit."""

    name: str
    argv: list[str]
    timeout_s: int
    json_out: bool = True  # the command takes `--json PATH`


def gpu_test_files() -> list[str]:
    """tests/**/test_*.py files that hold a `@pytest.mark.gpu` test (relative to the repo root)."""
    files = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            if "pytest.mark.gpu" in f.read():
                files.append(os.path.relpath(path, ROOT))
    return files


def plan(smoke: bool) -> list[Stage]:
    """The stages; `smoke`: tiny sizes that run on CPU in seconds."""
    py = sys.executable
    pytest_argv = [py, "-m", "pytest", "-m", "gpu", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs",
                   "--continue-on-collection-errors", *gpu_test_files()]
    if smoke:
        contrastive = ["--start", "64", "--max-batch", "128", "--dim", "16", "--peak-size", "256",
                       "--repeats", "1", "--deadline-s", "30"]
        fused = ["--time", "64,32,256,float32", "32,32,256,bfloat16", "--memory", "128,32,512,float32",
                 "--iters", "1"]
        train = ["--config", "configs/clip_vit_b16.py:runlocal", "--batch", "16", "--steps", "1", "--warmup", "0"]
        host = ["--workers", "1", "--rounds", "1", "--images", "32", "--warmup", "0", "--pipeline-steps", "2"]
    else:
        contrastive = ["--start", "16384", "--max-batch", str(1 << 20), "--dim", "512", "--deadline-s", "85"]
        fused = ["--time", "2048,1024,32768,float32", "8192,4096,131072,bfloat16",
                 "--memory", "8192,1024,131072,float32", "--iters", "5"]
        train = ["--config", "configs/clip_vit_b16.py", "--batch", "256", "--per_device", "--steps", "5",
                 "--warmup", "1"]
        host = ["--workers", "1,2,4,8,16", "--rounds", "1", "--images", "256", "--warmup", "0",
                "--pipeline-steps", "32"]
    train_step = [py, os.path.join(BENCH, "train_step.py"), "--compare", "--impls", "chunked,pallas", "--synthetic",
                  *train]
    return [
        Stage("env", [py, os.path.join(BENCH, "gpu_suite.py"), "--env-only"], 20),
        Stage("pytest_gpu", pytest_argv, 90, json_out=False),
        Stage("contrastive", [py, os.path.join(BENCH, "contrastive_sweep.py"), "--loss", "softmax", "sigmoid",
                              "--impl", "reference", "chunked", "pallas", "--dtype", "bfloat16", *contrastive], 100),
        Stage("fused_kd", [py, os.path.join(BENCH, "fused_linear_kd.py"), "--variants",
                           "reference,rows,vocab,pallas", *fused], 60),
        # remat off and on as two stages: four ViT-B/16 compiles might not fit one limit
        Stage("train_step", [*train_step, "--remat", "off"], 100),
        Stage("train_step_remat", [*train_step, "--remat", "on"], 100),
        Stage("host_jpeg", [py, os.path.join(BENCH, "jpeg_scaling.py"), *host], 80),
    ]


def show(argv: list[str]) -> str:
    """A command line with the repo's paths relative to its root."""
    return " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv)


def _table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: f"{v:,.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(fmt(v) for v in row) + " |" for row in rows), ""]


def _stage_tables(name: str, data: dict) -> list[str]:
    """Markdown tables of one stage's numbers (the keys its script writes)."""
    if name == "env":
        return _table(["package", "version"], [[k, v] for k, v in data["packages"].items()]) + [
            f"backend {data['backend']}, devices {data['devices']}, env {data['env']}", ""]
    if name == "contrastive":
        rows = [[loss, int(b), impl, *(r.get(k, "-") for k in ("wall_ms", "temp_mib", "tflops", "peak_fraction")),
                 r.get("oom", r.get("error", r.get("skipped", "")))[:60]]
                for loss, by_b in data["results"].items() for b, impls in by_b.items() for impl, r in impls.items()]
        return [f"bf16 matmul peak measured: {data['peak_tflops']:.1f} TFLOP/s; largest B: {data['largest_batch']}",
                ""] + _table(["loss", "B", "impl", "wall ms", "temp MiB", "TFLOP/s", "of peak", "note"], rows)
    if name == "fused_kd":
        keys = ("wall_ms", "cpu_ms", "temp_mib", "wall_ratio", "mem_ratio")
        rows = [[res["case"], v, *(r.get(k, "-") for k in keys), r.get("skipped", "")[:60]]
                for res in data["results"] for v, r in res["rows"].items()]
        return _table(["case N,H,V,dtype", "variant", "wall ms", "cpu ms", "temp MiB", "wall/ref", "mem/ref",
                       "note"], rows) + [*data["targets"], ""]
    if name == "host_jpeg":
        rows = [[n, r["workers"], r["images_per_s"], r["images_per_cpu_s"], "yes" if r["oversubscribed"] else ""]
                for n, r in data["results"].items()]
        model = data["model"]
        return [f"{data['cpus']} cores; window decode {'on' if data['turbo'] else 'off (no [jpeg] extra)'}", ""] + \
            _table(["row", "workers", "images/s", "img/CPU-s", "oversubscribed"], rows) + \
            [f"model ({model['cores']} cores, {model['workers']} workers): " + "; ".join(
                f"{aa}: processes {model[aa]['processes']:.0f}, threads {model[aa]['threads']:.0f} img/s"
                for aa in ("aa=1", "aa=0")), ""]
    if name.startswith("train_step"):
        keys = ("step_ms", "examples_per_s", "mfu", "temp_mib", "compile_s", "step_ratio", "mem_ratio")
        rows = [[v, *(r.get(k, "-") if r.get(k) is not None else "-" for k in keys), r.get("skipped", "")[:60]]
                for v, r in data["variants"].items()]
        return [f"{data['config']} batch {data['batch']} on {data['devices']} x {data['device']}", ""] + _table(
            ["variant", "step ms", "ex/s", "MFU", "temp MiB", "compile s", f"step/{data['base']}",
             f"mem/{data['base']}", "note"], rows)
    return ["```", json.dumps(data, indent=1)[:2000], "```", ""]


def markdown(report: dict) -> str:
    """The report as Markdown: a status line per stage, then each stage's tables."""
    lines = [f"# GPU suite report ({report['seconds']} s of {report['budget_s']:.0f} s)", "",
             *_table(["stage", "status", "seconds", "command"],
                     [[n, r["status"], r["seconds"], f"`{r.get('command', '')}`"] for n, r in report["stages"].items()])]
    for name, record in report["stages"].items():
        if "data" in record:
            lines += [f"## {name}", "", *_stage_tables(name, record["data"])]
    return "\n".join(lines)


def environment() -> dict:
    """Versions, devices and the importable packages (runs in the env stage's own process)."""
    import importlib  # pylint: disable=import-outside-toplevel

    found = {}
    for name in PACKAGES:
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", "yes")
        except Exception as err:  # noqa: BLE001  (report, never fail)
            found[name] = f"missing: {type(err).__name__}"
    import jax  # pylint: disable=import-outside-toplevel

    env_vars = {k: v for k, v in os.environ.items()
                if k.startswith(("XLA_", "JAX_")) or k in ("CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL")}
    return {"python": sys.version.split()[0], "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()], "packages": found, "env": env_vars}


def run_stage(stage: Stage, timeout_s: float, work: str, log) -> dict:
    """Runs one stage; its record: status (ok | failed | timeout), rc, seconds, command, data."""
    json_path = os.path.join(work, f"{stage.name}.json")
    argv = stage.argv + (["--json", json_path] if stage.json_out else [])
    log.write(f"\n===== {stage.name}: {' '.join(argv)} (limit {timeout_s:.0f} s)\n")
    log.flush()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    try:
        rc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                            env=env, check=False).returncode
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        rc, status = None, "timeout"
    record = {"status": status, "rc": rc, "seconds": round(time.perf_counter() - start, 1),
              "command": show(stage.argv)}
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            try:
                record["data"] = json.load(f)
            except ValueError as err:  # a stage stopped while writing it: recorded, the suite goes on
                record["status"], record["json_error"] = "failed", f"{os.path.basename(json_path)}: {err}"
    log.write(f"===== {stage.name}: {status} (rc={rc}) in {record['seconds']} s\n")
    log.flush()
    return record


def run_suite(stages: list[Stage], out: str, budget_s: float) -> dict:
    """Runs the stages within `budget_s`; writes report.json, report.md and log.txt into `out`."""
    os.makedirs(out, exist_ok=True)
    start, records = time.perf_counter(), {}
    with open(os.path.join(out, "log.txt"), "w", encoding="utf-8") as log, \
            tempfile.TemporaryDirectory() as work:
        for stage in stages:
            left = budget_s - (time.perf_counter() - start)
            if left < 10:
                records[stage.name] = {"status": "not run: suite budget spent", "seconds": 0.0}
                continue
            records[stage.name] = run_stage(stage, min(stage.timeout_s, left), work, log)
    report = {"budget_s": budget_s, "seconds": round(time.perf_counter() - start, 1), "stages": records}
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_results", help="folder of the report (created)")
    parser.add_argument("--budget-s", type=float, default=550.0, help="whole-suite time limit (seconds)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage at tiny size (runs on CPU)")
    parser.add_argument("--stages", default="", help="comma-separated subset of the stages")
    parser.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.env_only:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(environment(), f, indent=1)
        return 0
    stages = plan(args.cpu_smoke)
    if args.stages:
        wanted = args.stages.split(",")
        unknown = sorted(set(wanted) - {s.name for s in stages})
        if unknown:
            parser.error(f"unknown stage(s) {unknown}; the stages are {[s.name for s in stages]}")
        stages = [s for s in stages if s.name in wanted]
    if args.dry_run:
        print(f"plan ({'cpu smoke' if args.cpu_smoke else 'full'}), budget {args.budget_s:.0f} s, "
              f"report in {args.out}/ (report.json, report.md, log.txt):")
        for s in stages:
            print(f"  {s.name:16} limit {s.timeout_s:4d} s  {show(s.argv)}")
        return 0
    report = run_suite(stages, args.out, args.budget_s)
    print(f"\nsuite done in {report['seconds']} s: " +
          ", ".join(f"{name} {r['status']}" for name, r in report["stages"].items()) + f"; report in {args.out}/")
    return 0 if all(r["status"] == "ok" for r in report["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
