"""Device augmentation: jitted JAX ops on whole batches, deterministic from an RNG key."""
