"""Pre-LN transformer encoder shared by the ViT and the text tower.

Parameter layout (one sub-tree per block, so regex sharding rules stay simple):

    .../encoder/encoderblock_{i}/LayerNorm_0/{scale,bias}
    .../encoder/encoderblock_{i}/MultiHeadDotProductAttention_0/{query,key,value}/kernel  [D, H, D/H]
    .../encoder/encoderblock_{i}/MultiHeadDotProductAttention_0/out/kernel                [H, D/H, D]
    .../encoder/encoderblock_{i}/LayerNorm_1/{scale,bias}
    .../encoder/encoderblock_{i}/MlpBlock_0/Dense_0/kernel                                [D, M]
    .../encoder/encoderblock_{i}/MlpBlock_0/Dense_1/kernel                                [M, D]
    .../encoder/encoder_norm/{scale,bias}

`remat=True` wraps each block in `nn.remat` with the `jax.checkpoint_policies`
policy named by `remat_policy`. `act` names the MLP activation (ACTIVATIONS:
"gelu_tanh", the default and big_vision's; "gelu_erf", PyTorch's nn.GELU;
"quick_gelu", OpenAI CLIP's), `norm_eps` the LayerNorm epsilon (PyTorch: 1e-5).

MAPHead (big_vision's multihead attention pooling, SigLIP): probe [1, 1, D]
attends to the tokens, then + MLP(LN(.)); layout MAPHead_0/{probe,
MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsup.errors import ConfigError

# Policies of jax.checkpoint_policies that are usable as-is (not factories).
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
)


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
    """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_erf": functools.partial(nn.gelu, approximate=False),
    "quick_gelu": quick_gelu,
}
DEFAULT_ACT = "gelu_tanh"
DEFAULT_NORM_EPS = 1e-6


def activation_by_name(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """ACTIVATIONS[name]; ConfigError naming the choices for an unknown name."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def remat_policy_by_name(name: str) -> Callable[..., bool]:
    """Returns `jax.checkpoint_policies.<name>`; ValueError for unknown names."""
    if name not in REMAT_POLICIES:
        raise ConfigError(f"Unknown remat_policy {name!r}; expected one of {REMAT_POLICIES}.")
    return getattr(jax.checkpoint_policies, name)


def attention_mask(
    key_is_valid: jnp.ndarray | None, length: int, causal: bool
) -> jnp.ndarray | None:
    """Boolean attention mask [B or 1, 1, L, L] (True = may attend), or None.

    key_is_valid: [B, L] bool (False for padding keys) or None.
    """
    mask = None
    if causal:
        mask = nn.make_causal_mask(jnp.ones((1, length), jnp.int32), dtype=jnp.bool_)
    if key_is_valid is not None:
        pad_mask = key_is_valid[:, None, None, :]  # [B, 1, 1(q), L(k)]
        mask = pad_mask if mask is None else jnp.logical_and(mask, pad_mask)
    return mask


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> activation `act` -> dropout -> Dense(D) on [..., D]."""

    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: str = DEFAULT_ACT

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool = True) -> jnp.ndarray:
        dense = lambda n: nn.Dense(  # noqa: E731
            n,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        h = activation_by_name(self.act)(dense(self.mlp_dim)(x))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return dense(x.shape[-1])(h)


class EncoderBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)). [B, L, D] -> [B, L, D]."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: str = DEFAULT_ACT
    norm_eps: float = DEFAULT_NORM_EPS

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, mask: jnp.ndarray | None = None, deterministic: bool = True
    ) -> jnp.ndarray:
        norm = lambda: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)  # noqa: E731
        h = norm()(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            force_fp32_for_softmax=True,
            deterministic=deterministic,
        )(h, h, mask=mask)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        x = x + h
        h = MlpBlock(self.mlp_dim, self.dropout, self.dtype, self.param_dtype, self.act)(norm()(x), deterministic)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return x + h


class Encoder(nn.Module):
    """`depth` EncoderBlocks and a final LayerNorm. [B, L, D] -> [B, L, D].

    mask: boolean [B or 1, 1, L, L] (True = may attend), see `attention_mask`.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: str = DEFAULT_ACT
    norm_eps: float = DEFAULT_NORM_EPS

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, mask: jnp.ndarray | None = None, *, train: bool = False
    ) -> jnp.ndarray:
        block_cls = EncoderBlock
        if self.remat:
            # static_argnums counts `self` as 0: (self, x, mask, deterministic).
            block_cls = nn.remat(
                EncoderBlock, policy=remat_policy_by_name(self.remat_policy), static_argnums=(3,)
            )
        x = x.astype(self.dtype)
        for i in range(self.depth):
            block = block_cls(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                dropout=self.dropout,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                act=self.act,
                norm_eps=self.norm_eps,
                name=f"encoderblock_{i}",
            )
            x = block(x, mask, not train)
        return nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision, SigLIP): [B, L, D] -> [B, D]."""

    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: str = DEFAULT_ACT
    norm_eps: float = DEFAULT_NORM_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
        probe = jnp.broadcast_to(probe.astype(self.dtype), (b, 1, d))
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(), force_fp32_for_softmax=True,
        )(probe, x)
        y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = x + MlpBlock(self.mlp_dim, 0.0, self.dtype, self.param_dtype, self.act)(y)
        return x[:, 0]


def check_heads(width: int, num_heads: int) -> None:
    """ValueError unless num_heads divides width."""
    if num_heads <= 0 or width % num_heads:
        raise ConfigError(f"width {width} must be a positive multiple of num_heads {num_heads}.")
