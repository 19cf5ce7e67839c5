"""The contrastive Pallas kernels' backends: the Mosaic TPU grid driver in interpret mode, lowering
for Triton / Mosaic TPU without a device, block sizes, bad inputs, and the GPU checks."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.backend import BackendUnavailableError, KernelConfig
from pallas_kernels.contrastive import pallas_impl as pallas_ops
from pallas_kernels.contrastive import pallas_vjp as primitives, reference
from test_pallas_contrastive import INTERPRET, LOG_T, LOSSES, SIGLIP_BIAS, TAU, assert_close, embeddings, value_and_grads


def _weighted(row_col):
    row, col = row_col
    return jnp.sum(jnp.linspace(-1.0, 1.0, row.shape[0]) * row) + jnp.sum(col ** 2)


def test_tpu_grid_driver_in_interpret_mode():
    """The Mosaic-TPU kernel structure (2-D grid, VMEM scratch, 128-lane stats)."""
    cfg = KernelConfig(driver="grid", interpret=True, block_q=128, block_k=128)
    zq, zk = embeddings(8, 37, 21, 33)
    lt, bias, off = jnp.float32(LOG_T), jnp.float32(SIGLIP_BIAS), jnp.int32(1)
    cases = [
        (lambda a, b, t: _weighted(primitives.softmax_pair(cfg, True, a, b, t, off)),
         lambda a, b, t: _weighted(reference.pair_logsumexp(a, b, t, 1))),
        (lambda a, b, t: jnp.sum(primitives.sigmoid_pair(cfg, True, a, b, t, bias, off) ** 2),
         lambda a, b, t: jnp.sum(reference.sigmoid_pair_row_sums(a, b, t, bias, 1) ** 2)),
        (lambda a, b, t: jnp.sum(jnp.cos(primitives.symmetric_lse(cfg, a, t))),
         lambda a, b, t: jnp.sum(jnp.cos(reference.pair_logsumexp(a, a, t, 0)[0]))),
    ]
    for fn, ref in cases:
        (loss, grads), (ref_loss, ref_grads) = value_and_grads(fn, zq, zk, lt), value_and_grads(ref, zq, zk, lt)
        assert_close(loss, ref_loss, 1e-5)
        for g, ref_g in zip(grads, ref_grads):
            assert_close(g, ref_g, 1e-5)


# ------------------------------------------------------------ lowering, backends, errors


@pytest.mark.parametrize("platform,driver,block", [("cuda", "loop", 64), ("tpu", "grid", 128)])
def test_kernels_lower_for_device_backends(platform, driver, block):
    """Triton and Mosaic-TPU lowering of forward + backward runs without the device
    (catches constructs that only interpret mode accepts)."""
    cfg = KernelConfig(driver=driver, interpret=False, block_q=block, block_k=block)
    # 150 rows pad to 192 with 64-row blocks: not a power of two, as Triton allows
    # for whole-array refs that are only sliced in power-of-two pieces.
    spec_q = jax.ShapeDtypeStruct((200, 33), jnp.bfloat16)
    spec_k = jax.ShapeDtypeStruct((150, 33), jnp.bfloat16)
    scalar, offset = jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)

    def all_families(a, b, t, o):
        row, col = primitives.softmax_pair(cfg, True, a, b, t, o)
        sig = primitives.sigmoid_pair(cfg, True, a, b, t, t, o)
        return jnp.sum(row) + jnp.sum(col) + jnp.sum(sig) + jnp.sum(primitives.symmetric_lse(cfg, a, t))

    traced = jax.jit(jax.grad(all_families, argnums=(0, 1, 2))).trace(spec_q, spec_k, scalar, offset)
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    assert text.count("custom_call") >= 7


def test_auto_backend_on_cpu_raises():
    if jax.default_backend() != "cpu":
        pytest.skip("auto backend only fails on CPU")
    zi, zt = embeddings(0, 4, 4, 8)
    with pytest.raises(BackendUnavailableError):
        pallas_ops.softmax_contrastive_loss(zi, zt, LOG_T)
    with pytest.raises(BackendUnavailableError):
        pallas_ops.nt_xent_loss(zi, zt, TAU, backend="triton")


@pytest.mark.parametrize("dim", [8, 128, 512, 1000])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_default_blocks_are_valid_and_within_their_stated_budget(dim, dtype):
    """The GPU default block sizes are unmeasured guesses, so their values are not pinned:
    only what the kernels need (powers of two in [16, 64] on the loop driver) and the
    documented rule (resident zq tile + f32 accumulator, and one zk tile, within 64 KiB
    unless clamped at 16)."""
    cfg = pallas_ops.kernel_config("interpret", n_rows=100_000, dim=dim, dtype=dtype)
    padded, itemsize = cfg.padded_dim(dim), jnp.dtype(dtype).itemsize
    for block, bytes_per_row in ((cfg.block_q, padded * (itemsize + 4)), (cfg.block_k, padded * itemsize)):
        assert 16 <= block <= 64 and block & (block - 1) == 0
        assert block == 16 or block * bytes_per_row <= 64 * 1024


def test_kernel_config_block_sizes():
    """User blocks shrink to small batches; padding and the TPU layout are fixed by the hardware."""
    cfg = pallas_ops.kernel_config("interpret", n_rows=5, dim=33, block_q=64)
    assert (cfg.block_q, cfg.block_k, cfg.padded_dim(33)) == (16, 16, 64)
    tpu = KernelConfig(driver="grid", interpret=True, block_q=128, block_k=256)
    assert (tpu.padded_dim(33), tpu.vec_lanes, tpu.vec_sublanes, tpu.row_multiple) == (128, 128, 8, 256)


@pytest.mark.parametrize("call,match", [
    (lambda a, b: pallas_ops.softmax_contrastive_loss(a, b[:3], LOG_T, **INTERPRET), "shape mismatch"),
    (lambda a, b: pallas_ops.sigmoid_contrastive_loss(a, b.astype(jnp.int32), 0.0, 0.0, **INTERPRET), "dtype"),
    (lambda a, b: pallas_ops.softmax_contrastive_loss(a, b, jnp.ones(2), **INTERPRET), "log_t must be a scalar"),
    (lambda a, b: pallas_ops.nt_xent_loss(a[0], b, TAU, **INTERPRET), r"z1 must be a non-empty \[rows, D\]"),
    (lambda a, b: pallas_ops.softmax_contrastive_loss(a, b, LOG_T, backend="interpret", block_q=24), "block_q=24"),
    (lambda a, b: pallas_ops.softmax_pair_lse(a, b, LOG_T, self_offset=0.5, **INTERPRET), "self_offset"),
    (lambda a, b: pallas_ops.softmax_contrastive_loss(a, b, LOG_T, backend="cuda"), "Unknown Pallas backend"),
])
def test_bad_input_raises_value_error(call, match):
    zi, zt = embeddings(0, 4, 4, 8)
    with pytest.raises(ValueError, match=match):
        call(zi, zt)


# ------------------------------------------------------------ real kernels on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("rows,dim,dtype,grad_rtol", [
    (5, 33, jnp.float32, 1e-5), (300, 128, jnp.float32, 1e-5),
    (1000, 512, jnp.float32, 1e-5), (300, 256, jnp.bfloat16, 2e-2),
])
def test_triton_kernel_matches_reference_on_gpu(name, rows, dim, dtype, grad_rtol):
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    fn, ref_fn, scalars = LOSSES[name]
    z1, z2 = embeddings(11, rows, rows, dim, dtype=dtype)
    args = (z1, z2, *scalars)
    loss, grads = value_and_grads(jax.jit(lambda *a: fn(*a, backend="triton")), *args)
    upcast = [a.astype(jnp.float32) if hasattr(a, "dtype") else a for a in args]
    ref_loss, ref_grads = value_and_grads(jax.jit(ref_fn), *upcast)
    # Losses and scalar gradients sum up to B^2 terms in another order than XLA's
    # reduction: 1e-4 there (bf16 forward: exact products, f32 sums).
    assert_close(loss, ref_loss, 1e-5 if dtype == jnp.float32 else 1e-4)
    for g, ref_g in zip(grads[:2], ref_grads[:2]):
        assert_close(g, ref_g, grad_rtol)
    for g, ref_g in zip(grads[2:], ref_grads[2:]):
        assert_close(g, ref_g, max(grad_rtol, 1e-4))


@pytest.mark.gpu
def test_triton_pair_primitive_on_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")
    zq, zk = embeddings(12, 130, 257, 64)
    row, col = jax.jit(lambda a, b: pallas_ops.softmax_pair_lse(a, b, LOG_T, self_offset=-7))(zq, zk)
    ref_row, ref_col = reference.pair_logsumexp(zq, zk, LOG_T, -7)
    assert_close(row, ref_row, 1e-5)
    assert_close(col, ref_col, 1e-5)
