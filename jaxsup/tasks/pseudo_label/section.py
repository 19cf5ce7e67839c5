"""Config of task "pseudo_label" (EMA-teacher pseudo-labels, Meta Pseudo Labels' future lr); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import FRACTION, NON_NEGATIVE, POSITIVE

DECLARATION = Declaration(task="pseudo_label", reads=("pseudo_label",), sections={"pseudo_label": dict(
    labelled_split=Field("train[:10%]", "the leading slice whose labels are used; the rest is unlabelled"),
    threshold=Field(0.9, "teacher confidence above which a pseudo-label is used", FRACTION),
    unlabelled_weight=Field(1.0, "weight of the pseudo-label loss", NON_NEGATIVE),
    rampup_frac=Field(0.2, "fraction of total_steps over which that weight ramps up", FRACTION),
    ema_decay=Field(0.99, "EMA decay of the teacher", FRACTION),
    temperature=Field(1.0, "teacher softmax temperature", POSITIVE),
    future_lr=Field(0.0, "> 0: the student's look-ahead step size (Meta Pseudo Labels)", NON_NEGATIVE),
    **augment_fields("crop", (0.6, 1.0)),
)})
