"""The "grid" driver of the contrastive Pallas kernels: Mosaic on TPUs.

grid = (row blocks, column blocks) with the column axis "arbitrary"; BlockSpecs bring one zk
tile into VMEM per step and the running statistics live in VMEM scratch, initialised at the
first column block and written out at the last (the TPU flash-attention pattern). Block shapes
obey the (8, 128) tiling: D is padded to 128 lanes, row statistics are [rows, 128]
lane-replicated, column statistics [8, cols]. The kernel bodies are in `pallas_body.py`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.backend import KernelConfig


class GridDriver:
    """One program per (row block, column block); statistics in VMEM scratch."""

    name = "grid"

    @staticmethod
    def local_cell_ids(block_q: int, block_k: int) -> tuple[jax.Array, jax.Array]:
        """Local (row, col) indices [bq, bk]: Mosaic wants full-shape iotas."""
        shape = (block_q, block_k)
        return lax.broadcasted_iota(jnp.int32, shape, 0), lax.broadcasted_iota(jnp.int32, shape, 1)

    @staticmethod
    def walk_columns(geo: Any, init: Callable, step: Callable, load_k: Callable,
                     finish: Callable, scratch: Sequence) -> None:
        """One `step` per program along grid axis 1, the carry kept in the `scratch` refs."""
        k_block = pl.program_id(1)

        @pl.when(k_block == 0)
        def _init():
            for ref, value in zip(scratch, init()):
                ref[...] = value

        carry = step(k_block, tuple(ref[...] for ref in scratch), *load_k(None))
        for ref, value in zip(scratch, carry):
            ref[...] = value

        @pl.when(k_block == geo.num_k_blocks - 1)
        def _finish():
            finish(tuple(ref[...] for ref in scratch))

    @staticmethod
    def k_slice(geo: Any, k_block) -> Any:
        """The BlockSpec already brought this column block: take all of it."""
        del geo, k_block
        return slice(None)

    @staticmethod
    def scratch(shapes: Sequence[tuple[int, int]]) -> list:
        """f32 VMEM buffers holding the running statistics across column steps."""
        return [pltpu.VMEM(shape, jnp.float32) for shape in shapes]

    def __init__(self, cfg: KernelConfig, geo: Any, n_q_rows: int, n_k_rows: int, dim: int):
        del n_k_rows, dim
        self.cfg, self.geo = cfg, geo
        self.grid = (n_q_rows // geo.block_q, geo.num_k_blocks)
        smem = pl.BlockSpec(memory_space=pltpu.SMEM)
        self.scalars = [smem, smem]
        self.rows = lambda width: pl.BlockSpec((geo.block_q, width), lambda i, k: (i, 0))
        self.cols = lambda height: pl.BlockSpec((height, geo.block_k), lambda i, k: (0, k))
        self.zk = lambda zk_shape: pl.BlockSpec((geo.block_k, zk_shape[1]), lambda i, k: (k, 0))

    def call_kwargs(self, scratch_shapes: Sequence) -> dict[str, Any]:
        """Scratch buffers, and the grid's dimension semantics on a real TPU."""
        kwargs: dict[str, Any] = {"scratch_shapes": scratch_shapes}
        if not self.cfg.interpret:
            kwargs["compiler_params"] = pltpu.CompilerParams(
                dimension_semantics=(pltpu.PARALLEL, pltpu.ARBITRARY))
        return kwargs
