"""NT-Xent's convention (issue 14, section 5): jaxsup's default "mean" is exactly half
of official SimCLR's loss; reduction="simclr" is official SimCLR's.

The reference is google-research/simclr's `add_contrastive_loss` (TF1) transcribed
to float64 NumPy: logits_ab = h1 h2^T / tau, logits_aa = h1 h1^T / tau with the
diagonal pushed down by LARGE_NUM, loss_a = mean_i CE([ab; aa]_i, i), loss_b
likewise from h2, loss = loss_a + loss_b. Gradients: central finite differences
of that NumPy function, so nothing is shared with jaxsup's autodiff.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import sharding
from jaxsup.config import load_config
from jaxsup.experiment import build_task
from jaxsup.losses import contrastive

from helpers import ROOT
from test_simclr import tiny_simclr_config

LARGE_NUM = 1e9
TAU = 0.2


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def simclr_official_loss(h1, h2, tau):
    """Official SimCLR `add_contrastive_loss` (hidden already L2-normalised), float64."""
    n = h1.shape[0]
    masks = np.eye(n)
    logits_aa = h1 @ h1.T / tau - masks * LARGE_NUM
    logits_bb = h2 @ h2.T / tau - masks * LARGE_NUM
    logits_ab = h1 @ h2.T / tau
    logits_ba = h2 @ h1.T / tau
    labels = np.concatenate([np.eye(n), np.zeros((n, n))], axis=1)  # one-hot on the twin
    loss_a = -np.mean(np.sum(labels * np_log_softmax(np.concatenate([logits_ab, logits_aa], 1)), 1))
    loss_b = -np.mean(np.sum(labels * np_log_softmax(np.concatenate([logits_ba, logits_bb], 1)), 1))
    return loss_a + loss_b


def finite_difference_grads(fn, h1, h2, eps=1e-6):
    """Central differences of fn(h1, h2) w.r.t. every entry of h1 and h2 (float64)."""
    grads = []
    for which in (0, 1):
        args = [h1.copy(), h2.copy()]
        grad = np.zeros_like(args[which])
        for index in np.ndindex(grad.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[which][index] += eps
            minus[which][index] -= eps
            grad[index] = (fn(*plus) - fn(*minus)) / (2 * eps)
        grads.append(grad)
    return grads


@pytest.fixture(scope="module")
def case():
    """Unit-norm views h1, h2 [5, 4] (float64), the official loss and its gradients."""
    rng = np.random.default_rng(0)
    h1 = rng.standard_normal((5, 4))
    h2 = h1 + 0.7 * rng.standard_normal((5, 4))
    h1, h2 = (h / np.linalg.norm(h, axis=1, keepdims=True) for h in (h1, h2))
    fn = lambda a, b: simclr_official_loss(a, b, TAU)
    return h1, h2, fn(h1, h2), finite_difference_grads(fn, h1, h2)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("jit", [False, True])
def test_simclr_reduction_equals_official_simclr_and_mean_is_half(case, impl, jit):
    h1, h2, want, want_grads = case

    def loss(reduction):
        fn = lambda a, b: contrastive.nt_xent(a, b, TAU, impl=impl, tile=2, reduction=reduction)[0]
        fn = jax.value_and_grad(fn, (0, 1))
        return jax.jit(fn) if jit else fn

    x1, x2 = jnp.float32(h1), jnp.float32(h2)
    for reduction, factor in (("simclr", 1.0), ("mean", 0.5)):
        value, grads = loss(reduction)(x1, x2)
        np.testing.assert_allclose(float(value), factor * want, rtol=1e-5)
        for got, ref in zip(grads, want_grads):
            np.testing.assert_allclose(np.asarray(got), factor * ref, rtol=1e-3, atol=1e-4)


def test_unknown_reduction_is_named():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"unknown reduction 'sum'; expected one of \('mean', 'simclr'\)"):
        contrastive.nt_xent(x, x, TAU, reduction="sum")
    with pytest.raises(ValueError, match="config.simclr.reduction 'sum'"):
        build_task(tiny_simclr_config(**{"simclr.reduction": "sum"}), sharding.make_mesh((("data", 1),)))


def test_which_reduction_the_configs_use():
    """SimCLR's own recipe (LARS, lr 0.3 x B / 256) ports with its own loss; the digits
    configs keep jaxsup's mean (the README's numbers were measured with it)."""
    assert load_config(os.path.join(ROOT, "configs/simclr_resnet50_imagenet.py")).simclr.reduction == "simclr"
    assert load_config(os.path.join(ROOT, "configs/simclr_digits.py")).simclr.reduction == "mean"
