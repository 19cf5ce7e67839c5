"""Training objectives. Importing a module listed in __all__ registers its tasks."""
__all__ = ["supervised"]
__all__ += ["clip", "simclr"]
__all__ += ["distill", "finetune", "pskd"]
__all__ += ["weak_to_strong", "pseudo_label"]
__all__ += ["sla", "coteaching", "look"]
__all__ += ["tgeo_kd", "promptkd"]
