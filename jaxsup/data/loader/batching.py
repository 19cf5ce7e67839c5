"""Reading and assembling batches on the host: batched reads, in-memory columns, stacking.

`read_batch(source, pre, indices, epochs, seed)` is the one function the train
and eval pipelines map over batches of indices: it reads the examples in one
call (`source.__getitems__` where the source has it: array_record reads the
records in parallel), runs the per-example ops with each example's RNG key
(seed, epoch, index), stacks them into arrays [B, ...] and runs the batchable
ops once on the whole batch. A small split of fixed-shape arrays (digits,
CIFAR) is decoded once into columns (`in_memory`), so its batches are a
fancy-index and the batched ops, with no per-example Python at all.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from jaxsup.data.host.preprocess import RNG_KEY, Example, Preprocess, host_only
from jaxsup.errors import DataError

Batch = dict[str, np.ndarray]
IN_MEMORY_MAX_BYTES = 512 * 2**20  # splits of fixed-shape arrays up to this size are decoded once
_READ_CHUNK = 1024


class InMemorySource:
    """A split held as columns {feature: [N, ...]}; random access like a data source."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = columns
        self._len = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Example:
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        return [self[int(i)] for i in indices]

    def take(self, indices: np.ndarray) -> Batch:
        """The rows `indices` [B] of every column: {feature: [B, ...]}."""
        return {k: v[indices] for k, v in self.columns.items()}


def read_examples(source: Any, indices: Sequence[int]) -> list[Example]:
    """source[i] for each index, in one batched read when the source supports it."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        return list(getitems([int(i) for i in indices]))
    return [source[int(i)] for i in indices]


def fixed_size_bytes(example: Example) -> int | None:
    """Bytes of one example if every feature is a numeric array (fixed shape), else None."""
    total = 0
    for value in example.values():
        array = np.asarray(value) if not isinstance(value, (dict, bytes, str)) else None
        if array is None or array.dtype.kind not in "biuf":
            return None
        total += array.nbytes
    return total


_CACHE: dict[int, tuple[Any, InMemorySource]] = {}
_CACHE_LOCK = threading.Lock()


def in_memory(source: Any, max_bytes: int = IN_MEMORY_MAX_BYTES) -> Any:
    """`source` as an InMemorySource if it is a small split of fixed-shape numeric features, else `source`.

    Decoded once per process and source object (TFDS sources are opened once, jaxsup.data.datasets.splits).
    """
    if isinstance(source, InMemorySource) or len(source) == 0:
        return source
    with _CACHE_LOCK:
        if id(source) in _CACHE:
            return _CACHE[id(source)][1]
        per_example = fixed_size_bytes(source[0])
        if per_example is None or per_example * len(source) > max_bytes:
            return source
        chunks = [stack_examples(read_examples(source, range(s, min(s + _READ_CHUNK, len(source)))), s)
                  for s in range(0, len(source), _READ_CHUNK)]
        columns = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        cached = InMemorySource(columns)
        _CACHE[id(source)] = (source, cached)  # keeps `source` alive so its id is not reused
        return cached


def stack_examples(examples: Sequence[Example], first_index: int = 0) -> Batch:
    """Examples with the same features and shapes -> {feature: [B, ...]}; DataError naming a mismatch."""
    keys = list(examples[0])
    for k, ex in enumerate(examples):
        if list(ex) != keys:
            raise DataError(f"Example {first_index + k} has features {sorted(ex)}, the batch's first {sorted(keys)}.")
    out = {}
    for key in keys:
        values = [ex[key] for ex in examples]
        try:
            out[key] = np.stack(values)
        except ValueError as err:
            shapes = sorted({np.shape(v) for v in values})
            raise DataError(f"Feature {key!r} has different shapes within a batch: {shapes} (resize/crop it to "
                            f"one size in config.data.preprocess).") from err
    return out


def read_batch(source: Any, pre: Preprocess, indices: np.ndarray, epochs: np.ndarray | int = 0,
               seed: int = 0) -> Batch:
    """The preprocessed batch of examples `indices` [B] (positions in the split); adds "index" [B] int32.

    Per-example ops see ex["_rng"] = (seed, epoch, index) for their random draws.
    """
    indices = np.asarray(indices, np.int64)
    if isinstance(source, InMemorySource) and not pre.per_example:
        batch = source.take(indices)
    else:
        epochs = np.broadcast_to(np.asarray(epochs, np.int64), indices.shape)
        keys = np.stack([np.full(indices.shape, seed % 2**32), epochs, indices], axis=1).astype(np.uint32)
        examples = [{**ex, RNG_KEY: key} for ex, key in zip(read_examples(source, indices), keys)]
        batch = stack_examples([host_only(pre.example(ex)) for ex in examples])
    batch = host_only(pre.batch(batch))
    batch["index"] = indices.astype(np.int32)
    return batch
