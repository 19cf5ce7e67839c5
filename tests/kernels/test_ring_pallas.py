"""Device ring with Pallas block math (block_impl="pallas") on 8 CPU devices.

In interpret mode the ring whose per-device blocks come from the Pallas
primitives must equal `impl="reference"` on the gathered batch (itself checked
against NumPy in test_contrastive_losses.py): values, metrics and gradients
w.r.t. both embeddings and every scalar, on ("data", 8) and on
("data", 4) x ("model", 2), with the kernels really in the program and the
blocks moved by collective-permute. On CPU the automatic backend gives the
dispatch's ValueError, or with fallback=True the chunked ring.
"""
from __future__ import annotations

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pallas_kernels import dispatch
from pallas_kernels.contrastive.ring import ring_loss
from test_contrastive_distributed import SHARDED, mesh
from test_contrastive_losses import LOSSES, assert_close, normalised_pair, run

on_cpu = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the automatic Pallas backend runs off CPU"
)


@pytest.fixture(scope="module", autouse=True)
def _eight_devices():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets them up on CPU)")


def sharded_args(name, batch, dim):
    _, _, scalars = LOSSES[name]
    return (*normalised_pair(batch, dim), *(jnp.float32(s) for s in scalars))


def traced_loss_metrics_grads(name, args, mesh_shape, **kwargs):
    """((loss, metrics, grads), jaxpr text, compiled HLO text) of the sharded
    loss under jit(value_and_grad) w.r.t. every argument."""

    def loss(*args):
        return SHARDED[name](*args, mesh=mesh(mesh_shape), **kwargs)

    step = jax.jit(jax.value_and_grad(loss, tuple(range(len(args))), has_aux=True))
    traced = step.trace(*args)
    compiled = traced.lower().compile()
    (value, metrics), grads = compiled(*args)
    return (value, metrics, grads), str(traced.jaxpr), compiled.as_text()


# (mesh shape, B, D, tile): 4 rows per device on ("data", 8); 5 rows per
# device (padded to the kernels' 16-row block, not a multiple of tile 2) and
# D = 13 (padded to 16) on ("data", 4) x ("model", 2).
CASES = [((8,), 32, 8, 4), ((4, 2), 20, 13, 2)]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("mesh_shape,batch,dim,tile", CASES)
def test_pallas_blocks_match_reference(name, mesh_shape, batch, dim, tile):
    got, jaxpr, hlo = traced_loss_metrics_grads(
        name, sharded_args(name, batch, dim), mesh_shape, tile=tile, block_impl="pallas",
        backend="interpret",
    )
    assert_close(got, run(name, "reference", batch, dim))
    # The forward and the backward kernels are in the program.
    assert re.search(r"name=contrastive_\w+_fwd", jaxpr)
    assert re.search(r"name=contrastive_\w+_bwd", jaxpr)
    assert "collective-permute" in hlo
    assert "all-gather" not in hlo and "all-to-all" not in hlo


def test_ring_function_with_pallas_blocks_in_user_shard_map():
    """The per-device function in a caller's shard_map (check_vma=False):
    every device's loss and the gradients equal the reference's."""
    x, y, log_t, b = sharded_args("sigmoid", 16, 8)

    def per_device(x_blk, y_blk, log_t, b):
        loss, _ = ring_loss(
            "sigmoid", x_blk, y_blk, (log_t, b), "data", tile=2, block_impl="pallas",
            backend="interpret",
        )
        return loss[None]

    mapped = jax.shard_map(
        per_device, mesh=mesh((8,)), in_specs=(P("data"), P("data"), P(), P()),
        out_specs=P("data"), check_vma=False,
    )

    def first_loss(*args):
        losses = mapped(*args)
        return losses[0], losses

    grads, losses = jax.jit(jax.grad(first_loss, argnums=(0, 1, 2, 3), has_aux=True))(
        x, y, log_t, b
    )
    want_loss, _, want_grads = run("sigmoid", "reference", 16, 8)
    np.testing.assert_allclose(losses, np.full(8, want_loss), rtol=1e-5)
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=f"grad {i}")


@on_cpu
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_auto_backend_on_cpu_raises_value_error(name):
    args = sharded_args(name, 8, 4)
    with pytest.raises(ValueError, match="impl='pallas' cannot run here.*fallback=True"):
        SHARDED[name](*args, mesh=mesh((8,)), block_impl="pallas")


@on_cpu
def test_auto_backend_on_cpu_raises_in_ring_function():
    x, y, tau = sharded_args("nt_xent", 8, 4)

    def per_device(x_blk, y_blk):
        return ring_loss("nt_xent", x_blk, y_blk, (tau,), "data", block_impl="pallas")[0]

    mapped = jax.shard_map(per_device, mesh=mesh((8,)), in_specs=(P("data"), P("data")),
                           out_specs=P(), check_vma=False)
    with pytest.raises(ValueError, match="ring_nt_xent: impl='pallas' cannot run here"):
        mapped(x, y)


@on_cpu
def test_fallback_warns_once_and_equals_chunked_ring(caplog, monkeypatch):
    """One loss: the fallback is decided once, in `ring.sharded_loss` / `ring_blocks`."""
    monkeypatch.setattr(dispatch, "_warned", set())
    name = "softmax"
    args = sharded_args(name, 16, 8)
    want, _, _ = traced_loss_metrics_grads(name, args, (8,), tile=2, block_impl="chunked")
    fallback = dict(tile=2, block_impl="pallas", fallback=True)
    with caplog.at_level(logging.WARNING, logger="pallas_kernels"):
        got, jaxpr, _ = traced_loss_metrics_grads(name, args, (8,), **fallback)
        jax.eval_shape(lambda *a: SHARDED[name](*a, mesh=mesh((8,)), **fallback), *args)
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "using 'chunked'" in warnings[0].getMessage()
    assert "pallas_call" not in jaxpr
    assert_close(got, want, rtol=0, atol=0, metric_rtol={}, grad_atol=0)


def test_bad_block_impl_or_backend_raises_value_error():
    args = sharded_args("softmax", 8, 4)
    with pytest.raises(ValueError, match="Unknown impl 'triton'.*'chunked', 'pallas'"):
        SHARDED["softmax"](*args, mesh=mesh((8,)), block_impl="triton")
    with pytest.raises(ValueError, match="Unknown Pallas backend 'cuda'"):
        SHARDED["softmax"](*args, mesh=mesh((8,)), block_impl="pallas", backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_triton_blocks_on_gpu_match_numpy(name):
    """Automatic backend (Triton) on a ring over every local GPU vs NumPy
    float64; XLA's own matmuls (metrics' max pass) at f32, not TF32."""
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    from jax.sharding import Mesh

    n = jax.device_count()
    _, np_fn, scalars = LOSSES[name]
    args = sharded_args(name, 24 * n, 32)
    gpu_mesh = Mesh(np.array(jax.devices()), ("data",))

    def loss(*args):
        return SHARDED[name](*args, mesh=gpu_mesh, block_impl="pallas")

    with jax.default_matmul_precision("float32"):
        (value, metrics), grads = jax.jit(
            jax.value_and_grad(loss, tuple(range(len(args))), has_aux=True))(*args)
    want = np_fn(np.float64(args[0]), np.float64(args[1]), *scalars)
    assert_close((value, metrics, grads), want)
