"""ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck, stride on the 3x3: v1.5).

Image-model convention: `logits, out = model.apply(v, x, train=False)`, x
[B, H, W, C]; out["pre_logits"] [B, 512*width] (18/34) or [B, 2048*width] (50)
after global average pooling. With norm="batch" (default) the running stats
live in "batch_stats": training calls
`model.apply(v, x, train=True, mutable=["batch_stats"])`.

Parameter layout: stem_conv/kernel, stem_norm/{scale,bias},
stage{s}_block{b}/{conv_i/kernel, norm_i/{scale,bias}, proj_conv/kernel, proj_norm/...},
head/{kernel,bias}.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.models.small import classifier_head
from jaxsup.errors import ConfigError

# depth -> (block kind, blocks per stage)
STAGE_SIZES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
NORMS = ("batch", "group")


def make_norm(
    kind: str, train: bool, features: int, *, name: str, zero_init: bool = False,
    momentum: float = 0.9, zero_init_residual: bool = True, dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> nn.Module:
    """BatchNorm (running stats in "batch_stats") or GroupNorm with gcd(32, features) groups.

    zero_init (with zero_init_residual) starts the scale at 0: the block's last norm.
    """
    scale_init = nn.initializers.zeros if (zero_init and zero_init_residual) else nn.initializers.ones
    common = dict(dtype=dtype, param_dtype=param_dtype, scale_init=scale_init, name=name)
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, **common)
    return nn.GroupNorm(num_groups=math.gcd(32, features), **common)


class ResidualBlock(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block; [B,H,W,C] -> [B,H/s,W/s,C']."""

    channels: int
    strides: int
    bottleneck: bool
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        s = (self.strides, self.strides)
        if self.bottleneck:
            specs = [(self.channels, (1, 1), (1, 1)), (self.channels, (3, 3), s), (4 * self.channels, (1, 1), (1, 1))]
        else:
            specs = [(self.channels, (3, 3), s), (self.channels, (3, 3), (1, 1))]
        h = x
        for i, (features, kernel, strides) in enumerate(specs):
            h = self.conv(features, kernel, strides, name=f"conv_{i}")(h)
            last = i == len(specs) - 1
            h = self.norm(features, name=f"norm_{i}", zero_init=last)(h)
            if not last:
                h = nn.relu(h)
        if x.shape != h.shape:
            x = self.conv(h.shape[-1], (1, 1), s, name="proj_conv")(x)
            x = self.norm(h.shape[-1], name="proj_norm")(x)
        return nn.relu(x + h)


@registry.register("model", "resnet")
class ResNet(nn.Module):
    """ResNet with `depth` in {18, 34, 50}, channel multiplier `width`.

    small_input=True: 3x3 stride-1 stem and no max-pool (8x8 / 32x32 images).
    """

    depth: int = 50
    width: float = 1.0
    num_classes: int | None = None
    small_input: bool = False
    norm: str = "batch"
    bn_momentum: float = 0.9
    zero_init_residual: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False):
        if self.depth not in STAGE_SIZES:
            raise ConfigError(f"Unsupported ResNet depth {self.depth}; expected one of {sorted(STAGE_SIZES)}.")
        if self.norm not in NORMS:
            raise ConfigError(f"Unknown norm {self.norm!r}; expected one of {NORMS}.")
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images [B, H, W, C], got shape {x.shape}.")
        kind, stages = STAGE_SIZES[self.depth]
        conv = functools.partial(
            nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )
        norm = functools.partial(
            make_norm, self.norm, train, momentum=self.bn_momentum, zero_init_residual=self.zero_init_residual,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        base = max(1, int(round(64 * self.width)))

        x = x.astype(self.dtype)
        if self.small_input:
            x = conv(base, (3, 3), (1, 1), name="stem_conv")(x)
        else:
            x = conv(base, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
        x = nn.relu(norm(base, name="stem_norm")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        for s, num_blocks in enumerate(stages):
            for b in range(num_blocks):
                x = ResidualBlock(
                    channels=base * 2**s, strides=2 if (s > 0 and b == 0) else 1,
                    bottleneck=kind == "bottleneck", conv=conv, norm=norm, name=f"stage{s}_block{b}",
                )(x)
        x = x.mean(axis=(1, 2))
        return classifier_head(x, self.num_classes, self.dtype, self.param_dtype)
