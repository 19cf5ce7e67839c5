"""open_clip model configs (`model_configs/<name>.json`) -> jaxsup `two_tower` kwargs.

    kwargs = two_tower_kwargs(open_clip_config("ViT-B-32"))   # config.model for model_name "two_tower"

The JSON files are read from the installed open_clip package without importing
it (no torch needed), or from a path. Supported: open_clip's own ViT towers
("clip" layout: ViT-B-32, ViT-B-16, ViT-L-14, *-quickgelu, ...) and its SigLIP
ViTs whose image tower is timm's `vit_<size>_patch<p>_siglip_<res>` ("siglip").
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from typing import Any

from jaxsup.errors import ConfigError

# timm SigLIP ViT size -> (width, depth, mlp_dim, num_heads), as in timm's vision_transformer.py.
TIMM_SIGLIP_SIZES = {"base": (768, 12, 3072, 12), "large": (1024, 24, 4096, 16), "so400m": (1152, 27, 4304, 16)}
_TIMM_SIGLIP = re.compile(r"^vit_(base|large|so400m)_patch(\d+)_siglip_(\d+)$")
TORCH_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, open_clip's CLIP towers


def open_clip_package_dir() -> str:
    """Directory of the installed open_clip package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("open_clip is not installed: pip install 'jaxsup[interop]' (or give a config path).")
    return list(spec.submodule_search_locations)[0]


def open_clip_config(name_or_path: str) -> dict[str, Any]:
    """An open_clip model config by name ("ViT-B-32") or JSON path."""
    path = name_or_path
    if not name_or_path.endswith(".json"):
        path = os.path.join(open_clip_package_dir(), "model_configs", f"{name_or_path}.json")
    if not os.path.isfile(path):
        raise ConfigError(f"No open_clip model config {name_or_path!r} (looked for {path!r}).")
    with open(path) as f:
        return json.load(f)


def layout_of(cfg: dict[str, Any]) -> str:
    """"siglip" (timm SigLIP image tower) or "clip" (open_clip's own ViT)."""
    timm_name = cfg["vision_cfg"].get("timm_model_name")
    if timm_name is None:
        return "clip"
    if _TIMM_SIGLIP.match(timm_name) and cfg["vision_cfg"].get("timm_pool") == "map":
        return "siglip"
    raise ConfigError(f"Unsupported open_clip image tower {timm_name!r}: jaxsup imports open_clip ViTs and "
                      f"timm SigLIP ViTs ({_TIMM_SIGLIP.pattern}, timm_pool 'map').")


def _image_kwargs(cfg: dict[str, Any], layout: str, act: str) -> tuple[dict[str, Any], int]:
    v = cfg["vision_cfg"]
    if layout == "siglip":
        size, patch, _ = _TIMM_SIGLIP.match(v["timm_model_name"]).groups()
        width, depth, mlp_dim, heads = TIMM_SIGLIP_SIZES[size]
        return dict(patch_size=int(patch), width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                    pool_type="map", act="gelu_erf", norm_eps=1e-6, num_classes=None), v["image_size"]
    if isinstance(v.get("layers"), (list, tuple)) or v.get("attentional_pool") or v.get("ls_init_value"):
        raise ConfigError("Unsupported open_clip vision_cfg (ResNet, attentional pool or layer scale).")
    width = v["width"]
    return dict(patch_size=v["patch_size"], width=width, depth=v["layers"],
                mlp_dim=int(width * v.get("mlp_ratio", 4.0)), num_heads=width // v.get("head_width", 64),
                pool_type="tok", pre_norm=not v.get("no_ln_pre", False), patch_bias=False, act=act,
                norm_eps=TORCH_LN_EPS, num_classes=None), v["image_size"]


def _text_kwargs(cfg: dict[str, Any], layout: str, act: str) -> dict[str, Any]:
    t = cfg["text_cfg"]
    width = t.get("width", 512)
    out = dict(vocab_size=t.get("vocab_size", 49408), max_len=t.get("context_length", 77), width=width,
               depth=t.get("layers", 12), num_heads=t.get("heads", 8), mlp_dim=int(width * t.get("mlp_ratio", 4.0)),
               mask_padding=False, num_classes=None)
    if layout == "siglip":
        eps = t.get("norm_kwargs", {}).get("eps", TORCH_LN_EPS)
        return dict(out, causal=False, pool_type="last", act="gelu_erf", norm_eps=eps, num_classes=cfg["embed_dim"])
    return dict(out, causal=True, pool_type="argmax", act=act, norm_eps=TORCH_LN_EPS)


def two_tower_kwargs(cfg: dict[str, Any], quick_gelu: bool | None = None) -> dict[str, Any]:
    """jaxsup `two_tower` kwargs equivalent to an open_clip model config.

    quick_gelu: None takes the config's own flag (OpenAI's weights need True, as
    open_clip's `-quickgelu` configs and `pretrained="openai"` set).
    """
    layout = layout_of(cfg)
    quick = cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    act = "quick_gelu" if quick else "gelu_erf"
    image_kwargs, _ = _image_kwargs(cfg, layout, act)
    loss = "sigmoid" if layout == "siglip" else "softmax"
    kwargs = dict(image="vit", image_kwargs=image_kwargs, text="text_transformer",
                  text_kwargs=_text_kwargs(cfg, layout, act), embed_dim=cfg["embed_dim"], loss=loss,
                  project=layout == "clip")
    if "init_logit_bias" in cfg:
        kwargs["bias_init"] = float(cfg["init_logit_bias"])
    return kwargs


def image_size(cfg: dict[str, Any]) -> int:
    """The config's square input resolution."""
    size = cfg["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else size[0]
