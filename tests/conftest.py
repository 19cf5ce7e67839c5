"""Test setup: 8 simulated CPU devices, set before JAX is imported."""
import os

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()


@pytest.fixture
def nan_lr_allowed(monkeypatch):
    """A NaN learning rate as the stand-in for a diverging run: lifts optim.lr's declared range
    (a run refuses lr=nan from a config or the command line: tests/test_config_ranges.py)."""
    from jaxsup import config_ranges

    monkeypatch.delitem(config_ranges.RANGES, "optim.lr")
