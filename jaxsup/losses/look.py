"""LOOK: leave-one-out k-nearest-neighbour supervision (Feng et al. 2022) over a feature memory.

f [B, D] unit-norm query features, memory M [N, D] (unit rows, gradient-stopped) with labels
y_M [N] and a validity mask v [N] (filled rows); s_ij = f_i . M_j / tau.
For query i (its own memory row idx_i excluded: leave-one-out), N_k(i) = the k valid rows of
largest s_ij. Then
  loss_i = logsumexp_{j in N_k(i)} s_ij - logsumexp_{j in N_k(i), y_j = y_i} s_ij
i.e. -log of the share of its k nearest neighbours' (softmax-weighted) vote that its own
label gets; a class may keep several modes as long as each image's neighbours agree. Rows
with no same-label neighbour among the k get no loss (`has_positive` = 0).
update_memory: M[idx_i] <- normalise(momentum * M[idx_i] + (1 - momentum) * f_i) (or f_i on
a row's first write), y_M[idx_i] <- y_i, v[idx_i] <- 1, only for rows with write_mask_i = 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -1e30


def look_loss(features: jax.Array, labels: jax.Array, index: jax.Array, memory: jax.Array, mem_labels: jax.Array,
              valid: jax.Array, k: int, tau: float) -> tuple[jax.Array, jax.Array]:
    """features [B, D] (unit), labels [B], index [B] (own memory row) -> (loss [B], has_positive [B] f32)."""
    memory, mem_labels, valid = jnp.asarray(memory), jnp.asarray(mem_labels), jnp.asarray(valid)
    sims = features.astype(jnp.float32) @ jax.lax.stop_gradient(memory).astype(jnp.float32).T / tau  # [B, N]
    own = jnp.arange(memory.shape[0])[None, :] == index[:, None]
    usable = (valid[None, :] > 0) & ~own
    masked = jnp.where(usable, sims, NEG)
    _, nbr = jax.lax.top_k(jax.lax.stop_gradient(masked), k)  # [B, k]
    nbr_sims = jnp.take_along_axis(masked, nbr, axis=1)
    real = jnp.take_along_axis(usable, nbr, axis=1)
    positive = real & (mem_labels[nbr] == labels[:, None])
    has_positive = positive.any(axis=1)
    all_lse = jax.nn.logsumexp(jnp.where(real, nbr_sims, NEG), axis=1)
    pos_lse = jax.nn.logsumexp(jnp.where(positive, nbr_sims, NEG), axis=1)
    loss = jnp.where(has_positive, all_lse - pos_lse, 0.0)
    return loss, has_positive.astype(jnp.float32)


def update_memory(memory: jax.Array, mem_labels: jax.Array, valid: jax.Array, features: jax.Array,
                  labels: jax.Array, index: jax.Array, write: jax.Array, momentum: float
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(memory [N, D], mem_labels [N], valid [N]) with rows `index` [B] written where write [B] = 1."""
    memory, mem_labels, valid = jnp.asarray(memory), jnp.asarray(mem_labels), jnp.asarray(valid)
    features = jax.lax.stop_gradient(features).astype(memory.dtype)
    old = memory[index]
    mixed = jnp.where(valid[index][:, None] > 0, momentum * old + (1.0 - momentum) * features, features)
    mixed = mixed / jnp.maximum(jnp.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    w = write > 0
    memory = memory.at[index].set(jnp.where(w[:, None], mixed, old))
    mem_labels = mem_labels.at[index].set(jnp.where(w, labels, mem_labels[index]))
    valid = valid.at[index].set(jnp.where(w, 1.0, valid[index]))
    return memory, mem_labels, valid
