"""Text transformer tower: token ids [B, L] int32 -> (logits or features [B, D], out).

Pad id is 0. Attention masks padding keys (unless `mask_padding=False`), and
future positions when `causal=True`. Pooling: "eos" takes the last non-pad
position of each row (the EOS token the tokenizers append), "mean" averages
the non-pad positions, "argmax" takes the position of each row's largest id
(OpenAI CLIP: its EOT token has the largest id), "last" the last position
(big_vision SigLIP). CLIP's vocabulary has a real token with id 0 ("!"), so
imported CLIP text towers use mask_padding=False (with causal=True and
"argmax" the padding after EOT cannot reach the pooled position anyway).

Parameter layout: token_embedding/embedding [V, D], pos_embedding [1, max_len, D],
encoder/... (see transformer.py), head/{kernel,bias} (num_classes).
out: "pre_logits" [B, D] pooled features, "tokens" [B, L, D] per-token features.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.models.small import classifier_head
from jaxsup.models.transformer import DEFAULT_ACT, DEFAULT_NORM_EPS, Encoder, attention_mask, check_heads
from jaxsup.errors import ConfigError

PAD_ID = 0
POOL_TYPES = ("eos", "mean", "argmax", "last")


def last_token_index(tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
    """[B, L] ids -> [B] index of the last non-pad token (0 for an all-pad row)."""
    positions = jnp.arange(tokens.shape[1])[None, :]
    return jnp.max(jnp.where(tokens != pad_id, positions, 0), axis=1)


def eos_pool(x: jnp.ndarray, tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
    """x [B, L, D] -> [B, D] at each row's last non-pad position."""
    idx = last_token_index(tokens, pad_id)
    return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]


def argmax_pool(x: jnp.ndarray, tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
    """x [B, L, D] -> [B, D] at each row's (first) largest id: CLIP's EOT."""
    idx = jnp.argmax(tokens, axis=1)
    return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]


def last_pool(x: jnp.ndarray, tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
    """x [B, L, D] -> [B, D] at the last position, padding or not (big_vision SigLIP)."""
    return x[:, -1]


def masked_mean_pool(x: jnp.ndarray, tokens: jnp.ndarray, pad_id: int = PAD_ID) -> jnp.ndarray:
    """x [B, L, D] -> [B, D] mean over non-pad positions (zeros for an all-pad row)."""
    valid = (tokens != pad_id).astype(x.dtype)[..., None]
    return (x * valid).sum(axis=1) / jnp.maximum(valid.sum(axis=1), 1)


POOLS = {"eos": eos_pool, "mean": masked_mean_pool, "argmax": argmax_pool, "last": last_pool}


@registry.register("model", "text_transformer")
class TextTransformer(nn.Module):
    """Embed tokens + learned posemb -> pre-LN encoder -> pool -> optional head."""

    vocab_size: int
    max_len: int = 64
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int | None = None  # None -> 4 * width
    num_classes: int | None = None
    causal: bool = True
    pool_type: str = "eos"
    dropout: float = 0.0
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    mask_padding: bool = True
    act: str = DEFAULT_ACT
    norm_eps: float = DEFAULT_NORM_EPS

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, *, train: bool = False, prompt: jnp.ndarray | None = None):
        """tokens [B, L] -> (logits or pooled features, out); prompt [M, D] or [B, M, D] (CoOp context
        vectors) replaces the embeddings of positions 1..M (after BOS), which must hold non-pad ids."""
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"TextTransformer expects int token ids [B, L], got {tokens.dtype}{tokens.shape}.")
        length = tokens.shape[1]
        if length > self.max_len:
            raise ConfigError(f"Sequence length {length} exceeds max_len {self.max_len}.")
        if self.pool_type not in POOL_TYPES:
            raise ConfigError(f"Unknown pool_type {self.pool_type!r}; expected one of {POOL_TYPES}.")
        check_heads(self.width, self.num_heads)

        x = nn.Embed(
            self.vocab_size, self.width, embedding_init=nn.initializers.normal(stddev=0.02),
            dtype=self.dtype, param_dtype=self.param_dtype, name="token_embedding",
        )(tokens)
        if prompt is not None:
            prompt = jnp.broadcast_to(prompt.astype(x.dtype), (x.shape[0], *prompt.shape[-2:]))
            x = x.at[:, 1:1 + prompt.shape[1]].set(prompt)
        posemb = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.01), (1, self.max_len, self.width),
            self.param_dtype,
        )
        x = x + posemb[:, :length].astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)

        mask = attention_mask(tokens != PAD_ID if self.mask_padding else None, length, self.causal)
        x = Encoder(
            depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.width,
            dropout=self.dropout, remat=self.remat, remat_policy=self.remat_policy,
            act=self.act, norm_eps=self.norm_eps,
            dtype=self.dtype, param_dtype=self.param_dtype, name="encoder",
        )(x, mask, train=train)

        pool = POOLS[self.pool_type]
        logits, out = classifier_head(pool(x, tokens), self.num_classes, self.dtype, self.param_dtype)
        out["tokens"] = x
        return logits, out
