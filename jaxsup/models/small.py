"""Small models for tests and the offline default run: MLP and CNN.

Image-model convention (all registered image models follow it):
  `logits, out = model.apply({"params": p}, x, train=False)`
  x: [B, H, W, C] float; logits: [B, num_classes] (or the features when
  num_classes is None); out["pre_logits"]: [B, D] features before the head.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry


def classifier_head(
    features: jnp.ndarray, num_classes: int | None, dtype: Any, param_dtype: Any
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Applies the final Dense (if num_classes) and returns (logits, out)."""
    out = {"pre_logits": features}
    if not num_classes:
        return features, out
    logits = nn.Dense(num_classes, dtype=dtype, param_dtype=param_dtype, name="head")(features)
    return logits, out


@registry.register("model", "mlp")
class MLP(nn.Module):
    """Flatten -> [Dense -> GELU] * len(widths) -> head."""

    widths: Sequence[int] = (256, 256)
    num_classes: int | None = 10
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        h = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, width in enumerate(self.widths):
            h = nn.gelu(nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(h))
        return classifier_head(h, self.num_classes, self.dtype, self.param_dtype)


@registry.register("model", "cnn")
class CNN(nn.Module):
    """[Conv3x3 -> LayerNorm -> GELU -> (2x2 avg-pool)] per width, global mean pool, head."""

    widths: Sequence[int] = (32, 64)
    num_classes: int | None = 10
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        h = x.astype(self.dtype)
        for i, width in enumerate(self.widths):
            h = nn.Conv(width, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{i}")(h)
            h = nn.gelu(nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"norm_{i}")(h))
            if min(h.shape[1:3]) >= 4:
                h = nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = h.mean(axis=(1, 2))
        return classifier_head(h, self.num_classes, self.dtype, self.param_dtype)
