"""ddkit.batch.sweep: grid expansion/validation, local + Dask execution, resume, failures.

A tiny fixture notebook (no torch, no ddkit import) stands in for the method notebooks
so these tests take seconds; the last test checks the repo's own params files against
the real notebooks.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from ddkit.batch import sweep as sw
from ddkit.runs.notebook_params import parameters_source

PARAMS_SRC = '''dataset = "mnist5k"
data_root = ""
ipc = 1
model = "ConvNet"
iterations = 10
seed = 0
device = "auto"
eval_model = "ConvNet"
eval_epochs = 1
num_eval = 2
run_name = ""
results_dir = ""
lr_img = 1.0
fail = False
'''

BODY_SRC = '''import json, os, time
from pathlib import Path
if fail:
    raise RuntimeError(f"boom at ipc={ipc} seed={seed}")
rd = Path(results_dir) / "fixture" / run_name
rd.mkdir(parents=True, exist_ok=True)
accs = [10.0 * ipc + seed, 10.0 * ipc + seed + 1.0]
mean = sum(accs) / len(accs)
std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
res = dict(method="Fixture", dataset=dataset, ipc=ipc, model=model,
           params=dict(dataset=dataset, data_root=data_root, ipc=ipc, model=model,
                       iterations=iterations, seed=seed, device=device, eval_model=eval_model,
                       eval_epochs=eval_epochs, num_eval=num_eval, run_name=run_name,
                       results_dir=results_dir, lr_img=lr_img, fail=fail),
           accs=accs, mean=mean, std=std, seconds=0.01, ddkit_version="test", git_commit="",
           device="cpu", created="2026-01-01T00:00:00", cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
tmp = rd / "result.json.tmp"
tmp.write_text(json.dumps(res))
os.replace(tmp, rd / "result.json")
print("wrote", rd / "result.json")
'''


def make_notebook(folder: Path, name: str = "90_fixture.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# fixture"))
    p = nbformat.v4.new_code_cell(PARAMS_SRC)
    p.metadata["tags"] = ["parameters"]
    nb.cells.append(p)
    nb.cells.append(nbformat.v4.new_code_cell(BODY_SRC))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def env(tmp_path):
    nbdir = tmp_path / "notebooks"
    make_notebook(nbdir)
    return dict(nbdir=nbdir, results=tmp_path / "results", tmp=tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GRID = """
notebook: 90_fixture.ipynb
name: "{dataset}_ipc{ipc}_s{seed}"
params:
  iterations: 5
  lr_img: 1        # int for a float key: accepted, injected as 1.0
grid:
  ipc: [1, 2]
  seed: [0, 1]
"""


# ----------------------------------------------------------------------------- expansion
def test_expand_cartesian_product_and_names(env):
    g = write(env["tmp"] / "g.yaml", GRID)
    runs = sw.expand(g, results_dir=env["results"], notebooks_dir=env["nbdir"])
    assert [r.run_name for r in runs] == [
        "mnist5k_ipc1_s0", "mnist5k_ipc1_s1", "mnist5k_ipc2_s0", "mnist5k_ipc2_s1"]
    assert all(r.key == "fixture" for r in runs)
    assert runs[0].params == {"iterations": 5, "lr_img": 1.0, "ipc": 1, "seed": 0}
    assert isinstance(runs[0].params["lr_img"], float)
    assert runs[3].out_dir == env["results"].resolve() / "fixture" / "mnist5k_ipc2_s1"
    assert runs[0].notebook_params()["run_name"] == "mnist5k_ipc1_s0"


def test_default_names_list_grid_multidoc_and_flat_files(env):
    (env["tmp"] / "foo.npz").write_bytes(b"")  # a dataset file must exist (the sweep checks it)
    g = write(env["tmp"] / "abl.yaml", """
notebook: 90_fixture
grid:
  - {lr_img: [0.5], iterations: [3]}
  - {lr_img: [2.0], iterations: [4]}
---
notebook: 90_fixture.ipynb
name: "other{index}"
params: {dataset: DATA}
""".replace("DATA", str(env["tmp"] / "foo.npz")))
    runs = sw.expand(g, results_dir=env["results"], notebooks_dir=env["nbdir"])
    assert [r.run_name for r in runs] == ["abl_lr_img0.5_iterations3", "abl_lr_img2.0_iterations4", "other0"]
    # flat params file: the notebook comes from the path params/cpu/<stem>.yaml
    flat = write(env["tmp"] / "params" / "cpu" / "90_fixture.yaml", "ipc: 2\nseed: 3\n")
    (r,) = sw.expand(flat, results_dir=env["results"], notebooks_dir=env["nbdir"])
    assert r.run_name == "cpu" and r.params == {"ipc": 2, "seed": 3}
    # --set overrides apply to every run and win over the grid
    runs = sw.expand(write(env["tmp"] / "g.yaml", GRID), results_dir=env["results"],
                     notebooks_dir=env["nbdir"], overrides={"iterations": 7})
    assert {r.params["iterations"] for r in runs} == {7}


def test_defaults_document_is_shared_by_later_documents(env):
    make_notebook(env["nbdir"], "91_other.ipynb")
    g = write(env["tmp"] / "multi.yaml", """
defaults:
  name: "d_{ipc}_{seed}"
  params: {iterations: 3, seed: 1}
  grid: {ipc: [1, 2]}
---
notebook: 90_fixture.ipynb
---
notebook: 91_other.ipynb
params: {ipc: 5, seed: 2}     # own values win over the shared grid / params
""")
    runs = sw.expand(g, results_dir=env["results"], notebooks_dir=env["nbdir"])
    assert [(r.key, r.run_name) for r in runs] == [("fixture", "d_1_1"), ("fixture", "d_2_1"), ("other", "d_5_2")]
    assert runs[2].params == {"iterations": 3, "seed": 2, "ipc": 5}
    with pytest.raises(ValueError, match="unknown key.*under 'defaults'"):
        sw.expand(write(env["tmp"] / "bad.yaml", "defaults: {paramz: {}}\n---\nnotebook: 90_fixture\n"),
                  notebooks_dir=env["nbdir"])


@pytest.mark.parametrize("text, needle", [
    ("notebook: 90_fixture.ipynb\ngrid: {ipc: [1, 2}\n", "malformed YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("notebook: 99_nope.ipynb\ngrid: {ipc: [1]}\n", "unknown notebook '99_nope.ipynb'"),
    ("notebook: 90_fixture.ipynb\ngrid: {ipcc: [1, 2]}\n", "unknown key 'ipcc' (did you mean ipc"),
    ("notebook: 90_fixture.ipynb\nparams: {itrations: 3}\n", "unknown key 'itrations'"),
    ("notebook: 90_fixture.ipynb\ngrid: {ipc: [1, '10']}\n", "key 'ipc' expects int"),
    ("notebook: 90_fixture.ipynb\nparams: {ipc: 1.5}\n", "key 'ipc' expects int"),
    ("notebook: 90_fixture.ipynb\nparams: {fail: 1}\n", "key 'fail' expects bool"),
    ("notebook: 90_fixture.ipynb\nparams: {dataset: 3}\n", "key 'dataset' expects str"),
    ("notebook: 90_fixture.ipynb\ngrid: {ipc: 1}\n", "must map to a list"),
    ("notebook: 90_fixture.ipynb\ngrid: {ipc: []}\n", "empty list"),
    ("notebook: 90_fixture.ipynb\nipc: 3\n", "unknown top-level key"),
    ("grid: {ipc: [1]}\n", "missing 'notebook:'"),
    ("notebook: 90_fixture.ipynb\nname: x\ngrid: {ipc: [1, 2]}\n", "duplicate run name"),
    ("notebook: 90_fixture.ipynb\nname: '{nope}'\n", "unknown key 'nope'"),
    ("notebook: 90_fixture.ipynb\nparams: {ipc: 1}\ngrid: {ipc: [1, 2]}\n", "both in 'params' and in 'grid'"),
    ("notebook: 90_fixture.ipynb\nparams: {results_dir: /tmp}\n", "set by the sweep"),
    ("notebook: 90_fixture.ipynb\nresources: {GPU: one}\n", "'resources' must map"),
])
def test_bad_grid_files_fail_before_any_run(env, text, needle):
    bad = write(env["tmp"] / "bad.yaml", text)
    good = write(env["tmp"] / "good.yaml", GRID)
    with pytest.raises(ValueError) as ei:
        sw.sweep([good, bad], results_dir=env["results"], notebooks_dir=env["nbdir"], progress=False)
    assert needle in str(ei.value)
    assert not env["results"].exists(), "nothing may run when any file is invalid"


def test_missing_grid_file_is_a_value_error(env):
    with pytest.raises(ValueError, match="does not exist"):
        sw.expand(env["tmp"] / "nope.yaml", notebooks_dir=env["nbdir"])


def test_dry_run_lists_and_runs_nothing(env, capsys):
    g = write(env["tmp"] / "g.yaml", GRID)
    s = sw.sweep(g, results_dir=env["results"], notebooks_dir=env["nbdir"], dry_run=True, progress=False)
    text = capsys.readouterr().out
    assert len(s.pending) == 4 and "fixture/mnist5k_ipc2_s1" in text and "dry run: 4 runs" in text
    assert not env["results"].exists()


# ----------------------------------------------------------------------------- execution
def _results(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("fixture/*/result.json")}


def test_local_sweep_2x2_resume_and_failures(env, capsys):
    g = write(env["tmp"] / "g.yaml", GRID)
    kw = dict(results_dir=env["results"], notebooks_dir=env["nbdir"], progress=False)
    s = sw.sweep(g, workers=2, gpus=["7", "8"], **kw)
    assert s.ok and len(s.done) == 4 and not s.skipped
    res = _results(env["results"])
    assert sorted(res) == ["mnist5k_ipc1_s0", "mnist5k_ipc1_s1", "mnist5k_ipc2_s0", "mnist5k_ipc2_s1"]
    assert res["mnist5k_ipc2_s1"]["mean"] == 21.5
    assert res["mnist5k_ipc1_s0"]["params"]["lr_img"] == 1.0
    assert {r["cuda_visible"] for r in res.values()} <= {"7", "8"}, "each worker pinned to one GPU"
    run_dir = env["results"] / "fixture" / "mnist5k_ipc1_s0"
    assert (run_dir / "90_fixture.ipynb").is_file(), "executed notebook next to result.json"
    out = capsys.readouterr().out
    assert out.count(" ok ") == 4 and "acc 10.50 ± 0.50" in out

    # "interrupt": one result lost, one run corrupt -> the rerun only does those two
    (env["results"] / "fixture" / "mnist5k_ipc2_s0" / "result.json").unlink()
    (env["results"] / "fixture" / "mnist5k_ipc1_s1" / "result.json").write_text("{half")
    s = sw.sweep(g, workers=1, **kw)
    assert {r.run_name for r, _ in s.done} == {"mnist5k_ipc2_s0", "mnist5k_ipc1_s1"}
    assert len(s.skipped) == 2

    # a changed parameter re-runs, a failing run is recorded and the sweep goes on
    g2 = write(env["tmp"] / "g2.yaml", GRID.replace("iterations: 5", "iterations: 6")
               .replace("ipc: [1, 2]", "ipc: [1]").replace("seed: [0, 1]", "seed: [0]\n  fail: [false, true]")
               .replace('name: "{dataset}_ipc{ipc}_s{seed}"', 'name: "{dataset}_ipc{ipc}_s{seed}_f{fail}"'))
    assert (env["results"] / "fixture" / "mnist5k_ipc1_s0_fFalse").mkdir() is None
    import shutil
    shutil.copy(env["results"] / "fixture" / "mnist5k_ipc1_s0" / "result.json",
                env["results"] / "fixture" / "mnist5k_ipc1_s0_fFalse" / "result.json")
    s = sw.sweep(g2, workers=1, **kw)
    assert len(s.runs) == 2 and len(s.done) == 1 and len(s.failed) == 1 and not s.ok
    assert (env["results"] / "fixture" / "mnist5k_ipc1_s0_fFalse" / "result.prev.json").is_file()
    err_dir = env["results"] / "fixture" / "mnist5k_ipc1_s0_fTrue"
    err = json.loads((err_dir / "error.json").read_text())
    assert err["ename"] == "RuntimeError" and "boom at ipc=1 seed=0" in err["evalue"]
    assert "raise RuntimeError" in err["cell_source"]
    executed = nbformat.read(str(err_dir / "90_fixture.ipynb"), as_version=4)
    assert any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
    assert "FAILED fixture/mnist5k_ipc1_s0_fTrue" in s.format()
    # the failed one is retried (and still fails), the finished one is skipped
    s = sw.sweep(g2, workers=1, **kw)
    assert len(s.skipped) == 1 and len(s.failed) == 1 and not s.done


def test_status_detects_changed_params(env):
    g = write(env["tmp"] / "g.yaml", "notebook: 90_fixture.ipynb\nname: one\nparams: {ipc: 3}\n")
    (run,) = sw.expand(g, results_dir=env["results"], notebooks_dir=env["nbdir"])
    assert sw.run_status(run)[0] == "missing"
    run.out_dir.mkdir(parents=True)
    (run.out_dir / "result.json").write_text(json.dumps({"params": {"ipc": 3.0}, "mean": 1}))
    assert sw.run_status(run)[0] == "done"
    (run.out_dir / "result.json").write_text(json.dumps({"params": {"ipc": 4}, "mean": 1}))
    st, detail = sw.run_status(run)
    assert st == "changed" and "ipc 4 -> 3" in detail


@pytest.mark.parametrize("processes", [True])
def test_dask_localcluster_2x2(env, processes, capsys):
    distributed = pytest.importorskip("distributed")
    g = write(env["tmp"] / "g.yaml", GRID + "resources: {CPU_SLOT: 1}\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=processes,
                                  host="127.0.0.1", protocol="tcp", dashboard_address=None,
                                  resources={"CPU_SLOT": 1}) as cluster:
        s = sw.sweep(g, scheduler=cluster.scheduler_address, results_dir=env["results"],
                     notebooks_dir=env["nbdir"], progress=False)
        assert s.ok and len(s.done) == 4
        assert len(_results(env["results"])) == 4
        (env["results"] / "fixture" / "mnist5k_ipc1_s1" / "result.json").unlink()
        with distributed.Client(cluster) as client:
            s = sw.sweep(g, scheduler=client, results_dir=env["results"],
                         notebooks_dir=env["nbdir"], progress=False)
        assert [r.run_name for r, _ in s.done] == ["mnist5k_ipc1_s1"] and len(s.skipped) == 3


def test_cli_sweep(env, capsys):
    from ddkit.cli import main

    g = write(env["tmp"] / "g.yaml", GRID)
    common = [str(g), "--results-dir", str(env["results"]), "--notebooks-dir", str(env["nbdir"])]
    assert main(["sweep", *common, "--dry-run"]) == 0
    assert "dry run: 4 runs" in capsys.readouterr().out
    assert main(["sweep", *common, "--workers", "1", "--set", "iterations=2", "--no-progress",
                 "--only", "ipc1"]) == 0
    assert len(_results(env["results"])) == 2
    bad = write(env["tmp"] / "bad.yaml", "notebook: 90_fixture.ipynb\ngrid: {ipcc: [1]}\n")
    assert main(["sweep", str(bad), "--notebooks-dir", str(env["nbdir"])]) == 2
    assert "unknown key 'ipcc'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- repo params files
REPO = Path(__file__).resolve().parents[1]
PARAM_FILES = sorted(p for p in (REPO / "params").rglob("*.y*ml")) if (REPO / "params").is_dir() else []


@pytest.mark.parametrize("path", PARAM_FILES, ids=[str(p.relative_to(REPO)) for p in PARAM_FILES])
def test_repo_params_files_match_their_notebooks(path):
    """Every params/**.yaml only uses keys (with the right types) its notebook declares."""
    runs = sw.validate_params_file(path, notebooks_dir=REPO / "notebooks")
    assert runs


# ----------------------------------------------------------------------------- one validator
SPEC_SRC = '''import json
from ddkit.runs.params import check_params
CHECKS = {"lr_img": "(0, inf)"}
P = check_params(globals(), CHECKS)
'''


@pytest.mark.parametrize("grid, needle", [
    ("{ipc: [1, 0]}", "ipc=0 is too small"),
    ("{lr_img: [0.0]}", "lr_img=0.0 is too small"),
    ("{dataset: [mnist5k, nope]}", "unknown dataset"),
    ("{device: [gpu]}", "expected 'auto', 'cpu'"),
])
def test_sweep_rejects_what_the_notebooks_spec_rejects(env, grid, needle):
    """The sweep validates with the notebook's own CHECKS (ranges, choices, checks, read with ast) and the
    types of its defaults: a value check_params would refuse inside the notebook fails the expansion."""

    nb = make_notebook(env["nbdir"], "91_spec.ipynb")
    book = nbformat.read(str(nb), as_version=4)
    book.cells.insert(2, nbformat.v4.new_code_cell(SPEC_SRC))
    nbformat.write(book, str(nb))
    assert sw.notebook_spec(nb)["lr_img"].check.lo_open and sw.notebook_spec(nb)["fail"].type is bool
    bad = write(env["tmp"] / "spec.yaml", f"notebook: 91_spec.ipynb\nname: '{{index}}'\ngrid: {grid}\n")
    with pytest.raises(ValueError, match=needle):
        sw.expand([bad], results_dir=env["results"], notebooks_dir=env["nbdir"])
    key, values = next(iter(__import__("yaml").safe_load(grid).items()))
    defaults = {k: i.default for k, i in sw.notebook_parameters(nb).items()}
    with pytest.raises(ValueError, match=needle):  # the notebook's own check cell says the same
        exec(SPEC_SRC, {"In": ["", parameters_source(nb)], **defaults, key: values[-1]})
