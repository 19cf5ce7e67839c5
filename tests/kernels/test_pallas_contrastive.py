"""Contrastive Pallas kernels vs the plain-jnp reference (and the reference vs NumPy).

CPU runs use interpret mode with 16-row blocks so odd batch sizes (1, 5, 37)
exercise padding and several tiles while keeping the grids tiny. Tolerances:
f32 rtol 1e-5 (plus an atol of 1e-5 x the largest magnitude, since near-zero
gradient entries carry absolute rounding error); bf16 gradients rtol 2e-2
because the backward rounds its f32 tile weights to bf16 before the second
matmul (the bf16 forward is exact products with f32 sums, so it keeps 1e-5).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.contrastive import pallas_impl as pallas_ops
from pallas_kernels.contrastive import reference


def _loss_only(fn):
    """The loss of a reference `(loss, metrics)` function."""
    return lambda *args: fn(*args)[0]


ref_softmax, ref_sigmoid, ref_nt_xent = map(
    _loss_only, (reference.softmax_contrastive, reference.sigmoid_contrastive, reference.nt_xent))

INTERPRET = dict(backend="interpret", block_q=16, block_k=16)
LOG_T = math.log(10.0)
SIGLIP_BIAS = -3.0
TAU = 0.2
LOSSES = {
    # name: (kernel loss, reference loss, scalar args after the embeddings)
    "softmax": (pallas_ops.softmax_contrastive_loss, ref_softmax, (LOG_T,)),
    "sigmoid": (pallas_ops.sigmoid_contrastive_loss, ref_sigmoid,
                (LOG_T, SIGLIP_BIAS)),
    "nt_xent": (pallas_ops.nt_xent_loss, ref_nt_xent, (TAU,)),
}


def embeddings(seed: int, *rows_and_dim, dtype=jnp.float32):
    """L2-normalised random embeddings, one [rows, D] array per rows value."""
    *all_rows, dim = rows_and_dim
    keys = jax.random.split(jax.random.key(seed), len(all_rows))
    out = []
    for key, rows in zip(keys, all_rows):
        z = jax.random.normal(key, (rows, dim), jnp.float32)
        out.append((z / jnp.linalg.norm(z, axis=1, keepdims=True)).astype(dtype))
    return out


def assert_close(actual, expected, rtol, scale=0.0):
    """allclose with atol = rtol * max(|expected|.max(), scale).

    `scale` stands in for the magnitude when the exact answer is 0.
    """
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    atol = rtol * max(np.max(np.abs(expected)), scale, 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def value_and_grads(fn, *args):
    """Loss value and gradients w.r.t. every argument (jitted: one compile, no
    op-by-op dispatch, which is what makes eager interpret mode slow)."""
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)


# ------------------------------------------------------------ reference vs NumPy (float64)


def _np_lse(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _np_softmax(x, axis):
    return np.exp(x - np.expand_dims(_np_lse(x, axis), axis))


def _np_clip(zi, zt, log_t):
    """CLIP loss and closed-form gradients: dL/dS = (softmax_r(S) - I + softmax_c(S) - I) / 2B."""
    b, c = zi.shape[0], np.exp(log_t)
    s = c * zi @ zt.T
    loss = 0.5 * np.mean(_np_lse(s, 1) - np.diag(s)) + 0.5 * np.mean(_np_lse(s, 0) - np.diag(s))
    ds = (_np_softmax(s, 1) + _np_softmax(s, 0) - 2 * np.eye(b)) / (2 * b)
    return loss, (c * ds @ zt, c * ds.T @ zi, np.sum(ds * s))


def _np_siglip(zi, zt, log_t, bias):
    """SigLIP loss and gradients: dL/dl = -y sigmoid(-y l) / B."""
    b, c = zi.shape[0], np.exp(log_t)
    y = 2 * np.eye(b) - 1
    logits = c * zi @ zt.T + bias
    loss = np.sum(np.log1p(np.exp(-y * logits))) / b
    dl = -y / (1 + np.exp(y * logits)) / b
    return loss, (c * dl @ zt, c * dl.T @ zi, np.sum(dl * (logits - bias)), np.sum(dl))


def _np_nt_xent(z1, z2, tau):
    """NT-Xent loss and gradients: dL/dS = (softmax_r(S) - twin) / 2N, dZ = (dS + dS^T) Z / tau."""
    n = z1.shape[0]
    z = np.concatenate([z1, z2])
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    twin = np.roll(np.eye(2 * n), n, axis=1)
    positives = s[np.arange(2 * n), (np.arange(2 * n) + n) % (2 * n)]
    loss = np.mean(_np_lse(s, 1) - positives)
    ds = (_np_softmax(s, 1) - twin) / (2 * n)
    dz = (ds + ds.T) @ z / tau
    return loss, (dz[:n], dz[n:])


@pytest.mark.parametrize("rows,dim", [(1, 8), (6, 5), (9, 16)])
def test_reference_matches_numpy(rows, dim):
    zi, zt = embeddings(0, rows, rows, dim)
    npi, npt = np.asarray(zi, np.float64), np.asarray(zt, np.float64)
    cases = [
        (ref_softmax, (zi, zt, LOG_T), _np_clip(npi, npt, LOG_T)),
        (ref_sigmoid, (zi, zt, LOG_T, SIGLIP_BIAS),
         _np_siglip(npi, npt, LOG_T, SIGLIP_BIAS)),
        (lambda a, b: ref_nt_xent(a, b, TAU), (zi, zt), _np_nt_xent(npi, npt, TAU)),
    ]
    scale = 10.0 if rows == 1 else 0.0  # B = 1: CLIP / NT-Xent are exactly 0.
    for fn, args, (np_loss, np_grads) in cases:
        loss, grads = value_and_grads(fn, *args)
        assert_close(loss, np_loss, 1e-5, scale)
        for g, np_g in zip(grads, np_grads):
            assert_close(g, np_g, 1e-5, scale)


def test_reference_pair_primitives_match_numpy():
    zq, zk = embeddings(1, 7, 5, 6)
    npq, npk = np.asarray(zq, np.float64), np.asarray(zk, np.float64)
    s = np.exp(LOG_T) * npq @ npk.T
    keep = np.arange(5)[None, :] - np.arange(7)[:, None] != 2
    row, col = reference.pair_logsumexp(zq, zk, LOG_T, 2)
    assert_close(row, _np_lse(np.where(keep, s, -np.inf), 1), 1e-5)
    assert_close(col, _np_lse(np.where(keep, s, -np.inf), 0), 1e-5)
    y = np.where(keep, -1.0, 1.0)
    sums = reference.sigmoid_pair_row_sums(zq, zk, LOG_T, SIGLIP_BIAS, 2)
    assert_close(sums, np.sum(np.log1p(np.exp(-y * (s + SIGLIP_BIAS))), axis=1), 1e-5)


# ------------------------------------------------------------ kernels (interpret) vs reference


def _loss_case(name, rows, dim, dtype=jnp.float32, seed=0):
    fn, ref_fn, scalars = LOSSES[name]
    z1, z2 = embeddings(seed, rows, rows, dim, dtype=dtype)
    if name == "nt_xent":  # tau stays a constant here; its gradient is tested separately.
        return (lambda a, b: fn(a, b, TAU, **INTERPRET)), (lambda a, b: ref_fn(a, b, TAU)), (z1, z2)
    kernel = lambda a, b, *s: fn(a, b, *s, **INTERPRET)
    return kernel, ref_fn, (z1, z2, *scalars)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("rows,dim", [(1, 8), (5, 33), (37, 128)])
def test_loss_matches_reference_f32(name, rows, dim):
    kernel, ref_fn, args = _loss_case(name, rows, dim)
    loss, grads = value_and_grads(kernel, *args)
    ref_loss, ref_grads = value_and_grads(ref_fn, *args)
    # With B = 1 the CLIP and NT-Xent losses and gradients are exactly 0: compare
    # at the scale of the logits (exp(log_t) = 10, 1 / tau = 5) instead.
    scale = 10.0 if rows == 1 else 0.0
    assert loss.dtype == jnp.float32 and loss.shape == ()
    assert_close(loss, ref_loss, 1e-5, scale)
    for g, ref_g in zip(grads, ref_grads):
        assert_close(g, ref_g, 1e-5, scale)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_matches_reference_bf16(name):
    kernel, ref_fn, args = _loss_case(name, 37, 33, dtype=jnp.bfloat16)
    loss, grads = value_and_grads(kernel, *args)
    upcast = [a.astype(jnp.float32) if hasattr(a, "dtype") else a for a in args]
    ref_loss, ref_grads = value_and_grads(ref_fn, *upcast)
    assert_close(loss, ref_loss, 1e-5)
    for g, ref_g, a in zip(grads, ref_grads, args):
        assert g.dtype == jnp.asarray(a).dtype
        assert_close(g, ref_g, 2e-2)


def test_nt_xent_tau_gradient():
    z1, z2 = embeddings(3, 5, 5, 33)
    grad = jax.jit(jax.grad(lambda t: pallas_ops.nt_xent_loss(z1, z2, t, **INTERPRET)))(jnp.float32(TAU))
    ref_grad = jax.grad(lambda t: ref_nt_xent(z1, z2, t))(jnp.float32(TAU))
    assert_close(grad, ref_grad, 1e-5)


def test_losses_under_jit_with_traced_temperature():
    zi, zt = embeddings(4, 5, 5, 8)
    fn = jax.jit(lambda lt, b: pallas_ops.sigmoid_contrastive_loss(zi, zt, lt, b, **INTERPRET))
    assert_close(fn(1.5, -2.0), ref_sigmoid(zi, zt, 1.5, -2.0), 1e-5)


# ------------------------------------------------------------ block primitives (ring contract)


def _split(z, at):
    return z[:at], z[at:]


def test_softmax_pair_blocks_combine_like_a_ring():
    """Two column blocks with a traced self offset: logaddexp-combined row LSEs,
    concatenated column LSEs and summed block backwards (fed the FINAL LSEs)
    equal the whole-matrix reference and its gradients."""
    zq, zk = embeddings(5, 21, 32, 33)
    global_offset, cut = 3, 16
    g_row, g_col = _split(jax.random.normal(jax.random.key(9), (21 + 32,)), 21)
    ref_row, ref_col = reference.pair_logsumexp(zq, zk, LOG_T, global_offset)
    _, vjp = jax.vjp(lambda a, b, t: reference.pair_logsumexp(a, b, t, global_offset), zq, zk,
                     jnp.float32(LOG_T))
    ref_dzq, ref_dzk, ref_dlt = vjp((g_row, g_col))

    # Equal block shapes and a traced offset: one compile serves both blocks.
    forward = jax.jit(lambda b, o: pallas_ops.softmax_pair_lse(zq, b, LOG_T, self_offset=o, **INTERPRET))
    backward = jax.jit(lambda b, o, row, col, g_c: pallas_ops.softmax_pair_lse_backward(
        zq, b, LOG_T, row, col, g_row, g_c, self_offset=o, **INTERPRET))
    blocks = list(zip(_split(zk, cut), (global_offset, global_offset - cut)))
    parts = [forward(zk_b, jnp.int32(o)) for zk_b, o in blocks]
    row = jnp.logaddexp(parts[0][0], parts[1][0])
    col = jnp.concatenate([parts[0][1], parts[1][1]])
    assert_close(row, ref_row, 1e-5)
    assert_close(col, ref_col, 1e-5)

    dzq, dzk, dlt = 0.0, [], 0.0
    for (zk_b, o), col_b, g_col_b in zip(blocks, _split(col, cut), _split(g_col, cut)):
        dq, dk, dt = backward(zk_b, jnp.int32(o), row, col_b, g_col_b)
        dzq, dlt = dzq + dq, dlt + dt
        dzk.append(dk)
    assert_close(dzq, ref_dzq, 1e-5)
    assert_close(jnp.concatenate(dzk), ref_dzk, 1e-5)
    assert_close(dlt, ref_dlt, 1e-5)


def test_softmax_pair_lse_grad_and_empty_rows():
    """jax.grad through the primitive; a 1x1 block whose only cell is excluded gives -inf."""
    zq, zk = embeddings(6, 5, 37, 8)
    w = jnp.linspace(-1.0, 1.0, 5)
    fn = lambda a, b, t: jnp.sum(w * pallas_ops.softmax_pair_lse(a, b, t, self_offset=-2, **INTERPRET)[0])
    ref = lambda a, b, t: jnp.sum(w * reference.pair_logsumexp(a, b, t, -2)[0])
    args = (zq, zk, jnp.float32(LOG_T))
    for g, ref_g in zip(value_and_grads(fn, *args)[1], value_and_grads(ref, *args)[1]):
        assert_close(g, ref_g, 1e-5)
    row, col = pallas_ops.softmax_pair_lse(zq[:1], zq[:1], LOG_T, self_offset=0, **INTERPRET)
    assert np.isneginf(row).all() and np.isneginf(col).all()


def test_sigmoid_pair_blocks_sum_like_a_ring():
    """Row sums of two column blocks add up; their block backwards sum to the
    whole-matrix gradients (positives where the global row equals the column)."""
    zq, zk = embeddings(7, 21, 32, 33)
    cut, g_row = 16, jnp.linspace(0.5, 2.0, 21)
    fn = lambda a, b, t, bias: jnp.sum(g_row * reference.sigmoid_pair_row_sums(a, b, t, bias, 0))
    ref_loss, ref_grads = value_and_grads(fn, zq, zk, jnp.float32(LOG_T), jnp.float32(SIGLIP_BIAS))
    forward = jax.jit(lambda b, o: pallas_ops.sigmoid_pair_row_sums(
        zq, b, LOG_T, SIGLIP_BIAS, positive_offset=o, **INTERPRET))
    backward = jax.jit(lambda b, o: pallas_ops.sigmoid_pair_row_sums_backward(
        zq, b, LOG_T, SIGLIP_BIAS, g_row, positive_offset=o, **INTERPRET))
    total, dzq, dzk, dlt, db = 0.0, 0.0, [], 0.0, 0.0
    for zk_b, o in zip(_split(zk, cut), (0, -cut)):
        total = total + jnp.sum(g_row * forward(zk_b, jnp.int32(o)))
        dq, dk, dt, dbias = backward(zk_b, jnp.int32(o))
        dzq, dlt, db = dzq + dq, dlt + dt, db + dbias
        dzk.append(dk)
    assert_close(total, ref_loss, 1e-5)
    for got, want in zip((dzq, jnp.concatenate(dzk), dlt, db), ref_grads):
        assert_close(got, want, 1e-5)


def test_sigmoid_pair_without_positives_is_all_negatives():
    """positive_offset=None: every cell has y = -1 (a ring step whose block holds no diagonal)."""
    zq, zk = embeddings(3, 9, 11, 8)
    g_row = jnp.linspace(0.5, 2.0, 9)
    fn = lambda a, b, t, bias: jnp.sum(g_row * reference.sigmoid_pair_row_sums(a, b, t, bias, None))
    ref_loss, ref_grads = value_and_grads(fn, zq, zk, jnp.float32(LOG_T), jnp.float32(SIGLIP_BIAS))
    logits = np.exp(LOG_T) * np.asarray(zq, np.float64) @ np.asarray(zk, np.float64).T + SIGLIP_BIAS
    assert_close(ref_loss, np.sum(np.asarray(g_row) * np.logaddexp(0.0, logits).sum(1)), 1e-5)
    got = pallas_ops.sigmoid_pair_row_sums(zq, zk, LOG_T, SIGLIP_BIAS, positive_offset=None, **INTERPRET)
    assert_close(jnp.sum(g_row * got), ref_loss, 1e-5)
    grads = pallas_ops.sigmoid_pair_row_sums_backward(zq, zk, LOG_T, SIGLIP_BIAS, g_row,
                                                      positive_offset=None, **INTERPRET)
    for g, want in zip(grads, ref_grads):
        assert_close(g, want, 1e-5)
