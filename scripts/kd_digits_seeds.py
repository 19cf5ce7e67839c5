"""Distillation comparisons on digits over seeds; prints a table of test top-1.

    python scripts/kd_digits_seeds.py [--seeds 0 1 2] [--root /tmp/jaxsup/kd_seeds]
                                      [--which kd label_fraction feature] [--steps N]

Comparisons (each arm is one `jaxsup.train.train_and_evaluate` run per seed;
the teacher is trained with the same seed):
  kd              teacher: configs/supervised_digits.py (CNN 32-64, all of train).
                  student (MLP 64) on train[:5%] (72 labelled images): CE alone
                  vs. configs/kd_digits.py (0.9 KD at T=2 + 0.1 CE).
  label_fraction  teacher: the same CNN trained on train[:10%] only.
                  student (MLP 64): CE on train[:10%] alone vs.
                  configs/kd_label_fraction_digits.py (CE on train[:10%],
                  KD on all of train: the unlabelled 90 % too).
  feature         as "kd" plus the ND feature term (configs/feature_kd_digits.py).
Runs live in ROOT/seed<k>/<arm>; a finished run is not trained again (it
resumes at its last step and only re-evaluates), so re-running is cheap
(use another --root when changing --steps).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _load(name: str, overrides: dict[str, Any]):
    from jaxsup.config import load_config

    return load_config(os.path.join(CONFIGS, name), overrides)


def _run(config, workdir: str) -> float:
    from jaxsup.train import train_and_evaluate

    return float(train_and_evaluate(config, workdir)["test/top1"])


def slug(split: str) -> str:
    """A run-directory name for a split: "train[:10%]" -> "train_10pct" (Orbax/tensorstore
    cannot reopen checkpoints under paths with "%" in them)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", split.replace("%", "pct")).strip("_")


def scratch_baseline_overrides(config) -> dict[str, Any]:
    """Overrides of configs/supervised_digits.py that train the distill run's student with CE
    alone on the same labelled examples: the from-scratch baseline of `config`."""
    return {
        "model_name": config.model_name, "model": config.model.to_dict(),
        "data.train_split": config.distill.labelled_split or config.data.train_split,
        "batch_size": config.batch_size, "total_steps": config.total_steps, "seed": config.seed,
        "optim.lr": config.optim.lr, "optim.warmup_steps": config.optim.warmup_steps,
    }


def run_comparison(which: str, seed: int, root: str, steps: int | None) -> dict[str, float]:
    """{arm name: test top-1} for one comparison and seed."""
    common = {"seed": seed, "checkpoint.async_save": False}
    if steps:
        common["total_steps"] = steps
    d = lambda arm: os.path.join(root, f"seed{seed}", arm)  # noqa: E731
    student_cfg = {"kd": "kd_digits.py", "feature": "feature_kd_digits.py",
                   "label_fraction": "kd_label_fraction_digits.py"}[which]
    student = _load(student_cfg, common)
    labelled = student.distill.labelled_split or student.data.train_split
    if which == "label_fraction":
        teacher_cfg = _load("supervised_digits.py", {**common, "data.train_split": labelled, "batch_size": 64})
        teacher_dir = d("teacher_" + slug(labelled))
    else:
        teacher_cfg, teacher_dir = _load("supervised_digits.py", common), d("teacher_all")
    results = {f"teacher ({teacher_cfg.model_name}, labels {teacher_cfg.data.train_split})": _run(teacher_cfg, teacher_dir)}
    baseline = _load("supervised_digits.py", {**common, **scratch_baseline_overrides(student)})
    arm = f"student {student.model_name} {tuple(student.model.widths)}"
    results[f"{arm}: CE on {labelled} alone"] = _run(baseline, d("scratch_" + slug(labelled)))
    student.distill.teacher.path = teacher_dir
    kd_arm = {"kd": f"KD (T={student.distill.temperature}, alpha={student.distill.alpha}) on {student.data.train_split}",
              "feature": f"KD + ND (lambda={student.distill.nd_lambda}) on {student.data.train_split}",
              "label_fraction": f"CE on {labelled} + KD on {student.data.train_split}"}[which]
    results[f"{arm}: {kd_arm}"] = _run(student, d(which))
    return results


def format_table(which: str, per_seed: list[dict[str, float]], seeds: list[int]) -> str:
    lines = [f"== {which} (test top-1, digits test split, 360 images; seeds {seeds}) =="]
    for name in per_seed[0]:
        values = [r[name] for r in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        each = " ".join(f"{v:.4f}" for v in values)
        lines.append(f"{name:75s} {statistics.mean(values):.4f} +- {std:.4f}   [{each}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="/tmp/jaxsup/kd_seeds")
    parser.add_argument("--which", nargs="+", default=["kd", "label_fraction"],
                        choices=["kd", "label_fraction", "feature"])
    parser.add_argument("--steps", type=int, default=None, help="override total_steps of every run")
    args = parser.parse_args(argv)
    logging.getLogger("jaxsup").setLevel(logging.WARNING)
    sys.path.insert(0, ROOT)
    tables = []
    for which in args.which:
        per_seed = [run_comparison(which, seed, args.root, args.steps) for seed in args.seeds]
        tables.append(format_table(which, per_seed, args.seeds))
        print(tables[-1], flush=True)
    print("\n" + "\n\n".join(tables))


if __name__ == "__main__":
    main()
