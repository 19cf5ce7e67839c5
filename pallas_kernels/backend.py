"""Which Pallas backend can run here: triton / mosaic_gpu (NVIDIA), mosaic_tpu, interpret."""
from __future__ import annotations

import jax

BACKENDS = ("triton", "mosaic_gpu", "mosaic_tpu", "interpret")


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
