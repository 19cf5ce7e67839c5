"""Image-text data: captions from class names or caption features, tokenization, image resize.

Host preprocess ops (names in config.data.preprocess; arguments "k=v,k=v"):

- `class_caption:templates=digits_train,names=digits,seed=0` -> "text": a caption
  built from the example's "label" and one template of a template set
  (e.g. "a photo of the digit seven", "a handwritten 7"). Templates use
  `{name}` (the class name) and `{index}` (the class id).
- `pick_caption:feature=captions/text,choice=first|hash,seed=0` -> "text": one
  caption of a (nested, "/"-separated) feature holding one or several captions
  (TFDS coco_captions: "captions/text").
- `tokenize:max_len=48,tokenizer=bytes` -> "tokens" int32 [max_len] from "text"
  (`jaxsup.data.text.tokenizer`: "bytes", or a path to a SentencePiece .model).
- `resize:224` -> "image" uint8 [224, 224, C]: decodes encoded bytes (PNG/JPEG,
  with Pillow) if needed and resizes (bilinear).

Choices that vary per example (template, caption) are a pure function of the
example: `example_key` is its "index" if the pipeline passes one to the ops,
else a CRC32 of its image bytes, mixed with `seed`. The same example therefore
always gets the same caption, so resumed runs see identical batches.
"""
from __future__ import annotations

import functools
import zlib
from typing import Any, Callable, Sequence

import numpy as np

from jaxsup.data.datasets import digits
from jaxsup.data.host import image_ops, naflex_ops, randaugment  # noqa: F401 (importing registers the image ops)
from jaxsup.data.host.preprocess import Example, register_op
from jaxsup.data.text import class_names, tokenizer
from jaxsup.errors import ConfigError, DataError

# Captions the digits CLIP/SigLIP runs train on.
DIGITS_TRAIN_TEMPLATES = (
    "a photo of the digit {name}",
    "a handwritten {index}",
    "the digit {name}",
    "a handwritten digit {name}",
    "a picture of the number {index}",
    "a scan of a handwritten {name}",
    "the number {index}",
    "a low resolution image of a {name}",
    "a blurry digit {index}",
    "a drawing of the number {name}",
    "a small gray image of a {index}",
    "someone wrote the digit {index}",
)
# Held out: used only by zero-shot (and retrieval) evaluation, never in training.
DIGITS_HELDOUT_TEMPLATES = (
    "an image of the digit {name}",
    "a photo of the number {index}",
    "a handwritten {name}",
    "a drawing of the digit {index}",
    "a scan of the number {name}",
)
# A few generic prompts (CLIP-style) for zero-shot on natural-image datasets.
GENERIC_TEMPLATES = (
    "a photo of a {name}.",
    "a bad photo of a {name}.",
    "a photo of the large {name}.",
    "a photo of the small {name}.",
    "a close-up photo of a {name}.",
    "a drawing of a {name}.",
    "a cropped photo of the {name}.",
)
TEMPLATE_SETS = {
    "digits_train": DIGITS_TRAIN_TEMPLATES,
    "digits_heldout": DIGITS_HELDOUT_TEMPLATES,
    "generic": GENERIC_TEMPLATES,
    # CLIP's 80 ImageNet prompts (jaxsup/data/text/zero_shot/NOTICE.md: source, licence).
    **{name: class_names.templates(name) for name in class_names.TEMPLATE_FILES},
}
# Label-order class names: imagenet2012 (CLIP's 1000 cleaned names), cifar10, cifar100.
CLASS_NAME_SETS = {"digits": digits.CLASS_NAMES, **{name: class_names.names(name) for name in class_names.NAME_FILES}}


def resolve_class_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """A class-name set name (CLASS_NAME_SETS) or a sequence of names -> tuple of names."""
    if isinstance(names, str):
        if names not in CLASS_NAME_SETS:
            raise ConfigError(f"Unknown class-name set {names!r}; known: {sorted(CLASS_NAME_SETS)}.")
        return CLASS_NAME_SETS[names]
    return tuple(names)


# ----------------------------------------------------------------------------- helpers


def parse_kwargs(op: str, arg: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """"k=v,k=v" -> defaults updated, each value cast to its default's type; unknown keys raise."""
    out = dict(defaults)
    for item in filter(None, arg.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(f"Preprocess {op!r}: bad argument {item!r} in {arg!r}; expected k=v with k in {sorted(defaults)}.")
        out[key] = type(defaults[key])(value) if defaults[key] is not None else value
    return out


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template-set name (TEMPLATE_SETS) or a sequence of templates -> tuple of templates."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ConfigError(f"Unknown template set {templates!r}; known: {sorted(TEMPLATE_SETS)}.")
        return TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates:
        raise ConfigError("Empty list of caption templates.")
    return templates


def format_caption(template: str, name: str, index: int) -> str:
    """template.format(name=class name, index=class id)."""
    return template.format(name=name, index=index)


def class_prompts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """K class names x T templates -> K*T captions, class-major (row k*T + t)."""
    return [format_caption(t, n, k) for k, n in enumerate(names) for t in templates]


def example_key(ex: Example, seed: int) -> int:
    """A deterministic per-example integer: "index" if present, else CRC32 of the image bytes."""
    if "index" in ex:
        base = int(np.asarray(ex["index"]))
    elif "image" in ex:
        image = ex["image"]
        data = image if isinstance(image, bytes) else np.ascontiguousarray(image).tobytes()
        base = zlib.crc32(data)
    else:
        raise DataError(f"Cannot derive a per-example key: example has neither 'index' nor 'image'; has {sorted(ex)}.")
    return zlib.crc32(np.asarray([base, seed], np.int64).tobytes())


def get_feature(ex: Example, path: str) -> Any:
    """ex["a"]["b"] for path "a/b" (or a flat key "a/b"); ValueError naming what is there."""
    if path in ex:
        return ex[path]
    node: Any = ex
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"Caption feature {path!r} missing: the example has features {describe_keys(ex)}.")
        node = node[part]
    return node


def describe_keys(ex: Any, prefix: str = "") -> list[str]:
    """All leaf paths of a nested example dict, "a/b" style."""
    keys = []
    for k, v in ex.items():
        keys += describe_keys(v, f"{prefix}{k}/") if isinstance(v, dict) else [f"{prefix}{k}"]
    return sorted(keys)


def as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


@functools.lru_cache(maxsize=8)
def cached_tokenizer(name_or_path: str) -> tokenizer.Tokenizer:
    """One tokenizer per (process, name): SentencePiece models load once."""
    return tokenizer.get_tokenizer(name_or_path)


# ----------------------------------------------------------------------------- ops


@register_op("class_caption")
def class_caption(arg: str = "") -> Callable[[Example], Example]:
    """"text" = a template of the set filled with the class of "label" (template chosen by example_key)."""
    kw = parse_kwargs("class_caption", arg, {"templates": "digits_train", "names": "digits", "seed": 0})
    templates = resolve_templates(kw["templates"])
    if kw["names"] not in CLASS_NAME_SETS:
        raise ConfigError(f"class_caption: unknown class-name set {kw['names']!r}; known: {sorted(CLASS_NAME_SETS)}.")
    names = CLASS_NAME_SETS[kw["names"]]

    def op(ex: Example) -> Example:
        if "label" not in ex:
            raise DataError(f"class_caption needs feature 'label'; the example has {describe_keys(ex)}.")
        label = int(np.asarray(ex["label"]))
        if not 0 <= label < len(names):
            raise ConfigError(f"class_caption: label {label} outside the {len(names)} class names of {kw['names']!r}.")
        template = templates[example_key(ex, kw["seed"]) % len(templates)]
        return {**ex, "text": format_caption(template, names[label], label)}

    return op


@register_op("pick_caption")
def pick_caption(arg: str = "") -> Callable[[Example], Example]:
    """"text" = one caption of `feature` (a string or a list of strings): the first, or by example_key."""
    kw = parse_kwargs("pick_caption", arg, {"feature": "captions/text", "choice": "first", "seed": 0})
    if kw["choice"] not in ("first", "hash"):
        raise ConfigError(f"pick_caption: choice must be 'first' or 'hash', got {kw['choice']!r}.")

    def op(ex: Example) -> Example:
        captions = get_feature(ex, kw["feature"])
        if isinstance(captions, (str, bytes, np.bytes_, np.str_)):
            captions = [captions]
        captions = list(np.asarray(captions, dtype=object).reshape(-1))
        if not captions:
            raise DataError(f"pick_caption: feature {kw['feature']!r} holds no captions.")
        k = 0 if kw["choice"] == "first" else example_key(ex, kw["seed"]) % len(captions)
        return {**ex, "text": as_text(captions[k])}

    return op


@register_op("tokenize")
def tokenize(arg: str = "") -> Callable[[Example], Example]:
    """"tokens" int32 [max_len] from the string feature `key` (default "text")."""
    kw = parse_kwargs("tokenize", arg, {"max_len": 48, "tokenizer": "bytes", "key": "text"})
    tok = cached_tokenizer(kw["tokenizer"])  # raises now, naming a missing model file

    def op(ex: Example) -> Example:
        if kw["key"] not in ex:
            raise DataError(f"tokenize: example has no text feature {kw['key']!r}; has {describe_keys(ex)}.")
        return {**ex, "tokens": tok.encode([as_text(ex[kw["key"]])], kw["max_len"])[0]}

    return op


def decode_and_resize(image: Any, size: int) -> np.ndarray:
    """Encoded bytes or uint8 [H, W, C] -> uint8 [size, size, C] (bilinear, Pillow; aspect not kept)."""
    array = image if isinstance(image, (bytes, np.bytes_)) else np.asarray(image)
    channels = 1 if not isinstance(array, bytes) and array.ndim == 3 and array.shape[-1] == 1 else 3
    pil = image_ops.as_pil(array, channels, "resize", draft=(size, size))
    return image_ops.to_array(pil.resize((size, size), image_ops.Image.BILINEAR))


@register_op("resize")
def resize(arg: str = "224") -> Callable[[Example], Example]:
    """"image" -> uint8 [size, size, C], decoding encoded bytes first."""
    size = int(arg)

    def op(ex: Example) -> Example:
        if "image" not in ex:
            raise DataError(f"resize: example has no 'image'; has {describe_keys(ex)}.")
        return {**ex, "image": decode_and_resize(ex["image"], size)}

    return op
