"""Config of task "look" (leave-one-out kNN pre-training); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import OPEN_FRACTION, POSITIVE, POSITIVE_INT, Range

DECLARATION = Declaration(task="look", reads=("look",), sections={"look": dict(
    loss=Field("look", '"look" (leave-one-out kNN) | "ce" (a linear head baseline)'),
    k=Field(20, "neighbours per row", POSITIVE_INT),
    tau=Field(0.1, "similarity temperature", POSITIVE),
    momentum=Field(0.5, "momentum of the feature memory", OPEN_FRACTION),
    pretrain_classes=Field(10, "classes pre-trained on (the rest are held out)", Range(2, integer=True)),
    **augment_fields(),
)})
