"""Store a teacher's supervision beside converted shards: K augmentations per example, top-k logits.

    python -m jaxsup.data.reinforce /data/digits_ar --split train --teacher /runs/teacher \
        --augmentations 8 --topk 5 --dtype float16 --crop size=8,channels=1,scale_min=0.5 --workers 2

For every example of `<data>/<split>` (written by `python -m jaxsup.data.convert`)
it draws K crop boxes and flips (the draws of the host ops `inception_crop` and
`flip_lr`, seeded by (seed, index, augmentation)), renders each crop, runs the
teacher — a jaxsup run's checkpoint (`--teacher` workdir, model from its
config.json; `--params-subtree params/student` for a distilled one) — on them
and writes, per shard, a sidecar array_record into `--out` (default
`<data>/<split>/reinforced`): the parameters, the top-k logits (`--dtype`
float16 / bfloat16 / float32), their indices and the logsumexp of the other
logits at `--temperature` (format: jaxsup/data/host/reinforce_store.py). Storage per
example is printed: bytes_per_example (the records), file_bytes_per_example
(on disk; array_record pads each file to 128 KiB, which small shards show) and
full_logits_bytes_per_example (K float32 logit vectors, for comparison). Train from it with the preprocess op `reinforce:DIR` and
`config.reinforced=DIR` (docs/reinforced.md).

Conventions of the converter: `--workers` processes (one shard each), a
progress bar, a lock on `--out`, resumable (a shard is written to a temporary
file, renamed, then its summary; a rerun keeps finished shards), the same
settings required to resume, and bad input ends in one line naming it. The
output is the same for any worker count, and after a kill and rerun.
"""
from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable

import numpy as np

from jaxsup import checkpoint, registry, workdir as workdir_lib
from jaxsup.data.loader import pipeline
from jaxsup.data.host import reinforce_store as store
from jaxsup.data.datasets import shards
from jaxsup.data.convert.cli import exit_with_parent, progress_bar, write_json
from jaxsup.data.host.image_ops import image_size, op_args
from jaxsup.errors import ConfigError, DataError, JaxsupError

CROP_DEFAULTS = {"size": 224, "scale_min": 0.08, "scale_max": 1.0, "ratio_min": 0.75, "ratio_max": 4 / 3,
                 "channels": 3, "antialias": 1}


# ----------------------------------------------------------------------------- the teacher


def teacher_model(spec: dict[str, Any]) -> Any:
    """The teacher's flax module, from its run's config.json."""
    saved = checkpoint.read_run_config(spec["teacher"])
    if saved is None:
        raise ConfigError(f"--teacher {spec['teacher']!r} has no config.json (not a jaxsup run's workdir).")
    try:
        return registry.get("model", saved["model_name"])(**dict(saved.get("model") or {}))
    except TypeError as err:
        raise ConfigError(f"--teacher {spec['teacher']!r}: its model rejects its config: {err}") from err


def abstract_teacher(model: Any, spec: dict[str, Any]) -> tuple[Any, Any]:
    """(logits ShapeDtypeStruct [1, V], variables ShapeDtypeStructs) of the teacher on one image."""
    import jax

    image = jax.ShapeDtypeStruct((1, spec["size"], spec["size"], spec["channels"]), np.float32)
    (logits, _), variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False),
                                            image)
    return logits, variables


_TEACHERS: dict[str, Callable] = {}


def teacher_targets(spec: dict[str, Any]) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """uint8 images [N, S, S, C] -> (top-k logits [N, k], indices [N, k], lse_rest [N]) as NumPy.

    The images become float32 in [0, 1] as the train pipeline makes them (pipeline.to_global).
    Loaded once per process.
    """
    key = json.dumps(spec, sort_keys=True)
    if key in _TEACHERS:
        return _TEACHERS[key]
    import jax

    model = teacher_model(spec)
    _, abstract = abstract_teacher(model, spec)
    step = None if spec["step"] < 0 else spec["step"]
    variables = {name: checkpoint.restore_subtree(
        spec["teacher"], spec["params_subtree"] if name == "params" else f"{spec['state_subtree']}/{name}",
        target=checkpoint.abstract_tree(tree), step=step) for name, tree in abstract.items()}

    @jax.jit
    def forward(images: jax.Array) -> tuple[jax.Array, ...]:
        logits, _ = model.apply(variables, images, train=False)
        return store.topk_targets(logits, spec["topk"], spec["temperature"])

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def run(images: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = spec["batch_size"]
        outs = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])  # one compiled shape
            result = jax.device_get(forward(pipeline.to_global({"image": padded}, device)["image"]))
            outs.append([np.asarray(r)[:len(chunk)] for r in result])
        return tuple(np.concatenate(parts) for parts in zip(*outs))

    _TEACHERS[key] = run
    return run


# ----------------------------------------------------------------------------- one shard


def sidecar_shard(shard: dict[str, Any], first_index: int, spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Writes <out_dir>/<shard file> (one record per example) and then its .json summary."""
    from array_record.python import array_record_data_source, array_record_module

    name = shard["file"]
    source_path = os.path.join(shards.split_dir(spec["data"], spec["split"]), name)
    final = os.path.join(out_dir, name)
    tmp = final + ".tmp"
    n = shard["num_examples"]
    records = array_record_data_source.ArrayRecordDataSource([source_path]) if n else []
    run = teacher_targets(spec)
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    record_bytes = 0
    try:
        for start in range(0, n, max(1, spec["batch_size"] // spec["augmentations"])):
            stop = min(n, start + max(1, spec["batch_size"] // spec["augmentations"]))
            examples = [shards.decode_record(r) for r in records.__getitems__(list(range(start, stop)))]
            params, images = [], []
            for offset, ex in enumerate(examples):
                where = f"{source_path}: example {first_index + start + offset} ({ex.get('key', '?')!r})"
                width, height = image_size(ex["image"], where)
                boxes, flips = store.draw_params(spec, first_index + start + offset, width, height)
                params.append((ex.get("key", ""), boxes, flips))
                images += [store.render(ex["image"], b, f, spec, where) for b, f in zip(boxes, flips)]
            logits, indices, rest = run(np.stack(images))
            k_aug = spec["augmentations"]
            for e, (key, boxes, flips) in enumerate(params):
                rows = slice(e * k_aug, (e + 1) * k_aug)
                record = store.encode(str(key), boxes, flips, logits[rows], indices[rows], rest[rows], spec)
                record_bytes += len(record)
                writer.write(record)
    finally:
        writer.close()
    os.replace(tmp, final)
    summary = {"file": name, "num_examples": n, "bytes": os.path.getsize(final), "record_bytes": record_bytes}
    write_json(os.path.join(out_dir, name.replace(".array_record", ".json")), summary)
    return summary


# ----------------------------------------------------------------------------- the whole split


def check_plan(out_dir: str, spec: dict[str, Any]) -> None:
    """A rerun must use the settings of the run it resumes (DataError otherwise)."""
    path = os.path.join(out_dir, store.PLAN)
    if not os.path.exists(path):
        write_json(path, spec)
        return
    with open(path) as f:
        old = json.load(f)
    if old != spec:
        changed = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        raise DataError(f"{out_dir} holds a reinforcement with other settings ({', '.join(changed)} differ); "
                        "resume with the same command, or write to a new --out.")


def run_shards(info: dict[str, Any], spec: dict[str, Any], out_dir: str, workers: int,
               progress: bool) -> dict[str, dict]:
    """Sidecars of every shard not done yet; {file: summary}."""
    for tmp in glob.glob(os.path.join(out_dir, "*.tmp")):
        os.remove(tmp)
    jobs, first = [], 0
    for shard in info["shards"]:
        jobs.append((shard, first))
        first += shard["num_examples"]
    done = {}
    for shard, _ in jobs:
        path = os.path.join(out_dir, shard["file"].replace(".array_record", ".json"))
        if os.path.exists(path):
            with open(path) as f:
                done[shard["file"]] = json.load(f)
    todo = [(s, i) for s, i in jobs if s["file"] not in done]
    bar = progress_bar(len(jobs), len(done), progress)
    bar.set_description("reinforce")
    try:
        if workers <= 1:
            for shard, index in todo:
                done[shard["file"]] = sidecar_shard(shard, index, spec, out_dir)
                bar.update(1)
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(sidecar_shard, shard, index, spec, out_dir) for shard, index in todo]
                for future in as_completed(futures):
                    summary = future.result()
                    done[summary["file"]] = summary
                    bar.update(1)
    finally:
        bar.close()
    return done


def make_spec(data: str, split: str, teacher: str, augmentations: int = 4, topk: int = 5, dtype: str = "float16",
              temperature: float = 1.0, seed: int = 0, crop: str = "", flip_prob: float = 0.5,
              batch_size: int = 256, params_subtree: str = "params", state_subtree: str = "task_state",
              step: int = -1) -> dict[str, Any]:
    """The settings (also the resume plan); num_classes from the teacher's model. ConfigError on a bad one."""
    kw = op_args("--crop", crop, CROP_DEFAULTS, bare="size")
    if augmentations < 1 or batch_size < 1 or not temperature > 0 or not 0 <= flip_prob <= 1:
        raise ConfigError(f"--augmentations {augmentations} and --batch-size {batch_size} must be >= 1, "
                          f"--temperature {temperature} > 0 and --flip {flip_prob} in [0, 1].")
    if dtype not in store.DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {sorted(store.DTYPES)}.")
    if not os.path.isdir(teacher):
        raise ConfigError(f"--teacher {teacher!r} does not exist (give a jaxsup run's workdir).")
    spec = {"data": os.path.abspath(data), "split": split, "teacher": os.path.abspath(teacher),
            "params_subtree": params_subtree, "state_subtree": state_subtree, "step": step,
            "augmentations": augmentations, "topk": topk, "dtype": dtype, "temperature": float(temperature),
            "seed": seed, "size": kw["size"], "channels": kw["channels"], "antialias": kw["antialias"],
            "scale": [kw["scale_min"], kw["scale_max"]], "ratio": [kw["ratio_min"], kw["ratio_max"]],
            "flip_prob": float(flip_prob), "batch_size": batch_size}
    logits, _ = abstract_teacher(teacher_model(spec), spec)
    spec["num_classes"] = int(logits.shape[-1])
    if not 1 <= topk <= spec["num_classes"]:
        raise ConfigError(f"--topk {topk} must lie in [1, {spec['num_classes']}] (the teacher's classes).")
    return spec


def reinforce(spec: dict[str, Any], out: str = "", workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Writes the reinforcement of spec's split into `out` (default <data>/<split>/reinforced); its info."""
    info = shards.read_split_info(spec["data"], spec["split"])
    out_dir = out or os.path.join(shards.split_dir(spec["data"], spec["split"]), "reinforced")
    os.makedirs(out_dir, exist_ok=True)
    with workdir_lib.WorkdirLock(out_dir, what="Output folder", option="--out"):
        check_plan(out_dir, spec)
        done = run_shards(info, spec, out_dir, workers, progress)
        summaries = [done[s["file"]] for s in info["shards"]]
        total = sum(s["bytes"] for s in summaries)
        n = sum(s["num_examples"] for s in summaries)
        result = {**spec, "num_examples": n, "bytes": total, "file_bytes_per_example": total / max(n, 1),
                  "bytes_per_example": sum(s["record_bytes"] for s in summaries) / max(n, 1),
                  "full_logits_bytes_per_example": spec["augmentations"] * spec["num_classes"] * 4,
                  "shards": [{"file": s["file"], "num_examples": s["num_examples"]} for s in summaries]}
        write_json(os.path.join(out_dir, store.INFO), result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxsup.data.reinforce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a converted dataset (config.data.path)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--teacher", required=True, help="a jaxsup run's workdir")
    parser.add_argument("--params-subtree", default="params", help="params/student for a distilled teacher")
    parser.add_argument("--state-subtree", default="task_state")
    parser.add_argument("--step", type=int, default=-1, help="checkpoint step (-1: latest)")
    parser.add_argument("--out", default="", help="default <data>/<split>/reinforced")
    parser.add_argument("--augmentations", type=int, default=4, help="K per example")
    parser.add_argument("--topk", type=int, default=5, help="logits kept per augmentation")
    parser.add_argument("--dtype", default="float16", choices=sorted(store.DTYPES))
    parser.add_argument("--temperature", type=float, default=1.0, help="of the stored rest logsumexp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", default="", help="inception_crop's arguments, e.g. size=8,channels=1")
    parser.add_argument("--flip", type=float, default=0.5, help="left-right flip probability")
    parser.add_argument("--batch-size", type=int, default=256, help="images per teacher forward")
    parser.add_argument("--workers", type=int, default=1, help="processes (one shard each)")
    args = parser.parse_args(argv)
    try:
        spec = make_spec(args.data, args.split, args.teacher, args.augmentations, args.topk, args.dtype,
                         args.temperature, args.seed, args.crop, args.flip, args.batch_size, args.params_subtree,
                         args.state_subtree, args.step)
        result = reinforce(spec, args.out, args.workers, progress=True)
    except JaxsupError as err:
        print(f"jaxsup.data.reinforce: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxsup.data.reinforce: error: {err.filename or args.out}: {err.strerror or err} (finished shards "
              "are kept; rerun the same command to resume).", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("num_examples", "augmentations", "topk", "dtype", "bytes_per_example",
                                             "file_bytes_per_example", "full_logits_bytes_per_example")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
