"""python -m jaxsup.data.reinforce with an ensemble of public CLIP teachers (open_clip checkpoints + --teacher-config):
each stored image / text embedding equals that teacher's own forward on the stored crop / caption, computed here
from the exported parameters with the clip task's model (not the CLI's teacher code)."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxsup import experiment, sharding
from jaxsup.config import load_config
from jaxsup.data.datasets import shards
from jaxsup.data.host import reinforce_store as store
from jaxsup.data.host.image_ops import get_image
from jaxsup.data.reinforce import cli as reinforce
from jaxsup.data.text.tokenizer import get_tokenizer
from jaxsup.interop import convert

from helpers import ROOT
from test_reinforce import CROP, digits_ar  # noqa: F401 (session fixture)

CONFIG = os.path.join(ROOT, "configs/clip_digits_openclip.py:bytes")
CAPTIONS = "class:templates=digits_train,names=digits"


@pytest.fixture(scope="module")
def public_teachers(tmp_path_factory):
    """(the clip task's two_tower, [params of two random inits], [their open_clip safetensors files])."""
    config = load_config(CONFIG, {"mesh": (("data", 1),)})
    mesh = sharding.make_mesh(config.mesh)
    data = experiment.data_info(config, mesh)
    task = experiment.build_task(config, mesh, data)
    params, paths = [], []
    for seed in (0, 1):
        p, _ = task.init(jax.random.key(seed), data.example)
        path = str(tmp_path_factory.mktemp("public") / f"teacher{seed}.safetensors")
        convert.write("open_clip", convert.export_flat("open_clip", {k: np.asarray(v) for k, v in
                                                                     convert.flatten(p).items()}), path)
        params.append(p)
        paths.append(path)
    return task.model, params, paths


def test_an_ensemble_of_public_clip_teachers_stores_each_teachers_embeddings(digits_ar, public_teachers,  # noqa: F811
                                                                             tmp_path):
    model, params, paths = public_teachers
    spec = reinforce.make_spec(digits_ar, "train", [f"open_clip:{p}" for p in paths], teacher_config=[CONFIG, CONFIG],
                               augmentations=2, crop=CROP, captions=CAPTIONS, dtype="float32", batch_size=64)
    info = reinforce.reinforce(spec, str(tmp_path / "r"))
    side, split = store.Sidecar(str(tmp_path / "r")), shards.open_split(digits_ar, "train")
    tokenizer = get_tokenizer("bytes")
    for t, p in enumerate(params):
        log_t = model.apply({"params": p}, None, None)[2]["log_t"]
        np.testing.assert_allclose(info["teacher_scales"][t]["log_t"], float(log_t), rtol=1e-6)
    for index in (0, 57, 119):
        rec, ex = side[index], split[index]
        crops = np.stack([store.render(get_image(ex, "test"), store.augmentation(rec, j), side.info, "test")
                          for j in range(2)]).astype(np.float32) / 255.0
        tokens = np.asarray(tokenizer.encode(list(rec["captions"]), 40), np.int32)
        assert rec["zimg"].shape == (2, 2, 64) and rec["ztxt"].shape == (12, 2, 64)
        for t, p in enumerate(params):
            zimg, _, _ = model.apply({"params": p}, crops, None, train=False)
            _, ztxt, _ = model.apply({"params": p}, None, tokens, train=False)
            np.testing.assert_allclose(rec["zimg"][:, t], np.asarray(zimg), atol=2e-6)
            np.testing.assert_allclose(rec["ztxt"][:, t], np.asarray(ztxt), atol=2e-6)
        assert not np.allclose(rec["zimg"][:, 0], rec["zimg"][:, 1])  # two different teachers
        label = str(int(np.asarray(ex["label"])))
        assert any(word in rec["captions"][0] for word in ("zero one two three four five six seven eight nine".split()
                                                            + [label]))
