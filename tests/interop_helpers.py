"""Shared by the interop tests: small open_clip models derived from the real configs, and
the jaxsup side (build, load a flat tree, run under jit)."""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from jaxsup.interop import convert, presets
from jaxsup.models.two_tower import TwoTower

VOCAB_EOT = 49407  # CLIP's end-of-text id, the largest in its vocabulary


def shrink(cfg: dict, width: int = 64, layers: int = 2) -> dict:
    """A real open_clip config with small towers: same patch size, vocab and context length;
    a 2x2 patch grid, `layers` blocks, heads of 16 dims."""
    cfg = copy.deepcopy(cfg)
    v = cfg["vision_cfg"]
    if "timm_model_name" not in v:
        v.update(width=width, layers=layers, head_width=16, image_size=2 * v["patch_size"])
    cfg["text_cfg"].update(width=width // 2, heads=2, layers=layers)
    cfg["embed_dim"] = width // 2 if "timm_model_name" not in v else width
    return cfg


def build_open_clip(cfg: dict, seed: int = 0):
    """A random-init open_clip model of `cfg` (eval mode); SigLIP gets a small timm trunk."""
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    torch.manual_seed(seed)
    if "timm_model_name" not in cfg["vision_cfg"]:
        return CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg.get("quick_gelu", False)).eval()
    from timm.models.vision_transformer import VisionTransformer

    model = CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                           init_logit_bias=cfg.get("init_logit_bias"))
    patch = cfg["vision_cfg"].get("test_patch", 16)
    model.visual.trunk = VisionTransformer(  # timm's vit_*_siglip_* arguments, small
        img_size=2 * patch, patch_size=patch, embed_dim=cfg["embed_dim"], depth=2, num_heads=4,
        class_token=False, global_pool="map", num_classes=0)
    return model.eval()


def jaxsup_kwargs(cfg: dict) -> dict:
    """two_tower kwargs for `cfg`, with the small timm trunk's sizes for SigLIP."""
    kwargs = presets.two_tower_kwargs(cfg)
    if kwargs["image_kwargs"]["pool_type"] == "map":
        patch = cfg["vision_cfg"].get("test_patch", 16)
        kwargs["image_kwargs"].update(width=cfg["embed_dim"], depth=2, num_heads=4, mlp_dim=4 * cfg["embed_dim"],
                                      patch_size=patch)
    return kwargs


def inputs(cfg: dict, model_kwargs: dict, batch: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images [B, S, S, 3] and token rows [B, L] like open_clip's tokenizer's: SOT, ids (some 0),
    EOT (the largest id), zero padding; SigLIP rows are full length."""
    rng = np.random.default_rng(seed)
    ik, tk = model_kwargs["image_kwargs"], model_kwargs["text_kwargs"]
    size = 2 * ik["patch_size"]
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    vocab, length = tk["vocab_size"], tk["max_len"]
    tokens = rng.integers(0, vocab - 2, size=(batch, length))
    if tk["pool_type"] == "argmax":
        for i, n in enumerate(rng.integers(3, length, size=batch)):
            tokens[i, 0], tokens[i, n - 1], tokens[i, n:] = vocab - 2, vocab - 1, 0
        tokens[:, 1] = 0  # id 0 is a real token ("!") in CLIP's vocabulary
    return images, tokens.astype(np.int32)


def torch_outputs(model, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """open_clip's normalised embeddings and logits."""
    import torch

    with torch.no_grad():
        zi = model.encode_image(torch.from_numpy(images.transpose(0, 3, 1, 2)), normalize=True)
        zt = model.encode_text(torch.from_numpy(tokens.astype(np.int64)), normalize=True)
        logits = model.logit_scale.exp() * zi @ zt.T
        if getattr(model, "logit_bias", None) is not None:
            logits = logits + model.logit_bias
    return {"img": zi.numpy(), "txt": zt.numpy(), "logits": logits.numpy()}


def expected_shapes(model: TwoTower, images: np.ndarray, tokens: np.ndarray) -> dict[str, tuple[int, ...]]:
    tree = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
    return {k: v.shape for k, v in convert.flatten(tree).items()}


_JITTED: dict[int, tuple[TwoTower, object]] = {}


def _jitted(model: TwoTower):
    """One jitted forward per model object (compiled once per input shape)."""
    if id(model) not in _JITTED:
        def run(params, images, tokens):
            zi, zt, out = model.apply({"params": params}, images, tokens)
            return zi, zt, out["t"] * zi @ zt.T + out.get("bias", 0.0)

        _JITTED[id(model)] = (model, jax.jit(run))
    return _JITTED[id(model)][1]


def jaxsup_outputs(model: TwoTower, flat: dict, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """jaxsup's normalised embeddings and logits, under jit."""
    params = convert.nest({k: jnp.asarray(v) for k, v in flat.items()})
    zi, zt, logits = _jitted(model)(params, images, tokens)
    return {"img": np.asarray(zi), "txt": np.asarray(zt), "logits": np.asarray(logits)}


def random_params(model: TwoTower, images: np.ndarray, tokens: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Random N(0, 0.1^2) values for every parameter of `model` (class token, norms and biases
    included, unlike an init), flat NumPy; cheaper than compiling the init."""
    rng = np.random.default_rng(seed)
    return {k: (0.1 * rng.normal(size=shape)).astype(np.float32)
            for k, shape in expected_shapes(model, images, tokens).items()}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
