"""The real-scale configs' pipelines on the real TFDS builders, with random content (tfds.testing.mock_data).

`imagenet2012`, `coco_captions` and `cifar10` are the real builder classes and
feature specs; their records come from `tfds.testing.mock_data` (random images
of 5..49 px, random strings, labels in range), read through `as_data_source`
(array_record) without TensorFlow. The data dir holds only the metadata
(dataset_info.json with array_record splits), so jaxsup's own "is it prepared"
checks and split arithmetic run unchanged.
"""
from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import coco
from tensorflow_datasets.testing import mocking

from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import splits
from jaxsup.train import train_and_evaluate

from helpers import ROOT  # noqa: E402
MOCK_EXAMPLES = 32  # per split (mock_data gives every split, and every slice of it, this many)
SPLITS = {"imagenet2012": ("train", "validation"), "coco_captions": ("train", "val", "test"),
          "cifar10": ("train", "test")}


def mock_getitems(*args, generator, serialized=False):
    """tfds 4.9.10's mock `__getitems__` is set on the mock instance, so it is called without `self`."""
    assert not serialized
    return [generator[int(k)] for k in args[-1]]


def write_metadata(root: str, name: str, split_names: tuple[str, ...]) -> None:
    """dataset_info.json of the real builder, as if prepared as array_record with MOCK_EXAMPLES per split."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        builder = tfds.builder(name, try_gcs=False)
        info = builder.info
    template = lambda split: tfds.core.ShardedFileTemplate(  # noqa: E731
        data_dir=root, dataset_name=name, split=split, filetype_suffix="array_record")
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[MOCK_EXAMPLES], num_bytes=0, filename_template=template(s))
        for s in split_names]))
    info.set_file_format("array_record", override=True, override_if_initialized=True)
    version_dir = os.path.join(root, info.full_name)
    os.makedirs(version_dir, exist_ok=True)
    info.write_to_directory(version_dir)


@pytest.fixture(scope="module")
def mock_tfds(tmp_path_factory):
    """$TFDS_DATA_DIR with the three datasets' metadata; records from tfds.testing.mock_data."""
    root = str(tmp_path_factory.mktemp("tfds"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coco, "tf", types.SimpleNamespace(int64=np.int64))  # its feature spec names tf.int64; no TF here
        mp.setattr(mocking, "_getitems", mock_getitems)  # batched reads (array_record's __getitems__)
        mp.setenv("TFDS_DATA_DIR", root)
        for name, split_names in SPLITS.items():
            write_metadata(root, name, split_names)
        splits._cached_source.cache_clear()
        with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=root):
            yield root
        splits._cached_source.cache_clear()


def config(spec: str, **overrides):
    return load_config(os.path.join(ROOT, "configs", spec), overrides)


def first_train_batch(data_cfg, batch: int) -> dict[str, np.ndarray]:
    ds = pipeline.train_dataset(splits.open_split(data_cfg, data_cfg.train_split),
                                preprocess.build(data_cfg.preprocess), batch, seed=0, process_count=1)
    return next(pipeline.train_iterator(ds, 0, 0, 1, workers=2))


def eval_batch(data_cfg, split: str, ops, batch: int) -> dict[str, np.ndarray]:
    return next(pipeline.eval_batches(splits.open_split(data_cfg, split), preprocess.build(ops), batch,
                                      process_index=0, process_count=1))


@pytest.mark.parametrize("spec", ["clip_vit_b16.py", "siglip_vit_b16.py", "clip_vit_b16.py:runlocal"])
def test_clip_configs_read_coco_captions_and_cifar10(mock_tfds, spec):
    c = config(spec)
    size = 32 if "runlocal" in spec else 224
    max_len = c.model.text_kwargs.max_len
    train = first_train_batch(c.data, 8)
    assert train["image"].dtype == np.uint8 and train["image"].shape == (8, size, size, 3)
    assert train["tokens"].dtype == np.int32 and train["tokens"].shape == (8, max_len)
    assert (train["tokens"][:, 0] > 0).all()  # every caption (random 10-19 chars) tokenised, none empty
    retrieval = eval_batch(c.data, c.evals.retrieval.split, c.data.eval_preprocess, 8)
    assert retrieval["image"].shape == (8, size, size, 3) and retrieval["mask"].sum() == 8
    zs = c.evals.zero_shot
    zero_shot = eval_batch(load_config_data(c, zs.dataset), zs.split, zs.preprocess, 8)
    assert zero_shot["image"].shape == (8, size, size, 3) and zero_shot["label"].dtype == np.int32
    assert ((0 <= zero_shot["label"]) & (zero_shot["label"] < 10)).all()


def load_config_data(c, dataset: str):
    data = c.data.copy_and_resolve_references()
    with data.unlocked():
        data.name = dataset
    return data


def test_simclr_imagenet_config_reads_imagenet2012(mock_tfds):
    c = config("simclr_resnet50_imagenet.py")
    train = first_train_batch(c.data, 8)
    assert set(train) == {"image", "index"} and train["image"].shape == (8, 224, 224, 3)
    assert train["image"].dtype == np.uint8
    val = eval_batch(c.data, c.evals.knn.split, c.data.eval_preprocess, 8)
    assert val["image"].shape == (8, 224, 224, 3) and ((0 <= val["label"]) & (val["label"] < 1000)).all()


def train_runlocal(spec: str, workdir: str) -> tuple[dict, list[float], str]:
    """`spec` (a runlocal config) trained end to end on 8 CPU devices; (final metrics, logged losses, workdir)."""
    c = config(spec)
    for ev in c.evals.values():
        ev.every = c.total_steps  # one evaluation, at the end, is enough here
    final = train_and_evaluate(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    return final, losses, workdir


def test_clip_vit_b16_runlocal_trains_and_evaluates(mock_tfds, tmp_path):
    """ViT-B/16 family, ring loss, FSDP rules, coco_captions + zero-shot on cifar10 + retrieval (~30 CPU-s)."""
    final, losses, workdir = train_runlocal("clip_vit_b16.py:runlocal", str(tmp_path))
    assert len(losses) >= 2 and np.isfinite(losses).all()
    assert final["zero_shot/count"] == MOCK_EXAMPLES and final["retrieval/count"] == MOCK_EXAMPLES
    assert 0 <= final["zero_shot/top1"] <= final["zero_shot/top5"] <= 1
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


@pytest.mark.slow  # ~45 CPU-s, most of it compiling the ResNet step; its pipeline is tested above
def test_simclr_imagenet_runlocal_trains_and_evaluates(mock_tfds, tmp_path):
    final, losses, workdir = train_runlocal("simclr_resnet50_imagenet.py:runlocal", str(tmp_path))
    assert len(losses) >= 2 and np.isfinite(losses).all()
    # mock_data gives every split the same records, so the probes' accuracy says nothing here: only that they ran
    assert final["linear_probe/count"] == final["knn/count"] == MOCK_EXAMPLES
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
