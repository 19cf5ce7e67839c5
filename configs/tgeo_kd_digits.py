"""Trilateral-geometry KD on digits: a learned per-sample KD/CE ratio vs a constant one.

    python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/teacher
    python -m jaxsup.train --config configs/tgeo_kd_digits.py --workdir /tmp/jaxsup/tgeo \
        --config.tgeo.teacher.path=/tmp/jaxsup/teacher
    python -m jaxsup.train --config configs/tgeo_kd_digits.py:fixed --workdir /tmp/jaxsup/tgeo_fixed \
        --config.tgeo.teacher.path=/tmp/jaxsup/teacher

Task "tgeo_kd" (jaxsup/tasks/tgeo_kd/task.py): the MLP-64 student trains on the
first 215 examples of train[:20%] (287 images), the last 72 are the held-out
validation rows of the ratio network's one-step bilevel update. Teacher:
any finished classifier run (its model is read from its config.json); a weak
teacher (e.g. supervised_digits.py with data.train_split="train[:5%]" and
total_steps=100) makes the teacher wrong on more of the student's examples,
the setting where a per-sample ratio can matter.

`arg` switches: "fixed" (baseline: constant alpha = tgeo.alpha, same rows),
"swapped" (the teacher's logits of classes 3<->8 and 1<->7 exchanged: confidently
wrong on a fifth of the examples, where a per-sample ratio is visible), "runlocal".
"""
from jaxsup.config import base_config, digits_schedule, parse_switches, shrink_for_runlocal

SWITCHES = ("fixed", "swapped", "runlocal")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES)
    c = base_config("tgeo_kd")
    c.model_name = "mlp"
    c.model = dict(widths=(64,), num_classes=10)
    c.data.train_split = "train[:20%]"
    c.tgeo.val_examples = 72
    c.tgeo.alpha = 0.5
    c.tgeo.temperature = 4.0
    digits_schedule(c, batch_size=64, lr=3e-3, save_every=300)
    if "fixed" in args:
        c.tgeo.mode = "fixed"
    if "swapped" in args:
        c.tgeo.teacher_swap = ((3, 8), (1, 7))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
