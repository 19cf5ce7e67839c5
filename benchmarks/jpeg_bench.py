"""JPEG -> uint8 [32, 224, 224, 3] batches by random-resized crop + flip: jaxsup's libjpeg-turbo window
decode, its Pillow path and tf.data's decode_and_crop_jpeg (when TensorFlow is importable), in one run.

Every contender does the same work on the same bytes: the crop window that jaxsup's
inception_crop draws for (seed 0, epoch 0, index i), a bilinear resize to 224 x 224 with
antialias on or off, the same left-right flip, batches of 32 stacked, uint8 out. Threads
split the list in contiguous chunks; CPU seconds are the whole process's (all threads,
TensorFlow's pools included). Used by `input_pipeline.py --jpeg`; jpeg_tables.py makes the
docs' tables from its JSON.
"""
from __future__ import annotations

import io
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
from PIL import Image

from jaxsup.data.host import image_ops, preprocess, resize, turbo_jpeg
from jaxsup.data.loader import pipeline

SETS = {"400-640px": (400, 640), "1000-2000px": (1000, 2000)}
BATCH = 32
Run = Callable[[], tuple[float, float]]  # -> (images/s, images per CPU-second)


def photo_array(rng: np.random.Generator, width: int, height: int, noise: float = 8.0) -> np.ndarray:
    """Photo-like uint8 [H, W, 3]: smooth colour ramps, a soft texture at a random scale, Gaussian noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy, phase = rng.uniform(5, 40, 3) * max(width, height) / 500
    base = np.stack([x / width * 255, y / height * 255, 128 + 120 * np.sin(x / fx + phase) * np.cos(y / fy)], -1)
    return np.clip(base + rng.normal(0, noise, base.shape).astype(np.float32), 0, 255).astype(np.uint8)


def photo_set(rng: np.random.Generator, count: int, sides: tuple[int, int]) -> list[bytes]:
    """`count` JPEGs, sides uniform in `sides`, quality 85-95, half 4:2:0 and half 4:4:4."""
    out = []
    for i in range(count):
        width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        buf = io.BytesIO()
        Image.fromarray(photo_array(rng, width, height)).save(
            buf, "JPEG", quality=int(rng.integers(85, 96)), subsampling=2 if i % 2 == 0 else 0)
        out.append(buf.getvalue())
    return out


def examples(jpegs: list[bytes]) -> list[dict]:
    return [{"image": j, preprocess.RNG_KEY: np.asarray([0, 0, i], np.uint32)} for i, j in enumerate(jpegs)]


def threaded(fn: Callable[[list], Any], items: list, threads: int) -> list:
    """[fn(chunk) for each of `threads` contiguous chunks of items], run in parallel."""
    if threads == 1:
        return [fn(items)]
    chunks = [items[k * len(items) // threads:(k + 1) * len(items) // threads] for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, chunks))


def backends(extra: bool, fn: Callable[[], Any]) -> Any:
    """fn() with the `[jpeg]` extra's paths on, or off (Pillow alone: JAXSUP_JPEG=pillow, no OpenCV)."""
    saved = resize.optional_cv2
    os.environ["JAXSUP_JPEG"] = "auto" if extra else "pillow"
    if not extra:
        resize.optional_cv2 = lambda: None
    try:
        return fn()
    finally:
        os.environ.pop("JAXSUP_JPEG", None)
        resize.optional_cv2 = saved


def jaxsup_batches(jpegs: list[bytes], antialias: int) -> Callable[[list], list[np.ndarray]]:
    """chunk of examples -> uint8 [<=32, 224, 224, 3] batches through jaxsup's ops (no pipeline)."""
    op = preprocess.build([f"inception_crop:size=224,antialias={antialias}", "flip_lr"])
    return lambda chunk: [np.stack([op(ex)["image"] for ex in chunk[i:i + BATCH]])
                          for i in range(0, len(chunk), BATCH)]


def jaxsup_case(jpegs: list[bytes], antialias: int, extra: bool, threads: int) -> Run:
    """jaxsup's ops (`inception_crop:224,antialias=A`, `flip_lr`) per example, stacked in 32s."""
    work, exs = jaxsup_batches(jpegs, antialias), examples(jpegs)
    return lambda: backends(extra, lambda: timed(lambda: threaded(work, exs, threads), len(exs)))


def pipeline_case(jpegs: list[bytes], extra: bool, threads: int) -> Run:
    """The same ops (antialias on) as batches of 32 from `pipeline.train_iterator` (`threads` workers).

    Timed from a full prefetch buffer to a full one again: `steps` batches taken, and exactly
    `steps` made inside the window (the refill after the last `next` counted, the idle check not).
    """
    ops = preprocess.build(["inception_crop:224", "flip_lr", "keep:image"])
    steps = len(jpegs) // BATCH

    def run() -> tuple[float, float]:
        ds = pipeline.train_dataset([{"image": j} for j in jpegs], ops, BATCH, seed=0, process_count=1)
        it = pipeline.train_iterator(ds, 0, 0, 1, prefetch=4, workers=threads, processes=0)
        next(it)
        wait_idle()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next(it)
        quiet = wait_idle()
        wall, cpu = time.perf_counter() - wall - quiet, time.process_time() - cpu
        if hasattr(it, "close"):
            it.close()
        return steps * BATCH / wall, steps * BATCH / max(cpu, 1e-9)

    return lambda: backends(extra, run)


def crop_plan(jpegs: list[bytes], antialias: int) -> tuple[np.ndarray, np.ndarray]:
    """jaxsup's windows (top, left, h, w) int32 [N, 4] and flips bool [N] for these examples (the
    op's spec, antialias included, salts its RNG)."""
    boxes, flips = [], []
    for ex in examples(jpegs):
        width, height = image_ops.image_size(ex["image"], "bench")
        rng = preprocess.example_rng(ex, f"inception_crop:size=224,antialias={antialias}")
        left, top, w, h = image_ops.sample_inception_box(rng, width, height, (0.08, 1.0), (3 / 4, 4 / 3))
        boxes.append((top, left, h, w))
        flips.append(preprocess.example_rng(ex, "flip_lr:").uniform() < 0.5)
    return np.asarray(boxes, np.int32), np.asarray(flips)


def tf_dataset(jpegs: list[bytes], antialias: int, threads: int) -> Any:
    """tf.data: decode_and_crop_jpeg on jaxsup's windows, tf.image.resize bilinear, flip, batch 32;
    `threads` map calls on a private pool of that size, one intra-op thread (tf.data's best
    per-core setting); None without TensorFlow."""
    tf = optional_tf()
    if tf is None:
        return None
    boxes, flips = crop_plan(jpegs, antialias)

    def one(data, box, flip):
        image = tf.image.decode_and_crop_jpeg(data, box, channels=3)
        image = tf.image.resize(image, (224, 224), "bilinear", antialias=bool(antialias))
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = tf.data.Dataset.from_tensor_slices((jpegs, boxes, flips)).map(one, num_parallel_calls=threads)
    return ds.batch(BATCH).with_options(options)


def tf_case(jpegs: list[bytes], antialias: int, threads: int) -> Run | None:
    ds = tf_dataset(jpegs, antialias, threads)
    return None if ds is None else (lambda: timed(lambda: list(ds.as_numpy_iterator()), len(jpegs)))


def agreement(jpegs: list[bytes]) -> dict[str, float]:
    """Mean abs difference per pixel (uint8 levels) of the first batch between the contenders."""
    first = jpegs[:BATCH]
    out = {}
    for aa in (1, 0):
        ours = backends(True, lambda: jaxsup_batches(first, aa)(examples(first))[0]).astype(np.int16)
        pillow = backends(False, lambda: jaxsup_batches(first, aa)(examples(first))[0]).astype(np.int16)
        out[f"[jpeg] vs Pillow aa={aa}"] = float(np.abs(ours - pillow).mean())
        ds = tf_dataset(first, aa, 1)
        if ds is not None:
            theirs = next(ds.as_numpy_iterator()).astype(np.int16)
            out[f"[jpeg] vs tf.data aa={aa}"] = float(np.abs(ours - theirs).mean())
    return out


def wait_idle(quiet_s: float = 0.05, timeout_s: float = 10.0) -> float:
    """Sleeps until this process used < 10 % of a core over `quiet_s` (a previous contender's
    threads done), so no contender pays for another's background work; returns the wall
    seconds of the final, quiet sleep (not work)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(quiet_s)
        if time.process_time() - cpu < 0.1 * quiet_s:
            return time.perf_counter() - wall
    return 0.0


def timed(fn: Callable[[], Any], count: int) -> tuple[float, float]:
    """(images/s, images per CPU-second of this process) of one call of fn over `count` images."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return count / wall, count / max(cpu, 1e-9)


def cases(jpegs: list[bytes], threads: tuple[int, ...]) -> dict[str, tuple[dict, Run]]:
    """name -> ({impl, antialias, threads, kind}, run()) for every contender on one image set."""
    out: dict[str, tuple[dict, Run]] = {}
    extra = turbo_jpeg.load_library() is not None and resize.optional_cv2() is not None

    def add(impl: str, kind: str, aa: int, t: int, run: Run | None) -> None:
        if run is not None:
            label = f"{impl} {'pipeline ' if kind == 'pipeline' else ''}aa={aa} threads={t}"
            out[label] = ({"impl": impl, "kind": kind, "antialias": aa, "threads": t}, run)

    for t in threads:
        for aa in (1, 0):
            add("jaxsup [jpeg]", "op", aa, t, jaxsup_case(jpegs, aa, True, t) if extra else None)
            add("jaxsup Pillow", "op", aa, t, jaxsup_case(jpegs, aa, False, t))
            add("tf.data", "op", aa, t, tf_case(jpegs, aa, t))
        add("jaxsup [jpeg]", "pipeline", 1, t, pipeline_case(jpegs, True, t) if extra else None)
        add("jaxsup Pillow", "pipeline", 1, t, pipeline_case(jpegs, False, t))
    return out


def summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Median, min and max of images/s and of images per CPU-second over the rounds."""
    out: dict[str, Any] = {}
    for i, key in enumerate(("images_per_s", "images_per_cpu_s")):
        values = [s[i] for s in samples]
        out[key] = statistics.median(values)
        out[key + "_min"], out[key + "_max"] = min(values), max(values)
    out["samples"] = samples
    return out


def run_set(jpegs: list[bytes], rounds: int, threads: tuple[int, ...]) -> dict[str, Any]:
    """One set's contenders, interleaved `rounds` times after one warm-up; load before each round."""
    contenders = cases(jpegs, threads)
    for _, fn in contenders.values():
        fn()  # warm-up: first-call costs (tf graph, thread pools) out of the medians
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in contenders}
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg())
        for name, (_, fn) in contenders.items():
            wait_idle()
            samples[name].append(fn())
    return {"images": len(jpegs), "mean_kb": statistics.mean(len(j) for j in jpegs) / 1024,
            "load_per_round": loads, "mean_abs_diff": agreement(jpegs),
            "results": {n: {**meta, **summary(samples[n])} for n, (meta, _) in contenders.items()}}


def run_sets(count_small: int, count_large: int, rounds: int, threads: tuple[int, ...]) -> dict[str, Any]:
    """Both sets (generated from seed 0), each interleaved `rounds` times; load averages recorded."""
    rng = np.random.default_rng(0)
    tf = optional_tf()
    report: dict[str, Any] = {
        "load_before": os.getloadavg(), "rounds": rounds, "cpus": os.cpu_count(), "batch": BATCH,
        "tf_data": tf.__version__ if tf is not None else None, "turbo": turbo_jpeg.load_library() is not None,
        "cv2": resize.optional_cv2() is not None, "pillow": Image.__version__, "sets": {}}
    for name, count in (("400-640px", count_small), ("1000-2000px", count_large)):
        if count:
            report["sets"][name] = run_set(photo_set(rng, count, SETS[name]), rounds, threads)
    report["load_after"] = os.getloadavg()
    return report


def optional_tf() -> Any:
    """tensorflow (its CPU pools quiet in the log), or None when it is not importable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf


def ratio(res: dict, row: dict, impl: str) -> float:
    """row's img/CPU-s over that of `impl`'s row for the same work (nan when there is none)."""
    ref = next((r for r in res.values() if r["impl"] == impl and
                all(r[k] == row[k] for k in ("kind", "antialias", "threads"))), None)
    return row["images_per_cpu_s"] / ref["images_per_cpu_s"] if ref else float("nan")


def print_report(report: dict[str, Any]) -> None:
    load = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    print(f"JPEG -> [{report['batch']}, 224, 224, 3] crop + flip; {report['cpus']} cores, load "
          f"{load(report['load_before'])} -> {load(report['load_after'])}, medians [min-max] of "
          f"{report['rounds']} interleaved rounds; tf.data: "
          f"{report['tf_data'] or 'skipped (TensorFlow not importable)'}")
    for name, block in report["sets"].items():
        print(f"-- {name}: {block['images']} JPEGs, mean {block['mean_kb']:.0f} KB; mean abs diff "
              + ", ".join(f"{k} {v:.2f}" for k, v in block["mean_abs_diff"].items()))
        print(f"{'contender':40s} {'images/s':>15s} {'img/CPU-s':>15s} {'vs Pillow':>9s} {'vs tf':>6s}")
        res = block["results"]
        for n, r in res.items():
            wall = f"{r['images_per_s']:.0f} [{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}]"
            cpu = f"{r['images_per_cpu_s']:.0f} [{r['images_per_cpu_s_min']:.0f}-{r['images_per_cpu_s_max']:.0f}]"
            print(f"{n:40s} {wall:>15s} {cpu:>15s} {ratio(res, r, 'jaxsup Pillow'):9.2f} "
                  f"{ratio(res, r, 'tf.data'):6.2f}")
