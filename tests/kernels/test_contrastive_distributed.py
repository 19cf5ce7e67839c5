"""Device-ring contrastive losses on 8 simulated CPU devices vs the reference.

The losses with impl="ring" must equal `impl="reference"` on the gathered batch (itself
checked against NumPy in test_contrastive_losses.py): values, metrics and
gradients w.r.t. both embeddings and the scalars, on a 1-D mesh and on a
("data", "model") mesh with the batch sharded on "data" only; and their
compiled program must move blocks with collective-permutes, never all-gather.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from pallas_kernels.contrastive.ring import ring_loss
from test_contrastive_losses import LOSSES, assert_close, normalised_pair, run

SHARDED = {name: functools.partial(fn, impl="ring") for name, (fn, _, _) in LOSSES.items()}


@functools.lru_cache(maxsize=None)
def mesh(shape: tuple[int, ...]) -> Mesh:
    names = ("data", "model")[: len(shape)]
    return Mesh(np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape), names)


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets them up on CPU)")


def compiled_loss_metrics_grads(name, x, y, mesh_shape, tile=4):
    """(loss, metrics, grads) of the sharded loss under jit, and the compiled HLO text."""
    _, _, scalars = LOSSES[name]
    args = (x, y, *(jnp.float32(s) for s in scalars))

    def loss(*args):
        return SHARDED[name](*args, mesh=mesh(mesh_shape), tile=tile)

    step = jax.jit(jax.value_and_grad(loss, tuple(range(len(args))), has_aux=True))
    compiled = step.lower(*args).compile()
    (value, metrics), grads = compiled(*args)
    return (value, metrics, grads), compiled.as_text()


# (mesh shape, B, D, tile): one row per device on ("data", 8); 3 rows per
# device (not a multiple of tile 2) on ("data", 4) x ("model", 2).
CASES = [((8,), 8, 3, 4), ((4, 2), 12, 5, 2)]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("mesh_shape,batch,dim,tile", CASES)
def test_ring_matches_reference_without_all_gather(name, mesh_shape, batch, dim, tile):
    x, y = normalised_pair(batch, dim)
    got, hlo = compiled_loss_metrics_grads(name, x, y, mesh_shape, tile)
    assert_close(got, run(name, "reference", batch, dim))
    # Blocks move by collective-permute; no all-gather of embeddings or logits.
    assert "collective-permute" in hlo
    assert "all-gather" not in hlo and "all-to-all" not in hlo


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ring_bf16_inputs(name):
    """bf16 inputs: loss in f32 to rtol 1e-5 of float64 on the same values;
    bf16 gradients to bf16 rounding (as in test_chunked_bf16_inputs)."""
    _, np_fn, scalars = LOSSES[name]
    x, y = normalised_pair(16, 8, dtype=jnp.bfloat16)
    (loss, metrics, grads), _ = compiled_loss_metrics_grads(name, x, y, (8,))
    want_loss, want_metrics, want_grads = np_fn(np.float64(x), np.float64(y), *scalars)
    assert loss.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    for key, value in metrics.items():
        np.testing.assert_allclose(float(value), want_metrics[key], rtol=1e-4, err_msg=key)
    for got, want in zip(grads, want_grads):
        # atol relative to the largest gradient, so small gradients cannot hide a wrong sign.
        np.testing.assert_allclose(np.float64(got), want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


@pytest.mark.parametrize("check_vma", [True, False])
def test_ring_function_inside_user_shard_map(check_vma):
    """The per-device function in a caller's own shard_map: the loss is the
    same on every device and its gradients equal the reference's."""
    x, y = normalised_pair(16, 4)
    log_t = jnp.float32(np.log(10.0))

    def per_device(x_blk, y_blk, log_t):
        loss, _ = ring_loss("softmax", x_blk, y_blk, (log_t,), "data", tile=2)
        return loss[None]

    mapped = jax.shard_map(
        per_device, mesh=mesh((8,)), in_specs=(P("data"), P("data"), P()),
        out_specs=P("data"), check_vma=check_vma,
    )

    def first_loss(*args):
        losses = mapped(*args)
        return losses[0], losses

    step = jax.jit(jax.grad(first_loss, argnums=(0, 1, 2), has_aux=True))
    grads, losses = step(x, y, log_t)
    want_loss, _, want_grads = run("softmax", "reference", 16, 4)
    np.testing.assert_allclose(losses, np.full(8, want_loss), rtol=1e-5)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_sharded_bad_inputs_raise_value_error():
    x, y = normalised_pair(12, 4)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        SHARDED["softmax"](x, y, 0.0, mesh=mesh((8,)))
    with pytest.raises(ValueError, match="axis 'batch' is not in the mesh"):
        SHARDED["nt_xent"](x, y, 0.1, mesh=mesh((8,)), axis="batch")
    with pytest.raises(ValueError, match="same"):
        SHARDED["sigmoid"](x, y[:, :3], 0.0, 0.0, mesh=mesh((4, 2)))
    with pytest.raises(ValueError, match="tile"):
        SHARDED["softmax"](x[:8], y[:8], 0.0, mesh=mesh((8,)), tile=0)
