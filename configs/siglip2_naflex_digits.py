"""SigLIP 2 NaFlex on the offline digits shown at random sizes and aspect ratios; CPU, a few minutes.

    python -m jaxsup.train --config configs/siglip2_naflex_digits.py --workdir /tmp/jaxsup/naflex_digits

Data, captions, text tower and evaluators as configs/siglip_digits.py (sigmoid loss), but each
digit is drawn on a canvas of random aspect (w/h log-uniform in [1/3, 3], long side 16..48 px;
`digit_canvas`), so the image keeps its own shape. The image tower is `naflex_vit`
(jaxsup/models/naflex_vit.py): the canvas is resized to the largest grid of 4 x 4 patches with
<= 64 patches that keeps its aspect (`naflex_patchify`) and cut to the smallest sequence bucket
that holds the batch (`naflex_bucket`); docs/naflex.md.

`arg` switches (comma-separated): "runlocal" shrinks it to a smoke test; "fixed" is the
fixed-resolution baseline at the same token budget: the canvas squashed to 32 x 32 (8 x 8 = 64
patches of 4 x 4, aspect lost) into a plain ViT with MAP pooling; "native" keeps a canvas that
fits the budget at its own size; "buckets=36/64" sets the sequence buckets (the train step is
compiled once per bucket used).
"""
from jaxsup.config import derive, parse_switches, shrink_for_runlocal

PATCH = 4
MAX_PATCHES = 64  # the token budget of both towers' images
BUCKETS = (MAX_PATCHES,)  # sequence buckets, e.g. (36, 64): train.py compiles the step once per bucket used
CANVAS = "digit_canvas:min_side=16,max_side=48,max_aspect=3"
VIT = dict(patch_size=PATCH, width=64, depth=2, num_heads=2, mlp_dim=128, pool_type="map", num_classes=None)


def image_ops(fixed: bool, native: bool = False) -> tuple[str, ...]:
    """native: a canvas that fits the budget keeps its own size (upscale=0), so batches vary in length."""
    if fixed:
        return (CANVAS, f"resize:{PATCH * int(MAX_PATCHES ** 0.5)}", "image_to_float")
    return (CANVAS, f"naflex_patchify:patch={PATCH},max_patches={MAX_PATCHES},upscale={int(not native)}")


def get_config(arg=None):
    args = parse_switches(arg, ("runlocal", "fixed", "native"), valued=("buckets",))
    c = derive(__file__, "siglip_digits.py")
    fixed = "fixed" in args
    caption = [op for op in c.data.preprocess if op.startswith(("class_caption", "tokenize"))]
    heldout = [op for op in c.data.eval_preprocess if op.startswith(("class_caption", "tokenize"))]
    buckets = args.get("buckets", "/".join(map(str, BUCKETS)))  # buckets=36/64
    bucket = () if fixed else (f"naflex_bucket:buckets={buckets}",)
    ops = image_ops(fixed, "native" in args)
    c.data.preprocess = (*ops, "label_to_int32", *caption, *bucket, "keep:image,tokens")
    c.data.eval_preprocess = (*ops, "label_to_int32", *heldout, *bucket, "keep:image,tokens,label")
    c.model.image = "vit" if fixed else "naflex_vit"
    c.model.image_kwargs = VIT if fixed else {**VIT, "posemb_grid": 8}
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
