"""Inputs of `python -m jaxsup.data.convert`: webdataset tars, tables, image folders -> jobs and items.

A Job is one output shard (a tar, or a chunk of table / folder rows); its
items are the input records, each with its image bytes (or why not),
caption or label. No JAX, no TensorFlow.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os
import tarfile
from typing import Any, Iterator

from jaxsup.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
IMAGE_COLUMNS = ("image", "filepath", "path", "file", "image_path")
CAPTION_COLUMNS = ("caption", "text", "title")


@dataclasses.dataclass(frozen=True)
class Item:
    """One input record: where it came from, its image bytes (or why not), caption, label."""
    key: str
    image: bytes | None
    caption: str | None = None
    label: int | None = None
    problem: str = ""  # a skip reason found while reading ("missing_image", ...)


@dataclasses.dataclass(frozen=True)
class Job:
    """One output shard: its index and what it reads (a tar path, or rows [(key, path, caption|label)])."""
    index: int
    kind: str
    source: str  # for messages and the plan: the tar, or "table.tsv rows 0-9999"
    rows: tuple = ()
    root: str = ""

# ----------------------------------------------------------------------------- reading inputs


def read_file(path: str) -> tuple[bytes | None, str]:
    try:
        with open(path, "rb") as f:
            return f.read(), ""
    except OSError:
        return None, "missing_image"


def webdataset_items(tar_path: str, strict: bool) -> Iterator[Item]:
    """The records of an img2dataset tar: members grouped by key (path up to the first dot of the name)."""
    groups: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, name = os.path.split(member.name)
                stem, _, ext = name.partition(".")
                key = os.path.join(folder, stem)
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                groups[key][ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        if strict or not order:
            raise DataError(f"{tar_path}: not a readable tar ({err}).") from err
        order.append("__truncated_tar__")  # keep what was read; count the rest as lost
    for key in order:
        if key == "__truncated_tar__":
            yield Item(key=tar_path, image=None, problem="truncated_tar")
            continue
        parts = groups[key]
        image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
        caption = parts["txt"].decode("utf-8", errors="replace") if "txt" in parts else None
        if image_ext is None:
            yield Item(key=key, image=None, caption=caption, problem="missing_image")
        else:
            yield Item(key=key, image=parts[image_ext], caption=caption)


def row_items(job: Job) -> Iterator[Item]:
    for key, path, value in job.rows:
        data, problem = read_file(os.path.join(job.root, path))
        if job.kind == "folder":
            yield Item(key=key, image=data, label=int(value), problem=problem)
        else:
            yield Item(key=key, image=data, caption=value, problem=problem)


def items_of(job: Job, strict: bool) -> Iterator[Item]:
    return webdataset_items(job.source, strict) if job.kind == "webdataset" else row_items(job)


# ----------------------------------------------------------------------------- planning jobs


def webdataset_jobs(input_path: str) -> list[Job]:
    tars = sorted(glob.glob(os.path.join(input_path, "**", "*.tar"), recursive=True)) \
        if os.path.isdir(input_path) else sorted(glob.glob(input_path))
    if not tars:
        raise DataError(f"No .tar shards found in {input_path!r} (webdataset input: a folder of img2dataset tars).")
    return [Job(i, "webdataset", path) for i, path in enumerate(tars)]


def table_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV / TSV / parquet table as dicts."""
    if not os.path.isfile(path):
        raise DataError(f"Table {path!r} does not exist.")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise DataError(f"{path}: reading parquet needs pyarrow (`pip install pyarrow`), or use CSV/TSV.") from err
        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.endswith((".tsv", ".tab")) else ","))


def pick_column(rows: list[dict], given: str | None, candidates: tuple[str, ...], what: str, path: str) -> str:
    columns = list(rows[0]) if rows else []
    name = given or next((c for c in candidates if c in columns), None)
    if name is None or name not in columns:
        raise DataError(f"{path}: no {what} column {given or candidates!r}; columns: {columns} "
                        f"(choose one with --{what}-column).")
    return name


def chunked(kind: str, source: str, rows: list[tuple], per_shard: int, root: str) -> list[Job]:
    return [Job(i, kind, f"{source} rows {s}-{min(s + per_shard, len(rows)) - 1}", tuple(rows[s:s + per_shard]), root)
            for i, s in enumerate(range(0, len(rows), per_shard))]


def table_jobs(path: str, per_shard: int, image_column: str | None, caption_column: str | None,
               image_root: str | None) -> list[Job]:
    rows = table_rows(path)
    if not rows:
        raise DataError(f"Table {path!r} has no rows.")
    image_col = pick_column(rows, image_column, IMAGE_COLUMNS, "image", path)
    caption_col = pick_column(rows, caption_column, CAPTION_COLUMNS, "caption", path)
    items = [(f"row{i}", str(r[image_col] or ""), str(r[caption_col] or "")) for i, r in enumerate(rows)]
    urls = [p for _, p, _ in items if "://" in p]
    if urls:
        raise DataError(f"{path}: image column {image_col!r} holds URLs (e.g. {urls[0]!r}); jaxsup never downloads: "
                        "fetch them first (img2dataset writes webdataset tars: convert those).")
    root = image_root or os.path.dirname(os.path.abspath(path))
    return chunked("table", os.path.basename(path), items, per_shard, root)


def folder_jobs(root: str, per_shard: int) -> tuple[list[Job], list[str]]:
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root!r} does not exist.")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    items = [(f"{c}/{f}", os.path.join(c, f), label) for label, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(root, c))) if f.rpartition(".")[2].lower() in IMAGE_EXTS]
    if not items:
        raise DataError(f"No images in class sub-folders of {root!r} (expected {root}/<class>/<image>.jpg).")
    return chunked("folder", os.path.basename(os.path.normpath(root)), items, per_shard, root), classes
