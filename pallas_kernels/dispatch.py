"""Choosing an implementation by name (`impl=`), with an optional fallback.

Every family's `api.py` runs its implementations through `run_impl`: the
"pallas" one can fail on a backend it does not support (BackendUnavailableError),
which becomes one clear ValueError, or with fallback=True one warning (per
loss name) and the "chunked" implementation.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from pallas_kernels.backend import BackendUnavailableError

log = logging.getLogger("pallas_kernels")

_warned: set[str] = set()


def check_impl(impl: str, allowed: tuple[str, ...]) -> None:
    """Raises ValueError naming `impl` and the choices if it is not allowed."""
    if impl not in allowed:
        raise ValueError(f"Unknown impl {impl!r}; expected one of {allowed}.")


def run_impl(
    name: str, impl: str, impls: Mapping[str, Callable[[], Any]], fallback: bool = False
) -> Any:
    """Calls `impls[impl]()`; on BackendUnavailableError raises or falls back.

    Args:
      name: the loss's name, for messages.
      impl: requested implementation.
      impls: implementation name -> zero-argument thunk computing the loss.
      fallback: if True, a backend error warns once and runs "chunked".
    """
    check_impl(impl, tuple(impls))
    try:
        return impls[impl]()
    except BackendUnavailableError as err:
        if not fallback or "chunked" not in impls:
            raise ValueError(
                f"{name}: impl={impl!r} cannot run here ({err}). "
                "Pass fallback=True to use impl='chunked' instead."
            ) from err
        if name not in _warned:
            _warned.add(name)
            log.warning("%s: impl=%r unavailable (%s); using 'chunked'.", name, impl, err)
        return impls["chunked"]()

