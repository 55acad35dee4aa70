"""One results folder: runs started anywhere inside the repository land in its ``results/``.

A notebook opened in JupyterLab (``jupyter lab notebooks/``) or run by papermill has its working
directory in ``notebooks/``; the CLI and sweeps usually run from the repository root. All of them
must write (and the report read) ``<repo>/results`` unless ``$DDKIT_RESULTS`` or an argument says
otherwise.
"""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import nbformat
import pytest

from ddkit.core.utils import REPO_ROOT
from ddkit.runs.results import resolve_results_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("DDKIT_RESULTS", raising=False)


@pytest.mark.parametrize("where", [".", "notebooks", "params/cpu"])
def test_default_results_folder_is_the_repositorys_from_any_subfolder(where, no_env, monkeypatch):
    monkeypatch.chdir(REPO / where)
    assert resolve_results_dir() == REPO_ROOT.resolve() / "results"


def test_environment_and_argument_still_win_inside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    monkeypatch.setenv("DDKIT_RESULTS", str(tmp_path / "env"))
    assert resolve_results_dir() == tmp_path / "env"
    assert resolve_results_dir(tmp_path / "arg") == tmp_path / "arg"


def test_report_and_sweep_from_notebooks_use_the_repository_results(no_env, monkeypatch, tmp_path):
    from ddkit.batch import sweep
    from ddkit.reporting import report

    monkeypatch.chdir(REPO / "notebooks")
    here = REPO_ROOT.resolve() / "results"
    assert report.default_out_dir() == here / "report"
    grid = tmp_path / "g.yaml"
    grid.write_text("notebook: 00_quickstart.ipynb\n")
    assert sweep.expand([grid])[0].results_dir == str(here)


def test_a_notebook_run_from_notebooks_writes_into_the_repository_results(no_env, tmp_path):
    """A kernel started in notebooks/ (as JupyterLab and papermill start it) with results_dir = ''."""
    import papermill as pm

    name = f"pytest-{uuid.uuid4().hex[:8]}"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from ddkit.runs.results import Run\n"
        f"d = Run({{'dataset': 'mnist5k', 'device': 'cpu', 'results_dir': '', 'run_name': {name!r}}}, "
        "'00_quickstart.ipynb').dir\n"
        "(d / 'result.json').write_text('{}')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "probe.ipynb"
    nbformat.write(nb, src)
    landed = REPO_ROOT.resolve() / "results" / "quickstart" / name
    try:
        pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), cwd=str(REPO / "notebooks"), progress_bar=False)
        assert (landed / "result.json").is_file()
        assert not (REPO / "notebooks" / "results" / "quickstart" / name).exists()
    finally:
        shutil.rmtree(landed, ignore_errors=True)
        if landed.parent.is_dir() and not any(landed.parent.iterdir()):  # leave a user's results/ as it was
            landed.parent.rmdir()
