"""Tokenizers: byte-level (offline, no vocabulary file) and SentencePiece (optional).

Both give int32 [N, max_len] arrays with pad id 0 and an EOS token ending
every row (kept when a text is truncated), as the text tower's EOS pooling
expects:

    tok = get_tokenizer("bytes")            # or "/path/to/spm.model"
    ids = tok.encode(["a photo of a cat"], max_len=16)   # [1, 16] int32
    tok.decode(ids)                          # ["a photo of a cat"]
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxsup.data.text.token_ids import PAD_ID, content_ids, pack
from jaxsup.errors import ConfigError, DataError


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("encode expects a list of strings (wrap a single text in a list).")


class ByteTokenizer:
    """UTF-8 bytes shifted by 3: pad=0, bos=1, eos=2, byte b -> b + 3; vocab_size 259."""

    pad_id, bos_id, eos_id = PAD_ID, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """list of N strings -> int32 [N, max_len]."""
        _check_texts(texts)
        rows = [[b + self.offset for b in t.encode("utf-8")] for t in texts]
        return pack(rows, max_len, self.bos_id if self.add_bos else None, self.eos_id)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """[N, L] ids -> N strings (stops at EOS; a byte sequence cut mid-character decodes as U+FFFD)."""
        specials = {self.pad_id, self.bos_id}
        texts = []
        for row in np.asarray(ids):
            data = bytes(t - self.offset for t in content_ids(row, specials, self.eos_id) if t >= self.offset)
            texts.append(data.decode("utf-8", errors="replace"))
        return texts


class SentencePieceTokenizer:
    """A local SentencePiece .model. Ids are shifted by 1 unless the model's pad id is 0,
    so that id 0 is always padding; vocab_size counts the shift."""

    def __init__(self, path: str, add_bos: bool = False):
        if not os.path.isfile(path):
            raise DataError(f"SentencePiece model file not found: {path!r}.")
        try:
            import sentencepiece  # noqa: PLC0415 (optional dependency)
        except ImportError as e:
            raise ImportError(
                "Reading a SentencePiece model needs the optional package 'sentencepiece': "
                "pip install sentencepiece"
            ) from e
        self.path = path
        self.add_bos = add_bos
        self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        self.offset = 0 if self._sp.pad_id() == PAD_ID else 1
        if self._sp.eos_id() < 0:
            raise ConfigError(f"SentencePiece model {path!r} has no EOS token (needed for EOS pooling).")
        self.pad_id = PAD_ID
        self.eos_id = self._sp.eos_id() + self.offset
        self.bos_id = self._sp.bos_id() + self.offset if self._sp.bos_id() >= 0 else None
        if add_bos and self.bos_id is None:
            raise ConfigError(f"add_bos=True but SentencePiece model {path!r} has no BOS token.")
        self.vocab_size = self._sp.get_piece_size() + self.offset

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """list of N strings -> int32 [N, max_len]."""
        _check_texts(texts)
        rows = [[i + self.offset for i in ids] for ids in self._sp.encode(list(texts))]
        return pack(rows, max_len, self.bos_id if self.add_bos else None, self.eos_id)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """[N, L] ids -> N strings (stops at EOS)."""
        specials = {self.pad_id} | ({self.bos_id} if self.bos_id is not None else set())
        rows = [[t - self.offset for t in content_ids(row, specials, self.eos_id)] for row in np.asarray(ids)]
        return [self._sp.decode(r) for r in rows]


Tokenizer = ByteTokenizer | SentencePieceTokenizer


def get_tokenizer(name_or_path: str, add_bos: bool | None = None) -> Tokenizer:
    """"bytes" -> ByteTokenizer; "hf:DIR" -> the tokenizer files of a Hugging Face folder
    (hf_tokenizer.py); "clip", "clip:PATH" or a path ending in .txt.gz -> the CLIP BPE
    (jaxsup/data/text/clip_bpe.py); a path to a SentencePiece .model -> SentencePieceTokenizer.

    add_bos None keeps each tokenizer's default (bytes: True, SentencePiece: False).
    """
    kwargs = {} if add_bos is None else {"add_bos": add_bos}
    if name_or_path == "bytes":
        return ByteTokenizer(**kwargs)
    if name_or_path.startswith("hf:"):  # a Hugging Face model folder's own tokenizer files
        from jaxsup.data.text.hf_tokenizer import folder_tokenizer  # noqa: PLC0415

        return folder_tokenizer(name_or_path[3:], SentencePieceTokenizer)
    if name_or_path == "clip" or name_or_path.startswith("clip:") or name_or_path.endswith(".txt.gz"):
        from jaxsup.data.text.clip_bpe import ClipBpeTokenizer  # noqa: PLC0415 (needs ftfy + regex)

        if add_bos is False:
            raise ConfigError("The CLIP tokenizer always starts with its SOT token (add_bos=False is not supported).")
        return ClipBpeTokenizer(name_or_path.removeprefix("clip:") if name_or_path != "clip" else None)
    if name_or_path.endswith(".model") or os.sep in name_or_path or os.path.exists(name_or_path):
        return SentencePieceTokenizer(name_or_path, **kwargs)
    raise ConfigError(
        f"Unknown tokenizer {name_or_path!r}: use 'bytes', 'clip' ('clip:/path/bpe_simple_vocab_16e6.txt.gz') "
        "or a path to a SentencePiece .model file."
    )


def with_tokenizer_vocab(model_kwargs: dict, tokenizer: str) -> dict:
    """{"text_kwargs": ... with vocab_size} of a two_tower's kwargs read from `tokenizer` (config.clip.tokenizer),
    or {} when it is ""; ConfigError when the kwargs give another nonzero vocab_size."""
    if not tokenizer:
        return {}
    text = dict(model_kwargs.get("text_kwargs") or {})
    vocab_size = get_tokenizer(tokenizer).vocab_size
    if text.get("vocab_size", 0) not in (0, vocab_size):
        raise ConfigError(f"config.model.text_kwargs.vocab_size={text['vocab_size']} but tokenizer {tokenizer!r} "
                          f"has {vocab_size} ids; set it to 0 (taken from the tokenizer).")
    return {"text_kwargs": {**text, "vocab_size": vocab_size}}
