"""SigLIP (sigmoid contrastive) on the offline digits with class-name captions; CPU, a few minutes.

    python -m jaxsup.train --config configs/siglip_digits.py --workdir /tmp/jaxsup/siglip_digits

Same data, model and evaluators as configs/clip_digits.py (see there), with
config.clip.loss = "sigmoid" (learnable temperature init log 10, bias init -10).
`arg` switches as clip_digits.py: "runlocal", "ring", "chunked".
"""
from jaxsup.config import derive


def get_config(arg=None):
    c = derive(__file__, "clip_digits.py", arg)
    c.clip.loss = "sigmoid"
    return c
