"""SLA (self-supervised label augmentation): the joint-label loss, aggregation and
self-distillation against NumPy (values and gradients, in and out of jit), the task's loss
against an independent re-derivation, config errors, and an end-to-end run that learns."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, apply_overrides
from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.errors import ConfigError
from jaxsup.experiment import build_task
from jaxsup.losses import label_aug
from jaxsup.train import train_and_evaluate

CONFIG = os.path.join(ROOT, "configs/sla_digits.py")
JIT = [lambda f: f, jax.jit]


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_sla_loss(z, y):
    """mean over (m, b) of -log softmax(z[m, b])[y_b * M + m], float64 loops."""
    m_views, batch = z.shape[:2]
    logp = np_log_softmax(z)
    return -np.mean([logp[m, b, y[b] * m_views + m] for m in range(m_views) for b in range(batch)])


def np_aggregated(z):
    m_views, batch, km = z.shape
    k = km // m_views
    return np.array([[np.mean([z[m, b, c * m_views + m] for m in range(m_views)]) for c in range(k)]
                     for b in range(batch)])


@pytest.mark.parametrize("wrap", JIT)
@pytest.mark.parametrize("m_views", [1, 2, 4])
def test_sla_loss_value_and_gradient(wrap, m_views):
    rng = np.random.default_rng(m_views)
    k, batch = 5, 7
    z = rng.normal(size=(m_views, batch, k * m_views)).astype(np.float32) * 2
    y = rng.integers(0, k, batch).astype(np.int32)
    loss, grad = wrap(jax.value_and_grad(label_aug.sla_loss))(jnp.asarray(z), jnp.asarray(y))
    np.testing.assert_allclose(loss, np_sla_loss(z, y), rtol=1e-5)
    target = np.zeros_like(z, np.float64)
    for m in range(m_views):
        target[m, np.arange(batch), y * m_views + m] = 1.0
    expected = (np.exp(np_log_softmax(z)) - target) / (m_views * batch)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("wrap", JIT)
def test_aggregated_and_single_logits(wrap):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3, 6 * 4)).astype(np.float32)
    np.testing.assert_allclose(wrap(label_aug.aggregated_logits)(z), np_aggregated(z), rtol=1e-6)
    single = np.array([[z[0, b, c * 4] for c in range(6)] for b in range(3)])
    np.testing.assert_allclose(wrap(label_aug.single_logits)(z), single)


def test_rotate_all_matches_numpy():
    x = np.random.default_rng(1).normal(size=(2, 5, 5, 3)).astype(np.float32)
    out = np.asarray(label_aug.rotate_all(jnp.asarray(x), 4))
    for m in range(4):
        np.testing.assert_array_equal(out[m], np.rot90(x, m, axes=(1, 2)))
    np.testing.assert_array_equal(np.asarray(label_aug.rotate_all(jnp.asarray(x), 2))[1], np.rot90(x, 2, axes=(1, 2)))


@pytest.mark.parametrize("wrap", JIT)
def test_self_distill_loss_value_and_gradient(wrap):
    rng = np.random.default_rng(3)
    s, t = (rng.normal(size=(6, 4)).astype(np.float32) for _ in range(2))
    loss, (gs, gt) = wrap(jax.value_and_grad(label_aug.self_distill_loss, argnums=(0, 1)))(s, t)
    p_t = np.exp(np_log_softmax(t))
    np.testing.assert_allclose(loss, np.mean(np.sum(p_t * (np_log_softmax(t) - np_log_softmax(s)), -1)), rtol=1e-5)
    np.testing.assert_allclose(gs, (np.exp(np_log_softmax(s)) - p_t) / 6, atol=1e-6)
    np.testing.assert_array_equal(gt, 0.0)  # the aggregated teacher gets no gradient


def small_config(arg="runlocal", **overrides):
    c = load_config(f"{CONFIG}:{arg}")
    c.model_name, c.model = "mlp", dict(widths=(16,), num_classes=10)
    c.mesh = (("data", 1),)
    return apply_overrides(c, overrides)


def make_task_batch(config, n=6):
    task = build_task(config, sharding.make_mesh(config.mesh))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(n, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32), "index": jnp.arange(n, dtype=jnp.int32)}
    params, state = task.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    return task, batch, params, state


def reference_task_loss(task, params, batch, cfg):
    """Re-derived: rotate with NumPy, flax apply per view, NumPy joint CE + KL + CE of the plain head."""
    x, y = np.asarray(batch["image"]), np.asarray(batch["label"])
    heads = lambda name, f: np.asarray(f @ params[name]["kernel"] + params[name]["bias"], np.float64)  # noqa: E731
    feats = [np.asarray(task.backbone.apply({"params": params["backbone"]}, np.rot90(x, m, axes=(1, 2)))[0])
             for m in range(4)]
    z = np.stack([heads("head", f) for f in feats])
    loss = np_sla_loss(z, y)
    p_agg = np.exp(np_log_softmax(np_aggregated(z)))
    v = np_log_softmax(heads("sd_head", feats[0]))
    kl = np.mean(np.sum(p_agg * (np.log(p_agg) - v), -1))
    ce = -np.mean(v[np.arange(len(y)), y])
    return loss + cfg.sd_weight * (kl + cfg.sd_ce_weight * ce)


def test_task_loss_matches_rederivation():
    config = small_config(**{"sla.sd_ce_weight": 0.5})
    task, batch, params, state = make_task_batch(config)
    loss_fn = lambda p: task.loss_fn(p, state, {}, batch, jax.random.key(0), 0)[0]  # noqa: E731
    np.testing.assert_allclose(jax.jit(loss_fn)(params), reference_task_loss(task, params, batch, config.sla), rtol=1e-5)
    out = task.predict(params, state, {}, batch)
    assert out["logits"].shape == out["sd_logits"].shape == out["single_logits"].shape == (6, 10)


def test_augment_baseline_is_ce_over_rotations():
    config = small_config("runlocal,augment")
    task, batch, params, state = make_task_batch(config)
    loss = task.loss_fn(params, state, {}, batch, jax.random.key(0), 0)[0]
    x, y = np.asarray(batch["image"]), np.asarray(batch["label"])
    logits = [np.asarray(task.backbone.apply({"params": params["backbone"]}, np.rot90(x, m, axes=(1, 2)))[0])
              @ params["head"]["kernel"] + params["head"]["bias"] for m in range(4)]
    expected = -np.mean([np_log_softmax(z)[np.arange(6), y] for z in logits])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert params["head"]["kernel"].shape[-1] == 10 and "sd_head" not in params


@pytest.mark.parametrize("field,value", [("sla.mode", "joint"), ("sla.num_rotations", 3), ("sla.sd_weight", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split(".")[1]):
        build_task(small_config(**{field: value}), sharding.make_mesh((("data", 1),)))


def test_sla_learns_digits(tmp_path):
    """80 steps of the MLP: the aggregated, single-view and self-distilled heads all classify."""
    config = small_config("runlocal", total_steps=80, batch_size=64, **{"optim.lr": 3e-3, "optim.warmup_steps": 10})
    config.model = dict(widths=(64,), num_classes=10)
    for ev in config.evals.values():
        ev.every = 0
    metrics = train_and_evaluate(config, str(tmp_path))
    assert metrics["test/top1"] > 0.8, metrics
    assert metrics["test_sd/top1"] > 0.7 and metrics["test_single/top1"] > 0.7, metrics
