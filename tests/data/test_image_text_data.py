"""Image-text preprocess ops: class captions, caption features, tokenization, resize."""
import io

import numpy as np
import pytest

from jaxsup.data.datasets import digits, sources
from jaxsup.data.host import image_text, preprocess
from jaxsup.data.loader import pipeline
from jaxsup.data.text import tokenizer


def _digit_example(label: int, seed: int = 0) -> dict:
    image = np.random.default_rng(seed).integers(0, 255, (8, 8, 1), dtype=np.uint8)
    return {"image": image, "label": np.int64(label)}


def test_class_caption_fills_the_chosen_template_with_the_class():
    op = preprocess.build(["class_caption:templates=digits_train,seed=3"])
    for label in range(10):
        ex = _digit_example(label, seed=label)
        key = image_text.example_key(ex, 3)
        template = image_text.DIGITS_TRAIN_TEMPLATES[key % len(image_text.DIGITS_TRAIN_TEMPLATES)]
        expected = template.replace("{name}", digits.CLASS_NAMES[label]).replace("{index}", str(label))
        out = op(ex)
        assert out["text"] == expected
        assert op(dict(ex))["text"] == expected  # deterministic per example


def test_class_caption_uses_every_template_over_a_split_and_the_seed_changes_the_choice():
    exs = [_digit_example(3, seed=s) for s in range(200)]
    texts = [preprocess.build(["class_caption"])(ex)["text"] for ex in exs]
    expected = {t.format(name="three", index=3) for t in image_text.DIGITS_TRAIN_TEMPLATES}
    assert set(texts) == expected
    other = [preprocess.build(["class_caption:seed=1"])(ex)["text"] for ex in exs]
    assert other != texts


def test_train_and_heldout_templates_are_disjoint():
    assert not set(image_text.DIGITS_TRAIN_TEMPLATES) & set(image_text.DIGITS_HELDOUT_TEMPLATES)


def test_class_prompts_are_class_major():
    prompts = image_text.class_prompts(("cat", "dog"), ("a {name}", "{index}: {name}"))
    assert prompts == ["a cat", "0: cat", "a dog", "1: dog"]


def test_pick_caption_first_and_hash_from_nested_feature():
    caps = np.array([b"a dog on a sofa", b"a brown dog", b"sofa with dog"], dtype=object)
    ex = {"image": np.zeros((4, 4, 3), np.uint8), "captions": {"text": caps, "id": np.arange(3)}}
    assert preprocess.build(["pick_caption:feature=captions/text"])(ex)["text"] == "a dog on a sofa"
    picked = preprocess.build(["pick_caption:choice=hash,seed=5"])(ex)["text"]
    assert picked == caps[image_text.example_key(ex, 5) % 3].decode()


def test_missing_caption_feature_names_it_and_what_the_example_has():
    op = preprocess.build(["pick_caption:feature=captions/text"])
    with pytest.raises(ValueError, match=r"'captions/text' missing.*\['image', 'label'\]"):
        op(_digit_example(1))


def test_tokenize_matches_the_tokenizer_and_decodes_back():
    op = preprocess.build(["class_caption", "tokenize:max_len=40,tokenizer=bytes"])
    out = op(_digit_example(7))
    tok = tokenizer.get_tokenizer("bytes")
    np.testing.assert_array_equal(out["tokens"], tok.encode([out["text"]], 40)[0])
    assert out["tokens"].dtype == np.int32 and out["tokens"].shape == (40,)
    assert tok.decode(out["tokens"][None])[0] == out["text"]


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope" / "spm.model")
    with pytest.raises(ValueError, match="not found.*spm.model"):
        preprocess.build([f"tokenize:tokenizer={missing}"])


def test_bad_op_arguments_are_named():
    with pytest.raises(ValueError, match="maxlen"):
        preprocess.build(["tokenize:maxlen=3"])
    with pytest.raises(ValueError, match="Unknown template set 'nope'"):
        preprocess.build(["class_caption:templates=nope"])


def test_resize_decodes_png_bytes_and_keeps_same_size_arrays():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    same = preprocess.build(["resize:10"])
    # Resizing to the same size is the identity; PNG is lossless.
    np.testing.assert_array_equal(image_text.decode_and_resize(rgb[:, :6], 6), rgb[:, :6])
    decoded = image_text.decode_and_resize(buf.getvalue(), 12)
    assert decoded.shape == (12, 12, 3) and decoded.dtype == np.uint8
    gray = same({"image": np.full((4, 4, 1), 77, np.uint8)})["image"]
    np.testing.assert_array_equal(gray, np.full((10, 10, 1), 77, np.uint8))


def test_digits_pipeline_captions_name_each_example_class():
    source = sources.open_source("digits", "test")
    ops = preprocess.build(["image_to_float", "label_to_int32", "class_caption:templates=digits_heldout",
                            "tokenize:max_len=40", "keep:image,tokens,label"])
    batch = next(pipeline.eval_batches(source, ops, 40, process_index=0, process_count=1))
    texts = tokenizer.get_tokenizer("bytes").decode(batch["tokens"])
    for text, label in zip(texts, batch["label"]):
        assert digits.CLASS_NAMES[label] in text or str(label) in text.split()
        assert any(text == t.format(name=digits.CLASS_NAMES[label], index=label)
                   for t in image_text.DIGITS_HELDOUT_TEMPLATES)
