"""Config of task "promptkd" (CoOp prompt on a frozen CLIP, then a label-free student); no JAX here."""
from jaxsup.config_fields import Declaration, Field, teacher_field
from jaxsup.config_ranges import POSITIVE, POSITIVE_INT

DECLARATION = Declaration(task="promptkd", reads=("promptkd",), sections={"promptkd": dict(
    stage=Field("distill", '"prompt" (learn the context vectors) | "distill" (the student)'),
    clip=teacher_field("the frozen CLIP run (its model read from the run's config.json)"),
    prompt_run=Field("", 'the prompt stage\'s run ("": the hand-written templates)'),
    n_ctx=Field(8, "learned context vectors", POSITIVE_INT),
    ctx_init=Field("", "text whose token embeddings initialise the context ("": random)"),
    class_names=Field("digits", "class-name set of the prompts"),
    templates=Field("digits_heldout", "template set when prompt_run is empty"),
    temperature=Field(1.0, "KD temperature of the distill stage", POSITIVE),
)})
