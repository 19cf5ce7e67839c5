"""Co-teaching and label noise: the noise matches its transition matrix and is a pure function
of (seed, index); the small-loss exchange, schedule and feature dropout against NumPy (values and
gradients, in and out of jit); the task's loss re-derived; an end-to-end run that selects clean rows."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, apply_overrides, read_metrics
from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.data.labels import noise
from jaxsup.errors import ConfigError
from jaxsup.experiment import build_task
from jaxsup.losses import noisy
from jaxsup.train import train_and_evaluate

CONFIG = os.path.join(ROOT, "configs/coteaching_digits.py")
JIT = [lambda f: f, jax.jit]


@pytest.mark.parametrize("kind", noise.KINDS)
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_noise_follows_its_transition_matrix(kind, rate):
    k, n = 10, 20000
    labels = np.arange(n) % k
    observed = np.asarray(jax.jit(noise.noisy_labels, static_argnums=(2, 3, 4, 5))(
        jnp.asarray(labels, jnp.int32), jnp.arange(n, dtype=jnp.int32), k, rate, kind, 7))
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, observed), 1)
    empirical = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(empirical, noise.transition_matrix(k, rate, kind), atol=0.035)
    assert abs((observed != labels).mean() - rate) < 0.01


@pytest.mark.parametrize("wrap", JIT)
def test_noise_is_a_function_of_seed_and_index(wrap):
    fn = wrap(lambda y, i: noise.noisy_labels(y, i, 10, 0.4, "symmetric", 3))
    labels, index = jnp.arange(64, dtype=jnp.int32) % 10, jnp.arange(100, 164, dtype=jnp.int32)
    perm = np.random.default_rng(0).permutation(64)
    a = np.asarray(fn(labels, index))
    np.testing.assert_array_equal(np.asarray(fn(labels[perm], index[perm])), a[perm])  # batch order irrelevant
    other = np.asarray(noise.noisy_labels(labels, index, 10, 0.4, "symmetric", 4))
    assert (a != other).any()  # another seed, other noise
    np.testing.assert_array_equal(noise.noisy_labels(labels, index, 10, 0.0), labels)


def test_small_loss_mask_matches_numpy():
    losses = np.random.default_rng(1).normal(size=37).astype(np.float32)
    for n in (1, 10, 37):
        expected = np.zeros(37)
        expected[np.argsort(losses, kind="stable")[:n]] = 1
        np.testing.assert_array_equal(jax.jit(noisy.small_loss_mask)(losses, n), expected)


@pytest.mark.parametrize("wrap", JIT)
def test_coteaching_loss_value_and_gradient(wrap):
    rng = np.random.default_rng(2)
    l1, l2 = (rng.uniform(0, 3, 20).astype(np.float32) for _ in range(2))
    keep = 0.6
    (loss, (m1, m2)), grads = wrap(jax.value_and_grad(
        lambda a, b: (lambda out: (out[0], out[1:]))(noisy.coteaching_loss(a, b, keep)), argnums=(0, 1), has_aux=True))(l1, l2)
    sel1, sel2 = np.argsort(l1)[:12], np.argsort(l2)[:12]  # floor(0.6 * 20) rows each net finds small
    np.testing.assert_allclose(loss, l1[sel2].mean() + l2[sel1].mean(), rtol=1e-6)
    g1, g2 = np.zeros(20), np.zeros(20)
    g1[sel2], g2[sel1] = 1 / 12, 1 / 12  # net 1's rows are the ones net 2 chose
    np.testing.assert_allclose(grads[0], g1, atol=1e-7)
    np.testing.assert_allclose(grads[1], g2, atol=1e-7)


def test_keep_fraction_schedule():
    r = [float(noisy.keep_fraction(t, 100, 0.4, 0.2)) for t in (0, 10, 20, 80)]
    np.testing.assert_allclose(r, [1.0, 0.8, 0.6, 0.6], rtol=1e-6)
    assert float(noisy.keep_fraction(5, 100, 0.4, 0.0)) == pytest.approx(0.6)


def test_feature_dropout():
    h = jnp.ones((4000, 16))
    drop = np.asarray(noisy.feature_dropout(jax.random.key(0), h, 0.5, "dropout"))
    assert set(np.unique(drop)) == {0.0, 2.0} and abs(drop.mean() - 1.0) < 0.02
    nested = np.asarray(noisy.feature_dropout(jax.random.key(1), h, 0.1, "nested"))
    kept = nested.sum(1)
    np.testing.assert_array_equal(nested, np.arange(16)[None, :] < kept[:, None])  # a prefix of each row
    assert abs(np.minimum(kept, 16).mean() - np.mean(np.minimum(np.random.default_rng(0).geometric(0.1, 100000), 16))) < 0.3
    np.testing.assert_array_equal(noisy.feature_dropout(jax.random.key(0), h, 0.0), h)


def small_config(arg="runlocal", **overrides):
    c = load_config(f"{CONFIG}:{arg}")
    c.model_name, c.model = "mlp", dict(widths=(16,), num_classes=10)
    c.mesh = (("data", 1),)
    return apply_overrides(c, overrides)


def test_task_loss_matches_rederivation():
    config = small_config("runlocal,noise=0.4", total_steps=100)
    task = build_task(config, sharding.make_mesh(config.mesh))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(20, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 20), jnp.int32), "index": jnp.arange(20, dtype=jnp.int32) * 7}
    params, state = task.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    step = 10  # R = 1 - 0.4 * 10 / 20 = 0.8 -> 16 rows kept
    loss, (metrics, _) = jax.jit(lambda p: task.loss_fn(p, state, {}, batch, jax.random.key(1), step))(params)
    observed = np.asarray(noise.noisy_labels(batch["label"], batch["index"], 10, 0.4, "symmetric", 0))

    def ce(net):
        feats = np.asarray(task.backbone.apply({"params": params[net]["backbone"]}, batch["image"])[0], np.float64)
        z = feats @ np.asarray(params[net]["head"]["kernel"]) + np.asarray(params[net]["head"]["bias"])
        z = z - z.max(1, keepdims=True)
        return -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(20), observed]

    l1, l2 = ce("net1"), ce("net2")
    sel1, sel2 = np.argsort(l1)[:16], np.argsort(l2)[:16]
    np.testing.assert_allclose(loss, l1[sel2].mean() + l2[sel1].mean(), rtol=1e-5)
    clean = observed == np.asarray(batch["label"])
    np.testing.assert_allclose(metrics["label_precision_1"], clean[sel1].mean(), rtol=1e-6)
    assert float(metrics["keep_fraction"]) == pytest.approx(0.8)


@pytest.mark.parametrize("field,value", [("label_noise.kind", "uniform"), ("label_noise.rate", 1.0),
                                         ("coteaching.dropout_kind", "gaussian"), ("coteaching.gradual_frac", 2.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split(".")[1]):
        build_task(small_config(**{field: value}), sharding.make_mesh((("data", 1),)))


def test_coteaching_selects_clean_rows_and_learns(tmp_path):
    """40 % symmetric noise, 150 steps: the exchanged rows are far cleaner than the batch, test top-1 is high."""
    config = small_config("runlocal,noise=0.4", total_steps=150, batch_size=64, log_every=10,
                          **{"optim.lr": 1e-2, "optim.warmup_steps": 10})
    config.model = dict(widths=(64,), num_classes=10)
    for ev in config.evals.values():
        ev.every = 0
    metrics = train_and_evaluate(config, str(tmp_path))
    late = [r for r in read_metrics(str(tmp_path)) if r.get("step", 0) >= 80 and "train/label_precision_1" in r]
    precision = np.mean([r["train/label_precision_1"] for r in late])
    clean = 1.0 - np.mean([r["train/noise_rate"] for r in late])  # ~0.6
    assert precision > clean + 0.1, (precision, clean)
    assert metrics["test/top1"] > 0.75, metrics
