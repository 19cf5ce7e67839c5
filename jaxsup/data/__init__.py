"""Data, in rooms by role (each sub-package's docstring says what it holds):

datasets/  TFDS splits, converted shards, the digits builder, split ranges
convert/   `python -m jaxsup.data.convert`: image-text / image-folder data -> shards
text/      tokenizers, token-id rows, zero-shot class names and prompt templates
host/      per-example host ops in the grain workers (decode, crops, resize, RandAugment)
device/    jitted batch augmentation on the accelerator
loader/    the grain pipeline: train stream, eval batches, batched reads, guided batches
labels/    label noise and weak-to-strong weak labels
reinforce/ `python -m jaxsup.data.reinforce`: a teacher's stored targets beside converted shards
"""
