"""ddkit: a notebook-first research kit for dataset distillation."""
__version__ = "0.1.0"
