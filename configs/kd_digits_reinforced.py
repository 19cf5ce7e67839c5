"""Label-free KD on digits from a reinforced dataset: stored teacher top-k logits, no teacher forward.

    python benchmarks/reinforced_step.py prepare --out /tmp/jaxsup/rdigits     # digits as converted shards
    python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/teacher
    python -m jaxsup.data.reinforce /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/teacher \
        --crop size=8,channels=1,scale_min=0.5 --augmentations 8 --topk 10 --temperature 2
    python -m jaxsup.train --config configs/kd_digits_reinforced.py:data=/tmp/jaxsup/rdigits \
        --workdir /tmp/jaxsup/kd_reinforced

Derived from configs/kd_digits.py (MLP student, T = 2) with alpha = 1 (only the
teacher's targets train the student) on all of the converted train split.
Each step's images are stored augmentations replayed by the host op
`reinforce:DIR` (augmentation chosen from (seed, epoch, index)); the KD term is
the sparse top-k KL against the stored targets (`config.reinforced`, task
"distill", jaxsup/losses/topk_kd.py). Evaluated by test-split accuracy.

`arg` switches: "data=PATH" (the converted dataset, default /tmp/jaxsup/rdigits),
"reinforced=DIR" (default PATH/train/reinforced), "online" (the same replayed
crops, but the teacher runs in the step: set distill.teacher.path; for the
equality test and benchmarks/reinforced_step.py), "runlocal" (20 steps).
"""
import os

from jaxsup.config import derive, parse_switches, shrink_for_runlocal

TARGETS = ("reinforced_logits", "reinforced_indices", "reinforced_lse_rest")


def get_config(arg=None):
    args = parse_switches(arg, ("online", "runlocal"), valued=("data", "reinforced"))
    c = derive(__file__, "kd_digits.py", "all")
    data = args.get("data", "/tmp/jaxsup/rdigits")
    directory = args.get("reinforced", os.path.join(data, "train", "reinforced"))
    c.distill.alpha = 1.0
    c.distill.augment = "none"  # the host replays the stored crop
    c.data.path = data
    c.data.train_split = "train"
    c.data.preprocess = (f"reinforce:{directory}", "keep:image," + ",".join(TARGETS))
    c.data.eval_preprocess = ("decode:channels=1", "label_to_int32", "keep:image,label")
    c.reinforced = "" if "online" in args else directory
    c.evals = dict(test=dict(type="classification", split="test", every=c.checkpoint.every, batch_size=360))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
