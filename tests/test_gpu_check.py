"""``make gpu-check`` on the CPU: it refuses clearly where no CUDA device is present, its plan covers the
whole unit suite, every notebook and (when asked) the public-code comparison, and its scheduler and JSON
record behave as documented (the check processes mocked)."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bench.gpu_check as gc

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_without_cuda_fails_with_a_clear_message(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    assert proc.returncode == 2
    assert "no CUDA device here" in proc.stderr and "NVIDIA GPU" in proc.stderr and proc.stdout == ""
    assert not out.exists()


def test_the_plan_covers_the_whole_suite_every_notebook_and_the_public_code(tmp_path):
    checks = gc.plan(tmp_path, public_dm="/somewhere/DatasetCondensation", shards=3)
    units = [c for c in checks if c.kind == "unit"]
    assert len(units) == 3 and all(c.env["DDKIT_TEST_DEVICES"] == "cuda" for c in units)
    files = [a for c in units for a in c.cmd if a.endswith(".py")]
    expect = sorted(map(str, [*(REPO / "tests").glob("test_*.py"), *(REPO / "notebooks").glob("test_*.py")]))
    assert sorted(files) == expect and "-k" not in units[0].cmd  # every file once, no test filtered out
    notebooks = {c.name: c for c in checks if c.kind == "notebook"}
    stems = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    assert len(notebooks) == len(stems)
    quick = notebooks["notebook 00_quickstart (device=cuda)"]
    assert quick.cmd[-3:] == ["-p", "device", "cuda"] and quick.needs == ()
    report = notebooks["notebook 10_report"]  # no device parameter: runs as it is, after the notebooks it reads
    assert "-p" not in report.cmd and set(report.needs) == set(notebooks) - {"notebook 10_report"}
    last = checks[-1]
    assert last.kind == "public_dm" and last.alone and checks.index(last) == len(checks) - 1
    assert last.cmd[2:] == ["bench", "--only", "public_dm", "--quick", "--public-dm", "/somewhere/DatasetCondensation",
                            "--out", str(tmp_path / "bench")]
    assert all(c.kind != "public_dm" for c in gc.plan(tmp_path))


def _fake(name, kind="notebook", needs=(), alone=False):
    return gc.Check(name, kind, ["true"], needs=needs, alone=alone)


def test_dependencies_and_the_alone_check_wait_for_the_others(monkeypatch):
    events, lock = [], threading.Lock()

    def execute(check, timeout, env):
        with lock:
            events.append(("start", check.name))
        with lock:
            events.append(("end", check.name))
        return {"status": "pass", "returncode": 0, "seconds": 0.0, "tail": ""}

    monkeypatch.setattr(gc, "execute", execute)
    checks = [_fake("u1", "unit"), _fake("u2", "unit"), _fake("a"), _fake("b"), _fake("r", needs=("a", "b")),
              _fake("p", "public_dm", alone=True)]
    lines = []
    results = gc.run_checks(checks, budget=1000, jobs=3, env={}, report=lines.append)
    assert [r["name"] for r in results] == ["u1", "u2", "a", "b", "r", "p"] and len(lines) == 6
    assert all(line.startswith("PASS") for line in lines)
    at = {e: i for i, e in enumerate(events)}
    assert at[("start", "r")] > max(at[("end", "a")], at[("end", "b")])
    assert at[("start", "p")] > max(at[("end", n)] for n in ("u1", "u2", "a", "b", "r"))


def test_each_check_gets_what_is_left_and_nothing_starts_past_the_budget(monkeypatch):
    clock, given = [0.0], {}

    def execute(check, timeout, env):
        given[check.name] = timeout
        clock[0] += 100
        return {"status": "pass", "returncode": 0, "seconds": 100.0, "tail": ""}

    monkeypatch.setattr(gc, "execute", execute)
    monkeypatch.setattr(gc.time, "perf_counter", lambda: clock[0])
    checks = [_fake("u", "unit"), _fake("a"), _fake("b"), _fake("c"), _fake("p", "public_dm", alone=True)]
    lines = []
    results = gc.run_checks(checks, budget=420, jobs=1, env={}, report=lines.append)
    reserve = gc.PUBLIC_DM_RESERVE  # kept back for the public-code comparison, which runs last
    assert given["u"] == min(gc.LIMITS["unit"], 420 - reserve) and given["a"] == 420 - 100 - reserve
    assert given["b"] == 420 - 200 - reserve and "c" not in given
    assert results[3]["status"] == "skipped" and "budget is spent" in results[3]["tail"]
    assert given["p"] == min(gc.LIMITS["public_dm"], 420 - 300)
    assert lines[3].startswith("SKIPPED c (0 s): the 420 s budget is spent")


def test_main_writes_the_json_and_fails_when_a_check_fails(monkeypatch, tmp_path, capsys):
    def execute(check, timeout, env):
        assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and str(REPO) in env["PYTHONPATH"]
        ok = check.name != "notebook 03_iid (device=cuda)"
        return {"status": "pass" if ok else "fail", "returncode": 0 if ok else 1, "seconds": 1.0,
                "tail": "" if ok else "ValueError: something"}

    monkeypatch.setattr(gc, "execute", execute)
    monkeypatch.setattr(gc, "no_gpu_message", lambda: None)
    monkeypatch.setattr(gc, "gpu_info", lambda: {"gpu": "NVIDIA H200", "gpus": 1, "torch": "2.x", "cuda": "13.0"})
    monkeypatch.delenv("PUBLIC_DM", raising=False)
    out = tmp_path / "gc.json"
    assert gc.main(["--out", str(out), "--budget", "300"]) == 1
    rec = json.loads(out.read_text())
    assert rec["gpu"] == "NVIDIA H200" and rec["budget_s"] == 300 and rec["date"][:2] == "20" and not rec["passed"]
    assert {c["status"] for c in rec["checks"]} == {"pass", "fail"} and "public_dm" not in rec
    failed = [c for c in rec["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["notebook 03_iid (device=cuda)"] and "papermill" in failed[0]["command"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("gpu-check on NVIDIA H200") and len(printed) == len(rec["checks"]) + 2
    assert "FAIL    notebook 03_iid (device=cuda) (1 s): ValueError: something" in printed
    table = out.with_suffix(".md").read_text()  # the same, as Markdown for bench/README.md
    assert table.startswith("`make gpu-check` on NVIDIA H200 (torch 2.x, CUDA 13.0)")
    assert "| notebook 03_iid (device=cuda) | fail | 1 | ValueError: something |" in table
    assert table.count("\n| ") == len(rec["checks"]) + 1


def test_the_markdown_has_the_public_comparison_and_the_kernel_profile():
    graphs = {"steady": 0.0125, "first_run": 0.0518, "second_run": 0.0178, "iterations": 20, "capture_seconds": 0.1,
              "last_loss": 3.0}
    public = {"dm_seconds_per_iteration": {"public": {"median": 0.0767}, "ddkit": {"median": 0.021}},
              "dm_ratio": 3.65, "ddkit_dm": [{"compile": False}], "ddkit_dm_graphs": graphs,
              "dm_ratio_graphs": {"steady": 6.136, "first_run": 1.48, "second_run": 4.31},
              "ddkit_dm_graph_levers": {"levers": {"bf16": {**graphs, "steady": 0.007}}, "profile": {
                  "gpu_ms_per_iteration": 9.5, "wall_ms_per_uncaptured_iteration": 21.0,
                  "top": [{"name": "cudnn_conv", "ms_per_iteration": 4.25, "calls_per_iteration": 16}]}},
              "dm_ratio_graph_levers": {"bf16": {"steady": 10.96, "first_run": 1.48, "second_run": 4.31}},
              "evaluation": {}, "dm_floor": {"ceiling_ratio": 20.0}}
    record = {"gpu": "G", "torch": "t", "cuda": "c", "date": "2026-12-05", "seconds": 400.0, "budget_s": 480,
              "checks": [{"name": "unit tests 1/3", "status": "pass", "seconds": 100.0, "tail": "x"}],
              "public_dm": public}
    table = gc.markdown(record)
    assert "| unit tests 1/3 | pass | 100 |  |" in table
    assert "| public DM iteration vs graphs (steady) | 0.0767 | 0.0125 | 6.14x |" in table
    assert "| public DM iteration vs graphs + bf16 (steady) | 0.0767 | 0.007 | 10.96x |" in table
    assert "GPU time of one uncaptured graph-loop iteration: 9.50 ms (wall 21.00 ms)" in table
    assert "| `cudnn_conv` | 4.250 | 16 |" in table


def test_a_check_past_its_limit_is_killed_with_its_children():
    check = gc.Check("sleeper", "unit", [sys.executable, "-c",
                                         "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                                         "'import time; time.sleep(60)']); print('started', flush=True); "
                                         "time.sleep(60)"])
    res = gc.execute(check, timeout=2, env=dict(os.environ))
    assert res["status"] == "timeout" and res["seconds"] < 20 and res["tail"] == "timed out after 2 s"


@pytest.mark.parametrize("argv, match", [(["--budget", "0"], "--budget"), (["--jobs", "0"], "--jobs"),
                                         (["--public-dm", "/nonexistent"], "no main_DM.py")])
def test_bad_options_are_refused(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("written, status, tail", [
    ({"arms": {"dm": {"ratio": 10.2}}}, "pass", None),
    ({"error": "RuntimeError: boom"}, "fail", "RuntimeError: boom"),
    ({"skipped": "no --public-dm PATH"}, "fail", "no --public-dm PATH"),
    (None, "fail", "no public_dm.json written"),
])
def test_the_public_code_comparison_fails_on_an_error_in_its_json_and_is_copied(monkeypatch, tmp_path, written,
                                                                               status, tail):
    """``python -m bench`` exits 0 when a benchmark raised: the JSON it writes decides."""
    public = tmp_path / "DatasetCondensation"
    public.mkdir()
    (public / "main_DM.py").write_text("")

    def execute(check, timeout, env):
        if check.kind == "public_dm" and written is not None:
            out = Path(check.cmd[check.cmd.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "public_dm.json").write_text(json.dumps(written))
        return {"status": "pass", "returncode": 0, "seconds": 1.0, "tail": ""}

    monkeypatch.setattr(gc, "execute", execute)
    monkeypatch.setattr(gc, "no_gpu_message", lambda: None)
    monkeypatch.setattr(gc, "gpu_info", lambda: {"gpu": "G", "gpus": 1, "torch": "t", "cuda": "c"})
    out = tmp_path / "gc.json"
    assert gc.main(["--out", str(out), "--public-dm", str(public)]) == (0 if status == "pass" else 1)
    rec = json.loads(out.read_text())
    last = rec["checks"][-1]
    assert last["kind"] == "public_dm" and last["status"] == status and (tail is None or last["tail"] == tail)
    assert rec.get("public_dm") == written
