"""Fused linear KD: chunked (vocabulary tiles and row chunks), the KD + CE form, and pallas
routing, against the [N, V] reference and NumPy."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.losses import distill
from jaxsup.losses.fused_linear_kd import fused_linear_kd

RTOL = 1e-5
BF16_RTOL = 2e-2  # gradient matmuls take dZ rounded to bf16 (the reference keeps f32)


def make_inputs(n, h, v, ht=5, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    arr = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, dtype)  # noqa: E731
    return {
        "h_s": arr(n, h), "w_s": arr(h, v, scale=0.7), "logits": arr(n, v, scale=2.0),
        "h_t": arr(n, ht), "w_t": arr(ht, v, scale=0.8),
    }


def teacher_of(x, mode):
    return x["logits"] if mode == "logits" else (x["h_t"], x["w_t"])


def value_and_grads(impl, x, mode, kind, temp=2.0, beta=0.3, **kw):
    def loss(h_s, w_s):
        return fused_linear_kd(h_s, w_s, teacher_of(x, mode), temp, kind=kind, beta=beta,
                               impl=impl, **kw)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))(x["h_s"], x["w_s"])


def assert_tree_close(got, want, rtol, atol_frac=0.0):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_frac * np.abs(w).max())


@pytest.mark.parametrize("mode", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_chunked_matches_reference(kind, mode):
    x = make_inputs(6, 8, 50)  # tile 16: V=50 is not a multiple
    want = value_and_grads("reference", x, mode, kind)
    got = value_and_grads("chunked", x, mode, kind, tile=16, chunking="vocab")
    assert got[0].dtype == jnp.float32 and got[0].shape == ()
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


def test_reference_impl_is_kd_of_logits():
    x = make_inputs(4, 6, 11)
    want = distill.kd_loss(x["h_s"] @ x["w_s"], x["logits"], 1.5, "jsd", 0.6)
    got = fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 1.5, kind="jsd", beta=0.6)
    np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize(
    "n, h, v, tile, kind", [(1, 3, 7, 4, "kl"), (3, 3, 8, 8, "jsd"), (2, 5, 9, 64, "rkl"),
                            (5, 4, 12, 1, "kl")]
)
def test_chunked_odd_shapes(n, h, v, tile, kind):
    x = make_inputs(n, h, v, seed=n + v)
    want = value_and_grads("reference", x, "hidden", kind)
    got = value_and_grads("chunked", x, "hidden", kind, tile=tile, chunking="vocab")
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_chunked_bf16(kind):
    x = make_inputs(8, 16, 40, dtype=jnp.bfloat16)
    want = value_and_grads("reference", x, "logits", kind)
    got = value_and_grads("chunked", x, "logits", kind, tile=16, chunking="vocab")
    assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.bfloat16
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)  # f32 logits from the same bf16 inputs
    assert_tree_close(got[1], want[1], BF16_RTOL, atol_frac=BF16_RTOL)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_teacher_gets_zero_gradient(impl):
    x = make_inputs(3, 4, 10)

    def loss(w_s, logits, h_t, w_t):
        a = fused_linear_kd(x["h_s"], w_s, logits, 2.0, impl=impl, tile=4, chunking="vocab")
        b = fused_linear_kd(x["h_s"], w_s, (h_t, w_t), 2.0, kind="rkl", impl=impl, row_chunk=2)
        return a + b

    grads = jax.grad(loss, (0, 1, 2, 3))(x["w_s"], x["logits"], x["h_t"], x["w_t"])
    assert float(jnp.abs(grads[0]).max()) > 0
    for g in grads[1:]:
        np.testing.assert_array_equal(g, 0.0)


def test_chunked_forward_only_under_jit_and_eager():
    # Without differentiation the custom_vjp primal (no gradient pass) runs.
    x = make_inputs(4, 6, 20)
    want = fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 2.0, kind="rkl")
    f = lambda h, w, t: fused_linear_kd(h, w, t, 2.0, kind="rkl", impl="chunked", tile=8)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(x["h_s"], x["w_s"], x["logits"]), want, rtol=RTOL)
    np.testing.assert_allclose(f(x["h_s"], x["w_s"], x["logits"]), want, rtol=RTOL)


def temp_bytes(impl, n, h, v, tile):
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, h), (h, v), (n, v))]
    f = jax.value_and_grad(
        lambda h_s, w_s, t: fused_linear_kd(h_s, w_s, t, 2.0, impl=impl, tile=tile, chunking="vocab"), (0, 1)
    )
    return jax.jit(f).lower(*structs).compile().memory_analysis().temp_size_in_bytes


def test_chunked_temp_memory_below_one_logits_matrix():
    n, h, v, tile = 256, 64, 16384, 1024
    one_logits_matrix = n * v * 4  # 16 MiB; the reference needs several
    assert temp_bytes("reference", n, h, v, tile) > one_logits_matrix
    # Tiles (N * tile) and small rows; dW [H, V] lives in the output buffer.
    assert temp_bytes("chunked", n, h, v, tile) < one_logits_matrix / 4


def test_pallas_on_cpu_raises_or_falls_back(caplog):
    x = make_inputs(4, 6, 20)
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU behaviour")
    with pytest.raises(ValueError, match="fallback=True"):
        fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 2.0, impl="pallas")
    with caplog.at_level(logging.WARNING):
        got = fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 2.0, impl="pallas", fallback=True)
    want = fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 2.0, impl="chunked")
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_pallas_interpret_through_jaxsup():
    x = make_inputs(5, 6, 20)
    want = value_and_grads("reference", x, "logits", "kl")
    got = value_and_grads("pallas", x, "logits", "kl", backend="interpret")
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


def test_bad_inputs_raise_value_error():
    x = make_inputs(4, 6, 20)
    h_s, w_s, logits = x["h_s"], x["w_s"], x["logits"]
    with pytest.raises(ValueError, match="impl"):
        fused_linear_kd(h_s, w_s, logits, 2.0, impl="triton")
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(5, 20\)"):
        fused_linear_kd(h_s, w_s[:5], logits, 2.0)
    with pytest.raises(ValueError, match=r"teacher logits \(4, 19\)"):
        fused_linear_kd(h_s, w_s, logits[:, :19], 2.0, impl="chunked")
    with pytest.raises(ValueError, match="W_t"):
        fused_linear_kd(h_s, w_s, (x["h_t"], x["w_t"][:, :19]), 2.0)
    with pytest.raises(ValueError, match="Temperature"):
        fused_linear_kd(h_s, w_s, logits, 0.0, impl="chunked")
    with pytest.raises(ValueError, match="tile"):
        fused_linear_kd(h_s, w_s, logits, 2.0, impl="chunked", tile=0)
    with pytest.raises(ValueError, match="kind"):
        fused_linear_kd(h_s, w_s, logits, 2.0, kind="xent")
    with pytest.raises(ValueError, match="beta"):
        fused_linear_kd(h_s, w_s, logits, 2.0, kind="jsd", beta=1.2, impl="chunked")


# ----------------------------------------------------------------------------
# Row chunks (chunking="rows", Liger-style) and the KD + CE form of the distill task.
# ----------------------------------------------------------------------------
def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kd_ce(x, temp, labels, kd_w, ce_w):
    """float64 NumPy: sum kd_w T^2 KL(p_t || q_s) + ce_w CE(z, labels), the plain formula."""
    z = np.asarray(x["h_s"], np.float64) @ np.asarray(x["w_s"], np.float64)
    lp, lq = np_log_softmax(np.asarray(x["logits"], np.float64) / temp), np_log_softmax(z / temp)
    kd = temp**2 * (np.exp(lp) * (lp - lq)).sum(-1)
    ce = -np_log_softmax(z)[np.arange(len(labels)), labels]
    return (kd_w * kd).sum() + (ce_w * ce).sum(), kd, ce


@pytest.mark.parametrize("mode", ["logits", "hidden"])
@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_rows_match_reference(kind, mode):
    x = make_inputs(7, 8, 50)  # 3-row chunks: N=7 is not a multiple (last chunk shifted)
    want = value_and_grads("reference", x, mode, kind)
    got = value_and_grads("chunked", x, mode, kind, chunking="rows", row_chunk=3)
    assert got[0].dtype == jnp.float32 and got[0].shape == ()
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


def test_rows_value_is_numpy_kd_eager_and_jit():
    x = make_inputs(5, 6, 30)
    want, _, _ = np_kd_ce(x, 2.0, np.zeros(5, int), np.full(5, 0.2), np.zeros(5))
    f = lambda h, w, t: fused_linear_kd(h, w, t, 2.0, impl="chunked", chunking="rows", row_chunk=2)  # noqa: E731
    np.testing.assert_allclose(f(x["h_s"], x["w_s"], x["logits"]), want, rtol=RTOL)
    np.testing.assert_allclose(jax.jit(f)(x["h_s"], x["w_s"], x["logits"]), want, rtol=RTOL)


def test_rows_dw_update_in_vocab_tiles(monkeypatch):
    from pallas_kernels.linear_kd import rows_chunked_xla

    monkeypatch.setattr(rows_chunked_xla, "DW_TILE_BYTES", 4 * 4 * 128)  # H=4: 128-column dW updates
    x = make_inputs(6, 4, 300)  # 300 = 2 * 128 + 44: the last dW tile is shifted
    want = value_and_grads("reference", x, "logits", "kl")
    got = value_and_grads("chunked", x, "logits", "kl", chunking="rows", row_chunk=4)
    assert_tree_close(got, want, RTOL, atol_frac=1e-6)


@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_rows_bf16(kind):
    x = make_inputs(8, 16, 40, dtype=jnp.bfloat16)
    want = value_and_grads("reference", x, "logits", kind)
    got = value_and_grads("chunked", x, "logits", kind, chunking="rows", row_chunk=3)
    assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.bfloat16
    np.testing.assert_allclose(got[0], want[0], rtol=RTOL)
    assert_tree_close(got[1], want[1], BF16_RTOL, atol_frac=BF16_RTOL)


def test_rows_scale_with_the_cotangent():
    x = make_inputs(4, 5, 12)
    f = lambda h, w: 3.0 * fused_linear_kd(h, w, x["logits"], 2.0, impl="chunked", chunking="rows")  # noqa: E731
    g = lambda h, w: 3.0 * fused_linear_kd(h, w, x["logits"], 2.0)  # noqa: E731
    assert_tree_close(jax.grad(f, (0, 1))(x["h_s"], x["w_s"]), jax.grad(g, (0, 1))(x["h_s"], x["w_s"]),
                      RTOL, atol_frac=1e-6)


def test_chunking_choice():
    from pallas_kernels.linear_kd.api import resolve_chunking
    from pallas_kernels.linear_kd.rows_chunked_xla import default_row_chunk

    assert resolve_chunking("auto", 32768) == "rows" and resolve_chunking("vocab", 10) == "vocab"
    assert resolve_chunking("auto", 2**24) == "vocab"  # 16 rows of V would exceed the budget
    assert default_row_chunk(2048, 32768) == 512 and default_row_chunk(8192, 131072) == 128
    assert default_row_chunk(10, 50) == 10
    with pytest.raises(ValueError, match="chunking"):
        resolve_chunking("cols", 10)
    with pytest.raises(ValueError, match="row_chunk"):
        x = make_inputs(3, 4, 5)
        fused_linear_kd(x["h_s"], x["w_s"], x["logits"], 2.0, impl="chunked", row_chunk=0)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kd_ce_matches_numpy_and_grads_match_reference(impl, dtype):
    from jaxsup.losses.fused_linear_kd import fused_linear_kd_ce

    x = make_inputs(9, 6, 21, dtype=dtype)
    labels = np.arange(9) % 21
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], np.float32)
    kd_w, ce_w = np.full(9, 0.7 / 9, np.float32), (0.3 * mask / mask.sum()).astype(np.float32)

    def loss(h, w):
        total, aux = fused_linear_kd_ce(h, w, x["logits"], 2.0, labels=labels, kd_weights=kd_w,
                                        ce_weights=ce_w, impl=impl, row_chunk=4)
        return total, aux

    (total, aux), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x["h_s"], x["w_s"])
    want, kd_rows, ce_rows = np_kd_ce(x, 2.0, labels, kd_w, ce_w)
    np.testing.assert_allclose(total, want, rtol=1e-5)
    np.testing.assert_allclose(aux.kd, kd_rows, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux.ce, ce_rows, rtol=1e-5)
    z = np.asarray(x["h_s"], np.float64) @ np.asarray(x["w_s"], np.float64)
    np.testing.assert_array_equal(aux.student_top1, z.argmax(-1))
    np.testing.assert_array_equal(aux.teacher_top1, np.asarray(x["logits"], np.float32).argmax(-1))
    ref_loss = lambda h, w: fused_linear_kd_ce(h, w, x["logits"], 2.0, labels=labels, kd_weights=kd_w,  # noqa: E731
                                               ce_weights=ce_w, impl="reference")[0]
    want_grads = jax.grad(ref_loss, (0, 1))(x["h_s"], x["w_s"])
    rtol = RTOL if dtype == jnp.float32 else BF16_RTOL
    assert_tree_close(grads, want_grads, rtol, atol_frac=max(1e-6, rtol))


def test_rows_temp_memory_below_one_logits_matrix():
    n, h, v = 1024, 64, 16384
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((n, h), (h, v), (n, v))]

    def temp(**kw):
        f = jax.value_and_grad(lambda h_s, w_s, t: fused_linear_kd(h_s, w_s, t, 2.0, **kw), (0, 1))
        return jax.jit(f).lower(*structs).compile().memory_analysis().temp_size_in_bytes

    rows = temp(impl="chunked", chunking="rows", row_chunk=32)
    # a few [32, V] chunks and dW's f32 accumulator [H, V] (= N*V / 16): no [N, V] array
    assert rows < n * v * 4 / 4
    assert rows < temp(impl="reference") / 10
