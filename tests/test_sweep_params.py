"""Every parameter a notebook declares is reachable from ``ddkit sweep --set``, and the sweep refuses
before any run what the notebook (or the command line) would refuse."""
from __future__ import annotations

from pathlib import Path

import pytest

from ddkit.batch.sweep_grid import SWEEP_KEYS, expand
from ddkit.cli import main
from ddkit.runs.notebook_params import notebook_parameters, notebook_spec, papermill_blind_spots

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: the notebooks a sweep runs (the report notebook has no run_name: nothing to sweep)
SWEEPABLE = [nb for nb in NOTEBOOKS if set(SWEEP_KEYS) <= set(notebook_parameters(nb))]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_papermill_sees_every_parameter_ddkit_reads(nb):
    """papermill drops a parameters-cell line holding two '=' (one in a comment): none may."""
    assert papermill_blind_spots(nb) == []


def test_the_method_notebooks_are_sweepable():
    assert len(SWEEPABLE) == len(NOTEBOOKS) - 1 >= 6


@pytest.mark.parametrize("nb", SWEEPABLE, ids=[p.name for p in SWEEPABLE])
def test_every_declared_parameter_is_settable_by_sweep_set(nb, tmp_path):
    params = notebook_parameters(nb)
    overrides = {k: i.default for k, i in params.items() if k not in SWEEP_KEYS}
    (run,) = expand([nb], tmp_path, None, overrides)
    assert run.params == overrides and run.run_name == "defaults"


def test_the_reader_takes_any_comment(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('# a = 1 is a comment\nx = "off"  # (off = float32, a == b)\n'
                                     'y: float = 2  # typed\nz = [1,\n     2]  # spans lines\nrun_name = "é"  # ünïcode\n')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    got = notebook_parameters(path)
    assert {k: (i.default, i.type) for k, i in got.items()} == {
        "x": ("off", str), "y": (2, float), "z": ([1, 2], list), "run_name": ("é", str)}
    assert got["x"].help == "(off = float32, a == b)" and got["z"].help == "spans lines"
    assert got["run_name"].help == "ünïcode"
    assert papermill_blind_spots(path) == ["x"]


def test_sweep_set_reaches_eval_amp(capsys):
    assert main(["sweep", "params/demo.yaml", "--set", "eval_amp=bf16", "--dry-run", "--no-progress",
                 "--results-dir", "/nonexistent-ddkit-results"]) == 0
    assert "eval_amp='bf16'" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--set", "ipc=1", "params/cpu/03_iid.yaml"], "covariance matching term needs at least 2"),
    (["--set", "dataset=missing.npz", "params/cpu/03_iid.yaml"], "'missing.npz': no such file"),
    (["--set", "ipc=1", "params/cpu/04_dsdm.yaml", "--set", "factor=1"], "semantic diversity"),
    (["--set", "gan_betas=[1.5, 0.9]", "params/cpu/01_gan_global_local.yaml"], "gan_betas"),
])
def test_dry_run_applies_the_notebooks_own_checks(argv, message, capsys, tmp_path):
    assert main(["sweep", *argv, "--dry-run", "--results-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("notebook, weights", [
    ("01_gan_global_local", ["w_global", "w_local", "gan_weight", "aux_weight"]),
    ("02_gan_skd", ["w_global", "lambda_skd", "gan_weight", "aux_weight"]),
    ("03_iid", ["lambda_cc", "lambda_cm", "idm_ce_weight"]),
    ("04_dsdm", ["lambda_sd", "lambda_h"]),
])
def test_loss_weights_are_checked_once_before_compute(notebook, weights):
    """The notebooks' CHECKS refuse a negative or non-finite loss weight (the objectives do not check again)."""
    spec = notebook_spec(REPO / "notebooks" / f"{notebook}.ipynb")
    for key in weights:
        assert spec[key].validate(key, 0) == 0.0
        for bad, match in ((-0.01, "is too small; expected >= 0"), (float("nan"), "is not a finite number")):
            with pytest.raises(ValueError, match=f"{key}={bad!r} {match}"):
                spec[key].validate(key, bad)


def test_checks_are_read_not_run(tmp_path):
    """CHECKS holds literals and ddkit names only; anything else is named, never executed."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("ipc = 1\nmode = 'a'\n")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from ddkit.runs.params import Choice, Range\nCHECKS = {'ipc': Range(1), 'mode': Choice(*open('x'))}\n")]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="CHECKS holds \"open\\("):
        notebook_spec(path)
    nb.cells[1].source = "from ddkit.runs.params import Range\nCHECKS = {'ipcc': Range(1)}\n"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match=r"constrains \['ipcc'\], which its parameters cell lacks"):
        notebook_spec(path)


@pytest.mark.parametrize("option", ["--workers=0", "--workers=-3", "--threads=0", "--timeout=-5", "--timeout=0"])
def test_bad_numbers_are_refused(option, capsys):
    with pytest.raises(SystemExit) as done:
        main(["sweep", "params/demo.yaml", option, "--dry-run"])
    assert done.value.code == 2
    assert option.split("=")[0] in capsys.readouterr().err


def test_a_folder_runs_every_params_file_and_a_notebook_its_defaults(tmp_path, capsys):
    assert main(["sweep", "params/cpu", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    assert f"dry run: {len(list((REPO / 'params' / 'cpu').glob('*.yaml')))} runs" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["sweep", str(tmp_path / "empty"), "--dry-run"]) == 2
    assert "folder without grid files" in capsys.readouterr().err
    assert main(["sweep", "notebooks/00_quickstart.ipynb", "--dry-run", "--results-dir", str(tmp_path)]) == 0
    assert "quickstart/defaults" in capsys.readouterr().out


def test_ddkit_run_validates_before_torchrun(monkeypatch, capsys):
    """One line on stderr and exit 2; torchrun never starts."""
    import ddkit.batch.launch

    def no_torchrun(cmd):
        raise AssertionError(f"torchrun started: {cmd}")

    monkeypatch.setattr(ddkit.batch.launch.subprocess, "call", no_torchrun)
    assert main(["run", "--nproc", "1", "--set", "ipcc=1", "params/cpu/00_quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unknown key 'ipcc' (did you mean ipc?)" in err
    assert main(["run", "--nproc", "1", "params/cpu/03_iid.yaml", "--set", "ipc=1"]) == 2
    assert "covariance matching term" in capsys.readouterr().err


def test_rules_are_read_not_run(tmp_path):
    """RULES is a dict of string literals read with ast; a rule naming a key the parameters cell lacks is
    refused when the sweep reads it, and a run breaking a rule is refused before it starts."""
    import nbformat

    from ddkit.runs.notebook_params import check_run, notebook_rules

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("ipc = 2\nfactor = 1\n")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("RULES = {'ipc * factor ** 2 >= 2': 'two per class'}\n")]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert notebook_rules(path) == {"ipc * factor ** 2 >= 2": "two per class"}
    check_run(path, {"ipc": 2, "factor": 1}, "here")
    with pytest.raises(ValueError, match=r"here: notebook n.ipynb would refuse .*two per class"):
        check_run(path, {"ipc": 1, "factor": 1}, "here")
    for bad, match in (("RULES = {'ipc > 0': str(1)}\n", "dict of string literals"),
                       ("RULES = {'ipcc > 0': 'x'}\n", r"reads \['ipcc'\]")):
        nb.cells[1].source = bad
        nbformat.write(nb, path)
        with pytest.raises(ValueError, match=match):
            notebook_rules(path)
