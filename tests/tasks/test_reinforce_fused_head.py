"""Task "distill" with config.reinforced and distill.fused_head=True: the sparse top-k loss through the
student's head tiles (jaxsup/losses/topk_kd_fused.py, no [B, V] logits) gives the unfused reinforced
step's loss, metrics and gradients (kinds kl / soft_ce, k < V and k = V, with and without labels, on
one device and a 4-device data mesh), and the head's gradient of a NumPy float64 reference."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import sharding
from jaxsup.errors import ConfigError
from jaxsup.data.host.reinforce_store import OUTPUT_KEYS
from jaxsup.experiment import build_task
from jaxsup.tasks.common import apply_with_state

from test_reinforce import digits_ar, make, teacher_dir  # noqa: F401 (session fixtures)
from test_reinforce_training import device_batch, kd_config, reinforced_full  # noqa: F401 (fixture)
from test_topk_kd import lse

TEMPERATURE = 2.0  # configs/kd_digits_reinforced.py's, the stores' rest temperature


@pytest.fixture(scope="session")
def reinforced_k4(digits_ar, teacher_dir, tmp_path_factory):  # noqa: F811
    """k = 4 < V = 10 (a real rest bucket), float32 logits, at T = 2."""
    out = str(tmp_path_factory.mktemp("reinforced_k4") / "r")
    make(digits_ar, teacher_dir, out, topk=4, dtype="float32", temperature=TEMPERATURE)
    return out


def config_for(data, directory, fused, **overrides):
    keep = ("label_to_int32", "keep:image,label," + ",".join(OUTPUT_KEYS[:3]))
    return kd_config(data, directory, **{"data.preprocess": (f"reinforce:{directory}", *keep),
                                         "distill.fused_head": fused, **overrides})


def loss_metrics_grads(task, params, state, batch, jit=True):
    def loss(p):
        value, (metrics, _) = task.loss_fn(p, state, task.load_frozen(), batch, jax.random.key(0), jnp.int32(0))
        return value, metrics

    fn = jax.value_and_grad(loss, has_aux=True)
    return (jax.jit(fn) if jit else fn)(params)


def tasks_and_inputs(data, directory, devices=1, step=0, **overrides):
    mesh = sharding.make_mesh((("data", devices),))
    overrides = {"mesh": (("data", devices),), **overrides}
    plain = build_task(config_for(data, directory, False, **overrides), mesh)
    fused = build_task(config_for(data, directory, True, **overrides), mesh)
    batch = device_batch(plain.config, step)
    if devices > 1:
        batch = jax.device_put(batch, sharding.batch_sharding(mesh, plain.config.batch_axes))
    params, state = plain.init(jax.random.key(1), jax.tree.map(lambda x: x[:1], batch))
    return plain, fused, params, state, batch


def assert_close(got, want, atol):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=0, atol=atol), got, want)


def numpy_head_reference(s, h, batch, labels, mask, kind, alpha, temp):
    """(loss, d loss / d head kernel [D, V], d loss / d bias [V]) in float64 from student logits s [B, V],
    features h [B, D] and the stored top-k targets (written out here, not through jaxsup.losses)."""
    s, h = np.asarray(s, np.float64), np.asarray(h, np.float64)
    vals = np.asarray(batch["reinforced_logits"], np.float64) / temp
    idx, rest = np.asarray(batch["reinforced_indices"]), np.asarray(batch["reinforced_lse_rest"], np.float64)
    b, v = s.shape
    kept = np.zeros((b, v), bool)
    kept[np.arange(b)[:, None], idx] = True
    log_z = np.logaddexp(lse(vals), rest)
    p = np.zeros((b, v))
    p[np.arange(b)[:, None], idx] = np.exp(vals - log_z[:, None])
    p_rest = np.exp(rest - log_z)
    q = np.exp(s / temp - lse(s / temp)[:, None])
    q_rest = np.where(kept, 0.0, q).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ce_q = -np.where(kept, p * np.log(q), 0.0).sum(1) - np.where(p_rest > 0, p_rest * np.log(q_rest), 0.0)
        entropy = -np.where(kept, p * np.log(p), 0.0).sum(1) - np.where(p_rest > 0, p_rest * np.log(p_rest), 0.0)
        rest_factor = np.where(p_rest > 0, 1 - p_rest / q_rest, 1.0)
    scale = temp * temp if kind == "kl" else 1.0
    rows = scale * (ce_q - entropy if kind == "kl" else ce_q)
    g = alpha * scale / temp / b * np.where(kept, q - p, q * rest_factor[:, None])  # d/ds of the KD mean
    loss = alpha * rows.mean()
    if labels is not None:
        labels, mask = np.asarray(labels), np.asarray(mask, np.float64)
        soft = np.exp(s - lse(s)[:, None])
        ce = lse(s) - s[np.arange(b), labels]
        n = max(mask.sum(), 1.0)
        loss += (1 - alpha) * (ce * mask).sum() / n
        g += (1 - alpha) * mask[:, None] / n * (soft - np.eye(v)[labels])
    return loss, h.T @ g, g.sum(0)


CASES = [  # (store, kind, alpha, labelled_split)
    ("k4", "kl", 1.0, ""),
    ("k4", "soft_ce", 1.0, ""),
    ("full", "kl", 1.0, ""),
    ("k4", "kl", 0.6, ""),
    ("k4", "soft_ce", 0.5, "train[:25%]"),
]


@pytest.mark.parametrize("store, kind, alpha, labelled_split", CASES)
def test_fused_reinforced_step_equals_the_logits_step(digits_ar, reinforced_k4, reinforced_full,  # noqa: F811
                                                      store, kind, alpha, labelled_split):
    directory = reinforced_k4 if store == "k4" else reinforced_full
    plain, fused, params, state, batch = tasks_and_inputs(digits_ar, directory, **{
        "distill.kind": kind, "distill.alpha": alpha, "distill.labelled_split": labelled_split})
    assert fused.fused and fused.reinforced and not plain.fused
    jit = kind != "soft_ce"  # eager and jitted both covered across the cases
    (want, want_metrics), want_grads = loss_metrics_grads(plain, params, state, batch, jit)
    (got, got_metrics), got_grads = loss_metrics_grads(fused, params, state, batch, jit)
    assert float(want) > 0.01
    np.testing.assert_allclose(float(got), float(want), rtol=0, atol=1e-6)
    assert sorted(got_metrics) == sorted(want_metrics)
    assert_close(got_metrics, want_metrics, 1e-6)
    assert_close(got_grads, want_grads, 1e-6)
    if alpha < 1:
        assert 0 < float(want_metrics["labelled_fraction"]) <= 1  # the CE term is exercised
    # the head's gradient and the loss against NumPy float64
    labels, mask = fused._labels(batch)
    s_logits = plain.predict(params, state, {}, batch)["logits"]
    (_, out), _ = apply_with_state(fused.student_features, params["student"], state["student"], batch["image"],
                                   train=False)
    ref, d_kernel, d_bias = numpy_head_reference(s_logits, out["pre_logits"], batch, labels, mask, kind, alpha,
                                                 TEMPERATURE)
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)
    head = got_grads["student"]["head"]
    np.testing.assert_allclose(np.asarray(head["kernel"]), d_kernel, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(head["bias"]), d_bias, rtol=0, atol=1e-6)
    assert np.abs(d_bias).max() > 1e-3


def test_fused_reinforced_on_a_data_parallel_mesh(digits_ar, reinforced_k4):  # noqa: F811
    """Batch sharded over 4 devices (the sparse loss runs per shard in a shard_map): still the logits step."""
    plain, fused, params, state, batch = tasks_and_inputs(digits_ar, reinforced_k4, devices=4, **{
        "distill.alpha": 0.7, "distill.labelled_split": "train[:25%]"})
    assert len(batch["image"].sharding.device_set) == 4
    (want, want_metrics), want_grads = loss_metrics_grads(plain, params, state, batch)
    (got, got_metrics), got_grads = loss_metrics_grads(fused, params, state, batch)
    np.testing.assert_allclose(float(got), float(want), rtol=0, atol=1e-6)
    assert_close(got_metrics, want_metrics, 1e-6)
    assert_close(got_grads, want_grads, 1e-6)


def test_fused_reinforced_bf16_student(digits_ar, reinforced_k4):  # noqa: F811
    model = {"widths": (16,), "num_classes": 10, "dtype": "bfloat16"}
    plain, fused, params, state, batch = tasks_and_inputs(digits_ar, reinforced_k4, model=model)
    (want, _), want_grads = loss_metrics_grads(plain, params, state, batch)
    (got, _), got_grads = loss_metrics_grads(fused, params, state, batch)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-2)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=5e-2, atol=2e-2 * scale), got_grads, want_grads)


def test_fused_teacher_features_is_refused(digits_ar, reinforced_full):  # noqa: F811
    config = config_for(digits_ar, reinforced_full, True, **{"distill.fused_teacher": "features"})
    with pytest.raises(ConfigError, match="fused_teacher='logits', not 'features': there is no teacher model"):
        build_task(config, sharding.make_mesh((("data", 1),)))
