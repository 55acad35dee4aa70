"""How much of ddkit a method notebook leans on: the distinct ddkit names it imports (a reader copying
its cells has to learn each one), and which ddkit calls receive the whole parameter set."""
import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
METHOD_NOTEBOOKS = sorted(NOTEBOOKS.glob("0[0-9]_*.ipynb"))

#: The goal for every method notebook.
MAX_NAMES = 15
#: Ceilings of the notebooks above the goal: the number they import today, so that it can only fall.
#: The run lifecycle is one name (``ddkit.runs.results.Run``) in each; what remains above 15 is the
#: parameter constraints (``COMMON``, ``Range``, ``Choice``, ``check_params``, ``require`` and the shared
#: constraints) and each method's own pieces: the DM-family
#: helpers of ``ddkit.methods.dm`` (pools, the accuracy curve, DSDM's bank and learning-rate rule),
#: the GAN stages and their evaluation, EAD's trajectory, estimator checks and evidence summary.
#: Folding those into fewer names would hide the recipe the notebooks exist to show.
CEILINGS = {
    "00_quickstart": 25,
    "01_gan_global_local": 33,
    "02_gan_skd": 29,
    "03_iid": 37,
    "04_dsdm": 48,
    "05_ead": 41,
}
#: ddkit calls that may receive the whole parameter set (``P`` or ``P.as_dict()``), per notebook:
#: the run object, the GAN notebooks' before-compute checks, the paired comparison that finds this
#: configuration's other seeds among the saved runs, and the IDM queue's settings (its ``idm_*`` keys).
WHOLE_PARAMS_CALLS = {
    "00_quickstart": {"Run"},
    "01_gan_global_local": {"Run", "check_notebook_params", "paired_over_seeds"},
    "02_gan_skd": {"Run", "check_notebook_params", "paired_over_seeds"},
    "03_iid": {"Run", "idm_queue_settings"},
    "04_dsdm": {"Run", "idm_queue_settings"},
    "05_ead": {"Run"},
}


def code_trees(path: Path) -> list:
    return [ast.parse("".join(c["source"])) for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code"]


def ddkit_names(trees) -> set:
    """Fully qualified ddkit names imported anywhere in the notebook (``from ddkit.x import a`` -> ``ddkit.x.a``,
    ``import ddkit.x`` -> ``ddkit.x``); the same name imported in two cells counts once."""
    names = set()
    for node in (n for t in trees for n in ast.walk(t)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ddkit" and not node.level:
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "ddkit"}
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


def test_every_method_notebook_has_a_ceiling():
    assert {p.stem for p in METHOD_NOTEBOOKS} == set(CEILINGS) == set(WHOLE_PARAMS_CALLS)


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_a_method_notebook_imports_few_ddkit_names(path):
    names = ddkit_names(code_trees(path))
    limit = max(MAX_NAMES, CEILINGS[path.stem])
    assert len(names) <= limit, f"{path.name} imports {len(names)} ddkit names (at most {limit}): {sorted(names)}"
    assert not [n for n in names if n.endswith("_from_params")], "a *_from_params wrapper hides the recipe"
    assert "ddkit.runs.results.Run" in names, f"{path.name} does not open its run with ddkit.runs.results.Run"


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_only_the_run_and_named_checks_take_the_whole_parameter_set(path):
    extra = whole_params_calls(code_trees(path)) - WHOLE_PARAMS_CALLS[path.stem]
    assert not extra, f"{path.name} passes P / P.as_dict() whole to {sorted(extra)}: pass the values it uses"


def test_the_counter_counts_distinct_names_and_sees_whole_params():
    trees = [ast.parse("from ddkit.data import load_dataset\nimport ddkit.losses\nimport torch\n"),
             ast.parse("from ddkit.data import load_dataset, ImageDataset\nrun = Run(P, 'x')\nf(a, cfg=P.as_dict())\n"
                       "g(P.seed)\n")]
    assert ddkit_names(trees) == {"ddkit.data.load_dataset", "ddkit.data.ImageDataset", "ddkit.losses"}
    assert whole_params_calls(trees) == {"Run", "f"}


@pytest.mark.parametrize("path", METHOD_NOTEBOOKS, ids=lambda p: p.stem)
def test_the_checks_a_sweep_runs_stop_before_the_run_opens(path):
    """A sweep validates every run with the notebook's own checks before any run starts: those must not open a
    run folder (seed, create folders) or load data."""
    from ddkit.runs.notebook_params import notebook_checks

    names = set(notebook_checks(path).co_names)
    assert "check_params" in names and not names & {"Run", "load_dataset"}, sorted(names)
