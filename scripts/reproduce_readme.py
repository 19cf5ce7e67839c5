"""Re-runs the fast rows of the methods table (README.md, docs/methods.md); prints stated vs measured.

    python scripts/reproduce_readme.py --root /tmp/jaxsup/readme            # every fast row
    python scripts/reproduce_readme.py --root R --rows vit clip_digits      # some of them
    python scripts/reproduce_readme.py --root R --reuse                     # re-read finished runs

Each row runs exactly the command the README shows beside it (a fresh workdir
under ROOT, so nothing resumes; delete ROOT to re-measure), reads the final
values from its `metrics.jsonl` and prints one line per number: the README's
text, the measured value in the same format, and whether they agree at the
README's precision. A number the script knows that no longer appears in
README.md is flagged, so the script and the table cannot drift apart silently.
The slow rows (3-seed tables, drivers over many runs) have their own scripts
(`scripts/seeds_table.py`, `scripts/kd_digits_seeds.py`, `jaxsup.w2s`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Number(NamedTuple):
    """One README number: the metric key in metrics.jsonl, its README text and format."""

    key: str
    readme: str  # as printed in the table, e.g. "96.9 %" or "0.167"
    percent: bool  # README shows 100 * value with one decimal (else 3 decimals)


class Row(NamedTuple):
    name: str
    config: str  # the --config argument of the README's command
    extra: tuple[str, ...]  # further command-line arguments of the README's command
    numbers: tuple[Number, ...]


def pct(key: str, readme: str) -> Number:
    return Number(key, readme, True)


def dec(key: str, readme: str) -> Number:
    return Number(key, readme, False)


STATED_IN = ("README.md", "docs/methods.md")

ROWS = (
    Row("supervised_digits", "configs/supervised_digits.py", (),
        (pct("test/top1", "99.4 %"), dec("test/loss", "0.045"))),  # `make run` runs this config
    Row("vit", "configs/supervised_digits.py:vit", (),
        (pct("test/top1", "96.9 %"), dec("test/loss", "0.106"))),
    Row("clip_digits", "configs/clip_digits.py", (),
        (pct("zero_shot/top1", "94.7 %"), pct("zero_shot/top5", "99.7 %"),
         dec("retrieval/img2txt/r1", "0.169"), dec("retrieval/r1_chance", "0.023"),
         dec("retrieval_class/img2txt/r1", "0.875"), dec("retrieval_class/r1_chance", "0.103"))),
    Row("siglip_digits", "configs/siglip_digits.py", (),
        (pct("zero_shot/top1", "93.3 %"), pct("zero_shot/top5", "99.7 %"),
         dec("retrieval/img2txt/r1", "0.161"), dec("retrieval_class/img2txt/r1", "0.847"))),
    Row("simclr_digits", "configs/simclr_digits.py", (),
        (pct("linear_probe/top1", "98.6 %"), pct("knn/top1", "98.3 %"))),
    Row("simclr_init", "configs/simclr_digits.py", ("--config.total_steps=0",),
        (pct("linear_probe/top1", "89.4 %"), pct("knn/top1", "87.8 %"))),
)


def formatted(value: float, percent: bool) -> str:
    """As the README prints it: one decimal for percentages ("100 %" when exact), else three."""
    if percent:
        return "100 %" if value == 1.0 else f"{100 * value:.1f} %"
    return f"{value:.3f}"


def final_metrics(path: str) -> dict[str, float]:
    """The last value of every key in a metrics.jsonl."""
    out: dict[str, float] = {}
    with open(path) as f:
        for line in f:
            out.update({k: v for k, v in json.loads(line).items() if isinstance(v, (int, float))})
    return out


def run_row(row: Row, root: str, reuse: bool) -> tuple[dict[str, float], float]:
    """Runs the row's README command in ROOT/<name> (must not exist unless `reuse`: then its
    finished run is only read); (final metrics, seconds, 0 when reused)."""
    workdir = os.path.join(root, row.name)
    if reuse and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        return final_metrics(os.path.join(workdir, "metrics.jsonl")), 0.0
    if os.path.exists(workdir):
        sys.exit(f"reproduce_readme: {workdir} exists (a run there would resume); remove it first.")
    command = [sys.executable, "-m", "jaxsup.train", "--config", row.config, "--workdir", workdir, *row.extra]
    print("$", " ".join(command[1:]), flush=True)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return final_metrics(os.path.join(workdir, "metrics.jsonl")), time.time() - start


def report(row: Row, metrics: dict[str, float], seconds: float, readme_text: str) -> list[str]:
    """Lines 'row  key  README  measured  same?' for each of the row's numbers."""
    lines = []
    for n in row.numbers:
        measured = formatted(metrics[n.key], n.percent) if n.key in metrics else "missing"
        status = "same" if measured == n.readme else "MOVED"
        if n.readme not in readme_text:
            status += " (README no longer shows this number)"
        lines.append(f"{row.name:18s} {n.key:28s} README {n.readme:>8s}   measured {measured:>8s}   {status}")
    lines.append(f"{row.name:18s} {'wall time':28s} " + (f"{seconds:.0f} s" if seconds else "(reused run)"))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="fresh directory for the runs' workdirs")
    parser.add_argument("--rows", nargs="*", choices=[r.name for r in ROWS], help="default: all fast rows")
    parser.add_argument("--reuse", action="store_true", help="read finished runs under ROOT instead of rerunning")
    parser.add_argument("--json", help="also write {row: {key: {stated, measured, same}, wall_s}} here")
    args = parser.parse_args(argv)
    readme_text = ""
    for page in STATED_IN:  # the README's methods table and docs/methods.md state these numbers
        with open(os.path.join(ROOT, page)) as f:
            readme_text += f.read()
    rows = [r for r in ROWS if not args.rows or r.name in args.rows]
    lines, record = [], {}
    for row in rows:
        metrics, seconds = run_row(row, args.root, args.reuse)
        lines += report(row, metrics, seconds, readme_text)
        record[row.name] = {"wall_s": seconds, **{
            n.key: {"stated": n.readme, "measured": formatted(metrics[n.key], n.percent) if n.key in metrics else None}
            for n in row.numbers}}
        print("\n".join(lines[-len(row.numbers) - 1:]), flush=True)
    print("\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
