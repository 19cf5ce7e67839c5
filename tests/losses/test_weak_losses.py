"""Weak-to-strong losses vs NumPy: the binary rule of openai/weak-to-strong
`logconf_loss_fn`, the documented K-class rule, values, gradients, warm-up, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.losses import weak


# ------------------------------------------------------------ NumPy references
def np_softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_logconf_binary_hard(probs, weak_probs):
    """openai/weak-to-strong logconf_loss_fn hardening (binary only), re-implemented in NumPy."""
    assert probs.shape[1] == 2
    threshold = np.quantile(probs[:, 0], weak_probs.mean(0)[1])
    return np.stack([probs[:, 0] >= threshold, probs[:, 0] < threshold], axis=1).astype(np.float64)


def np_multiclass_hard(probs, weak_probs):
    """The K-class rule as documented: per-class quantile thresholds, argmax of the margins."""
    levels = np.clip(1.0 - weak_probs.mean(0), 0.0, 1.0)
    thresholds = np.array([np.quantile(probs[:, k], levels[k]) for k in range(probs.shape[1])])
    classes = np.argmax(probs - thresholds[None], axis=-1)
    return np.eye(probs.shape[1])[classes]


def np_soft_ce(logits, targets):
    z = np.asarray(logits, np.float64)
    log_probs = z - z.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    return float(-(targets * log_probs).sum(-1).mean())


def random_case(seed, batch, classes, hard_weak=False, scale=2.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    if hard_weak:
        weak_probs = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    else:
        weak_probs = np_softmax(2.0 * rng.standard_normal((batch, classes))).astype(np.float32)
    return logits, weak_probs


# ------------------------------------------------------------ binary equivalence
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [7, 32, 129])
@pytest.mark.parametrize("hard_weak", [False, True])
def test_binary_hardening_equals_logconf_reference(seed, batch, hard_weak):
    logits, weak_probs = random_case(seed, batch, 2, hard_weak)
    got = np.asarray(weak.hardened_predictions(jax.nn.softmax(logits), weak_probs))
    want = np_logconf_binary_hard(np_softmax(logits), weak_probs.astype(np.float64))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("batch,weak_mean_1", [(9, 0.5), (5, 0.25), (17, 0.75), (9, 0.0), (9, 1.0)])
def test_binary_hardening_tie_at_threshold_goes_to_class_0(batch, weak_mean_1):
    """When weak_mean_1 * (B - 1) is a whole number the threshold is one example's p_0 exactly."""
    logits, _ = random_case(3, batch, 2)
    weak_probs = np.tile(np.array([[1 - weak_mean_1, weak_mean_1]], np.float32), (batch, 1))
    probs = np_softmax(logits)
    want = np_logconf_binary_hard(probs, weak_probs.astype(np.float64))
    got = np.asarray(weak.hardened_predictions(jax.nn.softmax(logits), weak_probs))
    np.testing.assert_array_equal(got, want)
    assert np.any(probs[:, 0] == np.quantile(probs[:, 0], weak_mean_1))  # the tie is really exercised


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_binary_loss_value_equals_logconf_reference(seed, alpha):
    logits, weak_probs = random_case(seed, 24, 2)
    hard = np_logconf_binary_hard(np_softmax(logits), weak_probs.astype(np.float64))
    want = np_soft_ce(logits, (1 - alpha) * weak_probs + alpha * hard)
    got = float(weak.aux_confidence_loss(logits, weak_probs, alpha))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def tie_cases():
    """(logits, weak) where the logconf threshold falls exactly on a sample: all weak labels in one
    class (threshold = the batch min or max of p_0), small B, and rows duplicated (equal p_0)."""
    cases = []
    for seed in range(8):
        for batch in (1, 2, 3, 4, 5, 8, 13):
            logits, _ = random_case(seed, batch, 2, scale=3.0)
            if seed % 2:  # duplicated rows: ties between samples, not only with the threshold
                logits = np.concatenate([logits, logits[:1]])
            for cls in (0, 1):
                cases.append((logits, np.eye(2, dtype=np.float32)[np.full(len(logits), cls)]))
    return cases


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_binary_hardening_under_jit_at_ties_equals_logconf_rule(alpha):
    """Inside one jit (softmax -> hardening -> loss -> gradient) the hard labels, loss and gradient
    equal the NumPy transcription of logconf_loss_fn on every tie case (112 of them)."""

    @jax.jit
    def jitted(logits, weak_probs):
        hard = weak.hardened_predictions(jax.nn.softmax(logits * 1.0), weak_probs)
        value, grad = jax.value_and_grad(weak.aux_confidence_loss)(logits, weak_probs, alpha)
        return hard, value, grad

    bad = []
    for i, (logits, weak_probs) in enumerate(tie_cases()):
        hard, value, grad = jitted(logits, weak_probs)
        probs = np_softmax(logits)
        want = np_logconf_binary_hard(probs, weak_probs.astype(np.float64))
        targets = (1 - alpha) * weak_probs + alpha * want
        if not (np.array_equal(np.asarray(hard), want)
                and np.isclose(float(value), np_soft_ce(logits, targets), rtol=1e-5, atol=1e-6)
                and np.allclose(np.asarray(grad), (probs - targets) / len(logits), rtol=1e-5, atol=1e-7)):
            bad.append(i)
    assert not bad, f"{len(bad)} tie cases differ from the logconf rule under jit: {bad}"


def test_lerp_quantile_equals_numpy_and_is_exact_between_equal_neighbours():
    rng = np.random.default_rng(5)
    values = rng.uniform(size=11).astype(np.float32)
    values[3:6] = values[4]  # equal neighbours
    for level in (0.0, 0.1, 0.3, 0.35, 0.5, 0.77, 1.0):
        got = float(jax.jit(weak.lerp_quantile)(values, jnp.float32(level)))
        assert got == np.quantile(values, np.float32(level)), level
    assert float(weak.lerp_quantile(values, jnp.float32(0.35))) == values[4]


# ------------------------------------------------------------ K classes
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("classes", [3, 5, 10])
def test_multiclass_hardening_matches_numpy_rule(seed, classes):
    logits, weak_probs = random_case(seed, 40, classes)
    got = np.asarray(weak.hardened_predictions(jax.nn.softmax(logits), weak_probs))
    np.testing.assert_array_equal(got, np_multiclass_hard(np_softmax(logits), weak_probs.astype(np.float64)))


def test_confident_predictions_with_the_weak_balance_stay_their_argmax():
    """If the student is confident and already has the weak labels' balance, hard(f) = top-1."""
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(4), [9, 6, 3, 2])
    rng.shuffle(classes)
    probs = np.full((20, 4), 0.03) + rng.uniform(0, 0.01, (20, 4))
    probs[np.arange(20), classes] = 0.9
    probs = probs / probs.sum(1, keepdims=True)
    weak_probs = np.eye(4)[rng.permutation(classes)]  # same balance, other examples
    got = np.asarray(weak.hardened_predictions(jnp.asarray(probs, jnp.float32), jnp.asarray(weak_probs, jnp.float32)))
    np.testing.assert_array_equal(got.argmax(-1), classes)


def test_hardening_follows_the_weak_balance_not_the_student_argmax():
    """A student predicting class 0 everywhere is hardened to the weak labels' 50/50 split."""
    p0 = np.linspace(0.6, 0.95, 10)
    probs = np.stack([p0, 1 - p0], 1).astype(np.float32)
    weak_probs = np.tile(np.array([[0.5, 0.5]], np.float32), (10, 1))
    got = np.asarray(weak.hardened_predictions(probs, weak_probs))
    np.testing.assert_array_equal(got[:, 1], (p0 < np.quantile(p0, 0.5)).astype(np.float32))
    assert got[:, 1].sum() == 5


@pytest.mark.parametrize("classes", [2, 6])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_loss_value_and_gradient_vs_numpy(classes, alpha):
    logits, weak_probs = random_case(7, 16, classes)
    weights = np.random.default_rng(1).uniform(0.1, 1.0, 16).astype(np.float32)
    hard = np_multiclass_hard(np_softmax(logits), weak_probs.astype(np.float64))
    targets = (1 - alpha) * weak_probs + alpha * hard
    value, grad = jax.value_and_grad(lambda z: weak.aux_confidence_loss(z, weak_probs, alpha, weights=weights))(
        jnp.asarray(logits)
    )
    rows = -(targets * np.log(np_softmax(logits))).sum(-1)
    np.testing.assert_allclose(float(value), (weights * rows).sum() / weights.sum(), rtol=1e-5)
    # hard(f) is a constant: d/dz = w_i (softmax(z_i) - target_i) / sum(w).
    want_grad = weights[:, None] * (np_softmax(logits) - targets) / weights.sum()
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-7)


def test_alpha_zero_is_soft_label_ce_and_matches_numpy():
    logits, weak_probs = random_case(11, 33, 10)
    want = np_soft_ce(logits, weak_probs.astype(np.float64))
    np.testing.assert_allclose(float(weak.soft_label_ce(logits, weak_probs)), want, rtol=1e-5)
    np.testing.assert_allclose(float(weak.aux_confidence_loss(logits, weak_probs, 0.0)), want, rtol=1e-5)
    grad = jax.grad(weak.soft_label_ce)(jnp.asarray(logits), weak_probs)
    np.testing.assert_allclose(np.asarray(grad), (np_softmax(logits) - weak_probs) / 33, rtol=1e-5, atol=1e-7)


def test_jit_with_traced_alpha_matches_eager():
    logits, weak_probs = random_case(2, 20, 4)
    eager = weak.aux_confidence_loss(logits, weak_probs, 0.25)
    jitted = jax.jit(weak.aux_confidence_loss)(logits, weak_probs, jnp.float32(0.25))
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


# ------------------------------------------------------------ warm-up
@pytest.mark.parametrize("warmup_frac", [0.0, 0.1, 0.5, 1.0])
def test_alpha_warmup_is_linear_and_smooth(warmup_frac):
    total, coef = 200, 0.75
    steps = np.arange(total + 1)
    got = np.array([float(weak.aux_alpha(s, total, coef, warmup_frac)) for s in steps])
    want = np.full(total + 1, coef) if warmup_frac == 0 else coef * np.minimum(1.0, steps / total / warmup_frac)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(np.diff(got))) <= (coef / max(warmup_frac * total, 1)) * (1 + 1e-5)  # no jump
    jitted = jax.jit(lambda s: weak.aux_alpha(s, total, coef, warmup_frac))(jnp.int32(37))
    np.testing.assert_allclose(float(jitted), want[37], rtol=1e-6)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_raises(alpha):
    logits, weak_probs = random_case(0, 8, 3)
    with pytest.raises(ValueError, match="alpha must lie in"):
        weak.aux_confidence_loss(logits, weak_probs, alpha)


@pytest.mark.parametrize("field,args", [
    ("aux_coef", (10, 100, 1.2, 0.1)), ("aux_coef", (10, 100, -0.5, 0.1)), ("warmup_frac", (10, 100, 0.5, 2.0)),
])
def test_aux_alpha_bad_fields_raise(field, args):
    with pytest.raises(ValueError, match=field):
        weak.aux_alpha(*args)


def test_aux_alpha_bad_total_steps_raises():
    with pytest.raises(ValueError, match="total_steps"):
        weak.aux_alpha(1, 0, 0.5, 0.1)


@pytest.mark.parametrize("weak_shape", [(8, 4), (7, 3), (8,)])
def test_weak_labels_with_wrong_shape_or_class_count_raise(weak_shape):
    logits = np.zeros((8, 3), np.float32)
    with pytest.raises(ValueError, match="weak labels"):
        weak.aux_confidence_loss(logits, np.zeros(weak_shape, np.float32), 0.5)
    with pytest.raises(ValueError, match="weak labels"):
        weak.soft_label_ce(logits, np.zeros(weak_shape, np.float32))


def test_single_class_raises():
    with pytest.raises(ValueError, match="K >= 2"):
        weak.hardened_predictions(np.ones((4, 1), np.float32), np.ones((4, 1), np.float32))
