"""NaFlex ViT: position table vs jax.image.resize, row layout, packed == unpacked (embeddings, loss,
gradients), zero gradient at padding, one compilation per bucket."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup.data.host import naflex_ops
from jaxsup.errors import ConfigError
from jaxsup.losses.contrastive import sigmoid_contrastive
from jaxsup.models import naflex_vit

PATCH = 4
TINY = dict(patch_size=PATCH, width=16, depth=1, num_heads=2, mlp_dim=32, posemb_grid=8)
GRIDS = [(2, 5), (6, 6), (1, 3), (4, 4), (3, 7)]  # 10, 36, 3, 16, 21 patches


def images(seed=0):
    """Per image (patches uint8 [n, p p], coords [n, 2]) of the grids above."""
    rng = np.random.default_rng(seed)
    out = []
    for gh, gw in GRIDS:
        out.append(naflex_ops.patchify(rng.integers(0, 256, (gh * PATCH, gw * PATCH, 1), dtype=np.uint8), PATCH))
    return out


def unpacked_rows(imgs, length=36):
    return np.stack([naflex_ops.encode_rows(p, c, 1, length) for p, c in imgs])


def init(model, rows):
    return jax.jit(model.init)(jax.random.key(0), jnp.asarray(rows))["params"]  # eager init is ~10x slower


@pytest.mark.parametrize("grid", [(3, 5), (12, 4), (1, 20)])
def test_posemb_equals_jax_image_resize(grid):
    table = jax.random.normal(jax.random.key(1), (8, 8, 6))
    h, w = grid
    coords = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1).reshape(1, -1, 2)
    got = naflex_vit.posemb_per_patch(table, coords, jnp.ones(coords.shape[:2], jnp.int32), 1)
    want = jax.image.resize(table, (h, w, 6), "bilinear", antialias=True).reshape(1, -1, 6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_decode_reads_what_the_host_op_writes():
    patches = np.arange(2 * 16, dtype=np.uint8).reshape(2, 16)
    rows = naflex_ops.encode_rows(patches, np.asarray([[0, 300], [70000 % 65536, 2]]), 3, 4)
    got = naflex_vit.decode_rows(jnp.asarray(rows[None]))
    np.testing.assert_array_equal(got["coords"][0, :2], [[0, 300], [70000 % 65536, 2]])
    np.testing.assert_array_equal(got["segments"][0], [3, 3, 0, 0])
    np.testing.assert_allclose(got["patches"][0, 0], patches[0] / 127.5 - 1)
    assert naflex_vit.META_BYTES == naflex_ops.META_BYTES


def embed_fn(model):
    return jax.jit(lambda p, rows: model.apply({"params": p}, rows))


def test_packed_and_unpacked_give_the_same_embeddings_loss_and_grads():
    imgs = images()
    flat = unpacked_rows(imgs)
    packed, where = naflex_ops.pack_rows(imgs, 36, max_segments=3)
    assert len(packed) < len(imgs)
    single = naflex_vit.NaFlexViT(**TINY)
    multi = naflex_vit.NaFlexViT(**TINY, max_segments=3)
    params = init(single, flat)
    order = jnp.asarray([row * 3 + slot for row, slot in where])  # image i's slot in the packed output
    ztxt = jax.random.normal(jax.random.key(2), (len(imgs), 16))
    ztxt = ztxt / jnp.linalg.norm(ztxt, axis=-1, keepdims=True)

    def loss(p, model, rows, take):
        z, out = model.apply({"params": p}, rows)
        z = z[take] / jnp.linalg.norm(z[take], axis=-1, keepdims=True)
        return sigmoid_contrastive(z, ztxt, jnp.log(10.0), -5.0)[0], (z, out["image_valid"])

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l1, (z1, valid1)), g1 = grad(params, single, jnp.asarray(flat), jnp.arange(len(imgs)))
    (l2, (z2, valid2)), g2 = grad(params, multi, jnp.asarray(packed), order)
    np.testing.assert_allclose(z1, z2, atol=1e-6)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert bool(valid1.all()) and int(valid2.sum()) == len(imgs)


def test_padding_gets_exactly_zero_gradient_and_does_not_change_outputs():
    imgs = images()
    model = naflex_vit.NaFlexViT(**TINY)
    rows = jnp.asarray(unpacked_rows(imgs))
    params = init(model, rows)
    inputs = naflex_vit.decode_rows(rows)
    pad = np.asarray(inputs["segments"]) == 0

    @jax.jit
    def total(patches):
        z, _ = model.apply({"params": params}, {**inputs, "patches": patches})
        return jnp.sum(z ** 2)

    g = np.asarray(jax.grad(total)(inputs["patches"]))
    assert np.all(g[pad] == 0) and np.abs(g[~pad]).sum(-1).min() > 0
    noisy = jnp.where(pad[..., None], 7.0, inputs["patches"])  # junk in the padding changes nothing
    np.testing.assert_array_equal(total(noisy), total(inputs["patches"]))


def test_one_compilation_per_bucket():
    model = naflex_vit.NaFlexViT(**TINY)
    traces = []

    @jax.jit
    def embed(p, rows):
        traces.append(rows.shape)
        return model.apply({"params": p}, rows)[0]

    rng = np.random.default_rng(4)
    bucket_op = naflex_ops.naflex_bucket("16/36/64")
    params = None
    lengths = []
    for step in range(6):
        batch = []
        for _ in range(4):
            gh, gw = (int(v) for v in rng.integers(1, 5 + 2 * (step % 3), 2))
            p, c = naflex_ops.patchify(rng.integers(0, 256, (gh * PATCH, gw * PATCH, 1), dtype=np.uint8), PATCH)
            batch.append(naflex_ops.encode_rows(p, c, 1, 64))
        rows = bucket_op({"image": np.stack(batch)})["image"]
        lengths.append(rows.shape[1])
        params = init(model, rows) if params is None else params
        embed(params, jnp.asarray(rows)).block_until_ready()
    used = sorted(set(lengths))
    assert len(used) >= 2 and sorted(s[1] for s in traces) == used  # one trace per bucket used
    assert embed._cache_size() == len(used)


def test_bad_input_is_one_config_error():
    model = naflex_vit.NaFlexViT(**TINY)
    with pytest.raises(ConfigError, match="naflex rows"):
        model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ConfigError, match="pool_type"):
        naflex_vit.NaFlexViT(**TINY, pool_type="tok").init(jax.random.key(0), jnp.zeros((1, 4, 21), jnp.uint8))
