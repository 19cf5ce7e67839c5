"""Label sources beside the dataset's own: synthetic label noise, weak-to-strong weak labels."""
