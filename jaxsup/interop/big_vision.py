"""big_vision SigLIP / LiT `.npz` (the layout open_clip's `convert.py` reads) <-> jaxsup two-tower.

Both sides are flax, so blocks keep their names and shapes; only the tower
paths differ: img/Transformer/ <-> img/encoder/, txt/Encoder_0/ <-> txt/encoder/,
txt/Embed_0/ <-> txt/token_embedding/. A "scanned" checkpoint
(`.../encoderblock/...` with a leading layer axis) is split into blocks.
Keys may carry a leading "params/".
"""
from __future__ import annotations

import re

import numpy as np

from jaxsup.errors import CheckpointError

_RENAMES = (("img/Transformer/", "img/encoder/"), ("txt/Encoder_0/", "txt/encoder/"),
            ("txt/Embed_0/", "txt/token_embedding/"))
REQUIRED = ("img/embedding/kernel", "txt/Embed_0/embedding", "t")
_SCANNED = re.compile(r"^(img/Transformer|txt/Encoder_0)/encoderblock/(.*)$")


def _unscan(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`<tower>/encoderblock/<leaf>` [L, ...] -> L keys `<tower>/encoderblock_{i}/<leaf>`."""
    out = {}
    for key, value in flat.items():
        m = _SCANNED.match(key)
        if m is None:
            out[key] = value
        else:
            out.update({f"{m.group(1)}/encoderblock_{i}/{m.group(2)}": v for i, v in enumerate(value)})
    return out


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def import_two_tower(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision two-tower npz arrays -> jaxsup flat params; CheckpointError for another family."""
    flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    absent = [k for k in REQUIRED if k not in flat]
    if absent:
        raise CheckpointError(
            f"Not a big_vision two-tower (SigLIP / LiT) npz: missing {absent} "
            f"(first keys: {sorted(flat)[:5]}); another model family?"
        )
    return {_rename(k, _RENAMES): np.asarray(v) for k, v in _unscan(flat).items()}


def export_two_tower(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """jaxsup flat two-tower params -> big_vision npz names (unscanned blocks)."""
    back = tuple((new, old) for old, new in _RENAMES)
    return {_rename(k, back): np.asarray(v) for k, v in flat.items()}
