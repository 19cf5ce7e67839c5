"""Performance gap recovered (PGR) and the weak-to-strong report (JSON, Markdown, PNG).

  PGR = (acc_w2s - acc_weak) / (acc_ceiling - acc_weak)

0: the student is no better than its weak supervisor; 1: it matches the
strong ceiling trained on ground truth. It is undefined (NaN) when the
ceiling does not beat the weak model. Per seed, the accuracies come from
jaxsup.w2s; over seeds the report gives mean and standard deviation of each
accuracy, the mean of the per-seed PGRs, and the PGR of the mean accuracies.
The plot needs matplotlib (optional extra "plot"); without it the JSON and
Markdown are still written and the reason is logged.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jaxsup import plot
from jaxsup.errors import ConfigError

log = logging.getLogger("jaxsup")

# Report rows: (key in the per-seed results, label). Students are listed in STUDENTS.
ACCURACY_ROWS = (
    ("weak", "weak supervisor (ground truth on A)"),
    ("weak_labels_on_strong_split", "weak labels on B (their accuracy)"),
    ("student", "strong student, soft CE on weak labels"),
    ("student_aux", "strong student, aux confidence loss"),
    ("ceiling", "strong ceiling (ground truth on B)"),
)
STUDENTS = ("student", "student_aux")
SHORT_NAMES = {
    "weak": "weak", "weak_labels_on_strong_split": "weak labels\n(acc. on B)", "student": "student\nsoft CE",
    "student_aux": "student\naux loss", "ceiling": "ceiling",
}


def performance_gap_recovered(acc_weak: float, acc_ceiling: float, acc_w2s: float) -> float:
    """(acc_w2s - acc_weak) / (acc_ceiling - acc_weak); NaN if acc_ceiling <= acc_weak."""
    gap = acc_ceiling - acc_weak
    if not gap > 0:
        return math.nan
    return (acc_w2s - acc_weak) / gap


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def summarise(per_seed: Mapping[Any, Mapping[str, float]]) -> dict[str, Any]:
    """Per-seed accuracies {seed: {stage: acc}} -> per-seed PGRs and the mean/std summary."""
    if not per_seed:
        raise ConfigError("No per-seed results to summarise.")
    seeds = sorted(per_seed)
    keys = [k for k, _ in ACCURACY_ROWS if all(k in per_seed[s] for s in seeds)]
    for required in ("weak", "ceiling"):
        if required not in keys:
            raise ConfigError(f"Per-seed results lack {required!r}: have {sorted(per_seed[seeds[0]])}.")
    students = [k for k in STUDENTS if k in keys]
    per_seed_pgr = {
        str(s): {k: performance_gap_recovered(per_seed[s]["weak"], per_seed[s]["ceiling"], per_seed[s][k]) for k in students}
        for s in seeds
    }
    accuracy = {k: _mean_std([per_seed[s][k] for s in seeds]) for k in keys}
    pgr_mean = {k: _mean_std([per_seed_pgr[str(s)][k] for s in seeds]) for k in students}
    pgr_of_means = {
        k: performance_gap_recovered(accuracy["weak"]["mean"], accuracy["ceiling"]["mean"], accuracy[k]["mean"])
        for k in students
    }
    return {
        "seeds": seeds,
        "per_seed": {str(s): dict(per_seed[s]) for s in seeds},
        "per_seed_pgr": per_seed_pgr,
        "accuracy": accuracy,
        "pgr": pgr_mean,
        "pgr_of_mean_accuracies": pgr_of_means,
    }


def _fmt(x: float, pct: bool = True) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def markdown_table(summary: Mapping[str, Any], title: str = "Weak-to-strong") -> str:
    """The report as Markdown: accuracies (mean ± std over seeds, %), PGR per student."""
    n = len(summary["seeds"])
    lines = [
        f"## {title} ({n} seed{'s' if n != 1 else ''}: {', '.join(map(str, summary['seeds']))})", "",
        "| model | test accuracy % (mean ± std) | PGR (mean ± std over seeds) | PGR of mean accuracies |",
        "|---|---|---|---|",
    ]
    labels = dict(ACCURACY_ROWS)
    for key, stats in summary["accuracy"].items():
        acc = f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"
        if key in summary["pgr"]:
            p = summary["pgr"][key]
            pgr = f"{_fmt(p['mean'], False)} ± {_fmt(p['std'], False)}"
            pgr_means = _fmt(summary["pgr_of_mean_accuracies"][key], False)
        else:
            pgr, pgr_means = "", ""
        lines.append(f"| {labels.get(key, key)} | {acc} | {pgr} | {pgr_means} |")
    lines += ["", "PGR = (acc_w2s − acc_weak) / (acc_ceiling − acc_weak), per seed; "
              "'weak labels on B' is the accuracy of the labels the students were trained on.", ""]
    return "\n".join(lines)


def plot_accuracies(summary: Mapping[str, Any], path: str, title: str = "Weak-to-strong") -> str | None:
    """Bar chart of the mean accuracies with per-seed points; returns the path, None without matplotlib."""
    plt = plot.pyplot()
    if plt is None:
        log.warning("%s: no plot written.", plot.MISSING)
        return None
    keys = list(summary["accuracy"])
    means = [100 * summary["accuracy"][k]["mean"] for k in keys]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.bar(range(len(keys)), means, color=["#bbbbbb" if k not in STUDENTS else "#4c72b0" for k in keys])
    for i, k in enumerate(keys):
        points = [100 * summary["per_seed"][s][k] for s in summary["per_seed"]]
        ax.scatter([i] * len(points), points, color="black", s=12, zorder=3)
        label = f"{means[i]:.1f}"
        if k in summary["pgr"]:
            label += f"\nPGR {summary['pgr'][k]['mean']:.2f}"
        ax.text(i, max([means[i], *points]) + 1.0, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(keys)), [SHORT_NAMES.get(k, k) for k in keys], fontsize=8)
    low = min(min(means), *(100 * v[k] for v in summary["per_seed"].values() for k in keys))
    ax.set_ylim(max(0.0, low - 10), 110)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title} ({len(summary['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(summary: Mapping[str, Any], directory: str, name: str = "report", title: str = "Weak-to-strong") -> dict[str, str | None]:
    """Writes <name>.json, <name>.md and (with matplotlib) <name>.png into directory."""
    os.makedirs(directory, exist_ok=True)
    paths = {k: os.path.join(directory, f"{name}.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(summary, f, indent=2, allow_nan=True)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(summary, title))
    paths["png"] = plot_accuracies(summary, paths["png"], title)
    return paths
