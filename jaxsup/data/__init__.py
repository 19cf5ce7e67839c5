"""Data: TFDS data sources, grain pipelines, preprocessing, augmentation, tokenizer."""
__all__ = ["sources"]
