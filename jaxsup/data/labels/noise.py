"""Synthetic label noise, deterministic per example: a pure function of (seed, example index).

Transition matrix T (row: clean label y, column: observed label), noise rate e, K classes:
  "symmetric"  T[y, y] = 1 - e,  T[y, j] = e / (K - 1) for j != y   (Han et al. 2018)
  "pair"       T[y, y] = 1 - e,  T[y, (y + 1) mod K] = e            (pair flip)

Example i draws u_i ~ U[0, 1) and o_i ~ U{1, ..., K-1} from key fold_in(key(seed), i);
it is flipped iff u_i < e, to (y + o_i) mod K (symmetric) or (y + 1) mod K (pair). The same
example keeps the same noisy label in every epoch, in every batch, on every host.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("symmetric", "pair")


def _draws(index: jax.Array, num_classes: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """(u [B] in [0, 1), offset [B] in 1..K-1) of examples `index` [B]."""
    def one(i):
        k_flip, k_to = jax.random.split(jax.random.fold_in(jax.random.key(seed), i))
        return jax.random.uniform(k_flip), jax.random.randint(k_to, (), 1, max(num_classes, 2))
    return jax.vmap(one)(index)


def noisy_labels(labels: jax.Array, index: jax.Array, num_classes: int, rate: float, kind: str = "symmetric",
                 seed: int = 0) -> jax.Array:
    """labels [B] int, index [B] (position in the split) -> observed labels [B] (same dtype)."""
    if kind not in KINDS:
        raise ValueError(f"label noise kind {kind!r} is not one of {KINDS}")
    if rate == 0.0:
        return labels
    u, offset = _draws(index, num_classes, seed)
    step = offset if kind == "symmetric" else jnp.ones_like(offset)
    flipped = (labels + step.astype(labels.dtype)) % num_classes
    return jnp.where(u < rate, flipped, labels)


def transition_matrix(num_classes: int, rate: float, kind: str = "symmetric") -> np.ndarray:
    """T [K, K] of the module docstring (rows sum to 1)."""
    eye = np.eye(num_classes)
    if kind == "symmetric":
        return (1 - rate) * eye + rate / (num_classes - 1) * (1 - eye)
    return (1 - rate) * eye + rate * np.roll(eye, 1, axis=1)
