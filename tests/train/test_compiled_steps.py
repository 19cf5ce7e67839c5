"""The train step is compiled once per batch shape (NaFlex sequence buckets), and only once."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from helpers import ROOT, few_steps, read_metrics
from jaxsup.config import load_config
from jaxsup.train import CompiledSteps, train_and_evaluate


def test_one_executable_per_batch_shape_and_the_same_values():
    step = jax.jit(lambda state, frozen, batch: (state + jnp.sum(batch["image"]) * frozen, {"n": batch["image"].shape[0]}))
    shapes = [(2, 16), (2, 36), (2, 16), (2, 64), (2, 36), (2, 16)]
    batches = [{"image": jnp.full(s, i, jnp.float32)} for i, s in enumerate(shapes)]
    steps = CompiledSteps(step, jnp.float32(0), jnp.float32(2), batches[0])
    state = jnp.float32(0)
    for batch in batches:
        want, _ = step(state, jnp.float32(2), batch)
        state, _ = steps(state, jnp.float32(2), batch)
        np.testing.assert_array_equal(state, want)
    assert len(steps.compiled) == len({s for s in shapes})  # 3 buckets used: 3 compilations


def test_a_naflex_run_over_several_buckets_compiles_each_once(tmp_path, caplog):
    """Canvases at their own size (native) fall in different buckets of 16/36/64 patches; the run trains."""
    c = load_config(os.path.join(ROOT, "configs/siglip2_naflex_digits.py:runlocal,native,buckets=16/36/64"))
    c = few_steps(c, steps=12, batch_size=1)
    c.evals = {}
    with caplog.at_level(logging.INFO, logger="jaxsup"):
        train_and_evaluate(c, str(tmp_path))
    new_shapes = [r for r in caplog.records if "new batch shape" in r.getMessage()]
    assert 1 <= len(new_shapes) <= 2  # first bucket compiled up front; at most the other two later
    losses = [r["train/loss"] for r in read_metrics(str(tmp_path)) if "train/loss" in r]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
