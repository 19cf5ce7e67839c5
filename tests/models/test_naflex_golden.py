"""NaFlex ViT forward vs big_vision's own NaFlex ViT: a golden file made with its model code.

tests/models/test_naflex_golden.npz: big_vision `models/proj/image_text/naflex_vit.py` (commit 0127fb6b),
random init (width 16, depth 2, 2 heads, MLP 32, MAP pooling, pos_embedding 8 x 8, canvas 16),
run on 3 images of 3x5, 6x2 and 4x4 random patches (48 values in [-1, 1]) padded to 24; it holds
the inputs, big_vision's parameters and its outputs (docs/naflex.md says how it was made).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict

from jaxsup.models.naflex_vit import NaFlexViT

GOLDEN = os.path.join(os.path.dirname(__file__), "test_naflex_golden.npz")


def golden():
    data = dict(np.load(GOLDEN))
    params = {tuple(k.split("/")[1:]): v for k, v in data.items() if k.startswith("params/")}
    params = {tuple("encoder" if p == "Transformer" else p for p in k): v for k, v in params.items()}
    return data, unflatten_dict(params)


def test_forward_equals_big_vision_naflex_vit():
    data, params = golden()
    model = NaFlexViT(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32, posemb_grid=8)
    inputs = {"patches": jnp.asarray(data["patches"]), "segments": jnp.asarray(data["ptype"]),
              "coords": jnp.stack([jnp.asarray(data["yabs"]), jnp.asarray(data["xabs"])], -1)}
    pooled, out = jax.jit(model.apply)({"params": params}, inputs)
    scale = np.abs(data["pooled"]).max()
    np.testing.assert_allclose(pooled, data["pooled"], atol=1e-4 * scale)
    valid = data["ptype"] == 1
    np.testing.assert_allclose(np.asarray(out["encoded"])[valid], data["encoded"][valid],
                               atol=1e-4 * np.abs(data["encoded"]).max())
