"""Committed notebooks: no outputs, a 'parameters' cell with flat literals and the contract keys,
kernel python3; every params/*.yaml only uses keys its notebook declares."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONTRACT_KEYS = {"dataset", "data_root", "ipc", "model", "iterations", "seed", "device", "eval_model",
                 "eval_epochs", "num_eval", "run_name", "results_dir"}


def parameters_cell(nb):
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return "".join(cells[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "strip outputs before committing"
    tree = ast.parse(parameters_cell(nb))
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"parameters cell may only assign literals: {ast.dump(node)[:60]}"
        ast.literal_eval(node.value)  # flat literal
    assert nb["cells"][0]["cell_type"] == "markdown" and nb["cells"][0]["source"]


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in {"00", "01", "02", "03", "04", "05"}],
                         ids=lambda p: p.name)
def test_method_notebooks_have_contract_keys(path):
    nb = json.loads(path.read_text())
    keys = {t.id for n in ast.parse(parameters_cell(nb)).body for t in n.targets}
    assert CONTRACT_KEYS <= keys, CONTRACT_KEYS - keys
