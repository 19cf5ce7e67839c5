"""Training from an imported CLIP: LiT (locked image tower) and image-text distillation, offline on digits.

The "pretrained" CLIP is configs/clip_digits_openclip.py's model (byte tokenizer) at a random
init, written by the test in open_clip's safetensors layout; the runs read it back through
`clip.init_from` / `clip.teacher` exactly as they would read a downloaded checkpoint.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxsup import experiment, sharding
from jaxsup.config import load_config
from jaxsup.interop import convert
from jaxsup.train import train_and_evaluate

from helpers import ROOT, apply_overrides, few_steps, read_metrics, restored_params

STEPS = 60


def short_config(name: str, **overrides):
    c = few_steps(load_config(os.path.join(ROOT, "configs", f"{name}:bytes")), STEPS, batch_size=None, log_every=2,
                  save_every=STEPS)
    c.optim.warmup_steps = 10
    return apply_overrides(c, overrides)


def logged(workdir: str, key: str) -> np.ndarray:
    return np.array([r[key] for r in read_metrics(workdir) if key in r])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(flat params, "open_clip:PATH") of a random-init clip_digits_openclip model saved as safetensors."""
    config = short_config("clip_digits_openclip.py")
    mesh = sharding.make_mesh(config.mesh)
    data = experiment.data_info(config, mesh)
    params, _ = experiment.build_task(config, mesh, data).init(jax.random.key(123), data.example)
    flat = {k: np.asarray(v) for k, v in convert.flatten(params).items()}
    path = str(tmp_path_factory.mktemp("pretrained") / "clip.safetensors")
    convert.write("open_clip", convert.export_flat("open_clip", flat), path)
    return flat, f"open_clip:{path}"


def test_lit_keeps_the_imported_image_tower_and_trains_the_text_tower(pretrained, tmp_path):
    flat, spec = pretrained
    metrics = train_and_evaluate(short_config("lit_digits.py", **{"clip.init_from": spec}), str(tmp_path))
    after = {k: np.asarray(v) for k, v in convert.flatten(restored_params(str(tmp_path))).items()}
    for key in flat:
        if key.split("/")[0] in ("img", "img_proj"):
            np.testing.assert_array_equal(after[key], flat[key], err_msg=key)  # imported, then locked
    text = [k for k in flat if k.startswith("txt/")]
    assert all(np.abs(after[k] - flat[k]).max() > 1e-4 for k in text)  # own init, then trained
    losses = logged(str(tmp_path), "train/loss")
    assert losses[-3:].mean() < 0.95 * losses[:3].mean(), losses  # measured 0.91
    assert metrics["zero_shot/top1"] > 0.2, metrics  # measured 0.33  # chance 0.1: fixed random image features carry the digits


def test_distillation_from_the_imported_teacher_beats_no_distillation(pretrained, tmp_path):
    _, spec = pretrained
    runs = {}
    for name, weights in (("kd", {}), ("baseline", {"clip.kd_weight": 0.0, "clip.feature_kd_weight": 0.0})):
        workdir = str(tmp_path / name)
        train_and_evaluate(short_config("clip_distill_digits.py", **{"clip.teacher": spec, **weights}), workdir)
        runs[name] = {k: logged(workdir, k) for k in ("train/kd_logit", "train/kd_feature")}
    kd, base = runs["kd"], runs["baseline"]
    for key in ("train/kd_logit", "train/kd_feature"):
        assert kd[key][-3:].mean() < 0.5 * kd[key][:3].mean(), (key, kd[key])  # the student moves to the teacher
        assert kd[key][-3:].mean() < 0.5 * base[key][-3:].mean(), (key, kd[key], base[key])  # and beats no KD


def test_clip_digits_openclip_learns_with_the_clip_tokenizer(tmp_path):
    """The config's own form (CLIP BPE, open_clip's ViT layout) learns zero-shot digits (needs [clip] + open_clip)."""
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    pytest.importorskip("open_clip")  # ships the vocabulary
    c = load_config(os.path.join(ROOT, "configs", "clip_digits_openclip.py"))
    c.total_steps, c.log_every, c.checkpoint.every, c.checkpoint.async_save = 150, 5, 150, False
    c.mesh, c.evals.zero_shot.every = (("data", 1),), 0
    metrics = train_and_evaluate(c, str(tmp_path))
    losses = logged(str(tmp_path), "train/loss")
    assert losses[-3:].mean() < 0.7 * losses[:3].mean(), losses  # measured 4.91 -> 2.42
    assert metrics["zero_shot/top1"] > 0.6, metrics  # measured 0.956 (chance 0.1)
