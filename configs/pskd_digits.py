"""Progressive self-knowledge distillation (PS-KD) on digits: the CNN of
configs/supervised_digits.py trained towards `(1 - a_t) onehot + a_t p_{t-1}(x)`.

    python -m jaxsup.train --config configs/pskd_digits.py --workdir /tmp/jaxsup/pskd

Task "pskd" (jaxsup/tasks/pskd.py); a_t = alpha_T * epoch / epochs, with
600 steps x 128 / 1437 examples = 53 epochs. The previous-epoch predictions
[1437, 10] are in the checkpoint (task_state/pskd_prev_probs).

`arg` switches: "runlocal" (20 steps).
"""
from jaxsup.config import base_config, shrink_for_runlocal
from jaxsup.tasks import pskd


def get_config(arg=None):
    args = set((arg or "").split(","))
    c = base_config()
    c.task = "pskd"
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=10)
    c.pskd = pskd.default_config()
    c.pskd.alpha_T = 0.8
    c.batch_size = 128
    c.total_steps = 600
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 50
    c.checkpoint.every = 200
    c.evals = dict(test=dict(type="classification", split="test", every=200, batch_size=360))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
