"""The workdir never loses or misrecords a run; each user mistake ends in one named cause (issue 19, items 1-9)."""
import errno
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from jaxsup import checkpoint, metrics as metrics_lib, sharding, workdir as workdir_lib
from jaxsup.config import load_config
from jaxsup.errors import CheckpointError, ConfigError, NonFiniteError, WorkdirError
from jaxsup.experiment import build_task
from jaxsup.train import train_and_evaluate

from helpers import ROOT, read_metrics, restored_params, run_cli, tiny_supervised_config, train_losses


# The tests sharing `finished_run` stay on one xdist worker (pyproject: --dist loadgroup), so it is trained once.
SHARED_RUN = pytest.mark.xdist_group("workdir_finished_run")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 6-step run: checkpoints 3 and 6, metrics, config.json (copy it before changing it)."""
    path = str(tmp_path_factory.mktemp("finished") / "run")
    train_and_evaluate(tiny_supervised_config(), path)
    return path


@pytest.fixture
def run_copy(finished_run, tmp_path):
    path = str(tmp_path / "run")
    shutil.copytree(finished_run, path)
    return path


# 1 -------------------------------------------------------------- unsafe paths
@pytest.mark.parametrize("name, char", [("run[x]", "'['"), ("train[:5%]", "'%'"), ("a*b", "'*'")])
def test_workdir_with_glob_or_percent_chars_is_refused_before_any_step(tmp_path, name, char):
    with pytest.raises(WorkdirError, match=f"contains .*{re.escape(char)}"):
        train_and_evaluate(tiny_supervised_config(), str(tmp_path / name))
    assert not os.path.exists(tmp_path / name)


def test_a_first_checkpoint_that_does_not_read_back_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lib, "UNSAFE_CHARS", "")  # let the '[x]' path through to Orbax
    with pytest.raises(CheckpointError, match=r"checkpoint just saved .*/3\) does not read back"):
        train_and_evaluate(tiny_supervised_config(), str(tmp_path / "run[x]"))
    assert max(train_losses(str(tmp_path / "run[x]"))) == 3  # stopped at the first save, not at the end


# 2 ------------------------------------------------------------------ keep=0
def test_keep_zero_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.checkpoint\.keep=0"):
        train_and_evaluate(tiny_supervised_config(**{"checkpoint.keep": 0}), str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl")


# 3 ------------------------------------------------- config.json of a refused resume
@SHARED_RUN
def test_a_refused_resume_leaves_config_json_alone(run_copy):
    before = open(os.path.join(run_copy, "config.json")).read()
    with pytest.raises(CheckpointError, match="seed: checkpoint 0 vs config 1"):
        train_and_evaluate(tiny_supervised_config(seed=1, total_steps=9), run_copy)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        train_and_evaluate(tiny_supervised_config(total_steps=9, **{"model.widths": (48,)}), run_copy)
    assert open(os.path.join(run_copy, "config.json")).read() == before
    assert not [f for f in os.listdir(run_copy) if f.startswith(".")]  # no temporary file left


def test_config_json_is_written_by_a_fresh_run_only_once_it_starts(tmp_path):
    with pytest.raises(ValueError, match="Unknown model"):
        train_and_evaluate(tiny_supervised_config(model_name="resnet9000"), str(tmp_path))
    assert not os.path.exists(tmp_path / "config.json")


def test_a_refused_run_leaves_a_new_workdir_as_it_found_it(tmp_path):
    """Refused after the workdir was made (an unknown model): no lock file, tb/ or config.json is left."""
    workdir = tmp_path / "new_run"
    with pytest.raises(ValueError, match="Unknown model"):
        train_and_evaluate(tiny_supervised_config(model_name="resnet9000"), str(workdir))
    assert not workdir.exists()


def test_a_failed_run_keeps_its_record(tmp_path, nan_lr_allowed):
    """A run that logged metrics before it failed keeps its workdir (the record of why)."""
    workdir = tmp_path / "diverged"
    with pytest.raises(NonFiniteError):
        train_and_evaluate(tiny_supervised_config(**{"optim.lr": float("nan")}), str(workdir))
    assert workdir.exists()


# 4 -------------------------------------------------------------------- lock
HOLD_LOCK = ("import sys, time; from jaxsup.workdir import WorkdirLock; WorkdirLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); time.sleep(120)")


def test_a_second_run_on_a_workdir_in_use_stops_naming_the_holder(tmp_path, caplog):
    workdir = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        expected = f"in use by PID {holder.pid} on {socket.gethostname()} since 20"
        with pytest.raises(WorkdirError, match=expected):
            train_and_evaluate(tiny_supervised_config(), workdir)
        assert not os.path.exists(tmp_path / "metrics.jsonl")
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its record stays, the kernel dropped its flock.
    assert json.load(open(tmp_path / "lock"))["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, "jaxsup"), workdir_lib.WorkdirLock(workdir):
        assert json.load(open(tmp_path / "lock"))["pid"] == os.getpid()
    assert f"taking over the lock left by a run that is gone (PID {holder.pid}" in caplog.text


def test_without_file_locks_the_pid_record_decides(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_locks)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}
    (tmp_path / "lock").write_text(json.dumps(record))  # a live holder on this host
    with pytest.raises(WorkdirError, match=f"in use by PID {os.getpid()} on .* since 2026-01-01T00:00:00"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "lock").write_text(json.dumps({**record, "pid": int(dead.stdout)}))
    with caplog.at_level(logging.WARNING, "jaxsup"), workdir_lib.WorkdirLock(str(tmp_path)):
        assert json.load(open(tmp_path / "lock"))["pid"] == os.getpid()
    assert "file locks are not supported here" in caplog.text and f"PID {int(dead.stdout)}" in caplog.text
    assert (tmp_path / "lock").read_text() == ""  # released: the record is emptied, the file stays


# 5 ------------------------------------------------------------ nan_policy=skip
def test_skipping_every_step_stops_after_max_consecutive_skips(tmp_path, nan_lr_allowed):
    config = tiny_supervised_config(nan_policy="skip", max_consecutive_skips=2, **{"optim.lr": float("nan")})
    with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row up to step 3 .*max_consecutive_skips=2"):
        train_and_evaluate(config, str(tmp_path))
    assert checkpoint.Checkpointer(str(tmp_path), every=3).all_steps() == []  # step 3 was not saved


def test_skipped_steps_are_counted_in_the_summary(tmp_path, caplog, nan_lr_allowed):
    config = tiny_supervised_config(nan_policy="skip", max_consecutive_skips=6, **{"optim.lr": float("nan")})
    with caplog.at_level(logging.INFO, "jaxsup"):
        assert train_and_evaluate(config, str(tmp_path))["train/skipped_steps"] == 6
    assert "Done at step 6: 6 non-finite step(s) skipped" in caplog.text


def test_the_loop_reads_no_step_output_back_between_log_steps(tmp_path, monkeypatch):
    """Issue 18: no host sync per step; the nan policy reads the flags at log/eval/save steps only."""
    from jax._src.array import ArrayImpl

    reads, at_step = [0], {}
    fetch = ArrayImpl._value.fget

    def counted(self):
        if threading.current_thread() is threading.main_thread():
            reads[0] += 1
        return fetch(self)

    monkeypatch.setattr(ArrayImpl, "_value", property(counted))
    monkeypatch.setattr(metrics_lib.Profiler, "after_step", lambda self, step, out: at_step.setdefault(step, reads[0]))
    train_and_evaluate(tiny_supervised_config(log_every=6, **{"checkpoint.every": 6}), str(tmp_path))
    assert sorted(at_step) == [1, 2, 3, 4, 5, 6] and at_step[5] == at_step[1], at_step


def test_a_nan_found_at_a_later_log_step_is_named_at_its_own_step(tmp_path, nan_lr_allowed):
    config = tiny_supervised_config(log_every=3, **{"optim.lr": float("nan")})
    with pytest.raises(NonFiniteError, match=r"at step 1; .*last saved step: None"):
        train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "metrics.jsonl") or max(train_losses(str(tmp_path)) or [0]) == 0


# 6 ----------------------------------------------------- corrupt newest checkpoint
def _corrupt(run: str, step: int) -> None:
    state = os.path.join(run, "checkpoints", str(step), "state")
    for root, _, files in os.walk(state):
        for name in files:
            if name not in ("commit_success.txt",):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")


@SHARED_RUN
def test_a_corrupt_newest_checkpoint_falls_back_and_is_kept(run_copy, caplog):
    _corrupt(run_copy, 6)
    with caplog.at_level(logging.WARNING, "jaxsup"):
        train_and_evaluate(tiny_supervised_config(), run_copy)
    assert f"Checkpoint {run_copy}/checkpoints/6 cannot be read" in caplog.text
    assert os.listdir(os.path.join(run_copy, "checkpoints_unreadable", "6", "state"))  # moved aside, not deleted
    assert checkpoint.Checkpointer(run_copy, every=3).all_steps() == [3, 6]  # step 6 trained and saved again
    assert restored_params(run_copy)  # and it reads back


@SHARED_RUN
def test_strict_mode_names_the_directory_to_move_aside(run_copy):
    _corrupt(run_copy, 6)
    config = tiny_supervised_config(**{"checkpoint.strict": True})
    with pytest.raises(CheckpointError, match=f"Checkpoint {run_copy}/checkpoints/6 cannot be read .*move that "
                                              "directory aside .* to resume from step 3"):
        train_and_evaluate(config, run_copy)
    assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == ["3", "6"]


# 7 ----------------------------------------------------------- relative paths
@SHARED_RUN
def test_relative_run_paths_are_resolved(finished_run, monkeypatch):
    monkeypatch.chdir(os.path.dirname(finished_run))
    params = jax.tree.map(np.asarray, checkpoint.restore_subtree("run", "params"))
    jax.tree.map(np.testing.assert_array_equal, params, restored_params(finished_run))
    config = load_config(os.path.join(ROOT, "configs/kd_digits.py:runlocal"), {
        "distill.teacher.path": "run", "model_name": "mlp", "model": dict(widths=(16,), num_classes=10),
        "mesh": (("data", 1),)})
    frozen = build_task(config, sharding.make_mesh((("data", 1),))).load_frozen()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, frozen["teacher"]["params"]), params)


# 8 ------------------------------------------------------ one line, not a traceback
def test_missing_config_file_is_one_line_and_creates_nothing(tmp_path):
    result = run_cli("--config", "configs/no_such.py", "--workdir", str(tmp_path / "w"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "ConfigError: Config file 'configs/no_such.py' does not exist." in result.stderr
    assert not os.path.exists(tmp_path / "w")


def test_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("not a directory")
    result = run_cli("--config", "configs/supervised_digits.py", "--workdir", str(tmp_path / "f"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"WorkdirError: --workdir '{tmp_path / 'f'}' is a file" in result.stderr
    assert (tmp_path / "f").read_text() == "not a directory"


def test_read_only_workdir_is_a_workdir_error(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(workdir_lib.tempfile, "TemporaryFile", read_only)  # root ignores chmod: fake the mount
    with pytest.raises(WorkdirError, match="cannot be written \\(Read-only file system\\)"):
        train_and_evaluate(tiny_supervised_config(), str(tmp_path))


# 9 ---------------------------------------------------- metrics.jsonl after resume
@SHARED_RUN
def test_metrics_keep_one_record_per_step_after_a_resume(run_copy, caplog):
    # A run extended to 9 steps was killed after logging steps 7 and 8 (last save: 6), mid-line.
    with open(os.path.join(run_copy, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "perf/compile_s": 1.0}\n{"step": 7, "train/loss": 9.0}\n'
                '{"step": 8, "train/loss": 9.0}\n{"step": 8, "train/lo')
    with caplog.at_level(logging.WARNING, "jaxsup"):
        train_and_evaluate(tiny_supervised_config(total_steps=9), run_copy)
    assert "total_steps changed from 6 (checkpoint) to 9" in caplog.text
    train_and_evaluate(tiny_supervised_config(total_steps=9), run_copy)  # nothing left: evaluates step 9 again
    records = read_metrics(run_copy)
    kinds = [(r["step"], "train" if "train/loss" in r else "perf" if "perf/compile_s" in r else "eval")
             for r in records]
    assert sorted(kinds) == sorted({*kinds}), kinds  # one record of each kind per step
    assert sorted(s for s, k in kinds if k == "train") == list(range(1, 10))
    assert sorted(s for s, k in kinds if k == "eval") == [6, 9]
    assert 9.0 not in train_losses(run_copy).values()
