"""The benchmark suite's plumbing (no timing: benchmarks are not tests): every listed benchmark has
``run`` and ``rows``, the notebook benchmark sets only parameters notebook 00 has (with allowed values),
and ``python -m bench --table`` prints saved results without running anything."""
import importlib
import json

import pytest

from bench import BENCHMARKS, write_result
from bench.__main__ import main as bench_main
from ddkit.runs.notebook_params import notebook_spec


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_has_run_and_rows(name):
    mod = importlib.import_module(f"bench.{name}")
    assert callable(mod.run) and callable(mod.rows)


def test_notebook_benchmark_sets_only_parameters_of_notebook_00():
    from bench import notebook_e2e as e2e

    spec = notebook_spec(e2e.NOTEBOOK)
    for params in (e2e.PARAMS, e2e.QUICK, *e2e.ARMS.values()):
        for key, value in params.items():
            assert key in spec, key
            spec[key].validate(key, value)  # ValueError: a type or value notebook 00 refuses
    assert e2e.ARMS["default"] == {}  # the default arm is the notebook as a user opens it


def test_table_prints_saved_results_without_running(tmp_path, capsys):
    result = {"target_seconds": 600.0, "threads": 2,
              "arms": {"default": {"seconds": 900.0, "peak_rss_mb": 1234.0,
                                   "accuracy": {"DM": {"mean": 80.0, "std": 1.0, "accs": [80.0]}}}}}
    write_result("notebook_e2e", result, tmp_path)
    assert json.loads((tmp_path / "notebook_e2e.json").read_text())["date"].endswith("UTC")
    assert bench_main(["--table", "--out", str(tmp_path), "--only", "notebook_e2e", "flops"]) == 0
    out = capsys.readouterr().out
    assert "notebook 00 end to end (default)" in out and "0.67" in out and "DM 80.0" in out
    assert "(no " in out  # flops has no saved file: said, not skipped silently
