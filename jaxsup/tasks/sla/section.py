"""Config of task "sla" (self-supervised label augmentation: joint class x rotation labels); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import NON_NEGATIVE, POSITIVE_INT

DECLARATION = Declaration(task="sla", reads=("sla",), sections={"sla": dict(
    mode=Field("sla", '"sla" (joint labels + self-distillation) | "augment" (rotations as data augmentation) | "none"'),
    num_rotations=Field(4, "rotations per image: 1 | 2 | 4", POSITIVE_INT),
    sd_weight=Field(1.0, "weight of the aggregated self-distillation term", NON_NEGATIVE),
    sd_ce_weight=Field(1.0, "weight of the CE inside that term", NON_NEGATIVE),
    **augment_fields(),
)})
