"""ddkit.batch.sweep paths without their own test: ``force``, the keys ignored when matching a finished run,
and an interrupted sweep. ``execute_run`` (papermill) is replaced by a recorder, so no notebook runs."""
from __future__ import annotations

import json

import pytest

from ddkit.batch import sweep as sw
from test_sweep import make_notebook, write

GRID = """
notebook: 90_fixture.ipynb
name: "r{ipc}"
grid:
  ipc: [1, 2, 3]
"""


@pytest.fixture
def runs(tmp_path):
    make_notebook(tmp_path / "notebooks")
    return sw.expand(write(tmp_path / "g.yaml", GRID), results_dir=tmp_path / "results",
                     notebooks_dir=tmp_path / "notebooks")


def finish(run, **changed):
    """Write the result.json a finished run leaves (its parameters, some changed)."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "result.json").write_text(json.dumps({"params": {**run.params, **changed}, "mean": 1.0}))


@pytest.fixture
def executed(monkeypatch):
    """Run names that ``execute_run`` was called for (each returns an "ok" outcome)."""
    calls = []

    def fake(run, **kw):
        calls.append(run.run_name)
        return {"label": run.label, "status": "ok", "seconds": 0.0, "mean": 1.0, "std": 0.0, "error": None}
    monkeypatch.setattr(sw, "execute_run", fake)
    return calls


def test_force_reruns_finished_runs_and_without_it_they_are_skipped(runs, executed, capsys):
    for r in runs[:2]:
        finish(r)
    s = sw.sweep(runs, progress=False)
    assert executed == ["r3"] and [r.run_name for r in s.skipped] == ["r1", "r2"]
    executed.clear()
    s = sw.sweep(runs, progress=False, force=True)
    assert executed == ["r1", "r2", "r3"] and not s.skipped and len(s.done) == 3


@pytest.mark.parametrize("key", sorted(sw.IGNORED_IN_MATCH))
def test_keys_ignored_in_match_do_not_make_a_finished_run_changed(runs, key):
    assert sw.IGNORED_IN_MATCH == {"run_name", "results_dir", "data_root", "device", "deterministic"}  # where a run ran, not what
    finish(runs[0], **{key: "/elsewhere"})
    assert sw.run_status(runs[0]) == ("done", "")
    finish(runs[0], **{key: "/elsewhere", "ipc": 9})
    status, detail = sw.run_status(runs[0])
    assert status == "changed" and detail == "params changed: ipc 9 -> 1"


def test_an_interrupted_sweep_reports_what_is_left_and_resumes(runs, monkeypatch, capsys):
    calls, interrupted = [], []

    def second_interrupts(run, **kw):  # Ctrl-C during the second run of the first sweep
        calls.append(run.run_name)
        if len(calls) == 2 and not interrupted:
            interrupted.append(run.run_name)
            raise KeyboardInterrupt
        finish(run)
        return {"label": run.label, "status": "ok", "seconds": 0.0, "mean": 1.0, "std": 0.0, "error": None}
    monkeypatch.setattr(sw, "execute_run", second_interrupts)
    with pytest.raises(KeyboardInterrupt):
        sw.sweep(runs, progress=False)
    out = capsys.readouterr().out
    assert "interrupted; re-run the same command to continue" in out
    assert "1 ran, 0 skipped (finished before), 0 failed, 2 not run" in out
    calls.clear()
    s = sw.sweep(runs, progress=False)  # the same command again: the finished run is skipped
    assert calls == ["r2", "r3"] and [r.run_name for r in s.skipped] == ["r1"]


def test_an_interrupted_run_records_the_interruption_and_is_retried(runs, monkeypatch):
    import papermill

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sw.execute_run(runs[0])
    err = json.loads((runs[0].out_dir / "error.json").read_text())
    assert err["error"] == "Error: interrupted (KeyboardInterrupt)" and err["run_name"] == "r1"
    assert not (runs[0].out_dir / "result.json").exists()
    assert sw.run_status(runs[0])[0] == "failed"
