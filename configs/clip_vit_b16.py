"""CLIP ViT-B/16 on COCO captions (TFDS), zero-shot on CIFAR-10, retrieval on COCO test.

    python -m jaxsup.train --config configs/clip_vit_b16.py --workdir $WORKDIR
    python -m jaxsup.train --config configs/clip_vit_b16.py:spm=/path/to/spm.model --workdir $WORKDIR

Needs `coco_captions` and `cifar10` prepared (array_record) under
$TFDS_DATA_DIR (jaxsup never downloads). Host (jaxsup/data/host/image_ops.py):
train images get an inception crop (area 0.9-1) to 224x224, eval images the
shorter side to 224 and the central 224 crop; they travel to the devices as
uint8 and become floats in [0, 1] there. One of the ~5 captions per image is
chosen per example by hash (`pick_caption:choice=hash`).
Tokenizer: bytes (max_len 96) by default, or a local SentencePiece model
("spm=PATH", max_len 64). The loss runs as a device ring over mesh axis "data"
(impl="ring"); parameters are FSDP-sharded.

`arg` switches (comma-separated): "spm=PATH"; "data=DIR" trains on a dataset
written by `python -m jaxsup.data.convert` (e.g. CC3M webdataset tars; its
"caption" feature; retrieval on its "test" split); "runlocal" keeps the model
family (ViT patch 16 + text transformer), the ring loss, FSDP rules, datasets
and ops, and shrinks sizes (32 px images, 1-layer towers, batch 16, 4 steps),
as big_vision's runlocal does (tests run it on tfds.testing.mock_data);
"reinforced=DIR" (with "data=DIR"): MobileCLIP-style training from a reinforcement
of the converted train split (`python -m jaxsup.data.reinforce DATA --teacher RUN
--crop size=224 --captions feature:caption`): the host replays the stored crops,
the loss is 0.3 x CLIP + 0.7 x logit KD against the stored teachers' embeddings
(config.reinforced; docs/reinforced.md).
"""
from jaxsup.config import ConfigError, base_config, parse_switches, shrink_for_runlocal

RUNLOCAL_SIZE = 32  # image side under runlocal (two 16-px patches per side)


def image_ops(size: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, eval) host image ops: inception crop / shorter side + central crop, uint8 out."""
    return ((f"inception_crop:size={size},scale_min=0.9",),  # JPEG bytes: decoded at a reduced DCT scale
            (f"resize_small:{size}", f"central_crop:{size}"))


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",), valued=("spm", "data", "reinforced"))
    if "reinforced" in args and "data" not in args:
        raise ConfigError("The 'reinforced=DIR' switch needs 'data=DIR', the converted dataset it reinforces.")
    caption = "caption" if "data" in args else "captions/text"  # converted data: one caption per record
    size = RUNLOCAL_SIZE if "runlocal" in args else 224
    train_image, eval_image = image_ops(size)
    if "spm" in args:  # vocab_size 0: the clip task reads it from the SentencePiece model
        tokenizer, max_len, vocab_size = args["spm"], 64, 0
    else:
        tokenizer, max_len, vocab_size = "bytes", 96, 259
    tokenize = f"tokenize:max_len={max_len},tokenizer={tokenizer}"

    c = base_config("clip")
    # Ring over the data axis; on GPU/TPU set block_impl="pallas" for the fused per-device blocks.
    c.clip.loss = "softmax"
    c.clip.impl = "ring"
    c.clip.tokenizer = "" if tokenizer == "bytes" else tokenizer
    c.model_name = "two_tower"
    c.model = dict(
        image="vit", image_kwargs=dict(variant="B/16", num_classes=None),
        text="text_transformer",
        text_kwargs=dict(vocab_size=vocab_size, max_len=max_len, width=512, depth=12, num_heads=8),
        embed_dim=512,
        dtype="bfloat16",  # compute; params stay f32, losses accumulate in f32
        param_dtype="float32",
    )
    c.data.path = args.get("data", "")
    c.data.name = c.data.path.rstrip("/").rsplit("/", 1)[-1] if c.data.path else "coco_captions"
    c.data.train_split = "train"
    c.data.preprocess = (*train_image, f"pick_caption:feature={caption},choice=hash", tokenize,
                         "keep:image,tokens")
    c.data.eval_preprocess = (*eval_image, f"pick_caption:feature={caption},choice=first", tokenize,
                              "keep:image,tokens")
    c.batch_size = 4096
    c.total_steps = 10_000  # ~500 epochs of COCO's 82k train images
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.b2 = 0.98
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 0.1
    c.mesh = (("data", -1), ("model", 1))
    c.partition_rules = ("fsdp",)  # every kernel / embedding table split over "data" (jaxsup/sharding_rules.py)
    c.log_every = 50
    c.checkpoint.every = 1000
    c.evals = dict(
        retrieval=dict(type="retrieval", split="test", every=1000, batch_size=1024, match="pair"),
        zero_shot=dict(
            type="zero_shot", dataset="cifar10", split="test", every=1000, batch_size=1024,
            templates="generic", tokenizer=tokenizer, max_len=max_len,
            preprocess=(*eval_image, "label_to_int32", "keep:image,label"),
        ),
    )
    if "reinforced" in args:
        use_reinforced(c, args["reinforced"], tokenize)
    if "runlocal" in args:
        shrink_to_runlocal(c, max_len)
    return c


def use_reinforced(c, directory: str, tokenize: str):
    """Train from stored teacher embeddings: replayed crops, the stored caption, MobileCLIP's weights."""
    c.reinforced = directory
    c.data.preprocess = (f"reinforce:{directory}", tokenize, "keep:image,tokens,reinforced_zimg,reinforced_ztxt")
    c.clip.contrastive_weight = 0.3  # MobileCLIP: (1 - lambda) CLIP + lambda KD, lambda = 0.7
    c.clip.kd_weight = 0.7


def shrink_to_runlocal(c, max_len: int):
    """Same family, loss, rules, data and ops; tiny sizes (see the module docstring)."""
    c.model.image_kwargs = dict(variant="B/16", width=32, depth=1, mlp_dim=64, num_heads=2, num_classes=None)
    c.model.text_kwargs = dict(c.model.text_kwargs, width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.embed_dim = 32
    c.model.dtype = "float32"
    c.batch_size = 16
    c.optim.warmup_steps = 1
    for ev in c.evals.values():
        ev.batch_size = 16
    return shrink_for_runlocal(c, steps=4)
