"""Vision Transformer (Dosovitskiy et al.) with the image-model convention.

`logits, out = ViT(variant="B/16", num_classes=1000).apply(v, x, train=False)`;
x [B, H, W, C] float, out["pre_logits"] [B, D] (the pooled representation,
after the optional tanh representation layer).

Parameter layout: embedding/{kernel,bias} (patch conv; no bias with
patch_bias=False), pos_embedding [1, N, D] (patches only), cls [1, 1, D]
(pool_type "tok"), pre_norm/{scale,bias} (pre_norm=True, CLIP's ln_pre),
encoder/... (see transformer.py), MAPHead_0/... (pool_type "map"),
pre_logits/{kernel,bias} (representation_size), head/{kernel,bias}.

Pooling: "gap" mean of tokens, "tok" the class token, "map" attention pooling
(SigLIP). The options pre_norm, patch_bias, act, norm_eps exist for imported
checkpoints (OpenAI CLIP: pool "tok", pre_norm, no patch bias, "quick_gelu",
eps 1e-5); their defaults keep the original model.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.models.small import classifier_head
from jaxsup.models.transformer import DEFAULT_ACT, DEFAULT_NORM_EPS, Encoder, MAPHead, check_heads
from jaxsup.errors import ConfigError

# name -> (width, depth, mlp_dim, num_heads), as in the ViT / DeiT papers.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}
POOL_TYPES = ("gap", "tok", "map")


def parse_variant(variant: str | None) -> tuple[dict[str, int], int | None]:
    """"B/16" -> ({width, depth, mlp_dim, num_heads}, 16); "B" -> (..., None)."""
    if variant is None:
        return {}, None
    size, _, patch = variant.partition("/")
    if size not in VARIANTS or (patch and not patch.isdigit()):
        raise ConfigError(
            f"Unknown ViT variant {variant!r}; expected one of {sorted(VARIANTS)} "
            "optionally followed by '/<patch>', e.g. 'B/16'."
        )
    width, depth, mlp_dim, num_heads = VARIANTS[size]
    dims = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
    return dims, int(patch) if patch else None


@registry.register("model", "vit")
class ViT(nn.Module):
    """ViT: patchify -> + learned posemb -> pre-LN encoder -> pool -> head.

    Explicit width/depth/mlp_dim/num_heads/patch_size override the variant's.
    """

    variant: str | None = None
    patch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    num_classes: int | None = None
    pool_type: str = "gap"
    representation_size: int | None = None
    dropout: float = 0.0
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    pre_norm: bool = False
    patch_bias: bool = True
    act: str = DEFAULT_ACT
    norm_eps: float = DEFAULT_NORM_EPS

    def resolved_dims(self) -> dict[str, int]:
        """width, depth, mlp_dim, num_heads, patch_size after overrides."""
        dims, patch = parse_variant(self.variant)
        explicit = dict(
            width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
            num_heads=self.num_heads, patch_size=self.patch_size,
        )
        dims["patch_size"] = patch
        dims.update({k: v for k, v in explicit.items() if v is not None})
        missing = [k for k in explicit if dims.get(k) is None]
        if missing:
            raise ConfigError(f"ViT needs {missing}: set them or a variant such as 'B/16'.")
        check_heads(dims["width"], dims["num_heads"])
        return dims

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        if x.ndim != 4:
            raise ValueError(f"ViT expects images [B, H, W, C], got shape {x.shape}.")
        if self.pool_type not in POOL_TYPES:
            raise ConfigError(f"Unknown pool_type {self.pool_type!r}; expected one of {POOL_TYPES}.")
        dims = self.resolved_dims()
        p, width = dims["patch_size"], dims["width"]
        if x.shape[1] % p or x.shape[2] % p:
            raise ConfigError(f"Image size {x.shape[1:3]} is not a multiple of patch_size {p}.")

        x = nn.Conv(
            width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
            dtype=self.dtype, param_dtype=self.param_dtype, name="embedding",
        )(x.astype(self.dtype))
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        posemb = self.param(
            "pos_embedding", nn.initializers.normal(stddev=1 / d**0.5), (1, h * w, d), self.param_dtype
        )
        x = x + posemb.astype(self.dtype)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), self.param_dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        if self.pre_norm:
            x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                             name="pre_norm")(x)

        block = dict(num_heads=dims["num_heads"], mlp_dim=dims["mlp_dim"], act=self.act, norm_eps=self.norm_eps,
                     dtype=self.dtype, param_dtype=self.param_dtype)
        x = Encoder(
            depth=dims["depth"], dropout=self.dropout, remat=self.remat, remat_policy=self.remat_policy,
            name="encoder", **block,
        )(x, train=train)

        if self.pool_type == "map":
            pooled = MAPHead(name="MAPHead_0", **block)(x)
        else:
            pooled = x[:, 0] if self.pool_type == "tok" else x.mean(axis=1)
        if self.representation_size:
            pooled = nn.tanh(
                nn.Dense(self.representation_size, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="pre_logits")(pooled)
            )
        logits, out = classifier_head(pooled, self.num_classes, self.dtype, self.param_dtype)
        out["encoded"] = x
        return logits, out
