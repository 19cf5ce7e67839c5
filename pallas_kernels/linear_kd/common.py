"""Input checks of the KD losses, in one place: logit pairs [N, K], temperature,
divergence kind, and the fused-linear-KD inputs (`check_fused_inputs`, called
once by `api.fused_linear_kd`; the implementations take its `KdLoss`)."""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

KINDS = ("kl", "rkl", "jsd")


class KdLoss(NamedTuple):
    """The divergence of a checked fused-linear-KD call (hashable, static)."""

    temperature: float  # T > 0
    kind: str  # "kl" | "rkl" | "jsd" (resolved: jsd with beta 0 / 1 is kl / rkl)
    beta: float


class RowAux(NamedTuple):
    """Per-row statistics [N] (no gradients): T^2 D_n, CE_n (0 without CE), top-1s."""

    kd: jax.Array
    ce: jax.Array
    student_top1: jax.Array
    teacher_top1: jax.Array


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_temperature(temperature: Any) -> None:
    """Raises ValueError if a concrete temperature is not a finite number > 0."""
    if _is_concrete(temperature):
        value = float(temperature)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"Temperature T must be a finite number > 0, got {temperature!r}.")


def check_unit_interval(name: str, value: Any) -> None:
    """Raises ValueError if a concrete `value` lies outside [0, 1]."""
    if _is_concrete(value) and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def resolve_kind(kind: str, beta: float) -> tuple[str, float]:
    """Validates `kind`/`beta`; maps jsd with beta 0 (1) to "kl" ("rkl")."""
    if kind not in KINDS:
        raise ValueError(f"Unknown divergence kind {kind!r}; expected one of {KINDS}.")
    if kind != "jsd":
        return kind, float(beta)
    if not _is_concrete(beta):
        raise ValueError("beta must be a static Python number for kind='jsd'.")
    check_unit_interval("beta", beta)
    beta = float(beta)
    if beta == 0.0:
        return "kl", beta
    if beta == 1.0:
        return "rkl", beta
    return "jsd", beta


def check_logit_pair(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    names: tuple[str, str] = ("student logits", "teacher logits"),
    shape: str = "[N, K] with the same N and number of classes K",
) -> None:
    """Raises ValueError unless both are 2-D of one shape; `names`, `shape` word the message."""
    s_shape, t_shape = jnp.shape(student_logits), jnp.shape(teacher_logits)
    if len(s_shape) != 2 or s_shape != t_shape:
        raise ValueError(f"{names[0]} {s_shape} and {names[1]} {t_shape} must both be {shape}.")


def _teacher_tuple(teacher: Any, n: int, v: int, student: str) -> tuple[jax.Array, ...]:
    """`(logits [N, V],)` or `(h_t [N, Ht], w_t [Ht, V])`; ValueError naming `student` otherwise."""
    if not isinstance(teacher, (tuple, list)):
        if jnp.shape(teacher) != (n, v):
            raise ValueError(
                f"teacher logits {jnp.shape(teacher)} must be [N, V] = {(n, v)} to match {student}."
            )
        return (teacher,)
    if len(teacher) != 2:
        raise ValueError(f"teacher tuple must be (h_t, W_t), got {len(teacher)} items.")
    h_t, w_t = teacher
    shapes_ok = jnp.ndim(h_t) == 2 and jnp.ndim(w_t) == 2 and h_t.shape[0] == n
    if not shapes_ok or w_t.shape != (h_t.shape[1], v):
        raise ValueError(
            f"teacher h_t {jnp.shape(h_t)} must be [N={n}, Ht] and W_t {jnp.shape(w_t)} "
            f"must be [Ht, V={v}] ({student})."
        )
    return (h_t, w_t)


def check_fused_inputs(
    h_s: jax.Array, w_s: jax.Array, teacher: Any, temperature: Any, kind: str, beta: float
) -> tuple[tuple[jax.Array, ...], KdLoss]:
    """Validates every fused-linear-KD input; returns (teacher tuple, KdLoss).

    Shapes: h_s [N, H], w_s [H, V], teacher logits [N, V] or a tuple
    (h_t [N, Ht], w_t [Ht, V]); T a static number > 0; kind in KINDS (beta in
    [0, 1] for "jsd"). The teacher comes back as `(logits,)` or `(h_t, w_t)`.
    """
    if jnp.ndim(h_s) != 2 or jnp.ndim(w_s) != 2 or h_s.shape[1] != w_s.shape[0]:
        raise ValueError(
            f"h_s {jnp.shape(h_s)} must be [N, H] and W_s {jnp.shape(w_s)} must be [H, V] "
            "with the same H."
        )
    if not _is_concrete(temperature):
        raise ValueError("Temperature T must be a static Python number for fused linear KD.")
    check_temperature(temperature)
    student = f"student h_s {h_s.shape} @ W_s {w_s.shape}"
    teacher = _teacher_tuple(teacher, h_s.shape[0], w_s.shape[1], student)
    return teacher, KdLoss(float(temperature), *resolve_kind(kind, beta))


def check_row_inputs(n: int, labels: Any, kd_weights: Any, ce_weights: Any) -> None:
    """Raises ValueError unless labels (int) and the weights are [N] vectors."""
    named = {"labels": labels, "kd_weights": kd_weights, "ce_weights": ce_weights}
    for name, value in named.items():
        if value is not None and jnp.shape(value) != (n,):
            raise ValueError(f"{name} {jnp.shape(value)} must be [N] = ({n},).")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got {jnp.result_type(labels)}.")
