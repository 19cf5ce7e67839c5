"""open_clip / OpenAI CLIP state dicts <-> jaxsup two-tower parameters.

Two layouts (open_clip's own names, as in its `model.state_dict()`):
  "clip"    OpenAI CLIP and open_clip ViT models (`visual.conv1`, `visual.transformer.resblocks.{i}`,
            top-level `token_embedding`, `transformer.resblocks.{i}`, `text_projection` [D, E]);
  "siglip"  open_clip's SigLIP ViTs: a timm image trunk (`visual.trunk.blocks.{i}`, attention
            pool `visual.trunk.attn_pool`) and a `text.` tower whose projection is a Linear.

jaxsup names (TwoTower): img/..., txt/..., img_proj/kernel, txt_proj/kernel, t, b.
CLIP adds its position embedding to the class token too: on import jaxsup's
`cls` = class_embedding + positional_embedding[0]; on export
positional_embedding[0] = 0 and class_embedding = cls (the same function).
"""
from __future__ import annotations

import re

import numpy as np

from jaxsup.errors import CheckpointError
from jaxsup.interop.rules import (
    Rule, apply_rules, attention, conv, dense, layer_norm, leading_one, origins, same, scalar,
)

LAYOUTS = ("clip", "siglip")
# A key only this layout has -> layout.
_MARKERS = {"visual.conv1.weight": "clip", "visual.trunk.patch_embed.proj.weight": "siglip"}


def detect_layout(flat: dict[str, np.ndarray]) -> str:
    """"clip" or "siglip" from the keys; CheckpointError for any other state dict."""
    for key, layout in _MARKERS.items():
        if key in flat:
            return layout
    raise CheckpointError(
        f"Not an open_clip / OpenAI CLIP ViT state dict: none of {sorted(_MARKERS)} is present "
        f"(first keys: {sorted(flat)[:5]})."
    )


def count_blocks(flat: dict[str, object], prefix: str) -> int:
    """Number of `<prefix>{i}.` (or `<prefix>{i}/`) blocks among the keys."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)[./]")
    found = {int(m.group(1)) for k in flat if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _block(ours: str, theirs: str, heads: int, layout: str) -> list[Rule]:
    """One pre-LN encoder block: open_clip ResidualAttentionBlock ("clip") or timm Block ("siglip")."""
    if layout == "clip":
        ln1, ln2, fc1, fc2 = "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"
        attn = attention(f"{ours}/MultiHeadDotProductAttention_0", f"{theirs}.attn.", heads, "in_proj_", "out_proj.")
    else:
        ln1, ln2, fc1, fc2 = "norm1", "norm2", "mlp.fc1", "mlp.fc2"
        attn = attention(f"{ours}/MultiHeadDotProductAttention_0", f"{theirs}.attn.", heads, "qkv.", "proj.")
    return [
        *layer_norm(f"{ours}/LayerNorm_0", f"{theirs}.{ln1}"), *attn,
        *layer_norm(f"{ours}/LayerNorm_1", f"{theirs}.{ln2}"),
        *dense(f"{ours}/MlpBlock_0/Dense_0", f"{theirs}.{fc1}"), *dense(f"{ours}/MlpBlock_0/Dense_1", f"{theirs}.{fc2}"),
    ]


def _clip_class_token() -> Rule:
    """(cls [1,1,D], pos [1,N,D]) <-> (class_embedding [D], positional_embedding [N+1, D])."""

    def to_ours(cls, pos):
        return (cls + pos[0])[None, None], pos[None, 1:]

    def to_theirs(cls, pos):
        return cls[0, 0], np.concatenate([np.zeros_like(pos[0, :1]), pos[0]], axis=0)

    return Rule(("img/cls", "img/pos_embedding"), ("visual.class_embedding", "visual.positional_embedding"),
                to_ours, to_theirs)


def image_rules(layout: str, depth: int, heads: int) -> list[Rule]:
    """Rules for the image tower (and its projection, for "clip")."""
    if layout == "clip":
        rules = [conv("img/embedding/kernel", "visual.conv1.weight"), _clip_class_token(),
                 *layer_norm("img/pre_norm", "visual.ln_pre"),
                 *layer_norm("img/encoder/encoder_norm", "visual.ln_post"),
                 same("img_proj/kernel", "visual.proj")]
        theirs = "visual.transformer.resblocks."
    else:
        t = "visual.trunk."
        rules = [conv("img/embedding/kernel", f"{t}patch_embed.proj.weight"),
                 same("img/embedding/bias", f"{t}patch_embed.proj.bias"),
                 same("img/pos_embedding", f"{t}pos_embed"),
                 *layer_norm("img/encoder/encoder_norm", f"{t}norm"),
                 same("img/MAPHead_0/probe", f"{t}attn_pool.latent"),
                 *attention("img/MAPHead_0/MultiHeadDotProductAttention_0", f"{t}attn_pool.", heads,
                            "", "proj.", q="q.", kv="kv."),
                 *layer_norm("img/MAPHead_0/LayerNorm_0", f"{t}attn_pool.norm"),
                 *dense("img/MAPHead_0/MlpBlock_0/Dense_0", f"{t}attn_pool.mlp.fc1"),
                 *dense("img/MAPHead_0/MlpBlock_0/Dense_1", f"{t}attn_pool.mlp.fc2")]
        theirs = f"{t}blocks."
    for i in range(depth):
        rules += _block(f"img/encoder/encoderblock_{i}", f"{theirs}{i}", heads, layout)
    return rules


def text_prefix(layout: str) -> str:
    """"" for CLIP (its text tower is at the top level), "text." for open_clip's custom text tower."""
    return "" if layout == "clip" else "text."


def text_rules(layout: str, depth: int, heads: int) -> list[Rule]:
    """Rules for the text tower and its projection."""
    p = text_prefix(layout)
    rules = [same("txt/token_embedding/embedding", f"{p}token_embedding.weight"),
             leading_one("txt/pos_embedding", f"{p}positional_embedding"),
             *layer_norm("txt/encoder/encoder_norm", f"{p}ln_final")]
    if layout == "clip":
        rules.append(same("txt_proj/kernel", f"{p}text_projection"))
    else:
        rules += dense("txt/head", f"{p}text_projection")
    for i in range(depth):
        rules += _block(f"txt/encoder/encoderblock_{i}", f"{p}transformer.resblocks.{i}", heads, "clip")
    return rules


def two_tower_rules(layout: str, img_depth: int, txt_depth: int, img_heads: int, txt_heads: int,
                    bias: bool) -> list[Rule]:
    """All rules of a two-tower model; `bias` adds the learned logit bias (SigLIP)."""
    rules = [*image_rules(layout, img_depth, img_heads), *text_rules(layout, txt_depth, txt_heads),
             scalar("t", "logit_scale")]
    return rules + [scalar("b", "logit_bias")] if bias else rules


# Integer buffers OpenAI's TorchScript checkpoints carry besides the weights.
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def clean_state_dict(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a DataParallel "module." prefix and OpenAI's integer extras."""
    flat = {k.removeprefix("module."): v for k, v in flat.items()}
    return {k: v for k, v in flat.items() if k not in _OPENAI_EXTRAS}


def import_two_tower(
    flat: dict[str, np.ndarray], img_heads: int, txt_heads: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """open_clip state dict -> (jaxsup flat params, our key -> source key); CheckpointError on layout."""
    flat = clean_state_dict(flat)
    layout = detect_layout(flat)
    img = "visual.transformer.resblocks." if layout == "clip" else "visual.trunk.blocks."
    rules = two_tower_rules(layout, count_blocks(flat, img), count_blocks(flat, text_prefix(layout) + "transformer.resblocks."),
                            img_heads, txt_heads, "logit_bias" in flat)
    return apply_rules(rules, flat, "ours", f"open_clip {layout} state dict"), origins(rules)


def export_two_tower(flat: dict[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """jaxsup flat two-tower params -> open_clip state dict of `layout` ("clip" or "siglip")."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"Unknown open_clip layout {layout!r}; expected one of {LAYOUTS}.")
    rules = two_tower_rules(layout, count_blocks(flat, "img/encoder/encoderblock_"),
                            count_blocks(flat, "txt/encoder/encoderblock_"), 0, 0, "b" in flat)
    return apply_rules(rules, flat, "theirs", f"jaxsup params (export to open_clip {layout})")
