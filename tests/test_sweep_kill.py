"""A real ``ddkit sweep`` process, SIGKILLed mid-run (in the middle of writing a synthetic set), then
started again: each unfinished run runs exactly once, finished runs are not re-run, no half-written
``result.json`` or synset is left, and a failing run keeps its executed notebook and parameters and
is listed in the summary with its error line.

The fixture notebook logs ``start <run>`` / ``end <run>`` to ``<results>/log.txt``. Run ``r1`` writes
half of its synset through ddkit's atomic writer and then waits while ``<results>/block`` exists:
that is where the first sweep is killed (the whole process group, kernels included, as a lost node
would be).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

PARAMS = '''dataset = "mnist5k"
data_root = ""
ipc = 1
model = "ConvNet"
iterations = 1
seed = 0
device = "cpu"
eval_model = "ConvNet"
eval_epochs = 1
num_eval = 1
run_name = ""
results_dir = ""
'''

BODY = '''import time
from pathlib import Path
from ddkit.core.utils import _atomic_write
from ddkit.runs.results import write_result
root = Path(results_dir)
with open(root / "log.txt", "a") as fh:
    fh.write(f"start {run_name}\\n")
rd = root / "kill" / run_name
rd.mkdir(parents=True, exist_ok=True)
if seed == 2:
    raise RuntimeError(f"boom in {run_name}\\nsecond line of the message, last line: seed={seed}")

def half_then_wait(fh):
    fh.write(b"half of a synthetic set")
    fh.flush()
    deadline = time.time() + 600
    while seed == 1 and (root / "block").exists() and time.time() < deadline:
        time.sleep(0.2)
    fh.write(b" and the other half")

_atomic_write(rd / "synset.pt", half_then_wait)
write_result(rd, method="Fixture", dataset=dataset, ipc=ipc, model=model,
             params=dict(dataset=dataset, data_root=data_root, ipc=ipc, model=model, iterations=iterations,
                         seed=seed, device=device, eval_model=eval_model, eval_epochs=eval_epochs,
                         num_eval=num_eval, run_name=run_name, results_dir=results_dir),
             accs=[float(seed)], seconds=0.0, device="cpu")
with open(root / "log.txt", "a") as fh:
    fh.write(f"end {run_name}\\n")
'''

GRID = """notebook: 91_kill.ipynb
name: "r{seed}"
grid:
  seed: [0, 1, 2, 3]
"""


def make_notebook(folder: Path) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(folder / "91_kill.ipynb"))


def sweep_cmd(tmp: Path) -> list:
    return [sys.executable, "-m", "ddkit.cli", "sweep", str(tmp / "grid.yaml"), "--results-dir",
            str(tmp / "results"), "--notebooks-dir", str(tmp / "nb"), "--no-progress"]


def log(tmp: Path) -> list:
    path = tmp / "results" / "log.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def wait_for(condition, proc, what: str, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


def run_dir(tmp: Path, name: str) -> Path:
    return tmp / "results" / "kill" / name


def test_sigkilled_sweep_resumes_each_unfinished_run_exactly_once(tmp_path):
    make_notebook(tmp_path / "nb")
    (tmp_path / "grid.yaml").write_text(GRID)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "block").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen(sweep_cmd(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, start_new_session=True)
    synset_tmp = lambda: list(run_dir(tmp_path, "r1").glob(".synset.pt.*.tmp"))  # noqa: E731
    wait_for(lambda: bool(synset_tmp()), first, "r1 was writing its synset")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    first.stdout.close()
    assert log(tmp_path) == ["start r0", "end r0", "start r1"]
    r1 = run_dir(tmp_path, "r1")
    assert not (r1 / "synset.pt").exists() and not (r1 / "result.json").exists(), "nothing half-written"
    finished = json.loads((run_dir(tmp_path, "r0") / "result.json").read_text())

    (tmp_path / "results" / "block").unlink()
    second = subprocess.run(sweep_cmd(tmp_path), capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 1, second.stdout + second.stderr  # r2 fails by design
    starts = [line for line in log(tmp_path)[3:] if line.startswith("start")]
    assert sorted(starts) == ["start r1", "start r2", "start r3"], "each unfinished run exactly once, r0 not again"
    assert json.loads((run_dir(tmp_path, "r0") / "result.json").read_text()) == finished
    for name in ("r0", "r1", "r3"):
        rd = run_dir(tmp_path, name)
        assert json.loads((rd / "result.json").read_text())["accs"] == [float(name[1])]
        assert (rd / "synset.pt").read_bytes() == b"half of a synthetic set and the other half"
        assert not list(rd.glob(".*.tmp")), f"{name}: a temporary file of a killed write is left"
    assert "1 skipped" in second.stdout and "3 ran" not in second.stdout

    # the failing run: its executed notebook with the error cell, its parameters, its error line in the summary
    r2 = run_dir(tmp_path, "r2")
    err = json.loads((r2 / "error.json").read_text())
    assert err["params"]["seed"] == 2 and err["ename"] == "RuntimeError"
    executed = nbformat.read(str(r2 / "91_kill.ipynb"), as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and "boom in r2" in errors[0]["evalue"]
    assert "FAILED kill/r2" in second.stdout and "last line: seed=2" in second.stdout, second.stdout
    assert not (r2 / "result.json").exists()
