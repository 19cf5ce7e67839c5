"""SimCLR ResNet-50 on ImageNet (TFDS imagenet2012): 100 epochs at batch 4096, LARS, NT-Xent ring.

    python -m jaxsup.train --config configs/simclr_resnet50_imagenet.py --workdir $WORKDIR

Needs `imagenet2012` prepared (array_record) under $TFDS_DATA_DIR (never
downloaded). Host: images (decoded by TFDS) resized to 224x224 (`resize:224`,
aspect not kept; eval: shorter side 224 + central crop), sent as uint8; device: two SimCLR views per image (random resized crop
0.08-1, flip, colour jitter strength 1.0, grayscale 0.2, blur 0.5), as in
Chen et al. 2020. Head: 3-layer MLP with BN, 128-d output; tau 0.1 with SimCLR's own NT-Xent
reduction (`simclr.reduction="simclr"`, twice jaxsup's default mean); LARS with
lr 0.3 x batch/256, weight decay 1e-6, 10 warmup epochs, cosine decay. The
NT-Xent runs as a device ring over mesh axis "data" (impl="ring"); BatchNorm
statistics are over the global batch (jit over the sharded batch).
Evaluation of the frozen 2048-d encoder features on "validation": a linear
probe (L-BFGS logistic regression) and 20-NN, both fit on 10% of train
(1.28M x 2048 features would not fit the evaluator's host memory comfortably).

`arg` switches: "runlocal" keeps the ResNet family, the NT-Xent ring, FSDP
rules, dataset and ops, and shrinks sizes (ResNet-18 at width 1/8, 32 px,
batch 16, 4 steps), as big_vision's runlocal does (tests run it on
tfds.testing.mock_data).
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

IMAGENET_TRAIN = 1_281_167


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",))
    size = 32 if "runlocal" in args else 224
    c = base_config("simclr")
    c.model_name = "resnet"
    c.model = dict(depth=50, num_classes=None, norm="batch")
    c.simclr.tau = 0.1
    c.simclr.reduction = "simclr"  # official SimCLR loss_a + loss_b (2x jaxsup's mean): its lr ports as is
    c.simclr.impl = "ring"
    c.simclr.augment = dict(crop_scale=(0.08, 1.0), flip=True, jitter_strength=1.0, blur_prob=0.5)
    c.simclr.head = dict(num_layers=3, hidden_dim=2048, output_dim=128, use_bn=True)
    c.data.name = "imagenet2012"
    c.data.preprocess = (f"resize:{size}", "keep:image")
    c.data.eval_preprocess = (f"resize_small:{size}", f"central_crop:{size}", "label_to_int32",
                              "keep:image,label")
    c.batch_size = 4096
    steps_per_epoch = IMAGENET_TRAIN // c.batch_size
    c.total_steps = 100 * steps_per_epoch
    c.optim.name = "lars"
    c.optim.lr = 0.3 * c.batch_size / 256
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-6
    c.optim.warmup_steps = 10 * steps_per_epoch
    c.optim.clip_norm = 0.0
    c.mesh = (("data", -1), ("model", 1))
    c.partition_rules = ("fsdp",)  # every kernel split over "data" (jaxsup/sharding_rules.py)
    c.log_every = 100
    c.checkpoint.every = 2000
    probe = dict(split="validation", train_split="train[:10%]", every=10 * steps_per_epoch, batch_size=1024)
    c.evals = dict(
        linear_probe=dict(type="linear_probe", l2=1e-4, steps=500, **probe),
        knn=dict(type="knn", k=20, weighting="similarity", temperature=0.07, **probe),
    )
    if "runlocal" in args:
        c.model = dict(depth=18, width=0.125, num_classes=None, norm="batch")
        c.simclr.head = dict(num_layers=2, hidden_dim=32, output_dim=16, use_bn=True)
        c.batch_size = 16
        c.optim.warmup_steps = 1
        c.optim.lr = 0.3 * c.batch_size / 256
        for ev in c.evals.values():
            ev.update(batch_size=16, train_split="train[:50%]")
        c.evals.knn.k, c.evals.linear_probe.steps = 5, 20
        shrink_for_runlocal(c, steps=4)
    return c
