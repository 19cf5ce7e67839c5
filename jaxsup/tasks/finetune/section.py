"""Config of task "finetune" (supervised training from another run's weights); no JAX here."""
from jaxsup.config_fields import Declaration, Field, augment_fields

DECLARATION = Declaration(task="finetune", reads=("finetune",), sections={"finetune": dict(
    init_from=Field("", 'the other run\'s workdir or checkpoints dir ("": random init)'),
    init_subtree=Field("params/encoder", "where the weights live there"),
    init_state_subtree=Field("task_state/encoder", "where its BatchNorm stats etc. live"),
    init_step=Field(-1, "the step to load; -1: the latest"),
    init_skip=Field(("head",), "top-level param names left at their random init"),
    **augment_fields(),
)})
