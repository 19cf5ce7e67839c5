"""Logit- and feature-level distillation losses against independent NumPy (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.losses import distill

RTOL = 1e-5  # f32 against float64 NumPy


# ----------------------------------------------------------------------------
# Independent NumPy definitions (float64).
# ----------------------------------------------------------------------------
def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_kl(a_log, b_log):
    """KL(a || b) per row from log-probabilities."""
    return (np.exp(a_log) * (a_log - b_log)).sum(-1)


def np_divergence_rows(s, t, temp, kind, beta=0.5):
    lq = np_log_softmax(np.float64(s) / temp)
    lp = np_log_softmax(np.float64(t) / temp)
    if kind == "kl":
        rows = np_kl(lp, lq)
    elif kind == "rkl":
        rows = np_kl(lq, lp)
    else:
        lm = np.log(beta * np.exp(lp) + (1 - beta) * np.exp(lq))
        rows = (beta * np_kl(lp, lm) + (1 - beta) * np_kl(lq, lm)) / (beta * (1 - beta))
    return temp**2 * rows


def np_kd(s, t, temp, kind, beta=0.5, weights=None):
    rows = np_divergence_rows(s, t, temp, kind, beta)
    if weights is None:
        return rows.mean()
    return (weights * rows).sum() / weights.sum()


def np_numeric_grad(fn, x, eps=1e-6):
    """Central differences of a float64 scalar function."""
    x = np.float64(x)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


@pytest.fixture(name="logits")
def fixture_logits():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 9)).astype(np.float32) * 2
    t = rng.normal(size=(6, 9)).astype(np.float32) * 3
    w = rng.uniform(0.1, 2.0, size=(6,)).astype(np.float32)
    return s, t, w


# ----------------------------------------------------------------------------
# KD values and gradients.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
@pytest.mark.parametrize("temp", [1.0, 2.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_kd_loss_matches_numpy(logits, kind, temp, weighted):
    s, t, w = logits
    weights = w if weighted else None
    got = distill.kd_loss(jnp.asarray(s), jnp.asarray(t), temp, kind, 0.3, weights=weights)
    want = np_kd(s, t, temp, kind, 0.3, weights)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_kd_gradient_matches_numeric(logits, kind):
    s, t, w = logits
    temp = 2.0
    grad_s, grad_t = jax.grad(
        lambda a, b: distill.kd_loss(a, b, temp, kind, 0.3, weights=w), (0, 1)
    )(jnp.asarray(s), jnp.asarray(t))
    want = np_numeric_grad(lambda x: np_kd(x, t, temp, kind, 0.3, w), s)
    np.testing.assert_allclose(grad_s, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(grad_t, 0.0)  # the teacher is a constant


def test_named_wrappers_agree_with_kd_loss(logits):
    s, t, w = logits
    s, t = jnp.asarray(s), jnp.asarray(t)
    np.testing.assert_allclose(distill.kd_kl(s, t, 2.0), np_kd(s, t, 2.0, "kl"), rtol=RTOL)
    np.testing.assert_allclose(
        distill.kd_reverse_kl(s, t, 2.0, weights=w), np_kd(s, t, 2.0, "rkl", weights=w), rtol=RTOL
    )
    np.testing.assert_allclose(
        distill.kd_jsd(s, t, 2.0, 0.7), np_kd(s, t, 2.0, "jsd", 0.7), rtol=RTOL
    )


def test_kl_of_identical_distributions_is_zero(logits):
    s, _, _ = logits
    np.testing.assert_allclose(distill.kd_kl(s, s + 3.0, 2.0), 0.0, atol=1e-6)


@pytest.mark.parametrize("beta, limit", [(0.0, "kl"), (1.0, "rkl")])
@pytest.mark.parametrize("jit", [False, True])
def test_jsd_endpoints_equal_numpy_jsd_formula(logits, beta, limit, jit):
    """kd_jsd at beta = 0 / 1 against NumPy, not against kd_kl (beta = 0 is routed to the
    same code): the float64 JSD formula 1e-7 from the endpoint (it is 0/0 at it) and the
    KL it tends to; gradients against central differences of that NumPy KL (differences of
    the 0/0-near formula itself are too noisy)."""
    s, t, _ = logits
    near = 1e-7 if beta == 0.0 else 1.0 - 1e-7
    fn = jax.value_and_grad(lambda x: distill.kd_jsd(x, t, 2.0, beta))
    value, grad = (jax.jit(fn) if jit else fn)(s)
    np.testing.assert_allclose(value, np_kd(s, t, 2.0, "jsd", near), rtol=1e-5)
    np.testing.assert_allclose(value, np_kd(s, t, 2.0, limit), rtol=1e-5)
    want = np_numeric_grad(lambda x: np_kd(x, t, 2.0, limit), s)
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta, limit", [(1e-6, "kl"), (1 - 1e-6, "rkl")])
def test_jsd_definition_tends_to_kls_numpy(logits, beta, limit):
    # The definition itself (float64 NumPy) is continuous at both ends.
    s, t, _ = logits
    np.testing.assert_allclose(
        np_kd(s, t, 2.0, "jsd", beta), np_kd(s, t, 2.0, limit), rtol=1e-4
    )


@pytest.mark.parametrize("beta, limit", [(1e-3, "kl"), (1 - 1e-3, "rkl")])
def test_jsd_near_endpoints_close_to_kls(logits, beta, limit):
    # In f32, near (not at) the endpoints: O(beta) from the limit plus rounding.
    s, t, _ = logits
    got = distill.kd_jsd(s, t, 2.0, beta)
    np.testing.assert_allclose(got, np_kd(s, t, 2.0, limit), rtol=2e-2)
    np.testing.assert_allclose(got, np_kd(s, t, 2.0, "jsd", beta), rtol=1e-3)


def test_soft_ce_matches_numpy(logits):
    s, t, w = logits
    probs = np.exp(np_log_softmax(np.float64(t)))
    want = -(probs * np_log_softmax(np.float64(s))).sum(-1)
    np.testing.assert_allclose(distill.soft_ce(s, probs.astype(np.float32)), want.mean(), rtol=RTOL)
    np.testing.assert_allclose(
        distill.soft_ce(s, probs.astype(np.float32), weights=w),
        (w * want).sum() / w.sum(), rtol=RTOL,
    )


def np_class_means(features, labels, k):
    means = np.stack([features[labels == c].mean(0) for c in range(k)])
    return means / np.linalg.norm(means, axis=-1, keepdims=True)


def np_nd(f_s, f_t, means, labels, lam):
    unit = means / np.linalg.norm(means, axis=-1, keepdims=True)
    norm = np.maximum(np.linalg.norm(f_s, axis=-1), np.linalg.norm(f_t, axis=-1))
    return lam * (1 - (f_s * unit[labels]).sum(-1) / norm).mean()


def test_teacher_class_means_and_nd_loss_match_numpy():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(20, 5)).astype(np.float32)
    feat_labels = np.arange(20) % 4
    means = distill.teacher_class_means(jnp.asarray(feats), jnp.asarray(feat_labels), 4)
    np.testing.assert_allclose(means, np_class_means(np.float64(feats), feat_labels, 4), rtol=RTOL)
    np.testing.assert_allclose(jnp.linalg.norm(means, axis=-1), 1.0, rtol=RTOL)

    f_s = rng.normal(size=(7, 5)).astype(np.float32)
    f_t = rng.normal(size=(7, 5)).astype(np.float32) * 1.5
    labels = np.array([0, 1, 2, 3, 0, 1, 3])
    got = distill.nd_loss(f_s, f_t, means, labels, 0.8)
    np.testing.assert_allclose(got, np_nd(f_s, f_t, np.float64(means), labels, 0.8), rtol=RTOL)
    grads = jax.grad(distill.nd_loss, (0, 1, 2))(f_s, f_t, means, labels, 0.8)
    want = np_numeric_grad(lambda x: np_nd(x, f_t, np.float64(means), labels, 0.8), f_s)
    np.testing.assert_allclose(grads[0], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(grads[1], 0.0)
    np.testing.assert_array_equal(grads[2], 0.0)


def test_teacher_class_means_rejects_empty_class():
    feats = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"classes \[2\] have no examples"):
        distill.teacher_class_means(feats, jnp.array([0, 1, 0, 1]), 3)


def test_pskd_targets_match_numpy():
    rng = np.random.default_rng(2)
    prev = rng.dirichlet(np.ones(5), size=4).astype(np.float32)
    labels = np.array([4, 0, 2, 2])
    got = distill.pskd_targets(labels, prev, 0.8, 3, 10)
    alpha = 0.8 * 3 / 10
    want = (1 - alpha) * np.eye(5)[labels] + alpha * np.float64(prev)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(distill.pskd_targets(labels, prev, 0.8, 0, 10), np.eye(5)[labels])
    traced = jax.jit(distill.pskd_targets)(labels, prev, 0.8, 3, 10)  # step may be traced
    np.testing.assert_allclose(traced, want, rtol=RTOL)


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------
def test_bad_inputs_raise_value_error(logits):
    s, t, _ = logits
    with pytest.raises(ValueError, match="Temperature"):
        distill.kd_kl(s, t, 0.0)
    with pytest.raises(ValueError, match="Temperature"):
        distill.kd_kl(s, t, -1.0)
    with pytest.raises(ValueError, match=r"\(6, 9\).*\(6, 8\)"):
        distill.kd_kl(s, t[:, :8], 1.0)
    with pytest.raises(ValueError, match="beta"):
        distill.kd_jsd(s, t, 1.0, 1.5)
    with pytest.raises(ValueError, match="kind"):
        distill.kd_loss(s, t, 1.0, "tvd")
    with pytest.raises(ValueError, match="weights"):
        distill.kd_kl(s, t, 1.0, weights=np.ones(5))
    with pytest.raises(ValueError, match="labels"):
        distill.nd_loss(s, s, np.ones((9, 9)), np.zeros(5, int), 1.0)
    with pytest.raises(ValueError, match="target_probs"):
        distill.soft_ce(s, t[:, :8])
    with pytest.raises(ValueError, match="class_means"):
        distill.nd_loss(s, s, np.ones((3, 4)), np.zeros(6, int), 1.0)
    with pytest.raises(ValueError, match="step"):
        distill.pskd_targets(np.zeros(6, int), np.ones((6, 9)) / 9, 0.5, 11, 10)
    with pytest.raises(ValueError, match="alpha_T"):
        distill.pskd_targets(np.zeros(6, int), np.ones((6, 9)) / 9, 1.5, 1, 10)
