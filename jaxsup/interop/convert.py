"""One entry point per direction over the supported formats.

    flat, origin = import_file("open_clip", "model.safetensors", img_heads=12, txt_heads=8)
    check_against(flat, expected_shapes, origin, where)      # before anything is used
    export_flat("open_clip", flat)  /  export_flat("npz", flat)

Formats: "open_clip" (OpenAI / open_clip state dicts: .pt/.bin/.pth/.safetensors),
"big_vision" (a big_vision SigLIP / LiT .npz). Trees are nested dicts; flat keys join with "/".
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxsup.errors import ConfigError
from jaxsup.interop import big_vision, files, open_clip
from jaxsup.interop.rules import check_against  # noqa: F401 (re-exported)

IMPORT_FORMATS = ("open_clip", "big_vision")
EXPORT_FORMATS = ("open_clip", "npz")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": x} -> {"a": {"b": x}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def parse_init(spec: str) -> tuple[str, str]:
    """"FORMAT:PATH" -> (format, path); ConfigError for an unknown format."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in IMPORT_FORMATS or not path:
        raise ConfigError(f"--init must be FORMAT:PATH with FORMAT one of {IMPORT_FORMATS}, got {spec!r}.")
    return fmt, path


def import_arrays(fmt: str, arrays: dict[str, np.ndarray], img_heads: int, txt_heads: int,
                  where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays of a checkpoint in `fmt` -> (jaxsup flat two-tower params, our key -> their key)."""
    if fmt == "open_clip":
        arrays = open_clip.clean_state_dict(arrays)
        files.check_float(arrays, where)
        return open_clip.import_two_tower(arrays, img_heads, txt_heads)
    if fmt == "big_vision":
        files.check_float(arrays, where)
        flat = big_vision.import_two_tower(arrays)
        return flat, {k: k for k in flat}
    raise ConfigError(f"Unknown import format {fmt!r}; expected one of {IMPORT_FORMATS}.")


def import_file(fmt: str, path: str, img_heads: int, txt_heads: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads `path` and converts it (see import_arrays); CheckpointError for a bad file."""
    arrays = files.read_arrays(path)
    if fmt == "big_vision" and files.file_format(path) != "npz":
        raise ConfigError(f"big_vision checkpoints are .npz files, got {path!r}.")
    return import_arrays(fmt, arrays, img_heads, txt_heads, repr(path))


def heads_of(expected: dict[str, tuple[int, ...]], tower: str) -> int:
    """Attention heads of `tower` ("img" / "txt") from the model's query kernel [D, H, D/H] (0 if none)."""
    shape = expected.get(f"{tower}/encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    return int(shape[1]) if shape else 0


def load_for_model(spec: str, expected: dict[str, tuple[int, ...]],
                   dtypes: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """"FORMAT:PATH" -> flat params matching `expected` (our key -> shape), cast to `dtypes`.

    Everything is read and checked before anything is returned: a mismatch is one
    CheckpointError naming each missing / unexpected key and both shapes.
    """
    fmt, path = parse_init(spec)
    flat, origin = import_file(fmt, path, heads_of(expected, "img"), heads_of(expected, "txt"))
    check_against(flat, expected, origin, repr(path))
    dtypes = dtypes or {}
    return {k: v.astype(dtypes.get(k, np.float32)) for k, v in flat.items()}


def export_flat(fmt: str, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """jaxsup flat two-tower params -> the arrays of `fmt` ("open_clip" layout chosen by the image head)."""
    flat = {k: np.asarray(v).astype(np.float32) for k, v in flat.items()}
    if fmt == "open_clip":
        layout = "siglip" if "img/MAPHead_0/probe" in flat else "clip"
        return open_clip.export_two_tower(flat, layout)
    if fmt == "npz":
        return big_vision.export_two_tower(flat)
    raise ConfigError(f"Unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}.")


OUT_SUFFIX = {"open_clip": ".safetensors", "npz": ".npz"}


def check_out(fmt: str, path: str) -> None:
    """ConfigError unless `path` suits `fmt` and can be created without replacing a file."""
    if fmt not in OUT_SUFFIX:
        raise ConfigError(f"Unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}.")
    if not path.endswith(OUT_SUFFIX[fmt]):
        raise ConfigError(f"{fmt} export writes {OUT_SUFFIX[fmt]} files: --out must end in it, got {path!r}.")
    files.check_new_path(path)


def write(fmt: str, arrays: dict[str, np.ndarray], path: str) -> None:
    """Writes exported arrays: safetensors for "open_clip", .npz for "npz"."""
    check_out(fmt, path)
    (files.write_safetensors if fmt == "open_clip" else files.write_npz)(arrays, path)
