"""grain pipelines: a deterministic, checkpointable train stream and padded eval batches.

Train: the stream is epoch after epoch of the split, each epoch in its own
permutation drawn from (seed, epoch) (`epoch_order`; with `guide`, pseudo-classes
of the examples, an order in which no global batch holds two examples of one
class: `jaxsup.data.loader.guided_batches`); local batch k holds
stream positions [k L, (k + 1) L) and is read and preprocessed as a whole
(`jaxsup.data.loader.batching.read_batch`: batched reads, per-example ops seeded by
(seed, epoch, index), batched ops). Batch k is a pure function of (seed, k). Every batch carries
"index" [L] int32, each example's position in the split, so tasks can keep
per-example state. Global batch `s` is the concatenation of local batches
`s * P + p` over processes p < P; each process reads only its own. The
iterator's whole state is the next step number, saved with the checkpoint.

Workers: batches are prepared by `workers` threads (Pillow and NumPy release
the GIL) and optionally `processes` grain worker processes (each owns a
strided slice of the batches, so the order is the same); either way batch k
is the same array. Eval: the split in order, padded to whole global batches
with `mask = 0` rows, read a batch at a time.

Device side: `to_global` sends uint8 images [B, H, W, C] as uint8 (a quarter
of the bytes of float32) and turns them into float32 in [0, 1] on the devices.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jaxsup.data.datasets import splits
from jaxsup.data.host import preprocess as preprocess_lib, reinforce_store  # noqa: F401 (registers "reinforce:DIR")
from jaxsup.data.loader import batching, guided_batches
from jaxsup.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
STREAM_BATCHES = 2**50  # the train stream's length: endless in practice
DEFAULT_WORKERS = 2  # threads; measured best on the 2-core CI host (benchmarks/input_pipeline.py)


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
    """This process's share of the global batch; raises if the processes do not divide it."""
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ConfigError(f"Global batch {global_batch} is not divisible by {count} processes.")
    return global_batch // count


def _as_preprocess(pre: Callable[[dict], dict]) -> preprocess_lib.Preprocess:
    """A built Preprocess, or any per-example callable wrapped as one."""
    return pre if isinstance(pre, preprocess_lib.Preprocess) else preprocess_lib.Preprocess([pre], [], ())


def train_dataset(
    source: Any,
    preprocess: Callable[[dict], dict],
    global_batch: int,
    seed: int,
    process_count: int | None = None,
    guide: np.ndarray | None = None,
) -> grain.MapDataset:
    """Infinite MapDataset of local batches; index k is local batch k of the stream.

    guide: pseudo-classes [n] of the split's examples, or None; when given, every
    global batch holds examples of distinct classes (`guided_batches.GuidedOrder`).
    """
    n = len(source)
    if n == 0:
        raise DataError("The train split has no examples (no shards, or an empty split).")
    if n < global_batch:
        raise DataError(f"The dataset has {n} examples, fewer than one batch ({global_batch}).")
    local = local_batch_size(global_batch, process_count)
    order = None
    if guide is not None:
        order = guided_batches.GuidedOrder(guide, global_batch)
        n = order.epoch_length
    read = functools.partial(_read_step, batching.in_memory(source), _as_preprocess(preprocess), n, seed, local, order)
    return grain.MapDataset.range(STREAM_BATCHES).map(read)


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The split's example indices [n] in the order of `epoch`: a permutation drawn from (seed, epoch)."""
    order = np.random.default_rng([seed % 2**32, epoch]).permutation(n)
    order.setflags(write=False)
    return order


def stream_examples(
    seed: int, n: int, positions: np.ndarray, order: Callable[[int, int], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stream positions [L] -> (epochs [L], example indices [L]): position p is epoch p // n, slot p % n.

    n: the epoch's length; order(seed, epoch) -> its example indices [n] (default `epoch_order`).
    """
    epochs = positions // n
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        at = epochs == epoch
        epoch_indices = order(seed, int(epoch)) if order else epoch_order(seed, int(epoch), n)
        indices[at] = epoch_indices[positions[at] % n]
    return epochs, indices


def _read_step(source: Any, pre: preprocess_lib.Preprocess, n: int, seed: int, local: int,
               order: Callable[[int, int], np.ndarray] | None, k: int) -> Batch:
    """Local batch k of the stream: positions [k L, (k + 1) L), read and preprocessed."""
    epochs, indices = stream_examples(seed, n, k * local + np.arange(local, dtype=np.int64), order)
    return batching.read_batch(source, pre, indices, epochs, seed)


def train_iterator(
    dataset: grain.MapDataset,
    start_step: int,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 4,
    workers: int = DEFAULT_WORKERS,
    processes: int = 0,
) -> Iterator[Batch]:
    """This process's local batches for steps start_step, start_step + 1, ...

    workers: threads preparing batches; processes: grain worker processes (0: none).
    The batches are the same whatever the workers.
    """
    if workers < 1 or processes < 0 or prefetch < 1:
        raise ConfigError(f"config.data.workers={workers} must be >= 1, config.data.worker_processes={processes} "
                          f">= 0 and config.data.prefetch={prefetch} >= 1.")
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    mine = dataset[start_step * pc + pi :: pc]
    stream = mine.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch))
    if processes:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (a library caller may not parse them)
            flags.FLAGS.mark_as_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=prefetch))
    return iter(stream)


def loader_options(data_cfg: Any) -> dict[str, int]:
    """train_iterator's keyword arguments from config.data (prefetch, workers, processes)."""
    return dict(prefetch=data_cfg.prefetch, workers=data_cfg.get("workers", DEFAULT_WORKERS),
                processes=data_cfg.get("worker_processes", 0))


def eval_batches(
    source: Any,
    preprocess: Callable[[dict], dict],
    global_batch: int,
    process_index: int | None = None,
    process_count: int | None = None,
    workers: int = DEFAULT_WORKERS,
) -> Iterator[Batch]:
    """The whole split in order as local batches, padded; `mask` [L] marks real rows."""
    pi = jax.process_index() if process_index is None else process_index
    local = local_batch_size(global_batch, process_count)
    n = len(source)
    if n == 0:
        raise DataError("The eval split has no examples.")
    read = functools.partial(_eval_batch, batching.in_memory(source), _as_preprocess(preprocess), n,
                             pi * local + np.arange(local), global_batch)
    batches = grain.MapDataset.range(math.ceil(n / global_batch)).map(read)
    yield from batches.to_iter_dataset(grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2))


def _eval_batch(source: Any, pre: preprocess_lib.Preprocess, n: int, offsets: np.ndarray, global_batch: int,
                k: int) -> Batch:
    """Local eval batch k: rows k * global_batch + offsets, the past-the-end ones repeat the last, mask 0."""
    idx = k * global_batch + offsets
    batch = batching.read_batch(source, pre, np.minimum(idx, n - 1))
    batch["mask"] = (idx < n).astype(np.float32)
    return batch


@jax.jit
def _unit_float(images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 in [0, 1], on the devices (keeps the sharding)."""
    return images.astype(jnp.float32) * (1.0 / 255.0)


def _to_float_if_image(array: jax.Array) -> jax.Array:
    return _unit_float(array) if array.dtype == jnp.uint8 and array.ndim == 4 else array


def to_global(batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Process-local NumPy batch -> global jax.Arrays sharded on the batch dim.

    uint8 images [B, H, W, C] travel as uint8 and become float32 in [0, 1] on the devices.
    One process: one `device_put` of the whole batch (its local batch is the global one; ~2x less host
    time per step than assembling each leaf, benchmarks/input_pipeline.py).
    """
    host = jax.tree.map(np.asarray, batch)
    if jax.process_count() == 1:
        arrays = jax.device_put(host, sharding)
    else:
        arrays = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host)
    return jax.tree.map(_to_float_if_image, arrays)


def eval_global_batches(
    data_cfg: Any, split: str, batch_size: int, sharding: jax.sharding.Sharding
) -> Iterator[dict[str, jax.Array]]:
    """Global, sharded, padded batches of `split` of config.data (eval preprocess; "mask" [B])."""
    pre = preprocess_lib.build(data_cfg.get("eval_preprocess") or data_cfg.preprocess)
    workers = data_cfg.get("workers", DEFAULT_WORKERS)
    for local in eval_batches(splits.open_split(data_cfg, split), pre, batch_size, workers=workers):
        yield to_global(local, sharding)


def device_view(batch: Batch) -> Batch:
    """A host batch as the devices see it (uint8 images [B, H, W, C] -> float32 in [0, 1])."""
    return {k: (np.asarray(v, np.float32) / 255.0 if np.asarray(v).dtype == np.uint8 and np.ndim(v) == 4 else v)
            for k, v in batch.items()}


def example_batch(data_cfg: Any) -> dict[str, np.ndarray]:
    """The first train example, preprocessed, as a batch of one, as the devices see it (for shapes)."""
    source = splits.open_split(data_cfg, data_cfg.train_split)
    return device_view(batching.read_batch(source, preprocess_lib.build(data_cfg.preprocess), np.zeros(1)))
