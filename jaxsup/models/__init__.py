"""Image and text models (flax.linen). Importing a module listed in __all__ registers it."""
__all__ = ["small", "transformer", "vit", "naflex_vit", "text", "two_tower", "resnet", "heads"]
