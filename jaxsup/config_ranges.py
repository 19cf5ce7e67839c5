"""Declared valid ranges of numeric config fields, checked once where a run reads its config.

`RANGES` holds the generic fields' ranges; each task section declares its own next to
the task (`jaxsup/tasks/<task>/section.py`), and `jaxsup.config.check_values` checks
both. `RANGES` maps a dotted key to a `Range`; a key may use `*` for any section
(`*.temperature`) or end in `[]` for every entry of a sequence
(`model.widths[]`). `check_ranges(config)` raises one ConfigError naming the
key, the value and the range for the first bad value; keys the config lacks
are skipped (a task reads only its own sections). No JAX here: configs and
the command line use it before anything is built.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import ml_collections

from jaxsup.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed or half-open numeric interval; `integer` also requires a whole number."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.integer and float(value) != int(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        low = "-inf" if self.low == -math.inf else f"{self.low:g}"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        return f"{kind} in {left}{low}, {high}{right}"


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)
OPEN_FRACTION = Range(0, 1, high_open=True)

RANGES: dict[str, Range] = {
    "batch_size": POSITIVE_INT,
    "total_steps": NON_NEGATIVE_INT,  # 0: evaluate the initial state only
    "log_every": POSITIVE_INT,
    "grad_accum_steps": POSITIVE_INT,
    "max_consecutive_skips": NON_NEGATIVE_INT,
    "peak_flops_per_device": NON_NEGATIVE,
    "checkpoint.every": NON_NEGATIVE_INT,  # 0: save at the end only
    "checkpoint.keep": POSITIVE_INT,
    "data.prefetch": NON_NEGATIVE_INT,
    "data.workers": NON_NEGATIVE_INT,
    "data.worker_processes": NON_NEGATIVE_INT,
    "optim.lr": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE_INT,
    "optim.end_lr_factor": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.b1": OPEN_FRACTION,
    "optim.b2": OPEN_FRACTION,
    "optim.momentum": OPEN_FRACTION,
    "optim.clip_norm": NON_NEGATIVE,
    "optim.lars_trust_coefficient": NON_NEGATIVE,
    "model.widths[]": POSITIVE_INT,
    "model.num_classes": POSITIVE_INT,
    "model.depth": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT,
    "model.patch_size": POSITIVE_INT,
    "model.dropout": OPEN_FRACTION,
    "evals.*.every": NON_NEGATIVE_INT,  # 0: only at the end of the run
    "evals.*.batch_size": POSITIVE_INT,
}


def _expand(node: Any, parts: list[str], path: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every field of `node` the pattern `parts` names."""
    if not parts:
        yield path, node
        return
    head, rest = parts[0], parts[1:]
    if not isinstance(node, ml_collections.ConfigDict):
        return
    names = sorted(node.keys()) if head == "*" else [head] if head in node else []
    for name in names:
        yield from _expand(node[name], rest, f"{path}.{name}" if path else name)


def fields_in_range(config: ml_collections.ConfigDict, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) pairs a RANGES key names in `config`; `[]` yields each entry."""
    each = key.endswith("[]")
    for path, value in _expand(config, key.removesuffix("[]").split("."), ""):
        if not each:
            yield path, value
        elif isinstance(value, (tuple, list)):
            yield from ((f"{path}[{i}]", v) for i, v in enumerate(value))


def check_ranges(config: ml_collections.ConfigDict, ranges: dict[str, Range] | None = None) -> None:
    """Raises ConfigError for the first value outside its declared range."""
    for key, valid in (RANGES if ranges is None else ranges).items():
        for path, value in fields_in_range(config, key):
            if isinstance(value, ml_collections.ConfigDict) or value is None:
                continue
            if key.startswith("*.") and isinstance(value, (str, tuple, list)):
                continue  # a wildcard key met a field of another meaning
            if not valid.holds(value):
                raise ConfigError(f"config.{path}={value!r} (--config.{path}): expected {valid}.")
