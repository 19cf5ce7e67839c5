"""Weak-to-strong: the pipeline driver (`python -m jaxsup.w2s`, pipeline.py) and its PGR report (pgr.py)."""
