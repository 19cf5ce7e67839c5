"""Contrastive losses (CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent), every
implementation in one place; `api.py` chooses among them (`impl=`).

  reference.py    plain jnp over the full logits: the ground truth
  tiles.py        per-tile math: online statistics (XLA) and kernel tile families
  chunked_xla.py  lax.scan over column tiles (block math `ScanBlocks`)
  cacr_xla.py     CACR's repulsion over column tiles (custom_vjp; weights differentiated)
  blockwise.py    custom_vjp losses over a sweep of blocks (chunked and ring)
  ring.py         device ring: shard_map + ppermute over one mesh axis
  kernels.py      Pallas kernels (Triton / interpret loop, Mosaic TPU grid)
  primitives.py   the kernels as differentiable padded block primitives
  pallas_ops.py   the Pallas losses and ring block primitives (backend, blocks)
  common.py       the three losses' static facts and input checks
  api.py          softmax_contrastive, sigmoid_contrastive, nt_xent, cacr
"""
from pallas_kernels.contrastive.api import IMPLS, cacr, nt_xent, sigmoid_contrastive, softmax_contrastive
from pallas_kernels.contrastive.chunked_xla import DEFAULT_TILE

__all__ = ["DEFAULT_TILE", "IMPLS", "cacr", "nt_xent", "sigmoid_contrastive", "softmax_contrastive"]
