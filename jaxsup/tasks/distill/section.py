"""Config of task "distill" (KD with or without labels, feature KD, fused head); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields, teacher_field
from jaxsup.config_ranges import FRACTION, NON_NEGATIVE, POSITIVE

DECLARATION = Declaration(task="distill", reads=("distill",), sections={"distill": dict(
    teacher=teacher_field("the frozen teacher run (jaxsup.config_fields.teacher_spec)"),
    kind=Field("kl", '"kl" | "rkl" | "jsd" (T^2 D(teacher, student)) | "soft_ce" (SimCLRv2, no T^2)'),
    beta=Field(0.5, "JSD's mixing weight", FRACTION),
    temperature=Field(4.0, "KD temperature T", POSITIVE),
    alpha=Field(0.9, "alpha KD + (1 - alpha) CE on labelled examples; 1: label-free KD", FRACTION),
    labelled_split=Field("", 'CE only on this leading slice (e.g. "train[:10%]"); "": every example'),
    nd_lambda=Field(0.0, "weight of the norm-and-direction feature KD on pre_logits", NON_NEGATIVE),
    fused_head=Field(False, "KD and CE through the head's kernel without [B, K] logits"),
    fused_teacher=Field("logits", 'fused_head: the teacher as "logits" or as "features" + head'),
    fused_impl=Field("chunked", 'fused_head: "chunked" | "reference"'),
    **augment_fields(),
)})
