"""Starting from public checkpoints: sub-trees, position-embedding resampling, frozen params, CLIP KD losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import optim
from jaxsup.config import base_config
from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import convert, resample
from jaxsup.losses import clip_kd
from jaxsup.models.two_tower import TwoTower
from jaxsup.models.vit import ViT

RNG = np.random.default_rng(0)
TOWER = dict(patch_size=2, width=32, depth=2, mlp_dim=64, num_heads=2, pool_type="tok", pre_norm=True,
             patch_bias=False, act="quick_gelu", norm_eps=1e-5, num_classes=None)
TEXT = dict(vocab_size=50, max_len=8, width=32, depth=1, num_heads=2, mlp_dim=64, causal=True, pool_type="argmax",
            mask_padding=False, num_classes=None, act="quick_gelu", norm_eps=1e-5)


# ----------------------------------------------------------------------------- position embeddings
def test_resample_posemb_matches_torch_bilinear():
    posemb = RNG.normal(size=(1, 16, 5)).astype(np.float32)
    np.testing.assert_array_equal(resample.resample_posemb(posemb, (4, 4)), posemb)
    torch = pytest.importorskip("torch")
    grid = torch.tensor(posemb[0].reshape(4, 4, 5)).permute(2, 0, 1)[None]
    for size in [(8, 8), (2, 2), (3, 5), (7, 7)]:
        theirs = torch.nn.functional.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        theirs = theirs[0].permute(1, 2, 0).reshape(1, -1, 5).numpy()
        np.testing.assert_allclose(resample.resample_posemb(posemb, size), theirs, atol=1e-6)
    with pytest.raises(CheckpointError, match="15 positions are not a square patch grid"):
        resample.resample_posemb(posemb[:, :15], (4, 4))


# ----------------------------------------------------------------------------- loading sub-trees
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(flat params of a random two-tower on 8x8 images (4x4 patches), its open_clip safetensors file)."""
    model = TwoTower(image_kwargs=TOWER, text_kwargs=TEXT, embed_dim=16)
    variables = model.init(jax.random.key(1), jnp.zeros((1, 8, 8, 1)), jnp.ones((1, 8), jnp.int32))
    flat = {k: np.asarray(v) for k, v in convert.flatten(variables["params"]).items()}
    path = str(tmp_path_factory.mktemp("ckpt") / "teacher.safetensors")
    convert.write("open_clip", convert.export_flat("open_clip", flat), path)
    return flat, path


def shapes(tree):
    return {k: tuple(v.shape) for k, v in convert.flatten(tree).items()}


def test_image_tower_into_a_vit_at_another_resolution(exported):
    flat, path = exported
    vit = ViT(**TOWER)  # 16x16 images: an 8x8 patch grid instead of 4x4
    expected = shapes(jax.eval_shape(lambda: vit.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1))))["params"])
    loaded = convert.load_for_model(f"open_clip:{path}", expected, subtree="img")
    assert sorted(loaded) == sorted(expected)
    for key in expected:
        want = flat[f"img/{key}"]
        if key == "pos_embedding":
            assert loaded[key].shape == (1, 64, 32)
            want = resample.resample_posemb(want, (8, 8))
        np.testing.assert_allclose(loaded[key], want, rtol=1e-6, atol=1e-7, err_msg=key)


def test_selected_entries_and_bad_selections(exported):
    flat, path = exported
    expected = {k: v.shape for k, v in flat.items() if k.split("/")[0] in ("img", "img_proj")}
    loaded = convert.load_for_model(f"open_clip:{path}", expected, names=("img", "img_proj"))
    assert sorted(loaded) == sorted(expected)
    with pytest.raises(CheckpointError, match="has no sub-tree 'vision'"):
        convert.load_for_model(f"open_clip:{path}", expected, subtree="vision")
    with pytest.raises(CheckpointError, match=r"has no \['image'\] \(its top-level entries: \['img', 'img_proj'"):
        convert.load_for_model(f"open_clip:{path}", expected, names=("image",))
    wider = {**expected, "img_proj/kernel": (32, 8)}
    with pytest.raises(CheckpointError, match=r"img_proj/kernel \(from visual.proj\): checkpoint \(32, 16\) vs model "
                                              r"\(32, 8\)"):
        convert.load_for_model(f"open_clip:{path}", wider, names=("img", "img_proj"))


# ----------------------------------------------------------------------------- frozen params
def test_frozen_params_get_no_update_and_no_state():
    cfg = base_config().optim
    cfg.warmup_steps, cfg.weight_decay, cfg.freeze = 0, 0.1, ("^img/",)
    opt, _ = optim.make_optimizer(cfg, 10)
    params = {"img": {"kernel": jnp.ones((3, 3))}, "txt": {"kernel": jnp.ones((3, 3))}}
    state = opt.init(params)
    leaves = jax.tree.leaves(state)
    assert sum(x.size for x in leaves) < 3 * 9 + 10  # Adam moments for txt only (+ counters)
    for _ in range(3):
        updates, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(params["img"]["kernel"], 1.0)
    assert float(jnp.abs(params["txt"]["kernel"] - 1).min()) > 1e-3
    cfg.freeze = ("^image/",)
    with pytest.raises(ConfigError, match=r"freeze=\('\^image/',\) matches no parameter"):
        optim.make_optimizer(cfg, 10)[0].init(params)


# ----------------------------------------------------------------------------- CLIP KD losses
def np_logit_kd(s, t):
    def sim(zi, zt, lt):
        return np.exp(lt) * zi @ zt.T

    def ce(logits, target_logits):
        p = np.exp(target_logits - target_logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        logq = logits - logits.max(1, keepdims=True)
        logq -= np.log(np.exp(logq).sum(1, keepdims=True))
        return (p * (np.log(p) - logq)).sum(1).mean()  # KL(teacher || student)

    a, b = sim(*s), sim(*t)
    return (ce(a, b) + ce(a.T, b.T)) / 2


def np_feature_kd(s, t):
    return (((s[0] - t[0]) ** 2).sum(1).mean() + ((s[1] - t[1]) ** 2).sum(1).mean()) / 2


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numeric_grad(fn, args, i, eps=1e-5):
    """Central differences of fn w.r.t. args[i] (float64)."""
    x = np.array(args[i], np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[idx] += eps
        lo[idx] -= eps
        grad[idx] = (fn(*args[:i], hi, *args[i + 1:]) - fn(*args[:i], lo, *args[i + 1:])) / (2 * eps)
    return grad


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["logit_kd", "feature_kd"])
def test_clip_kd_losses_match_numpy_values_and_gradients(name, jit):
    b, e = 5, 4
    student = (unit(RNG.normal(size=(b, e))), unit(RNG.normal(size=(b, e))), np.float64(np.log(10.0)))
    teacher = (unit(RNG.normal(size=(b, e))), unit(RNG.normal(size=(b, e))), np.float64(np.log(20.0)))
    ref = {"logit_kd": np_logit_kd, "feature_kd": np_feature_kd}[name]
    ours = getattr(clip_kd, name)

    def loss(zi, zt, lt):
        return ours((zi, zt, lt), tuple(jnp.asarray(x, jnp.float32) for x in teacher))

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))) if jit else jax.value_and_grad(loss, argnums=(0, 1, 2))
    value, grads = fn(*(jnp.asarray(x, jnp.float32) for x in student))
    np.testing.assert_allclose(value, ref(student, teacher), rtol=1e-5)
    flat_ref = lambda zi, zt, lt: ref((zi, zt, lt), teacher)  # noqa: E731
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, numeric_grad(flat_ref, list(student), i), rtol=1e-3, atol=1e-5)
    if name == "logit_kd":  # a student equal to the teacher: 0, and no gradient
        value, grads = jax.value_and_grad(lambda zi: ours((zi, teacher[1], teacher[2]), teacher))(
            jnp.asarray(teacher[0], jnp.float32))
        assert abs(float(value)) < 1e-5 and float(jnp.abs(grads).max()) < 1e-5


# ----------------------------------------------------------------------------- bad input (no PyTorch needed)
def test_bad_files_are_one_clear_error_and_nothing_is_loaded(exported, tmp_path):
    from jaxsup.tasks.common import load_pretrained

    flat, path = exported
    params = convert.nest({k: jnp.asarray(v) for k, v in flat.items()})
    before = jax.tree.map(np.asarray, params)
    data = open(path, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    arrays = convert.export_flat("npz", flat)
    convert.write("npz", arrays, str(tmp_path / "ok.npz"))
    npz = open(tmp_path / "ok.npz", "rb").read()
    (tmp_path / "cut.npz").write_bytes(npz[: len(npz) // 2])
    convert.write("npz", {**arrays, "t": np.ones(1, np.int32)}, str(tmp_path / "int.npz"))
    convert.write("npz", {"Transformer/encoder_norm/scale": np.ones(4, np.float32)}, str(tmp_path / "vit.npz"))
    cases = {
        "open_clip:" + str(tmp_path / "cut.safetensors"): "lies beyond the .* data bytes .*truncated",
        "big_vision:" + str(tmp_path / "cut.npz"): "not a readable .npz file .*truncated",
        "big_vision:" + str(tmp_path / "int.npz"): r"weights must be floating point; found t \(int32\)",
        "big_vision:" + str(tmp_path / "vit.npz"): "Not a big_vision two-tower .*another model family",
        "open_clip:" + str(tmp_path / "absent.safetensors"): "Checkpoint file not found",
    }
    for spec, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_pretrained(spec, params)
    (tmp_path / "model.onnx").write_bytes(data)
    with pytest.raises(ConfigError, match="Cannot tell the format"):
        load_pretrained("open_clip:" + str(tmp_path / "model.onnx"), params)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), before)
    np.testing.assert_array_equal(load_pretrained("big_vision:" + str(tmp_path / "ok.npz"), params)["t"], flat["t"])


def test_finetune_a_vit_from_a_clip_image_tower(exported):
    """task finetune, init_from "open_clip:PATH", init_subtree "img": the tower loads, the new head keeps its init."""
    from jaxsup import experiment, sharding
    from jaxsup.config import set_task
    from jaxsup.tasks.base import DataInfo

    flat, path = exported
    config = base_config()
    set_task(config, "finetune")
    config.model_name, config.model = "vit", {**TOWER, "num_classes": 10}
    config.finetune.init_from, config.finetune.init_subtree = f"open_clip:{path}", "img"
    config.mesh = (("data", 1),)
    mesh = sharding.make_mesh(config.mesh)
    example = {"image": np.zeros((1, 8, 8, 1), np.float32), "label": np.zeros((1,), np.int32)}
    task = experiment.build_task(config, mesh, DataInfo(example, None, None, None))  # no data read
    params, state = task.init(jax.random.key(0), example)
    loaded, _ = task.warm_start(params, state)
    got = {k: np.asarray(v) for k, v in convert.flatten(loaded).items()}
    for key, value in got.items():
        want = np.asarray(convert.flatten(params)[key]) if key.startswith("head/") else flat[f"img/{key}"]
        np.testing.assert_array_equal(value, want, err_msg=key)
