"""Every loss implementation under jax_enable_x64: runs, and matches the reference (values and gradients).

x64 is a process-wide switch, so the check runs in a subprocess (the other tests keep
the default). Scan carries (argmax indices, counters) must keep their dtype when an
offset from `arange` is int64.
"""
import subprocess
import sys

from helpers import ROOT

CHECK = r'''
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from jax.sharding import Mesh
from pallas_kernels.contrastive import api
from pallas_kernels.linear_kd import api as kd_api

rng = np.random.default_rng(0)
def unit(n, d):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
x, y = unit(8, 16), unit(8, 16)
mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
LOSSES = {
    "softmax": lambda a, b, **k: api.softmax_contrastive(a, b, jnp.float32(2.0), **k)[0],
    "sigmoid": lambda a, b, **k: api.sigmoid_contrastive(a, b, jnp.float32(2.0), jnp.float32(-1.0), **k)[0],
    "nt_xent": lambda a, b, **k: api.nt_xent(a, b, 0.1, **k)[0],
}
IMPLS = {"chunked": dict(tile=4), "pallas": dict(tile=4, backend="interpret"),
         "ring": dict(tile=4, mesh=mesh, block_impl="chunked")}
failures = []
for name, loss in LOSSES.items():
    ref_v, ref_g = jax.value_and_grad(lambda a, b: loss(a, b, impl="reference"), (0, 1))(x, y)
    for impl, kw in IMPLS.items():
        try:
            v, g = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b, impl=impl, **kw), (0, 1)))(x, y)
            np.testing.assert_allclose(v, ref_v, rtol=1e-5, atol=1e-6)
            for got, want in zip(g, ref_g):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        except Exception as err:
            failures.append(f"{name}/{impl}: {type(err).__name__}: {str(err)[:200]}")
z = jnp.asarray(np.stack([unit(6, 8), unit(6, 8), unit(6, 8)]))
try:
    ref = api.cacr(z, impl="reference")[0]
    np.testing.assert_allclose(api.cacr(z, impl="chunked", tile=4)[0], ref, rtol=1e-5)
except Exception as err:
    failures.append(f"cacr/chunked: {type(err).__name__}: {str(err)[:200]}")
h, w, t = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(8, 20)).astype(np.float32), rng.normal(size=(6, 20)).astype(np.float32)
ref = kd_api.fused_linear_kd(h, w, t, 2.0, impl="reference")
for chunking in ("rows", "vocab"):
    try:
        got = kd_api.fused_linear_kd(h, w, t, 2.0, impl="chunked", chunking=chunking, tile=8, row_chunk=4)
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    except Exception as err:
        failures.append(f"fused_linear_kd/{chunking}: {type(err).__name__}: {str(err)[:200]}")
print("FAILURES" if failures else "ALL OK")
print("\n".join(failures))
'''


def test_every_impl_runs_and_matches_under_x64():
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ALL OK" in result.stdout, result.stdout
