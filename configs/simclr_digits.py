"""SimCLR on the offline digits: small ResNet encoder + projection head, NT-Xent, LARS; CPU, a few minutes.

    python -m jaxsup.train --config configs/simclr_digits.py --workdir /tmp/jaxsup/simclr_digits
    # the same encoder at random init, probed with the same evaluators (no training step):
    python -m jaxsup.train --config configs/simclr_digits.py --workdir /tmp/jaxsup/simclr_digits_init \
        --config.total_steps=0

Labels are never used in training. Views: random resized crop (scale 0.3-1,
no flip: digits are not mirror-symmetric), brightness/contrast jitter (grey
images: no saturation/hue/grayscale), no blur (8x8 pixels). Evaluation of the
frozen encoder features (before the head): a logistic-regression linear probe
fit on the train split and a cosine 20-NN classifier, both tested on "test".

`arg` switches (comma-separated): "runlocal" shrinks it to a smoke test;
"ring" / "chunked" pick the NT-Xent implementation.
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal", "ring", "chunked"))
    c = base_config("simclr")
    # A small ResNet-18 (channels 16..128, 3x3 stem, no max-pool). zero_init_residual=False so that
    # the random-init baseline is a genuinely random net (with zero-init residual branches the
    # 1x1 stride-2 projections alone carry the signal at init and the probe is at ~21 %).
    c.model_name = "resnet"
    c.model = dict(depth=18, width=0.25, small_input=True, zero_init_residual=False, num_classes=None)
    c.simclr.tau = 0.2
    c.simclr.augment = dict(crop_scale=(0.3, 1.0), flip=False, jitter_strength=0.5, blur_prob=0.0)
    c.simclr.head = dict(num_layers=2, hidden_dim=128, output_dim=64, use_bn=True)
    c.data.preprocess = ("image_to_float", "keep:image")
    c.data.eval_preprocess = ("image_to_float", "label_to_int32", "keep:image,label")
    c.batch_size = 256
    c.total_steps = 300
    c.optim.name = "lars"
    c.optim.lr = 2.0
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 30
    c.optim.clip_norm = 0.0
    c.log_every = 50
    c.checkpoint.every = 150
    probe = dict(split="test", train_split="train", every=150, batch_size=360)
    c.evals = dict(
        linear_probe=dict(type="linear_probe", l2=1e-4, steps=300, **probe),
        knn=dict(type="knn", k=20, weighting="similarity", temperature=0.07, **probe),
    )
    if "ring" in args:
        c.simclr.impl = "ring"
    if "chunked" in args:
        c.simclr.impl = "chunked"
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
