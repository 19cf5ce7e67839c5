"""grain pipeline: split indices, per-process slices, deterministic order."""
import numpy as np

from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources

PRE = preprocess.build(["image_to_float", "label_to_int32", "keep:image,label"])


def _source():
    return sources.open_source("digits", "train")


def test_index_is_the_position_in_the_split_in_every_epoch():
    source = _source()
    ds = pipeline.train_dataset(source, PRE, 479, seed=3)  # 3 batches per epoch of 1437.
    for k in (0, 2, 3, 7):  # Epochs 0..2.
        batch = ds[k]
        assert batch["index"].min() >= 0 and batch["index"].max() < len(source)
        want = np.stack([source[int(i)]["image"] for i in batch["index"]]).astype(np.float32) / 255.0
        np.testing.assert_array_equal(batch["image"], want)
    epoch = np.concatenate([ds[k]["index"] for k in range(3)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(len(source)))
    second = np.concatenate([ds[k]["index"] for k in range(3, 6)])
    assert not np.array_equal(epoch, second)  # Reshuffled each epoch.


def test_processes_read_disjoint_slices_of_each_global_batch():
    source = _source()
    ds = pipeline.train_dataset(source, PRE, 64, seed=0, process_count=2)
    whole = pipeline.train_dataset(source, PRE, 64, seed=0, process_count=1)
    p0 = next(pipeline.train_iterator(ds, 5, process_index=0, process_count=2))
    p1 = next(pipeline.train_iterator(ds, 5, process_index=1, process_count=2))
    np.testing.assert_array_equal(np.concatenate([p0["index"], p1["index"]]), whole[5]["index"])


def test_eval_batches_cover_the_split_once_with_a_mask():
    source = sources.open_source("digits", "test")
    batches = list(pipeline.eval_batches(source, PRE, 128))
    index = np.concatenate([b["index"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(index, np.arange(len(source)))
