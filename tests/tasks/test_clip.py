"""Task "clip": loss impls agree (8 devices), predict per tower, smoke runs, bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsup import sharding
from jaxsup.experiment import build_task
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources
from jaxsup.train import train_and_evaluate

from helpers import ROOT, apply_overrides, few_steps

BATCH = 16


def tiny_clip_config(spec="configs/clip_digits.py:runlocal", **overrides):
    """The digits CLIP config with tiny towers and a few steps."""
    c = load_config(os.path.join(ROOT, spec))
    c.model.image_kwargs = dict(widths=(16,), num_classes=None)
    c.model.text_kwargs.update(width=32, depth=1, num_heads=2, mlp_dim=32)
    c.model.embed_dim = 16
    few_steps(c)
    c.evals = {k: v for k, v in c.evals.items() if k in ("zero_shot", "retrieval")}
    return apply_overrides(c, overrides)


def digits_batch(config, n=BATCH, split="train"):
    source = sources.open_source("digits", split)
    ops = preprocess.build(config.data.preprocess)
    return next(pipeline.eval_batches(source, ops, n, process_index=0, process_count=1))


def loss_and_grads(loss, impl, batch, mesh, variables=None, **options):
    """(task, params, state, loss, grads) of the clip task with `impl`; variables reuses an init."""
    config = tiny_clip_config(**{"clip.loss": loss, "clip.impl": impl, "clip.tile": 8, **options})
    task = build_task(config, mesh)
    params, state = variables or jax.jit(task.init)(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    placed = jax.device_put({k: jnp.asarray(v) for k, v in batch.items()}, NamedSharding(mesh, P("data")))

    def f(p):
        return task.loss_fn(p, state, {}, placed, jax.random.key(1), 0)

    (value, _), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return task, params, state, value, grads


def assert_leaves_close(tree, ref, rtol, what="", atol=1e-6):
    """||a - b|| <= rtol ||b|| + atol for each leaf. Parameter gradients: the embeddings' cotangents
    agree to f32 rounding, then backprop through the towers sums them in other orders, so single
    elements near 0 differ by more than rtol of themselves; the leaf's norm is the fair scale.
    atol covers leaves whose exact gradient is 0 (attention key biases: ~1e-7 of rounding)."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref)):
        err, scale = np.linalg.norm(np.ravel(a - b)), np.linalg.norm(np.ravel(b))
        assert err <= rtol * scale + atol, f"{what} {jax.tree_util.keystr(path)}: |a-b| {err:.3g}, |b| {scale:.3g}"


def numpy_clip_loss(zimg, ztxt, out, loss):
    """The CLIP / SigLIP formulas (docs/kernels.md) in float64 NumPy."""
    zi, zt = np.asarray(zimg, np.float64), np.asarray(ztxt, np.float64)
    logits = np.exp(float(out["log_t"])) * zi @ zt.T
    n = len(zi)
    if loss == "softmax":
        def ce(s):
            m = s.max(1, keepdims=True)
            return np.mean(np.log(np.exp(s - m).sum(1)) + m[:, 0] - np.diag(s))
        return 0.5 * (ce(logits) + ce(logits.T))
    y = 2 * np.eye(n) - 1
    return -np.sum(np.log(1 / (1 + np.exp(-y * (logits + float(out["bias"])))))) / n


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_chunked_and_ring_losses_equal_reference_on_8_devices(loss):
    mesh = sharding.make_mesh((("data", 8),))
    batch = digits_batch(tiny_clip_config())
    task, params, state, ref, ref_grads = loss_and_grads(loss, "reference", batch, mesh)
    zimg, ztxt, out = task.model.apply({"params": params}, batch["image"], batch["tokens"])
    np.testing.assert_allclose(ref, numpy_clip_loss(zimg, ztxt, out, loss), rtol=1e-5)
    for impl in ("chunked", "ring"):
        _, _, _, value, grads = loss_and_grads(loss, impl, batch, mesh, (params, state))
        np.testing.assert_allclose(value, ref, rtol=1e-5, err_msg=impl)
        assert_leaves_close(grads, ref_grads, 1e-5, impl)
    assert float(optax.global_norm(ref_grads)) > 0


def test_predict_runs_only_the_towers_given():
    mesh = sharding.make_mesh((("data", 1),))
    config = tiny_clip_config()
    task = build_task(config, mesh)
    batch = digits_batch(config, n=4)
    params, state = task.init(jax.random.key(0), batch)
    both = task.predict(params, state, {}, batch)
    text_only = task.predict(params, state, {}, {"tokens": batch["tokens"]})
    image_only = task.predict(params, state, {}, {"image": batch["image"]})
    assert sorted(text_only) == ["txt_features", "ztxt"] and sorted(image_only) == ["features", "zimg"]
    np.testing.assert_allclose(text_only["ztxt"], both["ztxt"], rtol=1e-6)
    np.testing.assert_allclose(image_only["zimg"], both["zimg"], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both["zimg"], axis=1), 1.0, rtol=1e-5)
    assert both["features"].shape == (4, 16)


@pytest.mark.parametrize("spec", ["configs/clip_digits.py:runlocal", "configs/siglip_digits.py:runlocal"])
def test_smoke_train_with_zero_shot_and_retrieval(tmp_path, spec):
    metrics = train_and_evaluate(tiny_clip_config(spec), str(tmp_path))
    assert np.isfinite(metrics["train/loss"])
    assert metrics["zero_shot/count"] == 360 and metrics["retrieval/count"] == 360
    assert 0 <= metrics["zero_shot/top1"] <= metrics["zero_shot/top5"] <= 1
    assert 0 <= metrics["retrieval/img2txt/r1"] <= metrics["retrieval/img2txt/r5"] <= metrics["retrieval/img2txt/r10"] <= 1
    assert ("train/bias" in metrics) == ("siglip" in spec)


def test_real_scale_configs_runlocal_keeps_family_loss_rules_and_data():
    """runlocal shrinks sizes only (big_vision style); it is run on mock TFDS data in test_real_datasets.py."""
    for name in ("clip_vit_b16", "siglip_vit_b16"):
        full = load_config(os.path.join(ROOT, f"configs/{name}.py"))
        local = load_config(os.path.join(ROOT, f"configs/{name}.py:runlocal"))
        for c in (full, local):
            assert c.model.image_kwargs.variant == "B/16" and c.data.name == "coco_captions" and c.task == "clip"
            assert c.clip.impl == "ring" and tuple(c.partition_rules) == ("fsdp",)
            assert c.clip.loss == ("sigmoid" if "siglip" in name else "softmax")
            assert sorted(c.evals) == ["retrieval", "zero_shot"] and c.evals.zero_shot.dataset == "cifar10"
        assert full.data.preprocess[0] == "inception_crop:size=224,scale_min=0.9"
        assert local.data.preprocess[0] == "inception_crop:size=32,scale_min=0.9"
        assert local.batch_size < full.batch_size and local.total_steps < full.total_steps
    converted = load_config(os.path.join(ROOT, "configs/clip_vit_b16.py:data=/d/cc3m"))
    assert converted.data.path == "/d/cc3m" and "pick_caption:feature=caption,choice=hash" in converted.data.preprocess


def test_unprojectable_image_tower_is_a_clear_error():
    config = tiny_clip_config(**{"model.project": False, "model.embed_dim": 24})
    task = build_task(config, sharding.make_mesh((("data", 1),)))
    with pytest.raises(ValueError, match="img tower returned dim 16 but project=False needs embed_dim 24"):
        task.init(jax.random.key(0), digits_batch(config, n=2))


def test_bad_clip_options_and_batches_are_named():
    mesh = sharding.make_mesh((("data", 1),))
    clip = build_task
    with pytest.raises(ValueError, match="config.clip.loss 'cosine'"):
        clip(tiny_clip_config(**{"clip.loss": "cosine"}), mesh)
    with pytest.raises(ValueError, match="config.clip.impl 'fast'"):
        clip(tiny_clip_config(**{"clip.impl": "fast"}), mesh)
    config = tiny_clip_config()
    task = clip(config, mesh)
    batch = digits_batch(config, n=2)
    with pytest.raises(ValueError, match=r"batch lacks \['tokens'\]"):
        task.init(jax.random.key(0), {"image": batch["image"]})


def test_pallas_impl_falls_back_to_chunked_where_it_cannot_run_or_says_why():
    if jax.default_backend() != "cpu":
        pytest.skip("on an accelerator the Pallas kernels run; see tests/kernels/test_pallas_contrastive.py")
    mesh = sharding.make_mesh((("data", 1),))
    batch = digits_batch(tiny_clip_config(), n=8)
    losses = {}
    for impl, fallback in (("reference", True), ("pallas", True), ("pallas", False)):
        config = tiny_clip_config(**{"clip.impl": impl, "clip.fallback": fallback, "clip.tile": 4})
        task = build_task(config, mesh)
        params, state = task.init(jax.random.key(0), batch)
        loss_fn = jax.jit(lambda p, b: task.loss_fn(p, state, {}, b, jax.random.key(1), 0)[0])
        if not fallback:
            with pytest.raises(ValueError, match="impl='pallas' cannot run here"):
                loss_fn(params, batch)
            continue
        losses[impl] = float(loss_fn(params, batch))
    np.testing.assert_allclose(losses["pallas"], losses["reference"], rtol=1e-5)
