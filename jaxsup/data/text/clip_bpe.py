"""OpenAI CLIP's byte-level BPE tokenizer, on its own vocabulary file.

    tok = ClipBpeTokenizer()                     # vocab from the installed open_clip package
    tok = ClipBpeTokenizer("/path/bpe_simple_vocab_16e6.txt.gz")
    ids = tok.encode(["a photo of a cat."], max_len=77)   # int32 [1, 77]: SOT ... EOT 0 0 ...

Ids equal open_clip's `SimpleTokenizer` (tests/interop/test_interop_tokenizer.py): text
cleaned with ftfy + twice-unescaped HTML, whitespace collapsed, lower-cased;
split by CLIP's regular expression; each piece's UTF-8 bytes mapped to printable
characters and merged by the ranked BPE merges; SOT (49406) first, EOT (49407,
the largest id: the text tower pools there) last, kept on truncation; padding 0.
Note that id 0 is also the real token "!" (so CLIP text towers do not mask by id).

The vocabulary file `bpe_simple_vocab_16e6.txt.gz` is OpenAI's (MIT licence,
Copyright (c) 2021 OpenAI, https://github.com/openai/CLIP); jaxsup does not ship
it but reads the copy inside the open_clip_torch package or a given path. The
text cleaning needs the packages `ftfy` and `regex` (extra [clip]).
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from typing import Sequence

import numpy as np

from jaxsup.data.text.token_ids import PAD_ID, content_ids, pack
from jaxsup.errors import ConfigError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: its vocabulary is 49408 with the two specials
SPECIALS = ("<start_of_text>", "<end_of_text>")
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_vocab_path() -> str:
    """The vocabulary inside the installed open_clip package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The CLIP tokenizer needs {VOCAB_FILE}: install open_clip_torch (pip install 'jaxsup[interop]') "
            "or name the file: tokenizer 'clip:/path/to/bpe_simple_vocab_16e6.txt.gz'."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], VOCAB_FILE)


@functools.lru_cache(maxsize=None)
def byte_to_char() -> dict[int, str]:
    """Each of the 256 byte values -> a printable character (GPT-2 / CLIP's reversible map), in the
    vocabulary's order: the printable bytes as themselves, then the others as chr(256 + i)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable}
    chars.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return chars


def _optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ConfigError(f"The CLIP tokenizer needs the package {name!r}: pip install 'jaxsup[clip]'.") from None


def clean(text: str, ftfy) -> str:
    """CLIP's cleaning: ftfy, HTML entities (twice), collapsed whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def merge_word(chars: Sequence[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Applies the ranked merges to one word's symbols until none applies (lowest rank first)."""
    word = list(chars)
    while len(word) > 1:
        best = min(zip(word, word[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


class ClipBpeTokenizer:
    """CLIP BPE: pad 0, bos (SOT) 49406, eos (EOT) 49407, vocab_size 49408."""

    pad_id = PAD_ID

    def __init__(self, vocab_path: str | None = None):
        path = vocab_path or default_vocab_path()
        if not os.path.isfile(path):
            raise ConfigError(f"CLIP BPE vocabulary file not found: {path!r}.")
        try:
            opener = gzip.open if path.endswith(".gz") else open  # HF's merges.txt: the same lines, plain
            lines = opener(path, "rb").read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path!r} is not a gzipped CLIP BPE vocabulary ({e}).") from None
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ConfigError(f"{path!r} is not a CLIP BPE vocabulary: expected {NUM_MERGES} merge lines.")
        self.path = path
        self._ftfy, regex = _optional("ftfy"), _optional("regex")
        symbols = list(byte_to_char().values())
        vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), *SPECIALS]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bos_id, self.eos_id = self.encoder[SPECIALS[0]], self.encoder[SPECIALS[1]]
        self.vocab_size = len(vocab)
        self._split = regex.compile("|".join(SPECIALS) + "|" + _SPLIT, regex.IGNORECASE)
        self._cache: dict[str, list[int]] = {s: [self.encoder[s]] for s in SPECIALS}

    def _piece_ids(self, piece: str) -> list[int]:
        if piece not in self._cache:
            chars = [byte_to_char()[b] for b in piece.encode("utf-8")]
            chars[-1] += "</w>"
            self._cache[piece] = [self.encoder[s] for s in merge_word(chars, self.ranks)]
        return self._cache[piece]

    def text_ids(self, text: str) -> list[int]:
        """One text -> its BPE ids (no SOT/EOT)."""
        return [i for piece in self._split.findall(clean(text, self._ftfy)) for i in self._piece_ids(piece)]

    def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """list of N strings -> int32 [N, max_len]: SOT ids EOT, truncated with EOT kept, 0-padded."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("encode expects a list of strings (wrap a single text in a list).")
        return pack([self.text_ids(t) for t in texts], max_len, self.bos_id, self.eos_id)

    def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """[N, L] ids -> N strings (stops at EOT; words separated by single spaces)."""
        chars = {c: b for b, c in byte_to_char().items()}
        texts = []
        for row in np.asarray(ids):
            # content_ids stops at EOT and drops SOT; id 0 inside the text is "!", not padding
            text = "".join(self.decoder[t] for t in content_ids(row, {self.bos_id}, self.eos_id))
            data = bytes(32 if c == " " else chars[c] for c in text.replace("</w>", " "))
            texts.append(data.decode("utf-8", errors="replace").strip())
        return texts
