"""Task "distill" with distill.fused_head=True: KD (+ label CE) from the student's features and head
weights, without [B, K] logits, gives the unfused step's loss, metrics and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import sharding
from jaxsup.errors import ConfigError

from test_distill_task import kd_config, make_task, teacher_dir, train_batch  # noqa: F401  (fixture)

CASES = [  # (fused_teacher, labelled_split, alpha, kind)
    ("logits", "train[:10%]", 0.4, "rkl"),
    ("features", "train[:10%]", 0.7, "kl"),
    ("features", "", 1.0, "jsd"),
]


def loss_metrics_grads(task, params, state, frozen, batch, jit):
    def loss(p):
        value, (metrics, _) = task.loss_fn(p, state, frozen, batch, jax.random.key(0), jnp.int32(0))
        return value, metrics

    fn = jax.value_and_grad(loss, has_aux=True)
    return (jax.jit(fn) if jit else fn)(params)


def assert_close(got, want, rtol, atol):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=rtol, atol=atol), got, want)


def tasks_and_inputs(teacher_dir, dtype="float32", **overrides):  # noqa: F811
    base = {"distill.augment": "none", "distill.temperature": 3.0,
            "model": dict(widths=(16,), num_classes=10, dtype=dtype), **overrides}
    devices = dict(overrides.get("mesh", (("data", 1),)))["data"]
    plain = make_task(kd_config(teacher_dir, **base), devices)
    fused = make_task(kd_config(teacher_dir, **{**base, "distill.fused_head": True}), devices)
    batch = train_batch(plain.config, size=32, step=60)
    params, state = plain.init(jax.random.key(1), jax.tree.map(lambda x: x[:1], batch))
    return plain, fused, (params, state, plain.load_frozen(), batch)


@pytest.mark.parametrize("fused_teacher, labelled_split, alpha, kind", CASES)
def test_fused_head_step_equals_the_logits_step(teacher_dir, fused_teacher, labelled_split, alpha, kind):  # noqa: F811
    plain, fused, inputs = tasks_and_inputs(teacher_dir, **{
        "distill.fused_teacher": fused_teacher, "distill.labelled_split": labelled_split,
        "distill.alpha": alpha, "distill.kind": kind})
    assert fused.fused and not plain.fused
    jit = kind != "kl"  # eager and jitted both covered across the cases
    (want, want_metrics), want_grads = loss_metrics_grads(plain, *inputs, jit=jit)
    (got, got_metrics), got_grads = loss_metrics_grads(fused, *inputs, jit=jit)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if labelled_split:
        assert float(want_metrics["labelled_fraction"]) > 0  # the CE term is exercised
    assert sorted(got_metrics) == sorted(want_metrics)
    assert_close(got_metrics, want_metrics, 1e-5, 1e-6)
    assert_close(got_grads, want_grads, 1e-4, 1e-6)
    assert float(jnp.abs(got_grads["student"]["head"]["bias"]).max()) > 0  # the bias row gets its gradient


def test_fused_head_bf16_student(teacher_dir):  # noqa: F811
    plain, fused, inputs = tasks_and_inputs(teacher_dir, "bfloat16", **{"distill.alpha": 0.7})
    (want, _), want_grads = loss_metrics_grads(plain, *inputs, jit=True)
    (got, _), got_grads = loss_metrics_grads(fused, *inputs, jit=True)
    np.testing.assert_allclose(got, want, rtol=2e-2)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want_grads))
    assert_close(got_grads, want_grads, 5e-2, 2e-2 * scale)


def test_fused_head_bad_fields(teacher_dir):  # noqa: F811
    for field, value, match in [("distill.kind", "soft_ce", "soft_ce"), ("distill.fused_teacher", "head", "fused_teacher"),
                                ("distill.fused_impl", "pallas", "fused_impl")]:
        with pytest.raises(ConfigError, match=match):
            make_task(kd_config(teacher_dir, **{"distill.fused_head": True, field: value}))


def test_fused_head_on_a_data_parallel_mesh(teacher_dir):  # noqa: F811
    """Batch sharded over 4 devices (the fused loss runs per shard in a shard_map, totals psum'd):
    the fused step still equals the logits step."""
    plain, fused, (params, state, frozen, batch) = tasks_and_inputs(teacher_dir, **{
        "mesh": (("data", 4),), "distill.fused_teacher": "features", "distill.labelled_split": "train[:10%]"})
    batch = jax.device_put(batch, sharding.batch_sharding(fused.mesh, fused.config.batch_axes))
    assert len(batch["image"].sharding.device_set) == 4
    (want, _), want_grads = loss_metrics_grads(plain, params, state, frozen, batch, jit=True)
    (got, _), got_grads = loss_metrics_grads(fused, params, state, frozen, batch, jit=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert_close(got_grads, want_grads, 1e-4, 1e-6)
