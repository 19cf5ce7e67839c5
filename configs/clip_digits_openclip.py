"""CLIP on the offline digits with open_clip's ViT architecture (shrunk) and the CLIP tokenizer.

    python -m jaxsup.train --config configs/clip_digits_openclip.py --workdir /tmp/jaxsup/clip_oc
    python -m jaxsup.export --workdir /tmp/jaxsup/clip_oc --format open_clip --out /tmp/clip_oc.safetensors
    python -m jaxsup.eval --config configs/clip_digits_openclip.py --init open_clip:/tmp/clip_oc.safetensors

clip_digits.py with both towers in open_clip's / OpenAI's ViT-B/32 form (class
token, ln_pre, no patch bias, QuickGELU, LayerNorm eps 1e-5; causal text tower
pooled at EOT, no padding mask) at width 64, depth 2, and the CLIP BPE tokenizer
(needs ftfy, regex and open_clip's vocabulary file: the [clip] / [interop]
extras). Its checkpoints export to open_clip's state-dict layout and import
back (tests/interop/test_interop_commands.py). The digits are one grey channel, so the
exported image tower takes 1-channel input (open_clip's conv1 expects 3).

`arg` switches: "runlocal" (a 20-step smoke run); "bytes" (the byte tokenizer
instead of CLIP's BPE: the same architecture without the [clip] extra, for tests;
its EOS is the smallest id, so EOT pooling at the largest id lands on the caption's
highest byte instead: fine for the interop and LiT/KD tests, not a model to report).
"""
from jaxsup.config import base_config, parse_switches, shrink_for_runlocal

MAX_LEN = 16  # SOT + the longest digits caption in CLIP tokens + EOT
BYTES_MAX_LEN = 40  # the longest digits caption in bytes + BOS/EOS
# open_clip ViT-B/32's options (jaxsup.interop.presets.two_tower_kwargs) at a small size.
CLIP_BLOCK = dict(act="quick_gelu", norm_eps=1e-5)


def caption_ops(templates: str, keep: str, tokenizer: str, max_len: int) -> tuple[str, ...]:
    return ("image_to_float", "label_to_int32", f"class_caption:templates={templates}",
            f"tokenize:max_len={max_len},tokenizer={tokenizer}", f"keep:{keep}")


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal", "bytes"))
    tokenizer, max_len = ("bytes", BYTES_MAX_LEN) if "bytes" in args else ("clip", MAX_LEN)
    c = base_config("clip")
    c.clip.loss = "softmax"
    c.clip.tokenizer = tokenizer  # the text tower's vocab_size (49408 for "clip") comes from it
    c.model_name = "two_tower"
    c.model = dict(
        image="vit",
        image_kwargs=dict(patch_size=2, width=64, depth=2, mlp_dim=256, num_heads=4, pool_type="tok",
                          pre_norm=True, patch_bias=False, num_classes=None, **CLIP_BLOCK),
        text="text_transformer",
        text_kwargs=dict(vocab_size=0, max_len=max_len, width=64, depth=2, num_heads=4, mlp_dim=256, causal=True,
                         pool_type="argmax", mask_padding=False, num_classes=None, **CLIP_BLOCK),
        embed_dim=64, project=True,
    )
    c.data.preprocess = caption_ops("digits_train", "image,tokens", tokenizer, max_len)
    c.data.eval_preprocess = caption_ops("digits_heldout", "image,tokens,label", tokenizer, max_len)
    c.batch_size = 128
    c.total_steps = 300
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-4
    c.log_every = 50
    c.checkpoint.every = 300
    c.evals = dict(zero_shot=dict(type="zero_shot", split="test", every=300, batch_size=360,
                                  templates="digits_heldout", tokenizer=tokenizer, max_len=max_len))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
