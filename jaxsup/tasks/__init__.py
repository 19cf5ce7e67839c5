"""Training objectives, one package per task: `task.py` (the objective; importing it registers
the task) beside `section.py` (its config declaration: fields, defaults, docs, ranges; no JAX),
collected for jaxsup.config by `sections.py`. Shared by all: `base.py`, `common.py`.
Adding a method: docs/adding_a_method.md."""
TASKS = (
    "supervised", "clip", "simclr", "distill", "finetune", "pskd", "weak_to_strong", "pseudo_label",
    "sla", "coteaching", "look", "tgeo_kd", "promptkd",
)
REGISTERING_MODULES = tuple(f"{__name__}.{task}.task" for task in TASKS)  # what registry imports
