"""The "loop" driver of the contrastive Pallas kernels: Triton on NVIDIA GPUs (and interpret mode).

grid = (row blocks,). The whole zk operand is passed (a pointer on GPU) and a `lax.fori_loop`
inside the kernel loads one `block_k` slice per step, carrying the running statistics in
registers, as JAX's Triton flash attention does. The kernel bodies are in `pallas_body.py`;
this module holds only what the loop driver does differently: iotas, the column walk, the
BlockSpecs and Triton's launch parameters.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.backend import KernelConfig


class LoopDriver:
    """One program per row block; columns walked by a fori_loop (see the module docstring)."""

    name = "loop"

    @staticmethod
    def local_cell_ids(block_q: int, block_k: int) -> tuple[jax.Array, jax.Array]:
        """Local (row [bq, 1], col [1, bk]) indices: Triton lowers 1-D aranges broadcast to 2-D."""
        return (jnp.arange(block_q, dtype=jnp.int32)[:, None],
                jnp.arange(block_k, dtype=jnp.int32)[None, :])

    @staticmethod
    def walk_columns(geo: Any, init: Callable, step: Callable, load_k: Callable,
                     finish: Callable, scratch: Sequence) -> None:
        """`finish(fori_loop(step(k, carry, *load_k(k))))` over the column blocks; no scratch."""
        del scratch
        body = lambda k_block, carry: step(k_block, carry, *load_k(k_block))
        finish(lax.fori_loop(0, geo.num_k_blocks, body, init()))

    @staticmethod
    def k_slice(geo: Any, k_block) -> Any:
        """The rows of column block `k_block` in the whole zk ref."""
        return pl.ds(pl.multiple_of(k_block * geo.block_k, geo.block_k), geo.block_k)

    @staticmethod
    def scratch(shapes: Sequence[tuple[int, int]]) -> list:
        """The loop carries its statistics in values: no scratch buffers."""
        del shapes
        return []

    def __init__(self, cfg: KernelConfig, geo: Any, n_q_rows: int, n_k_rows: int, dim: int):
        self.cfg, self.geo, self.dim = cfg, geo, dim
        self.grid = (n_q_rows // geo.block_q,)
        self.scalars = [pl.BlockSpec((2,), lambda i: (0,)), pl.BlockSpec((1,), lambda i: (0,))]
        self.rows = lambda width: pl.BlockSpec((geo.block_q, width), lambda i: (i, 0))
        self.cols = lambda height: pl.BlockSpec((height, n_k_rows), lambda i: (0, 0))
        self.zk = lambda zk_shape: pl.BlockSpec(zk_shape, lambda i: (0, 0))

    def call_kwargs(self, scratch_shapes: Sequence) -> dict[str, Any]:
        """Triton launch parameters (none in interpret mode)."""
        del scratch_shapes
        if self.cfg.interpret:
            return {}
        # Unmeasured heuristic: more warps once a tile or the [block_q, D] accumulator gets large.
        big = self.geo.block_q * max(self.geo.block_k, self.dim) >= 128 * 128
        return {"compiler_params": pltriton.CompilerParams(
            num_warps=self.cfg.num_warps or (8 if big else 4), num_stages=self.cfg.num_stages or 2)}
