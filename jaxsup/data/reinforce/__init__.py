"""Dataset reinforcement: `python -m jaxsup.data.reinforce` stores a teacher's top-k targets for K
augmentations per example beside converted shards (cli.py); the replay op lives in host/reinforce_store.py."""
