"""Task "simclr": NT-Xent impls agree (8 devices), views from the step RNG, smoke runs, bad input."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsup import registry, sharding
from jaxsup.experiment import build_task
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources
from jaxsup.train import train_and_evaluate

from helpers import ROOT, apply_overrides, few_steps
from test_clip import assert_leaves_close


@registry.register("model", "test_spatial_features")
class SpatialFeatures(nn.Module):
    """An image model that forgot to pool: [B, H, W, C] -> [B, H, W, 4]."""

    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, *, train=False):
        h = nn.Conv(4, (3, 3))(x)
        return h, {"pre_logits": h}


@registry.register("model", "test_batchnorm_encoder")
class BatchNormEncoder(nn.Module):
    """Conv -> BatchNorm -> ReLU -> mean pool: the smallest encoder with batch_stats."""

    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, *, train=False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x))).mean(axis=(1, 2))
        return h, {"pre_logits": h}


def tiny_simclr_config(**overrides):
    c = load_config(os.path.join(ROOT, "configs/simclr_digits.py:runlocal"))
    c.model_name = "cnn"
    c.model = dict(widths=(8,), num_classes=None)
    c.simclr.head = dict(num_layers=2, hidden_dim=16, output_dim=8, use_bn=True)
    few_steps(c)
    c.evals.linear_probe.steps = 50
    return apply_overrides(c, overrides)


def digits_images(n=16):
    source = sources.open_source("digits", "train")
    ops = preprocess.build(["image_to_float", "keep:image"])
    return next(pipeline.eval_batches(source, ops, n, process_index=0, process_count=1))["image"]


def numpy_nt_xent(z1, z2, tau):
    """The NT-Xent formula (docs/kernels.md) in float64 NumPy."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n = len(z1)
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    twin = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    m = s.max(1, keepdims=True)
    lse = np.log(np.exp(s - m).sum(1)) + m[:, 0]
    return np.mean(lse - s[np.arange(2 * n), twin])


def make_task(mesh, images, **overrides):
    task = build_task(tiny_simclr_config(**overrides), mesh)
    params, state = task.init(jax.random.key(0), {"image": images[:1]})
    return task, params, state


def loss_and_grads(impl, images, mesh):
    """Task loss and grads, the head without BatchNorm: flax BatchNorm's E[x^2] - E[x]^2 variance
    is reduced in another order when the loss is a shard_map (ring), which moves the loss by ~1e-5
    relative whatever the loss impl (checked: ring == reference to 1e-6 without BatchNorm)."""
    head = dict(num_layers=2, hidden_dim=16, output_dim=8, use_bn=False)
    task, params, state = make_task(mesh, images, **{"simclr.impl": impl, "simclr.tile": 8, "simclr.head": head})
    batch = {"image": jax.device_put(jnp.asarray(images), NamedSharding(mesh, P("data")))}

    def f(p):
        return task.loss_fn(p, state, {}, batch, jax.random.key(1), 0)

    (value, _), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return task, params, state, value, grads


def test_chunked_and_ring_nt_xent_equal_reference_on_8_devices():
    mesh = sharding.make_mesh((("data", 8),))
    images = digits_images()
    task, params, state, ref, ref_grads = loss_and_grads("reference", images, mesh)
    # The same two views and embeddings as loss_fn, then the NumPy formula.
    from jaxsup.data.device.augment import simclr_augment

    @jax.jit
    def embeddings(images):
        k1, k2, kd = jax.random.split(jax.random.key(1), 3)
        aug = task.cfg["augment"]
        views = jnp.concatenate([simclr_augment(k1, images, **aug), simclr_augment(k2, images, **aug)])
        return task._embed(params, state, views, train=True, rng=kd)[1]

    z1, z2 = np.split(np.asarray(embeddings(images)), 2)
    np.testing.assert_allclose(ref, numpy_nt_xent(z1, z2, task.cfg["tau"]), rtol=1e-5)
    for impl in ("chunked", "ring"):
        _, _, _, value, grads = loss_and_grads(impl, images, mesh)
        np.testing.assert_allclose(value, ref, rtol=1e-5, err_msg=impl)
        assert_leaves_close(grads, ref_grads, 1e-5, impl)


def test_views_come_from_the_step_rng_and_batchnorm_stats_update():
    images = digits_images(8)
    task, params, state = make_task(sharding.make_mesh((("data", 1),)), images, model_name="test_batchnorm_encoder",
                                   model=dict(num_classes=None))
    loss_at = jax.jit(lambda rng: task.loss_fn(params, state, {}, {"image": images}, rng, 0))
    a, (_, new_state) = loss_at(jax.random.key(1))
    b, c = loss_at(jax.random.key(1))[0], loss_at(jax.random.key(2))[0]
    assert float(a) == float(b) and abs(float(a) - float(c)) > 1e-4
    for part in ("encoder", "head"):  # BatchNorm statistics of both live in task_state and move
        moved = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), new_state[part], state[part])
        assert jax.tree.leaves(moved) and min(jax.tree.leaves(moved)) > 0, part


def test_smoke_train_then_probe_and_random_init_probe(tmp_path):
    trained = train_and_evaluate(tiny_simclr_config(), str(tmp_path / "trained"))
    assert np.isfinite(trained["train/loss"])
    for name in ("linear_probe/top1", "linear_probe/train_top1", "knn/top1"):
        assert 0.0 <= trained[name] <= 1.0
    assert trained["linear_probe/count"] == trained["knn/count"] == 360
    at_init = train_and_evaluate(tiny_simclr_config(total_steps=0), str(tmp_path / "init"))
    assert 0.0 <= at_init["linear_probe/top1"] <= 1.0 and "train/loss" not in at_init


def test_predict_gives_encoder_features_and_unit_projections():
    mesh = sharding.make_mesh((("data", 1),))
    task = build_task(tiny_simclr_config(), mesh)
    images = digits_images(4)
    params, state = task.init(jax.random.key(0), {"image": images})
    out = task.predict(params, state, {}, {"image": images})
    feats, _ = task.encoder.apply({"params": params["encoder"]}, images)
    np.testing.assert_allclose(out["features"], feats, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out["z"], axis=1), 1.0, rtol=1e-5)


def test_encoder_without_pooled_features_is_a_clear_error():
    config = tiny_simclr_config(model_name="test_spatial_features", model=dict(num_classes=None))
    task = build_task(config, sharding.make_mesh((("data", 1),)))
    with pytest.raises(ValueError, match=r"encoder 'test_spatial_features' returned shape \(1, 8, 8, 4\)"):
        task.init(jax.random.key(0), {"image": digits_images(1)})


def test_bad_simclr_options_are_named():
    mesh = sharding.make_mesh((("data", 1),))
    with pytest.raises(ValueError, match="config.simclr.impl 'fast'"):
        build_task(tiny_simclr_config(**{"simclr.impl": "fast"}), mesh)
    with pytest.raises(ValueError, match=r"'simclr_head' rejects config.model kwargs \['depth'\]"):
        build_task(tiny_simclr_config(**{"simclr.head": dict(depth=2)}), mesh)


def test_imagenet_config_loads_and_runlocal_keeps_family_loss_and_data():
    full = load_config(os.path.join(ROOT, "configs/simclr_resnet50_imagenet.py"))
    local = load_config(os.path.join(ROOT, "configs/simclr_resnet50_imagenet.py:runlocal"))
    assert (full.data.name, full.model.depth, full.optim.name, full.simclr.impl) == ("imagenet2012", 50, "lars", "ring")
    assert full.optim.lr == pytest.approx(0.3 * full.batch_size / 256)
    assert (local.data.name, local.model_name, local.optim.name, local.simclr.impl) == ("imagenet2012", "resnet",
                                                                                        "lars", "ring")
    assert tuple(local.partition_rules) == tuple(full.partition_rules) == ("fsdp",)
    assert local.task == "simclr" and local.total_steps == 4 and local.model.depth == 18


@pytest.mark.parametrize("loss", ["nt_xent", "cacr"])
def test_k_views_loss_equals_numpy_on_the_tasks_embeddings(loss):
    """K = 3 views: NT-Xent is the mean over the 3 view pairs; CACR the NumPy formula over all 3."""
    from jaxsup.data.device.augment import simclr_augment
    from test_cacr import np_cacr

    images = digits_images(8)
    head = dict(num_layers=2, hidden_dim=16, output_dim=8, use_bn=False)
    task, params, state = make_task(sharding.make_mesh((("data", 1),)), images, **{
        "simclr.loss": loss, "simclr.views": 3, "simclr.head": head, "simclr.impl": "chunked", "simclr.tile": 5})
    value, _ = jax.jit(lambda p: task.loss_fn(p, state, {}, {"image": images}, jax.random.key(1), 0))(params)
    *keys, k_drop = jax.random.split(jax.random.key(1), 4)
    views = jnp.concatenate([simclr_augment(k, images, **task.cfg["augment"]) for k in keys])
    z = np.asarray(task._embed(params, state, views, train=True, rng=k_drop)[1], np.float64).reshape(3, 8, -1)
    if loss == "cacr":
        want = np_cacr(z, *(task.cfg.cacr[k] for k in ("t_pos", "t_neg", "alpha", "beta")))[0]
    else:
        want = np.mean([numpy_nt_xent(z[a], z[b], task.cfg["tau"]) for a, b in ((0, 1), (0, 2), (1, 2))])
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_bad_loss_options_are_named():
    mesh = sharding.make_mesh((("data", 1),))
    for overrides, message in (({"simclr.loss": "infonce"}, "config.simclr.loss 'infonce'"),
                               ({"simclr.views": 1}, r"config.simclr.views=1 \(--config.simclr.views\): expected an integer in \[2, inf\]"),
                               ({"simclr.loss": "cacr", "simclr.impl": "ring"}, "not available for loss 'cacr'")):
        with pytest.raises(ValueError, match=message):
            build_task(tiny_simclr_config(**overrides), mesh)
