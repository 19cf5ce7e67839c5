"""Per-example host preprocessing ops, named in config.data.preprocess.

Each op maps an example dict of NumPy arrays to a new dict. Ops are written
"name" or "name:arg" and applied left to right, e.g.
`("image_to_float", "keep:image,label")`.

Random host ops (crops, flips, RandAugment in jaxsup.data.host.image_ops) draw from
`example_rng(ex, salt)`: a NumPy generator seeded by (run seed, epoch, index)
that the pipeline puts under RNG_KEY ("_rng", dropped before the batch leaves
the host), so the host pipeline is a pure function of (seed, step).

Ops registered with `batchable=True` act on a single example and on a batch
(leading dim B) alike; `build` runs the trailing run of such ops once per
batch (`Preprocess.batched`), after the per-example ops.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

import numpy as np

from jaxsup import registry
from jaxsup.errors import ConfigError, DataError

Example = dict[str, Any]
RNG_KEY = "_rng"  # uint32 [3] (seed, epoch, index) of the example; keys starting "_" never leave the host
BATCHABLE: set[str] = set()  # ops that work on one example and on a batch alike


def register_op(name: str, batchable: bool = False) -> Callable:
    """Decorator: registers an op factory as ("preprocess", name), used as "name" or "name:arg".

    batchable: the op acts on a batch (arrays with a leading B) exactly as on one example.
    """
    if batchable:
        BATCHABLE.add(name)
    return registry.register("preprocess", name)


def example_rng(ex: Example, salt: str) -> np.random.Generator:
    """The example's generator for one op: seeded by (crc32(salt), seed, epoch, index) of ex[RNG_KEY].

    Without RNG_KEY (a single example outside a pipeline) the key is (0, 0, 0).
    """
    key = np.asarray(ex.get(RNG_KEY, (0, 0, 0)), np.uint64).reshape(-1)
    return np.random.default_rng([zlib.crc32(salt.encode()), *key.tolist()])


def host_only(batch: Example) -> Example:
    """Drops the host-only keys ("_rng", ...) before a batch goes to the device."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}


@register_op("image_to_float", batchable=True)
def image_to_float(key: str = "image") -> Callable[[Example], Example]:
    """uint8 [H, W, C] in 0..255 -> float32 in [0, 1]."""

    def op(ex: Example) -> Example:
        return {**ex, key: np.asarray(ex[key], np.float32) / 255.0}

    return op


@register_op("keep", batchable=True)
def keep(keys: str) -> Callable[[Example], Example]:
    """Keeps only the comma-separated keys (drops e.g. strings the device can't take)."""
    names = [k for k in keys.split(",") if k]

    def op(ex: Example) -> Example:
        missing = [k for k in names if k not in ex]
        if missing:
            raise DataError(f"Preprocess 'keep:{keys}': example has no feature(s) {missing}; has {sorted(ex)}.")
        return {k: ex[k] for k in names}

    return op


@register_op("label_to_int32", batchable=True)
def label_to_int32(key: str = "label") -> Callable[[Example], Example]:
    """"label" -> int32."""

    def op(ex: Example) -> Example:
        return {**ex, key: np.asarray(ex[key], np.int32)}

    return op


class Preprocess:
    """Composed ops: `per_example` run on each example, then `batched` once on the stacked batch.

    Calling it on one example runs every op (the per-example view of the same function).
    """

    def __init__(self, per_example: Sequence[Callable], batched: Sequence[Callable], spec: Sequence[str]):
        self.per_example, self.batched, self.spec = list(per_example), list(batched), tuple(spec)

    def example(self, ex: Example) -> Example:
        """The per-example ops only."""
        for fn in self.per_example:
            ex = fn(ex)
        return ex

    def batch(self, batch: Example) -> Example:
        """The batched ops only, on a stacked batch."""
        for fn in self.batched:
            batch = fn(batch)
        return batch

    def __call__(self, ex: Example) -> Example:
        return self.batch(self.example(ex))


def build(ops: Sequence[str]) -> Preprocess:
    """Composes the named ops; unknown names raise naming the known ones."""
    known = registry.names("preprocess")
    fns, names = [], []
    for spec in ops:
        name, _, arg = spec.partition(":")
        if name not in known:
            raise ConfigError(f"Unknown preprocess op {name!r} in {tuple(ops)}; known: {known}.")
        factory = registry.get("preprocess", name)
        fns.append(factory(arg) if arg else factory())
        names.append(name)
    split = len(names)
    while split > 0 and names[split - 1] in BATCHABLE:
        split -= 1
    return Preprocess(fns[:split], fns[split:], ops)
