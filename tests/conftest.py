"""Test setup: 8 simulated CPU devices, set before JAX is imported; the folders' modules importable.

tests/ mirrors the packages (data/, losses/, kernels/, models/, tasks/, interop/, evaluators/,
train/, benchmarks/, project/); shared helpers live in helpers.py and interop_helpers.py, and a
test module may reuse another's NumPy reference (`from test_contrastive_losses import ...`).
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, *(os.path.join(HERE, d) for d in sorted(os.listdir(HERE))
                        if os.path.isdir(os.path.join(HERE, d)) and not d.startswith(("_", ".")))]

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()


@pytest.fixture
def nan_lr_allowed(monkeypatch):
    """A NaN learning rate as the stand-in for a diverging run: lifts optim.lr's declared range
    (a run refuses lr=nan from a config or the command line: tests/train/test_config_ranges.py)."""
    from jaxsup import config_ranges

    monkeypatch.delitem(config_ranges.RANGES, "optim.lr")


# The fast tier (`make test-fast`, `pytest -m fast`): each package's unit tests and one tiny
# end-to-end run, a few minutes on 2 cores. The full suite stays what CI runs.
FAST_FILES = {
    "test_architecture.py", "test_config.py", "test_config_ranges.py", "test_docs.py", "test_storage_errors.py",
    "test_optim.py", "test_sharding_rules.py", "test_tokenizer.py", "test_image_ops.py", "test_weak_losses.py",
    "test_distill_losses.py", "test_contrastive_losses.py", "test_step.py", "test_evaluators.py",
    "test_convert.py", "test_models.py", "test_resnet_heads_two_tower.py", "test_fused_linear_kd.py",
}
FAST_TESTS = {"test_train.py::test_final_eval_and_checkpoints_written"}  # the tiny end-to-end run


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.nodeid.split("/")[-1]
        if name.split("::")[0] in FAST_FILES or name.split("[")[0] in FAST_TESTS:
            item.add_marker(pytest.mark.fast)
