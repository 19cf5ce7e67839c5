"""Co-teaching on digits with synthetic label noise (jaxsup/tasks/coteaching/task.py).

    python -m jaxsup.train --config configs/coteaching_digits.py --workdir /tmp/jaxsup/ct
    python -m jaxsup.train --config configs/coteaching_digits.py:ce --workdir /tmp/jaxsup/ct_ce
    python -m jaxsup.train --config configs/coteaching_digits.py:pair,noise=0.2 --workdir /tmp/jaxsup/ct_p20

The training labels of digits' "train" are corrupted deterministically per
example (symmetric by default, 40 %); the test labels stay clean. Two CNNs
16-32 exchange their small-loss rows (forget rate = noise rate, reached over
the first 20 % of steps). "test" evaluates net 1, "test_2" net 2.

`arg` switches: "ce" (baseline: forget_rate = 0, plain CE on every noisy
row), "pair" (pair-flip noise y -> y+1), "noise=<rate>", "dropout"
(feature compression: dropout 0.5 on the features before the head),
"nested" (nested dropout, geometric p = 0.1), "runlocal".
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

SWITCHES = ("ce", "pair", "dropout", "nested", "runlocal")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES, valued=("noise",))
    c = base_config("coteaching")
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=10, dtype="float32", param_dtype="float32")
    c.label_noise.rate = float(args.get("noise", 0.4))
    c.label_noise.kind = "pair" if "pair" in args else "symmetric"
    c.coteaching.forget_rate = -1.0  # = label_noise.rate
    c.coteaching.gradual_frac = 0.2
    c.batch_size = 128
    c.total_steps = 1200
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 100
    c.checkpoint.every = 600
    ev = dict(type="classification", split="test", every=300, batch_size=360)
    c.evals = dict(test=dict(ev), test_2=dict(ev, output="logits_2"))
    if "ce" in args:
        c.coteaching.forget_rate = 0.0
    if "dropout" in args:
        c.coteaching.feature_dropout, c.coteaching.dropout_kind = 0.5, "dropout"
    if "nested" in args:
        c.coteaching.feature_dropout, c.coteaching.dropout_kind = 0.1, "nested"
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
