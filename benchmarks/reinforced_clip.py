"""Reinforced digits CLIP: step time with stored vs online teacher embeddings, and 3-seed zero-shot.

    python benchmarks/reinforced_step.py prepare --out /tmp/jaxsup/rdigits
    python -m jaxsup.train --config configs/clip_digits.py --workdir /tmp/jaxsup/clip_teacher
    python benchmarks/reinforced_clip.py reinforce --data /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/clip_teacher
    python benchmarks/reinforced_clip.py time --data /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/clip_teacher \
        [--batch 128] [--steps 30] [--repeats 3]
    python benchmarks/reinforced_clip.py seeds --data /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/clip_teacher \
        [--seeds 0,1,2]

reinforce: `python -m jaxsup.data.reinforce` of the converted train split under the
CLIP teacher (8 augmentations, class captions from the 12 train templates, float16)
into DATA/train/reinforced_clip; prints its info (bytes per example).

time: configs/clip_digits_reinforced.py's train step as jaxsup.train builds it, with the
stored embeddings ("reinforced") and with the teacher run in the step ("online", the same
replayed crops and captions), on one batch, interleaved; per repeat the median wall and
process-CPU ms per step; the ratio online / reinforced per repeat (median, min, max), the XLA
FLOPs of both steps and of the teacher's and the student's forward. One JSON line.

table: the docs/reinforced.md rows from the JSON of `time` and `seeds` (--time FILE --seeds-json FILE).

seeds: the student trained per seed from the stored embeddings, from the online teacher,
and with the CLIP loss alone (no teacher); test zero-shot top-1 (held-out templates),
mean and std over seeds, and the teacher's. One JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import jax
import jax.numpy as jnp

from jaxsup import metrics, sharding
from jaxsup.config import load_config
from jaxsup.data.reinforce import cli as reinforce
from jaxsup.experiment import build_task
from jaxsup.train import train_and_evaluate
from train_step import build_train_step, tiled_batch, time_steps  # a sibling module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/clip_digits_reinforced.py")
CROP = "size=8,channels=1,scale_min=0.5"
CAPTIONS = "class:templates=digits_train,names=digits"


def stored_dir(data: str) -> str:
    return os.path.join(data, "train", "reinforced_clip")


def config_for(data: str, teacher: str, mode: str, **overrides):
    """mode "reinforced" | "online" (teacher in the step) | "clip" (no teacher: CLIP loss only)."""
    arg = f"data={data}" + ("" if mode == "reinforced" else ",online")
    extra = {"clip.teacher": teacher} if mode == "online" else {}
    if mode == "clip":
        extra = {"clip.contrastive_weight": 1.0, "clip.kd_weight": 0.0}
    return load_config(f"{CONFIG}:{arg}", {"mesh": (("data", 1),), "checkpoint.async_save": False, **extra,
                                           **overrides})


def run_reinforce(args) -> dict:
    spec = reinforce.make_spec(args.data, "train", args.teacher, augmentations=8, crop=CROP, captions=CAPTIONS,
                               dtype="float16")
    info = reinforce.reinforce(spec, stored_dir(args.data))
    return {k: v for k, v in info.items() if "bytes" in k or k in ("num_examples", "augmentations")}


def tower_flops(model, variables, images, tokens) -> float:
    compiled = jax.jit(lambda v, x, t: model.apply(v, x, t, train=False)).lower(variables, images, tokens).compile()
    return metrics.compiled_stats(compiled)["flops_per_device"]


def time_online_vs_stored(args) -> dict:
    configs = {mode: config_for(args.data, args.teacher, mode, batch_size=args.batch)
               for mode in ("reinforced", "online")}
    batch = tiled_batch(configs["reinforced"], args.batch)
    mesh = sharding.make_mesh((("data", 1),))
    built = {mode: build_train_step(c, mesh, batch if mode == "reinforced" else
                                    {k: batch[k] for k in ("image", "tokens")}) for mode, c in configs.items()}
    repeats = [time_steps(built, args.steps, args.warmup) for _ in range(args.repeats)]
    task = build_task(configs["online"], mesh)
    images, tokens = jnp.asarray(batch["image"], jnp.float32) / 255.0, jnp.asarray(batch["tokens"])
    student = jax.eval_shape(lambda: task.model.init(jax.random.key(0), images, tokens, train=False))
    report = {"batch": args.batch, "steps": args.steps, "repeats": args.repeats, "backend": jax.default_backend(),
              "teacher_fwd_flops": tower_flops(task.teacher, {"params": task.load_frozen()["teacher"]}, images, tokens),
              "student_fwd_flops": tower_flops(task.model, jax.tree.map(jnp.zeros_like, student), images, tokens)}
    for mode in built:
        report[f"{mode}_ms"] = statistics.median(1e3 * r[mode][0] for r in repeats)
        report[f"{mode}_cpu_ms"] = statistics.median(1e3 * r[mode][1] for r in repeats)
        report[f"{mode}_step_flops"] = built[mode].stats.get("flops_per_device")
    report["teacher_over_student_flops"] = report["teacher_fwd_flops"] / report["student_fwd_flops"]
    for kind, i in (("wall", 0), ("cpu", 1)):
        ratios = [r["online"][i] / r["reinforced"][i] for r in repeats]
        report[f"online_over_reinforced_{kind}"] = statistics.median(ratios)
        report[f"online_over_reinforced_{kind}_min"], report[f"online_over_reinforced_{kind}_max"] = min(ratios), max(ratios)
    return report


def zero_shot(config) -> float:
    workdir = tempfile.mkdtemp(prefix="reinforced_clip_")
    config.evals = {"zero_shot": config.evals.zero_shot}
    config.evals.zero_shot.every = config.total_steps
    return float(train_and_evaluate(config, workdir)["zero_shot/top1"])


def seeds(args) -> dict:
    report = {"steps": load_config(CONFIG).total_steps, "seeds": args.seeds}
    for mode in ("reinforced", "online", "clip"):
        scores = [zero_shot(config_for(args.data, args.teacher, mode, seed=int(s))) for s in args.seeds.split(",")]
        report[f"{mode}_zero_shot_mean"], report[f"{mode}_zero_shot_std"] = statistics.mean(scores), statistics.pstdev(scores)
        report[f"{mode}_zero_shot"] = scores
        print(json.dumps({mode: scores}), file=sys.stderr, flush=True)
    return report


def table(args) -> str:
    """Markdown rows of docs/reinforced.md from the saved JSON of `time` and `seeds`."""
    with open(args.time) as f:
        t = json.load(f)
    with open(args.seeds_json) as f:
        s = json.load(f)
    speed = (f"| {t['teacher_over_student_flops']:.1f} | {t['batch']} | {t['online_ms']:.1f} ({t['online_cpu_ms']:.1f}) | "
             f"{t['reinforced_ms']:.1f} ({t['reinforced_cpu_ms']:.1f}) | {t['online_over_reinforced_wall']:.2f}× "
             f"({t['online_over_reinforced_wall_min']:.2f}–{t['online_over_reinforced_wall_max']:.2f}) | "
             f"{t['online_over_reinforced_cpu']:.2f}× ({t['online_over_reinforced_cpu_min']:.2f}–"
             f"{t['online_over_reinforced_cpu_max']:.2f}) |")
    names = {"reinforced": "stored embeddings", "online": "online teacher (same crops)", "clip": "CLIP loss alone"}
    rows = [f"| {names[m]} | {100 * s[f'{m}_zero_shot_mean']:.1f} ± {100 * s[f'{m}_zero_shot_std']:.1f} % |"
            for m in names]
    return "\n".join([speed, "", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table")
    p.add_argument("--time", required=True)
    p.add_argument("--seeds-json", required=True)
    for name in ("reinforce", "time", "seeds"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--teacher", required=True)
        p.add_argument("--batch", type=int, default=128)
        p.add_argument("--steps", type=int, default=30)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(table(args))
        return 0
    run = {"reinforce": run_reinforce, "time": time_online_vs_stored, "seeds": seeds}[args.command]
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
