"""GradCache: a contrastive loss over a batch too large for one backward pass.

A contrastive loss couples the examples of a batch (each example's negatives
are the others), so the usual gradient accumulation, which averages the
gradients of k independent micro-batch losses, optimises a different objective:
each example only sees the B/k - 1 negatives of its micro-batch. GradCache
(Gao et al., 2021) computes the full-batch gradient exactly with the activation
memory of one micro-batch:

  1. embeddings of the whole batch, micro-batch by micro-batch, without
     keeping any tower activations (a `lax.scan` outside autodiff);
  2. the loss on the full batch of embeddings and its gradient with respect to
     the embeddings (cheap: [B, E]);
  3. per micro-batch, the towers' forward again under `jax.vjp`, pulled back
     with that micro-batch's cached embedding gradient; the parameter gradients
     are summed.

The price is a second forward pass of the towers. `cached_contrastive_loss` is
an ordinary differentiable function (a `jax.custom_vjp`): use it inside
`jax.grad` / `jax.value_and_grad` like the loss it wraps.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxsup.microbatch import split_micro_batches

F32 = jnp.float32
# embed_fn(params, micro_batch) or embed_fn(params, micro_batch, rng) -> pytree of [b, ...]
EmbedFn = Callable[..., Any]
# loss_fn(params, embeddings) -> (loss scalar, metrics dict)
LossFn = Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `jaxsup.microbatch.split_micro_batches`: [k, B/k, ...] -> [B, ...], row j*k + i = [i, j]."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def _batch_size(batch: Any, k: int) -> int:
    leaves = jax.tree.leaves(batch)
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if not leaves or len(sizes) != 1 or None in sizes:
        shapes = jax.tree.map(jnp.shape, batch)
        raise ValueError(f"cached_contrastive_loss: batch leaves need one leading batch dim; got shapes {shapes}.")
    size = sizes.pop()
    if size % k:
        raise ValueError(f"cached_contrastive_loss: num_micro_batches={k} does not divide the batch size {size}.")
    return size


def _check_embeddings(embeddings: Any, micro_size: int) -> None:
    bad = [e.shape for e in jax.tree.leaves(embeddings) if not e.shape or e.shape[0] != micro_size]
    if bad:
        raise ValueError(
            f"cached_contrastive_loss: embed_fn must return arrays [b, ...] with b = {micro_size} rows "
            f"(the micro-batch); got shapes {bad}."
        )


def cached_contrastive_loss(
    embed_fn: EmbedFn,
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    num_micro_batches: int,
    *,
    rng: jax.Array | None = None,
    micro_batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_fn(params, embed_fn(params, batch))`, with the towers run k micro-batches at a time.

    Value and gradient equal the full-batch ones (up to f32 summation order);
    peak activation memory is that of one micro-batch of `embed_fn`.

    Args:
      embed_fn: `(params, micro_batch) -> embeddings`, a pytree of [b, ...] arrays
        (e.g. {"zimg": [b, E], "ztxt": [b, E]}); with `rng`, called as
        `(params, micro_batch, rng_i)`, rng_i = fold_in(rng, i) for micro-batch i
        (the same key in the forward and the recomputation).
      loss_fn: `(params, embeddings of the whole batch [B, ...]) -> (loss, metrics)`;
        `params` carries what the loss itself learns (temperature, bias).
      params: the pytree differentiated; everything needing a gradient must be in it
        (embed_fn / loss_fn may close over constants and keys, not over values
        being differentiated).
      batch: pytree of [B, ...] arrays (not differentiated).
      num_micro_batches: k dividing B; micro-batch i holds rows i, i+k, ... (as in
        `jaxsup.microbatch`), so with a batch sharded over devices each device keeps an
        equal share of every micro-batch. k = 1 is plain autodiff.
      rng: optional key for randomness in embed_fn (dropout).
      micro_batch_sharding: sharding of the [k, B/k, ...] micro-batch stack, e.g.
        NamedSharding(mesh, P(None, "data")).
    Returns:
      (loss, metrics) as returned by loss_fn on the full batch.
    """
    if isinstance(num_micro_batches, bool) or not isinstance(num_micro_batches, int) or num_micro_batches < 1:
        raise ValueError(
            f"cached_contrastive_loss: num_micro_batches must be a positive int, got {num_micro_batches!r}."
        )
    k = num_micro_batches
    micro_size = _batch_size(batch, k) // k

    def embed(p, micro_batch, i):
        return embed_fn(p, micro_batch) if rng is None else embed_fn(p, micro_batch, jax.random.fold_in(rng, i))

    if k == 1:
        return loss_fn(params, embed(params, batch, 0))

    def split(tree):
        return split_micro_batches(tree, k, micro_batch_sharding)

    def embed_all(p, b):
        micro = split(b)
        _check_embeddings(jax.eval_shape(embed, p, jax.tree.map(lambda x: x[0], micro), 0), micro_size)
        _, stacked = lax.scan(lambda _, xs: (None, embed(p, *xs)), None, (micro, jnp.arange(k)))
        return merge_micro_batches(stacked)

    @jax.custom_vjp
    def loss_of(p, b):
        return loss_fn(p, embed_all(p, b))

    def forward(p, b):
        embeddings = embed_all(p, b)
        return loss_fn(p, embeddings), (p, b, embeddings)

    def backward(residuals, cotangents):
        p, b, embeddings = residuals
        loss_cotangent, _ = cotangents  # metrics carry no gradient
        _, loss_vjp, _ = jax.vjp(loss_fn, p, embeddings, has_aux=True)
        direct_grads, embedding_grads = loss_vjp(loss_cotangent)

        def accumulate(grad_sum, xs):
            micro_batch, embedding_grad, i = xs
            _, tower_vjp = jax.vjp(lambda q: embed(q, micro_batch, i), p)
            (grads,) = tower_vjp(embedding_grad)
            return jax.tree.map(lambda acc, g: acc + g.astype(F32), grad_sum, grads), None

        init = jax.tree.map(lambda g: g.astype(F32), direct_grads)
        grad_sum, _ = lax.scan(accumulate, init, (split(b), split(embedding_grads), jnp.arange(k)))
        return jax.tree.map(lambda g, x: g.astype(x.dtype), grad_sum, p), None

    loss_of.defvjp(forward, backward)
    return loss_of(params, batch)
