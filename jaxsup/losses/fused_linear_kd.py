"""Fused linear knowledge distillation: KD through the output head without [N, V] logits.

`fused_linear_kd(h_s, W_s, teacher, T)` equals
`kd_loss(h_s @ W_s, teacher_logits, T)` (mean over N of `T^2 * D`, see
`jaxsup.losses.distill`), where the teacher is given as logits [N, V] or as
its own hidden states and head `(h_t [N, Ht], W_t [Ht, V])`.

Implementations (`impl=`):
- "reference": builds the [N, V] logits and calls `distill.kd_loss`.
- "chunked": pure JAX. Pass 1 scans over V tiles keeping online log-sum-exps
  of both distributions (and, for KL / reverse KL, the running expectation
  that gives the loss value); "jsd" adds a value pass. The backward pass
  rescans the tiles, recomputes the logits tile and writes gradient tiles:
  `dh += dZ W_tile^T`, `dW[:, tile] = h^T dZ`. Peak memory is
  O(N * tile + N * H + H * V) (the last for dW); no [N, V] array exists.
  W tiles are sliced inside the scan (`lax.dynamic_slice_in_dim`); V need not
  be a multiple of `tile` (the last tile is shifted left and its already-seen
  columns masked).
- "pallas": `pallas_kernels.distill` kernels (Triton on GPU); on a machine
  where they cannot run, a ValueError, or with `fallback=True` a warning and
  "chunked".
Gradients flow to h_s and W_s only; the teacher gets zero gradients.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsup.losses import distill
from jaxsup.losses.dispatch import run_impl
from pallas_kernels.distill import api as pallas_distill
from pallas_kernels.distill import common
from pallas_kernels.distill.reference import teacher_logits_of

DEFAULT_TILE = 4096


def _tile_start_and_mask(index: jax.Array, tile: int, vocab: int) -> tuple[jax.Array, jax.Array]:
    """Start column of tile `index` (clamped to fit in V) and its new-column mask [1, tile]."""
    nominal = index * tile
    start = jnp.minimum(nominal, vocab - tile)
    valid = (start + jnp.arange(tile)) >= nominal
    return start, valid[None, :]


def _sliced_tile(x: jax.Array, start: jax.Array, tile: int) -> jax.Array:
    """Columns [start, start + tile) of x [R, V].

    On CPU, 16-bit floats are sliced as uint16 bit patterns: XLA:CPU's float
    normalisation otherwise widens the bf16 dynamic-slice to f32 and hoists an
    f32 copy of the whole operand out of the loop (seen: +4.5 GiB temp for
    bf16 teacher logits at N=8192, V=131072; with the bitcast, +2 GiB).
    """
    is_16bit_float = x.dtype.itemsize == 2 and jnp.issubdtype(x.dtype, jnp.floating)
    if not is_16bit_float or jax.default_backend() != "cpu":
        return lax.dynamic_slice_in_dim(x, start, tile, axis=1)
    bits = lax.bitcast_convert_type(x, jnp.uint16)
    return lax.bitcast_convert_type(lax.dynamic_slice_in_dim(bits, start, tile, axis=1), x.dtype)


def _scaled_logit_tiles(
    h_s: jax.Array, w_tile: jax.Array, teacher: tuple[jax.Array, ...], start: jax.Array,
    tile: int, inv_temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """Student and teacher logits / T for one column tile, each [N, tile] f32."""
    s = jnp.dot(h_s, w_tile, preferred_element_type=jnp.float32) * inv_temperature
    if len(teacher) == 1:
        t = _sliced_tile(teacher[0], start, tile).astype(jnp.float32)
    else:
        h_t, w_t = teacher
        t = jnp.dot(h_t, _sliced_tile(w_t, start, tile), preferred_element_type=jnp.float32)
    return s, lax.stop_gradient(t * inv_temperature)


def _scan_tiles(body, init, h_s, w_s, teacher, tile, inv_temperature):
    """Runs `body(carry, start, valid, w_tile, s, t) -> carry` over all V tiles."""
    vocab = w_s.shape[1]

    def step(carry, index):
        start, valid = _tile_start_and_mask(index, tile, vocab)
        w_tile = _sliced_tile(w_s, start, tile)
        s, t = _scaled_logit_tiles(h_s, w_tile, teacher, start, tile, inv_temperature)
        return body(carry, start, valid, w_tile, s, t), None

    carry, _ = lax.scan(step, init, jnp.arange(-(-vocab // tile)))
    return carry


def _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile):
    """Row statistics: (lse_s, lse_t, row divergence, row scalar c), each [N] f32."""
    inv_t = 1.0 / temperature

    def stats_body(stats, start, valid, w_tile, s, t):
        return common.online_stats_update(stats, s, t, valid, kind)

    init = common.online_stats_init(h_s.shape[0])
    stats = _scan_tiles(stats_body, init, h_s, w_s, teacher, tile, inv_t)
    lse_s, lse_t, rows = common.online_stats_finalize(stats, kind)
    if kind == "kl":
        return lse_s, lse_t, rows, jnp.zeros_like(rows)
    if kind == "rkl":
        return lse_s, lse_t, rows, rows

    def jsd_body(acc, start, valid, w_tile, s, t):
        div, kl_q_m = common.jsd_tile_terms(s, t, lse_s, lse_t, beta)
        return (
            acc[0] + jnp.sum(jnp.where(valid, div, 0.0), axis=1),
            acc[1] + jnp.sum(jnp.where(valid, kl_q_m, 0.0), axis=1),
        )

    zeros = jnp.zeros_like(lse_s)
    rows, row_c = _scan_tiles(jsd_body, (zeros, zeros), h_s, w_s, teacher, tile, inv_t)
    return lse_s, lse_t, rows, row_c


def _chunked_grads(h_s, w_s, teacher, residual_rows, row_scale, temperature, kind, beta, tile):
    """(dh [N, H] f32, dW [H, V] f32) with dZ = row_scale * dD/ds, tile by tile."""
    lse_s, lse_t, row_c = residual_rows
    vocab = w_s.shape[1]

    def grad_body(carry, start, valid, w_tile, s, t):
        dh, dw = carry
        ds = common.student_grad_tile(s, t, lse_s, lse_t, row_c, kind, beta)
        dz = jnp.where(valid, ds, 0.0) * row_scale[:, None]
        dh = dh + lax.dot_general(
            dz.astype(w_s.dtype), w_tile, (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        dw_tile = lax.dot_general(
            h_s, dz.astype(h_s.dtype), (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        old = lax.dynamic_slice_in_dim(dw, start, tile, axis=1)
        dw = lax.dynamic_update_slice_in_dim(dw, jnp.where(valid, dw_tile, old), start, axis=1)
        return dh, dw

    init = (
        jnp.zeros(h_s.shape, jnp.float32),
        jnp.zeros((h_s.shape[1], vocab), jnp.float32),
    )
    return _scan_tiles(grad_body, init, h_s, w_s, teacher, tile, 1.0 / temperature)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _chunked_loss(h_s, w_s, teacher, temperature, kind, beta, tile):
    _, _, rows, _ = _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile)
    return temperature**2 * jnp.mean(rows)


def _chunked_loss_fwd(h_s, w_s, teacher, temperature, kind, beta, tile):
    lse_s, lse_t, rows, row_c = _chunked_rows(h_s, w_s, teacher, temperature, kind, beta, tile)
    loss = temperature**2 * jnp.mean(rows)
    return loss, (h_s, w_s, teacher, (lse_s, lse_t, row_c))


def _chunked_loss_bwd(temperature, kind, beta, tile, residuals, g):
    h_s, w_s, teacher, rows = residuals
    # d(T^2 mean_n D_n)/dz = (T / N) dD/ds, since s = z / T.
    row_scale = jnp.full((h_s.shape[0],), g * temperature / h_s.shape[0], jnp.float32)
    dh, dw = _chunked_grads(h_s, w_s, teacher, rows, row_scale, temperature, kind, beta, tile)
    zeros = jax.tree.map(jnp.zeros_like, teacher)
    return dh.astype(h_s.dtype), dw.astype(w_s.dtype), zeros


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)


def fused_linear_kd_chunked(
    h_s: jax.Array,
    w_s: jax.Array,
    teacher: Any,
    temperature: float,
    *,
    kind: str = "kl",
    beta: float = 0.5,
    tile: int = DEFAULT_TILE,
) -> jax.Array:
    """The "chunked" implementation (see module docstring); f32 scalar."""
    teacher = common.check_fused_inputs(h_s, w_s, teacher, temperature)
    kind, beta = common.resolve_kind(kind, beta)
    if not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"tile must be a positive int, got {tile!r}.")
    tile = min(tile, w_s.shape[1])
    return _chunked_loss(h_s, w_s, teacher, float(temperature), kind, beta, tile)


def fused_linear_kd(
    h_s: jax.Array,
    w_s: jax.Array,
    teacher: Any,
    temperature: float,
    *,
    kind: str = "kl",
    beta: float = 0.5,
    impl: str = "reference",
    tile: int = DEFAULT_TILE,
    fallback: bool = False,
    backend: str | None = None,
) -> jax.Array:
    """Mean over N of `T^2 * D(softmax(teacher/T), softmax(h_s @ W_s / T))`, f32 scalar.

    Args:
      h_s: student hidden states [N, H]; w_s: student head [H, V].
      teacher: teacher logits [N, V], or a tuple (h_t [N, Ht], W_t [Ht, V]).
      temperature: static Python number > 0.
      kind: "kl" (forward), "rkl" (reverse), "jsd" (normalised, `beta` in [0, 1]).
      impl: "reference" | "chunked" | "pallas".
      tile: V tile of "chunked" (any size; V need not be a multiple).
      fallback: for impl="pallas", run "chunked" (with a warning) where the
        kernel cannot run instead of raising ValueError.
      backend: Pallas backend for impl="pallas" (None = auto; "interpret" on CPU).
    """
    checked_teacher = common.check_fused_inputs(h_s, w_s, teacher, temperature)
    common.resolve_kind(kind, beta)

    def reference() -> jax.Array:
        logits = jnp.dot(h_s, w_s, preferred_element_type=jnp.float32)
        return distill.kd_loss(logits, teacher_logits_of(checked_teacher), temperature, kind, beta)

    return run_impl(
        "fused_linear_kd",
        impl,
        {
            "reference": reference,
            "chunked": lambda: fused_linear_kd_chunked(
                h_s, w_s, teacher, temperature, kind=kind, beta=beta, tile=tile
            ),
            "pallas": lambda: pallas_distill.fused_linear_kd_loss(
                h_s, w_s, teacher, temperature, kind=kind, beta=beta, backend=backend
            ),
        },
        fallback=fallback,
    )
