"""grain pipelines: a deterministic, checkpointable train stream and padded eval batches.

Train: `source.shuffle(seed).repeat().map(preprocess).batch(local_batch)`.
Every example also carries "index" (int32), its position in the split, so
tasks can keep per-example state (PS-KD predictions, pseudo-labels).
grain reshuffles every epoch with seed + epoch, so example order is a pure
function of (seed, epoch, index). Global batch `s` is the concatenation of
local batches `s * P + p` over processes p < P; each process reads only its
own. The iterator's whole state is the next step number, saved with the
checkpoint. Eval: the split in order, padded to whole global batches with
`mask = 0` rows.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import grain
import jax
import numpy as np

from jaxsup.data import preprocess, splits
from jaxsup.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
    """This process's share of the global batch; raises if the processes do not divide it."""
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ConfigError(f"Global batch {global_batch} is not divisible by {count} processes.")
    return global_batch // count


def train_dataset(
    source: Any,
    preprocess: Callable[[dict], dict],
    global_batch: int,
    seed: int,
    process_count: int | None = None,
) -> grain.MapDataset:
    """Infinite MapDataset of local batches; index k is local batch k of the stream."""
    if len(source) < global_batch:
        raise DataError(f"The dataset has {len(source)} examples, fewer than one batch ({global_batch}).")
    local = local_batch_size(global_batch, process_count)
    return (
        indexed(source)
        .shuffle(seed=seed % 2**32)
        .repeat()
        .map(with_index(preprocess))
        .batch(local, drop_remainder=True)
    )


def indexed(source: Any) -> grain.MapDataset:
    """MapDataset of (index, example) pairs; index in [0, len(source)).

    Under `.shuffle().repeat()` grain hands this map the stream position
    (epoch * N + position), hence the modulo.
    """
    n = len(source)
    return grain.MapDataset.source(source).map_with_index(lambda i, ex: (i % n, ex))


def with_index(preprocess: Callable[[dict], dict]) -> Callable[[tuple[int, dict]], dict]:
    """(index, example) -> preprocess(example) plus "index"."""
    return lambda pair: {**preprocess(pair[1]), "index": np.int32(pair[0])}


def train_iterator(
    dataset: grain.MapDataset,
    start_step: int,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 4,
) -> Iterator[Batch]:
    """This process's local batches for steps start_step, start_step + 1, ..."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    mine = dataset[start_step * pc + pi :: pc]
    return iter(mine.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)))


def eval_batches(
    source: Any,
    preprocess: Callable[[dict], dict],
    global_batch: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """The whole split in order as local batches, padded; `mask` [L] marks real rows."""
    pi = jax.process_index() if process_index is None else process_index
    local = local_batch_size(global_batch, process_count)
    ds = indexed(source).map(with_index(preprocess))
    n = len(ds)
    for k in range(math.ceil(n / global_batch)):
        idx = k * global_batch + pi * local + np.arange(local)
        rows = [ds[int(i)] for i in np.minimum(idx, n - 1)]
        batch = jax.tree.map(lambda *xs: np.stack(xs), *rows)
        batch["mask"] = (idx < n).astype(np.float32)
        yield batch


def to_global(batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Process-local NumPy batch -> global jax.Arrays sharded on the batch dim."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def eval_global_batches(
    data_cfg: Any, split: str, batch_size: int, sharding: jax.sharding.Sharding
) -> Iterator[dict[str, jax.Array]]:
    """Global, sharded, padded batches of `split` of config.data (eval preprocess; "mask" [B])."""
    pre = preprocess.build(data_cfg.get("eval_preprocess") or data_cfg.preprocess)
    for local in eval_batches(splits.open_split(data_cfg, split), pre, batch_size):
        yield to_global(local, sharding)


def example_batch(data_cfg: Any) -> dict[str, np.ndarray]:
    """The first train example, preprocessed, as a batch of one (for shapes)."""
    example = preprocess.build(data_cfg.preprocess)(splits.open_split(data_cfg, data_cfg.train_split)[0])
    return {k: np.asarray(v)[None] for k, v in example.items()}
