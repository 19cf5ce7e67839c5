"""Task "promptkd": task.py (the objective, registered on import) and section.py (its config declaration, no JAX)."""
