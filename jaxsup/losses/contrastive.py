"""Contrastive losses: CLIP softmax, SigLIP sigmoid, SimCLR NT-Xent (DESIGN.md §3).

Each loss takes embeddings [B, D] (any float dtype; used as given, the caller
L2-normalises) and returns `(loss, metrics)`: an f32 scalar and a small dict of
f32 scalars without gradient. `impl=` picks the implementation:

- "reference": builds the [B, B] logits; the ground truth.
- "chunked": `lax.scan` over column tiles with an online log-sum-exp and a
  `custom_vjp` whose backward recomputes the tiles (contrastive_chunked.py);
  peak memory O(B*D + B*tile), metrics computed inside the same scan.
- "pallas": `pallas_kernels.contrastive.api` (fused kernels). Its metrics are
  computed under stop_gradient by a max-only pass over the chunked tiles (one
  extra forward matmul, no exp); they are diagnostics and carry no gradient. Where the
  kernels cannot run, a clear ValueError, or with fallback=True a warning and
  "chunked".

All sums are accumulated in float32. Over a batch sharded across devices use
`jaxsup.losses.distributed`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsup.losses import contrastive_chunked as ck
from jaxsup.losses.dispatch import run_impl
from pallas_kernels.backend import BackendUnavailableError

F32 = jnp.float32

# Column tile of the chunked path (and of each block on a device ring). On CPU
# (2 cores, d=256, f32, fwd+bwd) the CPU time is flat across tiles 256..1024
# (B=4096: 320 ms for each; B=16384: 5.66-5.73 s; tile 128 is 10% slower
# there), while the scratch memory grows with the tile (B=16384: 64 / 97 /
# 161 MiB for 256 / 512 / 1024, vs ~4 GiB for the reference). 512 keeps that
# below 1/40 of the reference and gives accelerators, where XLA runs this path
# when Pallas cannot, matmuls wide enough. See benchmarks/contrastive_loss.py.
DEFAULT_TILE = 512

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------- validation


def check_embeddings(name: str, x: Any, y: Any, x_name: str, y_name: str) -> None:
    """Raises ValueError unless x and y are float arrays of one shape [B, D], B, D >= 1."""
    for arg, arg_name in ((x, x_name), (y, y_name)):
        shape = jnp.shape(arg)
        if len(shape) != 2:
            raise ValueError(f"{name}: {arg_name} must be 2-D [B, D], got shape {shape}.")
        if not jnp.issubdtype(jnp.result_type(arg), jnp.floating):
            raise ValueError(f"{name}: {arg_name} must be floating, got {jnp.result_type(arg)}.")
        if 0 in shape:
            raise ValueError(f"{name}: {arg_name} must be non-empty, got shape {shape}.")
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(
            f"{name}: {x_name} {jnp.shape(x)} and {y_name} {jnp.shape(y)} must have the "
            "same [B, D] shape."
        )


def scalar_f32(name: str, value: Any, value_name: str) -> jax.Array:
    """A scalar (or size-1) parameter as an f32 [] array; ValueError otherwise."""
    if jnp.size(value) != 1:
        raise ValueError(f"{name}: {value_name} must be a scalar, got shape {jnp.shape(value)}.")
    return jnp.reshape(jnp.asarray(value), ()).astype(F32)


def check_tile(name: str, tile: Any) -> int:
    """The tile as a positive int; ValueError otherwise."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"{name}: tile must be a positive int, got {tile!r}.")
    return tile


def pallas_api():
    """The Pallas contrastive API module; BackendUnavailableError if it is absent."""
    try:
        from pallas_kernels.contrastive import api
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("pallas_kernels.contrastive"):
            raise
        raise BackendUnavailableError("pallas_kernels.contrastive.api is not available") from err
    return api


def _stopped(*xs):
    return [lax.stop_gradient(x) for x in xs]


# ------------------------------------------------------------- CLIP softmax


def _softmax_reference(zimg, ztxt, scale) -> tuple[jax.Array, Metrics]:
    logits = scale * jnp.dot(zimg, ztxt.T, preferred_element_type=F32)
    labels = jnp.arange(logits.shape[0])
    ce = optax.softmax_cross_entropy_with_integer_labels
    loss = 0.5 * (jnp.mean(ce(logits, labels)) + jnp.mean(ce(logits.T, labels)))
    logits = lax.stop_gradient(logits)
    metrics = {
        "mean_positive_logit": jnp.mean(jnp.diagonal(logits)),
        "img2txt_top1": jnp.mean((jnp.argmax(logits, 1) == labels).astype(F32)),
        "txt2img_top1": jnp.mean((jnp.argmax(logits, 0) == labels).astype(F32)),
    }
    return loss, metrics


def softmax_contrastive(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_t: jax.Array | float,
    *,
    impl: str = "reference",
    tile: int = DEFAULT_TILE,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric cross-entropy of logits `exp(log_t) * zimg @ ztxt.T`.

    Args:
      zimg, ztxt: [B, D] image and text embeddings (row i of each is a pair).
      log_t: scalar log temperature-scale (learnable; clip it in the model).
      impl: "reference" | "chunked" | "pallas"; tile: column tile (chunked).
      fallback: if impl="pallas" cannot run, warn and use "chunked".
    Returns:
      (loss f32 [], metrics: mean_positive_logit, img2txt_top1, txt2img_top1).
    """
    name = "softmax_contrastive"
    check_embeddings(name, zimg, ztxt, "zimg", "ztxt")
    tile = check_tile(name, tile)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))

    def pallas():
        loss = pallas_api().softmax_contrastive_loss(zimg, ztxt, log_t)
        a, c, s = _stopped(zimg, ztxt, scale)
        metrics = ck.softmax_metrics(a, c, s, *ck.argmax_pass(a, c, s, tile, "clip", True))
        return jnp.asarray(loss, F32), metrics

    return run_impl(name, impl, {
        "reference": lambda: _softmax_reference(zimg, ztxt, scale),
        "chunked": lambda: ck.softmax_contrastive(zimg, ztxt, scale, tile),
        "pallas": pallas,
    }, fallback)


# ------------------------------------------------------------ SigLIP sigmoid


def _sigmoid_reference(zimg, ztxt, scale, bias) -> tuple[jax.Array, Metrics]:
    n = zimg.shape[0]
    logits = scale * jnp.dot(zimg, ztxt.T, preferred_element_type=F32) + bias
    eye = jnp.eye(n, dtype=bool)
    labels = jnp.where(eye, 1.0, -1.0)
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n
    logits = lax.stop_gradient(logits)
    metrics = {
        "mean_positive_logit": jnp.mean(jnp.diagonal(logits)),
        "mean_negative_logit": jnp.sum(jnp.where(eye, 0.0, logits)) / (n * (n - 1)),
        "img2txt_top1": jnp.mean((jnp.argmax(logits, 1) == jnp.arange(n)).astype(F32)),
    }
    return loss, metrics


def sigmoid_contrastive(
    zimg: jax.Array,
    ztxt: jax.Array,
    log_t: jax.Array | float,
    b: jax.Array | float,
    *,
    impl: str = "reference",
    tile: int = DEFAULT_TILE,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """SigLIP `-(1/B) sum_ij log sigmoid(y_ij (exp(log_t) zimg_i.ztxt_j + b))`,
    y = +1 on the diagonal, -1 elsewhere.

    Args:
      zimg, ztxt: [B, D] embeddings; log_t, b: scalar log-scale and bias.
      impl, tile, fallback: as in `softmax_contrastive`.
    Returns:
      (loss f32 [], metrics: mean_positive_logit, mean_negative_logit (nan if
      B == 1), img2txt_top1), logits including the bias.
    """
    name = "sigmoid_contrastive"
    check_embeddings(name, zimg, ztxt, "zimg", "ztxt")
    tile = check_tile(name, tile)
    scale = jnp.exp(scalar_f32(name, log_t, "log_t"))
    bias = scalar_f32(name, b, "b")

    def pallas():
        loss = pallas_api().sigmoid_contrastive_loss(zimg, ztxt, log_t, b)
        a, c, s, bb = _stopped(zimg, ztxt, scale, bias)
        row_argmax, _ = ck.argmax_pass(a, c, s, tile, "clip", False)
        return jnp.asarray(loss, F32), ck.sigmoid_metrics(a, c, s, bb, row_argmax)

    return run_impl(name, impl, {
        "reference": lambda: _sigmoid_reference(zimg, ztxt, scale, bias),
        "chunked": lambda: ck.sigmoid_contrastive(zimg, ztxt, scale, bias, tile),
        "pallas": pallas,
    }, fallback)


# ------------------------------------------------------------ SimCLR NT-Xent


def _nt_xent_reference(z1, z2, scale) -> tuple[jax.Array, Metrics]:
    n = z1.shape[0]
    z = jnp.concatenate([z1, z2])
    twin = (jnp.arange(2 * n) + n) % (2 * n)
    logits = scale * jnp.dot(z, z.T, preferred_element_type=F32)
    not_self = ~jnp.eye(z.shape[0], dtype=bool)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, twin, where=not_self))
    logits = lax.stop_gradient(jnp.where(not_self, logits, -jnp.inf))
    metrics = {
        "mean_positive_logit": jnp.mean(logits[jnp.arange(z.shape[0]), twin]),
        "top1": jnp.mean((jnp.argmax(logits, 1) == twin).astype(F32)),
    }
    return loss, metrics


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    tau: jax.Array | float,
    *,
    impl: str = "reference",
    tile: int = DEFAULT_TILE,
    fallback: bool = False,
) -> tuple[jax.Array, Metrics]:
    """SimCLR NT-Xent over the 2N views [z1; z2] with logits `z_k.z_j / tau`:
    `mean_k -log(exp(s_k,twin) / sum_{j != k} exp(s_kj))`.

    Args:
      z1, z2: [N, D] two views (row i of each is a positive pair).
      tau: scalar temperature (float or array; differentiable).
      impl, tile, fallback: as in `softmax_contrastive`.
    Returns:
      (loss f32 [], metrics: mean_positive_logit, top1 (argmax over j != k is the twin)).
    """
    name = "nt_xent"
    check_embeddings(name, z1, z2, "z1", "z2")
    tile = check_tile(name, tile)
    scale = 1.0 / scalar_f32(name, tau, "tau")

    def pallas():
        loss = pallas_api().nt_xent_loss(z1, z2, tau)
        z, s = _stopped(ck.nt_xent_views(z1, z2), scale)
        row_argmax, _ = ck.argmax_pass(z, z, s, tile, "nt_xent", False)
        return jnp.asarray(loss, F32), ck.nt_xent_metrics(z, s, row_argmax)

    return run_impl(name, impl, {
        "reference": lambda: _nt_xent_reference(z1, z2, scale),
        "chunked": lambda: ck.nt_xent(z1, z2, scale, tile),
        "pallas": pallas,
    }, fallback)
