"""Convert image-text and image-folder data to array_record shards that `config.data.path` reads.

    python -m jaxsup.data.convert webdataset /data/cc3m/ --out /data/cc3m_ar --split train --workers 16
    python -m jaxsup.data.convert table /data/captions.tsv --out /data/mine_ar --caption-column title
    python -m jaxsup.data.convert folder /data/imagenet/train --out /data/imagenet_ar --split train --resize 256

Kinds of input:
- `webdataset`: a directory of `.tar` shards as img2dataset writes them (`{key}.jpg`
  / `.png` / `.webp`, `{key}.txt` caption, `{key}.json` ignored); one output shard per tar.
- `table`: a CSV, TSV or parquet (parquet needs pyarrow) with an image-path column
  and a caption column; paths relative to the table's folder (or `--image-root`).
- `folder`: one sub-folder per class (`root/<class>/*.jpg`); labels are the sorted
  class names' positions, kept in the split's dataset.json ("class_names").

Every image is fully decoded once to check it. A zero-byte, truncated or
unreadable image, a missing file, or an empty caption skips the example and
is counted (`skipped/<reason>` in the summary); `--strict` makes the first
one an error naming the shard and the record. Captions longer than
`--max-caption-chars` are cut (counted). Images with 1, 2 or 4 channels, CMYK
or palettes are kept as they are (the `decode` op converts them), or, with
`--resize S`, re-encoded as RGB (or grey) JPEG with the shorter side at most S.

Parallel over shards (`--workers` processes), a progress bar, and resumable:
a shard is written to a temporary file, renamed, then its summary is written;
a restarted conversion keeps every shard with a summary and redoes the rest.
Shards whose features differ (e.g. one tar with captions, one without) stop
the conversion with an error naming both; finished shards are kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import json
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from PIL import Image, ImageFile

from jaxsup import workdir as workdir_lib
from jaxsup.data.convert import inputs
from jaxsup.data.datasets import shards
from jaxsup.data.convert.inputs import Item, Job
from jaxsup.errors import DataError, JaxsupError

PLAN = "convert.json"
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclasses.dataclass(frozen=True)
class Options:
    strict: bool = False  # the first bad record is an error naming it
    resize: int = 0  # > 0: shorter side at most this, re-encoded as JPEG
    quality: int = 95  # JPEG quality when re-encoding
    max_caption_chars: int = 1000


# ----------------------------------------------------------------------------- checking records


def checked_image(data: bytes, options: Options) -> tuple[bytes | None, str]:
    """(bytes to store, "") or (None, skip reason): decoded once in full; re-encoded if options.resize."""
    if not data:
        return None, "empty_image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated or corrupt file raises here
            return (resized_jpeg(image, options) if options.resize else data), ""
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None, "bad_image"


def resized_jpeg(image: Image.Image, options: Options) -> bytes:
    """RGB (or grey) JPEG with the shorter side at most options.resize (aspect kept)."""
    image = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
    w, h = image.size
    scale = options.resize / min(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=options.quality)
    return out.getvalue()


def record_of(item: Item, options: Options, counts: Counter) -> tuple[dict | None, str]:
    """(record, "") or (None, skip reason) for one input item; counts truncated captions."""
    if item.problem:
        return None, item.problem
    image, problem = checked_image(item.image, options)
    if problem:
        return None, problem
    record: dict[str, Any] = {"image": image, "key": item.key}
    if item.caption is not None:
        caption = item.caption.strip()
        if not caption:
            return None, "empty_caption"
        if len(caption) > options.max_caption_chars:
            caption = caption[: options.max_caption_chars]
            counts["caption_truncated"] += 1
        record["caption"] = caption
    if item.label is not None:
        record["label"] = item.label
    return record, ""


# ----------------------------------------------------------------------------- one shard


def feature_problem(record: dict | None, features: set[str] | None) -> str:
    """"missing_caption" / "extra_label" when a record's fields differ from the declared ones, else ""."""
    if record is None or features is None or set(record) == features:
        return ""
    missing, extra = sorted(features - set(record)), sorted(set(record) - features)
    return f"missing_{'_'.join(missing)}" if missing else f"extra_{'_'.join(extra)}"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_shard(job: Job, out_dir: str, options: Options) -> dict[str, Any]:
    """Converts one job into <out_dir>/shard-XXXXX.array_record (+ .json summary, written last)."""
    from array_record.python import array_record_module

    name = shard_name(job.index)
    final = os.path.join(out_dir, name + ".array_record")
    tmp = final + ".tmp"
    counts: Counter = Counter()
    features: set[str] | None = set(job.features) or None  # declared by the input; else the first record's
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
        for item in inputs.items_of(job, options.strict):
            record, problem = record_of(item, options, counts)
            problem = problem or feature_problem(record, features)
            if problem:
                if options.strict:
                    raise DataError(f"{job.source}: record {item.key!r}: {problem.replace('_', ' ')}.")
                counts["skipped/" + problem] += 1
                continue
            features = features or set(record)
            writer.write(shards.encode_record(record))
            counts["examples"] += 1
    finally:
        writer.close()
    os.replace(tmp, final)
    summary = {"file": name + ".array_record", "source": job.source, "num_examples": counts.pop("examples", 0),
               "features": sorted(features or ()), "counts": dict(counts)}
    write_json(os.path.join(out_dir, name + ".json"), summary)
    return summary


def write_json(path: str, value: Any) -> None:
    """Atomically: a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- the whole conversion


def check_plan(out_dir: str, plan: dict[str, Any]) -> None:
    """A restart must convert the same inputs with the same options as the run it resumes."""
    path = os.path.join(out_dir, PLAN)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != plan:
            raise DataError(f"{out_dir} holds a conversion of other inputs or options ({path}); "
                            "resume with the same command, or write to a new --out / --split.")
    else:
        write_json(path, plan)


def done_summaries(out_dir: str, jobs: list[Job]) -> dict[int, dict]:
    """Summaries of the shards a previous run finished; removes half-written files."""
    for tmp in glob.glob(os.path.join(out_dir, "*.tmp")):
        os.remove(tmp)
    done = {}
    for job in jobs:
        path = os.path.join(out_dir, shard_name(job.index) + ".json")
        if os.path.exists(path):
            with open(path) as f:
                done[job.index] = json.load(f)
    return done


def check_schemas(summaries: list[dict]) -> list[str]:
    """The features all non-empty shards share; DataError naming two shards that differ."""
    filled = [s for s in summaries if s["num_examples"]]
    if not filled:
        raise DataError("No example could be converted: every record was skipped (see the counts above).")
    for s in filled[1:]:
        if s["features"] != filled[0]["features"]:
            raise DataError(f"Shards differ in features: {filled[0]['source']} has {filled[0]['features']}, "
                            f"{s['source']} has {s['features']}; convert them to separate --out folders.")
    return filled[0]["features"]


def exit_with_parent(parent_pid: int, every_s: float = 0.2) -> None:
    """Worker initializer: a daemon thread ends this process once its parent is gone (even by SIGKILL),
    so no orphan keeps writing into the output folder."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(jobs: list[Job], out_dir: str, options: Options, workers: int, progress: bool) -> dict[int, dict]:
    """Converts the jobs not done yet (in `workers` processes); a progress bar over shards."""
    done = done_summaries(out_dir, jobs)
    todo = [j for j in jobs if j.index not in done]
    bar = progress_bar(len(jobs), len(done), progress)
    try:
        if workers <= 1:
            for job in todo:
                done[job.index] = write_shard(job, out_dir, options)
                bar.update(1)
        else:
            # spawn, not fork: a caller that has JAX (or any threads) loaded must not be forked.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(write_shard, job, out_dir, options): job for job in todo}
                for future in as_completed(futures):
                    done[futures[future].index] = future.result()
                    bar.update(1)
    finally:
        bar.close()  # before any error line
    return done


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="shard", desc="convert", disable=not enabled, file=sys.stderr)


def convert(kind: str, input_path: str, out: str, split: str = "train", workers: int = 1,
            options: Options = Options(), examples_per_shard: int = 10_000, image_column: str | None = None,
            caption_column: str | None = None, image_root: str | None = None, progress: bool = False
            ) -> dict[str, Any]:
    """Converts `input_path` into <out>/<split>/; returns the split's dataset.json (also written)."""
    class_names: list[str] = []
    if kind == "webdataset":
        jobs = inputs.webdataset_jobs(input_path)
    elif kind == "table":
        jobs = inputs.table_jobs(input_path, examples_per_shard, image_column, caption_column, image_root)
    elif kind == "folder":
        jobs, class_names = inputs.folder_jobs(input_path, examples_per_shard)
    else:
        raise DataError(f"Unknown input kind {kind!r}: webdataset, table or folder.")
    out_dir = shards.split_dir(out, split)
    os.makedirs(out_dir, exist_ok=True)
    with workdir_lib.WorkdirLock(out_dir, what="Output folder", option="--out (or --split)"):
        check_plan(out_dir, {"kind": kind, "input": os.path.abspath(input_path), "shards": [j.source for j in jobs],
                             "options": dataclasses.asdict(options), "examples_per_shard": examples_per_shard})
        info = finish(jobs, out_dir, kind, split, class_names, run_jobs(jobs, out_dir, options, workers, progress))
    return info


def finish(jobs: list[Job], out_dir: str, kind: str, split: str, class_names: list[str],
           done: dict[int, dict]) -> dict[str, Any]:
    """The split's dataset.json from the shards' summaries (written, and returned)."""
    summaries = [done[j.index] for j in jobs]
    counts: Counter = Counter()
    for s in summaries:
        counts.update(s["counts"])
    info = {"kind": kind, "split": split, "num_examples": sum(s["num_examples"] for s in summaries),
            "features": check_schemas(summaries), "class_names": class_names, "counts": dict(sorted(counts.items())),
            "shards": [{"file": s["file"], "num_examples": s["num_examples"]} for s in summaries]}
    write_json(os.path.join(out_dir, shards.SPLIT_INFO), info)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxsup.data.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("webdataset", "table", "folder"))
    parser.add_argument("input", help="folder of tars | table file | class-folder root")
    parser.add_argument("--out", required=True, help="dataset folder (config.data.path)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (one shard each)")
    parser.add_argument("--resize", type=int, default=0, help="shorter side at most this (re-encoded JPEG)")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--strict", action="store_true", help="the first bad record is an error naming it")
    parser.add_argument("--max-caption-chars", type=int, default=1000)
    parser.add_argument("--examples-per-shard", type=int, default=10_000, help="table / folder inputs")
    parser.add_argument("--image-column")
    parser.add_argument("--caption-column")
    parser.add_argument("--image-root", help="table: folder the image paths are relative to")
    args = parser.parse_args(argv)
    options = Options(strict=args.strict, resize=args.resize, quality=args.quality,
                      max_caption_chars=args.max_caption_chars)
    try:
        info = convert(args.kind, args.input, args.out, args.split, args.workers, options, args.examples_per_shard,
                       args.image_column, args.caption_column, args.image_root, progress=True)
    except JaxsupError as err:
        print(f"jaxsup.data.convert: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only, permission: one line naming the file
        where = err.filename or args.out
        print(f"jaxsup.data.convert: error: {where}: {err.strerror or err} (finished shards are kept; "
              "rerun the same command to resume).", file=sys.stderr)
        return 2
    print(json.dumps({k: info[k] for k in ("split", "num_examples", "features", "counts")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
