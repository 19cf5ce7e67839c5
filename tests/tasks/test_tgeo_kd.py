"""Trilateral-geometry KD: the geometry features, the fused KD/CE rows and the one-step bilevel
gradients against NumPy (float64; the ratio-network gradient by finite differences of an
independent NumPy unrolled step), in and out of jit; the meta-gradient's sign with a wrong
teacher; config errors; an end-to-end run that learns."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, apply_overrides, tiny_supervised_config
from jaxsup.config import load_config
from jaxsup.errors import ConfigError
from jaxsup.losses import trilateral
from jaxsup.train import train_and_evaluate

JIT = [lambda f: f, jax.jit]
T = 3.0


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_features(s, t, y, means):
    g = np.eye(s.shape[1])[y]
    edges = [s - t, t - g, s - g, t - means[y], s - means[y]]
    return np.concatenate(edges + [np.linalg.norm(e, axis=1, keepdims=True) for e in edges], axis=1)


def np_fused_rows(zs, zt, y, alpha, temp):
    p, q = np_softmax(zt / temp), np_softmax(zs / temp)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    ce = -np.log(np_softmax(zs)[np.arange(len(y)), y])
    return alpha * temp**2 * kl + (1 - alpha) * ce


def problem(seed=0, b=12, d=6, k=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, d))
    w = rng.normal(size=(d, k)) * 0.5
    y = rng.integers(0, k, b)
    zt = rng.normal(size=(b, k)) * 2
    means = np_softmax(rng.normal(size=(k, k)))
    feat_dim = trilateral.NUM_EDGES * (k + 1)
    phi = {"a": rng.normal(size=feat_dim) * 0.3, "b": np.array(0.2)}
    val = (np.arange(b) % 3 == 0).astype(np.float64)
    return x, w, y, zt, means, phi, val


def np_ratio(phi, feats):
    return 1 / (1 + np.exp(-(feats @ phi["a"] + phi["b"])))


def np_train_grad(x, w, y, zt, means, phi, train, temp):
    """(train loss, its gradient wrt w) of the linear student, alpha held at its value (stop-gradient)."""
    zs = x @ w
    alpha = np_ratio(phi, np_features(np_softmax(zs), np_softmax(zt), y, means))
    rows = np_fused_rows(zs, zt, y, alpha, temp)
    dz = alpha[:, None] * temp * (np_softmax(zs / temp) - np_softmax(zt / temp)) \
        + (1 - alpha)[:, None] * (np_softmax(zs) - np.eye(w.shape[1])[y])
    return (rows * train).sum() / train.sum(), x.T @ (dz * train[:, None]) / train.sum()


def np_val_after_step(x, w, y, zt, means, phi, train, val, temp, lr):
    _, grad = np_train_grad(x, w, y, zt, means, phi, train, temp)
    ce = -np.log(np_softmax(x @ (w - lr * grad))[np.arange(len(y)), y])
    return (ce * val).sum() / val.sum()


def jax_bilevel(x, w, y, zt, means, phi, train, val, temp, lr):
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    def total(w_, phi_):
        return trilateral.bilevel_losses(
            lambda p, images: images @ p, lambda p, feats: jax.nn.sigmoid(feats @ p["a"] + p["b"]),
            w_, phi_, f32(x), jnp.asarray(y), f32(zt), f32(means), f32(train), f32(val), temp, lr)

    return total, jax.tree.map(f32, phi), f32(w)


@pytest.mark.parametrize("wrap", JIT)
def test_features_and_fused_rows_match_numpy(wrap):
    x, w, y, zt, means, _, _ = problem()
    zs = x @ w
    s, t = np_softmax(zs), np_softmax(zt)
    got = wrap(trilateral.trilateral_features)(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                               jnp.asarray(y), jnp.asarray(means, jnp.float32))
    np.testing.assert_allclose(got, np_features(s, t, y, means), atol=1e-6)
    alpha = np.linspace(0.1, 0.9, len(y))
    rows_fn = wrap(lambda a, b, c, d: trilateral.fused_kd_rows(a, b, c, d, T))
    rows = rows_fn(jnp.asarray(zs, jnp.float32), jnp.asarray(zt, jnp.float32), jnp.asarray(y),
                   jnp.asarray(alpha, jnp.float32))
    np.testing.assert_allclose(rows, np_fused_rows(zs, zt, y, alpha, T), rtol=1e-5)


@pytest.mark.parametrize("wrap", JIT)
def test_bilevel_value_and_gradients_match_numpy(wrap):
    x, w, y, zt, means, phi, val = problem(1)
    train, lr = 1 - val, 0.5
    total, phi32, w32 = jax_bilevel(x, w, y, zt, means, phi, train, val, T, lr)
    (loss, out), (g_w, g_phi) = wrap(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(w32, phi32)
    train_loss, grad_w = np_train_grad(x, w, y, zt, means, phi, train, T)
    val_loss = np_val_after_step(x, w, y, zt, means, phi, train, val, T, lr)
    np.testing.assert_allclose(loss, train_loss + val_loss, rtol=1e-5)
    np.testing.assert_allclose(out["val_loss"], val_loss, rtol=1e-5)
    np.testing.assert_allclose(g_w, grad_w, atol=1e-5)  # the student sees only the train loss
    eps = 1e-6
    for name in ("a", "b"):
        flat = np.atleast_1d(phi[name]).astype(np.float64)
        numeric = np.zeros_like(flat)
        for i in range(flat.size):
            up, down = flat.copy(), flat.copy()
            up[i] += eps
            down[i] -= eps
            f = lambda v: np_val_after_step(x, w, y, zt, means, {**phi, name: v.reshape(np.shape(phi[name]))},  # noqa: E731
                                            train, val, T, lr)
            numeric[i] = (f(up) - f(down)) / (2 * eps)
        np.testing.assert_allclose(np.atleast_1d(g_phi[name]), numeric, rtol=2e-3, atol=2e-5)


def test_wrong_teacher_meta_gradient_lowers_alpha():
    """A teacher that always names the next class: descending the val loss lowers every alpha."""
    x, w, y, _, means, phi, val = problem(2, b=30)
    zt = 6.0 * np.eye(w.shape[1])[(y + 1) % w.shape[1]]
    total, phi32, w32 = jax_bilevel(x, w, y, zt, means, phi, 1 - val, val, T, 0.5)
    g_phi = jax.grad(lambda p: total(w32, p)[0])(phi32)
    assert float(g_phi["b"]) > 0  # d val / d bias > 0: the step moves alpha towards the labels


def test_fused_rows_bf16_logits_within_bf16_tolerance():
    x, w, y, zt, _, _, _ = problem(3)
    zs, alpha = x @ w, np.full(len(y), 0.4)
    got = trilateral.fused_kd_rows(jnp.asarray(zs, jnp.bfloat16), jnp.asarray(zt, jnp.bfloat16), jnp.asarray(y),
                                   jnp.asarray(alpha, jnp.float32), T)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_fused_rows(zs, zt, y, alpha, T), rtol=2e-2, atol=2e-2)


def test_swap_classes_exchanges_columns():
    from jaxsup.tasks.tgeo_kd.task import swap_classes

    logits = np.arange(12.0).reshape(2, 6)
    got = np.asarray(jax.jit(lambda z: swap_classes(z, ((1, 4), (0, 5))))(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, logits[:, [5, 4, 2, 3, 1, 0]])


# ------------------------------------------------------------------ task
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(tiny_supervised_config(total_steps=30, **{"checkpoint.every": 30}), workdir)
    return workdir


def tgeo_config(teacher_path, arg="runlocal", **overrides):
    c = load_config(os.path.join(ROOT, f"configs/tgeo_kd_digits.py:{arg}"))
    c.tgeo.teacher.path = teacher_path
    c.mesh = (("data", 1),)
    c.checkpoint.async_save = False
    return apply_overrides(c, overrides)


@pytest.mark.parametrize("field, value, match", [
    ("tgeo.mode", "both", "tgeo.mode"), ("tgeo.alpha", 1.0, "tgeo.alpha"),
    ("tgeo.val_examples", 10_000, "leaves no training examples"), ("tgeo.teacher_swap", ((3, 10),), "teacher_swap"),
])
def test_config_errors_name_the_field(teacher, tmp_path, field, value, match):
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(tgeo_config(teacher, **{field: value}), str(tmp_path))


def test_learned_ratio_trains_and_learns(teacher, tmp_path):
    from helpers import train_losses

    c = tgeo_config(teacher, total_steps=60, log_every=5, **{"checkpoint.every": 60})
    c.evals.test.every = 60
    metrics = train_and_evaluate(c, str(tmp_path))
    losses = train_losses(str(tmp_path))
    steps = sorted(losses)
    assert np.mean([losses[s] for s in steps[-3:]]) < 0.7 * np.mean([losses[s] for s in steps[:3]])
    assert metrics["test/top1"] > 0.6, metrics
