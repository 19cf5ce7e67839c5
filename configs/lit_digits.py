"""LiT on the digits: a locked pretrained image tower, a trained text tower (Zhai et al. 2022).

    python -m jaxsup.export --workdir /tmp/jaxsup/clip_oc --format open_clip --out /tmp/clip_oc.safetensors
    python -m jaxsup.train --config configs/lit_digits.py --workdir /tmp/jaxsup/lit \
        --config.clip.init_from=open_clip:/tmp/clip_oc.safetensors

configs/clip_digits_openclip.py whose image tower and image projection come from
`clip.init_from` (any public checkpoint of that architecture, "open_clip:PATH" or
"big_vision:PATH", or a run's workdir; `clip.init_select = ("img", "img_proj")`) and get
no update (`optim.freeze`); the text tower starts from random init and learns to
match the fixed image embeddings. Without init_from the locked tower stays random
(LiT's "from scratch" baseline). `arg` switches as clip_digits_openclip.py.
"""
from jaxsup.config import derive


def get_config(arg=None):
    c = derive(__file__, "clip_digits_openclip.py", arg)
    c.clip.init_select = ("img", "img_proj")
    c.optim.freeze = ("^img/", "^img_proj/")
    return c
