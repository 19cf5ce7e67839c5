"""`python -m jaxsup.w2s --config configs/w2s_digits.py --workdir DIR`: see jaxsup.w2s.pipeline."""
from jaxsup import cli
from jaxsup.w2s import pipeline

pipeline.define_flags()
cli.run(pipeline.main)
