"""Evaluators. Importing a module listed in __all__ registers it."""
__all__ = ["classification"]
__all__ += ["zero_shot", "retrieval", "linear_probe", "knn"]
__all__ += ["distill"]
__all__ += ["heldout"]
__all__ += ["clip_benchmark"]
