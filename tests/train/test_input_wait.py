"""perf/input_wait_frac: the share of a log interval spent in next(batches), and when the progress line shows it."""
import pytest

from jaxsup import metrics as metrics_lib
from jaxsup.train import train_and_evaluate

from helpers import read_metrics, tiny_supervised_config


def test_step_timer_reports_the_waiting_share_of_each_lap(monkeypatch):
    clock = iter([0.0, 10.0, 30.0])  # start, first lap, second lap
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: next(clock))
    timer = metrics_lib.StepTimer(batch_size=8)
    timer.waited(4.0)
    first = timer.lap(0)  # the first lap only starts the clock
    assert first == {}
    timer.waited(3.0)
    timer.waited(12.0)
    lap = timer.lap(4)  # 20 s over 4 steps, 15 s of it waiting for batches
    assert lap["perf/step_time_s"] == pytest.approx(5.0) and lap["perf/input_wait_frac"] == pytest.approx(0.75)


@pytest.mark.parametrize("frac,shown", [(0.2, False), (0.5, True), (0.9, True)])
def test_progress_line_names_input_wait_only_when_input_bound(frac, shown):
    last = {"train/loss": 1.0, "perf/steps_per_s": 3.0, "perf/input_wait_frac": frac, "train/lr": 0.1}
    keys = metrics_lib.progress_keys(last)
    assert ("perf/input_wait_frac" in keys) == shown and set(keys) - {"perf/input_wait_frac"} == {
        "train/loss", "perf/steps_per_s"}


def test_train_loop_logs_input_wait_frac(tmp_path):
    train_and_evaluate(tiny_supervised_config(total_steps=4), str(tmp_path))
    fracs = [r["perf/input_wait_frac"] for r in read_metrics(str(tmp_path)) if "perf/input_wait_frac" in r]
    assert len(fracs) == 3 and all(0.0 <= f <= 1.0 for f in fracs)  # steps 2..4 (step 1 starts the timer)
