"""CACR (contrastive attraction + contrastive repulsion) pre-training on digits, against SimCLR.

    python -m jaxsup.train --config configs/cacr_digits.py --workdir /tmp/jaxsup/cacr
    python -m jaxsup.train --config configs/cacr_digits.py:ntxent --workdir /tmp/jaxsup/cacr_ntxent

`simclr_digits.py` (projection head, LARS, the same views and probes) with a
CNN 32-64 encoder, batch 128 and 200 steps (a fifth of the ResNet's step time:
every arm runs 3 seeds on a shared 2-core CPU), and `simclr.loss = "cacr"`
(jaxsup.losses.contrastive.cacr) over K = 4 views of each image: each view pulls its 3 positives, the farther
ones harder (t_pos = 1, the paper's default), and pushes the views of every
other image, the closer ones harder. t_neg = 1 / (2 tau) = 2.5 gives the
repulsion weights the sharpness of the baseline's softmax at tau = 0.2 (for
unit vectors exp(s / tau) = exp(-||a - b||^2 / (2 tau)) up to a constant).

`arg` switches (comma-separated): "ntxent" (the matched baseline: the same K
views, NT-Xent averaged over the view pairs), "views=K" (2 = SimCLR's pair),
"chunked" (the O(K N D) CACR path), "runlocal".
"""
from jaxsup.config import derive, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("ntxent", "chunked", "runlocal"), valued=("views",))
    c = derive(__file__, "simclr_digits.py")
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=None, dtype="float32", param_dtype="float32")
    c.batch_size = 128
    c.total_steps = 200
    c.optim.warmup_steps = 20
    c.checkpoint.every = 200
    for ev in c.evals.values():
        ev.every = 200
    c.simclr.loss = "nt_xent" if "ntxent" in args else "cacr"
    c.simclr.views = int(args.get("views", 4))
    c.simclr.cacr = dict(t_pos=1.0, t_neg=1.0 / (2 * c.simclr.tau), alpha=1.0, beta=1.0)
    if "chunked" in args:
        c.simclr.impl = "chunked"
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
