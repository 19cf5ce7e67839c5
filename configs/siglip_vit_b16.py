"""SigLIP ViT-B/16 on COCO captions (TFDS), zero-shot on CIFAR-10, retrieval on COCO test.

    python -m jaxsup.train --config configs/siglip_vit_b16.py --workdir $WORKDIR

Same as configs/clip_vit_b16.py (see there: data, tokenizer, "spm=PATH") with
config.clip.loss = "sigmoid", the SigLIP ring over mesh axis "data".
"runlocal" shrinks sizes and keeps everything else (see clip_vit_b16.py).
"""
from jaxsup.config import derive


def get_config(arg=None):
    c = derive(__file__, "clip_vit_b16.py", arg)
    c.clip.loss = "sigmoid"
    return c
