"""bf16 gradients on confident rows (loss < 1e-3): every impl against a float64 NumPy reference.

With p_ii ~ 1 the positive's gradient is p_ii - 1, tiny: a kernel that rounds p to bf16
before subtracting the positive loses it (the Pallas backward was 18-21x the gradient's
own size at CLIP N=7 / 33 before the positives moved into its f32 tiles). Each impl's
error, relative to the largest gradient entry, must stay within the chunked impl's.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from pallas_kernels.contrastive import api

def confident(n, d, noise, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)); y = x + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True); y /= np.linalg.norm(y, axis=1, keepdims=True)
    xb, yb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    return xb, yb, np.asarray(xb, np.float64), np.asarray(yb, np.float64)

def softmax_rows(s):
    s = s - s.max(1, keepdims=True); e = np.exp(s); return e / e.sum(1, keepdims=True)

def clip_ref(x, y, scale):
    n = len(x); s = scale * x @ y.T
    lse = lambda m: np.log(np.exp(m - m.max(1, keepdims=True)).sum(1)) + m.max(1)
    loss = 0.5 * (np.mean(lse(s) - np.diag(s)) + np.mean(lse(s.T) - np.diag(s)))
    ds = 0.5 / n * (softmax_rows(s) + softmax_rows(s.T).T - 2 * np.eye(n))
    return loss, (scale * ds @ y, scale * ds.T @ x)

def ntxent_ref(z1, z2, tau):
    n = len(z1); z = np.concatenate([z1, z2]); s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    m = s.max(1, keepdims=True); lse = np.log(np.exp(s - m).sum(1)) + m[:, 0]
    pos = np.sum(z1 * z2, 1) / tau
    loss = lse.mean() - pos.mean()
    ds = np.exp(s - lse[:, None]) / (2 * n)
    ds[np.arange(n), np.arange(n) + n] -= 1.0 / n
    dz = (ds + ds.T) @ z / tau
    return loss, (dz[:n], dz[n:])

def rel_err(got, want):
    return max(float(np.max(np.abs(np.asarray(g, np.float64) - w))) for g, w in zip(got, want)) / max(float(np.max(np.abs(w))) for w in want)

def impl_kwargs(n: int) -> dict:
    """impl -> kwargs; the rings run on the most devices (of 4, 2, 1) that divide N."""
    devices = next(k for k in (4, 2, 1) if n % k == 0 and jax.device_count() >= k)
    if devices == 1 and n > 8:  # one-device rings: the N=7 case has them
        return {"reference": {}, "chunked": dict(tile=4), "pallas": dict(tile=4, backend="interpret")}
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    return {"reference": {}, "chunked": dict(tile=4), "pallas": dict(tile=4, backend="interpret"),
            "ring_chunked": dict(tile=4, mesh=mesh, block_impl="chunked"),
            "ring_pallas": dict(tile=4, mesh=mesh, block_impl="pallas", backend="interpret")}


def errors(case):
    name, n, d, noise, param = case
    KW = impl_kwargs(n)
    xb, yb, x, y = confident(n, d, noise)
    if name == "clip":
        loss, want = clip_ref(x, y, np.exp(param))
        f = lambda impl: lambda a, b: api.softmax_contrastive(a, b, jnp.float32(param), impl=impl.split("_")[0], **KW[impl])[0]
    else:
        loss, want = ntxent_ref(x, y, param)
        f = lambda impl: lambda a, b: api.nt_xent(a, b, jnp.float32(param), impl=impl.split("_")[0], **KW[impl])[0]
    out = {"loss": loss}
    for impl in KW:
        for jit in (False, True) if not impl.startswith("ring") else (True,):  # a ring runs in the jitted step
            g = jax.grad(f(impl), (0, 1))
            out[(impl, jit)] = rel_err((jax.jit(g) if jit else g)(xb, yb), want)
    return out

# (loss, N, D, noise of the positive pair, log_t or tau): losses 1e-4 .. 8e-3.
CASES = [("clip", 7, 257, 0.3, float(np.log(12.0))), ("clip", 33, 64, 0.2, float(np.log(16.0))),
         ("clip", 8, 64, 0.2, float(np.log(16.0))),
         ("ntxent", 7, 64, 0.05, 0.1), ("ntxent", 16, 32, 0.05, 0.1)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-N{c[1]}-D{c[2]}")
def case_errors(request):
    return request.param, errors(request.param)


def test_rows_are_confident(case_errors):
    case, errs = case_errors
    assert errs["loss"] < (1e-3 if case[0] == "clip" or case[1] < 10 else 1e-2)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("impl", ["reference", "pallas", "ring_chunked", "ring_pallas"])
def test_bf16_gradient_within_chunked_error(case_errors, impl, jit):
    _, errs = case_errors
    if (impl, jit) not in errs:
        pytest.skip("not run for this case: rings run under jit, one-device rings only at N=7")
    chunked = errs[("chunked", jit)]
    assert chunked < 0.02, errs
    assert errs[(impl, jit)] <= 1.5 * chunked + 1e-3, errs
