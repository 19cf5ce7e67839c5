"""Fused linear knowledge distillation (KD through the output head without [N, V]
logits), every implementation in one place; `api.py` chooses among them (`impl=`).

  reference.py          plain jnp over the full logits: the ground truth (and the
                        per-example divergences of the logits-level KD losses)
  tile_math.py          per-tile math (online LSEs, divergence and gradient tiles)
  chunked_xla.py        XLA chunked: lax.scan over V tiles + custom_vjp (four GEMMs)
  rows_chunked_xla.py   XLA chunked over row chunks, loss and gradients in one pass
                        (three GEMMs, Liger-style); also the KD + label-CE form
  pallas_triton.py      Pallas kernels, Triton-lowered (interpret on CPU): forward, dh, dW
  pallas_impl.py        impl="pallas": the Pallas loss (backend, blocks, padding)
  common.py             input checks (logit pairs, temperature, kind, fused inputs)
  api.py                fused_linear_kd, fused_linear_kd_ce (chunking per shape)
No ring: the head's W_s [H, V] is replicated or model-sharded by the caller's jit.
README.md: the formulas, the memory model and which impl to pick when.
"""
from pallas_kernels.linear_kd.api import IMPLS, fused_linear_kd
from pallas_kernels.linear_kd.chunked_xla import DEFAULT_TILE

__all__ = ["DEFAULT_TILE", "IMPLS", "fused_linear_kd"]
