"""Sparse top-k KD (jaxsup/losses/topk_kd.py) against a NumPy float64 reference: values and
gradients, in and out of jit, f32 and bf16; k = V equals the full-logit KD loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.data.host.reinforce_store import topk_targets
from jaxsup.losses.distill import kd_kl, soft_ce
from jaxsup.losses.topk_kd import topk_kd_kl, topk_soft_ce


def lse(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def reference(s: np.ndarray, t: np.ndarray, k: int, temp: float) -> tuple[float, np.ndarray]:
    """(loss, d loss / d s [B, V]) in float64 from the FULL teacher logits t [B, V], its top k kept."""
    s, t = s.astype(np.float64) / temp, t.astype(np.float64) / temp
    b, v = s.shape
    idx = np.argsort(-t, axis=1, kind="stable")[:, :k]
    kept = np.zeros((b, v), bool)
    kept[np.arange(b)[:, None], idx] = True
    p_full = np.exp(t - lse(t)[:, None])
    q_full = np.exp(s - lse(s)[:, None])
    p = np.where(kept, p_full, 0.0)
    p_rest = np.where(kept, 0.0, p_full).sum(1)
    q = np.where(kept, q_full, 0.0)
    q_rest = np.where(kept, 0.0, q_full).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(kept, p * (np.log(p) - np.log(q)), 0.0).sum(1)
        kl += np.where(p_rest > 0, p_rest * (np.log(p_rest) - np.log(q_rest)), 0.0)
    # dKL/ds_j = q_j - p_j over kept, and for rest classes q_j (1 - p_rest / q_rest); times T^2 / T / B
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_factor = np.where(p_rest > 0, 1 - p_rest / q_rest, 1.0)
    grad = np.where(kept, q_full - p_full, q_full * rest_factor[:, None]) * temp / b
    return float(temp * temp * kl.mean()), grad


def data(b=6, v=13, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    s = jnp.asarray(rng.normal(size=(b, v)) * 2, dtype)
    t = jnp.asarray(rng.normal(size=(b, v)) * 3, dtype)
    return s, t


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("k", [1, 5, 13])
def test_values_and_grads_match_numpy(dtype, jit, k):
    s, t = data(dtype=dtype)
    temp = 2.0
    vals, idx, rest = topk_targets(t, k, temp)

    def loss(s_):
        return topk_kd_kl(s_, vals.astype(dtype), idx, rest, temp)

    fn = jax.jit(jax.value_and_grad(loss)) if jit else jax.value_and_grad(loss)
    value, grad = fn(s)
    ref_value, ref_grad = reference(np.asarray(s, np.float64), np.asarray(t, np.float64), k, temp)
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-5, atol=1e-6)
    # the gradient comes back in the input's dtype: bf16 rounds it to 8 bits of mantissa
    tol = dict(rtol=1e-4, atol=2e-6) if dtype == jnp.float32 else dict(rtol=2**-7, atol=1e-5)
    assert grad.dtype == dtype
    np.testing.assert_allclose(np.asarray(grad, np.float64), ref_grad, **tol)


@pytest.mark.parametrize("jit", [False, True])
def test_k_equal_v_is_full_kd(jit):
    s, t = data(b=8, v=10, seed=3)
    temp = 4.0
    vals, idx, rest = topk_targets(t, 10, temp)
    assert np.all(np.isneginf(np.asarray(rest)))
    top = (lambda s_: topk_kd_kl(s_, vals, idx, rest, temp))
    full = (lambda s_: kd_kl(s_, t, temp))
    if jit:
        top, full = jax.jit(top), jax.jit(full)
    np.testing.assert_allclose(float(top(s)), float(full(s)), rtol=0, atol=1e-6)
    g_top, g_full = jax.grad(top)(s), jax.grad(full)(s)
    np.testing.assert_allclose(np.asarray(g_top), np.asarray(g_full), rtol=0, atol=1e-6)


def test_rest_bucket_counts():
    """k < V: the loss is not the KL over the kept classes alone (the rest mass is compared too),
    and it is zero when the student equals the teacher."""
    s, t = data(seed=5)
    vals, idx, rest = topk_targets(t, 3, 1.0)
    assert float(topk_kd_kl(t, vals, idx, rest, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(topk_kd_kl(s, vals, idx, rest, 1.0)) > 0


def test_weights_and_shape_errors():
    s, t = data()
    vals, idx, rest = topk_targets(t, 4, 1.0)
    w = jnp.asarray([1.0, 0, 0, 0, 0, 0])
    ref, _ = reference(np.asarray(s[:1]), np.asarray(t[:1]), 4, 1.0)
    np.testing.assert_allclose(float(topk_kd_kl(s, vals, idx, rest, 1.0, weights=w)), ref, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        topk_kd_kl(s, vals[:, :2], idx, rest, 1.0)
    with pytest.raises(ValueError, match="lse_rest"):
        topk_kd_kl(s, vals, idx, rest[:2], 1.0)


@pytest.mark.parametrize("k", [3, 10])
def test_soft_ce_matches_numpy_and_full_soft_ce_at_k_equal_v(k):
    """SimCLRv2's soft CE over the k + 1 buckets; at k = V the full soft CE (values and gradients)."""
    s, t = data(b=5, v=10, seed=7)
    temp = 2.0
    vals, idx, rest = topk_targets(t, k, temp)
    value = float(jax.jit(lambda s_: topk_soft_ce(s_, vals, idx, rest, temp))(s))
    s64, t64 = np.asarray(s, np.float64) / temp, np.asarray(t, np.float64) / temp
    p, q = np.exp(t64 - lse(t64)[:, None]), np.exp(s64 - lse(s64)[:, None])
    order = np.argsort(-t64, axis=1, kind="stable")[:, :k]
    kept = np.zeros(p.shape, bool)
    kept[np.arange(5)[:, None], order] = True
    rows = -np.where(kept, p * np.log(q), 0).sum(1)
    p_rest, q_rest = np.where(kept, 0, p).sum(1), np.where(kept, 0, q).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows -= np.where(p_rest > 0, p_rest * np.log(q_rest), 0)
    np.testing.assert_allclose(value, rows.mean(), rtol=1e-5)
    if k == 10:
        def full(s_):
            return soft_ce(s_ / temp, jax.nn.softmax(t / temp))

        def top(s_):
            return topk_soft_ce(s_, vals, idx, rest, temp)

        np.testing.assert_allclose(value, float(full(s)), rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jax.grad(top)(s)), np.asarray(jax.grad(full)(s)), rtol=0, atol=1e-6)
