"""impl="ring": contrastive losses over a batch sharded on one mesh axis.

Inside `jax.shard_map`, device r of n holds rows [r*b, (r+1)*b) of both
embeddings. It keeps its image block and the text blocks travel around the
ring (`lax.ppermute` to the next device, n steps). Per-row statistics (online
log-sum-exp, argmax) stay on the device; per-column statistics travel with
their text block and arrive home after the n-th shift, so one pass gives both
softmax directions. The backward (`jax.custom_vjp`) is a second ring that
recomputes each block; the text cotangent travels with its block. Nothing of
size [B, B] or an all-gather of the embeddings ever exists: per device, memory
is O(b*D + b*tile). The custom_vjp rules are those of `blockwise_vjp.py`; this
module supplies the `RingSweep` that visits the blocks and a choice of block
math (`block_impl`) that computes each:
- "chunked": `chunked_xla.ScanBlocks`, a lax.scan over column tiles.
- "pallas": `PallasBlocks`, the block primitives of `pallas_impl.py` (partial
  LSEs / row sums forward, block gradients backward), `backend=` passed
  through (None: auto; "interpret" on CPU, for tests). They need
  `check_vma=False` on the shard_map (`sharded_loss` sets it). Where Pallas
  cannot run: the dispatch ValueError, or with fallback=True one warning and
  "chunked".

Two levels, `loss` one of "softmax" | "sigmoid" | "nt_xent" (`common.LOSSES`):
- `ring_loss(loss, x_blk, y_blk, scalars, axis_name, ...)`: per device, inside
  a `shard_map` over `axis_name` (check_vma=True, the default, or False; False
  for block_impl="pallas"); the global-mean loss and metrics, equal on every
  device.
- `sharded_loss(loss, x, y, scalars, mesh, axis, ...)`: global arrays and a
  mesh; does the `shard_map` (embeddings on P(axis), scalars replicated); what
  `api.py` runs for impl="ring". Other mesh axes are allowed: the embeddings
  are replicated over them.

Shared keyword arguments: tile, the column tile of the scan (block_impl
"chunked") or of the metrics' max-only pass ("pallas"); block_impl, "chunked"
| "pallas"; backend, the Pallas backend (None: auto); fallback, where Pallas
cannot run, warn once and use "chunked".
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from pallas_kernels.contrastive.blockwise_vjp import BLOCKWISE, LOCAL
from pallas_kernels.contrastive.chunked_xla import DEFAULT_TILE, ScanBlocks, lse_forward
from pallas_kernels.contrastive.common import Metrics, check_inputs, logit_params
from pallas_kernels.contrastive.tile_math import F32, init_stats, merge_lse
from pallas_kernels.contrastive import pallas_impl
from pallas_kernels.dispatch import run_impl


# ----------------------------------------------------------------- the ring


class RingSweep(NamedTuple):
    """Sweep of `blockwise` over the blocks of a device ring.

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
        return lax.psum(LOCAL.total(x), self.axis_name)

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
    """Block math (protocol in `blockwise_vjp.py`) by the Pallas block
    primitives of `pallas_impl.py` on `backend`.

    The loss statistics (partial LSEs, sigmoid row sums) and block gradients
    come from the kernels; the argmax for the metrics from a max-only pass
    over `tile`-column tiles (one extra matmul per block, no exp, no
    gradient), as impl="pallas" does in `api.py`. The kernels take
    log_t = log(scale) and return dlog_t = scale * dscale. Block gradients
    come back in the input dtype (bf16 inputs: rounded per block before the
    f32 sum over the ring).
    """

    tile: int
    backend: str | None = None
    positives_in_kernel = True  # softmax_backward takes the positives' weights (blockwise_vjp.py)

    def _softmax_kw(self, row_offset, col_offset, exclude_diagonal) -> dict[str, Any]:
        offset = row_offset - col_offset if exclude_diagonal else None
        return dict(self_offset=offset, backend=self.backend)

    def _all_negative(self, a, c) -> dict[str, Any]:
        del a, c  # Every pair a negative (y = -1), as ScanBlocks.
        return dict(positive_offset=None, backend=self.backend)

    def softmax_forward(self, a, c, scale, rows, cols, *, row_offset=0, col_offset=0,
                        exclude_diagonal=False):
        row_lse, col_lse = pallas_impl.softmax_pair_lse(
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
                         col_offset=0, exclude_diagonal=False, positive_w=None, mode="clip"):
        """`positive_w` [Ba]: the positives' weights, applied where this is the rows' own block."""
        positives = None
        if positive_w is not None:
            home = (jnp.asarray(row_offset) == jnp.asarray(col_offset)).astype(F32)
            w = positive_w.astype(F32) * home
            half = a.shape[0] // 2
            offsets = (0,) if mode == "clip" else (half, -half)
            positives = (offsets, w, w if mode == "clip" else jnp.roll(w, half))
        if col_lse is None:  # rows only: weight g_col * exp(S - inf) = 0
            col_lse = jnp.full_like(c, jnp.inf, F32, shape=(c.shape[0],))
            g_col = jnp.zeros_like(col_lse)
        da, dc, dlog_t = pallas_impl.softmax_pair_lse_backward(
            a, c, jnp.log(scale), row_lse, col_lse, g_row, g_col, positives=positives,
            **self._softmax_kw(row_offset, col_offset, exclude_diagonal))
        return da.astype(F32), dc.astype(F32), dlog_t / scale

    def sigmoid_forward(self, a, c, scale, bias, rows, *, col_offset=0):
        row_sums = pallas_impl.sigmoid_pair_row_sums(
            a, c, jnp.log(scale), bias, **self._all_negative(a, c))
        rows, _ = lse_forward(a, c, scale, rows, None, tile=self.tile, col_offset=col_offset,
                              with_sumexp=False)
        return -jnp.sum(row_sums), rows

    def sigmoid_backward(self, a, c, scale, bias, g):
        g_row = jnp.broadcast_to(-g, (a.shape[0],)).astype(F32)
        da, dc, dlog_t, db = pallas_impl.sigmoid_pair_row_sums_backward(
            a, c, jnp.log(scale), bias, g_row, **self._all_negative(a, c))
        return da.astype(F32), dc.astype(F32), dlog_t / scale, db


def ring_blocks(
    name: str, block_impl: str, tile: int, backend: str | None, fallback: bool, like: Any
) -> ScanBlocks | PallasBlocks:
    """The block math for `block_impl` ("chunked" | "pallas") on per-device
    blocks shaped like `like` [b, D]. Where Pallas cannot run on `backend`:
    a ValueError naming the cause, or with fallback=True one warning and
    "chunked" (`dispatch.run_impl`)."""

    def pallas():
        pallas_impl.kernel_config(backend, n_rows=like.shape[0], dim=like.shape[1],
                                    dtype=like.dtype)
        return PallasBlocks(tile, backend)

    chunked = lambda: ScanBlocks(tile)
    return run_impl(name, block_impl, {"chunked": chunked, "pallas": pallas}, fallback)


# ------------------------------------------------------------ loss functions


def ring_loss(
    loss: str,
    x_blk: jax.Array,
    y_blk: jax.Array,
    scalars: tuple[Any, ...],
    axis_name: str,
    *,
    tile: int = DEFAULT_TILE,
    block_impl: str = "chunked",
    backend: str | None = None,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """One contrastive loss of the global batch, called per device in shard_map.

    Args:
      loss: "softmax" (CLIP) | "sigmoid" (SigLIP) | "nt_xent" (SimCLR).
      x_blk, y_blk: [b, D] this device's rows of the global [n*b, D] embeddings
        (NT-Xent: device r's 2b views [x_blk; y_blk] are its block of the
        global 2N x 2N logits; with Pallas blocks the self-similarity is
        masked by `self_offset`, and the primitive's column LSEs, which by
        symmetry repeat other devices' rows, are not used).
      scalars: the loss's replicated scalars: (log_t,), (log_t, b) or (tau,).
      axis_name: the ring's mesh axis. tile, block_impl, backend, fallback: see
        the module docstring.
    Returns:
      (global-mean loss, metrics as `api.py`'s), equal on every device of the axis.
    """
    name = f"ring_{loss}"
    tile, scalars = check_inputs(loss, x_blk, y_blk, scalars, tile, name)
    blocks = ring_blocks(name, block_impl, tile, backend, fallback, x_blk)
    return BLOCKWISE[loss](x_blk, y_blk, *logit_params(loss, scalars), blocks, RingSweep(axis_name))


def sharded_loss(
    loss: str, x: jax.Array, y: jax.Array, scalars: tuple[jax.Array, ...], *, mesh: Mesh | None,
    axis: str, tile: int, block_impl: str, backend: str | None, fallback: bool, name: str,
) -> tuple[jax.Array, Metrics]:
    """`ring_loss` of global x, y [B, D] (B divisible by the size of mesh axis
    `axis`) under a `shard_map`, given inputs `common.check_inputs` passed
    (`scalars` as f32 []); ValueErrors are prefixed `name`."""
    if mesh is None:
        raise ValueError(f"{name}: impl='ring' needs mesh=, a Mesh with the axis {axis!r}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"{name}: axis {axis!r} is not in the mesh axes {mesh.axis_names}.")
    n = mesh.shape[axis]
    if x.shape[0] % n:
        raise ValueError(
            f"{name}: batch size {x.shape[0]} is not divisible by the {n} devices of "
            f"mesh axis {axis!r}."
        )
    # Resolved here, so a fallback warns once and runs the chunked ring as is.
    block_shape = jax.ShapeDtypeStruct((x.shape[0] // n, x.shape[1]), x.dtype)
    pallas = isinstance(ring_blocks(name, block_impl, tile, backend, fallback, block_shape),
                        PallasBlocks)
    ring_kw = dict(tile=tile, block_impl="pallas" if pallas else "chunked", backend=backend)

    def per_device(x_blk, y_blk, *scalars):
        return ring_loss(loss, x_blk, y_blk, scalars, axis, **ring_kw)

    mapped = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(axis), P(axis)) + (P(),) * len(scalars),
        out_specs=(P(), P()), check_vma=not pallas,
    )
    return mapped(x, y, *scalars)
