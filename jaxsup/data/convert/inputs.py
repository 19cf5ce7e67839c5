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
    features: tuple[str, ...] = ()  # what every record must have, declared for the whole input


# ----------------------------------------------------------------------------- reading inputs


def read_file(path: str) -> tuple[bytes | None, str]:
    try:
        with open(path, "rb") as f:
            return f.read(), ""
    except OSError:
        return None, "missing_image"


def member_key_ext(name: str) -> tuple[str, str]:
    """("dir/000001", "jpg") of a tar member "dir/000001.jpg" (key: the path up to the name's first dot)."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(folder, stem), ext.lower()


def tar_records(tar_path: str, strict: bool) -> tuple[list[tuple[str, dict[str, bytes]]], bool]:
    """(records as (key, {ext: bytes}) in tar order, whether the tar was cut short).

    A record is a run of members with one key; a key met again after another key,
    or an extension met twice in one run, starts a new record (a duplicate)."""
    records: list[tuple[str, dict[str, bytes]]] = []
    try:
        if os.path.getsize(tar_path) == 0:
            raise DataError(f"{tar_path}: an empty file (0 bytes), not a tar.")
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = member_key_ext(member.name)
                if not records or records[-1][0] != key or ext in records[-1][1]:
                    records.append((key, {}))
                records[-1][1][ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        if strict or not records:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
            raise DataError(f"{tar_path}: not a readable tar ({reason}).") from None
        return records, True  # keep what was read; count the rest as lost
    return records, False


def webdataset_items(tar_path: str, strict: bool) -> Iterator[Item]:
    """The records of an img2dataset tar; a key seen before is a `duplicate_key` (the first is kept)."""
    records, truncated = tar_records(tar_path, strict)
    seen: set[str] = set()
    for key, parts in records:
        if key in seen:
            yield Item(key=key, image=None, problem="duplicate_key")
            continue
        seen.add(key)
        image_ext = next((e for e in IMAGE_EXTS if e in parts), None)
        caption = parts["txt"].decode("utf-8", errors="replace") if "txt" in parts else None
        if image_ext is None:
            yield Item(key=key, image=None, caption=caption, problem="missing_image")
        else:
            yield Item(key=key, image=parts[image_ext], caption=caption)
    if truncated:
        yield Item(key=tar_path, image=None, problem="truncated_tar")


def tar_has_captions(tar_path: str) -> bool:
    """Whether any member of the tar is a `.txt` caption (reads the member headers only)."""
    try:
        with tarfile.open(tar_path) as tar:
            return any(member_key_ext(m.name)[1] == "txt" for m in tar if m.isfile())
    except (tarfile.TarError, OSError, EOFError):
        return False  # the shard itself reports the damage when it is converted


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
    # The dataset's columns are declared by all its tars, not by one shard's first record.
    features = ("caption", "image", "key") if any(tar_has_captions(t) for t in tars) else ("image", "key")
    return [Job(i, "webdataset", path, features=features) for i, path in enumerate(tars)]


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
    features = ("caption", "image", "key") if kind == "table" else ("image", "key", "label")
    return [Job(i, kind, f"{source} rows {s}-{min(s + per_shard, len(rows)) - 1}", tuple(rows[s:s + per_shard]), root,
                features) for i, s in enumerate(range(0, len(rows), per_shard))]


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
