"""One entry point per direction over the supported formats.

    flat, origin = import_file("open_clip", "model.safetensors", img_heads=12, txt_heads=8)
    check_against(flat, expected_shapes, origin, where)      # before anything is used
    export_flat("open_clip", flat)  /  export_flat("npz", flat)

Formats: "open_clip" (OpenAI / open_clip state dicts: .pt/.bin/.pth/.safetensors),
"big_vision" (a big_vision SigLIP / LiT .npz), "hf" (a Hugging Face CLIPModel / SiglipModel folder,
jaxsup/interop/hf.py). Trees are nested dicts; flat keys join with "/".
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import big_vision, files, hf, open_clip, resample
from jaxsup.interop.rules import check_against  # noqa: F401 (re-exported)

IMPORT_FORMATS = ("open_clip", "big_vision", "hf")
EXPORT_FORMATS = ("open_clip", "npz", "hf")


def is_public_checkpoint(spec: str) -> bool:
    """True for "FORMAT:PATH" with FORMAT one of the import formats."""
    return spec.partition(":")[0] in IMPORT_FORMATS


def load_public(spec: str, abstract: Mapping[str, Any], subtree: str = "", names: tuple[str, ...] = ()) -> dict:
    """The nested NumPy arrays of public checkpoint `spec` for a model tree of ShapeDtypeStructs `abstract`."""
    flat = flatten(abstract)
    loaded = load_for_model(spec, {k: tuple(v.shape) for k, v in flat.items()}, {k: v.dtype for k, v in flat.items()},
                            subtree, tuple(names))
    return nest(loaded)


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
    if fmt == "hf":  # a folder: config.json + safetensors (jaxsup.interop.hf)
        flat, origin, _ = hf.import_folder(path)
        return flat, origin
    arrays = files.read_arrays(path)
    if fmt == "big_vision" and files.file_format(path) != "npz":
        raise ConfigError(f"big_vision checkpoints are .npz files, got {path!r}.")
    return import_arrays(fmt, arrays, img_heads, txt_heads, repr(path))


def heads_of(expected: dict[str, tuple[int, ...]], tower: str) -> int:
    """Attention heads of `tower` ("img" / "txt") from the model's query kernel [D, H, D/H] (0 if none)."""
    shape = expected.get(f"{tower}/encoder/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    return int(shape[1]) if shape else 0


def select(flat: dict[str, np.ndarray], origin: dict[str, str], subtree: str, names: tuple[str, ...],
           where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The keys under `subtree` (re-rooted there), then only the top-level entries `names` (all if empty)."""
    if subtree:
        prefix = subtree.strip("/") + "/"
        flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
        origin = {k[len(prefix):]: v for k, v in origin.items() if k.startswith(prefix)}
        if not flat:
            raise CheckpointError(f"{where} has no sub-tree {subtree!r}.")
    if names:
        absent = [n for n in names if not any(k.split("/")[0] == n for k in flat)]
        if absent:
            tops = sorted({k.split("/")[0] for k in flat})
            raise CheckpointError(f"{where} has no {absent} (its top-level entries: {tops}).")
        flat = {k: v for k, v in flat.items() if k.split("/")[0] in names}
    return flat, origin


def resample_position_embeddings(flat: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]],
                                 where: str) -> dict[str, np.ndarray]:
    """Image position embeddings [1, N, D] resampled to the model's square patch grid [1, M, D]."""
    out = dict(flat)
    for key, value in flat.items():
        want = tuple(expected.get(key, ()))
        if (key.endswith("pos_embedding") and not key.startswith("txt/") and len(want) == 3
                and value.ndim == 3 and value.shape != want and value.shape[::2] == want[::2]):
            side = resample.square_grid(want[1], f"{where} model {key}")
            out[key] = resample.resample_posemb(value, (side, side), f"{where} {key}")
    return out


def load_for_model(spec: str, expected: dict[str, tuple[int, ...]], dtypes: dict[str, Any] | None = None,
                   subtree: str = "", names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """"FORMAT:PATH" -> flat params matching `expected` (our key -> shape), cast to `dtypes`.

    subtree: load a sub-tree of the checkpoint ("img": a CLIP image tower into a ViT);
    names: only these top-level entries (e.g. ("img", "img_proj")), `expected` holding just them.
    Image position embeddings are resampled (bilinear) to the model's patch grid. Everything is
    read and checked before anything is returned: a mismatch is one CheckpointError naming
    each missing / unexpected key and both shapes.
    """
    fmt, path = parse_init(spec)
    where = repr(path)
    rooted = {f"{subtree.strip('/')}/{k}" if subtree else k: v for k, v in expected.items()}
    heads = [heads_of(rooted, tower) or 1 for tower in ("img", "txt")]  # 1: a tower not loaded (any divisor)
    flat, origin = import_file(fmt, path, *heads)
    flat, origin = select(flat, origin, subtree, tuple(names), where)
    flat = resample_position_embeddings(flat, expected, where)
    check_against(flat, expected, origin, where)
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
    if fmt == "hf":
        return hf.export_arrays(flat)
    raise ConfigError(f"Unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}.")


OUT_SUFFIX = {"open_clip": ".safetensors", "npz": ".npz"}


def check_out(fmt: str, path: str) -> None:
    """ConfigError unless `path` suits `fmt` and can be created without replacing a file."""
    if fmt == "hf":  # a new folder
        return hf.check_out_folder(path)
    if fmt not in OUT_SUFFIX:
        raise ConfigError(f"Unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}.")
    if not path.endswith(OUT_SUFFIX[fmt]):
        raise ConfigError(f"{fmt} export writes {OUT_SUFFIX[fmt]} files: --out must end in it, got {path!r}.")
    files.check_new_path(path)


def write(fmt: str, arrays: dict[str, np.ndarray], path: str, hf_config: dict[str, Any] | None = None) -> None:
    """Writes exported arrays: safetensors for "open_clip", .npz for "npz", a folder (with `hf_config`
    as its config.json) for "hf"."""
    if fmt == "hf":
        return hf.write_folder(arrays, hf_config or {}, path)
    check_out(fmt, path)
    (files.write_safetensors if fmt == "open_clip" else files.write_npz)(arrays, path)
