"""Contrastive losses over a global batch sharded on one mesh axis (device ring).

Inside `jax.shard_map`, device r of n holds rows [r*b, (r+1)*b) of both
embeddings. It keeps its image block and the text blocks travel around the
ring (`lax.ppermute` to the next device, n steps). Per-row statistics (online
log-sum-exp, argmax) stay on the device; per-column statistics travel with
their text block and arrive home after the n-th shift, so one pass gives both
softmax directions. The backward (`jax.custom_vjp`) is a second ring that
recomputes each block; the text cotangent travels with its block. Nothing of
size [B, B] or an all-gather of the embeddings ever exists: per device, memory
is O(b*D + b*tile): each block is itself scanned by column tiles, with the
custom_vjp rules of `contrastive_chunked` (this module only supplies the
`RingSweep` that visits the blocks).

Two levels:
- `ring_softmax_contrastive`, `ring_sigmoid_contrastive`, `ring_nt_xent`:
  per-device functions to call inside a `shard_map` over `axis_name` (with
  check_vma=True, the default, or False); they return the global-mean loss
  and metrics, equal on every device.
- `sharded_softmax_contrastive`, `sharded_sigmoid_contrastive`,
  `sharded_nt_xent`: take global arrays and a mesh, do the `shard_map`
  (embeddings on P(axis), scalars replicated); use them inside a jitted step.
  Other mesh axes are allowed: the embeddings are replicated over them.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxsup.losses import contrastive_chunked as ck
from jaxsup.losses.contrastive import (
    DEFAULT_TILE,
    Metrics,
    check_embeddings,
    check_tile,
    scalar_f32,
)


# ----------------------------------------------------------------- the ring


class RingSweep(NamedTuple):
    """Sweep of `contrastive_chunked` over the blocks of a device ring.

    `__call__` runs `local, acc = compute(col_offset, local, block, acc)` for
    the n blocks: `block` (read-only, e.g. a text block and its per-column
    inputs) and `acc` (what is accumulated for that block) start at this
    device and move one device forward (`lax.ppermute`) after each step, so
    step k sees the block of device `src = (me - k) mod n`. `acc` takes one
    more shift at the end and is returned at its home device; `block` does not.
    """

    axis_name: str

    def row_offset(self, rows: int) -> jax.Array:
        return lax.axis_index(self.axis_name) * rows

    def n_total(self, rows: int) -> int:
        return lax.axis_size(self.axis_name) * rows

    def total(self, x: jax.Array) -> jax.Array:
        return lax.psum(ck.LOCAL.total(x), self.axis_name)

    def vary(self, x: jax.Array, like: jax.Array) -> jax.Array:
        """x (device-invariant, e.g. the scale) made to vary like `like`:
        passed so into a custom_vjp whose backward returns per-device partial
        cotangents, JAX sums them over the devices (the transpose of the
        implicit broadcast). A no-op under check_vma=False."""
        return x + jnp.zeros_like(like, x.dtype, shape=())

    def __call__(self, compute, local, block, acc):
        n = lax.axis_size(self.axis_name)
        me = lax.axis_index(self.axis_name)
        perm = [(i, (i + 1) % n) for i in range(n)]
        rows = jax.tree.leaves(block)[0].shape[0]

        def shift(tree):
            return lax.ppermute(tree, self.axis_name, perm)

        def step(k, carry):
            local, block, acc = carry
            local, acc = compute(((me - k) % n) * rows, local, block, acc)
            return local, shift(block), shift(acc)

        local, block, acc = lax.fori_loop(0, n - 1, step, (local, block, acc))
        local, acc = compute(((me - n + 1) % n) * rows, local, block, acc)
        return local, shift(acc)


# -------------------------------------------------- per-device loss functions


def ring_softmax_contrastive(
    zimg_blk: jax.Array,
    ztxt_blk: jax.Array,
    log_t: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """CLIP softmax loss of the global batch, called per device in shard_map.

    Args:
      zimg_blk, ztxt_blk: [b, D] this device's rows of the global [n*b, D] batch.
      log_t: scalar log-scale (replicated); axis_name: the ring's mesh axis.
    Returns:
      (global-mean loss, metrics as `contrastive.softmax_contrastive`), equal
      on every device of the axis.
    """
    name = "ring_softmax_contrastive"
    check_embeddings(name, zimg_blk, ztxt_blk, "zimg_blk", "ztxt_blk")
    tile = check_tile(name, tile)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))
    return ck.softmax_contrastive(zimg_blk, ztxt_blk, scale, tile, RingSweep(axis_name))


def ring_sigmoid_contrastive(
    zimg_blk: jax.Array,
    ztxt_blk: jax.Array,
    log_t: jax.Array | float,
    b: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """SigLIP loss of the global batch, per device in shard_map (see
    `ring_softmax_contrastive`; metrics as `contrastive.sigmoid_contrastive`)."""
    name = "ring_sigmoid_contrastive"
    check_embeddings(name, zimg_blk, ztxt_blk, "zimg_blk", "ztxt_blk")
    tile = check_tile(name, tile)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))
    bias = scalar_f32(name, b, "b")
    return ck.sigmoid_contrastive(zimg_blk, ztxt_blk, scale, bias, tile, RingSweep(axis_name))


def ring_nt_xent(
    z1_blk: jax.Array,
    z2_blk: jax.Array,
    tau: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """NT-Xent of the global batch, per device in shard_map (see
    `ring_softmax_contrastive`; metrics as `contrastive.nt_xent`). Device r's
    2b views [z1_blk; z2_blk] are its block of the global 2N x 2N logits."""
    name = "ring_nt_xent"
    check_embeddings(name, z1_blk, z2_blk, "z1_blk", "z2_blk")
    tile = check_tile(name, tile)
    scale = 1.0 / scalar_f32(name, tau, "tau")
    return ck.nt_xent(z1_blk, z2_blk, scale, tile, RingSweep(axis_name))


# ------------------------------------------------ wrappers over global arrays


def _sharded(
    fn: Callable[..., tuple[jax.Array, Metrics]],
    name: str,
    x: jax.Array,
    y: jax.Array,
    scalars: dict[str, Any],
    mesh: Mesh,
    axis: str,
    tile: int,
    names: tuple[str, str],
) -> tuple[jax.Array, Metrics]:
    check_embeddings(name, x, y, *names)
    check_tile(name, tile)
    if axis not in mesh.axis_names:
        raise ValueError(f"{name}: axis {axis!r} is not in the mesh axes {mesh.axis_names}.")
    n = mesh.shape[axis]
    if x.shape[0] % n:
        raise ValueError(
            f"{name}: batch size {x.shape[0]} is not divisible by the {n} devices of "
            f"mesh axis {axis!r}."
        )
    scalars = tuple(scalar_f32(name, value, key) for key, value in scalars.items())

    def per_device(x_blk, y_blk, *scalars):
        return fn(x_blk, y_blk, *scalars, axis, tile=tile)

    mapped = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(axis), P(axis)) + (P(),) * len(scalars),
        out_specs=(P(), P()),
    )
    return mapped(x, y, *scalars)


def sharded_softmax_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array | float, *, mesh: Mesh,
    axis: str = "data", tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.softmax_contrastive` of global zimg, ztxt [B, D] by the
    device ring over mesh axis `axis` (B divisible by its size)."""
    return _sharded(ring_softmax_contrastive, "sharded_softmax_contrastive", zimg, ztxt,
                    {"log_t": log_t}, mesh, axis, tile, ("zimg", "ztxt"))


def sharded_sigmoid_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array | float, b: jax.Array | float, *,
    mesh: Mesh, axis: str = "data", tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.sigmoid_contrastive` of global zimg, ztxt [B, D] by the ring."""
    return _sharded(ring_sigmoid_contrastive, "sharded_sigmoid_contrastive", zimg, ztxt,
                    {"log_t": log_t, "b": b}, mesh, axis, tile, ("zimg", "ztxt"))


def sharded_nt_xent(
    z1: jax.Array, z2: jax.Array, tau: jax.Array | float, *, mesh: Mesh,
    axis: str = "data", tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.nt_xent` of global views z1, z2 [N, D] by the ring."""
    return _sharded(ring_nt_xent, "sharded_nt_xent", z1, z2, {"tau": tau}, mesh, axis, tile,
                    ("z1", "z2"))
