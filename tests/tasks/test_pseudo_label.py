"""Pseudo-label self-training: EMA teacher (plain and learning-from-the-future), the loss
and its gradient vs an independent formulation, label masking, checkpointed teacher, bad config."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import apply_overrides, ROOT
from jaxsup import checkpoint, sharding
from jaxsup.experiment import build_task
from jaxsup.config import load_config
from jaxsup.tasks.pseudo_label import task as pseudo_label
from jaxsup.train import train_and_evaluate

CONFIG = os.path.join(ROOT, "configs/pseudo_label_digits.py")
N_TRAIN, N_LABELLED = 1437, 144


def small_config(arg="runlocal", **overrides):
    c = load_config(f"{CONFIG}:{arg}")
    c.model_name, c.model = "mlp", dict(widths=(16,), num_classes=10)
    c.mesh = (("data", 1),)
    c.pseudo_label.augment = "none"
    c.pseudo_label.threshold = 0.6
    c.pseudo_label.temperature = 0.05  # a random teacher is confident on some rows
    c.pseudo_label.ema_decay = 0.9
    c.total_steps = 10
    return apply_overrides(c, overrides)


def make_task(config):
    return build_task(config, sharding.make_mesh(config.mesh))


def make_batch(seed=0, n=24):
    rng = np.random.default_rng(seed)
    labelled = rng.integers(0, N_LABELLED, n // 3)
    unlabelled = rng.integers(N_LABELLED, N_TRAIN, n - n // 3)
    index = np.concatenate([labelled, unlabelled, ])
    index[-2:] += 2 * N_TRAIN  # later epochs: "index" counts on past N
    return {
        "image": jnp.asarray(rng.uniform(0, 1, (n, 8, 8, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
        "index": jnp.asarray(index, jnp.int32),
    }


def setup(config, seed=0):
    task = make_task(config)
    batch = make_batch(seed)
    params, state = task.init(jax.random.key(seed), jax.tree.map(lambda x: x[:1], batch))
    # A teacher that differs from the student, as after some training.
    teacher = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(seed + 1), p.shape), params)
    state = {**state, pseudo_label.EMA: {"params": teacher, "model_state": {}}}
    return task, batch, params, state


def reference_loss(task, config, params, teacher_params, batch, step):
    """Independent formulation: plain model.apply, NumPy masks, pseudo-labels as constants."""
    cfg = config.pseudo_label
    position = np.asarray(batch["index"]) % N_TRAIN
    labelled = (position < N_LABELLED).astype(np.float32)
    t_logits = np.asarray(task.model.apply({"params": teacher_params}, batch["image"])[0], np.float64)
    z = t_logits / cfg.temperature
    t_probs = np.exp(z - z.max(-1, keepdims=True))
    t_probs /= t_probs.sum(-1, keepdims=True)
    confident = (t_probs.max(-1) >= cfg.threshold) * (1 - labelled)
    pseudo = t_probs.argmax(-1)
    labels = np.where(labelled > 0, np.asarray(batch["label"]), 0)
    weight = cfg.unlabelled_weight * min(1.0, step / config.total_steps / cfg.rampup_frac)

    def loss(p):
        logits = task.model.apply({"params": p}, batch["image"])[0]
        ce_l = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        ce_u = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo)
        return (ce_l * labelled).sum() / labelled.sum() + weight * (ce_u * confident).sum() / (1 - labelled).sum()

    return loss, confident


def labelled_ce_grad(task, params, batch):
    position = np.asarray(batch["index"]) % N_TRAIN
    labelled = (position < N_LABELLED).astype(np.float32)
    labels = np.where(labelled > 0, np.asarray(batch["label"]), 0)

    def ce(p):
        logits = task.model.apply({"params": p}, batch["image"])[0]
        return (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * labelled).sum() / labelled.sum()

    return jax.grad(ce)(params)


@pytest.mark.parametrize("future_lr", [0.0, 0.7])
def test_ema_teacher_update_plain_and_future(future_lr):
    config = small_config(**{"pseudo_label.future_lr": future_lr})
    task, batch, params, state = setup(config)
    _, (_, new_state) = task.loss_fn(params, state, {}, batch, jax.random.key(0), jnp.int32(4))
    old = state[pseudo_label.EMA]["params"]
    target = params
    if future_lr:
        grads = labelled_ce_grad(task, params, batch)
        target = jax.tree.map(lambda p, g: np.asarray(p, np.float64) - future_lr * np.asarray(g, np.float64), params, grads)
    want = jax.tree.map(lambda t, s: 0.9 * np.asarray(t, np.float64) + 0.1 * np.asarray(s, np.float64), old, target)
    got = new_state[pseudo_label.EMA]["params"]
    jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-7), got, want)


@pytest.mark.parametrize("future_lr", [0.0, 0.7])
def test_loss_and_gradient_vs_independent_reference(future_lr):
    config = small_config(**{"pseudo_label.future_lr": future_lr})
    task, batch, params, state = setup(config, seed=2)
    step = jnp.int32(1)
    (loss, (metrics, new_state)), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        params, state, {}, batch, jax.random.key(0), step
    )
    teacher = new_state[pseudo_label.EMA]["params"]  # the updated teacher labels this batch
    ref, confident = reference_loss(task, config, params, teacher, batch, 1)
    ref_loss, ref_grads = jax.value_and_grad(ref)(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), grads, ref_grads)
    unlabelled = (np.asarray(batch["index"]) % N_TRAIN >= N_LABELLED).sum()
    np.testing.assert_allclose(float(metrics["mask_rate"]), confident.sum() / unlabelled, rtol=1e-6)
    assert 0 < confident.sum() < unlabelled  # the threshold really splits the batch


def test_unlabelled_rows_never_use_their_labels():
    config = small_config()
    task, batch, params, state = setup(config, seed=3)
    unlabelled = np.asarray(batch["index"]) % N_TRAIN >= N_LABELLED
    flipped = {**batch, "label": jnp.where(unlabelled, (batch["label"] + 3) % 10, batch["label"])}
    fn = jax.value_and_grad(task.loss_fn, has_aux=True)
    (l1, _), g1 = fn(params, state, {}, batch, jax.random.key(0), jnp.int32(5))
    (l2, _), g2 = fn(params, state, {}, flipped, jax.random.key(0), jnp.int32(5))
    assert float(l1) == float(l2)
    jax.tree.map(np.testing.assert_array_equal, g1, g2)


def test_labels_only_is_the_labelled_ce():
    config = small_config("runlocal,labels_only")
    task, batch, params, state = setup(config, seed=4)
    loss, (metrics, _) = task.loss_fn(params, state, {}, batch, jax.random.key(0), jnp.int32(9))
    position = np.asarray(batch["index"]) % N_TRAIN
    labelled = position < N_LABELLED
    logits = np.asarray(task.model.apply({"params": params}, batch["image"])[0], np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    want = -log_p[labelled, np.asarray(batch["label"])[labelled]].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["unlabelled_weight"]) == 0.0


def test_teacher_is_checkpointed_and_resumes_exactly(tmp_path):
    """Steps 3-4 redone from the step-2 checkpoint give the same EMA teacher as the first time."""
    import shutil

    config = small_config(**{"checkpoint.every": 2, "checkpoint.async_save": False, "total_steps": 4,
                             "evals": {}, "log_every": 2})
    workdir = str(tmp_path / "run")
    teacher_path = f"task_state/{pseudo_label.EMA}/params"
    train_and_evaluate(config, workdir)
    first = jax.tree.map(np.asarray, checkpoint.restore_subtree(workdir, teacher_path))
    student = jax.tree.map(np.asarray, checkpoint.restore_subtree(workdir, "params"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    train_and_evaluate(config, workdir)  # resumes at step 2
    again = jax.tree.map(np.asarray, checkpoint.restore_subtree(workdir, teacher_path))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["head"]["kernel"], student["head"]["kernel"])  # a real EMA, not a copy


@pytest.mark.parametrize("field,value,match", [
    ("threshold", 1.5, "threshold"), ("ema_decay", -0.1, "ema_decay"), ("rampup_frac", 2.0, "rampup_frac"),
    ("unlabelled_weight", -1.0, "unlabelled_weight"), ("future_lr", -0.1, "future_lr"),
    ("temperature", 0.0, "temperature"), ("labelled_split", "train[10%:]", "leading slice"),
    ("augment", "rotate", "augment"),
])
def test_bad_config_raises(field, value, match):
    with pytest.raises(ValueError, match=match):
        make_task(small_config(**{f"pseudo_label.{field}": value}))
