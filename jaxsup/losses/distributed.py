"""Contrastive losses over a global batch sharded on one mesh axis (device ring).

Inside `jax.shard_map`, device r of n holds rows [r*b, (r+1)*b) of both
embeddings. It keeps its image block and the text blocks travel around the
ring (`lax.ppermute` to the next device, n steps). Per-row statistics (online
log-sum-exp, argmax) stay on the device; per-column statistics travel with
their text block and arrive home after the n-th shift, so one pass gives both
softmax directions. The backward (`jax.custom_vjp`) is a second ring that
recomputes each block; the text cotangent travels with its block. Nothing of
size [B, B] or an all-gather of the embeddings ever exists: per device, memory
is O(b*D + b*tile). The custom_vjp rules are those of `contrastive_chunked`;
this module supplies the `RingSweep` that visits the blocks and a choice of
block math (`block_impl`) that computes each:
- "chunked": `contrastive_chunked.ScanBlocks`, a lax.scan over column tiles.
- "pallas": `PallasBlocks`, the block primitives of `pallas_kernels.contrastive`
  (partial LSEs / row sums forward, block gradients backward), `backend=`
  passed through (None: auto; "interpret" on CPU, for tests). They need
  `check_vma=False` on the shard_map (the `sharded_*` wrappers set it). Where
  Pallas cannot run: the dispatch ValueError, or with fallback=True one
  warning and "chunked".

Two levels:
- `ring_softmax_contrastive`, `ring_sigmoid_contrastive`, `ring_nt_xent`:
  per-device functions to call inside a `shard_map` over `axis_name` (with
  check_vma=True, the default, or False; False for block_impl="pallas");
  they return the global-mean loss and metrics, equal on every device.
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
    pallas_api,
    check_embeddings,
    check_tile,
    scalar_f32,
)
from jaxsup.losses.contrastive_tiles import F32, init_stats, lse_forward, merge_lse
from jaxsup.losses.dispatch import run_impl


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


# ------------------------------------------------------- block math (Pallas)


class PallasBlocks(NamedTuple):
    """Block math (protocol in `contrastive_chunked`) by the Pallas block
    primitives of `pallas_kernels.contrastive.api` on `backend`.

    The loss statistics (partial LSEs, sigmoid row sums) and block gradients
    come from the kernels; the argmax for the metrics from a max-only pass
    over `tile`-column tiles (one extra matmul per block, no exp, no
    gradient), as impl="pallas" does in `contrastive`. The kernels take
    log_t = log(scale) and return dlog_t = scale * dscale. Block gradients
    come back in the input dtype (bf16 inputs: rounded per block before the
    f32 sum over the ring).
    """

    tile: int
    backend: str | None = None

    def _softmax_kw(self, row_offset, col_offset, exclude_diagonal) -> dict[str, Any]:
        offset = row_offset - col_offset if exclude_diagonal else None
        return dict(self_offset=offset, backend=self.backend)

    def _all_negative(self, a, c) -> dict[str, Any]:
        del a, c  # Every pair a negative (y = -1), as ScanBlocks.
        return dict(positive_offset=None, backend=self.backend)

    def softmax_forward(self, a, c, scale, rows, cols, *, row_offset=0, col_offset=0,
                        exclude_diagonal=False):
        row_lse, col_lse = pallas_api().softmax_pair_lse(
            a, c, jnp.log(scale), **self._softmax_kw(row_offset, col_offset, exclude_diagonal))
        with_cols = cols is not None
        max_rows, max_cols = lse_forward(
            a, c, scale, init_stats(a.shape[0], a),
            init_stats(c.shape[0], c) if with_cols else None, tile=self.tile,
            row_offset=row_offset, col_offset=col_offset,
            exclude_diagonal=exclude_diagonal, with_sumexp=False,
        )
        rows = merge_lse(rows, max_rows, row_lse)
        return rows, merge_lse(cols, max_cols, col_lse) if with_cols else None

    def softmax_backward(self, a, c, scale, row_lse, g_row, col_lse, g_col, *, row_offset=0,
                         col_offset=0, exclude_diagonal=False):
        if col_lse is None:  # rows only: weight g_col * exp(S - inf) = 0
            col_lse = jnp.full_like(c, jnp.inf, F32, shape=(c.shape[0],))
            g_col = jnp.zeros_like(col_lse)
        da, dc, dlog_t = pallas_api().softmax_pair_lse_backward(
            a, c, jnp.log(scale), row_lse, col_lse, g_row, g_col,
            **self._softmax_kw(row_offset, col_offset, exclude_diagonal))
        return da.astype(F32), dc.astype(F32), dlog_t / scale

    def sigmoid_forward(self, a, c, scale, bias, rows, *, col_offset=0):
        row_sums = pallas_api().sigmoid_pair_row_sums(
            a, c, jnp.log(scale), bias, **self._all_negative(a, c))
        rows, _ = lse_forward(a, c, scale, rows, None, tile=self.tile, col_offset=col_offset,
                              with_sumexp=False)
        return -jnp.sum(row_sums), rows

    def sigmoid_backward(self, a, c, scale, bias, g):
        g_row = jnp.broadcast_to(-g, (a.shape[0],)).astype(F32)
        da, dc, dlog_t, db = pallas_api().sigmoid_pair_row_sums_backward(
            a, c, jnp.log(scale), bias, g_row, **self._all_negative(a, c))
        return da.astype(F32), dc.astype(F32), dlog_t / scale, db


def ring_blocks(
    name: str, block_impl: str, tile: int, backend: str | None, fallback: bool, like: Any
) -> ck.ScanBlocks | PallasBlocks:
    """The block math for `block_impl` ("chunked" | "pallas") on per-device
    blocks shaped like `like` [b, D]. Where Pallas cannot run on `backend`:
    a ValueError naming the cause, or with fallback=True one warning and
    "chunked" (`dispatch.run_impl`)."""

    def pallas():
        pallas_api().kernel_config(backend, n_rows=like.shape[0], dim=like.shape[1],
                                    dtype=like.dtype)
        return PallasBlocks(tile, backend)

    chunked = lambda: ck.ScanBlocks(tile)
    return run_impl(name, block_impl, {"chunked": chunked, "pallas": pallas}, fallback)


def checked_ring_blocks(
    name: str, x_blk: jax.Array, y_blk: jax.Array, names: tuple[str, str], tile: int, block_impl: str,
    backend: str | None, fallback: bool,
) -> ck.ScanBlocks | PallasBlocks:
    """Validates a ring function's per-device inputs [b, D] and tile; returns its block math."""
    check_embeddings(name, x_blk, y_blk, *names)
    return ring_blocks(name, block_impl, check_tile(name, tile), backend, fallback, x_blk)


# -------------------------------------------------- per-device loss functions
# Shared keyword arguments of the ring functions and the sharded wrappers:
#   tile: column tile of the scan (block_impl "chunked") / of the metrics'
#     max-only pass ("pallas");
#   block_impl: "chunked" | "pallas", the block math (module docstring);
#   backend: Pallas backend (None: auto; "interpret" on CPU);
#   fallback: where Pallas cannot run, warn once and use "chunked".


def ring_softmax_contrastive(
    zimg_blk: jax.Array,
    ztxt_blk: jax.Array,
    log_t: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
    block_impl: str = "chunked",
    backend: str | None = None,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """CLIP softmax loss of the global batch, called per device in shard_map.

    Args:
      zimg_blk, ztxt_blk: [b, D] this device's rows of the global [n*b, D] batch.
      log_t: scalar log-scale (replicated); axis_name: the ring's mesh axis.
      tile, block_impl, backend, fallback: see above.
    Returns:
      (global-mean loss, metrics as `contrastive.softmax_contrastive`), equal
      on every device of the axis.
    """
    name = "ring_softmax_contrastive"
    blocks = checked_ring_blocks(name, zimg_blk, ztxt_blk, ("zimg_blk", "ztxt_blk"), tile, block_impl, backend,
                                 fallback)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))
    return ck.softmax_contrastive(zimg_blk, ztxt_blk, scale, blocks, RingSweep(axis_name))


def ring_sigmoid_contrastive(
    zimg_blk: jax.Array,
    ztxt_blk: jax.Array,
    log_t: jax.Array | float,
    b: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
    block_impl: str = "chunked",
    backend: str | None = None,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """SigLIP loss of the global batch, per device in shard_map (see
    `ring_softmax_contrastive`; metrics as `contrastive.sigmoid_contrastive`)."""
    name = "ring_sigmoid_contrastive"
    blocks = checked_ring_blocks(name, zimg_blk, ztxt_blk, ("zimg_blk", "ztxt_blk"), tile, block_impl, backend,
                                 fallback)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))
    bias = scalar_f32(name, b, "b")
    return ck.sigmoid_contrastive(zimg_blk, ztxt_blk, scale, bias, blocks, RingSweep(axis_name))


def ring_nt_xent(
    z1_blk: jax.Array,
    z2_blk: jax.Array,
    tau: jax.Array | float,
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
    block_impl: str = "chunked",
    backend: str | None = None,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """NT-Xent of the global batch, per device in shard_map (see
    `ring_softmax_contrastive`; metrics as `contrastive.nt_xent`). Device r's
    2b views [z1_blk; z2_blk] are its block of the global 2N x 2N logits; with
    Pallas blocks the self-similarity is masked by `self_offset` (the
    primitive's column LSEs, which by symmetry repeat other devices' rows, are
    not used)."""
    name = "ring_nt_xent"
    blocks = checked_ring_blocks(name, z1_blk, z2_blk, ("z1_blk", "z2_blk"), tile, block_impl, backend, fallback)
    scale = 1.0 / scalar_f32(name, tau, "tau")
    return ck.nt_xent(z1_blk, z2_blk, scale, blocks, RingSweep(axis_name))


# ------------------------------------------------ wrappers over global arrays


def _sharded(
    fn: Callable[..., tuple[jax.Array, Metrics]],
    name: str,
    x: jax.Array,
    y: jax.Array,
    scalars: dict[str, Any],
    mesh: Mesh,
    axis: str,
    names: tuple[str, str],
    tile: int,
    block_impl: str,
    backend: str | None,
    fallback: bool,
) -> tuple[jax.Array, Metrics]:
    check_embeddings(name, x, y, *names)
    tile = check_tile(name, tile)
    if axis not in mesh.axis_names:
        raise ValueError(f"{name}: axis {axis!r} is not in the mesh axes {mesh.axis_names}.")
    n = mesh.shape[axis]
    if x.shape[0] % n:
        raise ValueError(
            f"{name}: batch size {x.shape[0]} is not divisible by the {n} devices of "
            f"mesh axis {axis!r}."
        )
    scalars = tuple(scalar_f32(name, value, key) for key, value in scalars.items())
    # Resolved here, so a fallback warns once and runs the chunked ring as is.
    block_shape = jax.ShapeDtypeStruct((x.shape[0] // n, x.shape[1]), x.dtype)
    pallas = isinstance(ring_blocks(name, block_impl, tile, backend, fallback, block_shape),
                        PallasBlocks)
    ring_kw = dict(tile=tile, block_impl="pallas" if pallas else "chunked", backend=backend)

    def per_device(x_blk, y_blk, *scalars):
        return fn(x_blk, y_blk, *scalars, axis, **ring_kw)

    mapped = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(axis), P(axis)) + (P(),) * len(scalars),
        out_specs=(P(), P()), check_vma=not pallas,
    )
    return mapped(x, y, *scalars)


def sharded_softmax_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array | float, *, mesh: Mesh,
    axis: str = "data", tile: int = DEFAULT_TILE, block_impl: str = "chunked",
    backend: str | None = None, fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.softmax_contrastive` of global zimg, ztxt [B, D] by the
    device ring over mesh axis `axis` (B divisible by its size); tile,
    block_impl, backend, fallback as for the ring functions."""
    return _sharded(ring_softmax_contrastive, "sharded_softmax_contrastive", zimg, ztxt,
                    {"log_t": log_t}, mesh, axis, ("zimg", "ztxt"), tile, block_impl, backend,
                    fallback)


def sharded_sigmoid_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: jax.Array | float, b: jax.Array | float, *,
    mesh: Mesh, axis: str = "data", tile: int = DEFAULT_TILE, block_impl: str = "chunked",
    backend: str | None = None, fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.sigmoid_contrastive` of global zimg, ztxt [B, D] by the ring."""
    return _sharded(ring_sigmoid_contrastive, "sharded_sigmoid_contrastive", zimg, ztxt,
                    {"log_t": log_t, "b": b}, mesh, axis, ("zimg", "ztxt"), tile, block_impl,
                    backend, fallback)


def sharded_nt_xent(
    z1: jax.Array, z2: jax.Array, tau: jax.Array | float, *, mesh: Mesh,
    axis: str = "data", tile: int = DEFAULT_TILE, block_impl: str = "chunked",
    backend: str | None = None, fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.nt_xent` of global views z1, z2 [N, D] by the ring."""
    return _sharded(ring_nt_xent, "sharded_nt_xent", z1, z2, {"tau": tau}, mesh, axis,
                    ("z1", "z2"), tile, block_impl, backend, fallback)
