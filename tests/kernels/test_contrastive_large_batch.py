"""Contrastive losses at batch sizes whose pair counts leave int32 (issue 14, section 4).

SigLIP's chunked metrics once formed `B**2 * bias` from a Python int, which JAX
parses as int32: an OverflowError for every B >= 46,341, in the chunked path and
the ring that shares it, though the chunked memory allows far larger batches. The
reference (its B x B logits fit a large GPU at that size) divides by `B * (B - 1)`,
which JAX takes as a float there: traced too, to keep it so.
These tests only trace and lower (abstract shapes), so they cost milliseconds.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.contrastive import api
from test_contrastive_distributed import mesh

LOSSES = {
    "softmax": (api.softmax_contrastive, (1.0,)),
    "sigmoid": (api.sigmoid_contrastive, (1.0, -10.0)),
    "nt_xent": (api.nt_xent, (0.2,)),
}
IMPLS = {
    "reference": dict(impl="reference"),
    "chunked": dict(impl="chunked"),
    "pallas": dict(impl="pallas", backend="interpret"),
    "ring": dict(impl="ring"),
    "ring_pallas": dict(impl="ring", block_impl="pallas", backend="interpret"),
}
# 46,341 = the first B with B**2 > 2**31 - 1; 836,000 ~ the rows 4 GiB allows (D = 8);
# both divisible by 8 for the ring (46,344).
BATCHES = {"reference": (46_341,), "chunked": (46_341, 836_000), "pallas": (46_341,), "ring": (46_344, 836_000),
           "ring_pallas": (46_344,)}
CASES = [(impl, batch) for impl, batches in BATCHES.items() for batch in batches]


def lowered_value_and_grad(name: str, impl: str, batch: int, dim: int = 8):
    """jit(value_and_grad) of the loss lowered for abstract [batch, dim] f32 embeddings."""
    fn, scalars = LOSSES[name]
    kwargs = dict(IMPLS[impl])
    if impl.startswith("ring"):
        kwargs["mesh"] = mesh((8,))

    def loss(x, y):
        return fn(x, y, *scalars, **kwargs)

    spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    step = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
    return step.lower(spec, spec), jax.eval_shape(step, spec, spec)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("impl,batch", CASES)
def test_loss_traces_and_lowers_beyond_int32_pair_counts(name, impl, batch):
    if impl.startswith("ring") and jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets them up on CPU)")
    lowered, ((value, metrics), grads) = lowered_value_and_grad(name, impl, batch)
    assert value.shape == () and value.dtype == jnp.float32
    assert all(m.shape == () and m.dtype == jnp.float32 for m in metrics.values()), metrics
    assert [g.shape for g in grads] == [(batch, 8), (batch, 8)]
    assert "stablehlo" in lowered.as_text()[:2000]
