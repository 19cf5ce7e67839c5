"""Shared test utilities: small configs and running the trainer in-process or as a CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np

from jaxsup.config import apply_overrides  # noqa: F401 (the tests' small configs use the CLI's)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_supervised_config(**overrides):
    """The default digits config shrunk to a few fast steps (MLP, small batch)."""
    from jaxsup.config import load_config

    c = load_config(os.path.join(ROOT, "configs/supervised_digits.py:runlocal"))
    c.model_name = "mlp"
    c.model = dict(widths=(32,), num_classes=10)
    c.batch_size = 32
    c.total_steps = 6
    c.log_every = 1
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
    c.evals = dict(test=dict(type="classification", split="test", every=0, batch_size=120))
    c.mesh = (("data", 1),)
    return apply_overrides(c, overrides)


def few_steps(c, steps: int = 3, batch_size: int | None = 32, log_every: int = 1, save_every: int = 0):
    """A config cut to `steps` steps on one device: a log line every `log_every`, checkpoints every
    `save_every` (0: at the end) saved synchronously, evaluators only at the end; batch_size None keeps it."""
    if batch_size is not None:
        c.batch_size = batch_size
    c.total_steps = steps
    c.log_every = log_every
    c.checkpoint.every = save_every
    c.checkpoint.async_save = False
    c.mesh = (("data", 1),)
    for ev in c.evals.values():
        ev.every = 0
    return c


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m jaxsup.train ARGS` in a subprocess (inherits the 8-device XLA_FLAGS)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "jaxsup.train", *args],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def restored_params(workdir: str) -> dict:
    from jaxsup import checkpoint

    return jax.tree.map(np.asarray, checkpoint.restore_subtree(workdir, "params"))
