"""The contrastive losses; `impl=` chooses the implementation (formulas and choice of impl: docs/kernels.md).

  softmax_contrastive(zimg, ztxt, log_t)     CLIP
  sigmoid_contrastive(zimg, ztxt, log_t, b)  SigLIP
  nt_xent(z1, z2, tau)                       SimCLR NT-Xent over the 2N views
each -> (loss, metrics): an f32 scalar and a small dict of f32 scalars without
gradient. Embeddings are [B, D] (any float dtype; used as given, the caller
L2-normalises); all sums accumulate in float32.

impl (IMPLS):
- "reference": `reference.py`, builds the [B, B] logits; the ground truth.
- "chunked": `lax.scan` over column tiles with an online log-sum-exp and a
  `custom_vjp` whose backward recomputes the tiles (`chunked_xla.py`,
  `blockwise_vjp.py`); peak memory O(B*D + B*tile), metrics from the same scan.
- "pallas": the fused kernels (`pallas_impl.py`) on `backend` (None: Triton on
  NVIDIA GPUs, Mosaic on TPUs; "interpret" on CPU). Metrics come from a
  max-only pass over the chunked tiles (one extra forward matmul, no exp).
  Where the kernels cannot run: a ValueError, or with fallback=True one
  warning and "chunked" (`pallas_kernels.dispatch`).
- "ring": B sharded over axis `axis` of `mesh`; a device ring (`ring.py`)
  whose per-device blocks `block_impl` computes ("chunked" | "pallas", the
  latter on `backend`, with `fallback` as above). Call it in the jitted step.
`tile` is the column tile of the chunked scan and of the metrics' max-only pass.

  cacr(z, *, t_pos, t_neg, alpha, beta, impl, tile)  CACR over K views [K, N, D]
takes impl "reference" | "chunked" (CACR_IMPLS; `cacr_chunked_xla.py`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from pallas_kernels.backend import check_positive_int
from pallas_kernels.contrastive.blockwise_vjp import BLOCKWISE, max_pass_metrics
from pallas_kernels.contrastive.cacr_chunked_xla import cacr_chunked
from pallas_kernels.contrastive.chunked_xla import DEFAULT_TILE
from pallas_kernels.contrastive.common import (
    F32, LOSSES, Metrics, check_inputs, logit_params, nt_xent_reduction_factor,
)
from pallas_kernels.contrastive.reference import REFERENCE
from pallas_kernels.contrastive.reference import cacr as cacr_reference
from pallas_kernels.contrastive.ring import sharded_loss
from pallas_kernels.contrastive import pallas_impl
from pallas_kernels.dispatch import run_impl

IMPLS = ("reference", "chunked", "pallas", "ring")
CACR_IMPLS = ("reference", "chunked")
Scalar = jax.Array | float


def _pallas(loss: str, x, y, scalars: tuple, params: tuple, tile: int, backend: str | None):
    """The fused kernel's loss (given the caller's scalars) and max-pass metrics."""
    value = getattr(pallas_impl, f"{LOSSES[loss].name}_loss")(x, y, *scalars, backend=backend)
    return jnp.asarray(value, F32), max_pass_metrics(loss, x, y, params, tile)


def _run(loss: str, x: jax.Array, y: jax.Array, scalars: tuple[Any, ...], *, impl: str,
         tile: int, fallback: bool, backend: str | None, mesh: Mesh | None, axis: str,
         block_impl: str) -> tuple[jax.Array, Metrics]:
    """Validates the inputs of `LOSSES[loss]` and runs `impl` (see the module docstring)."""
    name = LOSSES[loss].name
    tile, f32_scalars = check_inputs(loss, x, y, scalars, tile)
    params = logit_params(loss, f32_scalars)
    ring = dict(mesh=mesh, axis=axis, tile=tile, block_impl=block_impl, backend=backend,
                fallback=fallback, name=name)
    return run_impl(name, impl, {
        "reference": lambda: REFERENCE[loss](x, y, *f32_scalars, precision=None),
        "chunked": lambda: BLOCKWISE[loss](x, y, *params, tile),
        "pallas": lambda: _pallas(loss, x, y, scalars, params, tile, backend),
        "ring": lambda: sharded_loss(loss, x, y, f32_scalars, **ring),
    }, fallback)


def softmax_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: Scalar, *, impl: str = "reference",
    tile: int = DEFAULT_TILE, fallback: bool = False, backend: str | None = None,
    mesh: Mesh | None = None, axis: str = "data", block_impl: str = "chunked",
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric cross-entropy of logits `exp(log_t) * zimg @ ztxt.T`.

    Args:
      zimg, ztxt: [B, D] image and text embeddings (row i of each is a pair).
      log_t: scalar log temperature-scale (learnable; clip it in the model).
      impl, tile, fallback, backend, mesh, axis, block_impl: module docstring.
    Returns:
      (loss f32 [], metrics: mean_positive_logit, img2txt_top1, txt2img_top1).
    """
    return _run("softmax", zimg, ztxt, (log_t,), impl=impl, tile=tile, fallback=fallback,
                backend=backend, mesh=mesh, axis=axis, block_impl=block_impl)


def sigmoid_contrastive(
    zimg: jax.Array, ztxt: jax.Array, log_t: Scalar, b: Scalar, *, impl: str = "reference",
    tile: int = DEFAULT_TILE, fallback: bool = False, backend: str | None = None,
    mesh: Mesh | None = None, axis: str = "data", block_impl: str = "chunked",
) -> tuple[jax.Array, Metrics]:
    """SigLIP `-(1/B) sum_ij log sigmoid(y_ij (exp(log_t) zimg_i.ztxt_j + b))`,
    y = +1 on the diagonal, -1 elsewhere.

    Args:
      zimg, ztxt: [B, D] embeddings; log_t, b: scalar log-scale and bias.
      impl, tile, fallback, backend, mesh, axis, block_impl: module docstring.
    Returns:
      (loss f32 [], metrics: mean_positive_logit, mean_negative_logit (nan if
      B == 1), img2txt_top1), logits including the bias.
    """
    return _run("sigmoid", zimg, ztxt, (log_t, b), impl=impl, tile=tile, fallback=fallback,
                backend=backend, mesh=mesh, axis=axis, block_impl=block_impl)


def nt_xent(
    z1: jax.Array, z2: jax.Array, tau: Scalar, *, impl: str = "reference",
    tile: int = DEFAULT_TILE, fallback: bool = False, backend: str | None = None,
    mesh: Mesh | None = None, axis: str = "data", block_impl: str = "chunked",
    reduction: str = "mean",
) -> tuple[jax.Array, Metrics]:
    """SimCLR NT-Xent over the 2N views [z1; z2] with logits `z_k.z_j / tau`:
    `mean_k -log(exp(s_k,twin) / sum_{j != k} exp(s_kj))`.

    Convention: with reduction="mean" (the default) this is exactly half of
    official SimCLR's loss (`loss_a + loss_b`, the mean CE of z1's N rows plus
    that of z2's), gradients too; reduction="simclr" returns that official sum,
    so SimCLR's learning rates and weight decay port unchanged.

    Args:
      z1, z2: [N, D] two views (row i of each is a positive pair).
      tau: scalar temperature (float or array; differentiable).
      impl, tile, fallback, backend, mesh, axis, block_impl: module docstring.
      reduction: "mean" | "simclr" (`common.NT_XENT_REDUCTIONS`).
    Returns:
      (loss f32 [], metrics: mean_positive_logit, top1 (argmax over j != k is the twin)).
    """
    factor = nt_xent_reduction_factor(reduction)
    loss, metrics = _run("nt_xent", z1, z2, (tau,), impl=impl, tile=tile, fallback=fallback,
                         backend=backend, mesh=mesh, axis=axis, block_impl=block_impl)
    return factor * loss, metrics


def cacr(
    z: jax.Array, *, t_pos: float = 1.0, t_neg: float = 1.0, alpha: float = 1.0, beta: float = 1.0,
    impl: str = "reference", tile: int = DEFAULT_TILE,
) -> tuple[jax.Array, Metrics]:
    """CACR (contrastive attraction + contrastive repulsion, Zheng et al.) over K views.

    Attraction: each view pulls the other K - 1 views of its image with cost
    `alpha ||z_a - z_p||^2`, weighted `softmax_p(t_pos ||z_a - z_p||^2)`.
    Repulsion: each view pushes the views of the other images with cost
    `-beta ||z_a - z_n||^2`, weighted `softmax_n(-t_neg ||z_a - z_n||^2)`.
    Both weightings are differentiated. InfoNCE's uniform treatment is the
    limit t_pos, t_neg -> 0 of the weights.

    Args:
      z: [K, N, D] float, K >= 2 views of N >= 2 images (L2-normalised by the caller).
      t_pos, t_neg, alpha, beta: python floats (static), t >= 0.
      impl: "reference" (the [KN, KN] matrix) or "chunked" (memory O(KN * (D + tile))).
    Returns:
      (loss f32 [], metrics without gradient: attraction, repulsion,
      positive_sqdist, negative_sqdist (the weighted mean)).
    """
    shape = jnp.shape(z)
    if len(shape) != 3 or shape[0] < 2 or shape[1] < 2 or shape[2] < 1:
        raise ValueError(f"cacr: z must be [K, N, D] with K >= 2 views and N >= 2 images, got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(z), jnp.floating):
        raise ValueError(f"cacr: z must be floating, got {jnp.result_type(z)}.")
    if min(t_pos, t_neg) < 0:
        raise ValueError(f"cacr: temperatures must be >= 0, got t_pos={t_pos}, t_neg={t_neg}.")
    tile = check_positive_int("cacr: tile", tile)
    params = (float(t_pos), float(t_neg), float(alpha), float(beta))
    return run_impl("cacr", impl, {
        "reference": lambda: cacr_reference(z, *params, precision=None),
        "chunked": lambda: cacr_chunked(z, *params, tile),
    })
