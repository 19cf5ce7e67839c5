"""CLIP ViT-B/16 on COCO captions (TFDS), zero-shot on CIFAR-10, retrieval on COCO test.

    python -m jaxsup.train --config configs/clip_vit_b16.py --workdir $WORKDIR
    python -m jaxsup.train --config configs/clip_vit_b16.py:spm=/path/to/spm.model --workdir $WORKDIR

Needs `coco_captions` and `cifar10` prepared (array_record) under
$TFDS_DATA_DIR (jaxsup never downloads). Images arrive decoded (TFDS decodes
with Pillow) and are resized to 224x224 on the host (`resize:224`); one of the
~5 captions per image is chosen per example by hash (`pick_caption:choice=hash`).
Tokenizer: bytes (max_len 96) by default, or a local SentencePiece model
("spm=PATH", max_len 64). The loss runs as a device ring over mesh axis "data"
(impl="ring"); parameters are FSDP-sharded.

`arg` switches (comma-separated): "spm=PATH"; "runlocal" switches to the
offline digits CLIP config (configs/clip_digits.py:runlocal) so it runs on a
laptop without any dataset.
"""
from jaxsup.config import base_config, derive, parse_switches


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal",), valued=("spm",))
    if "runlocal" in args:
        return derive(__file__, "clip_digits.py", "runlocal")
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
    c.data.name = "coco_captions"
    c.data.train_split = "train"
    c.data.preprocess = ("resize:224", "image_to_float", "pick_caption:feature=captions/text,choice=hash",
                         tokenize, "keep:image,tokens")
    c.data.eval_preprocess = ("resize:224", "image_to_float", "pick_caption:feature=captions/text,choice=first",
                              tokenize, "keep:image,tokens")
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
            preprocess=("resize:224", "image_to_float", "label_to_int32", "keep:image,label"),
        ),
    )
    return c
