"""Image + text towers with L2-normalised embeddings and a learnable temperature.

`zimg, ztxt, out = TwoTower(...).apply(v, images, tokens, train=False)`:
zimg [B, E], ztxt [B, E] unit-norm (None for a tower whose input is None);
out["log_t"] the log-temperature (clipped to <= log(100) for loss "softmax"),
out["t"] = exp(log_t), out["bias"] (loss "sigmoid" only),
out["img_features"] / out["txt_features"] the towers' outputs before projection,
out["img"] / out["txt"] the towers' own out dicts.

Initialise with both inputs so that both towers get parameters. Parameter layout:
img/... (image tower), txt/... (text tower), img_proj/kernel, txt_proj/kernel,
t [1], b [1] (sigmoid).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxsup import registry
from jaxsup.errors import ConfigError

LOSS_TYPES = ("softmax", "sigmoid")
# Initial log-temperature and bias per loss (CLIP; SigLIP).
DEFAULT_LOG_T = {"softmax": math.log(1 / 0.07), "sigmoid": math.log(10.0)}
MAX_LOG_T = math.log(100.0)
SIGMOID_BIAS_INIT = -10.0


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """Rows of [B, E] divided by their L2 norm (computed in float32)."""
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, eps)).astype(x.dtype)


def _constant_init(value: float):
    return lambda key, shape, dtype=jnp.float32: jnp.full(shape, value, dtype)


@registry.register("model", "two_tower")
class TwoTower(nn.Module):
    """CLIP / SigLIP style two-tower model built from registered towers."""

    image: str = "vit"
    image_kwargs: Mapping[str, Any] | None = None
    text: str = "text_transformer"
    text_kwargs: Mapping[str, Any] | None = None
    embed_dim: int = 128
    loss: str = "softmax"
    temperature_init: float | None = None  # log-temperature; None -> per-loss default
    bias_init: float = SIGMOID_BIAS_INIT
    project: bool = True  # False: a tower's output must already be [B, embed_dim]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.loss not in LOSS_TYPES:
            raise ConfigError(f"Unknown loss {self.loss!r}; expected one of {LOSS_TYPES}.")
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.img = registry.get("model", self.image)(**{**precision, **dict(self.image_kwargs or {})})
        self.txt = registry.get("model", self.text)(**{**precision, **dict(self.text_kwargs or {})})
        if self.project:
            dense = lambda name: nn.Dense(self.embed_dim, use_bias=False, name=name, **precision)  # noqa: E731
            self.img_proj, self.txt_proj = dense("img_proj"), dense("txt_proj")
        log_t0 = DEFAULT_LOG_T[self.loss] if self.temperature_init is None else self.temperature_init
        self.t = self.param("t", _constant_init(log_t0), (1,), jnp.float32)
        if self.loss == "sigmoid":
            self.b = self.param("b", _constant_init(self.bias_init), (1,), jnp.float32)

    def _embed(self, tower_name: str, features: jnp.ndarray) -> jnp.ndarray:
        """Tower output [B, D] -> unit-norm [B, E]; ValueError if it is not projectable."""
        if features.ndim != 2:
            raise ConfigError(
                f"The {tower_name} tower ({self.image if tower_name == 'img' else self.text!r}) returned shape "
                f"{features.shape}; two_tower needs [B, D] features (e.g. a pooled model)."
            )
        if self.project:
            features = getattr(self, f"{tower_name}_proj")(features)
        elif features.shape[-1] != self.embed_dim:
            raise ConfigError(
                f"The {tower_name} tower returned dim {features.shape[-1]} but project=False "
                f"needs embed_dim {self.embed_dim}."
            )
        return l2_normalize(features)

    def __call__(self, images: jnp.ndarray | None, tokens: jnp.ndarray | None, *, train: bool = False,
                 prompt: jnp.ndarray | None = None):
        """prompt: learned context vectors [M, D] for the text tower (text_transformer only; see text.py)."""
        out: dict[str, Any] = {}
        zimg = ztxt = None
        if images is not None:
            feats, out["img"] = self.img(images, train=train)
            out["img_features"] = feats
            zimg = self._embed("img", feats)
        if tokens is not None:
            extra = {} if prompt is None else {"prompt": prompt}
            feats, out["txt"] = self.txt(tokens, train=train, **extra)
            out["txt_features"] = feats
            ztxt = self._embed("txt", feats)
        log_t = self.t[0]
        if self.loss == "softmax":
            log_t = jnp.minimum(log_t, MAX_LOG_T)
        else:
            out["bias"] = self.b[0]
        out["log_t"] = log_t
        out["t"] = jnp.exp(log_t)
        return zimg, ztxt, out
