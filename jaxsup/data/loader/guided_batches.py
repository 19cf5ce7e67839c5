"""G-SimCLR's guided batches: no two examples of one pseudo-class in a global batch.

Pseudo-classes come from k-means (`kmeans`) on the features an earlier encoder
gives the train split, stored in a file (`save_guide` / `load_guide`):

  an .npz with labels [N] int (pseudo-class of example i of the split, in split
  order), split, dataset (the TFDS split string and dataset name).

`GuidedOrder(labels, batch)` orders each epoch so that every block of `batch`
consecutive positions (a global batch) holds `batch` distinct pseudo-classes,
which needs `batch <= k`. An epoch is `batches_per_epoch` such blocks: the
most any arrangement fits (`max_batches`), so examples of classes larger than
that are left out of the epoch, a different subset each epoch. The order is a
pure function of (seed, epoch), so batch s of the stream is a function of
(seed, s) and a resumed run reads what the uninterrupted one would.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from jaxsup.errors import ConfigError, DataError

_SALT = 0x65D  # keeps the guided streams apart from the plain epoch permutations


def max_batches(counts: np.ndarray, batch: int) -> int:
    """The most blocks of `batch` distinct classes that class sizes `counts` [k] allow:
    the largest m with sum_c min(count_c, m) >= batch * m."""
    counts = np.asarray(counts, np.int64)
    m = int(counts.sum()) // batch
    while m > 0 and np.minimum(counts, m).sum() < batch * m:
        m -= 1
    return m


class GuidedOrder:
    """Epoch orders in which every `batch` consecutive examples have distinct `labels`."""

    def __init__(self, labels: np.ndarray, batch: int):
        labels = np.asarray(labels)
        self.classes, counts = np.unique(labels, return_counts=True)
        if batch > len(self.classes):
            raise ConfigError(
                f"Guided batches: global batch {batch} exceeds the {len(self.classes)} pseudo-classes; a "
                "batch with no two examples of one class needs batch_size <= k (cluster into more classes).")
        self.labels, self.batch = labels, batch
        self.batches_per_epoch = max_batches(counts, batch)
        self.epoch_length = self.batches_per_epoch * batch
        self.members = [np.flatnonzero(labels == c) for c in self.classes]

    @functools.lru_cache(maxsize=4)
    def __call__(self, seed: int, epoch: int) -> np.ndarray:
        """Example indices [epoch_length] of `epoch`: blocks of `batch` distinct classes.

        Each class is shuffled; each block takes the next example of the `batch`
        classes with the most examples left (ties broken at random), which
        reaches `batches_per_epoch` blocks; blocks and their rows are shuffled.
        """
        rng = np.random.default_rng([seed % 2**32, epoch, _SALT])
        members = [rng.permutation(m) for m in self.members]
        left = np.array([len(m) for m in members])
        blocks = np.empty((self.batches_per_epoch, self.batch), np.int64)
        for b in range(self.batches_per_epoch):
            chosen = np.lexsort((rng.random(len(left)), -left))[: self.batch]
            blocks[b] = [members[c][len(members[c]) - left[c]] for c in chosen]
            left[chosen] -= 1
        blocks = rng.permuted(blocks[rng.permutation(len(blocks))], axis=1)
        order = blocks.reshape(-1)
        order.setflags(write=False)
        return order


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50) -> np.ndarray:
    """Pseudo-classes [N] int32 of rows x [N, D] by k-means (k-means++ seeding, Lloyd steps)."""
    x = np.asarray(x, np.float64)
    if not 1 <= k <= len(x):
        raise ConfigError(f"k-means: k={k} must be in [1, {len(x)}] (the number of examples).")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(k - 1):
        d2 = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centres = np.array(centres)
    labels = np.zeros(len(x), np.int32)
    for _ in range(iters):
        d2 = (x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None]
        new = np.argmin(d2, axis=1).astype(np.int32)
        for c in range(k):
            if np.any(new == c):
                centres[c] = x[new == c].mean(0)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def save_guide(path: str, labels: np.ndarray, split: str, dataset: str) -> None:
    """Writes the pseudo-class file atomically (labels [N] in split order)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, labels=np.asarray(labels, np.int32), split=np.str_(split), dataset=np.str_(dataset))
    os.replace(tmp, path)


def load_guide(data_cfg: Any, num_examples: int) -> np.ndarray | None:
    """config.data.batch_guide's pseudo-classes [num_examples] (None when the field is empty).

    DataError if the file is missing, is for another split or dataset, or does
    not have one label per example.
    """
    path = data_cfg.get("batch_guide", "")
    if not path:
        return None
    if not os.path.isfile(path):
        raise DataError(f"config.data.batch_guide {path!r} does not exist: write it first "
                        "(scripts/gsimclr_pseudo_classes.py).")
    with np.load(path) as f:
        if not {"labels", "split", "dataset"} <= set(f.files):
            raise DataError(f"Pseudo-class file {path!r} has {sorted(f.files)}; needs labels, split, dataset.")
        labels, split, dataset = np.asarray(f["labels"]), str(f["split"]), str(f["dataset"])
    if (split, dataset) != (data_cfg.train_split, data_cfg.name):
        raise DataError(f"Pseudo-classes {path!r} are for {dataset!r} split {split!r}, but the run trains on "
                        f"{data_cfg.name!r} split {data_cfg.train_split!r}.")
    if labels.shape != (num_examples,):
        raise DataError(f"Pseudo-classes {path!r} have shape {labels.shape}; the split has {num_examples} examples.")
    return labels
