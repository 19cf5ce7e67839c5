"""Ground truth of the KD losses: plain jnp over full [N, V] logits.

Definitions are in `tiles.py`'s docstring. The teacher is treated as a
constant (`stop_gradient`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.linear_kd import common
from pallas_kernels.linear_kd.common import KdLoss


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
