"""Position embeddings for another resolution or patch grid.

    resample_posemb(posemb [1, g*g, D], (h, w)) -> [1, h*w, D]

Bilinear over the square g x g grid with half-pixel centres (align_corners=False, no
antialiasing: torch.nn.functional.interpolate(mode="bilinear")'s convention; tests compare
with it). jaxsup's ViT keeps the class token's embedding apart (`cls`), so only patch
positions are resampled.
"""
from __future__ import annotations

import math

import numpy as np

from jaxsup.errors import CheckpointError


def _weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear interpolation matrix, half-pixel centres, edges clamped."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centres - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - frac
    w[np.arange(n_out), hi] += frac
    return w


def square_grid(tokens: int, where: str) -> int:
    """Side of a square grid of `tokens` positions; CheckpointError if it is not square."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{where}: {tokens} positions are not a square patch grid; cannot resample.")
    return side


def resample_posemb(posemb: np.ndarray, grid: tuple[int, int], where: str = "pos_embedding") -> np.ndarray:
    """[1, g*g, D] learned patch position embeddings -> [1, grid[0]*grid[1], D] (float32)."""
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise CheckpointError(f"{where}: expected position embeddings [1, N, D], got {posemb.shape}.")
    side = square_grid(posemb.shape[1], where)
    table = posemb[0].astype(np.float32).reshape(side, side, -1)
    rows, cols = _weights(side, grid[0]), _weights(side, grid[1])
    out = np.einsum("hi,ijd,wj->hwd", rows, table, cols)
    return out.reshape(1, grid[0] * grid[1], -1).astype(np.float32)
