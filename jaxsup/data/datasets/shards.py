"""Converted datasets: array_record shards of msgpack records, read as a random-access source.

Written by `python -m jaxsup.data.convert` (jaxsup/data/convert/cli.py), read when
`config.data.path` is set (instead of a TFDS name). Layout of one dataset:

    <path>/<split>/shard-00000.array_record   records: msgpack {"image": bytes, "caption": str,
                                              "label": int, "key": str} (the features the split has)
    <path>/<split>/shard-00000.json           the shard's summary (written last: marks it complete)
    <path>/<split>/dataset.json               the split: shards, num_examples, features, class_names, counts

A split string may slice, as in TFDS: "train", "train[:10%]", "validation[:500]".
No JAX and no TensorFlow here.
"""
from __future__ import annotations

import json
import os
import types
from typing import Any, Sequence

import msgpack
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_data_source

from jaxsup.errors import DataError

SPLIT_INFO = "dataset.json"
Example = dict[str, Any]


def encode_record(example: Example) -> bytes:
    """{"image": bytes, "caption": str, "label": int, "key": str, ...} -> one record's bytes."""
    return msgpack.packb(example, use_bin_type=True)


def decode_record(record: bytes) -> Example:
    """A record's bytes -> the example, with "label" as int64 (as TFDS gives it)."""
    ex = msgpack.unpackb(record, raw=False)
    if "label" in ex:
        ex["label"] = np.int64(ex["label"])
    return ex


def split_dir(path: str, split: str) -> str:
    return os.path.join(path, split)


def read_split_info(path: str, split: str) -> dict[str, Any]:
    """The split's dataset.json; DataError naming the file and the command that writes it."""
    info_path = os.path.join(split_dir(path, split), SPLIT_INFO)
    if not os.path.isfile(info_path):
        present = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, SPLIT_INFO))) \
            if os.path.isdir(path) else []
        raise DataError(f"No converted split {split!r} at {info_path!r} (splits there: {present}); write it with "
                        f"`python -m jaxsup.data.convert KIND INPUT --out {path} --split {split}`.")
    with open(info_path) as f:
        return json.load(f)


class ShardSource:
    """Examples [start, stop) of a converted split; len / __getitem__ / __getitems__ like a TFDS data source."""

    def __init__(self, path: str, split: str, start: int, stop: int, info: dict[str, Any]):
        files = [os.path.join(split_dir(path, split), s["file"]) for s in info["shards"] if s["num_examples"]]
        self._source = array_record_data_source.ArrayRecordDataSource(files) if files else []
        self.start, self.stop, self.info = start, stop, info

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} outside a split of {len(self)} examples")
        return decode_record(self._source[self.start + int(i)])

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        records = self._source.__getitems__([self.start + int(i) for i in indices])
        return [decode_record(r) for r in records]


def open_split(path: str, split: str) -> ShardSource:
    """A converted split (TFDS slicing syntax: "train[:10%]") as a random-access source."""
    ranges = split_ranges(path, split)
    if len(ranges) != 1:
        raise DataError(f"Split {split!r}: a converted dataset reads one contiguous range of one split.")
    base, start, stop = ranges[0]
    return ShardSource(path, base, start, stop, read_split_info(path, base))


def split_ranges(path: str, split: str) -> list[tuple[str, int, int]]:
    """[(split, start, stop)] of a split string over a converted dataset (as jaxsup.data.datasets.splits.split_ranges)."""
    instruction = tfds.core.ReadInstruction.from_spec(split)
    names = {part.split("[")[0].strip() for part in split.split("+")}
    sizes = {n: types.SimpleNamespace(num_examples=read_split_info(path, n)["num_examples"]) for n in names}
    out = []
    for ins in instruction.to_absolute(sizes):
        total = sizes[ins.splitname].num_examples
        out.append((ins.splitname, ins.from_ or 0, total if ins.to is None else ins.to))
    return out


def class_names(path: str, split: str) -> list[str]:
    """The class names of an image-folder conversion ([] for other kinds)."""
    return list(read_split_info(path, split.split("[")[0]).get("class_names", []))
