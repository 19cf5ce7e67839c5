"""Default experiment: a small CNN on the offline 8x8 digits (TFDS + grain path).

    python -m jaxsup.train --config configs/supervised_digits.py --workdir /tmp/jaxsup/digits

`arg` switches: "runlocal" shrinks it to a smoke test (20 steps);
"vit" swaps in a tiny ViT with 2x2 patches.
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

SWITCHES = ("runlocal", "vit")


def get_config(arg=None):
    args = parse_switches(arg, SWITCHES)
    c = base_config("supervised")
    c.model_name = "cnn"
    c.model = dict(widths=(32, 64), num_classes=10, dtype="float32", param_dtype="float32")
    c.batch_size = 128
    c.total_steps = 600
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 50
    c.log_every = 50
    c.checkpoint.every = 200
    c.evals = dict(test=dict(type="classification", split="test", every=200, batch_size=360))
    if "vit" in args:
        c.model_name = "vit"
        c.model = dict(patch_size=2, width=64, depth=2, mlp_dim=128, num_heads=2, num_classes=10,
                       dtype="float32", param_dtype="float32", remat=False)
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
