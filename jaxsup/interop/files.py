"""Read and write flat {name: array} files: safetensors, PyTorch .pt/.bin/.pth, NumPy .npz.

safetensors is read and written here directly (an 8-byte header length, a JSON
header of dtype / shape / byte offsets, then the raw little-endian data), so no
extra package is needed for it; .pt/.bin files need PyTorch (the [interop] extra).
Every failure to read (missing, truncated, not that format, integer weights)
is one CheckpointError naming the file; writes go to a temporary file renamed
into place, and never replace an existing file.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile

import ml_dtypes
import numpy as np

from jaxsup.errors import CheckpointError, ConfigError

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
FORMATS = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".npz": "npz"}


def file_format(path: str) -> str:
    """"safetensors" | "torch" | "npz" from the file name's extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(f"Cannot tell the format of {path!r} from its extension; expected one of {sorted(FORMATS)}.")
    return FORMATS[ext]


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} from a .safetensors file (bf16 as ml_dtypes.bfloat16)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path!r} is not a safetensors file (only {size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path!r}: safetensors header of {n} bytes exceeds the file ({size} bytes): truncated?")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path!r}: unreadable safetensors header ({e}).") from None
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > len(data) or info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(
                f"{path!r}: tensor {name!r} ({info['dtype']}, bytes {begin}..{end}) lies beyond the "
                f"{len(data)} data bytes or has an unknown dtype: truncated or corrupt file."
            )
        out[name] = np.frombuffer(data[begin:end], _ST_DTYPES[info["dtype"]]).reshape(info["shape"]).copy()
    return out


def write_safetensors(flat: dict[str, np.ndarray], path: str) -> None:
    """Writes {name: array} as safetensors (readable by `safetensors.torch.load_file`)."""
    header, chunks, offset = {}, [], 0
    for name in sorted(flat):
        arr = np.ascontiguousarray(flat[name]).reshape(np.shape(flat[name]))  # keeps 0-d tensors 0-d
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    _write_new(path, lambda f: [f.write(struct.pack("<Q", len(blob))), f.write(blob), *map(f.write, chunks)])


def write_npz(flat: dict[str, np.ndarray], path: str) -> None:
    """Writes {name: array} as an uncompressed .npz (names keep their "/")."""
    _write_new(path, lambda f: np.savez(f, **flat))


def check_new_path(path: str) -> None:
    """ConfigError if `path` exists or its directory does not."""
    if os.path.exists(path):
        raise ConfigError(f"Refusing to overwrite {path!r}: choose a new --out path or remove it first.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"Output directory {parent!r} does not exist.")


def _write_new(path: str, write) -> None:
    check_new_path(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_npz(path: str) -> dict[str, np.ndarray]:
    """{name: array} from an .npz file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path!r} is not a readable .npz file ({type(e).__name__}: {e}): truncated?") from None


def read_torch(path: str) -> dict[str, np.ndarray]:
    """{name: float32/float64 array} from a PyTorch state dict or an OpenAI TorchScript archive."""
    try:
        import torch  # noqa: PLC0415 (optional: the [interop] extra)
    except ImportError:
        raise ConfigError(f"Reading {path!r} needs PyTorch: pip install 'jaxsup[interop]'.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 (torch raises many types; the file is bad or TorchScript)
        try:
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:  # noqa: BLE001
            raise CheckpointError(f"{path!r} is not a readable PyTorch file ({type(first).__name__}: "
                                  f"{str(first).splitlines()[0][:200]}): truncated?") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path!r} does not hold a state dict of tensors (found {type(obj).__name__}).")
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in obj.items()}


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """{name: array} from any supported file; CheckpointError if missing or unreadable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint file not found: {path!r}.")
    reader = {"safetensors": read_safetensors, "torch": read_torch, "npz": read_npz}[file_format(path)]
    return reader(path)


def check_float(flat: dict[str, np.ndarray], where: str, allowed: tuple[str, ...] = ()) -> None:
    """CheckpointError naming every non-floating array (weights must be float), except `allowed`."""
    bad = [f"{k} ({v.dtype})" for k, v in flat.items() if k not in allowed and not np.issubdtype(v.dtype, np.floating)
           and v.dtype != ml_dtypes.bfloat16]
    if bad:
        raise CheckpointError(f"{where}: weights must be floating point; found " + ", ".join(bad[:10]))
