"""Fused linear knowledge distillation (KD through the output head without [N, V]
logits), every implementation in one place; `api.py` chooses among them (`impl=`).

  reference.py    plain jnp over the full logits: the ground truth (and the
                  per-example divergences of the logits-level KD losses)
  tiles.py        per-tile math (online LSEs, divergence and gradient tiles)
  chunked_xla.py  lax.scan over V tiles + custom_vjp (four GEMMs)
  rows_xla.py     lax.scan over row chunks, loss and gradients in one pass
                  (three GEMMs, Liger-style); also the KD + label-CE form
  kernels.py      Pallas kernels (Triton / interpret): forward, dh, dW
  pallas_ops.py   the Pallas loss (backend, blocks, padding)
  common.py       input checks (logit pairs, temperature, kind, fused inputs)
  api.py          fused_linear_kd, fused_linear_kd_ce (chunking per shape)
"""
from pallas_kernels.linear_kd.api import IMPLS, fused_linear_kd
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE

__all__ = ["DEFAULT_TILE", "IMPLS", "fused_linear_kd"]
