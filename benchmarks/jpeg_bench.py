"""JPEG -> random-resized 224 crop + flip: jaxsup's libjpeg-turbo window decode vs its Pillow path
(and tf.data's decode_and_crop_jpeg when TensorFlow is importable), used by input_pipeline.py --jpeg.

Every contender does the same work on the same bytes: the crop window that jaxsup's
inception_crop draws for (seed 0, epoch 0, index i), bilinear resize to 224 x 224 with
antialias on or off, the same left-right flip, uint8 out. Threads split the list in
contiguous chunks; CPU seconds are the whole process's (all threads).
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


def threaded(fn: Callable[[list], Any], items: list, threads: int) -> None:
    """fn over `threads` contiguous chunks of items, in parallel."""
    if threads == 1:
        fn(items)
        return
    chunks = [items[k::threads] for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, chunks))


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


def jaxsup_case(jpegs: list[bytes], antialias: int, extra: bool, threads: int) -> Callable[[], tuple[float, float]]:
    """jaxsup's ops (`inception_crop:224,antialias=A`, `flip_lr`) per example, no pipeline."""
    op = preprocess.build([f"inception_crop:size=224,antialias={antialias}", "flip_lr"])
    exs = examples(jpegs)
    return lambda: backends(extra, lambda: timed(
        lambda: threaded(lambda chunk: [op(ex) for ex in chunk], exs, threads), len(exs)))


def pipeline_case(jpegs: list[bytes], extra: bool, threads: int, batch: int = 16) -> Callable[[], tuple[float, float]]:
    """The same ops (antialias on) as batches from `pipeline.train_iterator` (`threads` worker threads).

    Timed from a full prefetch buffer to a full one again: `steps` batches taken, and exactly
    `steps` made inside the window (the refill after the last `next` counted, the idle check not).
    """
    ops = preprocess.build(["inception_crop:224", "flip_lr", "keep:image"])
    steps = len(jpegs) // batch

    def run() -> tuple[float, float]:
        ds = pipeline.train_dataset([{"image": j} for j in jpegs], ops, batch, seed=0, process_count=1)
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
        return steps * batch / wall, steps * batch / max(cpu, 1e-9)

    return lambda: backends(extra, run)


def crop_plan(jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """jaxsup's windows (top, left, h, w) int32 [N, 4] and flips bool [N] for these examples."""
    boxes, flips = [], []
    for ex in examples(jpegs):
        width, height = image_ops.image_size(ex["image"], "bench")
        rng = preprocess.example_rng(ex, "inception_crop:size=224,antialias=0")
        left, top, w, h = image_ops.sample_inception_box(rng, width, height, (0.08, 1.0), (3 / 4, 4 / 3))
        boxes.append((top, left, h, w))
        flips.append(preprocess.example_rng(ex, "flip_lr:").uniform() < 0.5)
    return np.asarray(boxes, np.int32), np.asarray(flips)


def tf_case(jpegs: list[bytes], antialias: int, threads: int) -> Callable[[], tuple[float, float]] | None:
    """tf.data: decode_and_crop_jpeg on jaxsup's windows, tf.image.resize bilinear, flip; None without TF."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    boxes, flips = crop_plan(jpegs)

    def one(data, box, flip):
        image = tf.image.decode_and_crop_jpeg(data, box, channels=3)
        image = tf.image.resize(image, (224, 224), "bilinear", antialias=bool(antialias))
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = tf.data.Dataset.from_tensor_slices((jpegs, boxes, flips)).map(one, num_parallel_calls=threads)
    ds = ds.with_options(options)

    def run() -> tuple[float, float]:
        return timed(lambda: [None for _ in ds.as_numpy_iterator()], len(jpegs))

    return run


def wait_idle(quiet_s: float = 0.05, timeout_s: float = 10.0) -> float:
    """Sleeps until this process used < 10 % of a core over `quiet_s` (a previous contender's
    prefetch threads done), so no contender pays for another's background work; returns the
    wall seconds of the final, quiet sleep (not work)."""
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


def cases(jpegs: list[bytes], threads: tuple[int, ...]) -> dict[str, Callable[[], tuple[float, float]]]:
    """name -> run() for every contender on one image set."""
    out: dict[str, Callable[[], tuple[float, float]]] = {}
    extra = turbo_jpeg.load_library() is not None and resize.optional_cv2() is not None
    for t in threads:
        for aa in (1, 0):
            if extra:
                out[f"jaxsup [jpeg]  aa={aa} threads={t}"] = jaxsup_case(jpegs, aa, True, t)
            out[f"jaxsup Pillow  aa={aa} threads={t}"] = jaxsup_case(jpegs, aa, False, t)
            tf_run = tf_case(jpegs, aa, t)
            if tf_run is not None:
                out[f"tf.data        aa={aa} threads={t}"] = tf_run
        if extra:
            out[f"jaxsup [jpeg]  pipeline threads={t}"] = pipeline_case(jpegs, True, t)
        out[f"jaxsup Pillow  pipeline threads={t}"] = pipeline_case(jpegs, False, t)
    return out


def run_sets(count_small: int, count_large: int, rounds: int, threads: tuple[int, ...]) -> dict[str, Any]:
    """Every set's contenders, interleaved `rounds` times (after one warm-up); medians; load recorded."""
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"load_before": os.getloadavg(), "rounds": rounds, "cpus": os.cpu_count(),
                              "tf_data": tf_available(), "turbo": turbo_jpeg.load_library() is not None,
                              "cv2": resize.optional_cv2() is not None, "sets": {}}
    for name, count in (("400-640px", count_small), ("1000-2000px", count_large)):
        jpegs = photo_set(rng, count, SETS[name])
        contenders = cases(jpegs, threads)
        for fn in contenders.values():
            fn()  # warm-up: first-call costs (tf graph, thread pools) out of the medians
        samples: dict[str, list[tuple[float, float]]] = {n: [] for n in contenders}
        for _ in range(rounds):
            for n, fn in contenders.items():
                wait_idle()
                samples[n].append(fn())
        report["sets"][name] = {
            "images": count, "mean_kb": statistics.mean(len(j) for j in jpegs) / 1024,
            "results": {n: {"images_per_s": statistics.median(a for a, _ in s),
                            "images_per_cpu_s": statistics.median(c for _, c in s)} for n, s in samples.items()}}
    report["load_after"] = os.getloadavg()
    return report


def tf_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def print_report(report: dict[str, Any]) -> None:
    print(f"JPEG -> 224 crop + flip; {report['cpus']} cores, load {report['load_before']} -> {report['load_after']}, "
          f"medians of {report['rounds']} interleaved rounds; tf.data column: "
          f"{'yes' if report['tf_data'] else 'skipped (TensorFlow not importable)'}")
    for name, block in report["sets"].items():
        print(f"-- {name}: {block['images']} JPEGs, mean {block['mean_kb']:.0f} KB")
        print(f"{'contender':36s} {'images/s':>9s} {'img/CPU-s':>10s} {'vs Pillow':>9s}")
        res = block["results"]
        for n, r in res.items():
            ref = res.get("jaxsup Pillow " + n[14:])
            ratio = r["images_per_cpu_s"] / ref["images_per_cpu_s"] if ref else float("nan")
            print(f"{n:36s} {r['images_per_s']:9.0f} {r['images_per_cpu_s']:10.0f} {ratio:9.2f}")
