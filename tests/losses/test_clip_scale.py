"""Task "clip" options for scale: GradCache micro-batches, Pallas blocks in the ring."""
import pytest

from jaxsup import sharding
from jaxsup.experiment import build_task

from test_clip import assert_leaves_close, digits_batch, loss_and_grads, tiny_clip_config


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_grad_cache_equals_the_full_batch_loss_and_gradients(loss):
    mesh = sharding.make_mesh([("data", 4)])
    batch = digits_batch(tiny_clip_config())
    _, params, state, value, grads = loss_and_grads(loss, "chunked", batch, mesh)
    options = {"clip.grad_cache_micro_batches": 2}
    _, _, _, cached, cached_grads = loss_and_grads(loss, "chunked", batch, mesh, (params, state), **options)
    assert abs(float(cached) - float(value)) <= 1e-5 * abs(float(value))
    assert_leaves_close(cached_grads, grads, 1e-5, "grad cache")


def test_ring_with_pallas_blocks_falls_back_on_cpu_to_the_same_loss():
    mesh = sharding.make_mesh([("data", 8)])
    batch = digits_batch(tiny_clip_config())
    _, params, state, value, grads = loss_and_grads("softmax", "reference", batch, mesh)
    _, _, _, ring, ring_grads = loss_and_grads(
        "softmax", "ring", batch, mesh, (params, state), **{"clip.block_impl": "pallas", "clip.fallback": True})
    assert abs(float(ring) - float(value)) <= 1e-5 * abs(float(value))
    assert_leaves_close(ring_grads, grads, 1e-5, "ring pallas->chunked")


def test_ring_with_pallas_blocks_without_fallback_names_the_backend():
    mesh = sharding.make_mesh([("data", 8)])
    batch = digits_batch(tiny_clip_config())
    with pytest.raises(ValueError, match="cannot run"):
        loss_and_grads("softmax", "ring", batch, mesh, **{"clip.block_impl": "pallas", "clip.fallback": False})


@pytest.mark.parametrize("options, match", [
    ({"clip.grad_cache_micro_batches": 3}, "grad_cache_micro_batches=3"),
    ({"clip.grad_cache_micro_batches": 2, "grad_accum_steps": 2}, "replaces grad_accum_steps"),
])
def test_grad_cache_bad_settings(options, match):
    config = tiny_clip_config(**options)
    with pytest.raises(ValueError, match=match):
        build_task(config, sharding.make_mesh([("data", 4)]))
