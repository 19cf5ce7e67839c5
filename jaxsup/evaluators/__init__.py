"""Evaluators. Importing a module listed in __all__ registers it."""
__all__ = ["classification"]
