"""Shared by every kernel family: which Pallas backend runs here, and how a
kernel is launched (`KernelConfig`, block sizes).

`backend` only names the Pallas platform: "triton" / "mosaic_gpu" (NVIDIA),
"mosaic_tpu", "interpret" (any machine, slow; for tests). Which
implementation runs ("reference", "chunked", "pallas", ...) is `impl`, chosen
in each family's `api.py` (see `dispatch.py`).
"""
from __future__ import annotations

import dataclasses
import math

import jax

BACKENDS = ("triton", "mosaic_gpu", "mosaic_tpu", "interpret")
TRITON_MIN_BLOCK = 16  # tl.dot needs every dim >= 16.
TPU_LANES = 128
TPU_SUBLANES = 8


class BackendUnavailableError(RuntimeError):
    """The requested Pallas backend cannot run on this machine's default device."""


def default_platform() -> str:
    """'gpu', 'tpu' or 'cpu' for the default JAX backend."""
    return jax.default_backend()


def resolve_backend(backend: str | None) -> str:
    """Returns a concrete backend name, or raises BackendUnavailableError.

    `None` picks triton on NVIDIA GPUs and mosaic_tpu on TPUs; on CPU only
    `"interpret"` runs, and it must be asked for explicitly (it is slow).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Unknown Pallas backend {backend!r}; expected one of {BACKENDS}.")
    platform = default_platform()
    if backend == "interpret":
        return backend
    wanted = backend or {"gpu": "triton", "tpu": "mosaic_tpu"}.get(platform)
    runs_on = {"triton": "gpu", "mosaic_gpu": "gpu", "mosaic_tpu": "tpu"}
    if wanted is None or runs_on[wanted] != platform:
        raise BackendUnavailableError(
            f"Pallas backend {wanted or 'auto'!r} cannot run on platform {platform!r}; "
            "use backend='interpret' (slow, for tests) or another implementation."
        )
    return wanted


def next_power_of_2(x: int) -> int:
    """Smallest power of two >= x (1 for x <= 1)."""
    return 1 << max(0, (int(x) - 1).bit_length())


def check_positive_int(name: str, value: object) -> int:
    """`value` as a positive int (bools rejected); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def fit_triton_block(name: str, block: int, dim: int) -> int:
    """A Triton block (power of two >= 16, ValueError otherwise) shrunk to `dim`'s power of two."""
    if block < TRITON_MIN_BLOCK or block & (block - 1):
        raise ValueError(f"{name}={block} must be a power of two >= {TRITON_MIN_BLOCK} (Triton).")
    return min(block, max(TRITON_MIN_BLOCK, next_power_of_2(dim)))


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How a family's Pallas kernels run (hashable: a static argument).

    The kernels tile a logit matrix [rows, cols]: contrastive rows of zq by
    rows of zk, linear KD tokens N by vocabulary V.

    Attributes:
      driver: "loop" (Triton / interpret: one program per row block, a
        fori_loop over column blocks) or "grid" (Mosaic TPU: a 2-D grid with
        scratch accumulators).
      interpret: run with `interpret=True` (CPU; slow, for tests).
      block_q: logit rows per program (contrastive: zq rows; linear KD: N).
      block_k: logit columns per inner step (contrastive: zk rows; linear KD: V).
      block_h: chunk of the contracted hidden dim (linear KD only), else None.
      num_warps, num_stages: Triton launch parameters (None: a heuristic).
    """

    driver: str
    interpret: bool
    block_q: int
    block_k: int
    block_h: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    @property
    def vec_lanes(self) -> int:
        """Width W of per-row statistic arrays [rows, W] (lane-replicated on TPU)."""
        return TPU_LANES if self.driver == "grid" else 1

    @property
    def vec_sublanes(self) -> int:
        """Height of per-column statistic arrays [height, cols]."""
        return TPU_SUBLANES if self.driver == "grid" else 1

    @property
    def row_multiple(self) -> int:
        """Operands whose rows are tiled by both blocks are padded to a multiple of this."""
        return math.lcm(self.block_q, self.block_k)

    def padded_dim(self, d: int) -> int:
        """Feature dim after zero padding: 128-multiple on TPU, power of 2 >= 16 on Triton."""
        if self.driver == "grid":
            return -(-d // TPU_LANES) * TPU_LANES
        return max(TRITON_MIN_BLOCK, next_power_of_2(d))
