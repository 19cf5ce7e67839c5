"""SLA (self-supervised label augmentation) on digits: joint (digit x rotation) labels.

    python -m jaxsup.train --config configs/sla_digits.py --workdir /tmp/jaxsup/sla
    python -m jaxsup.train --config configs/sla_digits.py:augment --workdir /tmp/jaxsup/sla_da
    python -m jaxsup.train --config configs/sla_digits.py:few --workdir /tmp/jaxsup/sla_few

Task "sla" (jaxsup/tasks/sla/task.py): the CNN 32-64 sees every image under the
4 rotations; one softmax over the 40 joint labels; test logits aggregate the
4 views (evaluator "test": SLA+AG), "test_single" reads the unrotated view
only (SLA+SI), "test_sd" the plain head distilled from the aggregate (SLA+SD).

`arg` switches: "augment" (baseline: rotation as plain augmentation, 10-way
head), "plain" (no rotation at all), "nosd" (no self-distillation head),
"few" (train on train[:10%], 144 images, 300 steps: where extra supervision
matters), "runlocal". Seeds and the table: scripts/new_methods_seeds.py.
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

SWITCHES = ("augment", "plain", "nosd", "few", "runlocal")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES)
    c = base_config("sla")
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=10, dtype="float32", param_dtype="float32")
    c.batch_size = 64  # x 4 rotations per step
    c.total_steps = 600
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 50
    c.checkpoint.every = 300
    ev = dict(type="classification", split="test", every=300, batch_size=360)
    c.evals = dict(test=dict(ev), test_single=dict(ev, output="single_logits"), test_sd=dict(ev, output="sd_logits"))
    if "augment" in args:
        c.sla.mode = "augment"
    if "plain" in args:
        c.sla.mode = "none"
    if "nosd" in args:
        c.sla.sd_weight = 0.0
    if "few" in args:
        c.data.train_split = "train[:10%]"
        c.total_steps = 300
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
