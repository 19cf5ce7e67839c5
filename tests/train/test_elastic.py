"""Moving a run: resumed on another process count, device count or mesh, it continues bitwise.

A run is trained to step 6 (checkpoints at 3 and 6); dropping checkpoint 6
leaves the workdir as a run killed after its step-3 save. Resumed under
another layout, it must reproduce step 6 bit for bit: the same global batches
in the same order (a function of (seed, step)) and the same sums.
"""
import os
import shutil

import jax
import numpy as np
import pytest

from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import splits
from jaxsup.errors import CheckpointError
from jaxsup.train import train_and_evaluate

from helpers import restored_params, tiny_supervised_config, train_losses
from test_multihost import cli_overrides, run_multihost

STEPS, SAVED = 6, 3
SPLIT_MESH = (("data", 4), ("model", 2))  # batch over both axes: still 8 shards of the batch


def config(mesh=(("data", -1),), **overrides):
    return tiny_supervised_config(total_steps=STEPS, mesh=mesh, **{"checkpoint.every": SAVED, **overrides})


def interrupt_after_first_save(workdir) -> None:
    """Drops the checkpoints after step SAVED: the workdir of a run killed after that save."""
    ckpts = os.path.join(workdir, "checkpoints")
    for step in os.listdir(ckpts):
        if int(step) > SAVED:
            shutil.rmtree(os.path.join(ckpts, step))


def assert_bitwise_equal(expected, actual) -> None:
    jax.tree.map(np.testing.assert_array_equal, expected, actual)


def global_batches(processes: int, start: int, count: int) -> list[dict]:
    """Global batches start..start+count-1 as `processes` processes read them (each its own iterator)."""
    cfg = config()
    source = splits.open_split(cfg.data, cfg.data.train_split)
    data = pipeline.train_dataset(source, preprocess.build(cfg.data.preprocess), cfg.batch_size, cfg.seed,
                                  process_count=processes)
    local = [pipeline.train_iterator(data, start, process_index=p, process_count=processes, prefetch=1, workers=1)
             for p in range(processes)]
    return [jax.tree.map(lambda *xs: np.concatenate(xs), *[next(it) for it in local]) for _ in range(count)]


@pytest.mark.parametrize("processes", [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(processes):
    """The same examples in the same order at every step, resumed at any step, for any process count."""
    for start in (0, 43):  # 1437 examples / 32 per batch: epoch 0 ends inside batch 44
        for one, many in zip(global_batches(1, start, 3), global_batches(processes, start, 3)):
            jax.tree.map(np.testing.assert_array_equal, one, many)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """1 process x 8 devices, mesh data=8, trained to STEPS: (workdir, params, losses)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    train_and_evaluate(config(), workdir)
    return workdir, restored_params(workdir), train_losses(workdir)


def test_resume_on_another_mesh_is_bitwise(straight_run, tmp_path):
    source, params, losses = straight_run
    shutil.copytree(source, tmp_path / "moved")
    interrupt_after_first_save(tmp_path / "moved")
    train_and_evaluate(config(SPLIT_MESH, batch_axes=("data", "model")), str(tmp_path / "moved"))
    assert_bitwise_equal(params, restored_params(str(tmp_path / "moved")))
    moved = train_losses(str(tmp_path / "moved"))
    assert [moved[s] for s in range(SAVED + 1, STEPS + 1)] == [losses[s] for s in range(SAVED + 1, STEPS + 1)]


def test_a_finished_run_drew_its_curves(straight_run):
    """jaxsup.plot.write_run_plot at the end of a run (checked here to share this run's training)."""
    with open(os.path.join(straight_run[0], "metrics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_changed_global_batch_size_is_refused(straight_run, tmp_path):
    shutil.copytree(straight_run[0], tmp_path / "moved")
    interrupt_after_first_save(tmp_path / "moved")
    with pytest.raises(CheckpointError, match=r"batch_size: checkpoint 32 vs config 64"):
        train_and_evaluate(config(batch_size=64), str(tmp_path / "moved"))
    assert sorted(os.listdir(tmp_path / "moved" / "checkpoints")) == [str(SAVED)]  # nothing written


# Multi-process layouts go through launch/multihost_cpu.sh, one process included: a run
# launched there uses the cross-process collectives (gloo) at any process count, so its
# sums round alike (a plain single-process run reduces in XLA's own order instead).
LAYOUTS = {
    "2x4": dict(processes=2, devices=4, mesh=(("data", -1),)),
    "1x8": dict(processes=1, devices=8, mesh=(("data", -1),)),
    "1x8_split_mesh": dict(processes=1, devices=8, mesh=SPLIT_MESH),
}


def launch(workdir, layout: str):
    spec = LAYOUTS[layout]
    cfg = config(spec["mesh"])
    flags = cli_overrides(cfg) + ["--config.batch_axes=('data', 'model')" if spec["mesh"] == SPLIT_MESH else
                                  "--config.batch_axes=('data',)"]
    result = run_multihost(workdir, flags, processes=spec["processes"], devices=spec["devices"])
    logs = os.path.join(workdir, "logs", "process_0.log")
    assert result.returncode == 0, result.stderr + (open(logs).read()[-3000:] if os.path.exists(logs) else "")


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("2x4", "1x8"), ("1x8", "2x4"), ("2x4", "1x8_split_mesh")])
def test_resume_on_another_process_count_is_bitwise(tmp_path, first, then):
    launch(tmp_path / "straight", first)
    shutil.copytree(tmp_path / "straight", tmp_path / "moved", ignore=shutil.ignore_patterns("logs"))
    interrupt_after_first_save(tmp_path / "moved")
    launch(tmp_path / "moved", then)
    assert_bitwise_equal(restored_params(str(tmp_path / "straight")), restored_params(str(tmp_path / "moved")))
    straight, moved = train_losses(str(tmp_path / "straight")), train_losses(str(tmp_path / "moved"))
    assert [moved[s] for s in range(1, STEPS + 1)] == [straight[s] for s in range(1, STEPS + 1)]
