"""Pod paths on one machine: 2 processes x 4 CPU devices, SIGKILL anywhere, mesh changes."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxsup import checkpoint
from jaxsup.train import train_and_evaluate

from helpers import ROOT, read_metrics, restored_params, tiny_supervised_config, train_losses

CONFIG = os.path.join(ROOT, "configs/supervised_digits.py")
LAUNCH = os.path.join(ROOT, "launch", "multihost_cpu.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_overrides(config) -> list[str]:
    """--config.* flags reproducing the fields the tiny test configs change."""
    return [
        f"--config.model_name={config.model_name}", f"--config.model.widths={tuple(config.model.widths)}",
        f"--config.batch_size={config.batch_size}", f"--config.total_steps={config.total_steps}",
        f"--config.log_every={config.log_every}", f"--config.checkpoint.every={config.checkpoint.every}",
        f"--config.checkpoint.async_save={config.checkpoint.async_save}",
        f"--config.evals.test.every={config.evals.test.every}", f"--config.evals.test.batch_size={config.evals.test.batch_size}",
        f"--config.mesh={tuple(config.mesh)}", f"--config.partition_rules={tuple(config.partition_rules)}",
    ]


def run_multihost(workdir, config, processes=2, devices=4, timeout=240, spec=CONFIG + ":runlocal"):
    """Runs `spec` (+ overrides: a config to mirror, or a list of flags) on processes x devices."""
    overrides = config if isinstance(config, list) else cli_overrides(config)
    cmd = ["bash", LAUNCH, "--processes", str(processes), "--devices", str(devices), "--port", str(free_port()),
           "--", "--config", spec, "--workdir", str(workdir), *overrides]
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_match_one_process_and_restore_in_one(tmp_path):
    config = tiny_supervised_config(total_steps=4, mesh=(("data", -1),), partition_rules=(("kernel", "fsdp"),))
    result = run_multihost(tmp_path / "mh", config)
    assert result.returncode == 0, result.stderr + open(tmp_path / "mh" / "logs" / "process_1.log").read()[-2000:]
    train_and_evaluate(config, str(tmp_path / "single"))  # 1 process x 8 devices, same global batches.
    l2, l1 = train_losses(str(tmp_path / "mh")), train_losses(str(tmp_path / "single"))
    np.testing.assert_allclose([l2[s] for s in range(1, 5)], [l1[s] for s in range(1, 5)], rtol=1e-5)
    # Only process 0 wrote metrics: one record per step.
    assert [r["step"] for r in read_metrics(str(tmp_path / "mh")) if "train/loss" in r] == [1, 2, 3, 4]
    # The 2-process checkpoint restores and trains on in a 1-process, 1-device run.
    train_and_evaluate(tiny_supervised_config(total_steps=6), str(tmp_path / "mh"))
    assert max(train_losses(str(tmp_path / "mh"))) == 6


def test_ring_contrastive_loss_across_processes_matches_one_process(tmp_path):
    """CLIP with the device-ring loss: the ring crosses the process boundary (2 x 4 devices)."""
    from jaxsup.config import load_config

    spec = os.path.join(ROOT, "configs/clip_digits.py:ring,runlocal")
    flags = ["--config.total_steps=3", "--config.log_every=1", "--config.batch_size=64"]
    result = run_multihost(tmp_path / "mh", flags, spec=spec)
    assert result.returncode == 0, open(tmp_path / "mh" / "logs" / "process_0.log").read()[-3000:]
    single = load_config(spec, {"total_steps": 3, "log_every": 1, "batch_size": 64})
    train_and_evaluate(single, str(tmp_path / "single"))
    l2, l1 = train_losses(str(tmp_path / "mh")), train_losses(str(tmp_path / "single"))
    np.testing.assert_allclose([l2[s] for s in (1, 2, 3)], [l1[s] for s in (1, 2, 3)], rtol=1e-5)


def test_unreachable_coordinator_fails_fast_with_a_clear_message(tmp_path):
    env = {**os.environ, "JAXSUP_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
           "JAXSUP_NUM_PROCESSES": "2", "JAXSUP_PROCESS_ID": "1"}
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "jaxsup.train", "--config", CONFIG, "--workdir", str(tmp_path),
                             "--init_timeout=5"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Could not join the multi-process run at 127.0.0.1" in result.stderr
    assert time.time() - start < 90


def test_process_count_must_divide_the_batch(tmp_path):
    config = tiny_supervised_config(batch_size=33, mesh=(("data", -1),))
    result = run_multihost(tmp_path, config, devices=1, timeout=120)
    assert result.returncode != 0
    log = open(tmp_path / "logs" / "process_0.log").read()
    assert "batch_size=33" in log


@pytest.mark.parametrize("mesh, rules", [
    ((("data", 1),), ()),
    ((("data", 2), ("model", 4)), (("dense_0/kernel", (None, "model")), ("head/kernel", ("model", None)))),
])
def test_fsdp_checkpoint_restores_onto_other_meshes(tmp_path, mesh, rules):
    fsdp = tiny_supervised_config(total_steps=3, mesh=(("data", 8),), partition_rules=(("kernel", "fsdp"),))
    train_and_evaluate(fsdp, str(tmp_path))
    saved = restored_params(str(tmp_path))
    resumed = tiny_supervised_config(total_steps=3, mesh=mesh, partition_rules=rules)
    metrics = train_and_evaluate(resumed, str(tmp_path))  # Restores step 3, only evaluates.
    assert metrics["test/count"] == 360
    jax.tree.map(np.testing.assert_array_equal, saved, restored_params(str(tmp_path)))
    # And trains on under the new layout.
    train_and_evaluate(tiny_supervised_config(total_steps=5, mesh=mesh, partition_rules=rules), str(tmp_path))
    assert max(train_losses(str(tmp_path))) == 5


def test_nan_skip_policy_drops_the_update_and_keeps_training(tmp_path, nan_lr_allowed):
    config = tiny_supervised_config(nan_policy="skip", max_consecutive_skips=6, **{"optim.lr": float("nan")})
    metrics = train_and_evaluate(config, str(tmp_path))
    assert metrics["train/skipped_steps"] == 6
    params = restored_params(str(tmp_path))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def _launch(workdir, overrides):
    return subprocess.Popen([sys.executable, "-m", "jaxsup.train", "--config", CONFIG, "--workdir", str(workdir),
                             *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_anywhere_then_resume_is_bitwise_exact(tmp_path):
    """SIGKILL at random moments (async checkpoint writes included) never loses the run."""
    steps = 120
    config = tiny_supervised_config(total_steps=steps, log_every=1, **{"checkpoint.every": 4, "checkpoint.async_save": True})
    overrides = cli_overrides(config)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    rng = random.Random(0)
    for attempt in range(3):
        proc = _launch(killed, overrides)
        target = (attempt + 1) * steps // 4 + rng.randint(0, 10)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(killed / "metrics.jsonl") and max(train_losses(str(killed)) or [0]) >= target:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = checkpoint.Checkpointer(str(killed), every=4).latest_step()
        assert latest is not None, "no restorable checkpoint after a kill"
        assert checkpoint.restore_subtree(str(killed), "params") is not None
    assert _launch(killed, overrides).wait(timeout=180) == 0
    assert _launch(straight, overrides).wait(timeout=180) == 0
    jax.tree.map(np.testing.assert_array_equal, restored_params(str(straight)), restored_params(str(killed)))
    # Its record: one train line per step (replayed steps superseded), the straight run's losses.
    assert [r["step"] for r in read_metrics(str(killed)) if "train/loss" in r] == list(range(1, steps + 1))
    assert train_losses(str(killed)) == train_losses(str(straight))


@pytest.mark.parametrize("script, args, expected", [
    ("multihost_cpu.sh", ["--processes", "3", "--"], "JAXSUP_PROCESS_ID=2"),
    ("local.sh", ["--gpu", "1", "--"], "CUDA_VISIBLE_DEVICES=1"),
    ("slurm.sh", [], "srun"),
    ("tpu_pod.sh", ["--tpu", "pod", "--zone", "z", "--"], "--worker=all"),
])
def test_launch_scripts_dry_run_print_the_commands(script, args, expected, tmp_path):
    cmd = ["bash", os.path.join(ROOT, "launch", script), "--dry-run", *args, "--config", CONFIG,
           "--workdir", str(tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout and "jaxsup.train" in result.stdout
    assert not os.listdir(tmp_path)  # A dry run creates nothing.


def test_heartbeat_timeout_reaches_jax_distributed(monkeypatch):
    from jaxsup import distributed
    from jaxsup.errors import LaunchError

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv(distributed.ENV_HEARTBEAT, raising=False)
    assert distributed.initialize("127.0.0.1:1", 2, 0, timeout_s=5)  # process 0 waits for no one
    monkeypatch.setenv(distributed.ENV_HEARTBEAT, "7")
    distributed.initialize("127.0.0.1:1", 2, 0, timeout_s=5)
    distributed.initialize("127.0.0.1:1", 2, 0, timeout_s=5, heartbeat_timeout_s=9)  # the flag beats the env
    distributed.initialize("127.0.0.1:1", 1, None, timeout_s=5)  # one process given an address joins too
    assert [c["heartbeat_timeout_seconds"] for c in calls] == [100, 7, 9, 7]
    assert (calls[-1]["num_processes"], calls[-1]["process_id"]) == (1, 0)
    with pytest.raises(LaunchError, match="heartbeat timeout 0 s"):
        distributed.initialize("127.0.0.1:1", 2, 0, heartbeat_timeout_s=0)
    monkeypatch.delenv(distributed.ENV_HEARTBEAT)
    assert not distributed.initialize(None, 1, None)  # a plain single process: no jax.distributed
    assert len(calls) == 4


@pytest.mark.slow
def test_a_dead_peer_stops_the_run_after_the_heartbeat_timeout(tmp_path):
    """SIGKILL process 1 mid-run: process 0 stops about --heartbeat_timeout later (JAX's default: 100 s)."""
    heartbeat, workdir, port = 5, tmp_path / "run", free_port()
    config = tiny_supervised_config(total_steps=10**6, mesh=(("data", -1),), **{"checkpoint.every": 10**6})
    procs = []
    for i in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAXSUP_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAXSUP_NUM_PROCESSES": "2", "JAXSUP_PROCESS_ID": str(i)}
        cmd = [sys.executable, "-m", "jaxsup.train", "--config", CONFIG + ":runlocal", "--workdir", str(workdir),
               *cli_overrides(config), f"--heartbeat_timeout={heartbeat}"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(tmp_path / f"process_{i}.log", "w"),
                                      stderr=subprocess.STDOUT))
    try:
        deadline = time.time() + 240
        while not (workdir / "metrics.jsonl").exists() or max(train_losses(str(workdir)) or [0]) < 3:
            assert time.time() < deadline and procs[0].poll() is None, "the run did not start"
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        assert procs[0].wait(timeout=heartbeat + 60) != 0
        assert time.time() - killed < heartbeat + 30
        assert "stopped sending heartbeats" in (tmp_path / "process_0.log").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def test_sigterm_to_the_launcher_waits_for_every_save_and_exits_0(tmp_path):
    """SIGTERM reaches both processes; the launcher waits while they save, exits 0; a relaunch keeps the logs."""
    workdir = tmp_path / "mh"
    config = tiny_supervised_config(total_steps=5000, log_every=1, mesh=(("data", -1),), **{"checkpoint.every": 10_000})
    cmd = ["bash", LAUNCH, "--processes", "2", "--devices", "2", "--port", str(free_port()),
           "--", "--config", CONFIG + ":runlocal", "--workdir", str(workdir), *cli_overrides(config)]
    env = {**os.environ, "PYTHON": sys.executable}
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and launcher.poll() is None:
        if (workdir / "metrics.jsonl").exists() and any(r.get("step", 0) >= 10 for r in read_metrics(str(workdir))):
            break
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 0, err + open(workdir / "logs" / "process_0.log").read()[-2000:]
    saved = checkpoint.Checkpointer(str(workdir), every=10_000).latest_step()
    assert saved is not None and 10 <= saved < 5000, saved
    first_log = open(workdir / "logs" / "process_0.log").read()
    relaunch = run_multihost(workdir, cli_overrides(tiny_supervised_config(total_steps=saved, mesh=(("data", -1),))), devices=2)
    assert relaunch.returncode == 0, relaunch.stderr
    assert open(workdir / "logs" / "process_0.1.log").read() == first_log  # the first attempt's log is kept
    assert sorted(os.listdir(workdir / "logs")) == ["process_0.1.log", "process_0.log", "process_1.1.log",
                                                    "process_1.log"]
