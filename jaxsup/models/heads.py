"""SimCLR projection head (MLP with optional BatchNorm), SimCLRv2 style.

`z, out = SimCLRHead(num_layers=3).apply(v, h, train=False)`; h [B, D] ->
z [B, output_dim]; out["layer_k"] is the output of the k-th layer
(out["layer_0"] is the input h), so fine-tuning "from the middle of the head"
(SimCLRv2) reads out[f"layer_{k}"], or calls with `return_layer=k`, which
stops after layer k (later layers then get no parameters).

Layers 1..n-1: Dense(hidden_dim) -> [BN] -> ReLU; layer n: Dense(output_dim) -> [BN
without bias]. Parameter layout: dense_{i}/kernel (bias when use_bn=False),
bn_{i}/{scale,bias}; BN running stats in "batch_stats".
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.errors import ConfigError


@registry.register("model", "simclr_head")
class SimCLRHead(nn.Module):
    """MLP projection head [B, D] -> [B, output_dim] with per-layer outputs."""

    num_layers: int = 3
    hidden_dim: int | None = None  # None -> the input's width
    output_dim: int = 128
    use_bn: bool = True
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False, return_layer: int | None = None):
        if x.ndim != 2:
            raise ValueError(f"SimCLRHead expects features [B, D], got shape {x.shape}.")
        if self.num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {self.num_layers}.")
        stop = self.num_layers if return_layer is None else return_layer
        if not 0 <= stop <= self.num_layers:
            raise ConfigError(f"return_layer {return_layer} is outside [0, {self.num_layers}].")
        hidden = self.hidden_dim or x.shape[-1]
        h = x.astype(self.dtype)
        out = {"layer_0": h}
        for i in range(1, stop + 1):
            last = i == self.num_layers
            h = nn.Dense(
                self.output_dim if last else hidden, use_bias=not self.use_bn,
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}",
            )(h)
            if self.use_bn:
                h = nn.BatchNorm(
                    use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                    use_bias=not last, dtype=self.dtype, param_dtype=self.param_dtype, name=f"bn_{i}",
                )(h)
            if not last:
                h = nn.relu(h)
            out[f"layer_{i}"] = h
        return h, out
