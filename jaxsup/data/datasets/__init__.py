"""Datasets: TFDS splits, converted array_record shards, the offline digits builder, split ranges."""
