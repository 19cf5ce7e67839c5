"""Train step features: gradient accumulation, profiling, compiled stats / MFU."""
import os

import jax
import numpy as np
import pytest

from jaxsup import metrics
from jaxsup.train import train_and_evaluate

from helpers import read_metrics, restored_params, tiny_supervised_config, train_losses


def test_grad_accumulation_equals_the_whole_batch(tmp_path):
    whole = tiny_supervised_config(total_steps=3, mesh=(("data", 2),))
    accum = tiny_supervised_config(total_steps=3, mesh=(("data", 2),), grad_accum_steps=4)
    train_and_evaluate(whole, str(tmp_path / "whole"))
    train_and_evaluate(accum, str(tmp_path / "accum"))
    lw, la = train_losses(str(tmp_path / "whole")), train_losses(str(tmp_path / "accum"))
    np.testing.assert_allclose([la[s] for s in (1, 2, 3)], [lw[s] for s in (1, 2, 3)], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 restored_params(str(tmp_path / "whole")), restored_params(str(tmp_path / "accum")))


def test_micro_batches_must_divide_the_per_device_batch(tmp_path):
    config = tiny_supervised_config(mesh=(("data", 8),), grad_accum_steps=3)
    with pytest.raises(ValueError, match="grad_accum_steps=3"):
        train_and_evaluate(config, str(tmp_path))


def test_profile_trace_and_compiled_stats_are_written(tmp_path):
    config = tiny_supervised_config(total_steps=4, profile_steps=(2, 3), peak_flops_per_device=1e12)
    last = train_and_evaluate(config, str(tmp_path))
    traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces
    first = read_metrics(str(tmp_path))[0]
    # A dense MLP 64->32->10 at batch 32: forward + weight gradients are 2 x 2*32*(64*32 + 32*10)
    # matmul FLOPs; the input gradient of the head and elementwise ops add less than as much again.
    matmul = 2 * 32 * (64 * 32 + 32 * 10)
    assert 2 * matmul <= first["perf/flops_per_device"] <= 4 * matmul
    assert first["perf/temp_bytes"] >= 0 and first["perf/compile_s"] > 0
    assert last["perf/mfu"] == pytest.approx(first["perf/flops_per_device"] / last["perf/step_time_s"] / 1e12)


@pytest.mark.parametrize("kind, override, expected", [
    ("NVIDIA H100 80GB HBM3", 0.0, 989e12), ("TPU v5 lite", 0.0, 197e12), ("cpu", 0.0, None), ("cpu", 5.0, 5.0),
])
def test_peak_flops_table(kind, override, expected):
    assert metrics.peak_flops_per_device(kind, override) == expected
