"""The kernel layer: one folder per kernel family, each with every implementation
(reference, chunked XLA, ring, Pallas) and an `api.py` that chooses by `impl=`.

  contrastive/  CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent
  linear_kd/    fused linear knowledge distillation
  backend.py    Pallas backends, KernelConfig, block sizes (both families)
  dispatch.py   impl choice: the error, or fallback, where Pallas cannot run

Never imports `jaxsup`.
"""
