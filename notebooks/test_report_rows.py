"""After nbval has executed every notebook in this session (``pytest tests notebooks --nbval-lax``; this
file sorts after the notebooks), each method notebook's run must have reached the session's results folder
with an ``evaluations`` list, and ``ddkit.reporting.report.collect`` must turn it into report rows."""
import os
from pathlib import Path

import pytest

from ddkit.reporting.report import collect
from ddkit.runs.results import notebook_key, read_result

NB = Path(__file__).resolve().parent
METHOD_NOTEBOOKS = sorted(p for p in NB.glob("0*.ipynb"))


def test_every_method_notebook_of_this_session_writes_evaluations_that_reach_the_report():
    root = Path(os.environ.get("DDKIT_RESULTS", ""))
    keys = {notebook_key(p.stem) for p in METHOD_NOTEBOOKS}
    written = {p.parent.parent.name: p for p in root.glob("*/*/result.json")} if root.is_dir() else {}
    if not keys & set(written):
        pytest.skip("no notebook ran in this session: run with the notebooks (pytest tests notebooks --nbval-lax)")
    assert keys <= set(written), f"notebooks without a result.json this session: {sorted(keys - set(written))}"
    for key in keys:
        rec = read_result(written[key])
        assert rec["evaluations"] and all(e["accs"] for e in rec["evaluations"]), key
    df = collect(root, include_test=True)
    assert keys <= set(df["notebook"]), f"notebooks missing from the report: {sorted(keys - set(df['notebook']))}"
    for key in keys:
        rows = df[df["notebook"] == key]
        assert len(rows) and rows["accs"].map(len).min() >= 1, key
