"""Runs config arms over seeds, sequentially in one process; prints mean ± std of chosen metrics.

    python scripts/seeds_table.py --root /tmp/jaxsup/sla --seeds 0 1 2 \
        --arm "SLA=configs/sla_digits.py" --arm "rotation aug=configs/sla_digits.py:augment" \
        --metric test/top1 --metric test_sd/top1 [--set total_steps=300 ...]

Each arm is `name=config[:switches][|key=value|...]` (the `|key=value` overrides only
that arm, e.g. "random init=configs/look_digits.py:ce|total_steps=0"); run k of arm a lives in ROOT/<slug a>/seed<k>
(a finished run resumes at its last step and only re-evaluates, so re-running is
cheap). `--set key=value` overrides every run (value parsed as a Python literal
when it is one). Writes ROOT/results.json ({arm: {metric: [per seed]}}) and
prints a Markdown table (percent for metrics named */top1, 1 decimal).
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import statistics
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_value(text: str) -> Any:
    """A Python literal if `text` is one ("0.2", "(1, 2)"), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_dir(root: str, arm: str, seed: int) -> str:
    """ROOT/<arm name with only [A-Za-z0-9_]>/seed<k> (no '%' or '[': Orbax cannot reopen those)."""
    return os.path.join(root, re.sub(r"[^A-Za-z0-9]+", "_", arm).strip("_"), f"seed{seed}")


def run_arm(spec: str, seed: int, workdir: str, overrides: dict[str, Any]) -> dict[str, float]:
    """Trains config `spec` ("configs/x.py:arg") with seed and overrides; its final metrics."""
    from jaxsup.config import load_config
    from jaxsup.train import train_and_evaluate

    path, _, arg = spec.partition(":")
    config = load_config(os.path.join(ROOT, path) + (f":{arg}" if arg else ""),
                         {**overrides, "seed": seed, "checkpoint.async_save": False})
    return {k: float(v) for k, v in train_and_evaluate(config, workdir).items()}


def summary(values: list[float], percent: bool) -> str:
    """'mean ± std' (sample std; 0 for one value)."""
    scale = 100.0 if percent else 1.0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 1 if percent else 3
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * std:.{digits}f}"


def markdown(results: dict[str, dict[str, list[float]]], metrics: list[str]) -> str:
    """One row per arm, one column per metric."""
    lines = ["| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm, per_metric in results.items():
        cells = [summary(per_metric[m], m.endswith("top1")) if per_metric.get(m) else "—" for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arm", action="append", required=True, help="name=configs/x.py[:switches]")
    parser.add_argument("--metric", action="append", default=None, help="default: test/top1")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run")
    args = parser.parse_args(argv)
    logging.getLogger("jaxsup").setLevel(logging.WARNING)
    sys.path.insert(0, ROOT)
    metrics = args.metric or ["test/top1"]
    overrides = {k: parse_value(v) for k, _, v in (s.partition("=") for s in args.set)}
    results: dict[str, dict[str, list[float]]] = {}
    for item in args.arm:
        name, _, spec = item.partition("=")
        spec, *arm_sets = spec.split("|")
        arm_overrides = {**overrides, **{k: parse_value(v) for k, _, v in (a.partition("=") for a in arm_sets)}}
        results[name] = {m: [] for m in metrics}
        for seed in args.seeds:
            out = run_arm(spec, seed, run_dir(args.root, name, seed), arm_overrides)
            for m in metrics:
                if m in out:
                    results[name][m].append(out[m])
            print(f"{name} seed {seed}: " + ", ".join(f"{m}={out.get(m, float('nan')):.4f}" for m in metrics), flush=True)
    os.makedirs(args.root, exist_ok=True)
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(markdown(results, metrics))


if __name__ == "__main__":
    main()
