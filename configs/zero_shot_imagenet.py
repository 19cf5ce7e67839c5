"""Zero-shot ImageNet (or CIFAR) classification of a public CLIP checkpoint, the standard way.

    python -m jaxsup.eval --config configs/zero_shot_imagenet.py --init open_clip:/ckpt/ViT-B-32.pt
    python -m jaxsup.eval --config configs/zero_shot_imagenet.py:model=ViT-L-14 --init open_clip:/ckpt/ViT-L-14.pt
    python -m jaxsup.eval --config configs/zero_shot_imagenet.py:dataset=cifar100,gelu \
        --init open_clip:/ckpt/open_clip_ViT-B-32_laion2b.safetensors

The 1000 ImageNet class names and CLIP's 80 prompt templates (jaxsup/data/text/zero_shot/,
sources and licence in its NOTICE.md); each class's text embedding is the normalised mean
of its 80 normalised prompt embeddings; top-1 / top-5 on imagenet2012 "validation" (or
cifar10 / cifar100 "test"), which must be prepared under $TFDS_DATA_DIR (never downloaded).
Images: shorter side to 224, central 224 crop, CLIP's mean / std (CLIP resizes bicubic,
jaxsup bilinear with antialiasing: expect a few tenths of a point of difference).
Tokens: the CLIP BPE, 77 long (the [clip] or [interop] extra).

`arg` switches: "model=ViT-B-32" (default) | "ViT-B-16" | "ViT-L-14" (open_clip's model
configs; tests/data/test_zero_shot_sets.py checks these sizes against jaxsup.interop.presets);
"gelu": exact GELU (open_clip's own LAION-trained weights) instead of QuickGELU (OpenAI's);
"dataset=imagenet2012" (default) | "cifar10" | "cifar100".
"""
from jaxsup.config import ConfigError, base_config, parse_switches

CONTEXT_LENGTH = 77
IMAGE_SIZE = 224
CLIP_MEAN = "0.48145466/0.4578275/0.40821073"  # OpenAI CLIP's image normalisation
CLIP_STD = "0.26862954/0.26130258/0.27577711"
# open_clip model config -> (patch, image width, image layers, embed_dim, text width, text heads).
MODELS = {
    "ViT-B-32": (32, 768, 12, 512, 512, 8),
    "ViT-B-16": (16, 768, 12, 512, 512, 8),
    "ViT-L-14": (14, 1024, 24, 768, 768, 12),
}
DATASETS = {"imagenet2012": "validation", "cifar10": "test", "cifar100": "test"}  # -> evaluated split


def two_tower(name: str, act: str) -> dict:
    """jaxsup two_tower kwargs of an OpenAI / open_clip CLIP ViT (heads of 64 dims, MLP 4x)."""
    patch, width, layers, embed_dim, text_width, text_heads = MODELS[name]
    block = dict(act=act, norm_eps=1e-5, num_classes=None)
    return dict(
        image="vit",
        image_kwargs=dict(patch_size=patch, width=width, depth=layers, mlp_dim=4 * width, num_heads=width // 64,
                          pool_type="tok", pre_norm=True, patch_bias=False, **block),
        text="text_transformer",
        text_kwargs=dict(vocab_size=0, max_len=CONTEXT_LENGTH, width=text_width, depth=12, num_heads=text_heads,
                         mlp_dim=4 * text_width, causal=True, pool_type="argmax", mask_padding=False, **block),
        embed_dim=embed_dim, project=True,
    )


def get_config(arg=None):
    args = parse_switches(arg, ("gelu",), valued=("model", "dataset"))
    model, dataset = args.get("model", "ViT-B-32"), args.get("dataset", "imagenet2012")
    if model not in MODELS or dataset not in DATASETS:
        raise ConfigError(f"model must be one of {sorted(MODELS)} and dataset one of {sorted(DATASETS)}; "
                         f"got {model!r}, {dataset!r}.")
    c = base_config("clip")
    c.clip.tokenizer = "clip"  # vocab_size 49408 from it
    c.model_name = "two_tower"
    c.model = two_tower(model, "gelu_erf" if "gelu" in args else "quick_gelu")
    image = ("decode", f"resize_small:{IMAGE_SIZE}", f"central_crop:{IMAGE_SIZE}",
             f"normalize:mean={CLIP_MEAN},std={CLIP_STD}")
    tokenize = f"tokenize:max_len={CONTEXT_LENGTH},tokenizer=clip"
    c.data.name = dataset
    c.data.train_split = DATASETS[dataset]  # only its first example is read, for the shapes
    c.data.preprocess = (*image, "label_to_int32", f"class_caption:templates=openai_imagenet,names={dataset}",
                         tokenize, "keep:image,tokens")
    c.data.eval_preprocess = (*image, "label_to_int32", "keep:image,label")
    c.batch_size = 256
    c.evals = dict(zero_shot=dict(type="zero_shot", split=DATASETS[dataset], every=0, batch_size=256,
                                  class_names=dataset, templates="openai_imagenet", tokenizer="clip",
                                  max_len=CONTEXT_LENGTH))
    return c
