"""Image-text distillation on the digits: a CLIP teacher into a smaller two-tower student.

    python -m jaxsup.train --config configs/clip_distill_digits.py --workdir /tmp/jaxsup/clip_kd \
        --config.clip.teacher=open_clip:/tmp/clip_oc.safetensors

The teacher is configs/clip_digits_openclip.py's model (open_clip's ViT layout, width 64,
2 blocks per tower) read from `clip.teacher` (a public checkpoint "open_clip:PATH" /
"big_vision:PATH" or a run's workdir); the student has width 32 and 1 block per tower
and the same embedding width. Loss: the student's CLIP loss + kd_weight x logit KD
(soft-target cross-entropy of the student's image->text and text->image softmax over
the batch similarity matrix against the teacher's: open_clip's DistillClipLoss) +
feature_kd_weight x the squared distance of the unit embeddings (CLIP-KD's feature
distillation); jaxsup/losses/clip_kd.py. `arg` switches as clip_digits_openclip.py.
"""
from jaxsup.config import derive

STUDENT = dict(width=32, depth=1, mlp_dim=128, num_heads=2)


def get_config(arg=None):
    c = derive(__file__, "clip_digits_openclip.py", arg)
    teacher = c.model.to_dict()
    c.clip.teacher_model = teacher
    c.model.image_kwargs = {**teacher["image_kwargs"], **STUDENT}
    c.model.text_kwargs = {**teacher["text_kwargs"], **STUDENT}
    c.clip.kd_weight = 1.0
    c.clip.feature_kd_weight = 1.0
    return c
