"""Training from reinforced shards (configs/kd_digits_reinforced.py, task "distill" with config.reinforced):
the stored-target loss equals the online teacher's on the same batch and augmentation (k = V, f32);
a student learns from stored targets alone; config mistakes are one ConfigError naming them."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import shards
from jaxsup.errors import ConfigError
from jaxsup.experiment import build_task
from jaxsup.train import train_and_evaluate

from helpers import ROOT
from test_reinforce import digits_ar, make, teacher_dir  # noqa: F401 (session fixtures)

STUDENT = dict(widths=(16,), num_classes=10)


@pytest.fixture(scope="session")
def reinforced_full(digits_ar, teacher_dir, tmp_path_factory):  # noqa: F811
    """k = V = 10, float32 logits, at T = 2 (the config's temperature)."""
    out = str(tmp_path_factory.mktemp("reinforced_full") / "r")
    make(digits_ar, teacher_dir, out, topk=10, dtype="float32", temperature=2.0)
    return out


def kd_config(data, directory, *switches, **overrides):
    arg = ",".join([f"data={data}", f"reinforced={directory}", *switches])
    base = {"model": STUDENT, "batch_size": 32, "total_steps": 4, "log_every": 1, "checkpoint.every": 0,
            "checkpoint.async_save": False, "mesh": (("data", 1),), "evals.test.every": 0, "evals.test.batch_size": 60}
    return load_config(os.path.join(ROOT, f"configs/kd_digits_reinforced.py:{arg}"), {**base, **overrides})


def device_batch(config, step=0):
    data = pipeline.train_dataset(shards.open_split(config.data.path, "train"), preprocess.build(config.data.preprocess),
                                  config.batch_size, config.seed, process_count=1)
    return pipeline.to_global(data[step], jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def loss_and_grads(task, params, task_state, batch):
    frozen = task.load_frozen()

    def loss(p):
        return task.loss_fn(p, task_state, frozen, batch, jax.random.key(0), 0)[0]

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("step, kind", [(0, "kl"), (5, "kl"), (0, "soft_ce")])
def test_stored_targets_give_the_online_teachers_loss(digits_ar, teacher_dir, reinforced_full, step,  # noqa: F811
                                                      kind):
    stored = kd_config(digits_ar, reinforced_full, **{"distill.kind": kind})
    online = kd_config(digits_ar, reinforced_full, "online", **{"distill.teacher.path": teacher_dir,
                                                                "distill.kind": kind})
    assert_stored_equals_online(stored, online, step)


def assert_stored_equals_online(stored, online, step: int, online_keys: tuple[str, ...] = (),
                                grad_scale: float = 0.0) -> None:
    """On batch `step` of the stored config (only `online_keys` of it for the online task, all when empty):
    the same loss to 1e-6 and gradients to 1e-6 + grad_scale x the leaf's largest |gradient| (f32)."""
    assert stored.reinforced and not online.reinforced
    mesh = sharding.make_mesh((("data", 1),))
    batch = device_batch(stored, step)
    t_stored, t_online = build_task(stored, mesh), build_task(online, mesh)
    params, task_state = t_stored.init(jax.random.key(1), batch)
    value_s, grads_s = loss_and_grads(t_stored, params, task_state, batch)
    value_o, grads_o = loss_and_grads(t_online, params, task_state,
                                      {k: batch[k] for k in online_keys} if online_keys else batch)
    assert float(value_s) > 0.01
    np.testing.assert_allclose(float(value_s), float(value_o), rtol=0, atol=1e-6)
    for g_s, g_o in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_o)):
        g_s, g_o = np.asarray(g_s), np.asarray(g_o)
        assert np.abs(g_s - g_o).max() <= 1e-6 + grad_scale * np.abs(g_o).max(), np.abs(g_s - g_o).max()
    assert t_stored.load_frozen() == {}  # no teacher on the devices


def test_a_student_learns_from_stored_targets_alone(digits_ar, teacher_dir, reinforced_full, tmp_path):  # noqa: F811
    config = kd_config(digits_ar, reinforced_full, **{"total_steps": 150, "log_every": 10, "optim.lr": 1e-2,
                                                      "optim.warmup_steps": 10})
    result = train_and_evaluate(config, str(tmp_path / "run"))
    import json

    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    kd = [r["train/kd"] for r in rows if "train/kd" in r]
    assert kd[-1] < 0.5 * kd[0], kd
    assert result["test/top1"] > 0.6, result  # 10 classes: chance is 0.1 (measured: 0.85)


@pytest.mark.parametrize("overrides, switches, match", [
    ({"distill.kind": "rkl"}, (), "needs distill.kind 'kl' or 'soft_ce'"),
    ({"distill.augment": "crop"}, (), "augment='none'"),
    ({"data.preprocess": ("decode:channels=1", "keep:image")}, (), "needs config.data.preprocess to replay it"),
    ({"distill.temperature": 3.0}, ("K5",), "stores the rest at T = 2.0"),
])
def test_config_mistakes_are_one_config_error(digits_ar, teacher_dir, reinforced_full, tmp_path,  # noqa: F811
                                              overrides, switches, match):
    directory = reinforced_full
    if switches == ("K5",):
        directory = str(tmp_path / "k5")
        make(digits_ar, teacher_dir, directory, topk=5, temperature=2.0)
    config = kd_config(digits_ar, directory, **overrides)
    with pytest.raises(ConfigError, match=match):
        build_task(config, sharding.make_mesh((("data", 1),)))


def test_stored_batch_has_the_targets_and_no_labels(digits_ar, reinforced_full):  # noqa: F811
    batch = device_batch(kd_config(digits_ar, reinforced_full))
    assert sorted(batch) == ["image", "index", "reinforced_indices", "reinforced_logits", "reinforced_lse_rest"]
    assert batch["image"].dtype == jnp.float32 and batch["reinforced_logits"].shape == (32, 10)


def assert_resumed_run_equals_straight(make_config, tmp_path, caplog) -> None:
    """Straight 10 steps vs. the same run cut after its step-5 checkpoint (as a kill leaves it) and resumed:
    the replayed augmentations and stored targets of steps 6..10 are the same, so are the params, bit for bit."""
    import shutil

    from helpers import restored_params, train_losses

    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_and_evaluate(make_config(), straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "10"))
    with caplog.at_level("INFO", logger="jaxsup"):
        train_and_evaluate(make_config(), resumed)
    assert "at step 5." in caplog.text  # it resumed (a restart from 0 would also end equal)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), restored_params(straight), restored_params(resumed))
    assert train_losses(straight)[10] == train_losses(resumed)[10]


def test_a_run_resumed_from_a_mid_run_checkpoint_equals_a_straight_one(digits_ar, reinforced_full,  # noqa: F811
                                                                       tmp_path, caplog):
    assert_resumed_run_equals_straight(
        lambda: kd_config(digits_ar, reinforced_full, **{"total_steps": 10, "checkpoint.every": 5}), tmp_path, caplog)
