"""Model zoo: the transformer block, ViT and text tower (shapes, dtypes, parameter counts, masks, pooling, remat);
ResNet, heads and the two-tower model: test_resnet_heads_two_tower.py."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import registry
from jaxsup.models.heads import SimCLRHead
from jaxsup.models.resnet import ResNet
from jaxsup.models.text import TextTransformer
from jaxsup.models.transformer import Encoder, EncoderBlock, attention_mask
from jaxsup.models.vit import ViT

KEY = jax.random.key(0)
TINY_VIT = dict(patch_size=2, width=16, depth=2, mlp_dim=32, num_heads=2)
TINY_TEXT = dict(vocab_size=50, max_len=12, width=16, depth=2, num_heads=2, mlp_dim=32)
TINY_RESNET = dict(depth=18, width=0.125, small_input=True)


def shapes_of(model, inp, **apply_kwargs):
    """(variables, apply output) as ShapeDtypeStructs: checks shapes/dtypes without computing."""
    variables = jax.eval_shape(model.init, KEY, inp)
    return variables, jax.eval_shape(functools.partial(model.apply, **apply_kwargs), variables, inp)


def random_variables(model, *inputs, seed=0, **init_kwargs):
    """Variables with init's structure, filled by NumPy (fan-in scaled normals; BN stats 0/1).

    Avoids compiling `init`, which dominates test time on CPU.
    """
    shapes = jax.eval_shape(functools.partial(model.init, **init_kwargs), KEY, *inputs)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name in ("mean", "var"):
            return jnp.full(s.shape, float(name == "var"), s.dtype)
        if len(s.shape) == 1:
            return jnp.asarray((name == "scale") + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1])), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def n_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def flat_names(tree) -> list[str]:
    return ["/".join(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def images(b=3, hw=8, c=1, seed=1):
    return jax.random.uniform(jax.random.key(seed), (b, hw, hw, c))


def tokens_with_padding():
    """Rows of different lengths, pad id 0 at the end; the last non-pad id is the 'EOS' (2)."""
    return jnp.array(
        [[1, 5, 7, 9, 2, 0, 0, 0], [1, 4, 2, 0, 0, 0, 0, 0], [1, 3, 3, 3, 3, 3, 6, 2]], jnp.int32
    )


# ----------------------------------------------------------------------------- registry / names


def test_all_models_registered():
    for name in ("vit", "text_transformer", "two_tower", "resnet", "simclr_head"):
        assert registry.get("model", name) is not None


# ----------------------------------------------------------------------------- transformer block


def _layer_norm(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _reference_block(p, x, mask):
    """NumPy pre-LN block: x + MHA(LN(x)), then + MLP(LN(.)). x [B, L, D], mask [B, 1, L, L]."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    att = p["MultiHeadDotProductAttention_0"]
    h = _layer_norm(x, p["LayerNorm_0"])
    q, k, v = (np.einsum("bld,dhk->blhk", h, att[n]["kernel"]) + att[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.asarray(mask), logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    o = np.einsum("bhqs,bshk->bqhk", w, v)
    x = x + np.einsum("bqhk,hkd->bqd", o, att["out"]["kernel"]) + att["out"]["bias"]
    mlp = p["MlpBlock_0"]
    h = _layer_norm(x, p["LayerNorm_1"])
    h = _gelu_tanh(h @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"])
    return x + h @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]


def test_encoder_block_matches_numpy_reference_with_causal_and_pad_mask():
    x = jax.random.normal(KEY, (2, 5, 8))
    valid = jnp.array([[True] * 5, [True, True, True, False, False]])
    mask = attention_mask(valid, 5, causal=True)
    block = EncoderBlock(num_heads=2, mlp_dim=16)
    params = random_variables(block, x, mask)["params"]
    got = jax.jit(block.apply)({"params": params}, x, mask)
    np.testing.assert_allclose(got, _reference_block(params, x, mask), rtol=1e-5, atol=1e-5)


def test_attention_mask_is_causal_and_masks_pad_keys():
    mask = np.asarray(attention_mask(jnp.array([[True, True, False]]), 3, causal=True))[0, 0]
    expected = np.tril(np.ones((3, 3), bool)) & np.array([True, True, False])[None, :]
    np.testing.assert_array_equal(mask, expected)


# ----------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("pool_type", ["gap", "tok"])
@pytest.mark.parametrize("num_classes", [10, None])
def test_vit_shapes(pool_type, num_classes):
    model = ViT(**TINY_VIT, pool_type=pool_type, num_classes=num_classes, representation_size=24)
    _, (logits, out) = shapes_of(model, images())
    assert out["pre_logits"].shape == (3, 24)
    assert logits.shape == (3, num_classes or 24)
    n_tokens = 16 + (pool_type == "tok")
    assert out["encoded"].shape == (3, n_tokens, 16)


def test_vit_param_names_for_sharding_rules():
    model = ViT(**TINY_VIT, num_classes=10)
    names = flat_names(jax.eval_shape(model.init, KEY, images())["params"])
    for depth in range(2):
        prefix = f"encoder/encoderblock_{depth}/"
        assert prefix + "MlpBlock_0/Dense_0/kernel" in names
        assert prefix + "MlpBlock_0/Dense_1/kernel" in names
        for proj in ("query", "key", "value", "out"):
            assert prefix + f"MultiHeadDotProductAttention_0/{proj}/kernel" in names
    assert {"embedding/kernel", "pos_embedding", "head/kernel", "encoder/encoder_norm/scale"} <= set(names)


def _vit_param_formula(width, depth, mlp, patch, channels, n_patches, classes, cls_token):
    embed = patch * patch * channels * width + width
    block = 2 * 2 * width + 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return embed + n_patches * width + cls_token * width + depth * block + 2 * width + width * classes + classes


@pytest.mark.parametrize("pool_type", ["gap", "tok"])
def test_vit_b16_param_count(pool_type):
    model = ViT(variant="B/16", num_classes=1000, pool_type=pool_type)
    shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, 224, 224, 3)))
    count = n_params(shapes["params"])
    assert count == _vit_param_formula(768, 12, 3072, 16, 3, 196, 1000, pool_type == "tok")
    assert abs(count - 86.6e6) / 86.6e6 < 0.005  # "86M" in the ViT paper


def test_vit_variants_and_overrides():
    model = ViT(variant="S/16", patch_size=2, depth=1, num_classes=3)  # explicit overrides win
    assert model.resolved_dims() == dict(width=384, depth=1, mlp_dim=1536, num_heads=6, patch_size=2)
    assert ViT(variant="L/14").resolved_dims()["patch_size"] == 14
    assert ViT(variant="Ti", patch_size=4).resolved_dims()["width"] == 192
    with pytest.raises(ValueError, match="variant"):
        ViT(variant="XL/16").resolved_dims()
    with pytest.raises(ValueError, match="patch_size"):
        ViT(variant="B").resolved_dims()
    with pytest.raises(ValueError, match="num_heads"):
        ViT(**{**TINY_VIT, "num_heads": 3}).resolved_dims()
    with pytest.raises(ValueError, match="multiple of patch_size"):
        jax.eval_shape(ViT(**{**TINY_VIT, "patch_size": 3}).init, KEY, images())


def test_bf16_compute_keeps_f32_params():
    x = images()
    for model, inp in [
        (ViT(**TINY_VIT, num_classes=10, dtype=jnp.bfloat16), x),
        (ResNet(**TINY_RESNET, num_classes=10, dtype=jnp.bfloat16), x),
        (TextTransformer(**TINY_TEXT, num_classes=5, dtype=jnp.bfloat16), tokens_with_padding()),
        (SimCLRHead(hidden_dim=8, output_dim=4, dtype=jnp.bfloat16), x.reshape(3, -1)),
    ]:
        variables, ((logits, out), _) = shapes_of(model, inp, mutable=["batch_stats"])
        assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"])), model
        assert logits.dtype == jnp.bfloat16, model
        assert all(a.dtype == jnp.bfloat16 for a in jax.tree_util.tree_leaves(out)), model


def test_param_dtype_threads_to_every_param():
    variables, _ = shapes_of(ViT(**TINY_VIT, num_classes=10, param_dtype=jnp.bfloat16), images())
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree_util.tree_leaves(variables))


def test_remat_gives_same_values_and_grads():
    x = jax.random.normal(KEY, (2, 5, 8))
    mask = attention_mask(jnp.array([[True] * 5, [True] * 3 + [False] * 2]), 5, causal=True)
    base = Encoder(depth=2, num_heads=2, mlp_dim=16)
    params = random_variables(base, x, mask)["params"]

    def value_and_grad(model):
        loss = lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, mask)))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    v0, g0 = value_and_grad(base)
    for policy in ("nothing_saveable", "dots_with_no_batch_dims_saveable"):
        v1, g1 = value_and_grad(base.clone(remat=True, remat_policy=policy))
        np.testing.assert_allclose(v1, v0, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g0)


def test_unknown_remat_policy():
    with pytest.raises(ValueError, match="remat_policy"):
        jax.eval_shape(ViT(**TINY_VIT, remat=True, remat_policy="save_all_please").init, KEY, images())


# ----------------------------------------------------------------------------- text


def test_text_transformer_shapes():
    tokens = tokens_with_padding()
    _, (logits, out) = shapes_of(TextTransformer(**TINY_TEXT, num_classes=7), tokens)
    assert logits.shape == (3, 7) and out["pre_logits"].shape == (3, 16)
    assert out["tokens"].shape == (3, 8, 16)


def test_causal_mask_is_causal():
    tokens = tokens_with_padding()
    changed = tokens.at[2, 4].set(11)
    for causal in (True, False):
        model = TextTransformer(**TINY_TEXT, causal=causal)
        apply = jax.jit(model.apply)
        variables = random_variables(model, tokens)
        a = apply(variables, tokens)[1]["tokens"][2]
        b = apply(variables, changed)[1]["tokens"][2]
        if causal:
            np.testing.assert_array_equal(a[:4], b[:4])
        else:
            assert np.abs(a[:4] - b[:4]).max() > 1e-4
        assert np.abs(a[4:] - b[4:]).min() > 0  # the changed position and later ones move


def test_padding_keys_are_ignored():
    tokens = tokens_with_padding()
    longer = jnp.pad(tokens, ((0, 0), (0, 4)))  # more pad at the end
    model = TextTransformer(**TINY_TEXT, causal=False, pool_type="mean")
    variables = random_variables(model, longer)
    short_out = jax.jit(model.apply)(variables, tokens)[1]
    long_out = jax.jit(model.apply)(variables, longer)[1]
    valid = np.asarray(tokens) != 0
    np.testing.assert_allclose(
        np.asarray(long_out["tokens"][:, :8])[valid], np.asarray(short_out["tokens"])[valid], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(long_out["pre_logits"], short_out["pre_logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool_type", ["eos", "mean"])
def test_text_pooling(pool_type):
    tokens = tokens_with_padding()
    model = TextTransformer(**TINY_TEXT, pool_type=pool_type)
    _, out = jax.jit(model.apply)(random_variables(model, tokens), tokens)
    per_token, valid = np.asarray(out["tokens"]), np.asarray(tokens) != 0
    if pool_type == "eos":
        last = [max(np.nonzero(row)[0]) for row in valid]
        assert last == [4, 2, 7]
        expected = per_token[np.arange(3), last]
    else:
        expected = np.stack([per_token[i][valid[i]].mean(0) for i in range(3)])
    np.testing.assert_allclose(out["pre_logits"], expected, rtol=1e-5, atol=1e-6)


def test_text_bad_inputs():
    model = TextTransformer(**TINY_TEXT)
    with pytest.raises(ValueError, match="max_len"):
            jax.eval_shape(model.init, KEY, jnp.ones((1, 13), jnp.int32))
    with pytest.raises(ValueError, match="token ids"):
        jax.eval_shape(model.init, KEY, jnp.ones((1, 4), jnp.float32))


# ----------------------------------------------------------------------------- ResNet
