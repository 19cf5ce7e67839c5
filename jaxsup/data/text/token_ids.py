"""Token-id rows shared by every tokenizer: pad id 0, [BOS] ids EOS packing, and unpacking."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxsup.errors import ConfigError

PAD_ID = 0


def pack(rows: Sequence[Sequence[int]], max_len: int, bos_id: int | None, eos_id: int) -> np.ndarray:
    """Token lists -> int32 [N, max_len]: [BOS] ids EOS, truncated (EOS kept) and 0-padded."""
    if max_len < (2 if bos_id is not None else 1):
        raise ConfigError(f"max_len {max_len} leaves no room for the BOS/EOS tokens.")
    prefix = [] if bos_id is None else [bos_id]
    out = np.full((len(rows), max_len), PAD_ID, dtype=np.int32)
    for i, ids in enumerate(rows):
        row = (prefix + list(ids))[: max_len - 1] + [eos_id]
        out[i, : len(row)] = row
    return out


def content_ids(row: Sequence[int], specials: set[int], eos_id: int) -> list[int]:
    """The ids of one row up to its first EOS, without special tokens."""
    kept = []
    for t in row:
        t = int(t)
        if t == eos_id:
            break
        if t not in specials:
            kept.append(t)
    return kept
