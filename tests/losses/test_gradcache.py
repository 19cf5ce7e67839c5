"""GradCache (jaxsup.losses.gradcache): full-batch contrastive gradients at one micro-batch's memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsup import sharding
from jaxsup.losses import contrastive
from jaxsup.losses.gradcache import cached_contrastive_loss, merge_micro_batches
from jaxsup.models.two_tower import TwoTower
from jaxsup.microbatch import split_micro_batches

VOCAB, MAX_LEN = 64, 8


def _model(loss: str, text: str = "mlp", width: int = 16) -> TwoTower:
    """Tiny two-tower: MLP image tower; MLP (fast to compile) or transformer text tower."""
    text_kwargs = dict(widths=(width, width), num_classes=None)
    if text == "text_transformer":
        text_kwargs = dict(vocab_size=VOCAB, max_len=MAX_LEN, width=width, depth=2, mlp_dim=2 * width, num_heads=2)
    return TwoTower(
        image="mlp", image_kwargs=dict(widths=(width, width), num_classes=None),
        text=text, text_kwargs=text_kwargs, embed_dim=8, loss=loss,
    )


def _batch(size: int, image: int = 8):
    k1, k2 = jax.random.split(jax.random.key(3))
    tokens = jax.random.randint(k2, (size, MAX_LEN), 1, VOCAB).at[:, -2:].set(0)
    return {"image": jax.random.normal(k1, (size, image, image, 3)), "tokens": tokens}


@functools.lru_cache(maxsize=None)
def _params(loss: str):
    batch = _batch(1)
    return jax.jit(_model(loss).init)(jax.random.key(0), batch["image"], batch["tokens"])["params"]


def _fns(model: TwoTower, loss: str, dropout: float = 0.0):
    """(embed_fn, loss_fn) of a two-tower model and a jaxsup contrastive loss.

    With dropout > 0, embed_fn(params, batch, rng) drops embedding entries with that rate.
    """

    def embed_fn(params, batch, rng=None):
        zimg, ztxt, _ = model.apply({"params": params}, batch["image"], batch["tokens"])
        if dropout:
            keep = jax.random.bernoulli(rng, 1 - dropout, zimg.shape)
            zimg = jnp.where(keep, zimg / (1 - dropout), 0.0)
        return {"zimg": zimg, "ztxt": ztxt}

    def loss_fn(params, emb):
        _, _, out = model.apply({"params": params}, None, None)  # log_t (and bias) only
        if loss == "softmax":
            return contrastive.softmax_contrastive(emb["zimg"], emb["ztxt"], out["log_t"])
        return contrastive.sigmoid_contrastive(emb["zimg"], emb["ztxt"], out["log_t"], out["bias"])

    return embed_fn, loss_fn


def _full_batch(embed_fn, loss_fn):
    return lambda params, batch: loss_fn(params, embed_fn(params, batch))


def _assert_grads_close(got, want):
    # Micro-batch gradients are summed in another order than one big matmul: f32 rounding
    # relative to each leaf's largest entries (and to the largest gradient overall for the
    # attention key biases, whose exact gradient is 0 and computed value rounding noise).
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(
        g, w, rtol=1e-5, atol=max(1e-5 * np.abs(w).max(), 1e-6 * scale)), got, want)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_equals_the_full_batch_loss_and_gradient(loss):
    embed_fn, loss_fn = _fns(_model(loss), loss)
    params, batch = _params(loss), _batch(16)
    value_and_grad = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))  # noqa: E731
    (want, want_metrics), want_grads = value_and_grad(_full_batch(embed_fn, loss_fn))(params, batch)
    cached = lambda p, b: cached_contrastive_loss(embed_fn, loss_fn, p, b, 4)  # noqa: E731
    (got, metrics), grads = value_and_grad(cached)(params, batch)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), metrics, want_metrics)
    _assert_grads_close(grads, want_grads)
    assert float(jnp.abs(grads["t"][0])) > 0  # the temperature learns through loss_fn's params
    if loss == "softmax":
        # Plain accumulation (the mean of micro-batch losses) is another objective: each row
        # sees 3 negatives instead of 15 (about log(16/4) less loss at init).
        micro = split_micro_batches(batch, 4, None)
        micro_loss = jax.jit(lambda b: _full_batch(embed_fn, loss_fn)(params, b)[0])
        naive = np.mean([micro_loss(jax.tree.map(lambda x: x[i], micro)) for i in range(4)])
        assert want - naive > 0.5 * np.log(4)


def test_dropout_keys_are_replayed_in_the_backward():
    model = _model("softmax")
    embed_fn, loss_fn = _fns(model, "softmax", dropout=0.5)
    params, batch, rng, k = _params("softmax"), _batch(8), jax.random.key(7), 2

    def reference(p, b):
        # Independent: each micro-batch embedded with key fold_in(rng, i), rows put back, plain autodiff.
        micro = split_micro_batches(b, k, None)
        stacked = [embed_fn(p, jax.tree.map(lambda x: x[i], micro), jax.random.fold_in(rng, i)) for i in range(k)]
        return loss_fn(p, merge_micro_batches(jax.tree.map(lambda *xs: jnp.stack(xs), *stacked)))

    cached = lambda p, b: cached_contrastive_loss(embed_fn, loss_fn, p, b, k, rng=rng)  # noqa: E731
    (want, _), want_grads = jax.jit(jax.value_and_grad(reference, has_aux=True))(params, batch)
    (got, _), grads = jax.jit(jax.value_and_grad(cached, has_aux=True))(params, batch)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    _assert_grads_close(grads, want_grads)
    no_dropout = jax.jit(_full_batch(*_fns(model, "softmax")))(params, batch)[0]
    assert abs(float(got - no_dropout)) > 1e-3  # dropout was active


def test_sharded_batch_over_8_devices():
    embed_fn, loss_fn = _fns(_model("sigmoid"), "sigmoid")
    mesh = sharding.make_mesh((("data", 8),))
    params, batch = _params("sigmoid"), jax.device_put(_batch(32), sharding.batch_sharding(mesh))
    micro_sharding = NamedSharding(mesh, P(None, "data"))
    cached = lambda p, b: cached_contrastive_loss(  # noqa: E731
        embed_fn, loss_fn, p, b, 2, micro_batch_sharding=micro_sharding)
    (got, _), grads = jax.jit(jax.value_and_grad(cached, has_aux=True))(params, batch)
    (want, _), want_grads = jax.jit(jax.value_and_grad(_full_batch(embed_fn, loss_fn), has_aux=True))(params, batch)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    _assert_grads_close(grads, want_grads)


def test_one_micro_batch_is_plain_autodiff():
    embed_fn, loss_fn = _fns(_model("softmax"), "softmax")
    params, batch = _params("softmax"), _batch(8)
    got = jax.jit(lambda p, b: cached_contrastive_loss(embed_fn, loss_fn, p, b, 1))(params, batch)[0]
    np.testing.assert_allclose(got, jax.jit(_full_batch(embed_fn, loss_fn))(params, batch)[0], rtol=1e-6)


def test_temp_memory_is_lower_than_the_full_batch_gradient():
    # Activations dominate: 1024 pairs, 8 tokens each through a 2-block width-64 transformer;
    # compiled only.
    model = _model("softmax", text="text_transformer", width=64)
    embed_fn, loss_fn = _fns(model, "softmax")
    batch = jax.eval_shape(lambda: _batch(1024))
    params = jax.eval_shape(lambda b: model.init(jax.random.key(0), b["image"][:1], b["tokens"][:1]), batch)["params"]

    def temp_bytes(fn):
        compiled = jax.jit(jax.grad(lambda p, b: fn(p, b)[0])).lower(params, batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full = temp_bytes(_full_batch(embed_fn, loss_fn))
    cached = temp_bytes(lambda p, b: cached_contrastive_loss(embed_fn, loss_fn, p, b, 8))
    # One micro-batch holds 1/8 of the activations; the loss's [B, B] logits and the
    # cached embeddings stay, so ask for less than 1/4 (measured 16.9 vs 113.9 MiB).
    assert cached < full / 4, (cached / 2**20, full / 2**20)


def test_bad_input_raises():
    embed_fn, loss_fn = _fns(_model("softmax"), "softmax")
    params, batch = _params("softmax"), _batch(6)
    with pytest.raises(ValueError, match="num_micro_batches=4 does not divide the batch size 6"):
        cached_contrastive_loss(embed_fn, loss_fn, params, batch, 4)
    with pytest.raises(ValueError, match="num_micro_batches must be a positive int, got 0"):
        cached_contrastive_loss(embed_fn, loss_fn, params, batch, 0)
    with pytest.raises(ValueError, match="one leading batch dim"):
        cached_contrastive_loss(embed_fn, loss_fn, params, {**batch, "tokens": batch["tokens"][:4]}, 2)
    pooled = lambda p, b: jax.tree.map(lambda z: z.mean(0), embed_fn(p, b))  # noqa: E731
    with pytest.raises(ValueError, match=r"embed_fn must return arrays \[b, \.\.\.\] with b = 3 rows"):
        cached_contrastive_loss(pooled, loss_fn, params, batch, 2)
