"""Contrastive losses (CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent), every
implementation in one place; `api.py` chooses among them (`impl=`).

  reference.py          plain jnp over the full logits: the ground truth
  tile_math.py          per-tile math: online statistics (XLA) and kernel tile families
  chunked_xla.py        XLA chunked: lax.scan over column tiles (block math `ScanBlocks`)
  cacr_chunked_xla.py   CACR's repulsion over column tiles (custom_vjp; weights differentiated)
  blockwise_vjp.py      custom_vjp losses over a sweep of blocks (chunked and ring)
  ring.py               device ring: shard_map + ppermute over one mesh axis (XLA or Pallas blocks)
  pallas_body.py        Pallas kernel bodies: row-reduction forward, row-gradient backward
  pallas_triton.py      their "loop" driver: Triton on NVIDIA GPUs (and interpret mode)
  pallas_mosaic_tpu.py  their "grid" driver: Mosaic on TPUs
  pallas_vjp.py         the kernels as differentiable padded block primitives (custom_vjp)
  pallas_impl.py        impl="pallas": the losses and ring block primitives (backend, blocks)
  common.py             the three losses' static facts and input checks
  api.py                softmax_contrastive, sigmoid_contrastive, nt_xent, cacr
README.md: the formulas, the memory model and which impl to pick when.
"""
from pallas_kernels.contrastive.api import IMPLS, cacr, nt_xent, sigmoid_contrastive, softmax_contrastive
from pallas_kernels.contrastive.chunked_xla import DEFAULT_TILE

__all__ = ["DEFAULT_TILE", "IMPLS", "cacr", "nt_xent", "sigmoid_contrastive", "softmax_contrastive"]
