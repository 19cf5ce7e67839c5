"""NaFlex ViT (NaViT + FlexiViT, SigLIP 2): a ViT over variable-length patch sequences at native aspect.

`feats, out = NaFlexViT(variant="B/16", posemb_grid=16).apply(v, rows, train=False)`:
rows uint8 [B, L, F] as jaxsup.data.host.naflex_ops writes them (F = p p C pixels, then row and
column of the patch (2 bytes each, big-endian) and a segment id: 0 padding, 1..max_segments
the images packed in the row), or a dict {"patches": float [B, L, p p C] in [-1, 1], "coords":
int [B, L, 2] (row, col), "segments": int [B, L]}. Pixels become x / 127.5 - 1.
feats [B * max_segments, D] (one embedding per image slot, row-major; pre_logits or logits
when num_classes), out["image_valid"] [B * max_segments] bool (slot holds an image).

Model: Dense patch embedding ("embedding"), plus a learned position table pos_embedding
[G, G, D] (G = posemb_grid) resized per image to its own patch grid (h, w) = max coords + 1 by
bilinear interpolation with antialias (the weights of jax.image.resize / big_vision's
scale_and_translate, evaluated at each patch's coordinates, so the shape stays static under jit);
the pre-LN encoder of transformer.py with attention allowed only within a segment (padding
attends nowhere); pooling per segment: "map" (MAPHead_0, one probe query per slot) or "gap".
Parameter layout as vit.py (embedding is a Dense [p p C, D] here, pos_embedding [G, G, D]).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.errors import ConfigError
from jaxsup.models.small import classifier_head
from jaxsup.models.transformer import Encoder, MlpBlock
from jaxsup.models.vit import ViT

META_BYTES = 5  # after each patch's pixels: row (2 bytes), col (2), segment (1); jaxsup.data.host.naflex_ops writes them
NAFLEX_POOL_TYPES = ("map", "gap")


def decode_rows(rows: jax.Array) -> dict[str, jax.Array]:
    """uint8 rows [B, L, P + 5] -> {"patches": f32 [B, L, P] in [-1, 1], "coords": int32 [B, L, 2], "segments": int32 [B, L]}."""
    meta = rows[..., -META_BYTES:].astype(jnp.int32)
    coords = jnp.stack([meta[..., 0] * 256 + meta[..., 1], meta[..., 2] * 256 + meta[..., 3]], -1)
    patches = rows[..., :-META_BYTES].astype(jnp.float32) / 127.5 - 1.0
    return {"patches": patches, "coords": coords, "segments": meta[..., 4]}


def resize_weights(pos: jax.Array, size: jax.Array, grid: int) -> jax.Array:
    """Antialiased bilinear weights [..., grid] of output pixel `pos` when `grid` pixels are resized to `size`.

    pos, size: int [...]. Row `pos` of jax.image.resize's weight matrix (triangle kernel widened by
    grid / size when shrinking, normalised to sum 1), without materialising the other rows.
    """
    size = jnp.maximum(size, 1).astype(jnp.float32)
    inv_scale = grid / size
    kernel_scale = jnp.maximum(inv_scale, 1.0)
    sample = (pos.astype(jnp.float32) + 0.5) * inv_scale - 0.5
    dist = jnp.abs(sample[..., None] - jnp.arange(grid, dtype=jnp.float32)) / kernel_scale[..., None]
    w = jnp.maximum(0.0, 1.0 - dist)
    return w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


def segment_grids(coords: jax.Array, segments: jax.Array, max_segments: int) -> jax.Array:
    """Patch grid (h, w) of each token's image, int32 [B, L, 2]: max coords over its segment + 1."""
    onehot = segments[..., None] == jnp.arange(1, max_segments + 1)  # [B, L, S]
    per_seg = jnp.max(jnp.where(onehot[..., None], coords[:, :, None, :], -1), axis=1) + 1  # [B, S, 2]
    idx = jnp.clip(segments - 1, 0, max_segments - 1)
    return jnp.take_along_axis(per_seg, idx[..., None], axis=1)


def posemb_per_patch(table: jax.Array, coords: jax.Array, segments: jax.Array, max_segments: int) -> jax.Array:
    """Position table [G, G, D] resized to each image's grid, read at its patches: [B, L, D]."""
    grids = segment_grids(coords, segments, max_segments)
    g = table.shape[0]
    wy = resize_weights(coords[..., 0], grids[..., 0], g)
    wx = resize_weights(coords[..., 1], grids[..., 1], g)
    return jnp.einsum("bly,blx,yxd->bld", wy, wx, table.astype(jnp.float32))


def segment_masks(segments: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """Attention mask [B, 1, L, L] (same non-zero segment) and pooling mask [B, S, L] (token in slot s)."""
    valid = segments > 0
    attn = (segments[:, :, None] == segments[:, None, :]) & valid[:, None, :]
    pool = segments[:, None, :] == jnp.arange(1, max_segments + 1)[None, :, None]
    return attn[:, None], pool


class SegmentMAPHead(nn.Module):
    """MAP pooling with one probe query per segment: x [B, L, D], mask [B, S, L] -> [B, S, D].

    Layout as transformer.MAPHead (probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0).
    """

    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(self.dtype), (b, mask.shape[1], d))
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(), force_fp32_for_softmax=True,
        )(probe, x, mask=mask[:, None])
        z = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)(y)
        return y + MlpBlock(self.mlp_dim, 0.0, self.dtype, self.param_dtype, self.act)(z)


def as_inputs(image: jax.Array | dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Rows uint8 [B, L, F] or the decoded dict -> the decoded dict; ConfigError for anything else."""
    if isinstance(image, dict):
        return image
    if image.ndim != 3 or image.dtype != jnp.uint8:
        raise ConfigError(f"naflex_vit expects naflex rows uint8 [B, L, F] (preprocess naflex_patchify), got "
                          f"{image.dtype} {image.shape}.")
    return decode_rows(image)


@registry.register("model", "naflex_vit")
class NaFlexViT(ViT):
    """See the module docstring. Fields as ViT, plus posemb_grid (G) and max_segments (images per row).

    patch_size (or the variant's) only names the model: the rows carry the patches. pre_norm and
    patch_bias are not used (big_vision's NaFlex ViT has neither).
    """

    pool_type: str = "map"
    posemb_grid: int = 16
    max_segments: int = 1

    @nn.compact
    def __call__(self, image, *, train: bool = False):
        if self.pool_type not in NAFLEX_POOL_TYPES:
            raise ConfigError(f"naflex_vit pool_type {self.pool_type!r}; expected one of {NAFLEX_POOL_TYPES}.")
        inputs = as_inputs(image)
        dims = self.resolved_dims()
        s, width = self.max_segments, dims["width"]
        x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name="embedding")(
            inputs["patches"].astype(self.dtype))
        table = self.param("pos_embedding", nn.initializers.normal(stddev=1 / width**0.5),
                           (self.posemb_grid, self.posemb_grid, width), self.param_dtype)
        x = x + posemb_per_patch(table, inputs["coords"], inputs["segments"], s).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        attn_mask, pool_mask = segment_masks(inputs["segments"], s)
        block = dict(num_heads=dims["num_heads"], mlp_dim=dims["mlp_dim"], act=self.act, norm_eps=self.norm_eps,
                     dtype=self.dtype, param_dtype=self.param_dtype)
        x = Encoder(depth=dims["depth"], dropout=self.dropout, remat=self.remat, remat_policy=self.remat_policy,
                    name="encoder", **block)(x, attn_mask, train=train)
        if self.pool_type == "map":
            pooled = SegmentMAPHead(name="MAPHead_0", **block)(x, pool_mask)
        else:
            weights = pool_mask.astype(x.dtype)
            pooled = jnp.einsum("bsl,bld->bsd", weights, x) / jnp.maximum(weights.sum(-1, keepdims=True), 1)
        pooled = pooled.reshape(-1, width)
        if self.representation_size:
            pooled = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                      name="pre_logits")(pooled))
        logits, out = classifier_head(pooled, self.num_classes, self.dtype, self.param_dtype)
        out["encoded"] = x
        out["image_valid"] = pool_mask.any(-1).reshape(-1)
        return logits, out
