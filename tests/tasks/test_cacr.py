"""CACR loss: a NumPy float64 re-derivation (loops over queries, explicit squared
distances, gradients by central differences) -> impl "reference" -> "chunked".

Values, metrics and gradients under jit and not, odd shapes (Q = K N not a
multiple of the tile), bf16 inputs, the chunked path's compiled memory, the
InfoNCE-like limit of uniform weights, and bad inputs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.losses import contrastive as C


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_cacr(z, t_pos, t_neg, alpha, beta):
    """(loss, metrics) in float64, written from the paper's definitions."""
    k, n, _ = z.shape
    attraction, pos_d = [], []
    for a in range(k):
        for i in range(n):
            d = np.array([np.sum((z[a, i] - z[p, i]) ** 2) for p in range(k) if p != a])
            attraction.append(np.sum(_softmax(t_pos * d) * alpha * d))
            pos_d.extend(d)
    views = z.reshape(k * n, -1)
    neg = []
    for r in range(k * n):
        d = np.array([np.sum((views[r] - views[j]) ** 2) for j in range(k * n) if j % n != r % n])
        neg.append(np.sum(_softmax(-t_neg * d) * d))
    loss = np.mean(attraction) - beta * np.mean(neg)
    metrics = {"attraction": np.mean(attraction), "repulsion": -beta * np.mean(neg),
               "positive_sqdist": np.mean(pos_d), "negative_sqdist": np.mean(neg)}
    return loss, metrics


def np_grad(z, *params, eps=1e-6):
    """d loss / d z by central differences in float64."""
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        hi, lo = z.copy(), z.copy()
        hi[idx] += eps
        lo[idx] -= eps
        g[idx] = (np_cacr(hi, *params)[0] - np_cacr(lo, *params)[0]) / (2 * eps)
    return g


@functools.lru_cache(maxsize=None)
def _truth(k, n, d, seed=0, normalise=True):
    """(z, loss, metrics, grad) of `_views(...)` in float64, computed once per module."""
    z = _views(k, n, d, seed, normalise)
    return (z, *np_cacr(z, *PARAMS.values()), np_grad(z, *PARAMS.values()))


def _views(k, n, d, seed=0, normalise=True):
    z = np.random.default_rng(seed).normal(size=(k, n, d))
    return z / np.linalg.norm(z, axis=-1, keepdims=True) if normalise else z


PARAMS = dict(t_pos=1.5, t_neg=2.0, alpha=1.0, beta=0.7)


def _loss_and_grad(impl, tile=512, use_jit=True):
    def f(z):
        return C.cacr(z, impl=impl, tile=tile, **PARAMS)

    fn = jax.value_and_grad(f, has_aux=True)
    return jax.jit(fn) if use_jit else fn


@pytest.mark.parametrize("impl,tile,use_jit", [
    ("reference", 512, True), ("chunked", 512, True), ("chunked", 4, True), ("chunked", 1, True),
    ("reference", 512, False), ("chunked", 4, False),
])
def test_matches_numpy(impl, tile, use_jit):
    z, want, want_metrics, g = _truth(3, 5, 4)  # K N = 15: tile 4 pads the last tile
    (loss, metrics), grad = _loss_and_grad(impl, tile, use_jit)(jnp.asarray(z, jnp.float32))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-5)
    for name, value in want_metrics.items():
        np.testing.assert_allclose(float(metrics[name]), value, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-4, atol=1e-5)


def test_two_views_and_unnormalised_embeddings():
    z, want, _, g = _truth(2, 6, 3, seed=1, normalise=False)
    for impl in C.CACR_IMPLS:
        (loss, _), grad = _loss_and_grad(impl, tile=5)(jnp.asarray(z, jnp.float32))
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, err_msg=impl)
        np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-4, atol=1e-5, err_msg=impl)


def test_zero_temperatures_give_uniform_weights():
    """t -> 0: every positive and negative counts equally (InfoNCE's uniform treatment)."""
    z = _views(3, 4, 5, seed=2)
    views = z.reshape(12, 5)
    d = np.sum((views[:, None] - views[None]) ** 2, -1)
    neg = ~(np.arange(12)[:, None] % 4 == np.arange(12)[None] % 4)
    pos = (~neg) & ~np.eye(12, dtype=bool)
    want = np.mean(d[pos]) - np.mean(d[neg])
    for impl in C.CACR_IMPLS:
        loss, _ = C.cacr(jnp.asarray(z, jnp.float32), t_pos=0.0, t_neg=0.0, impl=impl, tile=5)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5, err_msg=impl)


@pytest.mark.parametrize("use_jit", [True, False])
def test_bf16_inputs(use_jit):
    """bf16 views: f32 loss within bf16 rounding of the float64 truth on the same
    (rounded) values; bf16 gradients within 2 % of the largest f32 gradient."""
    z = jnp.asarray(_views(4, 6, 8, seed=3), jnp.bfloat16)
    exact = np.asarray(z.astype(jnp.float32), np.float64)
    want = np_cacr(exact, *PARAMS.values())[0]
    _, g_f32 = _loss_and_grad("reference")(z.astype(jnp.float32))
    scale = float(jnp.max(jnp.abs(g_f32)))
    for impl, tile in (("reference", 512), ("chunked", 5)):
        (loss, _), grad = _loss_and_grad(impl, tile, use_jit)(z)
        assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
        np.testing.assert_allclose(float(loss), want, rtol=2e-3, err_msg=impl)
        np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(g_f32), atol=2e-2 * scale, err_msg=impl)


def test_chunked_memory_is_not_quadratic():
    """[2, 2048, 64] views: the reference holds [4096, 4096] f32 matrices, the chunked path tiles."""
    spec = jax.ShapeDtypeStruct((2, 2048, 64), jnp.float32)

    def temp(impl):
        fn = jax.grad(lambda z: C.cacr(z, impl=impl, tile=256)[0])
        return jax.jit(fn).lower(spec).compile().memory_analysis().temp_size_in_bytes

    reference, chunked = temp("reference"), temp("chunked")
    assert chunked < 16 * 2**20 < 64 * 2**20 < reference, (chunked, reference)


@pytest.mark.parametrize("kwargs,message", [
    (dict(z=np.zeros((1, 4, 3), np.float32)), "K >= 2"),
    (dict(z=np.zeros((4, 3), np.float32)), r"\[K, N, D\]"),
    (dict(z=np.zeros((2, 4, 3), np.int32)), "floating"),
    (dict(z=np.zeros((2, 4, 3), np.float32), t_neg=-1.0), ">= 0"),
    (dict(z=np.zeros((2, 4, 3), np.float32), impl="pallas"), "impl"),
    (dict(z=np.zeros((2, 4, 3), np.float32), impl="chunked", tile=0), "tile"),
])
def test_bad_inputs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        C.cacr(**kwargs)


def test_cacr_digits_learns(tmp_path):
    """Learning gate: configs/cacr_digits.py shortened to 60 steps of batch 64 (K = 4 views).

    Measured (seed 0): loss 1.00, 0.77, 0.76 over the first logged steps -> about 0.0 at
    the end; views of other images end farther apart than views of one image
    (weighted negative 1.11 vs positive 0.90 squared distance); 20-NN 92 %.
    """
    import os

    from helpers import ROOT, train_losses
    from jaxsup.config import load_config
    from jaxsup.train import train_and_evaluate

    c = load_config(os.path.join(ROOT, "configs", "cacr_digits.py"))
    c.total_steps, c.batch_size, c.log_every, c.optim.warmup_steps = 60, 64, 2, 5
    c.checkpoint.every, c.checkpoint.async_save = 60, False
    c.evals.linear_probe.every = 0
    c.evals.knn.every = 0
    metrics = train_and_evaluate(c, str(tmp_path))
    losses = train_losses(str(tmp_path))
    curve = np.array([losses[s] for s in sorted(losses)])
    assert curve[-3:].mean() < curve[:3].mean() - 0.4, curve
    assert metrics["train/negative_sqdist"] > metrics["train/positive_sqdist"] + 0.1, metrics
    assert metrics["knn/top1"] > 0.8, metrics
