"""A small CLIP student on digits from a reinforced dataset: stored CLIP-teacher embeddings, no teacher forward.

    python benchmarks/reinforced_step.py prepare --out /tmp/jaxsup/rdigits     # digits as converted shards
    python -m jaxsup.train --config configs/clip_digits.py --workdir /tmp/jaxsup/clip_teacher
    python -m jaxsup.data.reinforce /tmp/jaxsup/rdigits --teacher /tmp/jaxsup/clip_teacher \
        --crop size=8,channels=1,scale_min=0.5 --augmentations 8 \
        --captions class:templates=digits_train,names=digits --out /tmp/jaxsup/rdigits/train/reinforced_clip
    python -m jaxsup.train --config configs/clip_digits_reinforced.py:data=/tmp/jaxsup/rdigits \
        --workdir /tmp/jaxsup/clip_reinforced

The teacher is configs/clip_digits.py's model (CNN widths (64, 128), text width 64,
2 blocks); the student halves both towers (CNN widths (32, 64), text width 32, 1
block) and keeps the embedding width, so both KD terms apply. Loss (MobileCLIP's):
contrastive_weight x CLIP loss + kd_weight x logit KD over the batch similarity
matrix + feature_kd_weight x embedding distance, against the teacher's stored
embeddings of the replayed crop and of the caption the host op picked (`reinforce:DIR`,
task "clip" with `config.reinforced`; jaxsup/tasks/clip/reinforced.py). Evaluated as
configs/clip_digits.py (zero-shot with held-out templates, retrieval) on the test split.

`arg` switches: "data=PATH" (the converted dataset, default /tmp/jaxsup/rdigits),
"reinforced=DIR" (default PATH/train/reinforced_clip), "online" (the same replayed
crops and captions, but the teacher runs in the step: set clip.teacher; for the
equality test and benchmarks/reinforced_step.py), "runlocal" (20 steps).
"""
import os

from jaxsup.config import derive, parse_switches, shrink_for_runlocal

TARGETS = ("reinforced_zimg", "reinforced_ztxt")
STUDENT_IMAGE = dict(widths=(32, 64))
STUDENT_TEXT = dict(width=32, depth=1, mlp_dim=64, num_heads=2)


def get_config(arg=None):
    args = parse_switches(arg, ("online", "runlocal"), valued=("data", "reinforced"))
    c = derive(__file__, "clip_digits.py")
    data = args.get("data", "/tmp/jaxsup/rdigits")
    directory = args.get("reinforced", os.path.join(data, "train", "reinforced_clip"))
    teacher = c.model.to_dict()
    c.clip.teacher_model = teacher
    c.model.image_kwargs = {**teacher["image_kwargs"], **STUDENT_IMAGE}
    c.model.text_kwargs = {**teacher["text_kwargs"], **STUDENT_TEXT}
    c.clip.contrastive_weight = 0.3  # MobileCLIP: (1 - lambda) CLIP + lambda KD, lambda = 0.7
    c.clip.kd_weight = 0.7
    c.clip.feature_kd_weight = 0.0
    c.data.path = data
    c.data.train_split = "train"
    # uint8 crops: the devices make them float as they did for the teacher's reinforcement
    tokenize = [op for op in c.data.preprocess if op.startswith("tokenize:")]  # the teacher's tokenizer
    keep = "keep:image,tokens" if "online" in args else "keep:image,tokens," + ",".join(TARGETS)
    c.data.preprocess = (f"reinforce:{directory}", *tokenize, keep)
    c.data.eval_preprocess = ("decode:channels=1", *c.data.eval_preprocess)
    c.reinforced = "" if "online" in args else directory
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
