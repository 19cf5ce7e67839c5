"""Splits of a configured dataset: open once, count, resolve to example ranges, check disjoint.

`data_cfg` is a run's `config.data` (name, data_dir, or path: a dataset
written by `python -m jaxsup.data.convert`, jaxsup/data/datasets/shards.py); a split is
a TFDS split string such as "train", "train[:10%]" or "train[50%:]".
"""
from __future__ import annotations

import functools
from typing import Any

import tensorflow_datasets as tfds

from jaxsup.data.datasets import shards, sources
from jaxsup.errors import ConfigError, DataError


@functools.lru_cache(maxsize=None)
def _cached_source(name: str, split: str, data_dir: str | None, path: str = "") -> Any:
    return shards.open_split(path, split) if path else sources.open_source(name, split, data_dir)


def open_split(data_cfg: Any, split: str) -> Any:
    """The split's random-access data source, opened once per process."""
    return _cached_source(data_cfg.name, split, data_cfg.data_dir or None, data_cfg.get("path") or "")


def num_examples(data_cfg: Any, split: str) -> int:
    """Number of examples in `split`."""
    return len(open_split(data_cfg, split))


def split_ranges(data_cfg: Any, split: str) -> list[tuple[str, int, int]]:
    """[(base split, start, stop)] absolute example ranges of a TFDS split string."""
    if data_cfg.get("path"):
        return shards.split_ranges(data_cfg.path, split)
    builder = sources.get_builder(data_cfg.name, data_cfg.data_dir or None)
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
    except (ValueError, KeyError, AssertionError) as err:
        raise DataError(f"Split {split!r} of {data_cfg.name!r} cannot be resolved: {err}") from err
    ranges = []
    for ins in instructions:
        total = builder.info.splits[ins.splitname].num_examples
        start = 0 if ins.from_ is None else ins.from_
        stop = total if ins.to is None else ins.to
        ranges.append((ins.splitname, start, stop))
    return ranges


def shared_examples(a: list[tuple[str, int, int]], b: list[tuple[str, int, int]]) -> int:
    """Number of examples two lists of (base split, start, stop) ranges have in common."""
    return sum(max(0, min(stop_a, stop_b) - max(start_a, start_b))
               for base_a, start_a, stop_a in a for base_b, start_b, stop_b in b if base_a == base_b)


def check_disjoint(splits: dict[str, str], ranges: dict[str, list[tuple[str, int, int]]], dataset: str) -> None:
    """Raises ConfigError if any two named splits share an example.

    splits: {role: split string}; ranges: {role: its split_ranges}.
    """
    roles = list(splits)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            shared = shared_examples(ranges[a], ranges[b])
            if shared:
                raise ConfigError(
                    f"Splits overlap: {a}={splits[a]!r} and {b}={splits[b]!r} share {shared} examples of "
                    f"{dataset!r}; the weak supervisor, the strong models and the test set must use "
                    "disjoint examples (e.g. train[:50%] / train[50%:] / test)."
                )


def check_disjoint_splits(data_cfg: Any, splits: dict[str, str]) -> None:
    """check_disjoint over the splits of config.data, e.g. {"weak": "train[:50%]", "strong": "train[50%:]"}."""
    check_disjoint(splits, {role: split_ranges(data_cfg, s) for role, s in splits.items()}, data_cfg.name)
