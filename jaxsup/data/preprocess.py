"""Per-example host preprocessing ops, named in config.data.preprocess.

Each op maps an example dict of NumPy arrays to a new dict. Ops are written
"name" or "name:arg" and applied left to right, e.g.
`("image_to_float", "keep:image,label")`. Random augmentation happens on the
device from the step's RNG (jaxsup.data.augment), not here, so the host
pipeline is a pure function of the example.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from jaxsup import registry
from jaxsup.errors import ConfigError, DataError

Example = dict[str, Any]


def register_op(name: str) -> Callable:
    """Decorator: registers an op factory as ("preprocess", name), used as "name" or "name:arg"."""
    return registry.register("preprocess", name)


@register_op("image_to_float")
def image_to_float(key: str = "image") -> Callable[[Example], Example]:
    """uint8 [H, W, C] in 0..255 -> float32 in [0, 1]."""

    def op(ex: Example) -> Example:
        return {**ex, key: np.asarray(ex[key], np.float32) / 255.0}

    return op


@register_op("keep")
def keep(keys: str) -> Callable[[Example], Example]:
    """Keeps only the comma-separated keys (drops e.g. strings the device can't take)."""
    names = [k for k in keys.split(",") if k]

    def op(ex: Example) -> Example:
        missing = [k for k in names if k not in ex]
        if missing:
            raise DataError(f"Preprocess 'keep:{keys}': example has no feature(s) {missing}; has {sorted(ex)}.")
        return {k: ex[k] for k in names}

    return op


@register_op("label_to_int32")
def label_to_int32(key: str = "label") -> Callable[[Example], Example]:
    def op(ex: Example) -> Example:
        return {**ex, key: np.asarray(ex[key], np.int32)}

    return op


def build(ops: Sequence[str]) -> Callable[[Example], Example]:
    """Composes the named ops; unknown names raise naming the known ones."""
    known = registry.names("preprocess")
    fns = []
    for spec in ops:
        name, _, arg = spec.partition(":")
        if name not in known:
            raise ConfigError(f"Unknown preprocess op {name!r} in {tuple(ops)}; known: {known}.")
        factory = registry.get("preprocess", name)
        fns.append(factory(arg) if arg else factory())

    def apply(ex: Example) -> Example:
        for fn in fns:
            ex = fn(ex)
        return ex

    return apply
