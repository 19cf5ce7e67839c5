"""Pallas fused linear KD kernel: interpret mode against the reference; Triton lowering."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.backend import BackendUnavailableError, KernelConfig
from pallas_kernels.linear_kd import pallas_impl as pallas_ops
from pallas_kernels.linear_kd.api import fused_linear_kd
from pallas_kernels.linear_kd.common import KdLoss, check_fused_inputs
from pallas_kernels.linear_kd.pallas_triton import Static, fused_kd_padded
from pallas_kernels.linear_kd.reference import fused_linear_kd_reference
from test_fused_linear_kd import assert_tree_close

RTOL = 1e-5
BF16_RTOL = 2e-2  # dZ is rounded to bf16 before the gradient matmuls
SMALL_BLOCKS = {"block_n": 4, "block_v": 16, "block_h": 4}  # grids of a few programs


def make_inputs(n, h, v, ht=6, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    arr = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, dtype)  # noqa: E731
    return (arr(n, h), arr(h, v, scale=0.7)), {
        "logits": arr(n, v, scale=2.0), "hidden": (arr(n, ht), arr(ht, v, scale=0.8))
    }


def kernel_loss(h_s, w_s, teacher, temp, kind="kl", beta=0.5, **kw):
    """The Pallas loss on inputs checked as the family's `fused_linear_kd` checks them."""
    checked = check_fused_inputs(h_s, w_s, teacher, temp, kind, beta)
    return pallas_ops.fused_linear_kd_loss(h_s, w_s, *checked, **kw)


def kernel_value_and_grads(student, teacher, kind, temp=2.0, beta=0.4, **kw):
    def loss(h_s, w_s):
        return kernel_loss(h_s, w_s, teacher, temp, kind, beta, **kw)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))(*student)


def reference_value_and_grads(student, teacher, kind, temp=2.0, beta=0.4):
    def loss(h_s, w_s):
        checked = check_fused_inputs(h_s, w_s, teacher, temp, kind, beta)
        return fused_linear_kd_reference(h_s, w_s, *checked)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))(*student)


@pytest.mark.parametrize("mode", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_interpret_matches_reference(kind, mode):
    student, teachers = make_inputs(6, 8, 40)  # V=40: last 16-wide tile is padded
    got = kernel_value_and_grads(student, teachers[mode], kind, backend="interpret", **SMALL_BLOCKS)
    want = reference_value_and_grads(student, teachers[mode], kind)
    assert got[0].dtype == jnp.float32 and got[0].shape == ()
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


@pytest.mark.parametrize("kind", ["rkl", "jsd"])
def test_interpret_forward_only(kind):
    # Without differentiation the custom_vjp primal (forward kernel only) runs.
    student, teachers = make_inputs(5, 8, 24)
    got = jax.jit(
        lambda h, w, t: kernel_loss(h, w, t, 1.5, kind, 0.7, backend="interpret", **SMALL_BLOCKS)
    )(*student, teachers["hidden"])
    checked = check_fused_inputs(*student, teachers["hidden"], 1.5, kind, 0.7)
    want = fused_linear_kd_reference(*student, *checked)
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("n, h, v", [(1, 3, 7), (5, 3, 17)])
def test_interpret_odd_shapes(n, h, v):
    student, teachers = make_inputs(n, h, v, ht=3, seed=v)
    for mode in ("logits", "hidden"):
        got = kernel_value_and_grads(
            student, teachers[mode], "kl", backend="interpret", **SMALL_BLOCKS
        )
        want = reference_value_and_grads(student, teachers[mode], "kl")
        assert_tree_close(got, want, RTOL, atol_frac=1e-6)


def test_interpret_default_blocks_clamp_to_small_dims():
    student, teachers = make_inputs(3, 5, 9)
    got = kernel_value_and_grads(student, teachers["logits"], "jsd", backend="interpret")
    want = reference_value_and_grads(student, teachers["logits"], "jsd")
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


def test_interpret_bf16():
    student, teachers = make_inputs(8, 8, 32, dtype=jnp.bfloat16)
    got = kernel_value_and_grads(
        student, teachers["logits"], "kl", backend="interpret", **SMALL_BLOCKS
    )
    want = reference_value_and_grads(student, teachers["logits"], "kl")
    assert got[1][0].dtype == jnp.bfloat16
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
    assert_tree_close(got[1], want[1], BF16_RTOL, atol_frac=BF16_RTOL)


def test_interpret_teacher_gets_zero_gradient():
    (h_s, w_s), teachers = make_inputs(4, 4, 16)
    h_t, w_t = teachers["hidden"]

    def loss(w_s, logits, h_t, w_t):
        kw = dict(backend="interpret", **SMALL_BLOCKS)
        return kernel_loss(h_s, w_s, logits, 2.0, **kw) + kernel_loss(
            h_s, w_s, (h_t, w_t), 2.0, kind="rkl", **kw
        )

    grads = jax.jit(jax.grad(loss, (0, 1, 2, 3)))(w_s, teachers["logits"], h_t, w_t)
    assert float(jnp.abs(grads[0]).max()) > 0
    for g in grads[1:]:
        np.testing.assert_array_equal(g, 0.0)


def _skip_without_triton_lowering():
    """Skips only when this jaxlib lacks Pallas's Triton lowering (the module JAX imports for it);
    any other error of the lowering fails the test."""
    try:
        importlib.import_module("jax._src.pallas.triton.pallas_call_registration")
    except ImportError as err:
        pytest.skip(f"this jaxlib has no Pallas Triton lowering: {err}")


@pytest.mark.parametrize("kind", ["kl", "jsd"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_lower_to_triton(kind, dtype):
    """Lowers the real (non-interpret) kernels to Triton IR; needs no GPU."""
    cfg = KernelConfig(driver="loop", interpret=False, block_q=64, block_k=128, block_h=64)
    st = Static(KdLoss(2.0, kind, 0.5), n_rows=120, vocab=500, cfg=cfg)
    structs = (jax.ShapeDtypeStruct((128, 192), dtype), jax.ShapeDtypeStruct((192, 512), dtype),
               (jax.ShapeDtypeStruct((128, 64), dtype), jax.ShapeDtypeStruct((64, 512), dtype)))
    fn = jax.jit(jax.value_and_grad(lambda h, w, t: fused_kd_padded(h, w, t, st), (0, 1)))
    _skip_without_triton_lowering()
    try:
        text = fn.trace(*structs).lower(lowering_platforms=("cuda",)).as_text()
    except ValueError as err:  # JAX's own wording when pallas_call has no GPU lowering rule
        if "Cannot lower pallas_call on platform" not in str(err):
            raise
        pytest.skip(f"this jaxlib cannot lower pallas_call for CUDA: {err}")
    assert text.count("triton") >= 3  # forward, dh and dW kernels


def test_backend_errors():
    student, teachers = make_inputs(4, 4, 16)
    if jax.default_backend() == "cpu":
        with pytest.raises(BackendUnavailableError):
            kernel_loss(*student, teachers["logits"], 2.0)
    with pytest.raises(BackendUnavailableError):
        kernel_loss(*student, teachers["logits"], 2.0, backend="mosaic_tpu")
    with pytest.raises(ValueError, match="block_v"):
        kernel_loss(*student, teachers["logits"], 2.0, backend="interpret", block_v=0)
    with pytest.raises(ValueError, match="power of two"):
        pallas_ops._block("block_n", 48, 100, "triton")  # pylint: disable=protected-access
    with pytest.raises(ValueError, match="kind"):
        fused_linear_kd(*student, teachers["logits"], 2.0, kind="ce", impl="pallas", backend="interpret")
    with pytest.raises(ValueError, match="teacher logits"):
        fused_linear_kd(*student, teachers["logits"][:3], 2.0, impl="pallas", backend="interpret")


# ----------------------------------------------------------------------------
# The real kernel (opt-in: -m gpu).
# ----------------------------------------------------------------------------
def _skip_without_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip("needs a GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_gpu_kernel_matches_reference_f32(kind, mode):
    _skip_without_gpu()
    student, teachers = make_inputs(200, 96, 1000, ht=80)  # every dim padded
    with jax.default_matmul_precision("highest"):
        want = reference_value_and_grads(student, teachers[mode], kind)
    got = kernel_value_and_grads(student, teachers[mode], kind)  # f32 dots are IEEE in Triton
    assert_tree_close(got, want, 1e-4, atol_frac=1e-5)


@pytest.mark.gpu
def test_gpu_kernel_bf16():
    _skip_without_gpu()
    student, teachers = make_inputs(256, 128, 2048, ht=128, dtype=jnp.bfloat16)
    want = reference_value_and_grads(student, teachers["hidden"], "kl")
    got = kernel_value_and_grads(student, teachers["hidden"], "kl")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-3)
    assert_tree_close(got[1], want[1], BF16_RTOL, atol_frac=BF16_RTOL)
