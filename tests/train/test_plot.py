"""jaxsup.plot: curves from metrics.jsonl, the CLI, a run's picture; the progress line's timing.

That a finished run writes <workdir>/metrics.png is checked in test_elastic.py (on its shared run).
"""
import json
import os
import subprocess
import sys

import pytest

from jaxsup import metrics as metrics_lib, plot
from jaxsup.errors import WorkdirError

from helpers import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(workdir, records) -> str:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(workdir)


def fake_run(workdir, steps=20, scale=1.0) -> str:
    """Train loss every step, perf lines, and an eval every 5 steps, with a step replayed after a resume."""
    records = [{"step": 0, "perf/compile_s": 1.0}]
    for s in range(1, steps + 1):
        records.append({"step": s, "train/loss": scale * 2.3 / s, "train/nonfinite": 0.0, "perf/steps_per_s": 9.0})
        if s % 5 == 0:
            records.append({"step": s, "test/accuracy": 1 - 1 / s, "test/count": 360.0, "test/loss": 1 / s})
    records.append({"step": 7, "train/loss": 99.0})  # a replayed step: the last record wins
    return write_run(workdir, records)


def test_curves_take_train_loss_and_every_eval_metric_last_record_per_step(tmp_path):
    got = plot.curves(plot.read_records(fake_run(tmp_path / "a")))
    assert list(got) == ["train/loss", "test/accuracy", "test/loss"]  # no perf/*, counts, other train/*
    steps, values = got["train/loss"]
    assert steps == list(range(1, 21))
    assert values[6] == 99.0 and values[0] == pytest.approx(2.3)
    assert got["test/accuracy"] == ([5, 10, 15, 20], [0.8, 0.9, 1 - 1 / 15, 0.95])


def test_torn_last_line_is_skipped(tmp_path):
    workdir = write_run(tmp_path, [{"step": 1, "train/loss": 2.0}])
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 2, "train/lo')  # killed mid-write
    assert plot.curves(plot.read_records(workdir)) == {"train/loss": ([1], [2.0])}


def test_labels_are_base_names_unless_two_runs_share_one(tmp_path):
    assert plot.run_labels(["/r/a", "/r/b/"]) == ["a", "b"]
    assert plot.run_labels(["/x/a", "/y/a", "/y/b"]) == ["/x/a", "/y/a", "b"]


def run_plot_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jaxsup.plot", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_cli_overlays_runs_into_one_png(tmp_path):
    a, b = fake_run(tmp_path / "run_a"), fake_run(tmp_path / "run_b", scale=0.5)
    out = tmp_path / "pics" / "runs.png"
    result = run_plot_cli(a, b, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 20_000  # three panels with two lines each, not an empty canvas


@pytest.mark.parametrize("case, expected", [
    ("no_metrics", "has no metrics.jsonl"),
    ("no_matplotlib", "matplotlib is not installed (pip install 'jaxsup[plot]'"),
])
def test_cli_errors_are_one_line(tmp_path, case, expected):
    env = None
    workdir = str(tmp_path / "empty")
    if case == "no_matplotlib":
        workdir = fake_run(tmp_path / "run")
        blocker = tmp_path / "blocker" / "matplotlib"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
        env = {"PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_plot_cli(workdir, "--out", str(tmp_path / "x.png"), env=env)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.stderr
    assert not (tmp_path / "x.png").exists()


def test_run_plot_is_skipped_and_logged_without_matplotlib(tmp_path, monkeypatch, caplog):
    workdir = fake_run(tmp_path / "run")
    monkeypatch.setattr(plot, "pyplot", lambda: None)
    with caplog.at_level("INFO", logger="jaxsup"):
        assert plot.write_run_plot(workdir) is None
    assert "matplotlib is not installed" in caplog.text
    assert not os.path.exists(os.path.join(workdir, "metrics.png"))
    with pytest.raises(WorkdirError):
        plot.plot_runs([str(tmp_path / "nowhere")], str(tmp_path / "x.png"))


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_format_duration(seconds, text):
    assert metrics_lib.format_duration(seconds) == text


def test_eta_is_the_steps_left_at_the_mean_rate():
    assert metrics_lib.eta_seconds(10, 100, 10, 5.0, 9.0) is None  # nothing timed yet
    assert metrics_lib.eta_seconds(30, 100, 10, 5.0, 9.0) == pytest.approx(70 * 4.0 / 20)


def test_progress_line_shows_elapsed_and_eta(tmp_path, capsys):
    clock = iter([100.0, 101.0, 111.0, 121.0])  # writer start, then three progress lines
    writer = metrics_lib.MetricWriter(str(tmp_path), total_steps=100, interactive=False, clock=lambda: next(clock))
    for step in (10, 20, 30):
        writer.progress(step, {"train/loss": 1.5})
    writer.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["step 10/100 loss=1.5 elapsed=1s eta=?", "step 20/100 loss=1.5 elapsed=11s eta=1m20s",
                     "step 30/100 loss=1.5 elapsed=21s eta=1m10s"]


def test_a_failing_picture_does_not_fail_a_finished_run(tmp_path, monkeypatch):
    from helpers import tiny_supervised_config
    from jaxsup import plot, train

    def broken(workdir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "write_run_plot", broken)
    last = train.train_and_evaluate(tiny_supervised_config(total_steps=2), str(tmp_path / "run"))
    assert "train/loss" in last and (tmp_path / "run" / "config.json").exists()
