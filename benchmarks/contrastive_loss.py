"""Forward+backward time and XLA scratch memory of the contrastive-loss impls.

    python benchmarks/contrastive_loss.py [--loss softmax sigmoid nt_xent cacr]
        [--impl reference chunked pallas] [--batch 1024 4096 16384] [--dim 256]
        [--tile 512] [--repeats 3] [--dtype bfloat16] [--tflops]

(`cacr`: CACR over the two views, K N = 2B rows like NT-Xent; no "pallas".)
For each loss and batch size B it compiles `jit(value_and_grad(loss))` w.r.t.
both embeddings and the scalars for each impl, reads
`memory_analysis().temp_size_in_bytes`, times the minimum over `--repeats`
runs (wall clock and process CPU time; impls interleaved, after a warm-up)
and prints ratios against "reference". Impls that cannot run on this backend
(e.g. "pallas" on CPU) are skipped with a note. `--tflops` also prints the
achieved TFLOP/s of each run (model FLOPs: the three [B, B, d] matmuls of
forward + backward, 6·n²·d with n = B, or 2B for NT-Xent; recomputation not
counted) and its fraction of the bf16 matmul peak measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsup.losses import contrastive

LOSSES = {
    "softmax": (contrastive.softmax_contrastive, (np.log(10.0),)),
    "sigmoid": (contrastive.sigmoid_contrastive, (np.log(10.0), -10.0)),
    "nt_xent": (contrastive.nt_xent, (0.1,)),
    # CACR over the K = 2 views [z1; z2] (2B rows, as NT-Xent); impl "pallas" does not exist for it.
    "cacr": (lambda z1, z2, *, impl, tile: contrastive.cacr(jnp.stack([z1, z2]), t_neg=2.5, impl=impl, tile=tile), ()),
}


def _grad_fn(loss: str, impl: str, tile: int):
    fn, scalars = LOSSES[loss]
    argnums = tuple(range(2 + len(scalars)))

    def total(*args):
        return fn(*args, impl=impl, tile=tile)[0]

    return jax.jit(jax.value_and_grad(total, argnums=argnums)), scalars


def _inputs(batch: int, dim: int, dtype) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    z1 = jax.random.normal(k1, (batch, dim), jnp.float32)
    z2 = z1 + 0.5 * jax.random.normal(k2, (batch, dim), jnp.float32)
    norm = lambda z: (z / jnp.linalg.norm(z, axis=1, keepdims=True)).astype(dtype)
    return norm(z1), norm(z2)


def compile_impl(loss: str, impl: str, batch: int, dim: int, tile: int, dtype):
    """(compiled fwd+bwd, its arguments, temp bytes), or a string saying why not."""
    f, scalars = _grad_fn(loss, impl, tile)
    z1, z2 = _inputs(batch, dim, dtype)
    args = (z1, z2, *(jnp.float32(s) for s in scalars))
    try:
        compiled = f.lower(*args).compile()
    except ValueError as err:  # e.g. impl="pallas" on a backend it cannot run on
        return f"skipped: {err}"
    return compiled, args, compiled.memory_analysis().temp_size_in_bytes


def time_impls(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """impl -> (min wall seconds, min process CPU seconds) of one fwd+bwd.

    The impls run in turn within each repeat (after one warm-up each), so load
    from other processes on a shared machine hits them alike; CPU time (all
    threads) is the steadier measure when the machine is oversubscribed.
    """
    for compiled, args, _ in runs.values():
        jax.block_until_ready(compiled(*args))
    times = {impl: [] for impl in runs}
    for _ in range(repeats):
        for impl, (compiled, args, _) in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(*args))
            times[impl].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {impl: (min(w for w, _ in t), min(c for _, c in t)) for impl, t in times.items()}


def model_flops(loss: str, batch: int, dim: int) -> float:
    """FLOPs of S = Zi Ztᵀ, dZi = dS Zt and dZt = dSᵀ Zi for one fwd+bwd."""
    n = 2 * batch if loss in ("nt_xent", "cacr") else batch
    return 6.0 * n * n * dim


def matmul_peak_flops(size: int = 8192, repeats: int = 5) -> float:
    """Measured FLOP/s of a [size, size] x [size, size] bf16 matmul (f32 accumulation)."""
    a = jnp.ones((size, size), jnp.bfloat16)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, a))
    best = min(_timed(f, a, a) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(f, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", nargs="+", default=["softmax"], choices=sorted(LOSSES))
    parser.add_argument("--impl", nargs="+", default=["reference", "chunked", "pallas"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tile", type=int, default=contrastive.DEFAULT_TILE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tflops", action="store_true", help="achieved TFLOP/s and fraction of the bf16 matmul peak")
    args = parser.parse_args()
    peak = matmul_peak_flops(2048 if jax.default_backend() == "cpu" else 8192) if args.tflops else None
    if peak:
        print(f"measured bf16 matmul peak: {peak / 1e12:.2f} TFLOP/s")
    dtype = jnp.dtype(args.dtype)
    print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
          f"dim={args.dim} tile={args.tile} dtype={args.dtype} repeats={args.repeats} (min)")
    header = (f"{'loss':8} {'B':>6} {'impl':10} {'wall ms':>9} {'cpu ms':>9} {'temp MiB':>9} "
              f"{'wall/ref':>8} {'cpu/ref':>8} {'mem/ref':>8}")
    print(header)
    print("-" * len(header))
    for loss in args.loss:
        for batch in args.batch:
            runs = {}
            for impl in args.impl:
                result = compile_impl(loss, impl, batch, args.dim, args.tile, dtype)
                if isinstance(result, str):
                    print(f"{loss:8} {batch:6d} {impl:10} {result[:100]}")
                else:
                    runs[impl] = result
            times = time_impls(runs, args.repeats)
            ref = "reference" in runs and (*times["reference"], runs["reference"][2])
            for impl, (wall, cpu) in times.items():
                temp = runs[impl][2]
                ratios = (f"{wall / ref[0]:8.2f} {cpu / ref[1]:8.2f} {temp / max(ref[2], 1):8.4f}"
                          if ref else f"{'-':>8} {'-':>8} {'-':>8}")
                achieved = model_flops(loss, batch, args.dim) / wall
                rate = f" {achieved / 1e12:8.3f} TFLOP/s {achieved / peak:6.1%} of peak" if peak else ""
                print(f"{loss:8} {batch:6d} {impl:10} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} "
                      f"{temp / 2**20:9.1f} {ratios}{rate}", flush=True)


if __name__ == "__main__":
    main()
