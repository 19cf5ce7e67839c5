"""Blockwise contrastive losses: custom_vjp rules over a *sweep* of column blocks.

A sweep visits the column blocks of the global batch: `LOCAL` (one block:
impl="chunked") or a device ring (`ring.RingSweep`: impl="ring"), so the same
custom_vjp rules, positives and metrics serve both:

- `softmax_nll` (CLIP rows and columns, or NT-Xent rows): per-row CE
  `lse - positive`; residuals O(B*D + B), the backward recomputes the tiles.
- `sigmoid_nll`: SigLIP summed over all pairs.
- `softmax_contrastive`, `sigmoid_contrastive`, `nt_xent`: (loss, metrics)
  with embeddings [b, D] and an f32 scalar logit scale; metrics come from the
  same pass (argmax tracked in the scan) and carry no gradient.

Each block's statistics and gradients come from a *block math* object
(`chunked_xla.ScanBlocks(tile)`, a lax.scan over column tiles; the ring can
plug in `ring.PallasBlocks`). Where a `tile: int` is accepted, so is such an
object.

The positives' gradient is added to the tiles' in float32 before a single
cast to the input dtype (bf16 inputs would otherwise lose the cancellation
between `softmax` and the one-hot target).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.contrastive.chunked_xla import argmax_pass, as_blocks
from pallas_kernels.contrastive.common import stored_f32
from pallas_kernels.contrastive.tile_math import F32, init_stats, stats_lse, zeros_like_f32


# ------------------------------------------------------------ block math
# How one block (rows a [Ba, D] x columns c [Bc, D], S = scale * a @ c.T) is
# computed. The protocol, all sums and cotangents f32, argmax indices global:
#   softmax_forward(a, c, scale, rows, cols, *, row_offset, col_offset,
#       exclude_diagonal) -> (rows, cols): the block's logits merged into row
#       [Ba] and (unless None) column [Bc] MaxStats;
#   softmax_backward(a, c, scale, row_lse, g_row, col_lse, g_col, *, row_offset,
#       col_offset, exclude_diagonal) -> (da, dc, dscale) of
#       <g_row, row_lse> + <g_col, col_lse> (final LSEs; col_lse/g_col may be None);
#   sigmoid_forward(a, c, scale, bias, rows, *, col_offset)
#       -> (sum_ij log sigmoid(-(S_ij + bias)) [], rows with max / argmax merged);
#   sigmoid_backward(a, c, scale, bias, g) -> (da, dc, dscale, dbias) of g * that sum.


# ------------------------------------------------------ sweeps over blocks
# A sweep runs `local, acc = compute(col_offset, local, block, acc)` over every
# column block of the global batch: one block on a single device; on a device
# ring (ring.RingSweep) the blocks travel between devices. `block` is
# read-only (the column embeddings and per-column inputs); `acc` accumulates
# per-column results and ends at the block's home.


class LocalSweep:
    """The whole batch is one block on this device.

    The protocol (see ring.RingSweep): `row_offset(rows)` global index
    of this device's first row; `n_total(rows)` global row count; `total(x)`
    sum of x [rows, ...] (or of a per-device scalar) over the global batch;
    `vary(x, like)` a replicated scalar made device-varying (for custom_vjp
    inputs whose cotangents are per-device partials); `__call__` the sweep.
    """

    def row_offset(self, rows: int) -> jax.Array | int:
        return 0

    def n_total(self, rows: int) -> int:
        return rows

    def total(self, x: jax.Array) -> jax.Array:
        return jnp.sum(x, axis=0) if jnp.ndim(x) else x

    def vary(self, x: jax.Array, like: jax.Array) -> jax.Array:
        return x

    def __call__(self, compute, local, block, acc):
        return compute(0, local, block, acc)


LOCAL = LocalSweep()


# --------------------------------------------------------------- positives
# Row i's positive is column partner(i) of its own block: i for image-text
# pairs (mode "clip"), its other view i + b/2 (mod b) for NT-Xent's [z1; z2]
# (mode "nt_xent"). partner is an involution.


def partner_index(mode: str, n: int) -> jax.Array:
    """[n] partner(i) of each of n rows."""
    return jnp.arange(n) if mode == "clip" else (jnp.arange(n) + n // 2) % n


def _partner_rows(x: jax.Array, mode: str) -> jax.Array:
    """x[partner(i)] for each row i (a roll by b/2 for NT-Xent)."""
    return x if mode == "clip" else jnp.roll(x, x.shape[0] // 2, axis=0)


def positive_logits(a: jax.Array, c: jax.Array, scale: jax.Array, mode: str) -> jax.Array:
    """[b] f32 logits scale * a_i.c_partner(i) of the positive pairs, from the values
    the block math reads (`stored_f32`: bf16 produced in the same jit stays rounded)."""
    return scale * row_dot(stored_f32(a), _partner_rows(stored_f32(c), mode))


def positive_backward(
    a: jax.Array, c: jax.Array, scale: jax.Array, w: jax.Array, mode: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """f32 cotangents (da, dc, dscale) of `-sum_i w_i * positive_logits_i`."""
    a, c_partner = stored_f32(a), _partner_rows(stored_f32(c), mode)
    da = -scale * w[:, None] * c_partner
    dc = -scale * _partner_rows(w[:, None] * a, mode)
    return da, dc, -jnp.sum(w * row_dot(a, c_partner))


def _cotangents(primals, f32_cotangents):
    return tuple(ct.astype(x.dtype) for x, ct in zip(primals, f32_cotangents))


def _add(*trees):
    return jax.tree.map(lambda *xs: sum(xs), *trees)


# ------------------------------------------------- softmax CE (custom_vjp)


class SoftmaxNll(NamedTuple):
    """Per-row (and per-column) cross-entropy `lse - positive` [b] and int32
    global argmax [b] of the logits (col fields None unless mode == "clip")."""

    row_nll: jax.Array
    row_argmax: jax.Array
    col_nll: jax.Array | None
    col_argmax: jax.Array | None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def softmax_nll(
    a: jax.Array, c: jax.Array, scale: jax.Array, blocks: Any, mode: str, sweep: Any = LOCAL
) -> SoftmaxNll:
    """Cross-entropies of this device's rows of `S = scale * a @ c.T`.

    mode "clip": a, c [b, D] image/text rows; row i's positive is column i; row
    and column CE. mode "nt_xent": a = c = [z1; z2] views [b, D], self-logits
    masked, rows only. `sweep` visits the column blocks (LOCAL: all of c);
    `blocks` (block math, e.g. ScanBlocks) computes each. Residuals are
    O(b*D + b); the backward recomputes every tile, and the
    positives' gradient is added in f32 before one cast to the input dtype.
    """
    return _softmax_nll_fwd(a, c, scale, blocks, mode, sweep)[0]


def _softmax_nll_fwd(a, c, scale, blocks, mode, sweep):
    b, with_cols = a.shape[0], mode == "clip"
    row_offset = sweep.row_offset(b)

    def compute(col_offset, rows, c_blk, cols):
        return blocks.softmax_forward(
            a, c_blk, scale, rows, cols, row_offset=row_offset,
            col_offset=col_offset, exclude_diagonal=not with_cols,
        )

    cols = init_stats(c.shape[0], c) if with_cols else None
    rows, cols = sweep(compute, init_stats(b, a), c, cols)
    pos = positive_logits(a, c, scale, mode)
    row_lse = stats_lse(rows)
    col_lse = stats_lse(cols) if with_cols else None
    out = SoftmaxNll(
        row_lse - pos, rows.argmax,
        col_lse - pos if with_cols else None, cols.argmax if with_cols else None,
    )
    return out, (a, c, scale, row_lse, col_lse)


def _softmax_nll_bwd(blocks, mode, sweep, res, g):
    a, c, scale, row_lse, col_lse = res
    with_cols = mode == "clip"
    row_offset = sweep.row_offset(a.shape[0])
    g_col = g.col_nll if with_cols else None
    w = g.row_nll + g_col if with_cols else g.row_nll
    # Block math that forms the positives inside its f32 tiles (Pallas) takes their weights.
    in_kernel = getattr(blocks, "positives_in_kernel", False)
    positive_kw = dict(positive_w=w, mode=mode) if in_kernel else {}

    def compute(col_offset, local, blk, dc):
        c_blk, lse_c, g_c = blk
        da_k, dc_k, ds_k = blocks.softmax_backward(
            a, c_blk, scale, row_lse, g.row_nll, lse_c, g_c,
            row_offset=row_offset, col_offset=col_offset, exclude_diagonal=not with_cols, **positive_kw,
        )
        return _add(local, (da_k, ds_k)), dc + dc_k

    init = (zeros_like_f32(a, a.shape), zeros_like_f32(a))
    (da, dscale), dc = sweep(compute, init, (c, col_lse, g_col), zeros_like_f32(c, c.shape))
    grads = (da, dc, dscale) if in_kernel else _add((da, dc, dscale), positive_backward(a, c, scale, w, mode))
    return _cotangents((a, c, scale), grads)


softmax_nll.defvjp(_softmax_nll_fwd, _softmax_nll_bwd)


# ------------------------------------------------- sigmoid CE (custom_vjp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def sigmoid_nll(
    a: jax.Array, c: jax.Array, scale: jax.Array, bias: jax.Array, blocks: Any, sweep: Any = LOCAL
) -> tuple[jax.Array, jax.Array]:
    """(-sum_ij log sigmoid(y_ij z_ij) over this device's rows i and all
    columns j, f32 []; int32 global row argmax [b]), z = scale a_i.c_j + bias,
    y = +1 for j = i else -1. Computed as all pairs as negatives plus
    sum_i z_ii (log sigmoid(z) - log sigmoid(-z) = z)."""
    return _sigmoid_nll_fwd(a, c, scale, bias, blocks, sweep)[0]


def _sigmoid_nll_fwd(a, c, scale, bias, blocks, sweep):
    def compute(col_offset, local, c_blk, acc):
        total, rows = local
        part, rows = blocks.sigmoid_forward(a, c_blk, scale, bias, rows, col_offset=col_offset)
        return (total + part, rows), acc

    init = (zeros_like_f32(a), init_stats(a.shape[0], a))
    (neg_sum, rows), _ = sweep(compute, init, c, None)
    pos_sum = jnp.sum(positive_logits(a, c, scale, "clip") + bias)
    return (-(neg_sum + pos_sum), rows.argmax), (a, c, scale, bias)


def _sigmoid_nll_bwd(blocks, sweep, res, g):
    a, c, scale, bias = res
    g = g[0]

    def compute(col_offset, local, c_blk, dc):
        da_k, dc_k, ds_k, db_k = blocks.sigmoid_backward(a, c_blk, scale, bias, -g)
        return _add(local, (da_k, ds_k, db_k)), dc + dc_k

    zero = zeros_like_f32(a)
    (da, dscale, dbias), dc = sweep(
        compute, (zeros_like_f32(a, a.shape), zero, zero), c, zeros_like_f32(c, c.shape)
    )
    w = jnp.full((a.shape[0],), g)
    da, dc, dscale = _add((da, dc, dscale), positive_backward(a, c, scale, w, "clip"))
    return _cotangents((a, c, scale, bias), (da, dc, dscale, dbias - g * a.shape[0]))


sigmoid_nll.defvjp(_sigmoid_nll_fwd, _sigmoid_nll_bwd)


# -------------------------------------------------------- the three losses
# Shared by the single-device chunked path (sweep=LOCAL) and the device ring
# (sweep=ring.RingSweep); each returns (global-mean loss, metrics).


def row_dot(a: jax.Array, c: jax.Array) -> jax.Array:
    """[B] f32 row-wise dot products of a, c [B, D]."""
    return jnp.einsum("bd,bd->b", a, c, preferred_element_type=F32)


def _fraction(hits: jax.Array, sweep: Any, n_total: int) -> jax.Array:
    return sweep.total(hits.astype(F32)) / n_total


def softmax_metrics(a, c, scale, row_argmax, col_argmax, sweep: Any = LOCAL) -> dict:
    """mean positive logit, top-1 of the row (image->text) and column argmax."""
    b = a.shape[0]
    n_total = sweep.n_total(b)
    ids = sweep.row_offset(b) + jnp.arange(b)
    return lax.stop_gradient({
        "mean_positive_logit": sweep.total(positive_logits(a, c, scale, "clip")) / n_total,
        "img2txt_top1": _fraction(row_argmax == ids, sweep, n_total),
        "txt2img_top1": _fraction(col_argmax == ids, sweep, n_total),
    })


def sigmoid_metrics(a, c, scale, bias, row_argmax, sweep: Any = LOCAL) -> dict:
    """mean positive / negative logit (the latter from (sum_i a_i).(sum_j c_j),
    O(B*D); nan if B == 1) and top-1 of the row argmax; logits include bias."""
    b = a.shape[0]
    n_total = sweep.n_total(b)
    n = jnp.asarray(n_total, F32)  # pair counts in f32: n^2 leaves int32 from B = 46,341
    pos_sum = sweep.total(positive_logits(a, c, scale, "clip")) + n * bias
    sum_a, sum_c = sweep.total(a.astype(F32)), sweep.total(c.astype(F32))
    all_pairs = scale * jnp.dot(sum_a, sum_c) + n * n * bias
    ids = sweep.row_offset(b) + jnp.arange(b)
    return lax.stop_gradient({
        "mean_positive_logit": pos_sum / n,
        "mean_negative_logit": (all_pairs - pos_sum) / (n * (n - 1.0)),
        "img2txt_top1": _fraction(row_argmax == ids, sweep, n_total),
    })


def nt_xent_metrics(z, scale, row_argmax, sweep: Any = LOCAL) -> dict:
    """mean positive logit and top-1 (the row argmax is the twin) of views z [2b, D]."""
    n_total = sweep.n_total(z.shape[0])
    twin_ids = sweep.row_offset(z.shape[0]) + partner_index("nt_xent", z.shape[0])
    return lax.stop_gradient({
        "mean_positive_logit": sweep.total(positive_logits(z, z, scale, "nt_xent")) / n_total,
        "top1": _fraction(row_argmax == twin_ids, sweep, n_total),
    })


def softmax_contrastive(
    a: jax.Array, c: jax.Array, scale: jax.Array, tile: Any, sweep: Any = LOCAL
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP `mean(row CE)/2 + mean(column CE)/2` of image rows a and text rows
    c [b, D] at logit scale `scale` (f32 []), and `softmax_metrics`. `tile`:
    int or block math (`as_blocks`)."""
    n_total = sweep.n_total(a.shape[0])
    res = softmax_nll(a, c, sweep.vary(scale, a), as_blocks(tile), "clip", sweep)
    loss = (sweep.total(res.row_nll) + sweep.total(res.col_nll)) / (2 * n_total)
    return loss, softmax_metrics(a, c, scale, res.row_argmax, res.col_argmax, sweep)


def sigmoid_contrastive(
    a: jax.Array, c: jax.Array, scale: jax.Array, bias: jax.Array, tile: Any,
    sweep: Any = LOCAL,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SigLIP `-(1/B) sum_ij log sigmoid(y_ij (scale a_i.c_j + bias))` and
    `sigmoid_metrics`."""
    nll_sum, row_argmax = sigmoid_nll(
        a, c, sweep.vary(scale, a), sweep.vary(bias, a), as_blocks(tile), sweep
    )
    loss = sweep.total(nll_sum) / sweep.n_total(a.shape[0])
    return loss, sigmoid_metrics(a, c, scale, bias, row_argmax, sweep)


def nt_xent_views(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """The views [b, D] stacked as z [2b, D]; row k's twin is row k + b (mod 2b)."""
    return jnp.concatenate([z1, z2])


def nt_xent(
    z1: jax.Array, z2: jax.Array, scale: jax.Array, tile: Any, sweep: Any = LOCAL
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """NT-Xent of the views z1, z2 [b, D] at logit scale 1/tau: mean over all
    views of their CE against every other view, and `nt_xent_metrics`."""
    z = nt_xent_views(z1, z2)
    res = softmax_nll(z, z, sweep.vary(scale, z), as_blocks(tile), "nt_xent", sweep)
    loss = sweep.total(res.row_nll) / sweep.n_total(z.shape[0])
    return loss, nt_xent_metrics(z, scale, res.row_argmax, sweep)


BLOCKWISE = {"softmax": softmax_contrastive, "sigmoid": sigmoid_contrastive, "nt_xent": nt_xent}


def max_pass_metrics(loss: str, x: jax.Array, y: jax.Array, params: tuple, tile: int) -> dict:
    """The metrics of `BLOCKWISE[loss](x, y, *params, ...)` (x, y [b, D]) by a
    max-only tile pass (one extra matmul, no exp, no gradient), for
    implementations that compute the loss elsewhere (Pallas)."""
    x, y, params = lax.stop_gradient((x, y, params))
    if loss == "softmax":
        return softmax_metrics(x, y, *params, *argmax_pass(x, y, *params, tile, "clip", True))
    if loss == "sigmoid":
        row_argmax, _ = argmax_pass(x, y, params[0], tile, "clip", False)
        return sigmoid_metrics(x, y, *params, row_argmax)
    z = nt_xent_views(x, y)
    row_argmax, _ = argmax_pass(z, z, params[0], tile, "nt_xent", False)
    return nt_xent_metrics(z, params[0], row_argmax)
