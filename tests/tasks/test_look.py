"""LOOK: the leave-one-out kNN loss and its gradient against NumPy (in and out of jit), the
memory update, held-out-class evaluators, masked classes, config errors, and a run that learns."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, apply_overrides
from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.errors import ConfigError
from jaxsup.evaluators.heldout import restrict
from jaxsup.experiment import build_task
from jaxsup.losses import look
from jaxsup.train import train_and_evaluate

CONFIG = os.path.join(ROOT, "configs/look_digits.py")
JIT = [lambda f: f, jax.jit]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def memory_case(seed=0, b=6, n=30, d=8, classes=3):
    rng = np.random.default_rng(seed)
    f = unit(rng.normal(size=(b, d))).astype(np.float32)
    mem = unit(rng.normal(size=(n, d))).astype(np.float32)
    mem_y = rng.integers(0, classes, n).astype(np.int32)
    valid = (rng.uniform(size=n) < 0.8).astype(np.float32)
    y = rng.integers(0, classes, b).astype(np.int32)
    index = rng.choice(n, b, replace=False).astype(np.int32)
    valid[index[:3]] = 1.0  # some queries' own rows are filled: leave-one-out must drop them
    return f, y, index, mem, mem_y, valid


def np_look(f, y, index, mem, mem_y, valid, k, tau):
    """Per-row loss and d(sum loss)/df by the softmax formulas, float64 loops."""
    losses, grads, has_pos = [], [], []
    for i in range(len(f)):
        cand = [j for j in range(len(mem)) if valid[j] > 0 and j != index[i]]
        s = {j: float(f[i] @ mem[j]) / tau for j in cand}
        nbr = sorted(cand, key=lambda j: -s[j])[:k]
        pos = [j for j in nbr if mem_y[j] == y[i]]
        has_pos.append(bool(pos))
        if not pos:
            losses.append(0.0)
            grads.append(np.zeros(f.shape[1]))
            continue
        sa, sp = np.array([s[j] for j in nbr]), np.array([s[j] for j in pos])
        losses.append(np.log(np.exp(sa).sum()) - np.log(np.exp(sp).sum()))
        pa, pp = np.exp(sa) / np.exp(sa).sum(), np.exp(sp) / np.exp(sp).sum()
        grads.append((pa @ mem[nbr] - pp @ mem[pos]) / tau)
    return np.array(losses), np.array(grads), np.array(has_pos)


@pytest.mark.parametrize("wrap", JIT)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_look_loss_value_and_gradient(wrap, k):
    f, y, index, mem, mem_y, valid = memory_case(k)
    fn = lambda f: look.look_loss(f, y, index, mem, mem_y, valid, k=k, tau=0.2)  # noqa: E731
    (loss, has_pos), grad = wrap(jax.value_and_grad(lambda f: (fn(f)[0].sum(), fn(f)), has_aux=True))(f)
    expected, expected_grad, expected_pos = np_look(f, y, index, mem, mem_y, valid, k, 0.2)
    np.testing.assert_array_equal(has_pos[1], expected_pos)
    assert 0 < expected_pos.sum() < len(f) or k > 1  # the case has rows with and without positives
    np.testing.assert_allclose(has_pos[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_leave_one_out():
    """A query whose own memory row is its only near neighbour must not vote for itself."""
    mem = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    loss, has_pos = look.look_loss(jnp.array([[1.0, 0.0]]), jnp.array([0]), jnp.array([0]), mem,
                                   jnp.array([0, 1, 1]), jnp.ones(3), k=2, tau=1.0)
    assert float(has_pos[0]) == 0.0 and float(loss[0]) == 0.0  # only row 0 has label 0, and it is the query


def test_update_memory_matches_loop():
    f, y, index, mem, mem_y, valid = memory_case(1)
    write = np.array([1, 1, 0, 1, 0, 1], np.float32)
    out = [np.asarray(a) for a in jax.jit(look.update_memory, static_argnums=7)(mem, mem_y, valid, f, y, index, write, 0.5)]
    em, ey, ev = mem.copy(), mem_y.copy(), valid.copy()
    for i, j in enumerate(index):
        if write[i]:
            em[j] = unit(0.5 * mem[j] + 0.5 * f[i]) if valid[j] else f[i]
            ey[j], ev[j] = y[i], 1.0
    np.testing.assert_allclose(out[0], em, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[1], ey)
    np.testing.assert_array_equal(out[2], ev)


def test_restrict_relabels_heldout_classes():
    x, y = np.arange(12).reshape(6, 2), np.array([5, 0, 9, 7, 5, 2])
    xs, ys = restrict(x, y, (5, 7, 9))
    np.testing.assert_array_equal(xs, x[[0, 2, 3, 4]])
    np.testing.assert_array_equal(ys, [0, 2, 1, 0])


def small_config(arg="runlocal", **overrides):
    c = load_config(f"{CONFIG}:{arg}")
    c.model_name, c.model = "mlp", dict(widths=(32,), num_classes=None)
    c.mesh = (("data", 1),)
    return apply_overrides(c, overrides)


def test_heldout_classes_are_masked_out():
    config = small_config()
    task = build_task(config, sharding.make_mesh(config.mesh))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(8, 8, 8, 1)), jnp.float32),
             "label": jnp.array([0, 1, 2, 3, 4, 5, 7, 9], jnp.int32), "index": jnp.arange(8, dtype=jnp.int32)}
    params, state = task.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    _, (_, new_state) = jax.jit(lambda p, s: task.loss_fn(p, s, {}, batch, jax.random.key(0), 0))(params, state)
    np.testing.assert_array_equal(np.asarray(new_state["valid"])[:8], [1, 1, 1, 1, 1, 0, 0, 0])
    assert new_state["memory"].shape == (1437, 32)


@pytest.mark.parametrize("field,value", [("look.loss", "nca"), ("look.k", 0), ("look.tau", 0.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field.split(".")[1]):
        build_task(small_config(**{field: value}), sharding.make_mesh((("data", 1),)))


def test_look_learns_pretraining_classes(tmp_path):
    """120 steps of LOOK on digits 0-4: k-NN on the pre-training classes beats the random-init features."""
    config = small_config("runlocal", total_steps=120, **{"optim.lr": 3e-3, "optim.warmup_steps": 10})
    for ev in config.evals.values():
        ev.every = 0
    trained = train_and_evaluate(config, str(tmp_path / "look"))
    config.total_steps = 0
    init = train_and_evaluate(config, str(tmp_path / "init"))
    assert trained["old_knn/top1"] > 0.97 and trained["old_knn/top1"] > init["old_knn/top1"] + 0.02, (trained, init)
