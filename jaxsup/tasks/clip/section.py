"""Config of task "clip" (CLIP / SigLIP image-text contrastive); no JAX here."""
from jaxsup.config_fields import Declaration, Field, contrastive_fields
from jaxsup.config_ranges import NON_NEGATIVE, POSITIVE_INT

DECLARATION = Declaration(task="clip", reads=("clip",), sections={"clip": dict(
    loss=Field("softmax", '"softmax" (CLIP) | "sigmoid" (SigLIP)'),
    block_impl=Field("chunked", 'per-device block math of impl="ring": "chunked" | "pallas"'),
    grad_cache_micro_batches=Field(1, "k > 1: the full-batch loss GradCache-style, B/k activations at a time",
                                   POSITIVE_INT),
    tokenizer=Field("", '"" or a tokenizer ("clip", a SentencePiece path) that sets the text vocab_size'),
    init_from=Field("", 'pretrained weights: "open_clip:PATH" | "big_vision:PATH" | a run\'s workdir'),
    init_subtree=Field("", "where this model's tree starts in init_from"),
    init_select=Field((), 'top-level entries to load from init_from, e.g. ("img", "img_proj") for LiT'),
    teacher=Field("", 'a CLIP teacher to distill from: "FORMAT:PATH" or a run\'s workdir'),
    teacher_model=Field({}, "the teacher's two_tower kwargs ({}: config.model)"),
    kd_weight=Field(0.0, "weight of the logit KD over the batch similarity matrix", NON_NEGATIVE),
    feature_kd_weight=Field(0.0, "weight of the embedding-distance KD", NON_NEGATIVE),
    contrastive_weight=Field(1.0, "with a teacher: weight of the CLIP loss beside the KD terms", NON_NEGATIVE),
    **contrastive_fields(),
)})
