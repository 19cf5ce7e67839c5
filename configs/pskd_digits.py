"""Progressive self-knowledge distillation (PS-KD) on digits: the CNN of
configs/supervised_digits.py trained towards `(1 - a_t) onehot + a_t p_{t-1}(x)`.

    python -m jaxsup.train --config configs/pskd_digits.py --workdir /tmp/jaxsup/pskd

Task "pskd" (jaxsup/tasks/pskd/task.py); a_t = alpha_T * epoch / epochs, with
600 steps x 128 / 1437 examples = 53 epochs. The previous-epoch predictions
[1437, 10] are in the checkpoint (task_state/pskd_prev_probs).

`arg` switches: "runlocal" (20 steps).
"""
from jaxsup.config import derive, parse_switches, set_task, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",))
    c = set_task(derive(__file__, "supervised_digits.py"), "pskd")  # its CNN, schedule and evals
    c.model = dict(widths=(32, 64), num_classes=10)
    c.pskd.alpha_T = 0.8
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
