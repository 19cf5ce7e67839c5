"""The weak labels file of a weak-to-strong run: the supervisor's soft labels of a split.

An .npz with
  probs [N, K] f32   the supervisor's softmax on each example of the split
  index [N] int      the example's position in the split (the batch "index")
  split, dataset     the TFDS split string and dataset name they belong to
written by `jaxsup.w2s` and read by task "weak_to_strong".
"""
from __future__ import annotations

import os

import numpy as np

from jaxsup.errors import ConfigError, DataError


def save_weak_labels(path: str, probs: np.ndarray, index: np.ndarray, split: str, dataset: str) -> None:
    """Writes the weak labels .npz atomically (probs [N, K], index [N])."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, probs=np.asarray(probs, np.float32), index=np.asarray(index, np.int64),
             split=np.str_(split), dataset=np.str_(dataset))
    os.replace(tmp, path)


def load_weak_labels(path: str, split: str, dataset: str, num_examples: int, num_classes: int) -> np.ndarray:
    """Weak labels of `split` as a table [num_examples, num_classes] f32, row i = example index i.

    Raises DataError if the file is missing, belongs to another split or
    dataset, has another number of examples or classes, or rows that are not
    probability distributions.
    """
    if not path:
        raise ConfigError("w2s.weak_labels is empty: give the .npz the weak supervisor wrote (see jaxsup.w2s).")
    if not os.path.isfile(path):
        raise DataError(
            f"Weak labels file {path!r} does not exist: run the weak supervisor and its labelling "
            "stage first (python -m jaxsup.w2s), or fix w2s.weak_labels."
        )
    with np.load(path) as f:
        missing = [k for k in ("probs", "index", "split", "dataset") if k not in f.files]
        if missing:
            raise DataError(f"Weak labels file {path!r} lacks {missing}; it has {sorted(f.files)}.")
        probs, index = np.asarray(f["probs"], np.float32), np.asarray(f["index"])
        saved_split, saved_dataset = str(f["split"]), str(f["dataset"])
    if (saved_split, saved_dataset) != (split, dataset):
        raise DataError(
            f"Weak labels {path!r} are for {saved_dataset!r} split {saved_split!r}, but the student trains "
            f"on {dataset!r} split {split!r}."
        )
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise DataError(
            f"Weak labels {path!r} have shape {probs.shape}; the student has {num_classes} classes, so "
            f"they must be [N, {num_classes}] (wrong number of classes)."
        )
    if probs.shape[0] != num_examples or index.shape != (num_examples,):
        raise DataError(
            f"Weak labels {path!r} cover {probs.shape[0]} examples (index {index.shape}), but split "
            f"{split!r} has {num_examples}."
        )
    if not np.array_equal(np.sort(index), np.arange(num_examples)):
        raise DataError(f"Weak labels {path!r}: index is not a permutation of 0..{num_examples - 1}.")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > 1e-3:
        raise DataError(f"Weak labels {path!r}: rows must be probability distributions (>= 0, summing to 1).")
    table = np.empty_like(probs)
    table[index] = probs
    return table
