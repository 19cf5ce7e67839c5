"""Learning gate of configs/siglip2_naflex_digits.py: a short run's loss falls and zero-shot beats chance.

Bars from the measured run (seed 0, docs/naflex.md) well below it and well above chance (0.1); with
the gradient's sign flipped in jaxsup/step.py (gradient ascent) the gate fails (tried once).
"""
import os

import numpy as np
import pytest

from jaxsup.config import load_config
from jaxsup.train import train_and_evaluate

from helpers import ROOT, few_steps, train_losses

STEPS = 300


@pytest.mark.slow
def test_naflex_siglip_learns_zero_shot(tmp_path):
    c = few_steps(load_config(os.path.join(ROOT, "configs/siglip2_naflex_digits.py")), STEPS, batch_size=64)
    c.optim.warmup_steps = 20
    c.log_every = 5
    c.evals = {"zero_shot": c.evals["zero_shot"]}
    metrics = train_and_evaluate(c, str(tmp_path))
    losses = train_losses(str(tmp_path))
    loss = np.asarray([losses[s] for s in sorted(losses)])
    drop = loss[-3:].mean() / loss[:3].mean()
    print(f"naflex gate: loss {loss[:3].mean():.3f} -> {loss[-3:].mean():.3f} (x{drop:.3f}), "
          f"zero_shot/top1 {metrics['zero_shot/top1']:.3f}")
    assert drop < 0.85, drop
    assert metrics["zero_shot/top1"] > 0.2, metrics["zero_shot/top1"]
