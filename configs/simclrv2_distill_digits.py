"""SimCLRv2 step 3 on digits: distil the fine-tuned network into a smaller student
on unlabelled images with `-sum_y p_T(y|x; tau) log p_S(y|x; tau)`.

    python -m jaxsup.train --config configs/simclrv2_distill_digits.py --workdir /tmp/jaxsup/distill \
        --config.distill.teacher.path=/tmp/jaxsup/finetune

Task "distill" with kind "soft_ce", alpha = 1 (no labels: the train batches
carry images only) on all of train's images (the labelled 10 % as unlabelled
images too, as SimCLRv2 distils on the whole unlabelled set). The teacher
(the ResNet of configs/simclrv2_finetune_digits.py) is read from the
finetune run's config.json, its BatchNorm stats from its task_state.
Student: the small CNN below. scripts/simclrv2_digits.sh runs the chain.

`arg` switches: "runlocal" (20 steps).
"""
from jaxsup.config import derive, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",))
    c = derive(__file__, "kd_digits.py", "label_free")  # distill, alpha = 1, images-only batches
    c.model_name = "cnn"
    c.model = dict(widths=(16, 32), num_classes=10)
    c.distill.kind = "soft_ce"
    c.distill.temperature = 1.0
    c.data.train_split = "train"
    c.batch_size = 128
    c.checkpoint.every = 300
    c.evals.test.every = 300
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
