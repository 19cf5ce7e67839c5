"""Ground truth of the KD losses: plain jnp over full [N, V] logits.

Definitions are in `tile_math.py`'s docstring. The teacher is treated as a
constant (`stop_gradient`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.linear_kd import common
from pallas_kernels.linear_kd.common import KdLoss, RowAux


def divergence_rows(student_logits: jax.Array, teacher_logits: jax.Array, temperature: Any,
                    kind: str, beta: float) -> jax.Array:
    """`kd_divergence_rows` without the checks: kind already resolved."""
    temperature = jnp.asarray(temperature, jnp.float32)
    lq = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
    lp = jax.nn.log_softmax(teacher / temperature, axis=-1)
    if kind == "kl":
        rows = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    elif kind == "rkl":
        rows = jnp.sum(jnp.exp(lq) * (lq - lp), axis=-1)
    else:
        lm = jnp.logaddexp(lp + jnp.log(beta), lq + jnp.log1p(-beta))
        kl_p_m = jnp.sum(jnp.exp(lp) * (lp - lm), axis=-1)
        kl_q_m = jnp.sum(jnp.exp(lq) * (lq - lm), axis=-1)
        rows = (beta * kl_p_m + (1.0 - beta) * kl_q_m) / (beta * (1.0 - beta))
    return temperature**2 * rows


def kd_divergence_rows(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: Any, kind: str = "kl",
    beta: float = 0.5,
) -> jax.Array:
    """Per-example `T^2 * D(student, teacher)` [N] f32 for logits [N, K].

    kind: "kl" = KL(teacher || student), "rkl" = KL(student || teacher),
    "jsd" = normalised generalized JSD(beta) (beta 0 -> kl, 1 -> rkl).
    A traced temperature is allowed here (not in the fused losses).
    """
    common.check_logit_pair(student_logits, teacher_logits)
    common.check_temperature(temperature)
    kind, beta = common.resolve_kind(kind, beta)
    return divergence_rows(student_logits, teacher_logits, temperature, kind, beta)


def teacher_logits_of(teacher: tuple[jax.Array, ...]) -> jax.Array:
    """[N, V] f32 teacher logits from `(logits,)` or `(h_t, W_t)`, gradient-stopped."""
    if len(teacher) == 1:
        logits = teacher[0].astype(jnp.float32)
    else:
        h_t, w_t = teacher
        logits = jnp.dot(h_t, w_t, preferred_element_type=jnp.float32)
    return jax.lax.stop_gradient(logits)


def fused_linear_kd_reference(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss
) -> jax.Array:
    """Mean over N of `T^2 * D` with student logits `h_s @ W_s` [N, V], f32 scalar.

    h_s [N, H], w_s [H, V]; teacher `(logits [N, V],)` or `(h_t [N, Ht], W_t [Ht, V])`
    and `loss` as `common.check_fused_inputs` returns them.
    """
    student_logits = jnp.dot(h_s, w_s, preferred_element_type=jnp.float32)
    return jnp.mean(divergence_rows(student_logits, teacher_logits_of(teacher), *loss))


def fused_linear_kd_ce_reference(
    h_s: jax.Array, w_s: jax.Array, teacher: tuple[jax.Array, ...], loss: KdLoss,
    labels: jax.Array, kd_weights: jax.Array, ce_weights: jax.Array | None,
):
    """`sum_n kd_w[n] T^2 D_n + ce_w[n] CE_n` over full [N, V] logits, and the per-row
    statistics (`RowAux`, without gradients)."""
    logits = jnp.dot(h_s, w_s, preferred_element_type=jnp.float32)
    t_logits = teacher_logits_of(teacher)
    kd = divergence_rows(logits, t_logits, *loss)
    total = jnp.sum(jnp.asarray(kd_weights, jnp.float32) * kd)
    ce = jnp.zeros_like(kd)
    if ce_weights is not None:
        log_q = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.take_along_axis(log_q, jnp.asarray(labels, jnp.int32)[:, None], axis=1)[:, 0]
        total = total + jnp.sum(jnp.asarray(ce_weights, jnp.float32) * ce)
    aux = RowAux(kd, ce, jnp.argmax(logits, -1).astype(jnp.int32), jnp.argmax(t_logits, -1).astype(jnp.int32))
    return total, jax.tree.map(jax.lax.stop_gradient, aux)
