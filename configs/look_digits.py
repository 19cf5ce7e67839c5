"""LOOK (leave-one-out kNN) supervised pre-training on digits 0-4, transfer to digits 5-9.

    python -m jaxsup.train --config configs/look_digits.py --workdir /tmp/jaxsup/look
    python -m jaxsup.train --config configs/look_digits.py:ce --workdir /tmp/jaxsup/look_ce

Task "look" (jaxsup/tasks/look/task.py): a CNN 32-64 pre-trained on the train images
of digits 0-4 only (rows of 5-9 masked out of every batch). Transfer: features
of the digits 5-9 ("new_probe": linear probe fit on train, tested on test;
"new_knn": 20-NN), and on the pre-training classes ("old_knn").

`arg` switches: "ce" (baseline: cross-entropy pre-training with a 5-way head),
"runlocal". Random-init context: --config.total_steps=0.
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

OLD, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def get_config(arg=None):
    args = parse_switches(arg, ("ce", "runlocal"))
    c = base_config("look")
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=None, dtype="float32", param_dtype="float32")
    c.look.pretrain_classes = len(OLD)
    c.look.k, c.look.tau, c.look.momentum = 20, 0.1, 0.5
    c.batch_size = 128
    c.total_steps = 600
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 50
    c.checkpoint.every = 300
    ev = dict(split="test", train_split="train", every=300, batch_size=360)
    c.evals = dict(new_probe=dict(ev, type="heldout_linear_probe", classes=NEW),
                   new_knn=dict(ev, type="heldout_knn", classes=NEW, k=20),
                   old_knn=dict(ev, type="heldout_knn", classes=OLD, k=20))
    if "ce" in args:
        c.look.loss = "ce"
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
