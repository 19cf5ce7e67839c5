"""Mesh, partition rules and shardings (pjit style).

- `make_mesh([("data", -1), ("model", 1)])`: named axes; -1 takes the rest.
- Partition rules: `[(regex, tactic), ...]`, matched with `re.search` against
  a leaf's path ("params/Dense_0/kernel", "opt_state/0/mu/Dense_0/kernel");
  the first match wins, unmatched leaves are replicated. Because the
  optimizer state mirrors the params' paths, one rule shards a weight and
  its Adam moments alike. Tactics:
    "replicate"      -> P()
    "fsdp"           -> shard the largest dim divisible by the "data" axis
    "fsdp:<axis>"    -> the same over <axis>
    (None, "model")  -> an explicit PartitionSpec, one entry per dim
- Batches are sharded on their leading dim over the data axes.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsup import sharding_rules
from jaxsup.errors import ConfigError

log = logging.getLogger("jaxsup")

Rules = Sequence[tuple[str, Any]]


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with named axes; one size may be -1.

    With no -1 and fewer devices asked for than exist (single process), the
    first devices are used: `[("data", 1)]` runs on one device.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in axes)
    sizes = [int(size) for _, size in axes]
    if len(set(names)) != len(names):
        raise ConfigError(f"Mesh axis names must be unique, got {names}.")
    if sizes.count(-1) > 1:
        raise ConfigError(f"At most one mesh axis may be -1, got {list(axes)}.")
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or len(devices) % known:
        raise ConfigError(f"Mesh {list(axes)} does not fit {len(devices)} devices.")
    if -1 not in sizes and known < len(devices) and jax.process_count() == 1:
        devices = devices[:known]  # An explicit smaller mesh uses the first devices.
    sizes = [len(devices) // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices):
        raise ConfigError(
            f"Mesh {dict(zip(names, sizes))} has {math.prod(sizes)} devices, "
            f"but {len(devices)} are available."
        )
    device_grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(device_grid, names)


def path_str(path: Sequence[Any]) -> str:
    """'params/Dense_0/kernel' from a jax tree key path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], axis: str, mesh: Mesh) -> P:
    size = mesh.shape[axis]
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % size == 0 and shape[dim] >= size:
            spec = [None] * len(shape)
            spec[dim] = axis
            return P(*spec)
    return P()


def _spec_for(name: str, shape: tuple[int, ...], tactic: Any, mesh: Mesh) -> P:
    if tactic == "replicate":
        return P()
    if isinstance(tactic, str) and (tactic == "fsdp" or tactic.startswith("fsdp:")):
        axis = tactic.partition(":")[2] or "data"
        if axis not in mesh.shape:
            raise ConfigError(f"Rule for {name!r}: mesh has no axis {axis!r} (axes {mesh.axis_names}).")
        return _fsdp_spec(shape, axis, mesh)
    if isinstance(tactic, (tuple, list)):
        if len(tactic) > len(shape):
            raise ConfigError(f"Spec {tuple(tactic)} for {name!r} has more dims than its shape {shape}.")
        for dim, axis in enumerate(tactic):
            axes = (axis,) if isinstance(axis, str) else tuple(axis or ())
            for ax in axes:
                if ax not in mesh.shape:
                    raise ConfigError(f"Spec for {name!r} names axis {ax!r}; mesh axes are {mesh.axis_names}.")
            n = math.prod(mesh.shape[ax] for ax in axes)
            if shape[dim] % n:
                raise ConfigError(
                    f"Parameter {name!r} with shape {shape}: dim {dim} ({shape[dim]}) is not "
                    f"divisible by mesh axis {axis!r} of size {n}."
                )
        return P(*tactic)
    raise ConfigError(f"Unknown sharding tactic {tactic!r} for {name!r}.")


def resolve_rules(rules: Any) -> Rules:
    """Partition rules: (regex, tactic) pairs as given, and preset names (e.g. "fsdp",
    jaxsup.sharding_rules) expanded in place: ("fsdp",) or "fsdp" -> the fsdp rules."""
    rules = (rules,) if isinstance(rules, str) else tuple(rules)
    return tuple(r for item in rules for r in (sharding_rules.preset(item) if isinstance(item, str) else (item,)))


def tree_partition_specs(tree: Any, rules: Any, mesh: Mesh, warn_unused: bool = True) -> Any:
    """PartitionSpecs for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
    rules = resolve_rules(rules)
    compiled = [(re.compile(pattern), tactic) for pattern, tactic in rules]
    used = [False] * len(compiled)

    def spec(path, leaf):
        name = path_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for i, (pattern, tactic) in enumerate(compiled):
            if pattern.search(name):
                used[i] = True
                return _spec_for(name, shape, tactic, mesh) if shape else P()
        return P()

    specs = jax.tree_util.tree_map_with_path(spec, tree)
    if warn_unused:
        for (pattern, tactic), hit in zip(rules, used):
            if not hit:
                log.warning("Sharding rule (%r, %r) matches no parameter.", pattern, tactic)
    return specs


def tree_shardings(tree: Any, rules: Any, mesh: Mesh) -> Any:
    """NamedShardings for every leaf of `tree` from the partition rules."""
    specs = tree_partition_specs(tree, rules, mesh)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def data_axes(mesh: Mesh, candidates: Sequence[str] = ("data",)) -> tuple[str, ...]:
    """The mesh axes a batch is split over (those of `candidates` in the mesh)."""
    axes = tuple(a for a in candidates if a in mesh.shape)
    if not axes:
        raise ConfigError(f"Mesh axes {mesh.axis_names} contain none of the batch axes {tuple(candidates)}.")
    return axes


def batch_sharding(mesh: Mesh, axes: Sequence[str] = ("data",)) -> NamedSharding:
    """Leading (batch) dim split over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(data_axes(mesh, axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over `mesh`."""
    return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh, axes: Sequence[str] = ("data",)) -> int:
    """How many ways the batch dim is split (product of the data axes' sizes)."""
    return math.prod(mesh.shape[a] for a in data_axes(mesh, axes))


def check_batch_divisible(global_batch: int, mesh: Mesh, axes: Sequence[str] = ("data",), what: str = "batch_size") -> None:
    """Raises if `global_batch` cannot be split evenly over the data axes and processes."""
    shards = num_batch_shards(mesh, axes)
    if global_batch % shards:
        raise ConfigError(
            f"config.{what}={global_batch} is not divisible by the {shards} devices on mesh "
            f"axes {data_axes(mesh, axes)}."
        )
    if global_batch % jax.process_count():
        raise ConfigError(
            f"config.{what}={global_batch} is not divisible by the {jax.process_count()} processes."
        )
