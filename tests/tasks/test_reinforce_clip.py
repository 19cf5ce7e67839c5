"""CLIP students from reinforced shards (configs/clip_digits_reinforced.py, task "clip" with config.reinforced):
the stored teacher embeddings are the teacher's on the replayed crop and caption, so the stored-target loss
and gradients equal the online teacher's on the same batch (f32); a student learns from them alone;
config mistakes are one ConfigError naming them."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.data.host import reinforce_store as store
from jaxsup.data.reinforce import cli as reinforce
from jaxsup.errors import ConfigError
from jaxsup.experiment import build_task
from jaxsup.tasks.clip import reinforced as clip_task_reinforced
from jaxsup.train import train_and_evaluate

from helpers import ROOT, read_metrics
from test_reinforce import CROP, digits_ar  # noqa: F401 (session fixture)
from test_reinforce_training import assert_resumed_run_equals_straight, assert_stored_equals_online, device_batch

TEACHER = dict(image="cnn", image_kwargs=dict(widths=(32, 64), num_classes=None), text="text_transformer",
               text_kwargs=dict(vocab_size=259, max_len=40, width=32, depth=1, num_heads=2, mlp_dim=64),
               embed_dim=32, project=True)
STUDENT_OVERRIDES = {"model.image_kwargs.widths": (16,), "model.text_kwargs.width": 16,
                     "model.text_kwargs.mlp_dim": 32}
CAPTIONS = "class:templates=digits_train,names=digits"


def quiet(config):
    for ev in config.evals.values():
        ev.every = 0
    return config


def train_teacher(workdir: str, steps: int, loss: str = "softmax") -> str:
    """configs/clip_digits.py with smaller towers (TEACHER) and `loss`, trained for `steps`."""
    config = load_config(os.path.join(ROOT, "configs/clip_digits.py"), {
        "model": TEACHER, "clip.loss": loss, "batch_size": 64, "total_steps": steps, "log_every": 50,
        "optim.warmup_steps": 20, "checkpoint.every": steps, "checkpoint.async_save": False, "mesh": (("data", 1),)})
    train_and_evaluate(quiet(config), workdir)
    return workdir


def reinforce_with(digits_ar, teacher: str, out: str) -> str:  # noqa: F811
    spec = reinforce.make_spec(digits_ar, "train", teacher, augmentations=3, crop=CROP, batch_size=64,
                               captions=CAPTIONS, dtype="float32")
    reinforce.reinforce(spec, out)
    return out


@pytest.fixture(scope="session")
def clip_teacher(tmp_path_factory):
    """150 steps: zero-shot well above chance."""
    return train_teacher(str(tmp_path_factory.mktemp("clip_teacher")), 150)


@pytest.fixture(scope="session")
def clip_reinforced(digits_ar, clip_teacher, tmp_path_factory):  # noqa: F811
    return reinforce_with(digits_ar, clip_teacher, str(tmp_path_factory.mktemp("clip_reinforced") / "r"))


def clip_config(data, directory, *switches, **overrides):
    arg = ",".join([f"data={data}", f"reinforced={directory}", *switches])
    base = {"clip.teacher_model": TEACHER, "model.embed_dim": 32, **STUDENT_OVERRIDES, "batch_size": 32,
            "total_steps": 4, "log_every": 1, "checkpoint.every": 0, "checkpoint.async_save": False,
            "mesh": (("data", 1),)}
    return quiet(load_config(os.path.join(ROOT, f"configs/clip_digits_reinforced.py:{arg}"), {**base, **overrides}))


def test_the_store_has_each_teachers_embeddings_and_the_class_captions(clip_reinforced, digits_ar):  # noqa: F811
    info = store.read_info(clip_reinforced)
    assert info["kind"] == "clip" and len(info["teacher_scales"]) == 1
    rec = store.Sidecar(clip_reinforced)[0]
    assert rec["zimg"].shape == (3, 1, 32) and rec["ztxt"].shape == (len(rec["captions"]), 1, 32)
    np.testing.assert_allclose(np.linalg.norm(rec["zimg"], axis=-1), 1.0, atol=1e-5)  # unit embeddings
    assert len(rec["captions"]) == 12 and len(set(rec["captions"])) == 12
    batch = device_batch(clip_config(digits_ar, clip_reinforced))
    assert sorted(batch) == ["image", "index", "reinforced_zimg", "reinforced_ztxt", "tokens"]
    assert batch["reinforced_zimg"].shape == (32, 1, 32) and batch["tokens"].shape == (32, 40)


@pytest.mark.parametrize("step, overrides", [
    (0, {}),
    (3, {"clip.feature_kd_weight": 0.5}),
    (1, {"clip.contrastive_weight": 0.0}),
])
def test_stored_embeddings_give_the_online_teachers_loss(digits_ar, clip_teacher, clip_reinforced, step,  # noqa: F811
                                                         overrides):
    stored = clip_config(digits_ar, clip_reinforced, **overrides)
    online = clip_config(digits_ar, clip_reinforced, "online", **{"clip.teacher": clip_teacher, **overrides})
    # the stored embeddings came from teacher batches of other crops: float32 rounding (scaled by exp(log_t) ~ 15),
    # so the gradients agree to 1e-5 of the leaf's largest (measured: <= 1.3e-6)
    assert_stored_equals_online(stored, online, step, ("image", "tokens"), grad_scale=1e-5)


def test_a_siglip_student_from_a_siglip_teachers_store_gets_the_online_loss(digits_ar, tmp_path):  # noqa: F811
    teacher = train_teacher(str(tmp_path / "siglip_teacher"), 20, loss="sigmoid")
    directory = reinforce_with(digits_ar, teacher, str(tmp_path / "r"))
    assert set(store.read_info(directory)["teacher_scales"][0]) == {"log_t", "bias"}
    sigmoid = {"clip.loss": "sigmoid", "clip.feature_kd_weight": 0.5}
    stored = clip_config(digits_ar, directory, **sigmoid)
    online = clip_config(digits_ar, directory, "online", **{"clip.teacher": teacher, **sigmoid})
    assert_stored_equals_online(stored, online, 2, ("image", "tokens"), grad_scale=1e-5)


def test_a_clip_student_learns_from_stored_embeddings_alone(digits_ar, clip_reinforced, tmp_path):  # noqa: F811
    config = clip_config(digits_ar, clip_reinforced, **{
        "total_steps": 300, "log_every": 10, "optim.warmup_steps": 10, "optim.lr": 5e-3, "batch_size": 64,
        "evals.zero_shot.every": 300, "evals.zero_shot.batch_size": 60})
    config.evals = {"zero_shot": config.evals.zero_shot}
    result = train_and_evaluate(config, str(tmp_path / "run"))
    kd = [r["train/kd_logit"] for r in read_metrics(str(tmp_path / "run")) if "train/kd_logit" in r]
    assert kd[-1] < 0.6 * kd[0], kd
    assert result["zero_shot/top1"] > 0.35, result  # 10 classes: chance is 0.1 (measured: 0.57)


@pytest.mark.parametrize("overrides, switches, match", [
    ({"clip.teacher": "/tmp/run"}, (), "are both set"),
    ({"clip.kd_weight": 0.0}, (), "needs clip.kd_weight or clip.feature_kd_weight"),
    ({"clip.feature_kd_weight": 1.0, "model.embed_dim": 16}, (), "needs the student's embed_dim"),
    ({"data.preprocess": ("decode:channels=1", "keep:image")}, (), "needs config.data.preprocess to replay it"),
    ({"clip.contrastive_weight": 0.5}, ("online",), "needs config.clip.teacher or config.reinforced"),
])
def test_config_mistakes_are_one_config_error(digits_ar, clip_reinforced, overrides, switches, match):  # noqa: F811
    config = clip_config(digits_ar, clip_reinforced, *switches, **overrides)
    with pytest.raises(ConfigError, match=match):
        build_task(config, sharding.make_mesh((("data", 1),)))


def test_a_classifier_reinforcement_is_refused_by_the_clip_task(digits_ar, clip_reinforced, tmp_path):  # noqa: F811
    fake = tmp_path / "classifier"
    fake.mkdir()
    (fake / store.INFO).write_text(json.dumps({**store.read_info(clip_reinforced), "kind": "classifier"}))
    config = clip_config(digits_ar, str(fake))
    example = {k: np.zeros((1, 1, 32), np.float32) for k in clip_task_reinforced.TARGETS}
    with pytest.raises(ConfigError, match="stores 'classifier' teacher targets"):
        clip_task_reinforced.check_reinforced(config, example, 32)


@pytest.mark.parametrize("name, loss", [("clip_vit_b16.py", "softmax"), ("siglip_vit_b16.py", "sigmoid")])
def test_the_real_scale_configs_take_a_reinforced_switch(name, loss):
    config = load_config(os.path.join(ROOT, "configs", f"{name}:data=/data/cc3m,reinforced=/data/cc3m/train/r"))
    assert config.reinforced == "/data/cc3m/train/r" and config.clip.loss == loss
    assert store.replay_dir(config.data.preprocess) == config.reinforced
    assert config.data.preprocess[-1] == "keep:image,tokens,reinforced_zimg,reinforced_ztxt"
    assert (config.clip.contrastive_weight, config.clip.kd_weight) == (0.3, 0.7)
    with pytest.raises(ConfigError, match="needs 'data=DIR'"):
        load_config(os.path.join(ROOT, "configs", f"{name}:reinforced=/data/r"))


def test_a_clip_run_resumed_from_a_mid_run_checkpoint_equals_a_straight_one(digits_ar, clip_reinforced,  # noqa: F811
                                                                            tmp_path, caplog):
    assert_resumed_run_equals_straight(
        lambda: clip_config(digits_ar, clip_reinforced, **{"total_steps": 10, "checkpoint.every": 5}), tmp_path, caplog)
