"""Mixed precision: dtype=bfloat16, param_dtype=float32 keeps f32 params, bf16 activations, f32 loss."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsup import sharding
from jaxsup.config import base_config
from jaxsup.models.two_tower import TwoTower
from jaxsup.models.vit import ViT
from jaxsup.step import TrainState, make_train_step
from jaxsup.experiment import build_task
from jaxsup.tasks.supervised.task import Supervised

VIT = dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2)
TEXT = dict(vocab_size=50, max_len=8, width=32, depth=1, num_heads=2, mlp_dim=64)
BF16_EPS = 2.0**-8  # spacing of bfloat16 numbers in [1, 2): 8 significand bits


@functools.lru_cache(maxsize=None)
def _batch(batch_size: int = 32):
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    return {
        "image": jax.random.normal(k1, (batch_size, 16, 16, 3)),
        "label": jax.random.randint(k2, (batch_size,), 0, 10),
        "tokens": jax.random.randint(k3, (batch_size, TEXT["max_len"]), 1, TEXT["vocab_size"]),
    }


def _captured(model, *inputs):
    """(params, every module output captured by flax) of a bf16 model applied to inputs."""
    variables = jax.jit(model.init)(jax.random.key(0), *(x[:1] for x in inputs))
    apply = functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    _, captured = jax.jit(apply)(variables, *inputs)
    leaves = jax.tree_util.tree_flatten_with_path(captured["intermediates"])[0]
    return variables["params"], {sharding.path_str(p): x for p, x in leaves}


@pytest.mark.parametrize("name", ["vit", "two_tower"])
def test_params_stay_f32_and_activations_are_bf16(name):
    batch = _batch()
    if name == "vit":
        model, inputs = ViT(**VIT, num_classes=10, dtype=jnp.bfloat16), (batch["image"],)
    else:
        model = TwoTower(image="vit", image_kwargs=dict(VIT, num_classes=None), text_kwargs=TEXT, embed_dim=16,
                         dtype=jnp.bfloat16)
        inputs = (batch["image"], batch["tokens"])
    params, activations = _captured(model, *inputs)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    floating = {k: x.dtype for k, x in activations.items() if jnp.issubdtype(x.dtype, jnp.floating)}
    assert len(floating) > 20
    # The learnable log-temperature and its exp are scalar f32 parameters by design.
    not_bf16 = {k: d for k, d in floating.items() if d != jnp.bfloat16 and not k.endswith(("/log_t", "/t"))}
    assert not not_bf16


def _supervised_task(dtype: str) -> Supervised:
    config = base_config()
    config.model_name = "vit"
    config.model = dict(VIT, num_classes=10, dtype=dtype, param_dtype="float32")
    return build_task(config, sharding.make_mesh((("data", 1),)))


@functools.lru_cache(maxsize=None)
def _init_params():
    """f32 params of the supervised ViT, shared by the f32 and the bf16 model."""
    params, task_state = jax.jit(_supervised_task("float32").init)(jax.random.key(0), {"image": _batch()["image"][:1]})
    assert not task_state
    return params


def test_loss_is_accumulated_in_f32_from_bf16_logits():
    task, batch = _supervised_task("bfloat16"), _batch()
    params = _init_params()

    @jax.jit
    def logits_and_loss(params):
        logits, _ = task.model.apply({"params": params}, batch["image"])
        loss, _ = task.loss_fn(params, {}, {}, batch, jax.random.key(0), 0)
        return logits, loss

    logits, loss = logits_and_loss(params)
    assert logits.dtype == jnp.bfloat16 and loss.dtype == jnp.float32
    # Independent float64 cross-entropy of the very same bf16 logits: equal to f32 precision
    # (a bf16 log-sum-exp would be off by ~1e-3).
    z = np.asarray(logits, np.float64)
    z_max = z.max(axis=1, keepdims=True)
    lse = (z_max + np.log(np.exp(z - z_max).sum(axis=1, keepdims=True)))[:, 0]
    want = np.mean(lse - z[np.arange(len(z)), np.asarray(batch["label"])])
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def _grads_recorder() -> optax.GradientTransformation:
    """An 'optimizer' that applies nothing and keeps the step's gradients as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def _train_step_loss_and_grads(dtype: str):
    task, batch, params = _supervised_task(dtype), _batch(), _init_params()
    optimizer = _grads_recorder()
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), {})
    step = jax.jit(make_train_step(task, optimizer, optax.constant_schedule(0.0), seed=0))
    new_state, metrics = step(state, {}, {"image": batch["image"], "label": batch["label"]})
    return metrics["train/loss"], new_state.opt_state


def test_bf16_train_step_is_close_to_f32():
    loss32, grads32 = _train_step_loss_and_grads("float32")
    loss16, grads16 = _train_step_loss_and_grads("bfloat16")
    assert loss16.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}  # grads of f32 params
    # Tolerances. Every bf16 activation carries a relative rounding error of up to
    # BF16_EPS / 2 = 2e-3. The loss is a mean over the batch, whose independent errors
    # average out: within one bf16 spacing (measured ~6e-5). Gradients chain the errors
    # of ~10 rounded ops per block through 2 blocks: their global relative L2 error is
    # held to 8 bf16 spacings = 3.1e-2 (measured ~1.3e-2), and each leaf to 0.1 except
    # the attention key biases, whose exact gradient is 0 (softmax ignores a per-query
    # shift), so their f32 and bf16 values are both rounding noise.
    np.testing.assert_allclose(loss16, loss32, rtol=BF16_EPS)
    diff = jax.tree.map(jnp.subtract, grads16, grads32)
    assert optax.global_norm(diff) <= 8 * BF16_EPS * optax.global_norm(grads32)
    named_diff = jax.tree_util.tree_flatten_with_path(diff)[0]
    for (path, d), g32 in zip(named_diff, jax.tree.leaves(grads32)):
        if not sharding.path_str(path).endswith("key/bias"):
            assert jnp.linalg.norm(d) <= 0.1 * jnp.linalg.norm(g32), sharding.path_str(path)
