"""G-SimCLR on digits: SimCLR whose batches never hold two images of one pseudo-class.

    # 1. an earlier encoder (any finished simclr run), 2. its k-means pseudo-classes, 3. G-SimCLR:
    python -m jaxsup.train --config configs/cacr_digits.py:ntxent,views=2 --workdir /tmp/jaxsup/earlier
    python scripts/gsimclr_pseudo_classes.py --config configs/gsimclr_digits.py \
        --run /tmp/jaxsup/earlier --out /tmp/jaxsup/guide.npz --k 10
    python -m jaxsup.train --config configs/gsimclr_digits.py:guide=/tmp/jaxsup/guide.npz --workdir /tmp/jaxsup/gsimclr
    python -m jaxsup.train --config configs/gsimclr_digits.py --workdir /tmp/jaxsup/simclr_b10   # the baseline

SimCLR (NT-Xent, 2 views, CNN 32-64 encoder, projection head, LARS; the
probes of `cacr_digits.py`) with the batch G-SimCLR's rule allows: no two
images of one of k = 10 pseudo-classes means at most 10 images per batch. The
learning rate is simclr_digits' 2.0 at batch 256 scaled linearly (2.0 * 10 / 256);
1000 steps. The
baseline is the same run with random batches (no `guide`): the same steps,
batch and views. `data.batch_guide` (jaxsup/data/loader/guided_batches.py) orders
every epoch so that each batch holds 10 distinct pseudo-classes; an epoch then
keeps 10 x (smallest cluster) images, a different subset each epoch.

`arg` switches: "guide=PATH" (the pseudo-class .npz), "runlocal".
"""
from jaxsup.config import derive, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",), valued=("guide",))
    c = derive(__file__, "cacr_digits.py", "ntxent,views=2")
    c.batch_size = 10
    c.total_steps = 1000
    c.optim.lr = 2.0 * c.batch_size / 256
    c.optim.warmup_steps = 50
    c.log_every = 100
    c.checkpoint.every = 500
    for ev in c.evals.values():
        ev.every = 1000
    c.data.batch_guide = args.get("guide", "")
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
