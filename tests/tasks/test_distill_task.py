"""Task "distill" (teacher from a checkpoint), the "distill" evaluator and task "finetune"."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import checkpoint, sharding
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources
from jaxsup.evaluators.distill import DistillEvaluator
from jaxsup.config import teacher_spec
from jaxsup.experiment import build_task
from jaxsup.tasks.common import FrozenModel, augment_images, build_model
from jaxsup.train import train_and_evaluate

from helpers import ROOT, restored_params, tiny_supervised_config

TEACHER_MODEL = dict(widths=(32,), num_classes=10)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A finished supervised run (MLP 32) to distil from."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(tiny_supervised_config(total_steps=8, **{"model": TEACHER_MODEL}), workdir)
    return workdir


def kd_config(teacher_dir, **overrides):
    base = {
        "distill.teacher.path": teacher_dir, "data.train_split": "train",
        "model_name": "mlp", "model": dict(widths=(16,), num_classes=10),
        "batch_size": 32, "total_steps": 4, "log_every": 1, "checkpoint.every": 0, "checkpoint.async_save": False,
        "mesh": (("data", 1),), "evals.test.every": 0, "evals.test.batch_size": 120,
    }
    return load_config(os.path.join(ROOT, "configs/kd_digits.py:runlocal"), {**base, **overrides})


def make_task(config, devices=1):
    return build_task(config, sharding.make_mesh((("data", devices),)))


def train_batch(config, size=32, seed=3, step=0):
    source = sources.open_source(config.data.name, config.data.train_split)
    data = pipeline.train_dataset(source, preprocess.build(config.data.preprocess), size, seed)
    return {k: jnp.asarray(v) for k, v in data[step].items()}


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def teacher_logits(teacher_dir, images):
    model = build_model("mlp", TEACHER_MODEL)
    return np.asarray(model.apply({"params": restored_params(teacher_dir)}, images)[0])


def jnp_kd_reference(s, t, labels, weights, T, alpha):
    """alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE over weighted rows."""
    lp, lq = jax.nn.log_softmax(t / T), jax.nn.log_softmax(s / T)
    kl = T**2 * jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), -1))
    ce_rows = -jnp.take_along_axis(jax.nn.log_softmax(s), labels[:, None], -1)[:, 0]
    return alpha * kl + (1 - alpha) * jnp.sum(weights * ce_rows) / jnp.sum(weights)


@pytest.mark.parametrize("labelled_split", ["", "train[:10%]"])
def test_kd_loss_and_grads_match_the_formula(teacher_dir, labelled_split):
    config = kd_config(teacher_dir, **{"distill.alpha": 0.7, "distill.temperature": 3.0,
                                       "distill.augment": "none", "distill.labelled_split": labelled_split})
    task = make_task(config)
    batch = train_batch(config, size=64, step=30)  # second epoch
    params, state = task.init(jax.random.key(1), jax.tree.map(lambda x: x[:1], batch))
    frozen = task.load_frozen()
    t = jnp.asarray(teacher_logits(teacher_dir, batch["image"]))
    labelled_source = sources.open_source("digits", "train[:10%]")
    weights = (batch["index"] < len(labelled_source) if labelled_split else jnp.ones(64)).astype(jnp.float32)
    if labelled_split:  # the rows the task treats as labelled are examples of train[:10%]
        assert 0 < weights.sum() < 64
        for row in np.flatnonzero(np.asarray(weights)):
            example = labelled_source[int(batch["index"][row])]
            np.testing.assert_array_equal(batch["image"][row], example["image"] / np.float32(255.0))
            assert int(batch["label"][row]) == int(example["label"])

    def task_loss(p):
        return task.loss_fn(p, state, frozen, batch, jax.random.key(0), jnp.int32(0))[0]

    def reference(p):
        s = task.student.apply({"params": p["student"]}, batch["image"])[0]
        return jnp_kd_reference(s, t, jnp.where(weights > 0, batch["label"], 0), weights, 3.0, 0.7)

    np.testing.assert_allclose(task_loss(params), reference(params), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 jax.grad(task_loss)(params), jax.grad(reference)(params))
    # NumPy check of the KD term alone.
    s = np.asarray(task.student.apply({"params": params["student"]}, batch["image"])[0])
    lp, lq = np_log_softmax(np.asarray(t) / 3.0), np_log_softmax(s / 3.0)
    kd = task.loss_fn(params, state, frozen, batch, jax.random.key(0), jnp.int32(0))[1][0]["kd"]
    np.testing.assert_allclose(kd, 9.0 * np.mean(np.sum(np.exp(lp) * (lp - lq), -1)), rtol=1e-5)
    if labelled_split:  # Labels of unlabelled rows never matter.
        scrambled = {**batch, "label": jnp.where(weights > 0, batch["label"], (batch["label"] + 3) % 10)}
        np.testing.assert_array_equal(
            task_loss(params), task.loss_fn(params, state, frozen, scrambled, jax.random.key(0), jnp.int32(0))[0])


def test_teacher_and_student_see_the_same_augmented_batch(teacher_dir):
    """Student == teacher: the KD loss is 0 under augmentation only if both get the same images."""
    config = kd_config(teacher_dir, **{"model": TEACHER_MODEL, "distill.alpha": 1.0, "distill.augment": "simclr",
                                       "distill.temperature": 2.0})
    task = make_task(config)
    batch = train_batch(config)
    frozen = task.load_frozen()
    params = {"student": frozen["teacher"]["params"]}
    loss, (metrics, _) = task.loss_fn(params, {"student": {}}, frozen, batch, jax.random.key(5), jnp.int32(0))
    assert abs(float(loss)) < 1e-5 and float(metrics["agreement"]) == 1.0
    # ... and augmentation did change the images: the teacher's outputs move.
    views = augment_images(jax.random.fold_in(jax.random.key(5), 0), batch["image"], "simclr", (0.5, 1.0))
    moved = task.teacher.apply(frozen["teacher"], views)[0] - task.teacher.apply(frozen["teacher"], batch["image"])[0]
    assert float(jnp.abs(moved).max()) > 1e-2


def test_label_free_soft_ce_never_reads_labels(teacher_dir):
    """SimCLRv2 distillation: -sum p_T(y|x; tau) log p_S(y|x; tau) on images without labels."""
    config = kd_config(teacher_dir, **{"distill.alpha": 1.0, "distill.kind": "soft_ce", "distill.temperature": 2.0,
                                       "data.preprocess": ("image_to_float", "keep:image"),
                                       "data.eval_preprocess": ("image_to_float", "label_to_int32", "keep:image,label")})
    task = make_task(config)
    batch = train_batch(config)
    assert "label" not in batch
    params, state = task.init(jax.random.key(1), jax.tree.map(lambda x: x[:1], batch))
    loss, (metrics, _) = task.loss_fn(params, state, task.load_frozen(), batch, jax.random.key(0), jnp.int32(0))
    s = np.asarray(task.student.apply({"params": params["student"]}, batch["image"])[0])
    lp = np_log_softmax(teacher_logits(teacher_dir, batch["image"]) / 2.0)
    np.testing.assert_allclose(loss, -np.mean(np.sum(np.exp(lp) * np_log_softmax(s / 2.0), -1)), rtol=1e-5)
    assert "ce" not in metrics


def test_feature_kd_class_means_and_nd_term(teacher_dir):
    config = kd_config(teacher_dir, **{"distill.alpha": 0.5, "distill.nd_lambda": 2.0, "distill.augment": "none",
                                       "distill.temperature": 1.0})
    task = make_task(config)
    frozen = task.load_frozen()
    # Class means: unit mean teacher features per true class over the train split.
    source = sources.open_source("digits", "train")
    images = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float32) / 255.0
    labels = np.array([source[i]["label"] for i in range(len(source))])
    model = build_model("mlp", TEACHER_MODEL)
    feats = np.asarray(model.apply({"params": restored_params(teacher_dir)}, images)[1]["pre_logits"], np.float64)
    means = np.stack([feats[labels == k].mean(0) for k in range(10)])
    np.testing.assert_allclose(frozen["class_means"], means / np.linalg.norm(means, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    # Student features are 16-d, the teacher's 32-d: a linear projector is learnt.
    batch = train_batch(config)
    params, state = task.init(jax.random.key(1), jax.tree.map(lambda x: x[:1], batch))
    assert params["projector"]["kernel"].shape == (16, 32)
    _, (metrics, _) = task.loss_fn(params, state, frozen, batch, jax.random.key(0), jnp.int32(0))
    f_s = np.asarray(task.student.apply({"params": params["student"]}, batch["image"])[1]["pre_logits"]) @ np.asarray(params["projector"]["kernel"])
    f_t = np.asarray(model.apply({"params": restored_params(teacher_dir)}, batch["image"])[1]["pre_logits"])
    c = np.asarray(frozen["class_means"])[np.asarray(batch["label"])]
    norm = np.maximum(np.linalg.norm(f_s, axis=1), np.linalg.norm(f_t, axis=1))
    np.testing.assert_allclose(metrics["nd"], 2.0 * np.mean(1 - (f_s * c).sum(1) / norm), rtol=1e-5)


def test_teacher_is_sharded_by_its_own_rules_and_not_checkpointed(teacher_dir, tmp_path):
    config = kd_config(teacher_dir, **{"mesh": (("data", 8),), "distill.teacher.partition_rules": (("kernel", "fsdp"),)})
    task = make_task(config, devices=8)
    frozen = task.load_frozen()
    assert frozen["teacher"]["params"]["dense_0"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("data", None)
    metrics = train_and_evaluate(config, str(tmp_path))
    for key in ("test/top1", "test/teacher_top1", "test/agreement", "test/kl"):
        assert np.isfinite(metrics[key]), key
    saved = checkpoint.restore_subtree(str(tmp_path), "params")
    assert sorted(saved) == ["student"]
    assert saved["student"]["dense_0"]["kernel"].shape == (64, 16)
    with pytest.raises(checkpoint.CheckpointError, match="teacher"):
        checkpoint.restore_subtree(str(tmp_path), "teacher")


def test_batchnorm_teacher_state_is_restored(tmp_path):
    """A BatchNorm teacher's batch_stats come from the checkpoint's task_state."""
    model_kw = dict(num_layers=2, hidden_dim=8, output_dim=10, use_bn=True)
    model = build_model("simclr_head", model_kw)
    example = np.zeros((1, 6), np.float32)
    variables = model.init(jax.random.key(0), example, train=False)
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 2.0, size=x.shape), x.dtype), variables["batch_stats"])
    state = {"step": jnp.int32(3), "params": variables["params"], "opt_state": {}, "task_state": {"batch_stats": stats}}
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, async_save=False)
    ckpt.save(3, state, {})
    ckpt.close()
    teacher = FrozenModel(teacher_spec(str(tmp_path), model_name="simclr_head", model=model_kw), example)
    loaded = teacher.load(sharding.make_mesh((("data", 1),)))
    jax.tree.map(np.testing.assert_array_equal, loaded["model_state"]["batch_stats"], stats)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    expected = model.apply({"params": variables["params"], "batch_stats": stats}, x, train=False)[0]
    np.testing.assert_allclose(teacher.apply(loaded, x)[0], expected, rtol=1e-5, atol=1e-6)
    fresh = model.apply(variables, x, train=False)[0]  # default stats give other outputs
    assert float(jnp.abs(fresh - expected).max()) > 1e-3


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"distill.teacher.path": "/nonexistent/teacher"}, "distill.teacher.path '/nonexistent/teacher' does not exist"),
        ({"distill.teacher.params_subtree": "params/encoder"}, "Sub-tree 'params/encoder' not found"),
        ({"model": dict(widths=(16,), num_classes=7)}, "outputs 10 classes but the student 'mlp' outputs 7"),
        ({"distill.temperature": 0.0}, r"config.distill.temperature=0.0 \(--config.distill.temperature\): expected a finite number in \(0, inf\]"),
        ({"distill.temperature": -2.0}, r"config.distill.temperature=-2.0 \(--config.distill.temperature\): expected a finite number in \(0, inf\]"),
        ({"distill.labelled_split": "test[:10%]"}, "labelled_split='test\\[:10%\\]' must be a leading slice"),
    ],
)
def test_bad_input_names_the_cause(teacher_dir, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(kd_config(teacher_dir, **overrides), str(tmp_path))


def test_distill_evaluator_matches_numpy():
    config = tiny_supervised_config()
    w_s, w_t = np.random.default_rng(0).normal(size=(2, 64, 10)).astype(np.float32)

    def predict(batch):
        x = batch["image"].reshape(batch["image"].shape[0], -1)
        return {"logits": x @ w_s, "teacher_logits": x @ w_t}

    cfg = config.evals.test.to_dict() | {"temperature": 2.0}
    from ml_collections import ConfigDict

    evaluator = DistillEvaluator(ConfigDict(cfg), config.data, sharding.batch_sharding(sharding.make_mesh((("data", 8),))))
    got = evaluator.evaluate(jax.jit(predict))
    source = sources.open_source("digits", "test")
    x = np.stack([source[i]["image"] for i in range(len(source))]).reshape(len(source), -1) / 255.0
    y = np.array([source[i]["label"] for i in range(len(source))])
    s, t = x @ w_s, x @ w_t
    lp, lq = np_log_softmax(t / 2.0), np_log_softmax(s / 2.0)
    np.testing.assert_allclose(got["kl"], np.mean(np.sum(np.exp(lp) * (lp - lq), -1)), rtol=1e-5)
    assert got["top1"] == np.mean(s.argmax(1) == y) and got["teacher_top1"] == np.mean(t.argmax(1) == y)
    assert got["agreement"] == np.mean(s.argmax(1) == t.argmax(1)) and got["count"] == 360


def test_finetune_starts_from_the_other_runs_weights(teacher_dir, tmp_path):
    overrides = {"finetune.init_from": teacher_dir, "finetune.init_subtree": "params", "finetune.init_state_subtree": "",
                 "model_name": "mlp", "model": TEACHER_MODEL, "total_steps": 2, "batch_size": 32, "mesh": (("data", 1),),
                 "checkpoint.async_save": False, "evals.test.every": 0}
    config = load_config(os.path.join(ROOT, "configs/simclrv2_finetune_digits.py:runlocal"), overrides)
    task = make_task(config)
    batch = train_batch(config)
    params, state = jax.jit(task.init)(jax.random.key(9), jax.tree.map(lambda x: x[:1], batch))
    params, _ = task.warm_start(params, state)
    saved = restored_params(teacher_dir)
    np.testing.assert_array_equal(params["dense_0"]["kernel"], saved["dense_0"]["kernel"])
    assert not np.allclose(params["head"]["kernel"], saved["head"]["kernel"])  # init_skip=("head",)
    bad = load_config(os.path.join(ROOT, "configs/simclrv2_finetune_digits.py:runlocal"),
                      {**overrides, "model": dict(widths=(48,), num_classes=10)})
    with pytest.raises(checkpoint.CheckpointError, match=r"'params/dense_0'.*kernel: checkpoint \(64, 32\) vs model \(64, 48\)"):
        train_and_evaluate(bad, str(tmp_path))


@pytest.mark.slow
def test_simclrv2_chain_smoke(tmp_path):
    """pretrain -> fine-tune (restores the encoder and its BatchNorm stats) -> distil, 20 steps each."""
    import subprocess

    out = subprocess.run(["bash", "scripts/simclrv2_digits.sh", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "RUNLOCAL": "1"}, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("simclrv2 ")]
    assert [line.split()[1] for line in lines] == ["pretrain", "finetune", "distill"]
    assert "test/teacher_top1" in lines[-1] and "test/kl" in lines[-1]


@pytest.mark.slow
def test_seeds_driver_smoke(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("kd_digits_seeds", os.path.join(ROOT, "scripts/kd_digits_seeds.py"))
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    driver.main(["--steps", "4", "--seeds", "0", "1", "--which", "kd", "--root", str(tmp_path)])
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0].startswith("== kd") and len(table) == 4
    assert all(len(row.rsplit("[", 1)[1].split()) == 2 for row in table[1:])
