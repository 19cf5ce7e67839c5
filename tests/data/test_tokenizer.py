"""Tokenizers: byte-level round trip, padding, truncation; SentencePiece (optional) and errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from jaxsup.data.text.tokenizer import ByteTokenizer, SentencePieceTokenizer, get_tokenizer

TEXTS = ["a photo of the digit seven", "", "héllo wörld ✓", "x" * 40]


def _reference_bytes_row(text: str, max_len: int, bos: bool) -> np.ndarray:
    """Independent NumPy construction of one row: [BOS] bytes+3 ... EOS, zero padded."""
    ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + 3
    ids = np.concatenate([[1], ids]) if bos else ids
    ids = np.concatenate([ids[: max_len - 1], [2]])
    return np.pad(ids, (0, max_len - len(ids)))


@pytest.mark.parametrize("add_bos", [True, False])
def test_byte_encode_matches_reference(add_bos):
    tok = ByteTokenizer(add_bos=add_bos)
    ids = tok.encode(TEXTS, max_len=32)
    assert ids.dtype == np.int32 and ids.shape == (4, 32)
    for row, text in zip(ids, TEXTS):
        np.testing.assert_array_equal(row, _reference_bytes_row(text, 32, add_bos))
    assert tok.vocab_size == 259 and ids.max() < tok.vocab_size


def test_byte_round_trip_padding_and_truncation():
    tok = get_tokenizer("bytes")
    ids = tok.encode(TEXTS, max_len=64)
    assert tok.decode(ids) == TEXTS
    assert ids[1].tolist()[:3] == [tok.bos_id, tok.eos_id, 0]  # empty text: BOS EOS then padding
    short = tok.encode(TEXTS, max_len=8)
    assert (short[:, -1][[0, 2, 3]] == tok.eos_id).all()  # truncated rows keep EOS last
    assert tok.decode(short)[0] == TEXTS[0][:6]
    assert tok.decode(short)[2].startswith("h")  # a multi-byte char cut in half decodes without error


def test_byte_tokenizer_bad_inputs():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["abc"], max_len=1)
    with pytest.raises(ValueError, match="list of strings"):
        tok.encode("abc", max_len=8)


def test_get_tokenizer_errors(tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(ValueError, match="nope.model"):
        get_tokenizer(missing)
    with pytest.raises(ValueError, match="Unknown tokenizer 'gpt9'"):
        get_tokenizer("gpt9")


def test_missing_sentencepiece_package_gives_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "spm.model"
    path.write_bytes(b"not a model")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` fail
    with pytest.raises(ImportError, match="pip install sentencepiece"):
        SentencePieceTokenizer(str(path))


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece", reason="optional package sentencepiece is not installed")
    out = tmp_path_factory.mktemp("spm")
    sentences = [f"a photo of the digit {w}" for w in ("zero one two three four five six seven eight nine").split()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 5), model_prefix=str(out / "tiny"), vocab_size=25,
        model_type="unigram", minloglevel=2,
    )
    return str(out / "tiny.model")


def test_sentencepiece_round_trip_and_layout(spm_path):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    tok = get_tokenizer(spm_path)
    texts = ["a photo of the digit seven", "the digit two"]
    ids = tok.encode(texts, max_len=24)
    assert ids.dtype == np.int32 and ids.shape == (2, 24)
    assert tok.decode(ids) == texts
    # Model's pad id is -1 (disabled), so ids shift by one and 0 stays padding.
    assert tok.offset == 1 and tok.vocab_size == sp.get_piece_size() + 1
    for row, text in zip(ids, texts):
        expected = [i + 1 for i in sp.encode(text)] + [sp.eos_id() + 1]
        np.testing.assert_array_equal(row[: len(expected)], expected)
        assert (row[len(expected):] == 0).all()
    truncated = tok.encode(texts, max_len=4)
    assert (truncated[:, -1] == tok.eos_id).all()
