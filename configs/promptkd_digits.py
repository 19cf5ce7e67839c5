"""PromptKD on digits: prompt-tune a jaxsup CLIP teacher on 72 labels, distill it into a small CNN without labels.

    python -m jaxsup.train --config configs/clip_digits.py --workdir /tmp/jaxsup/clip
    python -m jaxsup.train --config configs/promptkd_digits.py:prompt --workdir /tmp/jaxsup/coop \
        --config.promptkd.clip.path=/tmp/jaxsup/clip
    python -m jaxsup.train --config configs/promptkd_digits.py --workdir /tmp/jaxsup/promptkd \
        --config.promptkd.clip.path=/tmp/jaxsup/clip --config.promptkd.prompt_run=/tmp/jaxsup/coop

Task "promptkd" (jaxsup/tasks/promptkd/task.py). Stage "prompt" (switch `prompt`,
CoOp): 10 context vectors, initialised from the bytes of "the digit ", tuned
with CE on train[:5%] (72 images) against the frozen CLIP; evaluated as a
classifier on test. Stage "distill" (default): the CNN 16-32 student + a
projector to the 64-d CLIP space learns from the teacher's logits over its
pre-computed class text features on all 1437 train images, labels dropped;
evaluator "test" reports the student's top-1 with those text features, the
teacher's, and their agreement.

Leaving promptkd.prompt_run empty distills the CLIP with its hand-written
zero-shot templates ("digits_heldout") instead of the tuned prompt (ablation).

`arg` switches: "prompt" (the CoOp stage), "supervised" (baseline: the same student CNN with a 10-way head, CE on the 72
labels of train[:5%]), "runlocal".
"""
from jaxsup.config import base_config, digits_schedule, parse_switches, set_task, shrink_for_runlocal

SWITCHES = ("prompt", "supervised", "runlocal")
LABELLED = "train[:5%]"
TRAIN_OPS = ("image_to_float", "label_to_int32", "keep:image,label")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES)
    c = base_config("promptkd")
    c.model_name = "cnn"
    c.model = dict(widths=(16, 32), num_classes=10, dtype="float32", param_dtype="float32")
    c.promptkd.stage = "distill"
    c.promptkd.ctx_init = "the digit "
    c.data.preprocess = ("image_to_float", "keep:image")  # the student never sees a label
    c.data.eval_preprocess = TRAIN_OPS
    digits_schedule(c, batch_size=64, lr=3e-3, save_every=300)
    if "prompt" in args:
        c.promptkd.stage = "prompt"
        c.data.train_split = LABELLED
        c.data.preprocess = TRAIN_OPS
        c.total_steps = 200
        c.optim.lr = 2e-3
        c.optim.weight_decay = 0.0
        c.evals = dict(test=dict(type="classification", split="test", every=100, batch_size=360))
    if "supervised" in args:
        set_task(c, "supervised")
        c.data.train_split = LABELLED
        c.data.preprocess = TRAIN_OPS
        c.evals = dict(test=dict(type="classification", split="test", every=300, batch_size=360))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
