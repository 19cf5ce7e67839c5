"""SigLIP (sigmoid contrastive) on the offline digits with class-name captions; CPU, a few minutes.

    python -m jaxsup.train --config configs/siglip_digits.py --workdir /tmp/jaxsup/siglip_digits

Same data, model and evaluators as configs/clip_digits.py (see there), with
config.clip.loss = "sigmoid" (learnable temperature init log 10, bias init -10).
`arg` switches as clip_digits.py: "runlocal", "ring", "chunked".
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_digits import digits_clip_config  # noqa: E402


def get_config(arg=None):
    return digits_clip_config("sigmoid", arg)
