"""Contrastive losses: NumPy float64 ground truth -> "reference" -> "chunked".

Values, metrics and gradients (w.r.t. both embeddings and every scalar) are
compared under jit for odd shapes (B=1, B not a multiple of the tile, D=3),
bf16 inputs, the chunked path's compiled memory, the "pallas" dispatch on CPU
and bad inputs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.losses import contrastive as C

# ------------------------------------------------------ NumPy ground truth


def _lse(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _acc(argmax, target):
    return float(np.mean(argmax == target))


def np_softmax(a, c, log_t):
    """(loss, metrics, grads (a, c, log_t)) of CLIP in float64."""
    n, s = a.shape[0], np.exp(log_t)
    S = s * a @ c.T
    eye = np.eye(n)
    loss = 0.5 * (np.mean(_lse(S, 1) - np.diag(S)) + np.mean(_lse(S, 0) - np.diag(S)))
    p_row = np.exp(S - _lse(S, 1)[:, None])
    p_col = np.exp(S - _lse(S, 0)[None, :])
    dS = (p_row - eye + p_col - eye) / (2 * n)
    grads = (s * dS @ c, s * dS.T @ a, np.sum(dS * S))
    ids = np.arange(n)
    metrics = {
        "mean_positive_logit": np.mean(np.diag(S)),
        "img2txt_top1": _acc(S.argmax(1), ids),
        "txt2img_top1": _acc(S.argmax(0), ids),
    }
    return loss, metrics, grads


def np_sigmoid(a, c, log_t, b):
    """(loss, metrics, grads (a, c, log_t, b)) of SigLIP in float64."""
    n, s = a.shape[0], np.exp(log_t)
    S = s * a @ c.T
    z = S + b
    y = 2 * np.eye(n) - 1
    loss = np.sum(np.logaddexp(0.0, -y * z)) / n
    dz = -y / (1 + np.exp(y * z)) / n
    grads = (s * dz @ c, s * dz.T @ a, np.sum(dz * S), np.sum(dz))
    off = ~np.eye(n, dtype=bool)
    metrics = {
        "mean_positive_logit": np.mean(np.diag(z)),
        "mean_negative_logit": np.mean(z[off]) if n > 1 else np.nan,
        "img2txt_top1": _acc(z.argmax(1), np.arange(n)),
    }
    return loss, metrics, grads


def np_nt_xent(z1, z2, tau):
    """(loss, metrics, grads (z1, z2, tau)) of NT-Xent in float64."""
    n = z1.shape[0]
    z = np.concatenate([z1, z2])
    S = z @ z.T / tau
    np.fill_diagonal(S, -np.inf)
    twin = (np.arange(2 * n) + n) % (2 * n)
    pos = S[np.arange(2 * n), twin]
    lse = _lse(S, 1)
    loss = np.mean(lse - pos)
    dS = np.exp(S - lse[:, None])
    dS[np.arange(2 * n), twin] -= 1
    dS /= 2 * n
    dz = (dS + dS.T) @ z / tau
    S_finite = np.where(np.isfinite(S), S, 0.0)
    grads = (dz[:n], dz[n:], -np.sum(dS * S_finite) / tau)
    metrics = {"mean_positive_logit": np.mean(pos), "top1": _acc(S.argmax(1), twin)}
    return loss, metrics, grads


# name -> (loss fn, NumPy fn, scalar arguments)
LOSSES = {
    "softmax": (C.softmax_contrastive, np_softmax, (np.log(10.0),)),
    "sigmoid": (C.sigmoid_contrastive, np_sigmoid, (np.log(10.0), -5.0)),
    "nt_xent": (C.nt_xent, np_nt_xent, (0.2,)),
}
# Metrics that are exact counts / plain means, vs the negative-logit mean,
# which the chunked path gets from (sum a).(sum c) - sum(pos) (cancellation).
METRIC_RTOL = {"mean_negative_logit": 1e-4}


# ------------------------------------------------------------------ helpers


def normalised_pair(batch: int, dim: int, seed: int = 0, dtype=jnp.float32):
    """Two [batch, dim] L2-normalised embeddings, correlated row by row."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (batch, dim))
    y = x + 0.8 * jax.random.normal(k2, (batch, dim))
    norm = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)
    return norm(x).astype(dtype), norm(y).astype(dtype)


def loss_metrics_grads(fn, x, y, scalars, **kwargs):
    """jit(value_and_grad) of fn(x, y, *scalars, **kwargs) w.r.t. every argument."""
    scalars = tuple(jnp.float32(s) for s in scalars)

    def loss(*args):
        return fn(*args, **kwargs)

    argnums = tuple(range(2 + len(scalars)))
    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(
        x, y, *scalars
    )
    return value, metrics, grads


# Gradients are sums of terms of size ~exp(log_t)*|z| = 10 that cancel (to 0
# for B = 1), so their absolute error is a few f32 ulps of 10: atol 1e-5.
GRAD_ATOL = 1e-5


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, metric_rtol=METRIC_RTOL,
                 grad_atol=GRAD_ATOL):
    """Compares (loss, metrics, grads) triples leaf by leaf."""
    (l1, m1, g1), (l2, m2, g2) = actual, expected
    np.testing.assert_allclose(np.float64(l1), np.float64(l2), rtol=rtol, atol=atol)
    assert set(m1) == set(m2)
    for key in m1:
        np.testing.assert_allclose(
            np.float64(m1[key]), np.float64(m2[key]), rtol=metric_rtol.get(key, rtol),
            atol=atol, err_msg=key,
        )
    assert len(g1) == len(g2)
    for i, (x, y) in enumerate(zip(g1, g2)):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=grad_atol,
            err_msg=f"grad {i}",
        )


@functools.lru_cache(maxsize=None)
def run(name: str, impl: str, batch: int, dim: int, tile: int = C.DEFAULT_TILE, **kwargs):
    """Cached `loss_metrics_grads` of LOSSES[name] on `normalised_pair(batch, dim)`."""
    fn, _, scalars = LOSSES[name]
    x, y = normalised_pair(batch, dim)
    return loss_metrics_grads(fn, x, y, scalars, impl=impl, tile=tile, **kwargs)


# (B, D, tile): B = 1, B < tile, B not a multiple of the tile, tile = 1, D = 3.
SHAPES = [(1, 5, 4), (7, 3, 4), (33, 16, 8), (6, 4, 1)]


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("batch,dim", [(1, 5), (7, 3), (33, 16)])
def test_reference_matches_numpy(name, batch, dim):
    _, np_fn, scalars = LOSSES[name]
    x, y = normalised_pair(batch, dim)
    got = run(name, "reference", batch, dim)
    want = np_fn(np.float64(x), np.float64(y), *scalars)
    assert got[0].dtype == jnp.float32
    assert_close(got, want, metric_rtol={})


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("batch,dim,tile", SHAPES)
def test_chunked_matches_reference(name, batch, dim, tile):
    assert_close(run(name, "chunked", batch, dim, tile), run(name, "reference", batch, dim))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_bf16_inputs(name):
    """bf16 embeddings: loss in f32 (products of bf16 values are exact in f32,
    so rtol 1e-5 against float64 on the same values); gradients come back in
    bf16, so they match to bf16 rounding (rtol 1e-2)."""
    fn, np_fn, scalars = LOSSES[name]
    x, y = normalised_pair(13, 8, dtype=jnp.bfloat16)
    loss, metrics, grads = loss_metrics_grads(fn, x, y, scalars, impl="chunked", tile=4)
    want_loss, want_metrics, want_grads = np_fn(np.float64(x), np.float64(y), *scalars)
    assert loss.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    for key, value in metrics.items():
        np.testing.assert_allclose(float(value), want_metrics[key], rtol=METRIC_RTOL.get(key, 1e-5))
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(np.float64(got), want, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_carry_no_gradient(name):
    fn, _, scalars = LOSSES[name]
    x, y = normalised_pair(6, 4)

    def metric_sum(x, y, *s):
        metrics = fn(x, y, *s, impl="chunked", tile=4)[1]
        return sum(jnp.nan_to_num(v) for v in metrics.values())

    grads = jax.grad(metric_sum, argnums=(0, 1, 2))(x, y, *map(jnp.float32, scalars))
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_chunked_memory_is_not_quadratic(name):
    """Compiled scratch of jit(grad) at B=4096: the chunked path stays within
    8 live [rows, tile] f32 tiles; the reference needs at least one [rows, rows]."""
    fn, _, scalars = LOSSES[name]
    batch, dim, tile = 4096, 64, 128
    rows = 2 * batch if name == "nt_xent" else batch
    emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)

    def temp_bytes(impl):
        grad = jax.grad(lambda *a: fn(*a, impl=impl, tile=tile)[0], argnums=(0, 1, 2))
        lowered = jax.jit(grad).lower(emb, emb, *([scalar] * len(scalars)))
        return lowered.compile().memory_analysis().temp_size_in_bytes

    bound = 8 * rows * tile * 4
    assert temp_bytes("chunked") < bound
    assert temp_bytes("reference") > rows * rows * 4 > bound


def test_log_t_accepts_size_one_array():
    x, y = normalised_pair(5, 3)
    loss = jax.jit(lambda t: C.softmax_contrastive(x, y, t)[0])
    scalar, vector = loss(jnp.float32(1.5)), loss(jnp.array([1.5]))
    np.testing.assert_array_equal(scalar, vector)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="Pallas may run on accelerators")
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_pallas_on_cpu_raises_or_falls_back_to_chunked(name):
    fn, _, scalars = LOSSES[name]
    x, y = normalised_pair(7, 3)
    with pytest.raises(ValueError, match="cannot run here"):
        fn(x, y, *scalars, impl="pallas")
    got = run(name, "pallas", 7, 3, 4, fallback=True)
    assert_close(got, run(name, "chunked", 7, 3, 4), rtol=0, atol=0, grad_atol=0)


def test_pallas_where_it_cannot_run_raises_one_clear_error():
    """On CPU without backend="interpret": one ValueError naming the platform and both ways out."""
    x, y = normalised_pair(3, 2)
    with pytest.raises(ValueError, match=r"cannot run on platform 'cpu'.*backend='interpret'.*fallback=True"):
        C.softmax_contrastive(x, y, 0.0, impl="pallas")


GOOD = jnp.ones((4, 3))
BAD_CALLS = [
    (lambda: C.softmax_contrastive(GOOD, jnp.ones((5, 3)), 0.0), "same"),
    (lambda: C.sigmoid_contrastive(GOOD, jnp.ones((4, 2)), 0.0, 0.0), "same"),
    (lambda: C.nt_xent(jnp.ones((4,)), GOOD, 0.1), "2-D"),
    (lambda: C.softmax_contrastive(jnp.ones((2, 4, 3)), GOOD, 0.0), "2-D"),
    (lambda: C.softmax_contrastive(GOOD, GOOD, 0.0, tile=0), "tile"),
    (lambda: C.nt_xent(GOOD, GOOD, 0.1, impl="chunked", tile=-3), "tile"),
    (lambda: C.sigmoid_contrastive(GOOD, GOOD, 0.0, 0.0, tile=2.5), "tile"),
    (lambda: C.softmax_contrastive(GOOD, GOOD, 0.0, impl="fast"), "Unknown impl"),
    (lambda: C.nt_xent(GOOD, GOOD, 0.1, impl="ring"), "needs mesh="),
    (lambda: C.softmax_contrastive(GOOD, GOOD, jnp.zeros(2)), "log_t must be a scalar"),
    (lambda: C.sigmoid_contrastive(GOOD, GOOD, 0.0, jnp.zeros((1, 2))), "b must be a scalar"),
    (lambda: C.nt_xent(jnp.ones((4, 3), jnp.int32), GOOD, 0.1), "floating"),
    (lambda: C.nt_xent(jnp.ones((0, 3)), jnp.ones((0, 3)), 0.1), "non-empty"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
