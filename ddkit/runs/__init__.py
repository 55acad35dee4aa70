"""One run's parameters and records: the parameter validator, run folders and result.json, a notebook's
declared parameters and tagged cells, pictures and viewers of a run.

Imports core and the contract modules; core, fast and the contract modules never import it; the
methods record their runs through it.
"""
