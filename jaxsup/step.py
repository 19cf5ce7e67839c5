"""The train state and the train step: pure maths, no assembly (see jaxsup.experiment).

    state, metrics = step(state, frozen, batch)

The step derives its RNG from (seed, state.step), so a resumed run draws the
same numbers. A step whose loss, gradient or update is non-finite changes
nothing and reports `train/nonfinite = 1`. With `grad_accum_steps = k > 1`
the batch is cut into k micro-batches (micro-batch i = rows i, i+k, ..., so
every device holds an equal share of each) whose gradients are averaged in a
`lax.scan`: for a per-example mean loss without RNG this is the same update
as the whole batch at 1/k of the activation memory. Contrastive losses are
not per-example means: see docs/scaling.md (GradCache) before accumulating them.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxsup.microbatch import split_micro_batches


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: steps taken (skipped non-finite ones included)
    params: Any
    opt_state: Any
    task_state: Any  # checkpointed, no gradients (BN stats, EMA teacher, buffers)


def tree_where(pred: jax.Array, new: Any, old: Any) -> Any:
    """Leafwise `new if pred else old` for a scalar bool `pred`."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def accumulated_grads(
    loss_and_grad: Callable, params: Any, task_state: Any, batch: dict[str, jax.Array], rng: jax.Array, k: int,
    sharding: jax.sharding.Sharding | None = None,
) -> tuple[tuple[jax.Array, tuple[Any, Any]], Any]:
    """Mean loss, metrics and gradients over k micro-batches (task_state threaded through)."""
    micro = split_micro_batches(batch, k, sharding)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, (metrics_shape, _)), _ = jax.eval_shape(loss_and_grad, params, task_state, first, rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (params, metrics_shape))

    def body(carry, xs):
        grad_sum, loss_sum, metric_sum, state = carry
        mb, i = xs
        (loss, (metrics, state)), grads = loss_and_grad(params, state, mb, jax.random.fold_in(rng, i))
        add = lambda a, b: a + b.astype(jnp.float32)  # noqa: E731
        return (jax.tree.map(add, grad_sum, grads), loss_sum + loss, jax.tree.map(add, metric_sum, metrics), state), None

    init = (zeros[0], jnp.zeros((), jnp.float32), zeros[1], task_state)
    (grad_sum, loss_sum, metric_sum, task_state), _ = jax.lax.scan(body, init, (micro, jnp.arange(k)))
    grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), grad_sum, params)
    metrics = jax.tree.map(lambda m: m / k, metric_sum)
    return (loss_sum / k, (metrics, task_state)), grads


def make_train_step(
    task: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    seed: int,
    grad_accum_steps: int = 1,
    micro_batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[[TrainState, Any, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """step(state, frozen, batch) -> (state, metrics); a non-finite step changes nothing."""

    def train_step(state: TrainState, frozen: Any, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_of(params, task_state, batch, rng):
            return task.loss_fn(params, task_state, frozen, batch, rng, state.step)

        loss_and_grad = jax.value_and_grad(loss_of, has_aux=True)
        if grad_accum_steps == 1:
            (loss, (task_metrics, task_state)), grads = loss_and_grad(state.params, state.task_state, batch, rng)
        else:
            (loss, (task_metrics, task_state)), grads = accumulated_grads(
                loss_and_grad, state.params, state.task_state, batch, rng, grad_accum_steps, micro_batch_sharding
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm, update_norm = optax.global_norm(grads), optax.global_norm(updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
        new_state = TrainState(
            state.step + 1,
            *tree_where(finite, (params, opt_state, task_state), (state.params, state.opt_state, state.task_state)),
        )
        out = {f"train/{k}": v for k, v in task_metrics.items()}
        out.update({
            "train/loss": loss, "train/grad_norm": grad_norm, "train/update_norm": update_norm,
            "train/lr": schedule(state.step), "train/nonfinite": 1.0 - finite.astype(jnp.float32),
        })
        return new_state, out

    return train_step
