"""Config of task "tgeo_kd" (a learned per-sample KD / CE ratio); no JAX here."""
from jaxsup.config_fields import Declaration, Field, teacher_field
from jaxsup.config_ranges import POSITIVE, POSITIVE_INT, Range

DECLARATION = Declaration(task="tgeo_kd", reads=("tgeo",), sections={"tgeo": dict(
    teacher=teacher_field("the frozen teacher run"),
    mode=Field("learned", '"learned" (per-sample ratio network) | "fixed" (alpha everywhere)'),
    alpha=Field(0.5, "the fixed ratio, and the ratio network's initial output", Range(0, 1, True, True)),
    temperature=Field(4.0, "KD temperature", POSITIVE),
    val_examples=Field(72, "train examples held out for the ratio's validation step", POSITIVE_INT),
    hidden=Field(32, "ratio network width", POSITIVE_INT),
    inner_lr=Field(0.1, "step size of the one-step look-ahead", POSITIVE),
    teacher_swap=Field((), "pairs of classes whose teacher logits are swapped (a wrong teacher)"),
)})
