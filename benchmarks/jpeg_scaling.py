"""Host JPEG path per worker: threads vs processes at 1, 2, 4, 8 workers, and a model for a bigger host.

    python benchmarks/jpeg_scaling.py [--workers 1,2,4,8] [--rounds 3] [--images 192] [--json out.json]

The work is jpeg_bench's (400-640 px photo-like JPEGs, `inception_crop:224` + `flip_lr`, uint8
[32, 224, 224, 3] batches), as installed (the `[jpeg]` extra where present), antialias on and off:

  bare threads    one process, `n` threads over contiguous chunks (CPU: the process's);
  bare processes  a fork pool of `n` processes, each making its chunk's batches and sending
                  them back pickled (CPU: each worker's own, plus the parent's receive);
  pipeline        `pipeline.train_iterator` with `workers=n` threads, or `processes=n` grain
                  worker processes (CPU: parent + children, psutil); antialias on.

Rows with more workers than cores are marked oversubscribed: they show the cost of sharing, not
scaling. The GIL share: cProfile of one thread, the time outside the calls that release the
GIL (the libjpeg-turbo decode via ctypes, Pillow's resize, OpenCV's warp and flip) over the
whole; threads cannot go past 1 / (that share x per-image time) images/s in one process.
"""
from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jpeg_bench  # noqa: E402  (sibling modules, not a package)
from bench_io import write_report  # noqa: E402
from input_pipeline import cpu_seconds  # noqa: E402  (this process + its children, psutil)

from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess, resize, turbo_jpeg  # noqa: E402

GIL_FREE = ("decode_region", "'resize' of 'ImagingCore'", "warpAffine", "flip")  # pstats names that drop the GIL
WORK: dict[str, Any] = {}  # the fork pool's workers inherit it


def has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def wait_quiet(quiet_s: float = 0.1, timeout_s: float = 10.0) -> float:
    """jpeg_bench.wait_idle for a process and its children; wall seconds of the last, quiet sleep."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        cpu, wall = cpu_seconds(), time.perf_counter()
        time.sleep(quiet_s)
        if cpu_seconds() - cpu < 0.1 * quiet_s:
            return time.perf_counter() - wall
    return 0.0


def chunk_job(bounds: tuple[int, int]) -> tuple[list[np.ndarray], float]:
    """(the batches of WORK's examples [lo, hi), this worker's CPU seconds for them)."""
    cpu = time.process_time()
    out = WORK["batches"](WORK["examples"][bounds[0]:bounds[1]])
    return out, time.process_time() - cpu


def bounds(count: int, n: int) -> list[tuple[int, int]]:
    return [(k * count // n, (k + 1) * count // n) for k in range(n)]


def bare_threads(exs: list[dict], antialias: int, n: int) -> Callable[[], tuple[float, float]]:
    work = jpeg_bench.jaxsup_batches([], antialias)
    return lambda: jpeg_bench.timed(lambda: jpeg_bench.threaded(work, exs, n), len(exs))


def bare_processes(exs: list[dict], antialias: int, n: int) -> Callable[[], tuple[float, float]]:
    """A fork pool made before the clock starts (warmed), timed over one map of the chunks."""
    def run() -> tuple[float, float]:
        WORK.update(examples=exs, batches=jpeg_bench.jaxsup_batches([], antialias))
        with multiprocessing.get_context("fork").Pool(n) as pool:
            pool.map(abs, range(n))  # started
            wall, cpu = time.perf_counter(), time.process_time()
            results = pool.map(chunk_job, bounds(len(exs), n))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu + sum(c for _, c in results)
        return len(exs) / wall, len(exs) / max(cpu, 1e-9)

    return run


def pipeline_rows(jpegs: list[bytes], threads: int, processes: int, steps: int) -> Callable[[], tuple[float, float]]:
    """`steps` batches of 32 from train_iterator, timed from a full prefetch buffer to a full one."""
    ops = preprocess.build(["inception_crop:224", "flip_lr", "keep:image"])

    def run() -> tuple[float, float]:
        ds = pipeline.train_dataset([{"image": j} for j in jpegs], ops, jpeg_bench.BATCH, seed=0, process_count=1)
        it = pipeline.train_iterator(ds, 0, 0, 1, prefetch=max(4, threads), workers=threads, processes=processes)
        next(it)
        wait_quiet()
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(steps):
            next(it)
        quiet = wait_quiet()
        wall, cpu = time.perf_counter() - wall - quiet, cpu_seconds() - cpu
        if hasattr(it, "close"):
            it.close()
        return steps * jpeg_bench.BATCH / wall, steps * jpeg_bench.BATCH / max(cpu, 1e-9)

    return run


def gil_share(exs: list[dict], antialias: int) -> dict[str, float]:
    """One thread under cProfile: ms per image in all, and the share outside the GIL-free calls."""
    work = jpeg_bench.jaxsup_batches([], antialias)
    work(exs[:jpeg_bench.BATCH])  # warm
    prof = cProfile.Profile(timer=time.process_time)
    prof.runcall(work, exs)
    stats = pstats.Stats(prof).stats
    total = sum(s[2] for s in stats.values())  # tottime over every function = the profiled CPU time
    free = sum(s[2] for (_, _, name), s in stats.items() if any(g in name for g in GIL_FREE))
    return {"ms_per_image": 1e3 * total / len(exs), "gil_share": 1 - free / total}


def run(workers: tuple[int, ...], rounds: int, images: int, warmup: int = 1, steps: int = 0) -> dict[str, Any]:
    """Every row interleaved `rounds` times (after `warmup` rounds); medians and min-max; load per round.

    steps: pipeline batches per row (0: more than the prefetch buffers of the most workers hold)."""
    jpegs = jpeg_bench.photo_set(np.random.default_rng(0), images, jpeg_bench.SETS["400-640px"])
    exs = jpeg_bench.examples(jpegs)
    steps = steps or max(4 * max(workers), 2 * len(jpegs) // jpeg_bench.BATCH)  # > what the buffers hold
    rows: dict[str, tuple[dict, Callable]] = {}
    cpus = os.cpu_count() or 1
    for n in workers:
        over = {"workers": n, "oversubscribed": n > cpus}
        for aa in (1, 0):
            rows[f"bare threads   aa={aa} n={n}"] = ({"how": "threads", "kind": "bare", "antialias": aa, **over},
                                                     bare_threads(exs, aa, n))
            rows[f"bare processes aa={aa} n={n}"] = ({"how": "processes", "kind": "bare", "antialias": aa, **over},
                                                     bare_processes(exs, aa, n))
        rows[f"pipeline threads   aa=1 n={n}"] = ({"how": "threads", "kind": "pipeline", "antialias": 1, **over},
                                                  pipeline_rows(jpegs, n, 0, steps))
        rows[f"pipeline processes aa=1 n={n}"] = ({"how": "processes", "kind": "pipeline", "antialias": 1, **over},
                                                  pipeline_rows(jpegs, 1, n, steps))
    for _ in range(warmup):
        for _, fn in rows.values():
            fn()
    samples: dict[str, list] = {name: [] for name in rows}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg())
        for name, (_, fn) in rows.items():
            wait_quiet()
            samples[name].append(fn())
    return {"cpus": cpus, "rounds": rounds, "images": images, "pipeline_steps": steps,
            "turbo": turbo_jpeg.load_library() is not None, "children_cpu": has_psutil(), "cv2": resize.optional_cv2() is not None,
            "load_per_round": loads, "load_after": os.getloadavg(),
            "gil": {f"aa={aa}": gil_share(exs, aa) for aa in (1, 0)},
            "results": {n: {**meta, **jpeg_bench.summary(samples[n])} for n, (meta, _) in rows.items()}}


def model(report: dict[str, Any], cores: int = 16, reserve: int = 2) -> dict[str, Any]:
    """What a `cores`-core host should give with `cores - reserve` input workers (the rest train).

    processes: the 1-worker bare process rate per CPU-second x the workers; threads: the same,
    capped at one process's GIL limit, 1 / (GIL-held ms per image). The profiler's own overhead
    (profiled minus plain 1-thread CPU time per image) runs under the GIL and is taken out of it."""
    res, out = report["results"], {"cores": cores, "workers": cores - reserve}
    for aa in (1, 0):
        per_core = res[f"bare processes aa={aa} n=1"]["images_per_cpu_s"]
        plain_ms = 1e3 / res[f"bare threads   aa={aa} n=1"]["images_per_cpu_s"]
        gil = report["gil"][f"aa={aa}"]
        held_ms = max(gil["gil_share"] * gil["ms_per_image"] - max(gil["ms_per_image"] - plain_ms, 0.0), 1e-3)
        cap = 1e3 / held_ms
        out[f"aa={aa}"] = {"per_core": per_core, "gil_held_ms": held_ms, "processes": per_core * (cores - reserve),
                           "threads_gil_cap": cap, "threads": min(per_core * (cores - reserve), cap)}
    return out


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['cpus']} cores, {report['images']} JPEGs 400-640 px, medians [min-max] of {report['rounds']} "
          f"rounds, load per round {[round(v[0], 2) for v in report['load_per_round']]}; libjpeg-turbo window "
          f"decode {'on' if report['turbo'] else 'off'}, OpenCV {'on' if report['cv2'] else 'off'}")
    print(f"{'row':34s} {'images/s':>15s} {'img/CPU-s':>15s}")
    for name, r in report["results"].items():
        mark = "  (oversubscribed)" if r["oversubscribed"] else ""
        print(f"{name:34s} {r['images_per_s']:6.0f} [{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}] "
              f"{r['images_per_cpu_s']:6.0f} [{r['images_per_cpu_s_min']:.0f}-{r['images_per_cpu_s_max']:.0f}]{mark}")
    for aa, g in report["gil"].items():
        print(f"GIL share {aa}: {g['gil_share']:.2f} of {g['ms_per_image']:.2f} ms per image")
    m = report["model"]
    for aa in ("aa=1", "aa=0"):
        v = m[aa]
        print(f"model, {m['cores']}-core host, {m['workers']} workers, {aa}: processes {v['processes']:.0f} img/s, "
              f"threads {v['threads']:.0f} img/s (GIL held {v['gil_held_ms']:.2f} ms/image: cap "
              f"{v['threads_gil_cap']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--pipeline-steps", type=int, default=0, help="batches per pipeline row (0: auto)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = run(tuple(int(v) for v in args.workers.split(",")), args.rounds, args.images, args.warmup,
                 args.pipeline_steps)
    report["model"] = model(report)
    print_report(report)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
