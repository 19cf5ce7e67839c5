"""Sharding presets on 8 CPU devices: same loss/grads as replicated, expected per-device bytes."""
import functools
import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxsup import optim, sharding, sharding_rules
from jaxsup.config import base_config
from jaxsup.losses.contrastive import sigmoid_contrastive
from jaxsup.models.two_tower import TwoTower

# Every dim a multiple of 8 (heads 2 -> head dim 8) so each sharded leaf splits evenly.
WIDTH, MLP, HEADS, VOCAB, MAX_LEN, EMBED, BATCH = 16, 32, 2, 64, 8, 8, 16
MODEL = TwoTower(
    image="vit",
    image_kwargs=dict(patch_size=4, width=WIDTH, depth=1, mlp_dim=MLP, num_heads=HEADS, num_classes=None,
                      pool_type="tok", representation_size=WIDTH),
    text_kwargs=dict(vocab_size=VOCAB, max_len=MAX_LEN, width=WIDTH, depth=1, num_heads=HEADS, mlp_dim=MLP),
    embed_dim=EMBED, loss="sigmoid",
)
LAYOUTS = {
    "dp": ((("data", 8),), sharding_rules.data_parallel()),
    "fsdp": ((("data", 8),), sharding_rules.fsdp()),
    "fsdp_tp": ((("data", 4), ("model", 2)), sharding_rules.fsdp_tp()),
}


@functools.lru_cache(maxsize=None)
def _batch():
    k1, k2 = jax.random.split(jax.random.key(1))
    images = jax.random.normal(k1, (BATCH, 8, 8, 3))
    tokens = jax.random.randint(k2, (BATCH, MAX_LEN), 1, VOCAB).at[:, -2:].set(0)  # some padding
    return {"image": images, "tokens": tokens}


@functools.lru_cache(maxsize=None)
def _params():
    batch = _batch()
    return jax.jit(MODEL.init)(jax.random.key(0), batch["image"][:1], batch["tokens"][:1])["params"]


def _loss(params, batch):
    zimg, ztxt, out = MODEL.apply({"params": params}, batch["image"], batch["tokens"])
    return sigmoid_contrastive(zimg, ztxt, out["log_t"], out["bias"])[0]


@functools.lru_cache(maxsize=None)
def _replicated_loss_and_grads():
    """The reference: loss and grads on one device, nothing sharded."""
    return jax.jit(jax.value_and_grad(_loss))(_params(), _batch())


def _named_leaves(tree):
    return {sharding.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _expected_divisor(name: str, layout: str) -> int:
    """How many ways a leaf is split in each layout, from the model's layout (not the regexes)."""
    leaf = name.rsplit("/", 1)[-1]
    large = leaf in ("kernel", "embedding", "pos_embedding")
    if layout == "dp" or (layout == "fsdp" and not large):
        return 1
    if layout == "fsdp":
        return 8
    in_block = "encoderblock_" in name
    if in_block and ("MultiHeadDotProductAttention_0" in name or "MlpBlock_0" in name) and leaf == "kernel":
        return 8  # heads / MLP dim over model (2), width over data (4)
    if in_block and leaf == "bias" and re.search(r"(query|key|value|Dense_0)/bias$", name):
        return 2  # follows the head / MLP split over model
    return 4 if large else 1


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_gives_replicated_loss_and_grads(layout):
    axes, rules = LAYOUTS[layout]
    mesh = sharding.make_mesh(axes)
    params, batch = _params(), _batch()
    want_loss, want_grads = _replicated_loss_and_grads()

    param_shardings = sharding.tree_shardings(params, rules, mesh)
    step = jax.jit(
        jax.value_and_grad(_loss),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(sharding.replicated(mesh), param_shardings),
    )
    loss, grads = step(jax.device_put(params, param_shardings), batch)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    # Sharded runs sum the batch (and split matmuls) in another order: f32 rounding of
    # ~1e-7 relative to the largest terms of a sum, so the error is measured against each
    # leaf's scale.
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=max(1e-5 * np.abs(w).max(), 1e-7)),
                 grads, want_grads)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_per_device_parameter_bytes(layout):
    axes, rules = LAYOUTS[layout]
    mesh = sharding.make_mesh(axes)
    params = _params()
    placed = jax.device_put(params, sharding.tree_shardings(params, rules, mesh))
    leaves = _named_leaves(placed)
    per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves.values())
    expected = 0
    for name, x in leaves.items():
        divisor = _expected_divisor(name, layout)
        assert x.nbytes % divisor == 0, name
        expected += x.nbytes // divisor
    assert per_device == expected
    total = sum(x.nbytes for x in leaves.values())
    assert per_device < total / 4 if layout != "dp" else per_device == total


def test_fsdp_tp_shard_shapes():
    mesh = sharding.make_mesh(LAYOUTS["fsdp_tp"][0])
    placed = jax.device_put(_params(), sharding.tree_shardings(_params(), sharding_rules.fsdp_tp(), mesh))
    block = placed["txt"]["encoder"]["encoderblock_0"]
    shard = lambda x: x.addressable_shards[0].data.shape  # noqa: E731
    attn, mlp = block["MultiHeadDotProductAttention_0"], block["MlpBlock_0"]
    head_dim = WIDTH // HEADS
    assert shard(attn["query"]["kernel"]) == (WIDTH // 4, HEADS // 2, head_dim)
    assert shard(attn["value"]["bias"]) == (HEADS // 2, head_dim)
    assert shard(attn["out"]["kernel"]) == (HEADS // 2, head_dim, WIDTH // 4)
    assert shard(attn["out"]["bias"]) == (WIDTH,)
    assert shard(mlp["Dense_0"]["kernel"]) == (WIDTH // 4, MLP // 2)
    assert shard(mlp["Dense_0"]["bias"]) == (MLP // 2,)
    assert shard(mlp["Dense_1"]["kernel"]) == (MLP // 2, WIDTH // 4)
    assert shard(placed["txt"]["token_embedding"]["embedding"]) == (VOCAB // 4, WIDTH)
    assert shard(placed["img"]["embedding"]["kernel"]) == (4, 4, 3, WIDTH // 4)
    assert shard(placed["t"]) == (1,)


@pytest.mark.parametrize("layout", ["fsdp", "fsdp_tp"])
def test_optimizer_state_is_sharded_like_its_params(layout):
    axes, rules = LAYOUTS[layout]
    mesh = sharding.make_mesh(axes)
    optimizer, _ = optim.make_optimizer(base_config().optim, 10)
    state = jax.eval_shape(lambda p: {"params": p, "opt_state": optimizer.init(p)}, _params())
    specs = _named_leaves(sharding.tree_partition_specs(state, rules, mesh))
    param_specs = {k[len("params/"):]: v for k, v in specs.items() if k.startswith("params/")}
    moments = {k: v for k, v in specs.items() if re.search(r"/(mu|nu)/", k)}
    assert len(moments) == 2 * len(param_specs)
    for name, spec in moments.items():
        assert spec == param_specs[re.split(r"/(?:mu|nu)/", name)[1]], name
    assert any(spec != P() for spec in moments.values())


def test_fsdp_tp_needs_heads_divisible_by_the_model_axis():
    mesh = sharding.make_mesh((("data", 2), ("model", 4)))
    heads_error = r"MultiHeadDotProductAttention_0/.*dim 0 \(2\) is not divisible by mesh axis 'model' of size 4"
    with pytest.raises(ValueError, match=heads_error):
        sharding.tree_shardings(_params(), sharding_rules.fsdp_tp(), mesh)


def test_unknown_preset_names_the_choices():
    assert sharding_rules.preset("fsdp", axis="x") == ((sharding_rules.LARGE, "fsdp:x"), (".*", "replicate"))
    with pytest.raises(ValueError, match="Unknown sharding preset 'zero3'.*fsdp_tp"):
        sharding_rules.preset("zero3")
