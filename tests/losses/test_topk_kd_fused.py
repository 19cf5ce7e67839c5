"""Sparse top-k KD through the linear head (jaxsup/losses/topk_kd_fused.py): values and gradients w.r.t.
h and W against a NumPy float64 reference and `topk_kd_kl(h @ W)`, in and out of jit, f32 and bf16,
k = 1, 5, V with V not a multiple of the tile; the tiny-rest-mass case; memory of the gradient."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsup.data.host.reinforce_store import topk_targets
from jaxsup.losses.topk_kd import topk_kd_kl, topk_soft_ce
from jaxsup.losses.topk_kd_fused import (
    head_stats, label_ce_rows, topk_kd_fused_rows, topk_kd_kl_fused, topk_soft_ce_fused,
)

from test_topk_kd import lse, reference  # NumPy float64 loss and d loss / d logits

N, D, V, TILE, TEMP = 6, 5, 37, 8, 2.0  # 37 = 4 * 8 + 5: the last tile is shifted and partly masked


def operands(dtype=jnp.float32, seed=0, n=N, d=D, v=V):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(n, d)), dtype)
    w = jnp.asarray(rng.normal(size=(d, v)) / np.sqrt(d) * 3, dtype)
    teacher = jnp.asarray(rng.normal(size=(n, v)) * 3, jnp.float32)
    return h, w, teacher


def numpy_reference(h, w, teacher, k, temp):
    """(loss, dL/dh [N, D], dL/dW [D, V]) in float64, by the chain rule through z = h W."""
    h64, w64 = np.asarray(h, np.float64), np.asarray(w, np.float64)
    value, dz = reference(h64 @ w64, np.asarray(teacher, np.float64), k, temp)
    return value, dz @ w64.T, h64.T @ dz


def value_and_grads(loss, jit):
    fn = jax.value_and_grad(loss, argnums=(0, 1))
    return jax.jit(fn) if jit else fn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("k", [1, 5, V])
def test_values_and_grads_match_numpy_and_the_unfused_loss(dtype, jit, k):
    h, w, teacher = operands(dtype)
    vals, idx, rest = topk_targets(teacher, k, TEMP)
    fused = value_and_grads(lambda h_, w_: topk_kd_kl_fused(h_, w_, vals, idx, rest, TEMP, tile=TILE), jit)
    unfused = value_and_grads(lambda h_, w_: topk_kd_kl(h_ @ w_, vals, idx, rest, TEMP), jit)
    value, (dh, dw) = fused(h, w)
    assert dh.dtype == dtype and dw.dtype == dtype
    ref_value, ref_dh, ref_dw = numpy_reference(h, w, teacher, k, TEMP)
    # f32: 1e-5 relative. bf16: the fused logits are f32 products of the bf16 inputs (as the reference's),
    # so the value is as close; the logit gradient enters the GEMMs in bf16 (as in fused_linear_kd) and
    # dh, dW come back in bf16: 8 bits of mantissa, relative to the largest entry
    np.testing.assert_allclose(float(value), ref_value, rtol=1e-5)
    for got, ref in ((dh, ref_dh), (dw, ref_dw)):
        tol = dict(rtol=1e-4, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2**-6, atol=2**-7 * np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, **tol)
    want_value, (want_dh, want_dw) = unfused(h, w)
    # the unfused bf16 path rounds its logits to bf16 before the loss: looser there
    u_tol = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=3e-2, atol=2e-2)
    np.testing.assert_allclose(float(value), float(want_value), **u_tol)
    for got, want in ((dh, want_dh), (dw, want_dw)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   **(dict(rtol=1e-4, atol=1e-6) if dtype == jnp.float32 else u_tol))


@pytest.mark.parametrize("k", [3, V])
def test_soft_ce_and_weights_match_the_unfused_losses(k):
    h, w, teacher = operands(seed=1)
    vals, idx, rest = topk_targets(teacher, k, TEMP)
    weights = jnp.asarray([1.0, 0.0, 2.0, 0.5, 0.0, 1.0])
    pairs = [(topk_soft_ce_fused, topk_soft_ce, None), (topk_kd_kl_fused, topk_kd_kl, weights),
             (topk_soft_ce_fused, topk_soft_ce, weights)]
    for fused, unfused, wts in pairs:
        got = jax.jit(jax.value_and_grad(lambda h_, w_: fused(h_, w_, vals, idx, rest, TEMP, tile=TILE, weights=wts),
                                         argnums=(0, 1)))(h, w)
        want = jax.value_and_grad(lambda h_, w_: unfused(h_ @ w_, vals, idx, rest, TEMP, weights=wts),
                                  argnums=(0, 1))(h, w)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
                     got, want)


def test_tiny_rest_mass_is_exact():
    """The student puts all but ~1e-12 of its mass on the kept classes, the teacher leaves > 5 % outside:
    log q_rest from the masked logsumexp equals float64 to 1e-5, and so does the loss (`log(1 - sum q)`
    in f32 would give log 0 = -inf here)."""
    h, w, teacher = operands(seed=2)
    teacher, k = teacher / 3, 5  # a flat teacher: much mass outside its top 5
    vals, idx, rest = topk_targets(teacher, k, 1.0)
    kept = np.zeros((N, V), bool)
    kept[np.arange(N)[:, None], np.asarray(idx)] = True
    # a student head whose logits are +30 on the kept classes: q_rest ~ 32 e^-30 ~ 3e-12
    z = np.where(kept, 30.0, 0.0) + np.asarray(h @ w) * 0.1
    h_s = jnp.eye(N, N, dtype=jnp.float32)
    w_s = jnp.asarray(z, jnp.float32)
    stats = head_stats(h_s, w_s, idx, 1.0, tile=TILE)
    want = lse(np.where(kept, -np.inf, z)) - lse(z)
    assert np.all(want < -20)
    np.testing.assert_allclose(np.asarray(stats.lse_rest - stats.lse), want, rtol=1e-5)
    p_rest = np.exp(np.asarray(rest, np.float64) - np.logaddexp(lse(np.asarray(vals, np.float64)), rest))
    assert np.all(p_rest > 0.05)
    ref_value, _ = reference(z, np.asarray(teacher), k, 1.0)
    np.testing.assert_allclose(float(topk_kd_kl_fused(h_s, w_s, vals, idx, rest, 1.0, tile=TILE)), ref_value,
                               rtol=1e-5)


@pytest.mark.parametrize("tile", [1, 8, V, 4096])
def test_top1_kept_logits_and_label_ce_for_any_tile(tile):
    h, w, teacher = operands(seed=3)
    _, idx, _ = topk_targets(teacher, 5, TEMP)
    z = np.asarray(h @ w, np.float64)
    stats = jax.jit(lambda h_, w_: head_stats(h_, w_, idx, TEMP, tile=tile))(h, w)
    np.testing.assert_array_equal(np.asarray(stats.top1), z.argmax(1))
    np.testing.assert_allclose(np.asarray(stats.kept), np.take_along_axis(z, np.asarray(idx), 1) / TEMP, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats.lse), lse(z / TEMP), rtol=1e-5)
    labels = jnp.asarray([0, 36, 5, 7, 8, 31])
    want = optax.softmax_cross_entropy_with_integer_labels(h @ w, labels)
    got = label_ce_rows(h, w, labels, tile=tile)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    g_got = jax.grad(lambda w_: label_ce_rows(h, w_, labels, tile=tile).sum())(w)
    g_want = jax.grad(lambda w_: optax.softmax_cross_entropy_with_integer_labels(h @ w_, labels).sum())(w)
    np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_want), rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_value_errors():
    h, w, teacher = operands()
    vals, idx, rest = topk_targets(teacher, 4, TEMP)
    with pytest.raises(ValueError, match=r"\[B, k\]"):
        topk_kd_kl_fused(h, w, vals[:, :2], idx, rest, TEMP)
    with pytest.raises(ValueError, match="lse_rest"):
        topk_kd_kl_fused(h, w, vals, idx, rest[:2], TEMP)
    with pytest.raises(ValueError, match=r"\[D, V\]"):
        topk_kd_kl_fused(h, w.T, vals, idx, rest, TEMP)
    with pytest.raises(ValueError, match="kind"):
        topk_kd_fused_rows(h, w, vals, idx, rest, TEMP, kind="rkl")
    with pytest.raises(ValueError, match="static"):
        jax.jit(lambda t: topk_kd_kl_fused(h, w, vals, idx, rest, t))(2.0)


def temp_bytes(loss, *args) -> int:
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return grad.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_gradient_temp_memory_is_far_below_the_unfused_one():
    """N = 256, D = 64, V = 32768, k = 5: the unfused gradient keeps [N, V] f32 logits (32 MiB) and
    their gradient; the fused one O(N * tile + D * V) (tile 4096)."""
    n, d, v, k = 256, 64, 32768, 5
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    vals = jax.ShapeDtypeStruct((n, k), jnp.float32)
    idx = jax.ShapeDtypeStruct((n, k), jnp.int32)
    rest = jax.ShapeDtypeStruct((n,), jnp.float32)
    fused = temp_bytes(lambda h_, w_, *t: topk_kd_kl_fused(h_, w_, *t, TEMP, tile=4096), h, w, vals, idx, rest)
    unfused = temp_bytes(lambda h_, w_, *t: topk_kd_kl(h_ @ w_, *t, TEMP), h, w, vals, idx, rest)
    print(f"\ngradient temp bytes at N={n}, D={d}, V={v}, k={k}: fused {fused} ({fused / 2**20:.1f} MiB), "
          f"unfused {unfused} ({unfused / 2**20:.1f} MiB), ratio {unfused / fused:.1f}x")
    assert unfused >= n * v * 4  # at least the logits
    assert fused * 4 < unfused
