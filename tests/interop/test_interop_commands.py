"""`python -m jaxsup.eval` and `python -m jaxsup.export` on a digits-size open_clip-architecture run.

The module shares one run's checkpoint (configs/clip_digits_openclip.py:runlocal,bytes:
open_clip's ViT layout; the byte tokenizer, so no [clip] extra is needed), written the way
train.py writes it (a TrainState of the initial parameters; no train step is compiled, to keep
the test fast). Exported files are read back with `--init` and must give the run's own
parameters and the same metrics as evaluating its workdir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxsup import checkpoint, eval as eval_lib, experiment, export, sharding
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import convert

from helpers import ROOT, apply_overrides

CONFIG = os.path.join(ROOT, "configs/clip_digits_openclip.py:runlocal,bytes")
pytestmark = pytest.mark.xdist_group("interop_commands")  # one worker builds the shared checkpoint


def digits_config(**overrides):
    c = load_config(CONFIG)
    return apply_overrides(c, {"mesh": (("data", 1),), "checkpoint.async_save": False, **overrides})


def forbidden(*args, **kwargs):
    raise AssertionError("jaxsup.eval must not build an optimizer or a train step")


def save_initial_run(config, workdir: str) -> None:
    """A checkpoint at step 1 of `config`'s initial parameters in `workdir`, as train.py writes it."""
    mesh = sharding.make_mesh(config.mesh)
    setup = experiment.build_experiment(config, mesh, pipeline.example_batch(config.data))
    state = jax.jit(setup.init_state, out_shardings=setup.state_shardings)(setup.init_rng)
    ckpt = checkpoint.Checkpointer(workdir, every=1, async_save=False)
    ckpt.save(1, state, {"step": 1, "seed": config.seed, "config": config.to_json_best_effort()})
    ckpt.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir holding a checkpoint at step 1, the metrics `jaxsup.eval --workdir` gives for it)."""
    workdir = str(tmp_path_factory.mktemp("clip_oc"))
    config = digits_config()
    save_initial_run(config, workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "make_train_step", forbidden)
        patch.setattr(experiment.optim, "make_optimizer", forbidden)
        metrics = eval_lib.evaluate(config, workdir=workdir)
    return workdir, metrics


def flat_params(workdir):
    return {k: np.asarray(v) for k, v in convert.flatten(checkpoint.restore_subtree(workdir, "params")).items()}


def test_eval_of_a_workdir_runs_the_configs_evaluators(run):
    _, metrics = run  # computed with the optimizer and the train step made to fail
    assert sorted(metrics) == ["zero_shot/count", "zero_shot/top1", "zero_shot/top5"]
    assert metrics["zero_shot/count"] == 360.0 and 0 <= metrics["zero_shot/top1"] <= metrics["zero_shot/top5"] <= 1


@pytest.mark.parametrize("fmt, reader", [("open_clip", "open_clip"), ("npz", "big_vision")])
def test_export_then_init_gives_the_runs_params_and_metrics(run, tmp_path, fmt, reader):
    workdir, logged = run
    out = str(tmp_path / ("model.safetensors" if fmt == "open_clip" else "model.npz"))
    export.export_run(workdir, fmt, out)
    ours = flat_params(workdir)
    back = convert.load_for_model(f"{reader}:{out}", {k: v.shape for k, v in ours.items()})
    assert sorted(back) == sorted(ours)
    for key in ours:
        np.testing.assert_allclose(back[key], ours[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert eval_lib.evaluate(digits_config(), init=f"{reader}:{out}") == pytest.approx(logged, abs=1e-6)


def test_init_of_another_architecture_names_keys_and_shapes(run, tmp_path):
    workdir, _ = run
    out = str(tmp_path / "model.safetensors")
    export.export_run(workdir, "open_clip", out)
    other = digits_config(**{"model.image_kwargs.depth": 1, "model.embed_dim": 32})
    with pytest.raises(CheckpointError) as err:
        eval_lib.evaluate(other, init=f"open_clip:{out}")
    msg = str(err.value)
    assert "not in the model: img/encoder/encoderblock_1/" in msg and "(from visual.transformer.resblocks.1." in msg
    assert "img_proj/kernel (from visual.proj): checkpoint (64, 64) vs model (64, 32)" in msg


def test_bad_command_lines(run, tmp_path):
    workdir, _ = run
    config = digits_config()
    with pytest.raises(ConfigError, match="exactly one of --workdir DIR or --init"):
        eval_lib.evaluate(config)
    with pytest.raises(ConfigError, match="--init must be FORMAT:PATH"):
        eval_lib.evaluate(config, init=str(tmp_path / "x.safetensors"))
    with pytest.raises(ConfigError, match="must end in it"):
        export.export_run(workdir, "npz", str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="Unknown --format"):
        export.export_run(workdir, "onnx", str(tmp_path / "model.onnx"))
    with pytest.raises(CheckpointError, match="Checkpoint path .* does not exist"):
        export.export_run(str(tmp_path / "nowhere"), "npz", str(tmp_path / "model.npz"))
    assert os.listdir(tmp_path) == []  # nothing written by a refused export


def cli(module, *args):
    env = {**os.environ, "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def line_pid(stderr: str) -> str:
    """The PID in the temporary name an export wrote to (`<out>.tmp-<pid>`)."""
    return stderr.split(".tmp-", 1)[1].split(":", 1)[0]


def test_the_two_commands(run, tmp_path):
    """export writes a file once (never over it); eval --init on it prints the metrics as one JSON line."""
    workdir, logged = run
    out = str(tmp_path / "model.safetensors")
    done = cli("jaxsup.export", "--workdir", workdir, "--format", "open_clip", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    again = cli("jaxsup.export", "--workdir", workdir, "--format", "open_clip", "--out", out)
    assert again.returncode != 0
    assert [line for line in again.stderr.splitlines() if line.startswith("jaxsup: error:")] == [
        f"jaxsup: error: ConfigError: Refusing to overwrite {out!r}: choose a new --out path or remove it first."]
    # A folder the process may not write to (/sys refuses even root): one line naming the file.
    denied = cli("jaxsup.export", "--workdir", workdir, "--format", "npz", "--out", "/sys/jaxsup_model.npz")
    assert denied.returncode != 0 and "Traceback" not in denied.stderr, denied.stderr[-2000:]
    assert [line for line in denied.stderr.splitlines() if line.startswith("jaxsup: error:")] == [
        f"jaxsup: error: /sys/jaxsup_model.npz.tmp-{line_pid(denied.stderr)}: Permission denied (nothing half-written "
        "was kept: checkpoints and files are written to a temporary name and renamed; earlier ones are intact)"]
    results = str(tmp_path / "results.json")
    shown = cli("jaxsup.eval", "--config", CONFIG, "--init", f"open_clip:{out}", "--results", results)
    assert shown.returncode == 0, shown.stderr[-2000:]
    printed = json.loads(shown.stdout.strip().splitlines()[-1])
    assert printed == pytest.approx(logged, abs=1e-6)
    with open(results) as f:
        assert json.load(f) == printed
