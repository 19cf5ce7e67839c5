"""jaxsup/optim.py against formulas written out in NumPy: LARS, the weight-decay mask, warmup-cosine."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsup.config import base_config
from jaxsup.optim import decay_mask, make_optimizer, make_schedule


def optim_config(**fields):
    """config.optim with the defaults of jaxsup.config, `fields` overridden."""
    cfg = base_config("supervised").optim
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def params_tree(rng=np.random.default_rng(0)):
    """A small tree with every kind of leaf decay_mask must tell apart."""
    f32 = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {
        "conv_0": {"kernel": f32(3, 3, 1, 4), "bias": f32(4)},
        "dense_0": {"kernel": f32(4, 3), "bias": f32(3)},
        "LayerNorm_0": {"scale": f32(3), "bias": f32(3)},
        "BatchNorm_0": {"scale": f32(4), "bias": f32(4)},
        "norm_kernel_like": {"kernel": f32(3, 3)},  # a 2-D leaf under a norm layer: not decayed
        "logit_scale": jnp.asarray(2.0, jnp.float32),
        "embedding": f32(5, 3),
    }


DECAYED = {"conv_0/kernel", "dense_0/kernel", "embedding"}


def leaf_names(tree):
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_decay_mask_leaves_biases_norms_and_scalars_alone():
    mask = leaf_names(decay_mask(params_tree()))
    assert {name for name, decayed in mask.items() if decayed} == DECAYED


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_weight_decay_moves_only_masked_leaves_when_gradients_are_zero(name):
    """With zero gradients only the weight decay acts: kernels shrink, everything else stays put."""
    params = params_tree()
    opt, _ = make_optimizer(optim_config(name=name, lr=0.1, weight_decay=0.5, schedule="constant",
                                         warmup_steps=0, clip_norm=0.0, momentum=0.0), total_steps=10)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    new = leaf_names(optax.apply_updates(params, updates))
    for key, old in leaf_names(params).items():
        if key in DECAYED:
            want = np.asarray(old) * (1 - 0.1 * 0.5) if name != "lars" else None
            if name == "lars":  # trust ratio on g = wd * w: |w| / |wd * w| * eta = eta / wd
                want = np.asarray(old) - 0.1 * 0.001 / 0.5 * 0.5 * np.asarray(old)
            np.testing.assert_allclose(new[key], want, rtol=1e-5, err_msg=key)
        else:
            np.testing.assert_array_equal(new[key], old, err_msg=key)


def numpy_lars_updates(grads, params, lr, wd, eta, momentum, steps):
    """You et al. 2017 with momentum as optax's trace: per decayed leaf
    g' = g + wd w, u = lr * eta |w| / |g'| * g'; others u = lr * g; m = momentum m + u; w -= m."""
    mask = leaf_names(decay_mask(params))
    w = {k: np.asarray(v, np.float64) for k, v in leaf_names(params).items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    for g_tree in grads[:steps]:
        for k, g in leaf_names(g_tree).items():
            g = np.asarray(g, np.float64)
            if mask[k]:
                g = g + wd * w[k]
                g = eta * np.linalg.norm(w[k]) / np.linalg.norm(g) * g
            m[k] = momentum * m[k] + lr * g
            w[k] = w[k] - m[k]
    return w


def test_lars_trust_ratio_and_momentum_match_the_formula():
    params = params_tree()
    rng = np.random.default_rng(1)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(3)]
    lr, wd, eta, momentum = 0.3, 1e-2, 0.02, 0.9
    cfg = optim_config(name="lars", lr=lr, weight_decay=wd, lars_trust_coefficient=eta, momentum=momentum,
                       schedule="constant", warmup_steps=0, clip_norm=0.0)
    opt, _ = make_optimizer(cfg, total_steps=10)
    state, p = opt.init(params), params
    for g in grads:
        updates, state = jax.jit(opt.update)(g, state, p)
        p = optax.apply_updates(p, updates)
    want = numpy_lars_updates(grads, params, lr, wd, eta, momentum, steps=3)
    for key, got in leaf_names(p).items():
        np.testing.assert_allclose(got, want[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # The trust ratio really acts: the first step of a decayed leaf has norm lr * eta * |w|, whatever |g|.
    first, _ = opt.update(grads[0], opt.init(params), params)
    w = np.asarray(params["dense_0"]["kernel"])
    assert np.linalg.norm(first["dense_0"]["kernel"]) == pytest.approx(lr * eta * np.linalg.norm(w), rel=1e-5)


def numpy_warmup_cosine(step, peak, warmup, total, end_factor):
    if step < warmup:
        return peak * step / warmup
    frac = min((step - warmup) / (total - warmup), 1.0)
    end = peak * end_factor
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("step", [0, 1, 5, 10, 35, 60, 85, 109, 110, 200])
def test_warmup_cosine_values(step):
    cfg = optim_config(lr=2.0, warmup_steps=10, end_lr_factor=0.1, schedule="cosine")
    got = float(make_schedule(cfg, total_steps=110)(step))
    assert got == pytest.approx(numpy_warmup_cosine(step, 2.0, 10, 110, 0.1), rel=1e-5, abs=1e-6)


def test_schedule_landmarks_and_constant():
    cosine = make_schedule(optim_config(lr=1.0, warmup_steps=10, end_lr_factor=0.0), total_steps=110)
    assert [float(cosine(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-6)
    constant = make_schedule(optim_config(lr=0.5, warmup_steps=4, schedule="constant"), total_steps=100)
    assert [float(constant(s)) for s in (0, 2, 4, 50, 99)] == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5])
    # Warm-up longer than the run is capped so the peak is still reached at the last step.
    short = make_schedule(optim_config(lr=1.0, warmup_steps=100), total_steps=5)
    assert float(short(4)) == pytest.approx(1.0)
