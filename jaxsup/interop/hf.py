"""Hugging Face `CLIPModel` / `SiglipModel` folders <-> jaxsup two-tower parameters.

    flat, origin, kwargs = import_folder("/ckpt/clip-vit-base-patch32")   # --init hf:DIR
    write_folder(flat, model_kwargs, "/tmp/out")    # config.json + model.safetensors for from_pretrained

A folder holds config.json (`architectures` ["CLIPModel"] or ["SiglipModel"]) and
model.safetensors, or shards named by model.safetensors.index.json. HF's names
(the state dicts of transformers 5.x `CLIPModel` / `SiglipModel`):
  CLIP    vision_model.embeddings.{class_embedding, patch_embedding (no bias), position_embedding [N+1, D]},
          vision_model.pre_layrnorm, .encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm1/2, mlp.fc1/2},
          .post_layernorm, visual_projection [E, D]; text_model.embeddings.{token,position}_embedding,
          text_model.encoder.layers.{i}, .final_layer_norm, text_projection [E, D]; logit_scale [].
  SigLIP  no class token or pre-norm, a patch bias, position_embedding [N, D], a MAP head
          vision_model.head.{probe, attention (nn.MultiheadAttention), layernorm, mlp}; the text
          tower pools the last position through text_model.head (Linear); logit_scale [1], logit_bias [1].
The CLIP class token gets its position embedding added on import (jaxsup's `cls`), as in open_clip.py.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import files
from jaxsup.interop.open_clip import count_blocks
from jaxsup.interop.rules import (
    Rule, apply_rules, attention, attention_out, conv, dense, layer_norm, leading_one, linear, origins, packed_heads, same, scalar,
)

ARCHITECTURES = {"CLIPModel": "clip", "SiglipModel": "siglip"}
MODEL_TYPES = {"clip": "clip", "siglip": "siglip"}
# HF hidden_act -> jaxsup act (jaxsup.models.transformer.ACTIVATIONS), and back.
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu_erf", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu_erf": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"


# ------------------------------------------------------------------ reading the folder
def read_config(folder: str) -> tuple[dict[str, Any], str]:
    """(config.json, "clip" | "siglip"); CheckpointError naming config.json when absent or another model."""
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise CheckpointError(f"Hugging Face checkpoint folder not found: {folder!r}.")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found: a Hugging Face model folder needs its config.json.")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CheckpointError(f"{path!r} is not valid JSON ({e}).") from None
    archs = cfg.get("architectures") or []
    found = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if not found and cfg.get("model_type") in MODEL_TYPES and not archs:
        found = [MODEL_TYPES[cfg["model_type"]]]
    if not found:
        raise CheckpointError(f"{path!r} describes {archs or cfg.get('model_type')!r}; jaxsup imports "
                              f"{sorted(ARCHITECTURES)} only.")
    return cfg, found[0]


def read_weights(folder: str) -> dict[str, np.ndarray]:
    """{name: array} from model.safetensors or the shards its index names; CheckpointError naming a
    missing file."""
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index!r} is not a safetensors index with a weight_map ({e}).") from None
        for shard in shards:
            if not os.path.isfile(os.path.join(folder, shard)):
                raise CheckpointError(f"Shard {os.path.join(folder, shard)!r} named by {index!r} not found.")
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out.update(files.read_arrays(os.path.join(folder, shard)))
        return out
    path = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path!r} not found (nor {INDEX}): the folder holds no safetensors weights.")
    return files.read_arrays(path)


# ------------------------------------------------------------------ config <-> jaxsup kwargs
def _tower(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    return cfg.get(f"{name}_config") or cfg.get(f"{name}_config_dict") or {}  # _dict: configs before transformers 4.2x


def _act(tower: dict[str, Any], default: str, where: str) -> str:
    act = tower.get("hidden_act", default)
    if act not in ACTS:
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(ACTS)}.")
    return ACTS[act]


def _size(value: Any) -> int:
    return int(value if isinstance(value, int) else value[0])


def two_tower_kwargs(cfg: dict[str, Any], arch: str, where: str = "config.json") -> dict[str, Any]:
    """jaxsup `two_tower` kwargs equivalent to a CLIPConfig / SiglipConfig dict (HF's defaults filled in)."""
    clip = arch == "clip"
    v, t = _tower(cfg, "vision"), _tower(cfg, "text")
    default_act = "quick_gelu" if clip else "gelu_pytorch_tanh"
    eps = 1e-5 if clip else 1e-6
    width, twidth = v.get("hidden_size", 768), t.get("hidden_size", 512 if clip else 768)
    image = dict(patch_size=_size(v.get("patch_size", 32 if clip else 16)), width=width,
                 depth=v.get("num_hidden_layers", 12), mlp_dim=v.get("intermediate_size", 3072),
                 num_heads=v.get("num_attention_heads", 12), pool_type="tok" if clip else "map", pre_norm=clip,
                 patch_bias=not clip, act=_act(v, default_act, where), norm_eps=v.get("layer_norm_eps", eps),
                 num_classes=None)
    text = dict(vocab_size=t.get("vocab_size", 49408 if clip else 32000),
                max_len=t.get("max_position_embeddings", 77 if clip else 64), width=twidth,
                depth=t.get("num_hidden_layers", 12), num_heads=t.get("num_attention_heads", 8 if clip else 12),
                mlp_dim=t.get("intermediate_size", 2048 if clip else 3072), causal=clip,
                pool_type="argmax" if clip else "last", mask_padding=False, act=_act(t, default_act, where),
                norm_eps=t.get("layer_norm_eps", eps), num_classes=None)
    if clip:
        eos = t.get("eos_token_id", 49407)
        if eos not in (2, text["vocab_size"] - 1):
            raise ConfigError(f"{where}: text eos_token_id {eos} is not the largest id ({text['vocab_size'] - 1}); "
                              "jaxsup pools CLIP text at the largest id.")
        return dict(image="vit", image_kwargs=image, text="text_transformer", text_kwargs=text,
                    embed_dim=cfg.get("projection_dim", 512), loss="softmax", project=True)
    text["num_classes"] = t.get("projection_size") or twidth
    if not v.get("vision_use_head", True):
        raise ConfigError(f"{where}: vision_use_head false (no MAP head) is not supported.")
    return dict(image="vit", image_kwargs=image, text="text_transformer", text_kwargs=text, embed_dim=width,
                loss="sigmoid", project=False)


# What HF's text towers do, in jaxsup's TextTransformer options (its defaults: causal, "eos", mask_padding).
_TEXT_DEFAULTS = dict(causal=True, pool_type="eos", mask_padding=True)
HF_TEXT = {True: dict(causal=True, pool_type="argmax", mask_padding=False),  # CLIPModel
           False: dict(causal=False, pool_type="last", mask_padding=False)}  # SiglipModel


def check_text_tower(text_kwargs: dict[str, Any], clip: bool) -> None:
    """ConfigError unless the run's text tower does what HF's CLIP (clip) / SigLIP text tower does
    (options that leave no trace in the parameters)."""
    want = HF_TEXT[clip]
    have = {k: text_kwargs.get(k, _TEXT_DEFAULTS[k]) for k in want}
    if have != want:
        raise ConfigError(f"The run's text tower {have} has no Hugging Face {'CLIP' if clip else 'SigLIP'} "
                          f"equivalent (it needs {want}).")


def hf_config(flat: dict[str, np.ndarray], model: dict[str, Any]) -> dict[str, Any]:
    """config.json for jaxsup flat params, sizes read from the shapes; `model` (the run's two_tower
    kwargs) gives act and norm_eps of each tower."""
    clip = "img/MAPHead_0/probe" not in flat
    check_text_tower(dict(model.get("text_kwargs") or {}), clip)
    patch, _, channels, width = flat["img/embedding/kernel"].shape
    n_pos = flat["img/pos_embedding"].shape[1]
    side = int(round(n_pos ** 0.5))
    vocab, twidth = flat["txt/token_embedding/embedding"].shape

    def tower(prefix: str, kwargs: dict[str, Any], hidden: int) -> dict[str, Any]:
        block = f"{prefix}/encoder/encoderblock_0"
        act = kwargs.get("act", "gelu_tanh")
        if act not in HF_ACTS:
            raise ConfigError(f"act {act!r} has no Hugging Face equivalent; expected one of {sorted(HF_ACTS)}.")
        return dict(hidden_size=int(hidden), intermediate_size=int(flat[f"{block}/MlpBlock_0/Dense_0/kernel"].shape[1]),
                    num_hidden_layers=count_blocks(flat, f"{prefix}/encoder/encoderblock_"),
                    num_attention_heads=int(flat[f"{block}/MultiHeadDotProductAttention_0/query/kernel"].shape[1]),
                    hidden_act=HF_ACTS[act], layer_norm_eps=float(kwargs.get("norm_eps", 1e-6)))

    vision = dict(tower("img", dict(model.get("image_kwargs") or {}), width), num_channels=int(channels),
                  image_size=int(side * patch), patch_size=int(patch))
    text = dict(tower("txt", dict(model.get("text_kwargs") or {}), twidth), vocab_size=int(vocab),
                max_position_embeddings=int(flat["txt/pos_embedding"].shape[1]))
    if clip:
        embed = int(flat["img_proj/kernel"].shape[1])
        # eos_token_id 2 selects HF's argmax pooling (modeling_clip.py), jaxsup's "argmax" for any tokenizer
        text.update(eos_token_id=2, bos_token_id=None, pad_token_id=0, projection_dim=embed)
        vision["projection_dim"] = embed
        return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=embed,
                    logit_scale_init_value=float(np.reshape(flat["t"], ())), text_config=text, vision_config=vision)
    text["projection_size"] = int(flat["txt/head/kernel"].shape[1])
    return dict(architectures=["SiglipModel"], model_type="siglip", text_config=text, vision_config=vision)


# ------------------------------------------------------------------ rules
def _attention(ours: str, theirs: str, heads: int) -> list[Rule]:
    """flax MultiHeadDotProductAttention <-> HF separate q_proj / k_proj / v_proj / out_proj."""
    rules = []
    for name, stem in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules.append(packed_heads((f"{ours}/{name}/kernel",), f"{theirs}.{stem}.weight", heads, False))
        rules.append(packed_heads((f"{ours}/{name}/bias",), f"{theirs}.{stem}.bias", heads, True))
    return [*rules, attention_out(f"{ours}/out/kernel", f"{theirs}.out_proj.weight", heads),
            same(f"{ours}/out/bias", f"{theirs}.out_proj.bias")]


def _encoder(ours: str, theirs: str, depth: int, heads: int) -> list[Rule]:
    rules = []
    for i in range(depth):
        o, t = f"{ours}/encoderblock_{i}", f"{theirs}.layers.{i}"
        rules += [*layer_norm(f"{o}/LayerNorm_0", f"{t}.layer_norm1"),
                  *_attention(f"{o}/MultiHeadDotProductAttention_0", f"{t}.self_attn", heads),
                  *layer_norm(f"{o}/LayerNorm_1", f"{t}.layer_norm2"),
                  *dense(f"{o}/MlpBlock_0/Dense_0", f"{t}.mlp.fc1"), *dense(f"{o}/MlpBlock_0/Dense_1", f"{t}.mlp.fc2")]
    return rules


def _class_token() -> Rule:
    """(cls [1,1,D], pos [1,N,D]) <-> (class_embedding [D], position_embedding.weight [N+1, D])."""
    e = "vision_model.embeddings."
    return Rule(("img/cls", "img/pos_embedding"), (f"{e}class_embedding", f"{e}position_embedding.weight"),
                lambda cls, pos: ((cls + pos[0])[None, None], pos[None, 1:]),
                lambda cls, pos: (cls[0, 0], np.concatenate([np.zeros_like(pos[0, :1]), pos[0]], axis=0)))


def hf_rules(arch: str, img_depth: int, txt_depth: int, img_heads: int, txt_heads: int) -> list[Rule]:
    """All rules of a CLIPModel ("clip") or SiglipModel ("siglip")."""
    v, t = "vision_model", "text_model"
    rules = [conv("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight"),
             *_encoder("img/encoder", f"{v}.encoder", img_depth, img_heads),
             *layer_norm("img/encoder/encoder_norm", f"{v}.post_layernorm"),
             same("txt/token_embedding/embedding", f"{t}.embeddings.token_embedding.weight"),
             leading_one("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight"),
             *_encoder("txt/encoder", f"{t}.encoder", txt_depth, txt_heads),
             *layer_norm("txt/encoder/encoder_norm", f"{t}.final_layer_norm")]
    if arch == "clip":
        return rules + [_class_token(), *layer_norm("img/pre_norm", f"{v}.pre_layrnorm"),
                        linear("img_proj/kernel", "visual_projection.weight"),
                        linear("txt_proj/kernel", "text_projection.weight"), scalar("t", "logit_scale")]
    h = f"{v}.head"
    return rules + [same("img/embedding/bias", f"{v}.embeddings.patch_embedding.bias"),
                    leading_one("img/pos_embedding", f"{v}.embeddings.position_embedding.weight"),
                    same("img/MAPHead_0/probe", f"{h}.probe"),
                    *attention("img/MAPHead_0/MultiHeadDotProductAttention_0", f"{h}.attention.", img_heads,
                               "in_proj_", "out_proj."),
                    *layer_norm("img/MAPHead_0/LayerNorm_0", f"{h}.layernorm"),
                    *dense("img/MAPHead_0/MlpBlock_0/Dense_0", f"{h}.mlp.fc1"),
                    *dense("img/MAPHead_0/MlpBlock_0/Dense_1", f"{h}.mlp.fc2"),
                    *dense("txt/head", f"{t}.head"), same("t", "logit_scale"), same("b", "logit_bias")]


# ------------------------------------------------------------------ in and out
def import_folder(folder: str) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
    """HF folder -> (jaxsup flat params, our key -> HF key, two_tower kwargs); CheckpointError for a bad folder."""
    cfg, arch = read_config(folder)
    kwargs = two_tower_kwargs(cfg, arch, repr(os.path.join(folder, "config.json")))
    arrays = {k: v for k, v in read_weights(folder).items() if not k.endswith("position_ids")}
    where = f"{folder!r} ({'CLIPModel' if arch == 'clip' else 'SiglipModel'})"
    files.check_float(arrays, where)
    ik, tk = kwargs["image_kwargs"], kwargs["text_kwargs"]
    rules = hf_rules(arch, count_blocks(arrays, "vision_model.encoder.layers."),
                     count_blocks(arrays, "text_model.encoder.layers."), ik["num_heads"], tk["num_heads"])
    return apply_rules(rules, arrays, "ours", where), origins(rules), kwargs


def export_arrays(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """jaxsup flat two-tower params -> HF state dict (SiglipModel with a MAP image head, else CLIPModel)."""
    arch = "siglip" if "img/MAPHead_0/probe" in flat else "clip"
    rules = hf_rules(arch, count_blocks(flat, "img/encoder/encoderblock_"),
                     count_blocks(flat, "txt/encoder/encoderblock_"), 0, 0)
    return apply_rules(rules, flat, "theirs", f"jaxsup params (export to Hugging Face {arch})")


def check_out_folder(path: str) -> None:
    """ConfigError unless `path` is a new folder whose parent exists."""
    files.check_new_path(path)


def write_folder(arrays: dict[str, np.ndarray], config: dict[str, Any], path: str) -> None:
    """Writes config.json and model.safetensors into the new folder `path`."""
    check_out_folder(path)
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    files.write_safetensors({k: np.asarray(v, np.float32) for k, v in arrays.items()},
                            os.path.join(path, WEIGHTS))
