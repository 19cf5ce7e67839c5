"""Contrastive losses: CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent (formulas: docs/kernels.md).

The public entry points tasks call; each is `pallas_kernels.contrastive.api`'s
(the kernel family keeps every implementation: reference, chunked, ring,
Pallas). Each takes embeddings [B, D] and returns `(loss, metrics)`; `impl=`
in CONTRASTIVE_IMPLS picks the implementation:

  softmax_contrastive(zimg, ztxt, log_t, *, impl, tile, fallback, backend, mesh, axis, block_impl)
  sigmoid_contrastive(zimg, ztxt, log_t, b, *, same)
  nt_xent(z1, z2, tau, *, same, reduction)  reduction "mean" (default) is exactly half of
                                           official SimCLR's loss; "simclr" is SimCLR's sum
  cacr(z, *, t_pos, t_neg, alpha, beta, impl, tile)  CACR over K views z [K, N, D]
                                                      (impl in CACR_IMPLS)

impl="ring" runs over a batch sharded on mesh axis `axis` of `mesh` (a device
ring; `block_impl` "chunked" | "pallas" computes each device's blocks).
"""
from __future__ import annotations

from pallas_kernels.contrastive.api import CACR_IMPLS, cacr, nt_xent, sigmoid_contrastive, softmax_contrastive
from pallas_kernels.contrastive.api import IMPLS as CONTRASTIVE_IMPLS
from pallas_kernels.contrastive.chunked_xla import DEFAULT_TILE
from pallas_kernels.contrastive.common import NT_XENT_REDUCTIONS

__all__ = ["CACR_IMPLS", "CONTRASTIVE_IMPLS", "cacr", "DEFAULT_TILE", "NT_XENT_REDUCTIONS", "nt_xent", "sigmoid_contrastive",
           "softmax_contrastive"]
