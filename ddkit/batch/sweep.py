"""Papermill sweeps, the execution: runs -> ``results/<notebook_key>/<run_name>/``.

The runs come from grid files (``ddkit.batch.sweep_grid``: format, defaults, validation; each
notebook's parameters and ``CHECKS`` from ``ddkit.runs.notebook_params``); this module executes them.

Execution
=========
Every run executes the notebook with papermill into
``<results_dir>/<notebook_key>/<run_name>/<notebook stem>.ipynb``; the notebook itself
writes ``result.json`` there (``run_name`` and ``results_dir`` are injected).

* Local: ``workers`` processes (``concurrent.futures`` with the spawn context), each
  driving one papermill kernel; ``OMP_NUM_THREADS`` defaults to cores // workers;
  ``gpus=["0", "1"]`` pins worker i to GPU ``i % 2`` (``CUDA_VISIBLE_DEVICES``).
* Dask: ``scheduler="tcp://host:8786"`` (or a ``distributed.Client`` / ``LocalCluster``)
  submits each run as one task (with its ``resources``); the workers need ddkit,
  papermill and a ``python3`` kernel, and results/ must be on a shared file system.
* Resume: a run whose ``result.json`` exists, parses and whose ``params`` match the
  requested values (``run_name, results_dir, data_root, device`` excepted) is skipped
  (``force=True`` re-runs). A run whose parameters changed is re-run; its old
  ``result.json`` is kept as ``result.prev.json``.
* Failures: the executed notebook (with the failing cell's traceback) stays in the run
  folder next to ``error.json`` (error type, message, traceback, failing cell); the
  sweep continues and the summary lists every failure.
* Progress: one line per finished run and an overall ``tqdm`` bar.

Python::

    from ddkit.batch.sweep import expand, sweep
    runs = expand(["params/demo.yaml"])          # validation only
    summary = sweep(["params/demo.yaml"], workers=2)
    summary.failed                                # [(run, error text), ...]

Command line: ``ddkit sweep params/demo.yaml --workers 2`` (see ``ddkit.cli``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import sys
import time
import traceback as _tb
from pathlib import Path
from typing import Any, Sequence

from ..core.utils import atomic_write_bytes
from ..runs.notebook_params import default_notebooks_dir, notebook_parameters, notebook_spec
from .sweep_grid import SweepRun, expand, load_grid_documents, resolve_notebook, validate_params_file

__all__ = [
    "SweepRun",
    "SweepSummary",
    "expand",
    "load_grid_documents",
    "notebook_parameters",
    "notebook_spec",
    "resolve_notebook",
    "run_status",
    "write_error",
    "execute_run",
    "sweep",
    "validate_params_file",
    "default_notebooks_dir",
]

#: keys not compared when deciding whether a finished run matches the request
IGNORED_IN_MATCH = frozenset({"run_name", "results_dir", "data_root", "device", "deterministic"})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------- status
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def run_status(run: SweepRun) -> tuple[str, str]:
    """``("done" | "changed" | "failed" | "missing" | "invalid", detail)``."""
    res = run.out_dir / "result.json"
    if res.is_file():
        try:
            data = json.loads(res.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except Exception as exc:
            return "invalid", f"unreadable result.json ({exc})"
        recorded = {}
        sj = run.out_dir / "sweep.json"
        if sj.is_file():
            try:
                recorded = json.loads(sj.read_text()).get("params", {}) or {}
            except Exception:
                recorded = {}
        got = {**recorded, **(data.get("params") or {})}
        diff = [
            k for k, v in run.params.items() if k not in IGNORED_IN_MATCH and (k not in got or not _same(got[k], v))
        ]
        if diff:
            return "changed", "params changed: " + ", ".join(f"{k} {got.get(k, '<missing>')!r} -> {run.params[k]!r}" for k in diff)
        return "done", ""
    if (run.out_dir / "error.json").is_file():
        return "failed", "failed before"
    return "missing", ""


# --------------------------------------------------------------------------- execution
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_json(path: Path, obj: Any) -> None:
    """``sweep.json`` / ``error.json``: any value rendered with ``str`` (tracebacks, paths)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def _failing_cell(nb_path: Path, cell_index: int | None) -> str:
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:  # the cell with an error output
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                return cell.source
        if cell_index is not None and 0 <= cell_index < len(nb.cells):
            return nb.cells[cell_index].source
    except Exception:
        pass
    return ""


def write_error(run: SweepRun, exc: BaseException | str, seconds: float = 0.0) -> dict:
    """Record a failure as ``<run>/error.json`` and return the record."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(exc, BaseException):
        ename = getattr(exc, "ename", type(exc).__name__)
        evalue = getattr(exc, "evalue", str(exc))
        tb = getattr(exc, "traceback", None)
        tb_text = _ANSI.sub("", "\n".join(tb)) if tb else "".join(_tb.format_exception(exc))
        cell_index = getattr(exc, "cell_index", None)
        exec_count = getattr(exc, "exec_count", None)
    else:
        ename, evalue, tb_text, cell_index, exec_count = "Error", str(exc), str(exc), None, None
    record = {
        "run_name": run.run_name,
        "notebook": run.notebook,
        "params": run.params,
        "error": f"{ename}: {evalue}",
        "ename": ename,
        "evalue": evalue,
        "traceback": tb_text,
        "cell_index": cell_index,
        "exec_count": exec_count,
        "cell_source": (getattr(exc, "source", None) if isinstance(exc, BaseException) else None)
        or _failing_cell(run.output_notebook, cell_index),
        "executed_notebook": str(run.output_notebook),
        "seconds": round(seconds, 3),
        "created": _now(),
    }
    _atomic_json(run.out_dir / "error.json", record)
    return record


def _error_line(record: dict) -> str:
    """``"<ename>: <last non-empty line of the message>"`` (what the traceback ends with): the summary line."""
    lines = [line for line in str(record["evalue"]).splitlines() if line.strip()]
    return f"{record['ename']}: {lines[-1] if lines else ''}"


def execute_run(
    run: SweepRun,
    kernel_name: str | None = None,
    timeout: float | None = None,
    threads: int | None = None,
) -> dict:
    """Execute one run with papermill. Never raises: returns an outcome dict.

    ``{"label", "status": "ok" | "failed", "seconds", "mean", "std", "error", "out_dir"}``
    """
    import papermill as pm

    t0 = time.time()
    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("error.json", *(p.name for p in out.glob(".*.tmp"))):  # + temp files of a killed write
        (out / stale).unlink(missing_ok=True)
    res = out / "result.json"
    if res.exists():  # params changed or unreadable: keep the old one aside
        os.replace(res, out / "result.prev.json")
    _atomic_json(out / "sweep.json", {"notebook": run.notebook, "params": run.params, "source": run.source, "started": _now()})
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    outcome = {"label": run.label, "run_name": run.run_name, "key": run.key, "out_dir": str(out)}
    try:
        kw = {"execution_timeout": timeout} if timeout else {}
        pm.execute_notebook(
            run.notebook,
            str(run.output_notebook),
            parameters=run.notebook_params(),
            kernel_name=kernel_name,
            progress_bar=False,
            cwd=str(Path(run.notebook).parent),
            **kw,
        )
        if not res.is_file():
            raise RuntimeError(f"the notebook finished but wrote no result.json in {out}")
        data = json.loads(res.read_text())
    except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
        if isinstance(exc, KeyboardInterrupt):
            write_error(run, "interrupted (KeyboardInterrupt)", time.time() - t0)
            raise
        rec = write_error(run, exc, time.time() - t0)
        return {**outcome, "status": "failed", "seconds": time.time() - t0, "error": _error_line(rec)}
    return {
        **outcome,
        "status": "ok",
        "seconds": time.time() - t0,
        "mean": data.get("mean"),
        "std": data.get("std"),
        "error": None,
    }


@dataclasses.dataclass
class SweepSummary:
    runs: list[SweepRun]
    done: list[tuple[SweepRun, dict]] = dataclasses.field(default_factory=list)
    skipped: list[SweepRun] = dataclasses.field(default_factory=list)
    failed: list[tuple[SweepRun, str]] = dataclasses.field(default_factory=list)
    pending: list[SweepRun] = dataclasses.field(default_factory=list)  # dry run / interrupted
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not (self.pending and not self.dry_run)

    def format(self) -> str:
        if self.dry_run:
            head = f"dry run: {len(self.runs)} runs, {len(self.pending)} to run, {len(self.skipped)} finished"
        else:
            head = (
                f"sweep: {len(self.runs)} runs: {len(self.done)} ran, {len(self.skipped)} skipped "
                f"(finished before), {len(self.failed)} failed"
                + (f", {len(self.pending)} not run" if self.pending else "")
                + f" in {self.seconds:.1f}s"
            )
        lines = [head]
        for r, err in self.failed:
            lines.append(f"  FAILED {r.label}: {err}  ({r.out_dir / 'error.json'})")
        return "\n".join(lines)


def _line(outcome: dict, i: int, n: int) -> str:
    w = len(str(n))
    if outcome["status"] == "ok":
        acc = ""
        if isinstance(outcome.get("mean"), (int, float)):
            acc = f"  acc {outcome['mean']:.2f}"
            if isinstance(outcome.get("std"), (int, float)):
                acc += f" ± {outcome['std']:.2f}"
        return f"[{i:>{w}}/{n}] ok     {outcome['label']}{acc}  ({outcome['seconds']:.1f}s)"
    return f"[{i:>{w}}/{n}] FAILED {outcome['label']}: {outcome['error']}  -> {outcome['out_dir']}/error.json"


def _describe(run: SweepRun) -> str:
    vals = " ".join(f"{k}={v!r}" for k, v in run.params.items())
    return f"{run.label}  [{vals}]"


def sweep(
    grid: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[SweepRun],
    workers: int = 1,
    scheduler: Any = None,
    results_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    resources: dict | None = None,
    dry_run: bool = False,
    force: bool = False,
    kernel_name: str | None = None,
    timeout: float | None = None,
    threads: int | None = None,
    gpus: Sequence[str] | None = None,
    progress: bool = True,
    out=None,
) -> SweepSummary:
    """Expand the grid file(s) and execute the runs that are not finished.

    ``workers``: local parallel runs (processes). ``scheduler``: a Dask scheduler
    address (``"tcp://host:8786"``), a ``distributed.Client`` or a cluster object; when
    given, runs are submitted there (with their ``resources``) instead. ``gpus`` (local
    only, e.g. ``["0", "1"]``): worker process i sees only ``gpus[i % len(gpus)]``
    (``CUDA_VISIBLE_DEVICES``), so ``workers=len(gpus)`` runs one notebook per GPU.
    """
    from tqdm.auto import tqdm

    out = out or sys.stdout
    t0 = time.time()
    if isinstance(grid, (list, tuple)) and grid and all(isinstance(g, SweepRun) for g in grid):
        runs = list(grid)
    else:
        runs = expand(grid, results_dir, notebooks_dir, overrides, resources)
    summary = SweepSummary(runs=runs, dry_run=dry_run)
    todo: list[SweepRun] = []
    for r in runs:
        status, detail = run_status(r)
        if status == "done" and not force:
            summary.skipped.append(r)
        else:
            todo.append(r)
            if dry_run:
                tag = {"done": "rerun (--force)", "missing": "run", "failed": "rerun (failed before)"}.get(status, f"rerun ({detail})")
                print(f"{tag:<22} {_describe(r)}", file=out)
    if dry_run:
        for r in summary.skipped:
            print(f"{'skip (finished)':<22} {_describe(r)}", file=out)
        summary.pending = todo
        print(summary.format(), file=out)
        return summary
    if summary.skipped:
        print(f"{len(summary.skipped)} of {len(runs)} runs finished before: skipped", file=out)
    if not todo:
        summary.seconds = time.time() - t0
        print(summary.format(), file=out)
        return summary
    if threads is None and scheduler is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress, file=sys.stderr)
    count = 0

    def finished(run: SweepRun, outcome: dict) -> None:
        nonlocal count
        count += 1
        if outcome["status"] == "ok":
            summary.done.append((run, outcome))
        else:
            summary.failed.append((run, outcome["error"]))
        bar.update(1)
        tqdm.write(_line(outcome, count, len(todo)), file=out)

    kw = dict(kernel_name=kernel_name, timeout=timeout, threads=threads)
    try:
        if scheduler is not None:
            _run_dask(todo, scheduler, kw, finished)
        elif workers <= 1 and not gpus:
            for r in todo:
                finished(r, execute_run(r, **kw))
        else:
            _run_local(todo, max(1, workers), kw, finished, gpus)
    except KeyboardInterrupt:
        bar.close()
        finished_labels = {r.label for r, _ in summary.done} | {r.label for r, _ in summary.failed}
        summary.pending = [r for r in todo if r.label not in finished_labels]
        summary.seconds = time.time() - t0
        print("\ninterrupted; re-run the same command to continue (finished runs are skipped)", file=out)
        print(summary.format(), file=out)
        raise
    bar.close()
    summary.seconds = time.time() - t0
    print(summary.format(), file=out)
    return summary


def _init_worker(gpus, counter) -> None:
    """Each local worker process pins one GPU (round robin) before any kernel starts."""
    if gpus:
        with counter.get_lock():
            i = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])


def _run_local(todo: list[SweepRun], workers: int, kw: dict, finished, gpus: Sequence[str] | None = None) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                  initializer=_init_worker, initargs=(list(gpus or []), ctx.Value("i", 0)))
    try:
        futs = {pool.submit(execute_run, r, **kw): r for r in todo}
        for f in cf.as_completed(futs):
            r = futs[f]
            try:
                outcome = f.result()
            except Exception as exc:  # worker died (e.g. killed): record it, go on
                rec = write_error(r, exc)
                outcome = {"label": r.label, "status": "failed", "error": rec["error"], "out_dir": str(r.out_dir), "seconds": 0.0}
            finished(r, outcome)
    except BaseException:  # Ctrl-C: interrupt the running notebooks (kernels shut down cleanly), then stop
        import signal

        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGINT)
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.time() + 15
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.time()))
            if p.is_alive():
                p.terminate()
        raise
    pool.shutdown(wait=True)


def _run_dask(todo: list[SweepRun], scheduler: Any, kw: dict, finished) -> None:
    from dask.distributed import Client, as_completed

    own = False
    if isinstance(scheduler, Client):
        client = scheduler
    else:
        client = Client(scheduler)  # an address or a cluster object
        own = True
    futs: dict = {}
    try:
        for r in todo:
            f = client.submit(
                execute_run,
                r,
                **kw,
                key=f"ddkit-sweep-{r.key}-{r.run_name}-{time.time_ns()}",
                resources=r.resources or None,
                pure=False,
            )
            futs[f.key] = (f, r)
        for f in as_completed([f for f, _ in futs.values()]):
            r = futs[f.key][1]
            try:
                outcome = f.result()
            except Exception as exc:  # the task itself died (worker lost, ...)
                try:
                    rec = write_error(r, exc)
                    err = rec["error"]
                except OSError:
                    err = f"{type(exc).__name__}: {exc}"
                outcome = {"label": r.label, "status": "failed", "error": err, "out_dir": str(r.out_dir), "seconds": 0.0}
            finished(r, outcome)
    except BaseException:
        for f, _ in futs.values():
            f.cancel()
        raise
    finally:
        if own:
            client.close()
