"""Class-name lists and prompt-template sets for zero-shot evaluation, read from data files.

    names("imagenet2012")           -> 1000 names in label order
    templates("openai_imagenet")    -> the 80 OpenAI prompt templates ("a photo of a {name}.")

The files live in jaxsup/data/text/zero_shot/ (one entry per line); their sources and licences
are in jaxsup/data/text/zero_shot/NOTICE.md.
"""
from __future__ import annotations

import functools
import os

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zero_shot")
NAME_FILES = {"imagenet2012": "imagenet2012_classes.txt", "cifar10": "cifar10_classes.txt",
              "cifar100": "cifar100_classes.txt"}
TEMPLATE_FILES = {"openai_imagenet": "openai_imagenet_templates.txt"}


@functools.cache
def read_lines(filename: str) -> tuple[str, ...]:
    """The non-empty lines of a file in DATA_DIR."""
    with open(os.path.join(DATA_DIR, filename), encoding="utf-8") as f:
        return tuple(line.rstrip("\n") for line in f if line.strip())


def names(name_set: str) -> tuple[str, ...]:
    """The class names of a NAME_FILES set, in label order."""
    return read_lines(NAME_FILES[name_set])


def templates(template_set: str) -> tuple[str, ...]:
    """The templates of a TEMPLATE_FILES set ("{name}" marks the class name)."""
    return read_lines(TEMPLATE_FILES[template_set])
