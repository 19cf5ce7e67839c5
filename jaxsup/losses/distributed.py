"""Contrastive losses over a global batch sharded on one mesh axis (device ring).

Inside `jax.shard_map`, device r of n holds rows [r*b, (r+1)*b) of both
embeddings. It keeps its image block and the text blocks travel around the
ring (`lax.ppermute` to the next device, n steps). Per-row statistics (online
log-sum-exp, argmax) stay on the device; per-column statistics travel with
their text block and arrive home after the n-th shift, so one pass gives both
softmax directions. The backward (`jax.custom_vjp`) is a second ring that
recomputes each block; the text cotangent travels with its block. Nothing of
size [B, B] or an all-gather of the embeddings ever exists: per device, memory
is O(b*D + b*tile) (each block is itself scanned by column tiles with the
math of `contrastive_chunked`).

Two levels:
- `ring_softmax_contrastive`, `ring_sigmoid_contrastive`, `ring_nt_xent`:
  per-device functions to call inside a `shard_map` (check_vma=True, the
  default) over `axis_name`; they return the global-mean loss and metrics,
  equal on every device.
- `sharded_softmax_contrastive`, `sharded_sigmoid_contrastive`,
  `sharded_nt_xent`: take global arrays and a mesh, do the `shard_map`
  (embeddings on P(axis), scalars replicated); use them inside a jitted step.
  Other mesh axes are allowed: the embeddings are replicated over them.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

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

F32 = jnp.float32


# ----------------------------------------------------------------- the ring


def _ring(
    axis_name: str,
    compute: Callable[[jax.Array, Any, Any, Any], tuple[Any, Any]],
    local: Any,
    block: Any,
    acc: Any,
) -> tuple[Any, Any]:
    """Runs `local, acc = compute(src, local, block, acc)` for the n blocks.

    `block` (read-only, e.g. a text block) and `acc` (what is accumulated for
    that block) start at this device and move one device forward after each
    step, so step k sees the block of device `src = (me - k) mod n`. `acc`
    takes one more shift at the end and is returned at its home device;
    `block` does not (it is not needed there).
    """
    n = lax.axis_size(axis_name)
    me = lax.axis_index(axis_name)
    perm = [(i, (i + 1) % n) for i in range(n)]

    def shift(tree):
        return lax.ppermute(tree, axis_name, perm)

    def step(k, carry):
        local, block, acc = carry
        local, acc = compute((me - k) % n, local, block, acc)
        return local, shift(block), shift(acc)

    local, block, acc = lax.fori_loop(0, n - 1, step, (local, block, acc))
    local, acc = compute((me - (n - 1)) % n, local, block, acc)
    return local, shift(acc)


def _varying_like(x: jax.Array, like: jax.Array) -> jax.Array:
    """x (device-invariant, e.g. the scale) made to vary like `like`.

    Passed so into a ring custom_vjp, whose backward returns per-device partial
    cotangents for it; JAX sums them over the devices (the transpose of the
    implicit broadcast). Under check_vma=False this is a no-op.
    """
    return x + jnp.zeros_like(like, x.dtype, shape=())


def _row_offset(axis_name: str, rows: int) -> jax.Array:
    return lax.axis_index(axis_name) * rows


# ------------------------------------------------------------ ring LSE (vjp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _ring_lse(a, c, scale, axis_name, tile, exclude_diagonal, with_cols) -> ck.LseResult:
    """Row LSE of this device's rows of a [b, D] against the global c, and
    (with_cols) column LSE of its columns of c [b, D] against the global a."""
    return _ring_lse_fwd(a, c, scale, axis_name, tile, exclude_diagonal, with_cols)[0]


def _ring_lse_fwd(a, c, scale, axis_name, tile, exclude_diagonal, with_cols):
    b = a.shape[0]
    row_offset = _row_offset(axis_name, b)

    def compute(src, rows, c_blk, cols):
        return ck.lse_forward(
            a, c_blk, scale, rows, cols, tile=tile, row_offset=row_offset,
            col_offset=src * b, exclude_diagonal=exclude_diagonal,
        )

    cols = ck.init_stats(b, c) if with_cols else None
    rows, cols = _ring(axis_name, compute, ck.init_stats(b, a), c, cols)
    row_lse = ck.stats_lse(rows)
    col_lse = ck.stats_lse(cols) if with_cols else None
    out = ck.LseResult(row_lse, rows.argmax, col_lse, cols.argmax if with_cols else None)
    return out, (a, c, scale, row_lse, col_lse)


def _ring_lse_bwd(axis_name, tile, exclude_diagonal, with_cols, res, g):
    a, c, scale, row_lse, col_lse = res
    b = a.shape[0]
    row_offset = _row_offset(axis_name, b)
    g_col = g.col_lse if with_cols else None

    def compute(src, local, blk, dc):
        da, dscale = local
        c_blk, lse_c, g_c = blk
        da_k, dc_k, ds_k = ck.lse_backward(
            a, c_blk, scale, row_lse, g.row_lse, lse_c, g_c, tile=tile,
            row_offset=row_offset, col_offset=src * b, exclude_diagonal=exclude_diagonal,
        )
        return (da + da_k, dscale + ds_k), dc + dc_k

    init = (ck.zeros_like_f32(a, a.shape), ck.zeros_like_f32(a))
    (da, dscale), dc = _ring(
        axis_name, compute, init, (c, col_lse, g_col), ck.zeros_like_f32(c, c.shape)
    )
    return da.astype(a.dtype), dc.astype(c.dtype), dscale.astype(scale.dtype)


_ring_lse.defvjp(_ring_lse_fwd, _ring_lse_bwd)


# ---------------------------------------------------- ring log-sigmoid (vjp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_negative_log_sigmoid(a, c, scale, bias, axis_name, tile):
    """(this device's rows' sum_j log sigmoid(-(S_ij + bias)) over global j,
    int32 global row argmax [b])."""
    return _ring_nls_fwd(a, c, scale, bias, axis_name, tile)[0]


def _ring_nls_fwd(a, c, scale, bias, axis_name, tile):
    b = a.shape[0]

    def compute(src, local, c_blk, acc):
        total, rows = local
        part, rows = ck.log_sigmoid_forward(a, c_blk, scale, bias, rows, tile=tile,
                                            col_offset=src * b)
        return (total + part, rows), acc

    (total, rows), _ = _ring(
        axis_name, compute, (ck.zeros_like_f32(a), ck.init_stats(b, a)), c, None
    )
    return (total, rows.argmax), (a, c, scale, bias)


def _ring_nls_bwd(axis_name, tile, res, g):
    a, c, scale, bias = res

    def compute(src, local, c_blk, dc):
        da, dscale, dbias = local
        da_k, dc_k, ds_k, db_k = ck.log_sigmoid_backward(a, c_blk, scale, bias, g[0], tile=tile)
        return (da + da_k, dscale + ds_k, dbias + db_k), dc + dc_k

    zero = ck.zeros_like_f32(a)
    (da, dscale, dbias), dc = _ring(
        axis_name, compute, (ck.zeros_like_f32(a, a.shape), zero, zero), c,
        ck.zeros_like_f32(c, c.shape),
    )
    return (da.astype(a.dtype), dc.astype(c.dtype), dscale.astype(scale.dtype),
            dbias.astype(bias.dtype))


_ring_negative_log_sigmoid.defvjp(_ring_nls_fwd, _ring_nls_bwd)


# -------------------------------------------------- per-device loss functions


def _global_total(axis_name: str) -> ck.Total:
    return lambda x: lax.psum(ck.local_total(x), axis_name)


def _global_size(axis_name: str, rows: int) -> int:
    return lax.axis_size(axis_name) * rows


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
    b = zimg_blk.shape[0]
    res = _ring_lse(zimg_blk, ztxt_blk, _varying_like(scale, zimg_blk), axis_name, tile, False, True)
    pos = scale * ck.row_dot(zimg_blk, ztxt_blk)
    ids = _row_offset(axis_name, b) + jnp.arange(b)
    return ck.softmax_loss_and_metrics(
        pos, res, ids, _global_size(axis_name, b), _global_total(axis_name)
    )


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
    rows = zimg_blk.shape[0]
    neg_sum, row_argmax = _ring_negative_log_sigmoid(
        zimg_blk, ztxt_blk, _varying_like(scale, zimg_blk), _varying_like(bias, zimg_blk),
        axis_name, tile,
    )
    ids = _row_offset(axis_name, rows) + jnp.arange(rows)
    return ck.sigmoid_loss_and_metrics(
        neg_sum, zimg_blk, ztxt_blk, scale, bias, row_argmax, ids,
        _global_size(axis_name, rows), _global_total(axis_name),
    )


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
    z, twin = ck.nt_xent_views(z1_blk, z2_blk)
    views = z.shape[0]
    res = _ring_lse(z, z, _varying_like(scale, z), axis_name, tile, True, False)
    pos = scale * ck.row_dot(z, z[twin])
    twin_ids = _row_offset(axis_name, views) + twin
    return ck.nt_xent_loss_and_metrics(
        pos, res.row_lse, res.row_argmax, twin_ids, _global_size(axis_name, views),
        _global_total(axis_name),
    )


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
