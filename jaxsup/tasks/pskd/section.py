"""Config of task "pskd" (progressive self-knowledge distillation); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import FRACTION

DECLARATION = Declaration(task="pskd", reads=("pskd",), sections={"pskd": dict(
    alpha_T=Field(0.8, "weight of the past predictions in the target at the last epoch", FRACTION),
    **augment_fields(),
)})
