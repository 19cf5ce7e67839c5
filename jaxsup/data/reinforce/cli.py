"""Store teachers' supervision beside converted shards: K augmentations per example and their targets.

    python -m jaxsup.data.reinforce /data/digits_ar --split train --teacher /runs/teacher \
        --augmentations 8 --topk 5 --dtype float16 --crop size=8,channels=1,scale_min=0.5 --workers 2
    python -m jaxsup.data.reinforce /data/digits_ar --teacher /runs/clip_a --teacher /runs/clip_b \
        --captions class:templates=digits_train,names=digits --crop size=8,channels=1 --randaugment num_layers=2

For every example of `<data>/<split>` (written by `python -m jaxsup.data.convert`)
it draws K crop boxes, flips and (`--randaugment`) RandAugment layers (the draws
of the host ops `inception_crop`, `flip_lr` and `randaugment`, seeded by (seed,
index, augmentation)), renders each augmentation, runs the teachers on them and
writes, per shard, a sidecar array_record into `--out` (default
`<data>/<split>/reinforced`; format: jaxsup/data/host/reinforce_store.py).
A `--teacher` is a jaxsup run's workdir (model from its config.json;
`--params-subtree params/student` for a distilled one) or a public checkpoint
FORMAT:PATH with `--teacher-config CONFIG` naming its model (one per public
teacher, in order). Classifier teachers store the top-k of their mean logits
(`--topk`), their indices and the logsumexp of the other logits at
`--temperature`; CLIP teachers (two_tower) store each teacher's image
embedding per augmentation and its text embedding of each of the example's
captions (`--captions class:templates=SET,names=SET` — every template for the
label — or `feature:PATH`, every caption of a feature), tokenized as the
teacher's config tokenizes. `--dtype` float16 / bfloat16 / float32. Storage per
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
from typing import Any

import numpy as np

from jaxsup import workdir as workdir_lib
from jaxsup.data.host import image_text, preprocess, randaugment as randaugment_args, reinforce_store as store
from jaxsup.data.reinforce import teachers
from jaxsup.data.datasets import shards
from jaxsup.data.convert.cli import exit_with_parent, progress_bar, write_json
from jaxsup.data.host.image_ops import image_size, op_args
from jaxsup.errors import ConfigError, DataError, JaxsupError

CROP_DEFAULTS = {"size": 224, "scale_min": 0.08, "scale_max": 1.0, "ratio_min": 0.75, "ratio_max": 4 / 3,
                 "channels": 3, "antialias": 1}


# ----------------------------------------------------------------------------- one shard


def example_captions(ex: dict[str, Any], captions: str, where: str) -> list[str]:
    """The captions a CLIP teacher embeds for `ex`: "class:templates=SET,names=SET" (every template
    filled with its label) or "feature:PATH" (every caption of the feature)."""
    kind, _, arg = captions.partition(":")
    if kind == "feature":
        values = image_text.get_feature(ex, arg)
        values = [values] if isinstance(values, (str, bytes, np.bytes_)) else list(np.asarray(values, object).ravel())
        if not values:
            raise DataError(f"{where}: caption feature {arg!r} holds no captions.")
        return [image_text.as_text(v) for v in values]
    if "label" not in ex:
        raise DataError(f"{where}: --captions class needs a 'label' feature; the example has {sorted(ex)}.")
    kw = image_text.parse_kwargs("--captions class", arg, {"templates": "digits_train", "names": "digits"})
    names, label = image_text.resolve_class_names(kw["names"]), int(np.asarray(ex["label"]))
    if not 0 <= label < len(names):
        raise DataError(f"{where}: label {label} outside the {len(names)} class names of {kw['names']!r}.")
    return [image_text.format_caption(t, names[label], label) for t in image_text.resolve_templates(kw["templates"])]


def teacher_inputs(examples: list[dict], first: int, spec: dict[str, Any], where: str):
    """(per-example draw_params, rendered [+ teacher_ops] crops [N * K, ...], per-example captions)."""
    ops = preprocess.build(spec["teacher_ops"]) if spec["teacher_ops"] else None
    params, images, captions = [], [], []
    for offset, ex in enumerate(examples):
        here = f"{where}: example {first + offset} ({ex.get('key', '?')!r})"
        width, height = image_size(ex["image"], here)
        drawn = store.draw_params(spec, first + offset, width, height)
        params.append(drawn)
        for j in range(spec["augmentations"]):
            crop = store.render(ex["image"], store.augmentation(drawn, j), spec, here)
            images.append(ops({"image": crop})["image"] if ops else crop)
        captions.append(example_captions(ex, spec["captions"], here) if spec["kind"] == "clip" else [])
    return params, np.stack(images), captions


def example_records(examples: list[dict], first: int, spec: dict[str, Any], where: str) -> list[bytes]:
    """The sidecar records of consecutive examples first, first + 1, ... (one teacher pass)."""
    params, images, captions = teacher_inputs(examples, first, spec, where)
    image_out = teachers.image_targets(spec, images)
    flat = [c for per in captions for c in per]
    text_out = teachers.text_targets(spec, flat) if flat else None
    k_aug, records, c0 = spec["augmentations"], [], 0
    for e, ex in enumerate(examples):
        fields = {"key": ex.get("key", ""), **params[e],
                  **{name: value[e * k_aug:(e + 1) * k_aug] for name, value in image_out.items()}}
        if spec["kind"] == "clip":
            fields.update(captions=captions[e], ztxt=text_out[c0:c0 + len(captions[e])])
            c0 += len(captions[e])
        records.append(store.encode(fields, spec))
    return records


def sidecar_shard(shard: dict[str, Any], first_index: int, spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Writes <out_dir>/<shard file> (one record per example) and then its .json summary."""
    from array_record.python import array_record_data_source, array_record_module

    name = shard["file"]
    source_path = os.path.join(shards.split_dir(spec["data"], spec["split"]), name)
    final = os.path.join(out_dir, name)
    tmp = final + ".tmp"
    n = shard["num_examples"]
    records = array_record_data_source.ArrayRecordDataSource([source_path]) if n else []
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    record_bytes, step = 0, max(1, spec["batch_size"] // spec["augmentations"])
    try:
        for start in range(0, n, step):
            examples = [shards.decode_record(r) for r in records.__getitems__(list(range(start, min(n, start + step))))]
            for record in example_records(examples, first_index + start, spec, source_path):
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


def teacher_specs(paths: list[str], configs: list[str], params_subtree: str, state_subtree: str,
                  step: int) -> list[dict[str, Any]]:
    """The --teacher entries, each with its --teacher-config (public checkpoints, in order) and kind."""
    public = [p for p in paths if teachers.is_public(p)]
    if len(configs) != len(public):
        raise ConfigError(f"{len(public)} public --teacher checkpoint(s) need as many --teacher-config CONFIG "
                          f"(their models, in order); got {len(configs)}.")
    configs, out = list(configs), []
    for path in paths:
        if not teachers.is_public(path) and not os.path.isdir(path):
            raise ConfigError(f"--teacher {path!r} does not exist (give a jaxsup run's workdir or FORMAT:PATH).")
        entry = {"path": path if teachers.is_public(path) else os.path.abspath(path),
                 "config": configs.pop(0) if teachers.is_public(path) else "",
                 "params_subtree": params_subtree, "state_subtree": state_subtree, "step": step}
        out.append(teachers.describe(entry))
    return out


def check_teachers(spec: dict[str, Any]) -> dict[str, Any]:
    """spec with "kind" and "num_classes" / "embed_dim" of its teachers (which must agree)."""
    kinds = {t["kind"] for t in spec["teachers"]}
    if len(kinds) != 1:
        raise ConfigError(f"--teacher: mixed teacher kinds {sorted(kinds)}; give only classifiers or only CLIPs.")
    kind = kinds.pop()
    widths = {int(teachers.abstract_outputs(teachers.build(t), kind, store.image_shape(spec))[0].shape[-1])
              for t in spec["teachers"]}
    if len(widths) != 1:
        what = "embedding widths" if kind == "clip" else "class counts"
        raise ConfigError(f"--teacher: the teachers' {what} differ ({sorted(widths)}).")
    spec = {**spec, "kind": kind, ("embed_dim" if kind == "clip" else "num_classes"): widths.pop()}
    if kind == "clip" and not spec["captions"]:
        raise ConfigError("CLIP teachers need --captions (class:templates=SET,names=SET or feature:PATH).")
    if kind == "classifier" and not 1 <= spec["topk"] <= spec["num_classes"]:
        raise ConfigError(f"--topk {spec['topk']} must lie in [1, {spec['num_classes']}] (the teacher's classes).")
    return spec


def make_spec(data: str, split: str, teacher: str | list[str], augmentations: int = 4, topk: int = 5,
              dtype: str = "float16", temperature: float = 1.0, seed: int = 0, crop: str = "", flip_prob: float = 0.5,
              batch_size: int = 256, params_subtree: str = "params", state_subtree: str = "task_state",
              step: int = -1, randaugment: str = "", captions: str = "", teacher_config: str | list[str] = (),
              teacher_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings (also the resume plan), with the teachers' kind and width. ConfigError on a bad one."""
    kw = op_args("--crop", crop, CROP_DEFAULTS, bare="size")
    if augmentations < 1 or batch_size < 1 or not temperature > 0 or not 0 <= flip_prob <= 1:
        raise ConfigError(f"--augmentations {augmentations} and --batch-size {batch_size} must be >= 1, "
                          f"--temperature {temperature} > 0 and --flip {flip_prob} in [0, 1].")
    if dtype not in store.DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {sorted(store.DTYPES)}.")
    if captions and captions.partition(":")[0] not in ("class", "feature"):
        raise ConfigError(f"--captions {captions!r}: expected class:templates=SET,names=SET or feature:PATH.")
    ra = randaugment_args.check_args(op_args("--randaugment", randaugment, randaugment_args.DEFAULTS)) \
        if randaugment else {}
    preprocess.build(tuple(teacher_ops))  # unknown ops raise now
    paths = [teacher] if isinstance(teacher, str) else list(teacher)
    configs = [teacher_config] if isinstance(teacher_config, str) else list(teacher_config)
    spec = {"data": os.path.abspath(data), "split": split,
            "teachers": teacher_specs(paths, configs, params_subtree, state_subtree, step),
            "augmentations": augmentations, "topk": topk, "dtype": dtype, "temperature": float(temperature),
            "seed": seed, "size": kw["size"], "channels": kw["channels"], "antialias": kw["antialias"],
            "scale": [kw["scale_min"], kw["scale_max"]], "ratio": [kw["ratio_min"], kw["ratio_max"]],
            "flip_prob": float(flip_prob), "batch_size": batch_size, "randaugment": ra, "captions": captions,
            "teacher_ops": list(teacher_ops)}
    return check_teachers(spec)


def bytes_report(spec: dict[str, Any], summaries: list[dict]) -> dict[str, Any]:
    """Stored bytes per example (records and files) and, for comparison, K float32 logit vectors."""
    total, n = sum(s["bytes"] for s in summaries), sum(s["num_examples"] for s in summaries)
    out = {"num_examples": n, "bytes": total, "file_bytes_per_example": total / max(n, 1),
           "bytes_per_example": sum(s["record_bytes"] for s in summaries) / max(n, 1)}
    if spec["kind"] == "classifier":
        out["full_logits_bytes_per_example"] = spec["augmentations"] * spec["num_classes"] * 4
    return out


def reinforce(spec: dict[str, Any], out: str = "", workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Writes the reinforcement of spec's split into `out` (default <data>/<split>/reinforced); its info."""
    info = shards.read_split_info(spec["data"], spec["split"])
    out_dir = out or os.path.join(shards.split_dir(spec["data"], spec["split"]), "reinforced")
    os.makedirs(out_dir, exist_ok=True)
    with workdir_lib.WorkdirLock(out_dir, what="Output folder", option="--out"):
        check_plan(out_dir, spec)
        done = run_shards(info, spec, out_dir, workers, progress)
        summaries = [done[s["file"]] for s in info["shards"]]
        result = {**spec, **bytes_report(spec, summaries),
                  "shards": [{"file": s["file"], "num_examples": s["num_examples"]} for s in summaries]}
        if spec["kind"] == "clip":
            result["teacher_scales"] = [t.scale() for t in teachers.load(spec)]
        write_json(os.path.join(out_dir, store.INFO), result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxsup.data.reinforce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a converted dataset (config.data.path)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--teacher", required=True, action="append",
                        help="a jaxsup run's workdir or FORMAT:PATH (repeat for an ensemble)")
    parser.add_argument("--teacher-config", action="append", default=[],
                        help="the model config of each public FORMAT:PATH teacher, in order")
    parser.add_argument("--captions", default="", help="CLIP teachers: class:templates=SET,names=SET | feature:PATH")
    parser.add_argument("--randaugment", default="", help="store RandAugment layers too, e.g. num_layers=2,magnitude=9")
    parser.add_argument("--teacher-ops", default="", help="host ops on each crop before the teachers, e.g. normalize")
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
                         args.state_subtree, args.step, args.randaugment, args.captions, args.teacher_config,
                         tuple(filter(None, args.teacher_ops.split(";"))))
        result = reinforce(spec, args.out, args.workers, progress=True)
    except JaxsupError as err:
        print(f"jaxsup.data.reinforce: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxsup.data.reinforce: error: {err.filename or args.out}: {err.strerror or err} (finished shards "
              "are kept; rerun the same command to resume).", file=sys.stderr)
        return 2
    keys = ("kind", "num_examples", "augmentations", "topk", "dtype", "bytes_per_example", "file_bytes_per_example",
            "full_logits_bytes_per_example")
    print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
