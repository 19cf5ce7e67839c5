"""Row-chunked fused linear KD (impl="chunked", chunking="rows"): Liger-style, pure JAX.

For each chunk of `chunk` rows the full student logits `z = h_c @ W`
[chunk, V] exist briefly; the per-row loss and `dL/dz` are formed from them
in the same pass, then `dh_c = dz W^T` is written and `dW += h_c^T dz`
accumulated. That is three GEMMs of N*H*V, like the naive path (the
vocabulary-tiled `chunked_xla.py` needs four: its backward recomputes each
logits tile once the log-sum-exps are known). Memory: O(chunk * V) for the
chunk plus the f32 dW accumulator [H, V]; no [N, V] array exists. Gradients
are computed in the forward (custom_vjp residuals) and scaled by the incoming
cotangent; without differentiation only the loss is computed (one GEMM).

The same pass can add a label cross-entropy at temperature 1 with per-row
weights (`fused_linear_kd_ce_rows`):

    total = sum_n kd_w[n] * T^2 D_n(teacher, student) + ce_w[n] * CE(z_n, label_n)

and return per-row statistics (the aux rows: T^2 D_n, CE_n, student and
teacher top-1) without gradients. Plain fused linear KD is kd_w = 1/N, no CE.
N need not be a multiple of `chunk`: the last chunk is shifted up and its
already-seen rows get weight 0. The teacher, labels and weights get no
gradients.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.backend import check_positive_int
from pallas_kernels.linear_kd import tile_math as tiles
from pallas_kernels.linear_kd.chunked_xla import sliced, tile_start_and_mask
from pallas_kernels.linear_kd.common import KdLoss, RowAux

CHUNK_ELEMENTS = 2**24  # f32 [chunk, V] logits of one chunk: at most 64 MiB
DW_TILE_BYTES = 2**25  # f32 [H, tile] temporary of one dW update: at most 32 MiB


def default_row_chunk(n: int, v: int) -> int:
    """Rows per chunk: the largest power of two with chunk * V <= CHUNK_ELEMENTS, at most N.

    Large chunks win on CPU: each chunk re-reads and re-writes the f32 dW [H, V]
    accumulator, so fewer chunks mean less memory traffic (benchmarks/fused_linear_kd.py).
    """
    chunk = 1 << max(0, (CHUNK_ELEMENTS // v).bit_length() - 1)
    return max(1, min(n, chunk))


def default_dw_tile(h: int, v: int) -> int:
    """Columns per dW update: a power of two with 4 * H * tile <= DW_TILE_BYTES (>= 128)."""
    return min(v, max(128, 1 << max(0, (DW_TILE_BYTES // (4 * h)).bit_length() - 1)))


class RowStatic(NamedTuple):
    """Static configuration of one row-chunked call (hashable)."""

    loss: KdLoss
    chunk: int
    with_ce: bool
    with_aux: bool
    grad_dtypes: tuple  # (h dtype, W dtype) of the gradients
    dw_tile: int  # columns per dW update (DW_TILE_BYTES of f32 [H, tile])


def _kl_rows(s: jax.Array, t: jax.Array, grads: bool):
    """KL(p || q) rows [c] and q - p [c, V] (or None): each exp computed once."""
    e_s = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
    e_t = jnp.exp(t - jnp.max(t, axis=1, keepdims=True))
    sum_s, sum_t = jnp.sum(e_s, axis=1), jnp.sum(e_t, axis=1)
    lse_s = jnp.max(s, axis=1) + jnp.log(sum_s)
    lse_t = jnp.max(t, axis=1) + jnp.log(sum_t)
    rows = jnp.sum(e_t * (t - s), axis=1) / sum_t - lse_t + lse_s  # sum p (lp - lq)
    if not grads:
        return rows, None
    return rows, e_s * (1.0 / sum_s)[:, None] - e_t * (1.0 / sum_t)[:, None]


def _kd_rows(s: jax.Array, t: jax.Array, loss: KdLoss, grads: bool):
    """Row divergences D [c] and dD/ds [c, V] (None unless grads) of scaled logits s, t [c, V]."""
    if loss.kind == "kl":
        return _kl_rows(s, t, grads)
    lse_s = jax.nn.logsumexp(s, axis=1)
    lse_t = jax.nn.logsumexp(t, axis=1)
    if loss.kind == "rkl":
        lq = s - lse_s[:, None]
        rows = jnp.sum(jnp.exp(lq) * (lq - t + lse_t[:, None]), axis=1)
        row_c = rows
    else:
        div, kl_q_m = tiles.jsd_tile_terms(s, t, lse_s, lse_t, loss.beta)
        rows, row_c = jnp.sum(div, axis=1), jnp.sum(kl_q_m, axis=1)
    if not grads:
        return rows, None
    return rows, tiles.student_grad_tile(s, t, lse_s, lse_t, row_c, loss.kind, loss.beta)


def _ce_rows(z: jax.Array, labels: jax.Array, grads: bool):
    """CE rows [c] of logits z [c, V] and int labels [c], and dCE/dz [c, V] (or None)."""
    lse = jax.nn.logsumexp(z, axis=1)
    picked = jnp.take_along_axis(z, labels[:, None], axis=1)[:, 0]
    if not grads:
        return lse - picked, None
    onehot = jnp.arange(z.shape[1])[None, :] == labels[:, None]
    return lse - picked, jnp.exp(z - lse[:, None]) - onehot


def _teacher_chunk(teacher: tuple[jax.Array, ...], start: jax.Array, chunk: int) -> jax.Array:
    """Teacher logits [chunk, V] f32 of rows [start, start + chunk)."""
    if len(teacher) == 1:
        return sliced(teacher[0], start, chunk, axis=0).astype(jnp.float32)
    h_t, w_t = teacher
    return jnp.dot(sliced(h_t, start, chunk, axis=0), w_t, preferred_element_type=jnp.float32)


def _chunk_terms(h_c, w, t_logits, labels_c, kd_w, ce_w, st: RowStatic, grads: bool):
    """(weighted loss sum, dL/dz [c, V] or None, RowAux of the chunk) for one row chunk."""
    temperature = st.loss.temperature
    z = jnp.dot(h_c, w, preferred_element_type=jnp.float32)
    t_logits = lax.stop_gradient(t_logits)
    rows, ds = _kd_rows(z * (1.0 / temperature), t_logits * (1.0 / temperature), st.loss, grads)
    kd = temperature**2 * rows
    total = jnp.sum(kd_w * kd)
    dz = None if ds is None else (kd_w * temperature)[:, None] * ds  # d(T^2 D)/dz = T dD/ds
    ce = jnp.zeros_like(kd)
    if st.with_ce:
        ce, dce = _ce_rows(z, labels_c, grads)
        total = total + jnp.sum(ce_w * ce)
        dz = None if dz is None else dz + ce_w[:, None] * dce
    aux = None
    if st.with_aux:
        aux = RowAux(kd, ce, jnp.argmax(z, axis=1).astype(jnp.int32),
                     jnp.argmax(t_logits, axis=1).astype(jnp.int32))
    return total, dz, aux


def _keep_new(new: jax.Array, old: jax.Array, valid: jax.Array) -> jax.Array:
    """Rows of `new` where valid [c], else `old` (the shifted last chunk's seen rows)."""
    return jnp.where(valid.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)


def _update_rows(acc: jax.Array, new: jax.Array, start: jax.Array, valid: jax.Array) -> jax.Array:
    """acc [N, ...] with rows [start, start + c) set to `new` where valid."""
    old = lax.dynamic_slice_in_dim(acc, start, new.shape[0], axis=0)
    return lax.dynamic_update_slice_in_dim(acc, _keep_new(new, old, valid), start, axis=0)


def _accumulate_dw(dw: jax.Array, h_c: jax.Array, dz: jax.Array, tile: int) -> jax.Array:
    """dw [H, V] + h_c^T dz (h_c [c, H], dz [c, V]), `tile` columns at a time, so that the
    product's temporary is [H, tile], not [H, V] (XLA does not fuse the add into the dot)."""
    vocab = dw.shape[1]
    if tile >= vocab:
        return dw + lax.dot_general(h_c, dz, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    def body(index, dw):
        start, valid = tile_start_and_mask(index, tile, vocab)
        part = lax.dot_general(h_c, sliced(dz, start, tile), (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
        old = lax.dynamic_slice_in_dim(dw, start, tile, axis=1)
        return lax.dynamic_update_slice_in_dim(dw, jnp.where(valid, old + part, old), start, axis=1)

    return lax.fori_loop(0, -(-vocab // tile), body, dw)


def _scan_rows(h, w, teacher, labels, kd_w, ce_w, st: RowStatic, grads: bool):
    """(total f32, (dh [N, H] f32, dW [H, V] f32) or None, RowAux [N] or None)."""
    n, chunk = h.shape[0], st.chunk

    def step(carry, index):
        start, valid = tile_start_and_mask(index, chunk, n)
        valid = valid[0]
        take = functools.partial(sliced, start=start, size=chunk, axis=0)
        kd_c = jnp.where(valid, take(kd_w), 0.0)
        ce_c = jnp.where(valid, take(ce_w), 0.0)
        h_c = take(h)
        total, dz, aux = _chunk_terms(h_c, w, _teacher_chunk(teacher, start, chunk), take(labels),
                                      kd_c, ce_c, st, grads)
        out = {"total": carry["total"] + total}
        if grads:
            dz = dz.astype(w.dtype)
            dh_c = lax.dot_general(dz, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            out["dh"] = _update_rows(carry["dh"], dh_c, start, valid)
            out["dw"] = _accumulate_dw(carry["dw"], h_c, dz.astype(h.dtype), st.dw_tile)
        if st.with_aux:
            out["aux"] = RowAux(*(_update_rows(a, b, start, valid) for a, b in zip(carry["aux"], aux)))
        return out, None

    init = {"total": jnp.zeros((), jnp.float32)}
    if grads:
        init["dh"] = jnp.zeros(h.shape, jnp.float32)
        init["dw"] = jnp.zeros(w.shape, jnp.float32)
    if st.with_aux:
        zeros_f, zeros_i = jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32)
        init["aux"] = RowAux(zeros_f, zeros_f, zeros_i, zeros_i)
    carry, _ = lax.scan(step, init, jnp.arange(-(-n // chunk)))
    return carry["total"], (carry["dh"], carry["dw"]) if grads else None, carry.get("aux")


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _rows_loss(h, w, teacher, labels, kd_w, ce_w, st):
    total, _, aux = _scan_rows(h, w, teacher, labels, kd_w, ce_w, st, grads=False)
    return total, aux


def _rows_loss_fwd(h, w, teacher, labels, kd_w, ce_w, st):
    total, (dh, dw), aux = _scan_rows(h, w, teacher, labels, kd_w, ce_w, st, grads=True)
    return (total, aux), (dh, dw)


def _rows_loss_bwd(st, residuals, cotangents):
    dh, dw = residuals
    g = cotangents[0]  # the aux rows are stop-gradient'ed by every caller
    h_dtype, w_dtype = st.grad_dtypes
    return (g * dh).astype(h_dtype), (g * dw).astype(w_dtype), None, None, None, None


_rows_loss.defvjp(_rows_loss_fwd, _rows_loss_bwd)


def _static(loss: KdLoss, h_s: jax.Array, w_s: jax.Array, chunk: int | None, with_ce: bool,
            with_aux: bool) -> RowStatic:
    (n, h), v = h_s.shape, w_s.shape[1]
    chunk = default_row_chunk(n, v) if chunk is None else check_positive_int("row_chunk", chunk)
    return RowStatic(loss, min(chunk, n), with_ce, with_aux, (h_s.dtype, w_s.dtype),
                     default_dw_tile(h, v))


def fused_linear_kd_rows(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss,
    chunk: int | None = None,
) -> jax.Array:
    """Mean over N of `T^2 * D` (f32 scalar) for h_s [N, H], w_s [H, V] and a teacher
    `(logits [N, V],)` or `(h_t [N, Ht], W_t [Ht, V])` as `common.check_fused_inputs`
    returns them; `chunk` rows per step (None: `default_row_chunk`)."""
    n = h_s.shape[0]
    st = _static(loss, h_s, w_s, chunk, False, False)
    kd_w = jnp.full((n,), 1.0 / n, jnp.float32)
    labels = jnp.zeros((n,), jnp.int32)
    return _rows_loss(h_s, w_s, teacher, labels, kd_w, jnp.zeros_like(kd_w), st)[0]


def fused_linear_kd_ce_rows(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss,
    labels: jax.Array, kd_weights: jax.Array, ce_weights: jax.Array | None,
    chunk: int | None = None,
) -> tuple[jax.Array, RowAux]:
    """`sum_n kd_weights[n] T^2 D_n + ce_weights[n] CE_n` (f32 scalar) and RowAux [N].

    labels [N] int, weights [N] f32 (no gradients); ce_weights None: no CE term.
    """
    st = _static(loss, h_s, w_s, chunk, ce_weights is not None, True)
    kd_w = jnp.asarray(kd_weights, jnp.float32)
    ce_w = jnp.zeros_like(kd_w) if ce_weights is None else jnp.asarray(ce_weights, jnp.float32)
    total, aux = _rows_loss(h_s, w_s, teacher, jnp.asarray(labels, jnp.int32), kd_w, ce_w, st)
    return total, jax.tree.map(lax.stop_gradient, aux)
