"""The grain pipeline: deterministic checkpointable train stream, padded eval batches, batched reads, guided batches."""
