"""open_clip / OpenAI CLIP / big_vision checkpoints in and out, against open_clip itself.

Each open_clip model is built with random weights from a real `model_configs` entry with
small towers (same patch sizes, vocabulary, context length, activations, norms, pooling);
jaxsup imports its state dict and must give the same image and text embeddings and logits
(f32, relative error <= 1e-4); a jaxsup model exported to open_clip's layout must load into
open_clip with strict=True and give jaxsup's outputs.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
safetensors_torch = pytest.importorskip("safetensors.torch")


from interop_helpers import (  # noqa: E402
    build_open_clip, expected_shapes, inputs, jaxsup_kwargs, jaxsup_outputs, random_params, relative_error, shrink,
    torch_outputs,
)
from jaxsup.errors import CheckpointError, ConfigError  # noqa: E402
from jaxsup.interop import convert, files, presets  # noqa: E402
from jaxsup.models.two_tower import TwoTower  # noqa: E402

TOL = 1e-4
# name -> extra config (quick_gelu: OpenAI's activation).
CONFIGS = {"ViT-B-32": {}, "ViT-B-16": {"quick_gelu": True}, "ViT-L-14": {}, "ViT-B-16-SigLIP": {}}


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    """(cfg, open_clip model, jaxsup model, images, tokens) for one small config."""
    cfg = shrink(presets.open_clip_config(request.param))
    cfg.update(CONFIGS[request.param])
    kwargs = jaxsup_kwargs(cfg)
    model = TwoTower(**kwargs)
    images, tokens = inputs(cfg, kwargs)
    return cfg, build_open_clip(cfg), model, kwargs, images, tokens


def state_dict_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def import_checked(arrays, kwargs, model, images, tokens):
    flat, origin = convert.import_arrays("open_clip", arrays, kwargs["image_kwargs"]["num_heads"],
                                         kwargs["text_kwargs"]["num_heads"], "test")
    convert.check_against(flat, expected_shapes(model, images, tokens), origin, "test")
    return flat


def assert_close(ours: dict, theirs: dict) -> None:
    for key in ("img", "txt", "logits"):
        assert relative_error(ours[key], theirs[key]) <= TOL, (key, relative_error(ours[key], theirs[key]))


def test_import_matches_open_clip(case):
    cfg, oc_model, model, kwargs, images, tokens = case
    flat = import_checked(state_dict_arrays(oc_model), kwargs, model, images, tokens)
    assert_close(jaxsup_outputs(model, flat, images, tokens), torch_outputs(oc_model, images, tokens))


def test_export_loads_strict_into_open_clip(case, tmp_path):
    cfg, oc_model, model, kwargs, images, tokens = case
    flat = random_params(model, images, tokens, seed=1)
    path = str(tmp_path / "model.safetensors")
    convert.write("open_clip", convert.export_flat("open_clip", flat), path)
    fresh = copy.deepcopy(oc_model)
    fresh.load_state_dict(safetensors_torch.load_file(path), strict=True)
    assert_close(torch_outputs(fresh, images, tokens), jaxsup_outputs(model, flat, images, tokens))
    # and back: the exported file imports to the same function
    back, origin = convert.import_file("open_clip", path, kwargs["image_kwargs"]["num_heads"],
                                       kwargs["text_kwargs"]["num_heads"])
    assert_close(jaxsup_outputs(model, back, images, tokens), jaxsup_outputs(model, flat, images, tokens))


def test_pt_and_safetensors_files_import_alike(case, tmp_path):
    _, oc_model, model, kwargs, images, tokens = case
    pt, st = str(tmp_path / "m.pt"), str(tmp_path / "m.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in oc_model.state_dict().items()}}, pt)
    safetensors_torch.save_file(oc_model.state_dict(), st)
    heads = kwargs["image_kwargs"]["num_heads"], kwargs["text_kwargs"]["num_heads"]
    a, _ = convert.import_file("open_clip", pt, *heads)
    b, _ = convert.import_file("open_clip", st, *heads)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_big_vision_npz_matches_open_clips_npz_loader(tmp_path):
    """A big_vision-layout npz (scanned blocks, "params/" prefix) read by open_clip's own
    load_big_vision_weights and by jaxsup gives the same model; our npz export reads back too."""
    from open_clip.convert import load_big_vision_weights

    cfg = shrink(presets.open_clip_config("ViT-B-16-SigLIP"))
    kwargs = jaxsup_kwargs(cfg)
    model = TwoTower(**kwargs)
    images, tokens = inputs(cfg, kwargs)
    flat = random_params(model, images, tokens, seed=2)
    exported = convert.export_flat("npz", flat)
    # scan the image tower's blocks, as big_vision saves them with scan=True
    blocks = sorted({k for k in exported if k.startswith("img/Transformer/encoderblock_")})
    leaves = sorted({k.split("/", 3)[3] for k in blocks})
    scanned = {k: v for k, v in exported.items() if k not in blocks}
    for leaf in leaves:
        scanned[f"img/Transformer/encoderblock/{leaf}"] = np.stack(
            [exported[f"img/Transformer/encoderblock_{i}/{leaf}"] for i in range(2)])
    path = str(tmp_path / "siglip.npz")
    np.savez(path, **{f"params/{k}": v for k, v in scanned.items()})
    oc_model = build_open_clip(cfg, seed=3)
    load_big_vision_weights(oc_model, path)
    ours, origin = convert.import_file("big_vision", path, 0, 0)
    convert.check_against(ours, expected_shapes(model, images, tokens), origin, "npz")
    assert_close(jaxsup_outputs(model, ours, images, tokens), torch_outputs(oc_model, images, tokens))
    out = str(tmp_path / "export.npz")
    convert.write("npz", exported, out)
    again, _ = convert.import_file("big_vision", out, 0, 0)
    for k in flat:
        np.testing.assert_array_equal(again[k], flat[k])


# ---- bad input: one CheckpointError / ConfigError each, naming the cause ----


@pytest.fixture(scope="module")
def b32():
    cfg = shrink(presets.open_clip_config("ViT-B-32"))
    kwargs = jaxsup_kwargs(cfg)
    return cfg, build_open_clip(cfg), TwoTower(**kwargs), kwargs, *inputs(cfg, kwargs)


def test_state_dict_of_another_architecture_names_keys_and_shapes(b32):
    _, _, model, kwargs, images, tokens = b32
    other = shrink(presets.open_clip_config("ViT-B-16"), layers=3)  # patch 16, one more block
    arrays = state_dict_arrays(build_open_clip(other))
    with pytest.raises(CheckpointError) as e:
        import_checked(arrays, kwargs, model, images, tokens)
    msg = str(e.value)
    assert "img/embedding/kernel (from visual.conv1.weight): checkpoint (16, 16, 3, 64) vs model (32, 32, 3, 64)" in msg
    assert "img/encoder/encoderblock_2/LayerNorm_0/scale (from visual.transformer.resblocks.2.ln_1.weight) (64,)" in msg


def test_missing_and_unexpected_keys_are_named(b32):
    _, oc_model, model, kwargs, images, tokens = b32
    arrays = state_dict_arrays(oc_model)
    del arrays["visual.proj"]
    arrays["visual.extra.weight"] = np.zeros((3, 4), np.float32)
    with pytest.raises(CheckpointError, match=r"missing keys: visual.proj .*unexpected keys: visual.extra.weight \(3, 4\)"):
        import_checked(arrays, kwargs, model, images, tokens)


def test_wrong_dtype_and_other_family(b32, tmp_path):
    _, oc_model, model, kwargs, images, tokens = b32
    arrays = state_dict_arrays(oc_model)
    arrays["visual.proj"] = arrays["visual.proj"].astype(np.int32)
    with pytest.raises(CheckpointError, match=r"floating point; found visual.proj \(int32\)"):
        import_checked(arrays, kwargs, model, images, tokens)
    with pytest.raises(CheckpointError, match="Not an open_clip / OpenAI CLIP ViT state dict"):
        convert.import_arrays("open_clip", {"conv1.weight": np.zeros((2, 3), np.float32)}, 4, 2, "x")
    vit_npz = str(tmp_path / "vit.npz")  # a big_vision image classifier, not a two-tower model
    np.savez(vit_npz, **{"Transformer/encoder_norm/scale": np.ones(4, np.float32), "head/kernel": np.ones((4, 2))})
    with pytest.raises(CheckpointError, match="Not a big_vision two-tower .*another model family"):
        convert.import_file("big_vision", vit_npz, 0, 0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz"])
def test_truncated_files(b32, tmp_path, suffix):
    _, oc_model, *_ = b32
    path = str(tmp_path / f"m{suffix}")
    if suffix == ".safetensors":
        safetensors_torch.save_file(oc_model.state_dict(), path)
    elif suffix == ".pt":
        torch.save(oc_model.state_dict(), path)
    else:
        np.savez(path, **state_dict_arrays(oc_model))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        files.read_arrays(path)
    with pytest.raises(CheckpointError, match="not found"):
        files.read_arrays(path + ".absent")


def test_export_refuses_to_overwrite(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="Refusing to overwrite"):
        convert.write("open_clip", {"t": np.zeros(1, np.float32)}, str(path))
    assert path.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["x.safetensors"]


@pytest.mark.slow
def test_real_size_vit_b32_import():
    """The full ViT-B/32 (224 px, 12+12 blocks, 77 tokens) at its real size."""
    cfg = presets.open_clip_config("ViT-B-32")
    oc_model = build_open_clip(cfg)
    kwargs = presets.two_tower_kwargs(cfg)
    model = TwoTower(**kwargs)
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a diagram!"]).numpy().astype(np.int32)
    flat = import_checked(state_dict_arrays(oc_model), kwargs, model, images, tokens)
    assert_close(jaxsup_outputs(model, flat, images, tokens), torch_outputs(oc_model, images, tokens))
