"""Fused linear KD: fwd+bwd time and XLA temp memory of each impl vs the reference.

    python benchmarks/fused_linear_kd.py                      # N=8192 H=1024 V=131072
    python benchmarks/fused_linear_kd.py --n 1024 --v 32768 --impls reference,chunked

Memory is `compile().memory_analysis().temp_size_in_bytes` of the jitted
`value_and_grad` w.r.t. (h_s, W_s); it needs no allocation, so it is always
reported at the requested size. Time is the median of `--iters` runs after a
warm-up. On CPU the timed run uses N scaled down to `--cpu_n` (the full size
would need ~25 GB and minutes per step there); the printout says so.
Targets: chunked temp memory <= 1/10 of the reference, time <= 1.0x.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxsup.losses.fused_linear_kd import DEFAULT_TILE, fused_linear_kd


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192, help="rows (tokens)")
    parser.add_argument("--h", type=int, default=1024, help="student hidden size")
    parser.add_argument("--v", type=int, default=131072, help="vocabulary size")
    parser.add_argument("--ht", type=int, default=0, help="teacher hidden size (0: teacher logits)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="V tile of 'chunked'")
    parser.add_argument("--impls", default="reference,chunked,pallas")
    parser.add_argument("--kind", default="kl", choices=["kl", "rkl", "jsd"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--cpu_n", type=int, default=512, help="N of the timed run on CPU")
    parser.add_argument("--memory_only", action="store_true", help="compile only, no timing")
    return parser.parse_args()


def make_structs(n: int, h: int, v: int, ht: int, dtype) -> tuple:
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    teacher = s(n, v) if ht == 0 else (s(n, ht), s(ht, v))
    return s(n, h), s(h, v), teacher


def make_step(impl: str, args: argparse.Namespace):
    """Jitted value_and_grad of the loss w.r.t. (h_s, W_s)."""
    def loss(h_s, w_s, teacher):
        return fused_linear_kd(h_s, w_s, teacher, 2.0, kind=args.kind, impl=impl, tile=args.tile)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def temp_mib(impl: str, structs: tuple, args) -> float | str:
    try:
        compiled = make_step(impl, args).lower(*structs).compile()
    except ValueError as err:  # e.g. impl="pallas" where no kernel backend runs
        return f"n/a: {str(err).split('(')[0].strip()}"
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def random_inputs(structs: tuple, seed: int = 0):
    keys = iter(jax.random.split(jax.random.key(seed), 4))
    return jax.tree.map(
        lambda s: (jax.random.normal(next(keys), s.shape) * 0.5).astype(s.dtype), structs
    )


def time_ms(impl: str, inputs: tuple, args) -> float | str:
    step = make_step(impl, args)
    try:
        jax.block_until_ready(step(*inputs))
    except ValueError as err:
        return f"n/a: {str(err).split('(')[0].strip()}"
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        jax.block_until_ready(step(*inputs))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ratio(value, ref) -> str:
    if isinstance(value, str) or isinstance(ref, str):
        return "-"
    return f"{value / ref:.3f}x"


def fmt(value) -> str:
    return value if isinstance(value, str) else f"{value:,.1f}"


def print_table(title: str, column: str, results: dict) -> None:
    ref = results.get("reference", "n/a")
    print(f"\n{title}")
    print(f"| impl | {column} | vs reference |")
    print("|---|---:|---:|")
    for impl, value in results.items():
        print(f"| {impl} | {fmt(value)} | {ratio(value, ref)} |")


def main() -> None:
    args = parse_args()
    impls = args.impls.split(",")
    dtype = jnp.dtype(args.dtype)
    platform = jax.default_backend()
    print(f"device: {jax.devices()[0].device_kind} ({platform}); jax {jax.__version__}")
    teacher = "logits [N,V]" if args.ht == 0 else f"hidden (Ht={args.ht})"
    print(f"kind={args.kind} dtype={args.dtype} tile={args.tile} teacher={teacher}")

    full = make_structs(args.n, args.h, args.v, args.ht, dtype)
    print_table(
        f"XLA temp memory, fwd+bwd, compile only: N={args.n} H={args.h} V={args.v}",
        "temp MiB", {impl: temp_mib(impl, full, args) for impl in impls},
    )
    if args.memory_only:
        return
    n = args.n
    if platform == "cpu" and args.cpu_n < n:
        n = args.cpu_n
        print(f"\nNOTE: CPU timing run uses N={n} instead of {args.n} (scaled down to fit and "
              "finish in minutes); memory above is at the full size.")
    structs = make_structs(n, args.h, args.v, args.ht, dtype)
    inputs = random_inputs(structs)
    if n != args.n:
        print_table(f"XLA temp memory at the timed size N={n}", "temp MiB",
                    {impl: temp_mib(impl, structs, args) for impl in impls})
    print_table(
        f"fwd+bwd time, median of {args.iters}: N={n} H={args.h} V={args.v}",
        "ms", {impl: time_ms(impl, inputs, args) for impl in impls},
    )
    print("\ntargets: chunked memory <= 0.1x reference, time <= 1.0x reference")


if __name__ == "__main__":
    main()
