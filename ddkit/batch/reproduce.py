"""``ddkit reproduce``: the papers' main-table cells at the papers' budget, time-boxed and resumable.

A *cell* is one number of a paper's main table that ``params/paper`` covers (``params/paper/cells.csv``:
id, paper, table, method, dataset, IPC, the published mean ± std with its protocol and selection, the
parameters file and the grid entry that reproduce it). ``ddkit reproduce --list`` prints them with an
estimated GPU time; ``ddkit reproduce <cell>`` executes the method's notebook through papermill with the
grid entry's parameters, one run per seed, into ``<results-dir>/<cell>/`` (the *cell folder*: every run
folder, the loops' checkpoints, the evaluation stores and ``cell.json``, the harness's record).

Time box: ``--minutes N`` sets ``$DDKIT_DEADLINE`` (:mod:`ddkit.core.timebox`) for the notebook; the
distillation loop and the evaluation save their state and stop when it passes, and the cell is recorded
as partial (iterations done / the paper's). The same command later, here or on another machine after
copying the cell folder, resumes it. A cell is complete when every seed's notebook finished at the
paper's budget; its row then goes into ``docs/reproduction.md`` (:mod:`ddkit.batch.reproduce_docs`) and its
synthetic sets into ``distilled/`` with a manifest line.

``--smoke`` runs the cell's notebook at its tiny CI defaults on ``mnist5k`` (tests; never shipped).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import math
import os
import subprocess
import time
from pathlib import Path

from ..core import timebox
from ..core.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
CELLS_CSV = REPO / "params" / "paper" / "cells.csv"
CELL_RECORD = "cell.json"

#: Per-method GPU cost (estimates) for ``--list``: seconds per distillation iteration at Fashion-MNIST
#: IPC 10 (``iter_s``, scaled by the dataset's classes x pixels) plus fixed minutes (pretraining, GAN
#: stages). DM's constant is measured (one H200, ddkit eager, 17.5 ms at Fashion-MNIST IPC 10); the
#: others are not measured and derive from DM's by the extra work each iteration does.
COSTS = {
    "DM": dict(iter_s=0.0175, fixed_min=0.5, source="measured: H200, ddkit eager, FMNIST IPC 10"),
    "DSDM": dict(iter_s=0.035, fixed_min=5.0, source="estimate: 2x DM (a step per class, the bank) + pretraining"),
    "IID (DM base)": dict(iter_s=0.025, fixed_min=5.0, source="estimate: DM + L_CC/L_CM + the CC pool"),
    "IID (IDM base)": dict(iter_s=0.05, fixed_min=5.0, source="estimate: factor 2, queue training + the CC pool"),
    "GAN global/local": dict(iter_s=0.0, fixed_min=60.0, source="estimate: DiM's 150 + 100 epochs at width 196"),
    "GAN + SKD": dict(iter_s=0.0, fixed_min=60.0, source="estimate: as GAN global/local"),
    "EAD": dict(iter_s=0.05, fixed_min=2.0, source="estimate: t_m checkpoints' gradients per step + trajectory"),
}
#: Seconds per 1000 epochs of one evaluation network at one batch per epoch (estimate: "a few seconds").
EVAL_S_PER_1000_STEPS = 5.0
#: (classes, channels x height x width) of the datasets the cells name.
DATASET_SIZES = {"mnist": (10, 784), "fashion_mnist": (10, 784), "svhn": (10, 3072), "cifar10": (10, 3072),
                 "cifar100": (100, 3072), "tinyimagenet": (200, 12288)}
#: Notebooks whose distillation loop honours the time box (``ddkit.methods.distill.distill`` with a checkpoint); the
#: others (GAN stages, EAD's loop) stop only between evaluation networks that keep a store.
TIMEBOXED = {"00_quickstart", "03_iid", "04_dsdm"}
#: ``--smoke``: overrides of each notebook's tiny CI defaults (mnist5k) that keep the cell's method.
SMOKE = {
    "00_quickstart": {"baselines": [], "iterations": 6, "batch_real": 8, "eval_epochs": 3, "num_eval": 2},
    "01_gan_global_local": {"balance_arm": "", "baselines": []},
    "02_gan_skd": {"no_stand_ablation": False, "baselines": []},
    "03_iid": {"compare_dm": False, "tsne": False},
    "04_dsdm": {"baselines": [], "compare_no_h": False, "eval_no_h": False},
    "05_ead": {"compare_baselines": False},
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One row of ``params/paper/cells.csv``."""

    cell: str
    paper: str
    table: str
    method: str
    dataset: str
    ipc: int
    mean: float
    std: float | None
    protocol: str
    selection: str
    params: str
    entry: str
    source: str

    @property
    def params_path(self) -> Path:
        return CELLS_CSV.parent / self.params

    def selectors(self) -> dict:
        """The grid entry as ``{key: value}`` (``"dataset=svhn ipc=10"``)."""
        import yaml
        return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in self.entry.split())}


def load_cells(path: str | os.PathLike | None = None) -> list[Cell]:
    """The cells of ``params/paper/cells.csv`` (or ``path``); ``ValueError`` naming a bad row."""
    out = []
    with open(path or CELLS_CSV, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                out.append(Cell(**{**row, "ipc": int(row["ipc"]), "mean": float(row["mean"]),
                                   "std": float(row["std"]) if row["std"] else None}))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path or CELLS_CSV} line {i}: {exc}") from None
    return out


def get_cell(cell_id: str, cells: list[Cell] | None = None) -> Cell:
    """The cell named ``cell_id``; ``ValueError`` listing close ids when unknown."""
    cells = cells or load_cells()
    for c in cells:
        if c.cell == cell_id:
            return c
    close = [c.cell for c in cells if cell_id.split("-")[0] in c.cell][:8]
    raise ValueError(f"unknown cell {cell_id!r}; e.g. {', '.join(close or [c.cell for c in cells[:8]])} "
                     "(ddkit reproduce --list)")


def paper_runs(cell: Cell, results_dir: str | os.PathLike = "/nonexistent") -> list:
    """The grid's runs of the cell's parameters file that match its grid entry (``ddkit.batch.sweep_grid``);
    ``ValueError`` when none does."""
    from .sweep_grid import expand

    want = cell.selectors()
    runs = [r for r in expand([cell.params_path], results_dir)
            if all(r.params.get(k) == v for k, v in want.items())]
    if not runs:
        raise ValueError(f"cell {cell.cell}: no run of {cell.params} matches {cell.entry!r}")
    return runs


def cell_runs(cell: Cell, cell_dir: Path, seeds: int, smoke: bool = False) -> list:
    """One run per seed 0 .. seeds-1 into ``cell_dir``: the grid entry's first run with its seed and run
    name replaced (``s<seed>``); with ``smoke`` the notebook's CI defaults plus :data:`SMOKE`."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be an int >= 1")
    base = paper_runs(cell, cell_dir)[0]
    nb = Path(base.notebook).stem
    if smoke:
        from ..runs.notebook_params import notebook_parameters

        keep = {k: base.params[k] for k in ("base", "factor", "image_step", "use_cc", "use_cm", "eval_protocol")
                if k in base.params}
        params = {"iterations": notebook_parameters(base.notebook)["iterations"].default, **keep,
                  **SMOKE.get(nb, {}), "dataset": "mnist5k", "ipc": min(cell.ipc, 2)}
    else:
        params = dict(base.params)
    return [dataclasses.replace(base, params={**params, "seed": s}, run_name=f"s{s}", results_dir=str(cell_dir))
            for s in range(seeds)]


def estimate_minutes(cell: Cell, run_params: dict | None = None) -> float:
    """Estimated GPU minutes of one seed (:data:`COSTS`; an estimate, not a measurement)."""
    p = run_params if run_params is not None else paper_runs(cell)[0].params
    cost = COSTS[cell.method]
    classes, pixels = DATASET_SIZES[cell.dataset]
    scale = classes / 10 * math.sqrt(pixels / 784)  # per-class real batches; pixels partly parallel
    distill_s = cost["iter_s"] * int(p.get("iterations") or 0) * scale
    batch = 64 if cell.protocol == "dsdm" else int(p.get("dim_batch") or 256)
    steps = max(1, math.ceil(classes * cell.ipc / batch))
    eval_s = (int(p.get("num_eval") or 5) * int(p.get("eval_epochs") or 1000) / 1000 * steps * EVAL_S_PER_1000_STEPS
              * max(1.0, pixels / 784 / 2))
    return round(cost["fixed_min"] + (distill_s + eval_s) / 60, 1)


def list_rows(cells: list[Cell] | None = None) -> list[dict]:
    """``--list``: one dict per cell (id, paper, table, dataset, IPC, method, published, protocol,
    params#entry, estimated minutes)."""
    rows = []
    for c in cells or load_cells():
        pub = f"{c.mean:.1f}" + (f" ± {c.std:.1f}" if c.std is not None else "")
        rows.append({"cell": c.cell, "paper": c.paper, "table": c.table, "dataset": c.dataset, "ipc": c.ipc,
                     "method": c.method, "published": pub, "protocol": f"{c.protocol}/{c.selection}",
                     "params": f"params/paper/{c.params}" + (f" [{c.entry}]" if c.entry else ""),
                     "gpu_min_est": estimate_minutes(c)})
    return rows


def format_list(rows: list[dict]) -> str:
    """The rows of :func:`list_rows` as an aligned text table."""
    keys = list(rows[0]) if rows else []
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(width[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(width[k]) for k in keys) for r in rows]
    return "\n".join(lines) + "\n(gpu_min_est: estimated minutes per seed on one H200; ddkit.batch.reproduce.COSTS)"


def gpu_name() -> str:
    """The CUDA device's name, else "cpu"."""
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def git_commit() -> str:
    """The repository's short commit (``+dirty`` with uncommitted changes); outside git ``$DDKIT_COMMIT`` (a
    copied work tree on another machine), else "unknown"."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("DDKIT_COMMIT", "unknown")


@contextlib.contextmanager
def _environment(**values):
    """Set environment variables for the block (the kernel papermill starts inherits them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def execute(run, deadline: float | None, kernel_name: str | None = None) -> dict:
    """Execute one run's notebook with papermill under ``deadline`` (``$DDKIT_DEADLINE``), with
    ``$DDKIT_RESULTS`` = the cell folder so that the caches a run reuses (pretrained pools, GAN stages) live
    in it too: ``{"status": "complete" | "partial" | "failed", "iterations_done", "error", "seconds"}``."""
    import papermill as pm

    from ..runs.results import RESULTS_ENV

    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    env = {timebox.DEADLINE_ENV: "" if deadline is None else repr(deadline), RESULTS_ENV: str(run.results_dir)}
    try:
        with _environment(**env):
            pm.execute_notebook(run.notebook, str(run.output_notebook), parameters=run.notebook_params(),
                                kernel_name=kernel_name, progress_bar=False, cwd=str(Path(run.notebook).parent))
    except pm.PapermillExecutionError as exc:
        if exc.ename != "TimeBoxReached":
            return {"status": "failed", "error": f"{exc.ename}: {exc.evalue}", "seconds": time.time() - t0}
        done = timebox.progress_of(exc.evalue)
        return {"status": "partial", "iterations_done": done[0] if done else None, "error": None,
                "seconds": time.time() - t0}
    except Exception as exc:  # noqa: BLE001 - no kernel, unreadable notebook: recorded, the cell stays resumable
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "seconds": time.time() - t0}
    if not (out / "result.json").is_file():
        return {"status": "failed", "error": f"the notebook wrote no result.json in {out}", "seconds": time.time() - t0}
    return {"status": "complete", "iterations_done": run.params.get("iterations"), "error": None,
            "seconds": time.time() - t0}


def read_record(cell_dir: Path) -> dict:
    """``cell.json`` of a cell folder (``{}`` when absent)."""
    path = Path(cell_dir) / CELL_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def run_cell(cell_id: str, *, minutes: float | None = None, seeds: int = 1, smoke: bool = False,
             results_dir: str | os.PathLike | None = None, docs_dir: str | os.PathLike | None = None,
             distilled_dir: str | os.PathLike | None = None, kernel_name: str | None = None, log=print) -> dict:
    """Run (or resume) a cell, seed after seed, within ``minutes`` (None: no time box); record it in
    ``<results_dir>/<cell>/cell.json`` and, through :mod:`ddkit.batch.reproduce_docs`, its row in
    ``docs_dir/reproduction.md`` and, when complete, its sets under ``distilled_dir``. With ``smoke``
    docs and sets default to the results folder (the repository is left alone). Returns the record."""
    from . import reproduce_docs as docs

    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes >= 0):
        raise ValueError(f"minutes={minutes!r} must be a number >= 0 (0: stop at the first checkpoint point)")
    cell = get_cell(cell_id)
    root = Path(results_dir or REPO / "results" / "reproduce").resolve()
    cell_dir = root / (cell.cell + ("-smoke" if smoke else ""))
    runs = cell_runs(cell, cell_dir, seeds, smoke)
    deadline = None if minutes is None else time.time() + 60 * minutes
    if minutes is not None and Path(runs[0].notebook).stem not in TIMEBOXED:
        log(f"warning: {Path(runs[0].notebook).name}'s training loop has no time box: --minutes stops it only "
            f"between evaluation networks (estimate {estimate_minutes(cell)} min a seed)")
    rec = read_record(cell_dir) or {"cell": cell.cell, "smoke": smoke, "seeds": {}}
    for run in runs:
        seed = str(run.params["seed"])
        state = rec["seeds"].setdefault(seed, {"status": "not run", "minutes": 0.0, "invocations": 0})
        if state["status"] == "complete":
            continue
        log(f"{cell.cell} seed {seed}: {Path(run.notebook).name} -> {run.out_dir}")
        outcome = execute(run, deadline, kernel_name)
        state.update(status=outcome["status"], iterations=run.params.get("iterations"),
                     iterations_done=outcome.get("iterations_done"), error=outcome["error"],
                     minutes=round(state["minutes"] + outcome["seconds"] / 60, 2), invocations=state["invocations"] + 1,
                     run_dir=str(run.out_dir.relative_to(cell_dir)))
        log(f"  {outcome['status']}" + (f" ({outcome['error']})" if outcome["error"] else ""))
        rec.update(gpu=gpu_name(), commit=git_commit(), date=_dt.date.today().isoformat())
        atomic_write_json(cell_dir / CELL_RECORD, rec)
        if outcome["status"] != "complete":
            break
    docs_dir = Path(docs_dir) if docs_dir else (cell_dir if smoke else REPO / "docs")
    distilled_dir = Path(distilled_dir) if distilled_dir else (cell_dir / "distilled" if smoke else REPO / "distilled")
    row = docs.cell_row(cell, cell_dir, rec)
    docs.record_row(docs_dir, row, load_cells())
    if row["status"] == "complete":
        docs.ship_sets(cell, cell_dir, rec, distilled_dir, row)
    rec["row"] = row
    return rec
