"""How much of ddkit a method notebook leans on: the distinct ddkit names it imports (a reader copying
its cells has to learn each one), and which ddkit calls receive the whole parameter set."""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
METHOD_NOTEBOOKS = sorted(NOTEBOOKS.glob("0[0-9]_*.ipynb"))

#: At most this many distinct ddkit names per method notebook.
MAX_NAMES = 15
#: The one ddkit call that may receive the whole parameter set (``P`` or ``P.as_dict()``): the run object,
#: which records every parameter in result.json. Everything else takes the values it uses.
WHOLE_PARAMS_CALLS = {"Run"}


def code_trees(path: Path) -> list:
    return [ast.parse("".join(c["source"])) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def ddkit_names(trees) -> set:
    """Fully qualified ddkit names a notebook uses (``from ddkit.x import a`` -> ``ddkit.x.a``); a ddkit
    module imported as a whole (``import ddkit.x as m``, ``from ddkit import losses``) counts each name read
    from it (``m.a`` -> ``ddkit.x.a``), so importing modules instead of names does not lower the count.
    The same name used in two cells counts once."""
    names, modules = set(), {}
    nodes = [n for t in trees for n in ast.walk(t)]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ddkit" and not node.level:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _is_module(full):
                    modules[a.asname or a.name] = full
                else:
                    names.add(full)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ddkit":
                    modules[a.asname or a.name] = a.name
    for node in nodes:
        if isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            for alias, full in modules.items():
                if dotted.startswith(alias + "."):
                    rest = dotted[len(alias) + 1:].split(".")[0]
                    if not _is_module(f"{full}.{rest}"):
                        names.add(f"{full}.{rest}")
    return names


def is_whole_params(node) -> bool:
    """``P`` or ``P.as_dict()``: the validated parameters cell as one argument."""
    if isinstance(node, ast.Name):
        return node.id == "P"
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "as_dict"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "P")


def whole_params_calls(trees) -> set:
    """Names of the functions called with the whole parameter set as an argument."""
    out = set()
    for node in (n for t in trees for n in ast.walk(t)):
        if isinstance(node, ast.Call) and any(is_whole_params(a) for a in [*node.args,
                                                                            *(k.value for k in node.keywords)]):
            out.add(ast.unparse(node.func).split(".")[-1])
    return out


def test_the_method_notebooks_are_found():
    assert [p.stem[:2] for p in METHOD_NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_a_method_notebook_imports_few_ddkit_names(path):
    names = ddkit_names(code_trees(path))
    assert len(names) <= MAX_NAMES, (f"{path.name} imports {len(names)} ddkit names (at most {MAX_NAMES}): "
                                     f"{sorted(names)}")
    assert not [n for n in names if n.endswith("_from_params")], "a *_from_params wrapper hides the recipe"
    assert "ddkit.runs.results.Run" in names, f"{path.name} does not open its run with ddkit.runs.results.Run"


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_only_the_run_and_named_checks_take_the_whole_parameter_set(path):
    extra = whole_params_calls(code_trees(path)) - WHOLE_PARAMS_CALLS
    assert not extra, f"{path.name} passes P / P.as_dict() whole to {sorted(extra)}: pass the values it uses"


def test_the_counter_counts_distinct_names_and_sees_whole_params():
    trees = [ast.parse("from ddkit.data import load_dataset\nimport ddkit.losses\nimport torch\n"),
             ast.parse("from ddkit.data import load_dataset, ImageDataset\nrun = Run(P, 'x')\nf(a, cfg=P.as_dict())\n"
                       "g(P.seed)\nddkit.losses.skd_loss(1)\n")]
    assert ddkit_names(trees) == {"ddkit.data.load_dataset", "ddkit.data.ImageDataset", "ddkit.losses.skd_loss"}
    assert whole_params_calls(trees) == {"Run", "f"}


def test_importing_modules_instead_of_names_does_not_lower_the_count():
    tree = ast.parse("from ddkit import losses\nimport ddkit.methods.dm as dm\nfrom ddkit.methods import pools\n"
                     "losses.skd_loss(1); dm.make_pool(); dm.make_pool(); pools.RandomPool.for_dataset()\n")
    assert ddkit_names([tree]) == {"ddkit.losses.skd_loss", "ddkit.methods.dm.make_pool",
                                   "ddkit.methods.pools.RandomPool"}


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_a_sweep_reads_the_notebooks_checks_and_rules_without_running_them(path):
    """The cell that checks the parameters declares CHECKS (and RULES where keys depend on each other) as
    data: the sweep reads both with ast and runs none of the notebook's code."""
    from ddkit.runs.notebook_params import notebook_rules, notebook_spec

    spec, rules = notebook_spec(path), notebook_rules(path)
    assert spec["ipc"].check is not None and all(isinstance(r, str) for r in rules)
    assert "check_params(globals(), CHECKS" in "".join(ast.unparse(t) for t in code_trees(path))
