"""Run a notebook's tagged cell outside the notebook: the code a reader sees (e.g. a paper's
objective, tagged ``objective``) is the code that tests and benchmarks execute, never a retyped copy.

    ns = run_tagged("notebooks/03_iid.ipynb", "objective")
    objective = ns["make_iid_objective"](cc_pool=pool, lambda_cc=0.05)
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["tagged_source", "run_tagged"]


def tagged_source(notebook: str | Path, tag: str) -> str:
    """The source of the one cell of ``notebook`` (an ``.ipynb`` path) tagged ``tag``; ValueError
    naming the notebook and the tag when there is none or more than one."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    found = ["".join(c["source"]) for c in cells if tag in c.get("metadata", {}).get("tags", [])]
    if len(found) != 1:
        raise ValueError(f"{notebook}: expected exactly one cell tagged {tag!r}, found {len(found)}")
    return found[0]


def run_tagged(notebook: str | Path, tag: str, namespace: dict | None = None) -> dict:
    """Execute the cell tagged ``tag`` in ``namespace`` (a fresh dict by default) and return it."""
    ns = {} if namespace is None else namespace
    exec(compile(tagged_source(notebook, tag), f"{Path(notebook).name}[{tag}]", "exec"), ns)
    return ns
