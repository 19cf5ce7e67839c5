"""Trilateral-geometry KD (TGeo-KD, Hu et al., ICLR 2024): a learned per-sample fusion ratio.

Per example i the student minimises

    L_i(theta, phi) = alpha_i * T^2 KL(p_t^T || p_s^T) + (1 - alpha_i) * CE(p_s, y_i),
    alpha_i = sigmoid(g_phi(Delta_i))

where g_phi is a small network and Delta_i the geometry of the example in the
probability simplex (`trilateral_features`): the edges of the triangle student
S, teacher T, ground truth G (intra-sample) and of the triangle S, T, T-bar with
T-bar the teacher's mean prediction over the training examples of class y_i
(inter-sample), each edge as its difference vector and its L2 length.

Training (`bilevel_losses`): phi minimises the student's CE on held-out
validation rows after one virtual SGD step of the student on the train rows
(the one-step unrolled approximation of the bilevel problem, as in DARTS /
learning-to-reweight):

    theta' = theta - eta * grad_theta mean_train L_i(theta, phi)
    phi    <- grad_phi mean_val CE(f_theta'(x), y)          (second order through theta')
    theta  <- grad_theta mean_train L_i(theta, phi)          (phi held fixed)

Both gradients come from one scalar (`loss_train(theta, sg(phi)) + loss_val(theta'(sg(theta), phi))`),
so one optimizer step updates student and ratio network together.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

NUM_EDGES = 5  # S-T, T-G, S-G (intra-sample), T-Tbar, S-Tbar (inter-sample)


def trilateral_features(student_probs: jax.Array, teacher_probs: jax.Array, labels: jax.Array,
                        class_means: jax.Array) -> jax.Array:
    """Geometry of each example: [B, K] x2, labels [B], class_means [K, K] -> [B, 5 (K + 1)].

    Edges (S - T, T - G, S - G, T - Tbar_y, S - Tbar_y) as difference vectors
    [B, K] each, followed by their five L2 lengths [B]. Gradient-stopped: the
    ratio network reads the geometry, it does not move the predictions.
    """
    s = student_probs.astype(jnp.float32)
    t = teacher_probs.astype(jnp.float32)
    g = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.float32)
    t_bar = class_means.astype(jnp.float32)[labels]
    edges = [s - t, t - g, s - g, t - t_bar, s - t_bar]
    lengths = [jnp.sqrt(jnp.sum(e * e, axis=-1, keepdims=True) + 1e-12) for e in edges]
    return jax.lax.stop_gradient(jnp.concatenate(edges + lengths, axis=-1))


def fused_kd_rows(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, alpha: jax.Array,
                  temperature: float) -> jax.Array:
    """[B]: alpha * T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y); alpha [B] or scalar."""
    s = student_logits.astype(jnp.float32)
    t = teacher_logits.astype(jnp.float32)
    log_p_t = jax.nn.log_softmax(t / temperature)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s / temperature)), axis=-1)
    ce = optax.softmax_cross_entropy_with_integer_labels(s, labels)
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce


def _masked_mean(rows: jax.Array, mask: jax.Array) -> jax.Array:
    """sum(rows * mask) / max(sum(mask), 1); rows, mask [B]."""
    return jnp.sum(rows * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def bilevel_losses(
    student_logits_fn: Callable[[Any, jax.Array], jax.Array],
    ratio_fn: Callable[[Any, jax.Array], jax.Array],
    student_params: Any,
    ratio_params: Any,
    images: jax.Array,
    labels: jax.Array,
    teacher_logits: jax.Array,
    class_means: jax.Array,
    train_mask: jax.Array,
    val_mask: jax.Array,
    temperature: float,
    inner_lr: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The one scalar whose gradient is (student: train loss, ratio net: one-step val loss); see the module doc.

    student_logits_fn(params, images) -> logits [B, K]; ratio_fn(params, features [B, F]) -> alpha [B] in (0, 1).
    images [B, ...], labels [B], teacher_logits [B, K], class_means [K, K] (teacher class-mean
    probabilities), train_mask / val_mask [B] in {0, 1} (disjoint rows).
    Returns (loss, {"train_loss", "val_loss", "alpha" [B]}).
    """
    teacher_probs = jax.nn.softmax(teacher_logits.astype(jnp.float32))

    def train_loss(theta, phi):
        logits = student_logits_fn(theta, images)
        feats = trilateral_features(jax.nn.softmax(logits.astype(jnp.float32)), teacher_probs, labels, class_means)
        alpha = ratio_fn(phi, feats)
        return _masked_mean(fused_kd_rows(logits, teacher_logits, labels, alpha, temperature), train_mask), alpha

    def val_loss_after_step(phi):
        theta = jax.lax.stop_gradient(student_params)
        grads = jax.grad(lambda th: train_loss(th, phi)[0])(theta)
        theta_next = jax.tree.map(lambda p, g: p - inner_lr * g, theta, grads)
        logits = student_logits_fn(theta_next, images)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return _masked_mean(ce, val_mask)

    student_loss, alpha = train_loss(student_params, jax.lax.stop_gradient(ratio_params))
    val_loss = val_loss_after_step(ratio_params)
    return student_loss + val_loss, {"train_loss": student_loss, "val_loss": val_loss, "alpha": alpha}
