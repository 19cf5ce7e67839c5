"""Config of task "weak_to_strong" (a strong student on a weak supervisor's labels); no JAX here.

It also reads section "finetune" (task "finetune"): the strong model's warm start."""
from jaxsup.config_fields import Declaration, Field, augment_fields
from jaxsup.config_ranges import FRACTION

DECLARATION = Declaration(task="weak_to_strong", reads=("finetune", "w2s"), sections={"w2s": dict(
    weak_labels=Field("", "path of the weak labels .npz (required)"),
    weak_split=Field("", "the supervisor's train split; if set, checked disjoint from data.train_split"),
    loss=Field("aux", '"aux" (auxiliary confidence loss) | "soft_ce" (naive baseline)'),
    aux_coef=Field(0.5, "final mixing weight alpha of the aux loss", FRACTION),
    warmup_frac=Field(0.2, "fraction of total_steps over which alpha ramps up", FRACTION),
    **augment_fields(),
)})
