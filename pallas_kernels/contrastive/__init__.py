"""Fused, tiled contrastive losses (CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent)
as Pallas kernels, plus the block primitives a device ring combines.

See `api.py` for the contract; `reference.py` is the plain-jnp ground truth.
"""
from pallas_kernels.contrastive.api import (
    kernel_config,
    nt_xent_loss,
    sigmoid_contrastive_loss,
    sigmoid_pair_row_sums,
    sigmoid_pair_row_sums_backward,
    softmax_contrastive_loss,
    softmax_pair_lse,
    softmax_pair_lse_backward,
)

__all__ = [
    "kernel_config",
    "nt_xent_loss",
    "sigmoid_contrastive_loss",
    "sigmoid_pair_row_sums",
    "sigmoid_pair_row_sums_backward",
    "softmax_contrastive_loss",
    "softmax_pair_lse",
    "softmax_pair_lse_backward",
]
