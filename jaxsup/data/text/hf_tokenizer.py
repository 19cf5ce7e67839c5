"""The tokenizer of a Hugging Face CLIPModel / SiglipModel folder (tokenizer name "hf:DIR").

    tok = folder_tokenizer("/ckpt/clip-vit-base-patch32")   # merges.txt + vocab.json: the CLIP BPE
    tok = folder_tokenizer("/ckpt/siglip-base-patch16-224") # spiece.model: SigLIP's SentencePiece

CLIP: HF's merges.txt is OpenAI's BPE merge list (a "#version" line, then the merges), so
jaxsup's exact CLIP BPE (clip_bpe.py) reads it in place of bpe_simple_vocab_16e6.txt.gz; vocab.json
must hold the 49408 ids that BPE builds. SigLIP: HF's SiglipTokenizer: lower case, punctuation
removed, whitespace collapsed, SentencePiece ids, EOS appended, rows padded with its pad token
("</s>" unless tokenizer_config.json / special_tokens_map.json name another).
A missing file is one ConfigError naming it.
"""
from __future__ import annotations

import json
import os
import re
import string
from typing import Any, Callable, Sequence

import numpy as np

from jaxsup.errors import ConfigError

CLIP_FILES = ("vocab.json", "merges.txt")
SIGLIP_FILE = "spiece.model"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str) -> str:
    """SigLIP's text cleaning (big_vision / HF SiglipTokenizer): lower case, no punctuation, single spaces."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).strip()


def _special(folder: str, name: str, default: str) -> str:
    """A special token's text from tokenizer_config.json or special_tokens_map.json."""
    for file in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, file)
        if os.path.isfile(path):
            with open(path) as f:
                value = json.load(f).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return default


class SiglipTokenizer:
    """HF SiglipTokenizer's ids: canonicalized text, EOS appended (kept on truncation), pad-token padding.

    base: jaxsup's SentencePieceTokenizer of the folder's spiece.model (its ids, EOS and decode)."""

    def __init__(self, base: Any, pad_piece: str = "</s>"):
        self.base = base
        pad = base._sp.piece_to_id(pad_piece)
        if base._sp.id_to_piece(pad) != pad_piece:
            raise ConfigError(f"{base.path!r} has no pad token {pad_piece!r}.")
        self.hf_pad_id = pad + base.offset
        self.path, self.pad_id, self.eos_id, self.bos_id = base.path, base.pad_id, base.eos_id, base.bos_id
        self.vocab_size = base.vocab_size

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """[N, L] ids -> N strings (stops at EOS)."""
        return self.base.decode(ids)

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """list of N strings -> int32 [N, max_len]."""
        ids = self.base.encode([canonicalize(t) for t in texts], max_len)
        eos_at = np.argmax(ids == self.eos_id, axis=1)
        ids[np.arange(ids.shape[1])[None, :] > eos_at[:, None]] = self.hf_pad_id
        return ids


def folder_tokenizer(folder: str, sentencepiece: Callable[[str], Any]):
    """The jaxsup tokenizer of an HF model folder (CLIP BPE or SigLIP SentencePiece); `sentencepiece`
    builds jaxsup's SentencePieceTokenizer from a .model path (passed in: tokenizer.py calls this)."""
    if os.path.isfile(os.path.join(folder, SIGLIP_FILE)):
        return SiglipTokenizer(sentencepiece(os.path.join(folder, SIGLIP_FILE)), _special(folder, "pad_token", "</s>"))
    absent = [os.path.join(folder, f) for f in CLIP_FILES if not os.path.isfile(os.path.join(folder, f))]
    if len(absent) == len(CLIP_FILES):
        raise ConfigError(f"No tokenizer in {folder!r}: neither {os.path.join(folder, SIGLIP_FILE)!r} (SigLIP) nor "
                          f"{list(CLIP_FILES)} (CLIP) found.")
    if absent:
        raise ConfigError(f"CLIP tokenizer file {absent[0]!r} not found.")
    from jaxsup.data.text.clip_bpe import ClipBpeTokenizer  # noqa: PLC0415 (needs ftfy + regex)

    tok = ClipBpeTokenizer(os.path.join(folder, "merges.txt"))
    with open(os.path.join(folder, "vocab.json")) as f:
        vocab = json.load(f)
    ours = {k: v for k, v in tok.encoder.items() if v < tok.bos_id}  # HF spells the two specials <|...|>
    theirs = {k: v for k, v in vocab.items() if v < tok.bos_id}
    if ours != theirs:
        wrong = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))[:5]
        raise ConfigError(f"{os.path.join(folder, 'vocab.json')!r} does not hold the ids of the CLIP BPE built from "
                          f"merges.txt (first differences: {wrong}).")
    return tok
