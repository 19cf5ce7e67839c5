"""The CLIP BPE tokenizer gives open_clip's ids (unicode, punctuation, HTML, over-long text)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ftfy")
pytest.importorskip("regex")
open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

from jaxsup.data.text.clip_bpe import ClipBpeTokenizer  # noqa: E402
from jaxsup.data.text.tokenizer import get_tokenizer  # noqa: E402
from jaxsup.errors import ConfigError  # noqa: E402

CORPUS = [
    "a photo of a cat.",
    "A PHOTO of the   Eiffel Tower!!! (at night)",
    "café naïve façade — “quotes” and ‘single’ … ellipsis",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🐱🚀 👍🏽 and flags 🇫🇷",
    "numbers 1234567 3.14 1/2 ½ ² Ⅻ",
    "it's they're we've I'm you'll he'd CAN'T",
    "html &amp; entities &lt;b&gt; &amp;amp; &#39;",
    "mojibake: Ã©tÃ© â€œtestâ€",
    "tabs\tand\nnewlines\r\n   and  spaces",
    "<start_of_text> inside <end_of_text> text",
    "x" * 300,
    " ".join(["a very long caption that goes on and on"] * 20),
    "",
    "!!!",
    "under_score snake_case CamelCase e-mail@example.com https://x.org/a?b=c#d",
]


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("clip")


@pytest.mark.parametrize("max_len", [77, 16])
def test_ids_equal_open_clip(tok, max_len):
    ours = tok.encode(CORPUS, max_len=max_len)
    theirs = open_clip_tokenizer.tokenize(CORPUS, context_length=max_len).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(CORPUS), max_len)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[:, 0] == 49406).all() and (ours == 49407).any(axis=1).all()  # a literal "<end_of_text>" is one too


def test_vocab_and_decode(tok):
    assert tok.vocab_size == 49408 and (tok.bos_id, tok.eos_id, tok.pad_id) == (49406, 49407, 0)
    assert tok.decode(tok.encode(["A photo of a Cat!", "café 🐱"], 20)) == ["a photo of a cat !", "café 🐱"]


def test_vocab_path_forms(tok, tmp_path):
    assert get_tokenizer(f"clip:{tok.path}").encode(["hi"], 8).tolist() == tok.encode(["hi"], 8).tolist()
    with pytest.raises(ConfigError, match="CLIP BPE vocabulary file not found"):
        get_tokenizer(str(tmp_path / "bpe_simple_vocab_16e6.txt.gz"))
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="not a gzipped CLIP BPE vocabulary"):
        ClipBpeTokenizer(str(bad))
