"""10 % labels + KD on the unlabelled 90 % (digits).

Protocol (labels are used only on train[:10%], 144 examples):
  1. teacher: the supervised CNN trained on train[:10%] only
       python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/teacher10 \
           --config.data.train_split='train[:10%]' --config.batch_size=64
  2. student (MLP, 64 hidden): CE on the examples of train[:10%] (batch
     "index" < 144; the other labels are masked out before use) and KD from
     the teacher on every example of train:
       python -m jaxsup.train --config configs/kd_label_fraction_digits.py --workdir /tmp/jaxsup/kd10 \
           --config.distill.teacher.path=/tmp/jaxsup/teacher10
Baseline: the same student with CE on train[:10%] alone
(scripts/kd_digits_seeds.py runs all three).

`arg` switches: "1pct" (train[:1%]), "runlocal" (20 steps).
"""
from jaxsup.config import derive, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("1pct", "runlocal"))
    c = derive(__file__, "kd_digits.py")
    c.data.train_split = "train"
    c.distill.labelled_split = "train[:1%]" if "1pct" in args else "train[:10%]"
    c.distill.alpha = 0.5
    c.distill.temperature = 2.0
    c.batch_size = 128
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
