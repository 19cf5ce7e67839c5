"""Sparse KD from stored teacher top-k logits: `T^2 KL(p || q)` exact on what is kept.

A stored teacher target per example is its k largest logits `t` [k] (already
divided by nothing: raw logits), their class indices [k], and `lse_rest`, the
logsumexp of the other V - k logits *divided by T* (jaxsup.data.reinforce
stores it at the temperature it was run with; -inf when k = V). With
`L = logaddexp(logsumexp(t / T), lse_rest)` the teacher's distribution over
the k kept classes plus one "rest" bucket is

    p_i = exp(t_i / T - L),        p_rest = exp(lse_rest - L)

(exactly the full softmax's masses), and the student's over the same k + 1
outcomes is `q_i = softmax(s / T)[idx_i]`, `q_rest = 1 - sum_i q_i` (from the
logsumexp of its non-kept logits, so no cancellation). The loss is the KL of
these (k + 1)-outcome distributions times T^2; with k = V it is the full-logit
`jaxsup.losses.distill.kd_kl`. Mean over examples (weighted if `weights` [B]).
The teacher side is a constant. Targets are made by
`jaxsup.data.host.reinforce_store.topk_targets`. The same losses from the
student's features and head, without [B, V] logits: `jaxsup.losses.topk_kd_fused`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsup.losses.distill import _weighted_mean


def check_targets(b: int, v: int, topk_logits: Any, topk_indices: Any, lse_rest: Any) -> None:
    """ValueError unless topk_logits / topk_indices are [B, k] with k <= V and lse_rest is [B]."""
    if jnp.ndim(topk_logits) != 2 or jnp.shape(topk_logits) != jnp.shape(topk_indices) or topk_logits.shape[0] != b:
        raise ValueError(f"topk_logits {jnp.shape(topk_logits)} and topk_indices {jnp.shape(topk_indices)} must "
                         f"both be [B, k] with B = {b}.")
    if jnp.shape(lse_rest) != (b,):
        raise ValueError(f"lse_rest {jnp.shape(lse_rest)} must be [B] = ({b},).")
    if topk_logits.shape[1] > v:
        raise ValueError(f"k = {topk_logits.shape[1]} kept classes exceed the student's V = {v}.")


def teacher_buckets(topk_logits: jax.Array, lse_rest: jax.Array, t: jax.Array):
    """(log p [B, k], log p_rest [B], has_rest [B]) of the teacher's k + 1 outcomes (module doc), constants;
    log p_rest = 0 where there is no rest (lse_rest = -inf)."""
    teacher = jax.lax.stop_gradient(topk_logits.astype(jnp.float32)) / t
    rest = jax.lax.stop_gradient(jnp.asarray(lse_rest, jnp.float32))
    total = jnp.logaddexp(jax.nn.logsumexp(teacher, axis=-1), rest)
    has_rest = rest > -jnp.inf
    return teacher - total[:, None], jnp.where(has_rest, rest - total, 0.0), has_rest


def _buckets(student_logits, topk_logits, topk_indices, lse_rest, temperature):
    """(log p [B, k], log q [B, k], log p_rest [B], log q_rest [B], has_rest [B], T) of the (k + 1)-outcome
    teacher and student distributions (module doc); log p_rest = log q_rest = 0 where there is no rest."""
    b, v = jnp.shape(student_logits)
    check_targets(b, v, topk_logits, topk_indices, lse_rest)
    t = jnp.asarray(temperature, jnp.float32)
    log_p, log_p_rest, has_rest = teacher_buckets(topk_logits, lse_rest, t)

    s = student_logits.astype(jnp.float32) / t
    s_total = jax.nn.logsumexp(s, axis=-1)
    log_q = jnp.take_along_axis(s, topk_indices.astype(jnp.int32), axis=-1) - s_total[:, None]
    kept = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], topk_indices].set(True)
    # rows with no rest bucket get finite dummy logits (their term is masked out): no NaN gradient
    s_rest = jnp.where(kept, -jnp.inf, s)
    s_rest = jnp.where(has_rest[:, None], s_rest, 0.0)
    log_q_rest = jnp.where(has_rest, jax.nn.logsumexp(s_rest, axis=-1) - s_total, 0.0)
    return log_p, log_q, log_p_rest, log_q_rest, has_rest, t


def kl_rows(log_p, log_q, log_p_rest, log_q_rest, has_rest) -> jax.Array:
    """KL [B] of the (k + 1)-outcome distributions (no T^2), from `_buckets`'s first five."""
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return kl + jnp.where(has_rest, jnp.exp(log_p_rest) * (log_p_rest - log_q_rest), 0.0)


def soft_ce_rows(log_p, log_q, log_p_rest, log_q_rest, has_rest) -> jax.Array:
    """`-sum p log q` [B] over the k + 1 outcomes, from `_buckets`'s first five."""
    return -jnp.sum(jnp.exp(log_p) * log_q, axis=-1) - jnp.where(has_rest, jnp.exp(log_p_rest) * log_q_rest, 0.0)


def topk_kd_rows(
    student_logits: jax.Array,
    topk_logits: jax.Array,
    topk_indices: jax.Array,
    lse_rest: jax.Array,
    temperature: Any,
) -> jax.Array:
    """Per-example `T^2 KL` [B]; student_logits [B, V], topk_logits / topk_indices [B, k], lse_rest [B]."""
    *buckets, t = _buckets(student_logits, topk_logits, topk_indices, lse_rest, temperature)
    return t * t * kl_rows(*buckets)


def topk_soft_ce(
    student_logits: jax.Array,
    topk_logits: jax.Array,
    topk_indices: jax.Array,
    lse_rest: jax.Array,
    temperature: Any,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """SimCLRv2's `-sum p log q` (no T^2) over the k kept classes + the rest bucket, mean over B.

    At k = V: `jaxsup.losses.distill.soft_ce(s / T, softmax(t / T))`.
    """
    *buckets, _ = _buckets(student_logits, topk_logits, topk_indices, lse_rest, temperature)
    return _weighted_mean(soft_ce_rows(*buckets), weights)


def topk_kd_kl(
    student_logits: jax.Array,
    topk_logits: jax.Array,
    topk_indices: jax.Array,
    lse_rest: jax.Array,
    temperature: Any,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """`T^2 KL(teacher || student)` over the k kept classes + the rest bucket, mean over B (see module doc)."""
    rows = topk_kd_rows(student_logits, topk_logits, topk_indices, lse_rest, temperature)
    return _weighted_mean(rows, weights)

