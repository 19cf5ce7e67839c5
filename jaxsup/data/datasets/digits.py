"""The offline default dataset: scikit-learn's 8x8 digits as a local TFDS builder.

1797 grey 8x8 images (scikit-learn ships them; values 0..16, stored here as
uint8 scaled to 0..255, shape [8, 8, 1]) and 10 labels. Split: a fixed
permutation (NumPy seed 0) of all examples; the first 1437 (80 %) are
"train", the last 360 are "test". Prepared once, as array_record, into
`<data_dir>/digits/1.0.0`, then read with `tfds.data_source` like any TFDS
dataset, so the default run exercises the real TFDS + grain path.
"""
from __future__ import annotations

import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1437
SPLIT_SEED = 0
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def split_indices(num_examples: int) -> dict[str, np.ndarray]:
    """Example indices of each split: a seeded permutation cut at NUM_TRAIN."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    return {"train": np.sort(perm[:NUM_TRAIN]), "test": np.sort(perm[NUM_TRAIN:])}


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits (UCI optical recognition of handwritten digits, test part)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "80/20 split with a seed-0 permutation."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="scikit-learn load_digits(): 8x8 handwritten digits.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded: the data ships with scikit-learn.
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        return {
            split: self._generate_examples(images, labels, idx)
            for split, idx in split_indices(len(labels)).items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}


def prepare(data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds the array_record files into data_dir if missing; returns the builder.

    A file lock makes concurrent first uses (parallel tests, several local
    processes) build it once.
    """
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".digits.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        builder = Digits(data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
        return builder
