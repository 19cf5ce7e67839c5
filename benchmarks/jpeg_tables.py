"""docs/host_jpeg.md's tables, made from the JSON of `input_pipeline.py --jpeg` and of jpeg_scaling.py.

    python benchmarks/jpeg_tables.py benchmarks/results/host_jpeg.json \
        [--scaling benchmarks/results/host_jpeg_scaling.json]

Prints Markdown: the load, the target check (jaxsup [jpeg] over tf.data in images per
CPU-second, per set, antialias setting and thread count), every contender with median and
[min-max] over the rounds, the mean abs differences between contenders, and the scaling rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jpeg_bench import ratio  # noqa: E402


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in rows), ""]


def times(x: float) -> str:
    """A ratio as "1.23", or "–" where there is nothing to compare with (nan)."""
    return f"{x:.2f}" if x == x else "–"


def spread(r: dict, key: str) -> str:
    return f"{r[key]:.0f} [{r[key + '_min']:.0f}–{r[key + '_max']:.0f}]"


def loads(values: list) -> str:
    return ", ".join(f"{v[0]:.1f}" for v in values)


def target_rows(report: dict) -> list[list[Any]]:
    """[set, antialias, threads, [jpeg] img/CPU-s, tf.data img/CPU-s, ratio, >= 1.0] for each cell."""
    rows = []
    for name, block in report["sets"].items():
        res = block["results"]
        for r in res.values():
            if r["impl"] == "jaxsup [jpeg]" and r["kind"] == "op":
                x = ratio(res, r, "tf.data")
                ref = r["images_per_cpu_s"] / x if x == x else float("nan")
                rows.append([name, r["antialias"], r["threads"], f"{r['images_per_cpu_s']:.0f}", f"{ref:.0f}",
                             f"{x:.2f}", "yes" if x >= 1.0 else ("no" if x == x else "no tf.data")])
    return rows


def bench_tables(report: dict) -> list[str]:
    lines = [f"{report['cpus']} cores; tf.data {report['tf_data'] or 'not importable (column skipped)'}, "
             f"Pillow {report['pillow']}; load average (1 min) {report['load_before'][0]:.1f} before, "
             f"{report['load_after'][0]:.1f} after; medians [min–max] of {report['rounds']} interleaved rounds; "
             f"batches uint8 [{report['batch']}, 224, 224, 3].", ""]
    lines += ["Target, jaxsup `[jpeg]` over tf.data in images per CPU-second:", ""]
    lines += table(["set", "antialias", "threads", "[jpeg] img/CPU-s", "tf.data img/CPU-s", "ratio", ">= 1.0"],
                   target_rows(report))
    for name, block in report["sets"].items():
        res = block["results"]
        lines += [f"{name}: {block['images']} JPEGs, mean {block['mean_kb']:.0f} KB, load per round "
                  f"{loads(block['load_per_round'])}. Mean abs diff (levels, first batch): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in block["mean_abs_diff"].items()) + ".", ""]
        rows = [[r["impl"] + (" pipeline" if r["kind"] == "pipeline" else ""), r["antialias"], r["threads"],
                 spread(r, "images_per_s"), spread(r, "images_per_cpu_s"),
                 times(ratio(res, r, "tf.data")), times(ratio(res, r, "jaxsup Pillow"))] for r in res.values()]
        lines += table(["contender", "antialias", "threads", "images/s", "img/CPU-s", "vs tf.data", "vs Pillow"],
                       rows)
    return lines


def scaling_tables(report: dict) -> list[str]:
    lines = [f"{report['cpus']} cores, {report['images']} JPEGs of 400–640 px, window decode "
             f"{'on' if report['turbo'] else 'off'}, load per round {loads(report['load_per_round'])}, "
             f"medians [min–max] of {report['rounds']} rounds; pipeline rows: {report['pipeline_steps']} batches.", ""]
    rows = [[r["kind"], r["how"], r["antialias"], f"{r['workers']}{' (oversubscribed)' if r['oversubscribed'] else ''}",
             spread(r, "images_per_s"), spread(r, "images_per_cpu_s")] for r in report["results"].values()]
    lines += table(["kind", "workers are", "antialias", "workers", "images/s", "img/CPU-s"], rows)
    m = report["model"]
    rows = [[aa, f"{m[aa]['per_core']:.0f}", f"{m[aa]['gil_held_ms']:.2f}", f"{m[aa]['threads_gil_cap']:.0f}",
             f"{m[aa]['processes']:.0f}", f"{m[aa]['threads']:.0f}"] for aa in ("aa=1", "aa=0")]
    lines += [f"Model for a {m['cores']}-core host with {m['workers']} input workers:", ""]
    lines += table(["antialias", "img/CPU-s per process", "GIL held ms/image", "one process's thread cap img/s",
                    f"{m['workers']} processes img/s", f"{m['workers']} threads img/s"], rows)
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="JSON of input_pipeline.py --jpeg")
    parser.add_argument("--scaling", default=None, help="JSON of jpeg_scaling.py")
    args = parser.parse_args(argv)
    with open(args.bench, encoding="utf-8") as f:
        lines = bench_tables(json.load(f))
    if args.scaling:
        with open(args.scaling, encoding="utf-8") as f:
            lines += scaling_tables(json.load(f))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
