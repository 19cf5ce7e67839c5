"""Reinforced digits: prepare the data, time the KD step online vs from stored targets, agreement vs k.

    python benchmarks/reinforced_step.py prepare --out /tmp/jaxsup/rdigits
    python benchmarks/reinforced_step.py time --data /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/teacher \
        [--reinforced DIR] [--batch 64] [--steps 50] [--warmup 5]
    python benchmarks/reinforced_step.py agreement --data /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/teacher \
        [--k 1,5,10,online] [--steps 600] [--seeds 0,1,2]

prepare: scikit-learn's digits (the TFDS "digits" splits) as class folders of
8x8 grey PNGs, converted with `jaxsup.data.convert folder` into OUT/train, OUT/test.

time: configs/kd_digits_reinforced.py's train step built as jaxsup.train builds
it (benchmarks/train_step.py), once with the stored targets ("reinforced") and
once with the teacher run in the step ("online", the same replayed crops), on
one batch, run interleaved; median wall and process-CPU ms per step, the XLA
FLOPs of both steps and of the teacher's and student's forward. One JSON line.

agreement: for each k, `python -m jaxsup.data.reinforce` (8 augmentations,
float16, T = 2) into DATA/train/reinforced_k<k>, a student trained from it
(`--steps`, per seed), then top-1 agreement with the teacher and accuracy on
the test split (mean and std over seeds), and the stored bytes per example.
k "online": the same student with the teacher run in the step, on the replayed
crops of the previous k's reinforcement. One JSON line per k.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxsup import checkpoint, metrics, sharding
from jaxsup.config import load_config
from jaxsup.data.loader import batching
from jaxsup.data.convert import cli as convert
from jaxsup.data.host import preprocess
from jaxsup.data.reinforce import cli as reinforce, teachers
from jaxsup.data.datasets import shards, sources
from jaxsup.experiment import build_task
from jaxsup.tasks.common import build_model
from jaxsup.train import train_and_evaluate
from train_step import build_train_step, tiled_batch, time_steps  # a sibling module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/kd_digits_reinforced.py")
CROP = "size=8,channels=1,scale_min=0.5"


def digits_folder(root: str, n: int | None = None, split: str = "train") -> str:
    """The first n (all) digits `split` images as class folders of 8x8 grey PNGs under root."""
    source = sources.open_source("digits", split)
    for i in range(len(source) if n is None else n):
        ex = source[i]
        folder = os.path.join(root, str(int(ex["label"])))
        os.makedirs(folder, exist_ok=True)
        out = io.BytesIO()
        Image.fromarray(np.asarray(ex["image"])[..., 0]).save(out, "PNG")
        with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
            f.write(out.getvalue())
    return root


def prepare(out: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {split: convert.convert("folder", digits_folder(os.path.join(tmp, split), split=split), out,
                                       split=split, workers=1)["num_examples"] for split in ("train", "test")}


def config_for(data: str, directory: str, teacher: str, online: bool, **overrides):
    arg = f"data={data},reinforced={directory}" + (",online" if online else "")
    return load_config(f"{CONFIG}:{arg}", {"distill.teacher.path": teacher, "mesh": (("data", 1),),
                                           "checkpoint.async_save": False, **overrides})


def forward_flops(model, params, images) -> float:
    compiled = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(params, images).compile()
    return metrics.compiled_stats(compiled)["flops_per_device"]


def time_online_vs_stored(args) -> dict:
    directory = args.reinforced or os.path.join(args.data, "train", "reinforced")
    configs = {name: config_for(args.data, directory, args.teacher, name == "online", batch_size=args.batch)
               for name in ("reinforced", "online")}
    batch = tiled_batch(configs["reinforced"], args.batch)
    mesh = sharding.make_mesh((("data", 1),))
    built = {name: build_train_step(c, mesh, batch) for name, c in configs.items()}
    times = time_steps(built, args.steps, args.warmup)
    task = build_task(configs["online"], mesh)
    images = jnp.asarray(batch["image"], jnp.float32) / 255.0
    teacher_vars = task.load_frozen()["teacher"]
    student_vars = jax.eval_shape(lambda: task.student.init(jax.random.key(0), images, train=False))
    report = {"batch": args.batch, "steps": args.steps, "backend": jax.default_backend(),
              "teacher_fwd_flops": forward_flops(task.teacher.model, {"params": teacher_vars["params"],
                                                                      **teacher_vars["model_state"]}, images),
              "student_fwd_flops": forward_flops(task.student, jax.tree.map(jnp.zeros_like, student_vars), images)}
    for name, (wall, cpu) in times.items():
        report[f"{name}_ms"], report[f"{name}_cpu_ms"] = 1e3 * wall, 1e3 * cpu
        report[f"{name}_step_flops"] = built[name].stats.get("flops_per_device")
    report["teacher_over_student_flops"] = report["teacher_fwd_flops"] / report["student_fwd_flops"]
    report["online_over_reinforced_wall"] = report["online_ms"] / report["reinforced_ms"]
    report["online_over_reinforced_cpu"] = report["online_cpu_ms"] / report["reinforced_cpu_ms"]
    return report


def test_predictions(data: str, workdir: str, subtree: str, model) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 [N] of a run's model (params at `subtree`, BatchNorm stats if any), labels [N]) on the test split."""
    source = shards.open_split(data, "test")
    batch = batching.read_batch(source, preprocess.build(("decode:channels=1", "label_to_int32")),
                                np.arange(len(source)))
    images = jnp.asarray(batch["image"], jnp.float32) * (1.0 / 255.0)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    state_root = "task_state/student" if subtree == "params/student" else "task_state"
    variables = {name: checkpoint.restore_subtree(workdir, subtree if name == "params" else f"{state_root}/{name}",
                                                  target=checkpoint.abstract_tree(tree))
                 for name, tree in abstract.items()}
    logits, _ = model.apply(variables, images, train=False)
    return np.asarray(jnp.argmax(logits, -1)), batch["label"]


def student_scores(config, teacher_top1: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(test agreement with the teacher, test accuracy) of a student trained with `config`."""
    workdir = tempfile.mkdtemp(prefix="reinforced_student_")
    train_and_evaluate(config, workdir)
    top1, _ = test_predictions(config.data.path, workdir, "params/student", build_model(config.model_name, config.model))
    return float(np.mean(top1 == teacher_top1)), float(np.mean(top1 == labels))


def agreement(args) -> list[dict]:
    """Rows per k ("online": the teacher in the step, on the crops of the last k's reinforcement)."""
    spec0 = reinforce.make_spec(args.data, "train", args.teacher, crop=CROP)
    teacher_top1, labels = test_predictions(args.data, args.teacher, "params", teachers.build(spec0["teachers"][0]))
    rows, info, directory = [], {}, ""
    for k in args.k.split(","):
        if k != "online":
            directory = os.path.join(args.data, "train", f"reinforced_k{k}")
            spec = reinforce.make_spec(args.data, "train", args.teacher, augmentations=8, topk=int(k),
                                       dtype="float16", temperature=2.0, crop=CROP)
            info = reinforce.reinforce(spec, directory)
        runs = [student_scores(config_for(args.data, directory, args.teacher, k == "online", total_steps=args.steps,
                                          seed=int(seed), log_every=args.steps), teacher_top1, labels)
                for seed in args.seeds.split(",")]
        row = {"k": k, "seeds": len(runs), "steps": args.steps,
               "agreement_mean": statistics.mean(a for a, _ in runs), "agreement_std": statistics.pstdev(a for a, _ in runs),
               "accuracy_mean": statistics.mean(t for _, t in runs), "accuracy_std": statistics.pstdev(t for _, t in runs),
               "teacher_accuracy": float(np.mean(teacher_top1 == labels))}
        if k != "online":
            row.update({key: info[key] for key in ("bytes_per_example", "file_bytes_per_example",
                                                   "full_logits_bytes_per_example")})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    for name in ("time", "agreement"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--teacher", required=True)
        p.add_argument("--reinforced", default="")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--steps", type=int, default=50 if name == "time" else 600)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--k", default="1,5,10")
        p.add_argument("--seeds", default="0")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out)))
    elif args.command == "time":
        print(json.dumps(time_online_vs_stored(args)))
    else:
        agreement(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
