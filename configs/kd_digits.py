"""Knowledge distillation on digits: a tiny CNN student learns from a larger CNN teacher.

The teacher is any finished run, e.g. the default supervised one:

    python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/teacher
    python -m jaxsup.train --config configs/kd_digits.py --workdir /tmp/jaxsup/kd \
        --config.distill.teacher.path=/tmp/jaxsup/teacher

Loss: alpha * T^2 KL(teacher || student) + (1 - alpha) * CE (task "distill",
jaxsup/tasks/distill.py); teacher and student see the same randomly cropped
batch. The teacher's model is read from its run's config.json. The
from-scratch baseline is configs/supervised_digits.py with the same student
model (scripts/kd_digits_seeds.py runs both over seeds).

`arg` switches: "runlocal" (20 steps), "label_free" (alpha = 1: pure KD,
labels dropped from the train batches).
"""
from jaxsup.config import base_config
from jaxsup.tasks import distill

STUDENT = dict(widths=(4, 8), num_classes=10)


def get_config(arg=None):
    args = set((arg or "").split(","))
    c = base_config()
    c.task = "distill"
    c.model_name = "cnn"
    c.model = dict(STUDENT)
    c.distill = distill.default_config()
    c.distill.temperature = 4.0
    c.distill.alpha = 0.9
    c.distill.augment = "crop"
    c.distill.crop_scale = (0.6, 1.0)
    c.batch_size = 128
    c.total_steps = 600
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 50
    c.checkpoint.every = 200
    c.evals = dict(test=dict(type="distill", split="test", every=200, batch_size=360))
    if "label_free" in args:
        c.distill.alpha = 1.0
        c.data.preprocess = ("image_to_float", "keep:image")
        c.data.eval_preprocess = ("image_to_float", "label_to_int32", "keep:image,label")
    if "runlocal" in args:
        c.total_steps = 20
        c.log_every = 5
        c.checkpoint.every = 10
        c.evals.test.every = 10
    return c
