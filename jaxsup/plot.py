"""Curves of one or several runs from their metrics.jsonl: train loss and every eval metric against step.

    python -m jaxsup.plot WORKDIR [WORKDIR ...] --out runs.png

One panel per metric (train/loss first, then the eval metrics by name), one
line per run, labelled by its workdir. `jaxsup.train` also writes
`<workdir>/metrics.png` (`write_run_plot`) when a run ends. A step written
twice (replayed after a resume) keeps its last value. matplotlib is the
`[plot]` extra: without it the command stops with one line, and a run skips
its picture and logs that.

No JAX here: this reads files only (layer of jaxsup.metrics).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from typing import Any, Sequence

from jaxsup.errors import JaxsupError, WorkdirError

log = logging.getLogger("jaxsup")

METRICS_FILE = "metrics.jsonl"
RUN_PLOT = "metrics.png"
MISSING = "matplotlib is not installed (pip install 'jaxsup[plot]' or matplotlib)"
Curves = dict[str, tuple[list[int], list[float]]]


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def read_records(workdir: str) -> list[dict[str, Any]]:
    """The records of `<workdir>/metrics.jsonl`; a torn last line (a killed run) is skipped."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        raise WorkdirError(f"{workdir} has no {METRICS_FILE}: not a jaxsup workdir, or the run wrote no metrics yet.")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON (a run killed mid-write?): skipped.", path, number)
    return records


def is_plotted(key: str) -> bool:
    """train/loss and every eval metric (not step, other train/* or perf/* values, or example counts)."""
    if key == "train/loss":
        return True
    return key != "step" and "/" in key and not key.startswith(("train/", "perf/")) and not key.endswith("/count")


def curves(records: Sequence[dict[str, Any]]) -> Curves:
    """metric -> (steps, values) in step order; train/loss first, then the eval metrics by name."""
    by_metric: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if is_plotted(key) and isinstance(value, (int, float)):
                by_metric.setdefault(key, {})[int(record["step"])] = float(value)
    order = sorted(by_metric, key=lambda k: (k != "train/loss", k))
    return {k: (sorted(by_metric[k]), [by_metric[k][s] for s in sorted(by_metric[k])]) for k in order}


def run_labels(workdirs: Sequence[str]) -> list[str]:
    """Each workdir's base name, or its path where two runs share a base name."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    return [n if names.count(n) == 1 else os.path.normpath(w) for n, w in zip(names, workdirs)]


def draw(runs: dict[str, Curves], out: str, title: str = "") -> str | None:
    """One panel per metric, one line per run; writes `out`; None (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    metrics = list(dict.fromkeys(k for run in runs.values() for k in run))
    metrics.sort(key=lambda k: (k != "train/loss", k))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, run in runs.items():
            if metric in run:
                steps, values = run[metric]
                ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=label)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_runs(workdirs: Sequence[str], out: str, title: str = "") -> str | None:
    """Reads each workdir's metrics.jsonl and draws them overlaid into `out` (see `draw`)."""
    runs = {label: curves(read_records(w)) for label, w in zip(run_labels(workdirs), workdirs)}
    if not any(runs.values()):
        raise WorkdirError(f"No train/loss or eval metric in the {METRICS_FILE} of {', '.join(workdirs)}.")
    return draw(runs, out, title)


def write_run_plot(workdir: str) -> str | None:
    """`<workdir>/metrics.png` at the end of a run; skipped (and logged) without matplotlib or metrics."""
    if not os.path.isfile(os.path.join(workdir, METRICS_FILE)):
        return None
    run = curves(read_records(workdir))
    if not run:
        return None
    path = draw({os.path.basename(os.path.normpath(workdir)): run}, os.path.join(workdir, RUN_PLOT))
    if path is None:
        log.info("No %s: %s.", RUN_PLOT, MISSING)
    else:
        log.info("Curves of the run drawn in %s.", path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxsup.plot", description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", default="runs.png", help="the PNG to write (default: runs.png)")
    parser.add_argument("--title", default="", help="a title over the panels")
    args = parser.parse_args(argv)
    try:
        if pyplot() is None:
            raise JaxsupError(f"{MISSING}: no picture drawn.")
        path = plot_runs(args.workdirs, args.out, args.title)
    except JaxsupError as err:
        kind = "" if type(err) is JaxsupError else f"{type(err).__name__}: "
        raise SystemExit(f"jaxsup.plot: error: {kind}{' '.join(str(err).split())}")
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
