"""Host input pipeline: images/s and images per CPU-second, and the digits train loop vs a minimal loop.

    python benchmarks/input_pipeline.py [--rounds 3] [--batches 30] [--jpegs 256] [--steps 300]
    python benchmarks/input_pipeline.py --jpeg [--rounds 5] [--small 192] [--large 48] [--json out.json]

All in one run, each measurement repeated `--rounds` times interleaved with
the others (medians), wall time and CPU time (this process + its grain worker
processes, via psutil) side by side:

  pipeline rows   batches from `jaxsup.data.loader.pipeline.train_iterator` for
                  (a) digits (the default config's ops, in-memory split),
                  (b) ~500x375 JPEGs generated here -> decode, 224 inception crop, flip,
                  (c) JPEG + caption pairs -> 224 inception crop, caption pick, byte tokens,
                  each with 1 and 2 worker threads and 2 worker processes, and a bare
                  Pillow loop doing (b)'s work without the pipeline (reference);
  loop rows       the digits train loop (`jaxsup.train.train_and_evaluate`, the
                  default CNN config without evals/checkpoints; rate of its logged
                  steady-state steps), the compiled train step alone on one device
                  batch, and a minimal in-memory flax+optax loop (same CNN, same
                  optax chain, same batch size, batches cut from NumPy arrays); both loops
                  report the median rate over intervals of LOG_EVERY steps that end in a
                  host sync, after the first interval.

--jpeg runs only the JPEG decode comparison (benchmarks/jpeg_bench.py): jaxsup's
libjpeg-turbo window decode vs its Pillow path, antialias on and off, 1 and 2 threads, on
400-640 px and 1000-2000 px photo-like JPEGs (q85-95, 4:2:0 and 4:4:4), plus tf.data's
decode_and_crop_jpeg on the same windows when TensorFlow is importable (the `[tf]` extra, in a
side venv; without it the column is skipped and the report says so). Every contender makes
uint8 [32, 224, 224, 3] batches; medians with min-max over the rounds; load averages recorded
before, after and at each round.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from jaxsup import registry
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources
from jaxsup.optim import make_optimizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jpeg_bench  # noqa: E402  (sibling modules, not a package)
from bench_io import write_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JPEG_OPS = ("inception_crop:224", "flip_lr", "keep:image")  # bytes in: decoded inside the crop op
TEXT_OPS = ("inception_crop:224", "flip_lr", "pick_caption:feature=caption,choice=hash",
            "tokenize:max_len=64,tokenizer=bytes", "keep:image,tokens")
WORKERS = ((1, 0), (2, 0), (1, 2))  # (threads, processes)
LOG_EVERY = 25  # the train loop's log interval here; both loops are timed over such intervals (median)


def cpu_seconds() -> float:
    """CPU seconds of this process (ns resolution) and its live children (grain workers; psutil, tick resolution)."""
    total = time.process_time()
    try:
        import psutil
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def photo_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375) -> bytes:
    """A ~500x375 JPEG (quality 90) of smooth shapes plus noise, roughly photo-like in size (~60 KB)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy, phase = rng.uniform(5, 40, 3)
    base = np.stack([x / width * 255, y / height * 255, 128 + 120 * np.sin(x / fx + phase) * np.cos(y / fy)], -1)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pipeline_rate(source: Any, ops: tuple[str, ...], batch: int, batches: int, threads: int, processes: int
                  ) -> tuple[float, float]:
    """(images/s, images per CPU-second) of `batches` train batches after the first (warm-up) one."""
    ds = pipeline.train_dataset(source, preprocess.build(ops), batch, seed=0, process_count=1)
    it = pipeline.train_iterator(ds, 0, 0, 1, prefetch=4, workers=threads, processes=processes)
    next(it)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    if hasattr(it, "close"):
        it.close()
    return batches * batch / wall, batches * batch / max(cpu, 1e-9)


def pillow_reference(jpegs: list[bytes]) -> tuple[float, float]:
    """(images/s, images per CPU-second) of a bare Pillow loop: full decode, crop (central 80 %), antialiased
    bilinear resize to 224, flip; no pipeline, one thread (the plain-Python reference for row (b))."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    for data in jpegs:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        box = (0.1 * w, 0.1 * h, 0.9 * w, 0.9 * h)
        np.asarray(image.resize((224, 224), Image.BILINEAR, box=box))[:, ::-1]
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return len(jpegs) / wall, len(jpegs) / max(cpu, 1e-9)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits train split in memory: images float32 [N, 8, 8, 1] in [0, 1], labels int32 [N]."""
    source = sources.open_source("digits", "train")
    examples = [source[i] for i in range(len(source))]
    images = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0
    return images, np.asarray([e["label"] for e in examples], np.int32)


def minimal_loop(config: Any, steps: int) -> Callable[[], tuple[float, float]]:
    """A 60-line-style flax+optax loop on in-memory digits; returns run() -> (images/s, images per CPU-s)."""
    images, labels = digits_arrays()
    model = registry.get("model", config.model_name)(**config.model.to_dict())
    params = model.init(jax.random.key(0), jnp.asarray(images[:1]), train=False)["params"]
    optimizer, _ = make_optimizer(config.optim, config.total_steps)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, optimizer.init(params)]
    rng = np.random.default_rng(0)
    b = config.batch_size

    def run() -> tuple[float, float]:
        """Median rate over intervals of LOG_EVERY steps, each ended by a host sync (as the train loop logs)."""
        idx = [rng.permutation(len(images)) for _ in range(steps * b // len(images) + 2)]
        order = np.concatenate(idx)
        p, o, _ = step(*state, images[order[:b]], labels[order[:b]])  # warm (compiled once)
        rates, cpu = [], cpu_seconds()
        t = time.perf_counter()
        for s in range(steps):
            rows = order[s * b:(s + 1) * b]
            p, o, loss = step(p, o, images[rows], labels[rows])
            if (s + 1) % LOG_EVERY == 0:
                float(loss)
                now = time.perf_counter()
                rates.append(LOG_EVERY * b / (now - t))
                t = now
        state[:] = [p, o]
        return statistics.median(rates[1:]), steps * b / (cpu_seconds() - cpu)

    return run


def jaxsup_loop(config: Any) -> Callable[[], tuple[float, float]]:
    """`jaxsup.train.train_and_evaluate` on digits; median rate of its logged intervals after the first
    (steady state, compile excluded; the CPU column is not split out for it)."""
    from jaxsup.train import train_and_evaluate

    def run() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as workdir:
            train_and_evaluate(config, workdir)
            records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "perf/examples_per_s" in r]
        return statistics.median(r["perf/examples_per_s"] for r in records[1:]), float("nan")  # no CPU split

    return run


def read_jsonl(path: str) -> list[dict]:
    import json

    with open(path) as f:
        return [json.loads(line) for line in f]


def compiled_step_rate(config: Any, steps: int) -> Callable[[], tuple[float, float]]:
    """The compiled jaxsup train step alone on one device batch (benchmarks/train_step.py's build)."""
    from train_step import build_train_step, tiled_batch

    from jaxsup import sharding

    mesh = sharding.make_mesh(config.mesh)
    built = build_train_step(config, mesh, tiled_batch(config, config.batch_size))
    state = [built.state]

    def run() -> tuple[float, float]:
        st, _ = built.step(state[0], built.frozen, built.batch)
        jax.block_until_ready(st)
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(steps):
            st, metrics = built.step(st, built.frozen, built.batch)
        jax.block_until_ready(st)
        state[0] = st
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        return steps * config.batch_size / wall, steps * config.batch_size / cpu

    return run


def tf_data_note() -> str:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return "tf.data: skipped (TensorFlow is not installed; `pip install 'jaxsup[tf]'` adds the column)"
    return "tf.data: TensorFlow is installed; its column is in --jpeg (decode_and_crop_jpeg)"


def interleaved(cases: dict[str, Callable[[], tuple[float, float]]], rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (median images/s, median images per CPU-s) over `rounds` interleaved runs."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(fn())
    return {n: (statistics.median(a for a, _ in r), statistics.median(c for _, c in r)) for n, r in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=30, help="batches per pipeline measurement")
    parser.add_argument("--jpegs", type=int, default=256, help="generated JPEGs")
    parser.add_argument("--steps", type=int, default=300, help="train steps per loop measurement")
    parser.add_argument("--jpeg", action="store_true", help="only the JPEG decode comparison (jpeg_bench.py)")
    parser.add_argument("--small", type=int, default=192, help="--jpeg: 400-640 px JPEGs")
    parser.add_argument("--large", type=int, default=64, help="--jpeg: 1000-2000 px JPEGs")
    parser.add_argument("--json", default=None, help="--jpeg: also write the report here")
    args = parser.parse_args()
    if args.jpeg:
        report = jpeg_bench.run_sets(args.small, args.large, args.rounds, threads=(1, 2))
        jpeg_bench.print_report(report)
        write_report(report, args.json)
        return

    rng = np.random.default_rng(0)
    jpegs = [photo_jpeg(rng) for _ in range(args.jpegs)]
    kb = statistics.mean(len(j) for j in jpegs) / 1024
    image_text = [{"image": j, "caption": f"a photo number {i} of a thing".encode()} for i, j in enumerate(jpegs)]
    digits = sources.open_source("digits", "train")
    config = load_config(os.path.join(ROOT, "configs/supervised_digits.py"), {
        "total_steps": args.steps, "log_every": LOG_EVERY, "checkpoint.every": 10**9, "evals": {},
        "mesh": (("data", 1),)})
    digits_ops = tuple(config.data.preprocess)

    cases: dict[str, Callable[[], tuple[float, float]]] = {}
    for threads, procs in WORKERS:
        tag = f"threads={threads} procs={procs}"
        cases[f"(a) digits       {tag}"] = lambda t=threads, p=procs: pipeline_rate(digits, digits_ops, 128, args.batches * 10, t, p)
        cases[f"(b) jpeg->224    {tag}"] = lambda t=threads, p=procs: pipeline_rate(jpegs_source(jpegs), JPEG_OPS, 32, args.batches, t, p)
        cases[f"(c) image-text   {tag}"] = lambda t=threads, p=procs: pipeline_rate(image_text, TEXT_OPS, 32, args.batches, t, p)
    cases["(b) bare Pillow loop (reference)"] = lambda: pillow_reference(jpegs)
    cases["digits: jaxsup train loop"] = jaxsup_loop(config)
    cases["digits: compiled step alone"] = compiled_step_rate(config, args.steps)
    cases["digits: minimal flax+optax loop"] = minimal_loop(config, args.steps)
    results = interleaved(cases, args.rounds)

    print(f"host: {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), rounds={args.rounds} "
          f"(median, interleaved); JPEGs 500x375 q90 ~{kb:.0f} KB")
    print(f"{'case':50s} {'images/s':>10s} {'img/CPU-s':>10s}")
    for name, (rate, per_cpu) in results.items():
        print(f"{name:50s} {rate:10.0f} {per_cpu:10.0f}")
    ref = results["digits: minimal flax+optax loop"][0]
    print(f"digits train loop / minimal loop: {results['digits: jaxsup train loop'][0] / ref:.2f}x; "
          f"compiled step / minimal loop: {results['digits: compiled step alone'][0] / ref:.2f}x")
    print(tf_data_note())


def jpegs_source(jpegs: list[bytes]) -> list[dict]:
    return [{"image": j} for j in jpegs]


if __name__ == "__main__":
    main()
