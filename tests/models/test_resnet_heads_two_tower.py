"""ResNet, the SimCLR projection head and the two-tower model: shapes, parameter counts, values."""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import registry
from jaxsup.models.heads import SimCLRHead
from jaxsup.models.resnet import ResNet
from jaxsup.models.two_tower import TwoTower
from test_models import KEY, TINY_RESNET, TINY_TEXT, TINY_VIT, images, n_params, random_variables, shapes_of
from test_models import tokens_with_padding


@pytest.mark.parametrize("depth, expected", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_resnet_param_counts_match_torchvision(depth, expected):
    shapes = jax.eval_shape(ResNet(depth=depth, num_classes=1000).init, KEY, jnp.zeros((1, 224, 224, 3)))
    assert n_params(shapes["params"]) == expected  # torchvision's published counts


@pytest.mark.parametrize("depth, feat", [(18, 64), (50, 256)])
def test_resnet_shapes(depth, feat):
    model = ResNet(depth=depth, width=0.125, small_input=True, num_classes=10)
    _, (logits, out) = shapes_of(model, images(hw=8, c=3), train=False)
    assert logits.shape == (3, 10) and out["pre_logits"].shape == (3, feat)


def test_resnet_batchnorm_mutable_path_updates_running_stats():
    model = ResNet(**TINY_RESNET, num_classes=10)
    x = images(b=4)
    variables = random_variables(model, x)
    stem = variables["params"]["stem_conv"]["kernel"]

    @jax.jit
    def train_then_eval(variables, x):
        (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        eval_logits, _ = model.apply({**variables, **updates}, x, train=False)
        return logits, updates, eval_logits

    logits, updates, eval_logits = train_then_eval(variables, x)
    conv = jax.lax.conv_general_dilated(x, stem, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected_mean = 0.9 * 0.0 + 0.1 * np.asarray(conv).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(updates["batch_stats"]["stem_norm"]["mean"], expected_mean, rtol=1e-5, atol=1e-7)
    # eval mode uses the (new) running stats, not the batch's: outputs differ from train mode.
    assert np.abs(eval_logits - logits).max() > 1e-4
    with pytest.raises(Exception):  # train=True without mutable batch_stats is an error in flax
        jax.eval_shape(functools.partial(model.apply, train=True), variables, x)


def test_resnet_group_norm_has_no_batch_stats():
    model = ResNet(**TINY_RESNET, norm="group", num_classes=10)
    variables, (logits, _) = shapes_of(model, images(), train=True)
    assert "batch_stats" not in variables and logits.shape == (3, 10)
    with pytest.raises(ValueError, match="depth"):
        jax.eval_shape(ResNet(depth=20).init, KEY, images())


# ----------------------------------------------------------------------------- SimCLR head


def test_simclr_head_without_bn_matches_numpy():
    x = jax.random.normal(KEY, (4, 6))
    head = SimCLRHead(num_layers=3, hidden_dim=5, output_dim=3, use_bn=False)
    p = random_variables(head, x)["params"]
    z, out = jax.jit(head.apply)({"params": p}, x)
    h = np.asarray(x)
    for i in (1, 2, 3):
        h = h @ np.asarray(p[f"dense_{i}"]["kernel"]) + np.asarray(p[f"dense_{i}"]["bias"])
        if i < 3:
            h = np.maximum(h, 0)
        np.testing.assert_allclose(out[f"layer_{i}"], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, h, rtol=1e-5, atol=1e-6)


def test_simclr_head_bn_and_return_layer():
    x = jax.random.normal(KEY, (4, 6))
    head = SimCLRHead(num_layers=3, hidden_dim=5, output_dim=3)
    variables = random_variables(head, x)
    (z, out), updates = head.apply(variables, x, train=True, mutable=["batch_stats"])
    assert z.shape == (4, 3) and set(updates["batch_stats"]) == {"bn_1", "bn_2", "bn_3"}
    assert "bias" not in variables["params"]["bn_3"]  # last BN has no centre (SimCLR)
    np.testing.assert_allclose(np.asarray(out["layer_3"]).mean(0), 0, atol=1e-5)  # train-mode BN output
    z1, _ = head.apply(variables, x, return_layer=1)
    _, full = head.apply(variables, x)
    np.testing.assert_allclose(z1, full["layer_1"], rtol=1e-6)
    np.testing.assert_array_equal(head.apply(variables, x, return_layer=0)[0], x)
    only_first = random_variables(head, x, return_layer=1)["params"]
    assert set(only_first) == {"dense_1", "bn_1"}
    with pytest.raises(ValueError, match="return_layer"):
        jax.eval_shape(functools.partial(head.apply, return_layer=4), variables, x)


# ----------------------------------------------------------------------------- two-tower


def _two_tower(loss, **kw):
    return TwoTower(
        image="vit", image_kwargs={**TINY_VIT, "depth": 1}, text_kwargs={**TINY_TEXT, "depth": 1},
        embed_dim=6, loss=loss, **kw,
    )


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_two_tower_init_values(loss):
    model = _two_tower(loss)
    variables = model.init(KEY, None, None)  # creates t (and b) only: cheap, real init values
    _, _, out = model.apply(variables, None, None)
    expected_log_t = math.log(1 / 0.07) if loss == "softmax" else math.log(10)
    np.testing.assert_allclose(out["log_t"], expected_log_t, rtol=1e-6)
    np.testing.assert_allclose(out["t"], math.exp(expected_log_t), rtol=1e-6)
    if loss == "sigmoid":
        np.testing.assert_allclose(out["bias"], -10.0)
        assert set(variables["params"]) == {"t", "b"}
    else:
        assert "bias" not in out and set(variables["params"]) == {"t"}
    hot = {"params": {**variables["params"], "t": jnp.array([10.0])}}
    clipped = model.apply(hot, None, None)[2]["log_t"]
    np.testing.assert_allclose(clipped, math.log(100.0) if loss == "softmax" else 10.0, rtol=1e-6)


def test_two_tower_normalised_embeddings_and_single_towers():
    model = _two_tower("sigmoid")
    x, tokens = images(), tokens_with_padding()
    variables = random_variables(model, x, tokens)
    assert {"img", "txt", "img_proj", "txt_proj", "t", "b"} == set(variables["params"])

    @jax.jit
    def embed(variables, x, tokens):
        return model.apply(variables, x, tokens), model.apply(variables, x, None), model.apply(variables, None, tokens)

    (zimg, ztxt, out), (only_img, no_txt, _), (no_img, only_txt, _) = embed(variables, x, tokens)
    assert zimg.shape == ztxt.shape == (3, 6) and no_txt is None and no_img is None
    assert out["img_features"].shape == out["txt_features"].shape == (3, 16)
    for z, feats, proj in ((zimg, out["img_features"], "img_proj"), (ztxt, out["txt_features"], "txt_proj")):
        projected = np.asarray(feats) @ np.asarray(variables["params"][proj]["kernel"])
        np.testing.assert_allclose(z, projected / np.linalg.norm(projected, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(only_img, zimg, rtol=1e-6)
    np.testing.assert_allclose(only_txt, ztxt, rtol=1e-6)


class _SpatialFeatures(nn.Module):
    """A tower whose output is not [B, D] (for the error test)."""

    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, *, train=False):
        return x, {}


registry.register("model", "_test_spatial_features")(_SpatialFeatures)


def test_two_tower_rejects_unprojectable_tower():
    model = TwoTower(image="_test_spatial_features", text_kwargs=TINY_TEXT, embed_dim=6)
    with pytest.raises(ValueError, match=r"img tower .*_test_spatial_features.*\(3, 8, 8, 1\)"):
        jax.eval_shape(model.init, KEY, images(), None)
    bad = _two_tower("softmax", project=False)
    with pytest.raises(ValueError, match="embed_dim"):
        jax.eval_shape(bad.init, KEY, images(), tokens_with_padding())
    with pytest.raises(ValueError, match="loss"):
        jax.eval_shape(_two_tower("hinge").init, KEY, images(), tokens_with_padding())
