"""Knowledge distillation on digits: a small MLP student learns from a larger CNN teacher.

The teacher is any finished run, e.g. the default supervised CNN (all of train):

    python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/teacher
    python -m jaxsup.train --config configs/kd_digits.py --workdir /tmp/jaxsup/kd \
        --config.distill.teacher.path=/tmp/jaxsup/teacher

The student (MLP, one hidden layer of 64) sees only train[:5%] (72 labelled
images) with loss alpha * T^2 KL(teacher || student) + (1 - alpha) * CE at
T = 2, alpha = 0.9 (task "distill", jaxsup/tasks/distill/task.py). The teacher's
model is read from its run's config.json. Baseline: the same student trained
with CE on the same 72 labelled images (scripts/kd_digits_seeds.py runs both
over seeds; its `scratch_baseline_overrides` gives the baseline's settings).

`arg` switches: "all" (the student gets all of train), "label_free"
(alpha = 1: pure KD, labels dropped from the train batches), "fused_head"
(KD + CE from the student's features and head weights, the teacher as its
features and head: no [B, K] logits in the train step, as a many-class or
vocabulary-sized head needs; distill.fused_head in jaxsup/tasks/distill/task.py),
"runlocal" (20 steps).
"""
from jaxsup.config import base_config, digits_schedule, parse_switches, shrink_for_runlocal

SWITCHES = ("all", "label_free", "fused_head", "runlocal")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES)
    c = base_config("distill")
    c.model_name = "mlp"
    c.model = dict(widths=(64,), num_classes=10)
    c.distill.temperature = 2.0
    c.distill.alpha = 0.9
    c.data.train_split = "train" if "all" in args else "train[:5%]"
    digits_schedule(c, batch_size=64, lr=3e-3, save_every=200)
    if "label_free" in args:
        c.distill.alpha = 1.0
        c.data.preprocess = ("image_to_float", "keep:image")
        c.data.eval_preprocess = ("image_to_float", "label_to_int32", "keep:image,label")
    if "fused_head" in args:
        c.distill.fused_head = True
        c.distill.fused_teacher = "features"
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
