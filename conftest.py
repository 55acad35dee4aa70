"""Session-wide test settings for ``pytest tests notebooks`` (unit tests and nbval alike).

Every run a test or an executed notebook writes lands in one temporary results folder
(``$DDKIT_RESULTS``, honoured by ``ddkit.runs.results.resolve_results_dir``) and is marked
``run_kind: "test"``, so a user's ``results/`` and report never see CI-sized runs. Set here, at
configuration time, so that notebook kernels started by nbval inherit both variables."""
import os
import shutil
import tempfile

_OWNED = []


def pytest_configure(config):
    if not os.environ.get("DDKIT_RESULTS"):
        _OWNED.append(tempfile.mkdtemp(prefix="ddkit-test-results-"))
        os.environ["DDKIT_RESULTS"] = _OWNED[0]
    os.environ.setdefault("DDKIT_RUN_KIND", "test")


def pytest_unconfigure(config):
    for path in _OWNED:
        shutil.rmtree(path, ignore_errors=True)
