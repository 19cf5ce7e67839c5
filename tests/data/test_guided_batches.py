"""G-SimCLR's guided batches: distinct pseudo-classes in every global batch, the
most batches an epoch allows, the order a pure function of (seed, step) through
the grain pipeline (resume, processes), k-means, the pseudo-class file's checks."""
from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from jaxsup.config import base_config
from jaxsup.data.loader import guided_batches as G
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.errors import ConfigError, DataError

SIZES = (9, 3, 7, 5, 2, 6)  # k = 6 pseudo-classes of 32 examples


def _labels(sizes=SIZES, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes))


@functools.lru_cache(maxsize=None)
def _brute_force_max(sizes, batch):
    """The most rounds taking `batch` distinct non-empty classes, by exhaustive search."""
    sizes = tuple(sorted(sizes))
    best = 0
    for chosen in itertools.combinations(range(len(sizes)), batch):
        if all(sizes[c] > 0 for c in chosen):
            left = list(sizes)
            for c in chosen:
                left[c] -= 1
            best = max(best, 1 + _brute_force_max(tuple(sorted(left)), batch))
    return best


@pytest.mark.parametrize("batch", [2, 3, 4, 6])
def test_every_batch_has_distinct_classes_and_the_epoch_is_maximal(batch):
    labels = _labels()
    order = G.GuidedOrder(labels, batch)
    assert order.batches_per_epoch == G.max_batches(np.array(SIZES), batch) == _brute_force_max(SIZES, batch)
    for epoch in range(3):
        idx = order(7, epoch)
        assert len(idx) == order.epoch_length and len(set(idx.tolist())) == len(idx)  # no repeats
        for block in idx.reshape(-1, batch):
            assert len(set(labels[block].tolist())) == batch
    assert not np.array_equal(order(7, 0), order(7, 1))
    assert np.array_equal(order(7, 1), G.GuidedOrder(labels, batch)(7, 1))  # a pure function of (seed, epoch)


def test_left_out_examples_change_between_epochs():
    labels = _labels()
    order = G.GuidedOrder(labels, 6)  # 2 batches: each epoch keeps 2 of every class
    seen = set().union(*(set(order(0, e).tolist()) for e in range(60)))
    assert order.epoch_length == 12 and len(seen) == len(labels)


def _source(n):
    return [{"image": np.full((2, 2, 1), i, np.uint8), "label": np.int64(i)} for i in range(n)]


PRE = preprocess.build(("keep:image,label",))


def test_pipeline_batches_are_guided_resumable_and_split_over_processes():
    labels = _labels()
    whole = pipeline.train_dataset(_source(32), PRE, 4, seed=3, guide=labels)
    steps = [whole[k]["label"] for k in range(12)]  # 3 epochs of 4 batches... and beyond
    for ids in steps:
        assert len(set(labels[ids].tolist())) == 4
    resumed = pipeline.train_iterator(pipeline.train_dataset(_source(32), PRE, 4, seed=3, guide=labels), 5)
    for k in range(5, 9):
        np.testing.assert_array_equal(next(resumed)["label"], steps[k])
    split = pipeline.train_dataset(_source(32), PRE, 4, seed=3, process_count=2, guide=labels)
    for k in range(4):
        np.testing.assert_array_equal(np.concatenate([split[2 * k]["label"], split[2 * k + 1]["label"]]), steps[k])


def test_batch_larger_than_k_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeds the 6 pseudo-classes"):
        pipeline.train_dataset(_source(32), PRE, 8, seed=0, guide=_labels())


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 5)) * 10
    truth = np.repeat(np.arange(4), 25)
    x = centres[truth] + rng.normal(size=(100, 5)) * 0.1
    found = G.kmeans(x, 4, seed=1)
    assert len(set(zip(truth.tolist(), found.tolist()))) == 4  # a relabelling of the truth
    np.testing.assert_array_equal(found, G.kmeans(x, 4, seed=1))


def test_guide_file_round_trip_and_checks(tmp_path):
    data = base_config("simclr").data
    path = str(tmp_path / "guide.npz")
    G.save_guide(path, _labels(), "train", "digits")
    assert G.load_guide(data, 32) is None  # batch_guide empty: no guide
    data.batch_guide = path
    np.testing.assert_array_equal(G.load_guide(data, 32), _labels())
    with pytest.raises(DataError, match="split has 40 examples"):
        G.load_guide(data, 40)
    data.train_split = "train[:50%]"
    with pytest.raises(DataError, match="are for 'digits' split 'train'"):
        G.load_guide(data, 32)
    data.batch_guide = str(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="does not exist"):
        G.load_guide(data, 32)


def test_a_guided_run_trains_and_a_missing_guide_is_named(tmp_path):
    """configs/gsimclr_digits.py through train_and_evaluate: guide file -> run; missing file -> DataError."""
    import os

    from helpers import ROOT
    from jaxsup.config import load_config
    from jaxsup.train import train_and_evaluate

    guide = str(tmp_path / "guide.npz")
    G.save_guide(guide, np.arange(1437) % 10, "train", "digits")
    missing = load_config(os.path.join(ROOT, "configs/gsimclr_digits.py:guide=" + str(tmp_path / "none.npz")),
                          {"mesh": (("data", 1),)})
    with pytest.raises(DataError, match="does not exist"):
        train_and_evaluate(missing, str(tmp_path / "missing"))
    c = load_config(os.path.join(ROOT, f"configs/gsimclr_digits.py:runlocal,guide={guide}"))
    c.total_steps, c.checkpoint.async_save, c.mesh = 4, False, (("data", 1),)
    c.evals = {}
    metrics = train_and_evaluate(c, str(tmp_path / "run"))
    assert np.isfinite(metrics["train/loss"])


def test_resuming_with_another_guide_is_refused():
    """The guide changes the data order, so a checkpoint written with one does not resume under another."""
    import json

    from jaxsup.checkpoint import check_same_run
    from jaxsup.errors import CheckpointError

    config = base_config("simclr")
    config.data.batch_guide = "/runs/guide_a.npz"
    meta = {"seed": 0, "config": json.dumps(config.to_dict())}
    check_same_run(meta, config, "ckpt")  # the same guide resumes
    config.data.batch_guide = ""
    with pytest.raises(CheckpointError, match="data.batch_guide: checkpoint '/runs/guide_a.npz' vs config ''"):
        check_same_run(meta, config, "ckpt")
