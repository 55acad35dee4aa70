"""Collect every ``result.json``'s ``evaluations`` into the papers' tables and plots.

``build_report(results_dir, out_dir)`` does everything ``ddkit report`` does. The report reads one
schema: each ``result.json`` holds an ``evaluations`` list (``ddkit.results.evaluation_entry``), one
entry per evaluated synthetic set with ``method, variant, protocol {name + settings}, ipc,
eval_model, accs`` (optional ``curve``, ``selection``, ``epoch_curve``, ``ledger``). Files written
before that list existed are read through :func:`legacy_evaluations`, a converter of their shapes.

What a cell pools (:func:`collect` computes the keys, every table uses them):

* one **row** per (method, variant, configuration, protocol). The configuration is the set of run
  parameters that differ between runs of the same method, dataset, IPC, evaluation model and
  protocol (e.g. ``iterations=400``); it labels entries of the run's own method only (a baseline
  evaluated inside a run is defined by its method, ``variant`` and protocol). The protocol is the
  entry's ``protocol`` dict without the evaluation seed (``selection`` defaults to ``"last"``,
  ``labels`` to ``"hard"``). Rows are never dropped or merged across these keys.
* **seeds** pool as the papers do: mean ± std over every evaluated network of every seed; the
  cell shows ``(seeds/networks)``.
* the main table uses one evaluation model (ConvNet when present); other evaluation models go to
  the cross-architecture table.
* published numbers (``published.csv``) carry their protocol and selection; rows are grouped in
  blocks of one (protocol, selection) and the best of our rows is marked per block, so a
  paper row is only compared with our rows evaluated the same way.
* runs marked ``run_kind: "test"`` or ``"tiny"`` (``ddkit.results.RUN_KINDS``) are skipped unless
  ``include_test=True``.

Sections of ``report.md``: main table, protocols, cross-architecture, ablation, model selection
(last / best validation / best test epoch), paired comparisons (:func:`compare_table`, same seeds,
``ddkit.stats.paired_difference``), DD-Ranking robust scores (:func:`robust_scores`), budget ledger,
plots (accuracy vs IPC, accuracy vs distillation iterations from entries' ``curve``, cross-arch).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .results import RUN_KINDS, evaluation_entry, resolve_results_dir
from .utils import REPO_ROOT, atomic_write_bytes

__all__ = [
    "collect",
    "legacy_evaluations",
    "load_published",
    "table1",
    "cross_arch_table",
    "ablation_table",
    "selection_table",
    "compare_table",
    "robust_scores",
    "robust_table",
    "ledger_table",
    "to_markdown",
    "to_latex",
    "write_table",
    "plot_accuracy_vs_ipc",
    "plot_accuracy_vs_iterations",
    "plot_cross_arch",
    "build_report",
    "Report",
    "PUBLISHED_CSV",
]

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
#: run parameters that never define a configuration (bookkeeping, a table axis, or the protocol)
NOT_A_CONFIG = frozenset(
    {"seed", "run_name", "results_dir", "data_root", "device", "dataset", "ipc", "progress", "tsne",
     "eval_model", "eval_epochs", "num_eval", "eval_protocol", "baselines", "compare_dm", "compare_no_h"}
)
#: runs the report leaves out unless asked (``include_test``)
SKIPPED_KINDS = tuple(k for k in RUN_KINDS if k != "user")
#: protocol settings read as these values when an entry does not record them
PROTOCOL_DEFAULTS = {"selection": "last", "labels": "hard"}
_ALIASES = {
    "random": "Random", "randomreal": "Random", "randomsubset": "Random", "herding": "Herding",
    "kcenter": "K-Center", "forgetting": "Forgetting", "dm": "DM", "dim": "DiM", "idm": "IDM",
    "wholedataset": "Whole dataset", "whole": "Whole dataset", "originaldataset": "Whole dataset",
    "ganskd": "GAN + SKD", "gandiskd": "GAN + SKD", "gangloballocal": "GAN global/local", "gangl": "GAN global/local",
    "dsdm": "DSDM", "ead": "EAD", "dmiid": "DM+IID", "idmiid": "IDM+IID",
}


def canonical_method(name: Any) -> str:
    """One spelling per method, so ours and the papers' rows share a row name and a colour."""
    s = str(name)
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", s.lower()), s)


def default_out_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/report`` (the Makefile's ``make demo`` location)."""
    return resolve_results_dir(results_dir) / "report"


# --------------------------------------------------------------------------- reading
def _legacy_protocol(rec: dict) -> dict:
    """The protocol of a pre-``evaluations`` file: its ``eval_settings`` or the notebook parameters."""
    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    if isinstance(rec.get("eval_settings"), dict) and rec["eval_settings"]:
        return {"name": "standard", **rec["eval_settings"]}
    known = {"epochs": params.get("eval_epochs"), "num_models": params.get("num_eval")}
    return {"name": "standard", **{k: v for k, v in known.items() if v is not None}}


def _legacy_entry(method, val: dict, *, ipc, eval_model, protocol, variant="") -> dict:
    """An entry from a ``{mean, std, accs}`` mapping (``accs`` may be missing: mean and std kept)."""
    accs = [a for a in (val.get("accs") or []) if isinstance(a, (int, float)) and a == a]
    entry = evaluation_entry(str(method), accs, ipc=ipc, eval_model=eval_model, variant=variant or "",
                             protocol=dict(protocol))
    if not accs:
        entry["mean"], entry["std"] = val.get("mean"), val.get("std")
    return entry


def legacy_evaluations(rec: dict) -> list:
    """Entries for a ``result.json`` written before the ``evaluations`` list, one per shape it used:
    the headline (``accs``, ``variant``, ``curve`` of ``{iteration, mean}``); ``baseline_method`` +
    ``baseline_accs``; ``baselines`` / ``variants`` mappings; ``table`` ``{method: {ipc: {...}}}``
    (the run's method is the key with "(ours)" or its own name); ``<label>_accs/_mean/_std``
    triples (variants); ``extra_results``; ``cross_arch`` (other evaluation models)."""
    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    ipc, method = rec.get("ipc", params.get("ipc")), str(rec["method"])
    em = str(rec.get("eval_model") or params.get("eval_model") or rec.get("model", ""))
    kw = dict(protocol=_legacy_protocol(rec), eval_model=em)
    head = _legacy_entry(method, rec, ipc=ipc, variant=rec.get("variant") or "", **kw)
    if rec.get("curve"):
        head["curve"] = [{"iteration": p["iteration"], "accs": [p["mean"]]} for p in rec["curve"]
                         if isinstance(p, dict) and "iteration" in p and "mean" in p]
    out = [head]
    if rec.get("baseline_method"):
        out.append(_legacy_entry(rec["baseline_method"], {k[9:]: v for k, v in rec.items() if k.startswith("baseline_")},
                                 ipc=ipc, **kw))
    out += [_legacy_entry(name, v, ipc=ipc, **kw) for name, v in (rec.get("baselines") or {}).items()
            if isinstance(v, dict)]
    out += [_legacy_entry(method, v, ipc=ipc, variant=str(name), **kw) for name, v in (rec.get("variants") or {}).items()
            if isinstance(v, dict)]
    for name, per_ipc in (rec.get("table") or {}).items():
        ours = "(ours)" in str(name).lower() or canonical_method(name) == canonical_method(method)
        for k, v in (per_ipc or {}).items():
            if isinstance(v, dict) and _num(k) == _num(k) and not (ours and _num(k) == _num(ipc)):  # not the headline
                out.append(_legacy_entry(method if ours else name, v, ipc=_num(k), **{**kw, "eval_model": v.get("model", em)}))
    for k in rec:
        label = k[:-5] if k.endswith("_accs") else None
        if label and label != "baseline" and isinstance(rec[k], list) and {f"{label}_mean", f"{label}_std"} <= set(rec):
            out.append(_legacy_entry(method, {"accs": rec[k]}, ipc=ipc, variant=label, **kw))
    out += [_legacy_entry(x["method"], x, ipc=ipc, variant=x.get("variant", ""), **{**kw, "eval_model": x.get("eval_model", em)})
            for x in rec.get("extra_results") or [] if isinstance(x, dict) and "method" in x]
    ca = rec.get("cross_arch")
    items = [{"eval_model": k, **(v if isinstance(v, dict) else {"mean": v})} for k, v in ca.items()] \
        if isinstance(ca, dict) else [x for x in ca or [] if isinstance(x, dict)]
    out += [_legacy_entry(method, x, ipc=ipc, **{**kw, "eval_model": x.get("eval_model") or x.get("model")})
            for x in items]
    return out


#: parameters a sweep or a test sets on every run: not part of a notebook's configuration
RUN_BOOKKEEPING = ("run_name", "results_dir", "data_root", "device")


@functools.lru_cache(maxsize=None)
def notebook_defaults(key: str) -> dict | None:
    """The ``parameters`` cell of ``notebooks/NN_<key>.ipynb`` as a dict (``None`` when not found)."""
    for path in sorted((REPO_ROOT / "notebooks").glob(f"[0-9][0-9]_{key}.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                tree = ast.parse("".join(cell["source"]))
                return {t.id: ast.literal_eval(n.value) for n in tree.body for t in n.targets}
    return None


def _legacy_run_kind(rec: dict, notebook: str) -> str:
    """Older files carry no ``run_kind``: one written into a pytest temporary folder was a test, one
    run at its notebook's default parameters (the tiny CI configuration, e.g. by nbval) is tiny.
    A notebook records all its parameters; parameters it gained later are not compared, but the
    file must hold at least three quarters of today's."""
    params = rec.get("params") or {}
    if re.search(r"pytest-of-|ddkit-test-results-", str(params.get("results_dir", ""))):
        return "test"
    defaults = {k: v for k, v in (notebook_defaults(notebook) or {}).items() if k not in RUN_BOOKKEEPING}
    shared = [k for k in defaults if k in params]
    at_defaults = bool(shared) and len(shared) >= 0.75 * len(defaults) and all(params[k] == defaults[k] for k in shared)
    return "tiny" if at_defaults else "user"


def protocol_key(protocol: dict | None) -> str:
    """What makes two evaluations the same protocol: every setting but the evaluation seed, with
    :data:`PROTOCOL_DEFAULTS` filled in (canonical JSON)."""
    p = {**PROTOCOL_DEFAULTS, **(protocol or {})}
    p.pop("seed", None)
    p.setdefault("name", "standard")
    return json.dumps(p, sort_keys=True, default=str)


def _entry_row(entry: dict, run: dict) -> dict:
    protocol = json.loads(protocol_key(entry.get("protocol")))
    accs = [float(a) for a in entry.get("accs") or []]
    mean = float(np.mean(accs)) if accs else _num(entry.get("mean"))
    std = float(np.std(accs)) if accs else _num(entry.get("std"))
    seed = entry.get("seed", run["seed"])
    return {**run, "method_raw": str(entry["method"]), "method": canonical_method(entry["method"]),
            "variant": str(entry.get("variant") or ""), "protocol": protocol, "protocol_key": protocol_key(protocol),
            "protocol_name": protocol["name"], "selection_name": protocol["selection"],
            "ipc": _num(entry.get("ipc", run["ipc"])), "eval_model": str(entry.get("eval_model") or run["model"]),
            "accs": accs, "mean": mean, "std": std, "n": len(accs), "seed": seed,
            "headline": canonical_method(entry["method"]) == run["run_method"],
            "curve": entry.get("curve"), "selection": entry.get("selection"), "ledger": entry.get("ledger")}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _read_run(path: Path, root: Path) -> tuple[dict, list]:
    rec = json.loads(path.read_text())
    if not isinstance(rec, dict) or "method" not in rec:
        raise ValueError("not a result record (no 'method')")
    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    rel = path.parent.relative_to(root)
    run = {"notebook": rel.parts[0] if len(rel.parts) > 1 else "", "run": path.parent.name, "path": str(path),
           "dataset": str(rec.get("dataset", params.get("dataset", ""))), "ipc": _num(rec.get("ipc", params.get("ipc"))),
           "model": str(rec.get("model", params.get("model", ""))), "seed": params.get("seed"),
           "iterations": _num(params.get("iterations")), "params": params, "seconds": rec.get("seconds"),
           "created": rec.get("created"),
           "run_method": canonical_method(rec["method"]), "source": "ours"}
    run["run_kind"] = rec.get("run_kind") or _legacy_run_kind(rec, run["notebook"])
    entries = rec["evaluations"] if isinstance(rec.get("evaluations"), list) else legacy_evaluations(rec)
    return run, entries


COLUMNS = ["notebook", "run", "method", "method_raw", "variant", "config", "row", "protocol_label", "dataset", "ipc",
           "model", "eval_model", "seed", "mean", "std", "accs", "n", "protocol_name", "selection_name",
           "protocol_key", "protocol", "iterations", "seconds", "run_kind", "headline", "params", "curve",
           "selection", "ledger", "created", "path", "source"]


def collect(results_dir: str | os.PathLike | None = None, include_test: bool = False) -> pd.DataFrame:
    """One row per ``evaluations`` entry of every ``result.json`` under ``results_dir``.

    Columns :data:`COLUMNS`; ``row`` is the table row name (method, [variant; configuration]),
    ``protocol_label`` the protocol's short name. Unreadable files are skipped with a warning
    (``df.attrs["skipped"]``); test/tiny runs are left out unless ``include_test``
    (``df.attrs["excluded"]`` counts them)."""
    root = resolve_results_dir(results_dir)
    rows, skipped, excluded = [], [], 0
    for f in sorted(root.rglob("result.json")) if root.is_dir() else []:
        try:
            run, entries = _read_run(f, root)
            new = [_entry_row(e, run) for e in entries]
        except Exception as exc:
            skipped.append(f"{f}: {exc}")
            warnings.warn(f"skipping {f}: {exc}", stacklevel=2)
            continue
        if run["run_kind"] in SKIPPED_KINDS and not include_test:
            excluded += 1
            continue
        rows += new
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("config", "row", "protocol_label")]
                      + ["run_method"])
    df["config"] = _config_labels(df)
    df["row"] = [_row_name(m, v, c) for m, v, c in zip(df["method"], df["variant"], df["config"])]
    df["protocol_label"] = _protocol_labels(df)
    df = df[COLUMNS].reset_index(drop=True)
    df.attrs.update(skipped=skipped, excluded=excluded, results_dir=str(root))
    return df


def _row_name(method: str, variant: str, config: str) -> str:
    tags = "; ".join(t for t in (variant, config) if t)
    return f"{method} [{tags}]" if tags else method


def _config_labels(df: pd.DataFrame) -> pd.Series:
    """Per (method, variant, dataset, IPC, eval model, protocol): the run parameters that differ
    between the runs whose own method it is (``k=v, ...``); '' when they agree."""
    labels = pd.Series("", index=df.index, dtype=object)
    own = df[df["headline"].astype(bool)] if len(df) else df
    for _, g in own.groupby(["method", "variant", "dataset", "ipc", "eval_model", "protocol_key"], dropna=False):
        keys = sorted(set().union(*(p.keys() for p in g["params"])) - NOT_A_CONFIG)
        varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in g["params"]}) > 1]
        for i, p in zip(g.index, g["params"]):
            labels[i] = ", ".join(f"{k}={p.get(k)}" for k in varying)
    return labels


def _protocol_labels(df: pd.DataFrame) -> pd.Series:
    """``name`` (``, <selection>`` unless last epoch), plus the settings that differ between the
    protocols sharing that name and selection."""
    labels = pd.Series("", index=df.index, dtype=object)
    for (name, sel), g in df.groupby(["protocol_name", "selection_name"]):
        base = protocol_title(name, sel)
        protos = {k: json.loads(k) for k in g["protocol_key"].unique()}
        keys = sorted(set().union(*protos.values()))
        varying = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in protos.values()}) > 1]
        for i, k in zip(g.index, g["protocol_key"]):
            labels[i] = base + (f" ({', '.join(f'{s}={protos[k].get(s)}' for s in varying)})" if varying else "")
    return labels


#: The protocols of ``published.csv`` (REFERENCE_NOTES "The standard evaluation protocol").
PUBLISHED_PROTOCOLS = {
    "standard": "DC/DSA/DM: fresh ConvNets trained on the set, SGD 0.01, step decay at half, DSA, 1000 epochs; "
                "test accuracy after the last epoch",
    "dsdm": "DSDM's own: 1500 epochs, batch 64, MultiStepLR x0.2 at 2/3 and 5/6, DSA + CutMix; best test "
            "accuracy over checkpoints (as IDM)",
    "dim": "DiM's validate: a fresh generated batch every step, constant lr 0.01, color_crop DSA, tested every "
           "200 epochs; best of those test accuracies",
    "unstated": "the paper does not state its evaluation protocol",
    "whole": "a network trained on the full training set",
}


def protocol_title(name: str, selection: str) -> str:
    """``"dim, best_test"``; the selection is left out for the last-epoch report (and when unstated)."""
    return name if selection in ("last", "", None, name) else f"{name}, {selection}"


def load_published(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Published numbers: columns ``method, dataset, ipc, mean, protocol, selection, source`` (empty
    ``ipc`` = whole dataset). ``ValueError`` naming the missing columns."""
    df = pd.read_csv(path or PUBLISHED_CSV, dtype={"method": str, "dataset": str, "source": str, "protocol": str,
                                                   "selection": str})
    missing = {"method", "dataset", "ipc", "mean", "protocol", "selection", "source"} - set(df.columns)
    if missing:
        raise ValueError(f"{path or PUBLISHED_CSV}: missing column(s) {sorted(missing)}; expected method, dataset, "
                         f"ipc, mean, protocol, selection, source")
    df["ipc"] = pd.to_numeric(df["ipc"], errors="coerce")
    df["mean"] = pd.to_numeric(df["mean"], errors="coerce")
    return df


# --------------------------------------------------------------------------- pooling
def main_eval_model(df: pd.DataFrame) -> str | None:
    """ConvNet when some entry used it, else the most common evaluation model."""
    if df.empty:
        return None
    models = df["eval_model"].value_counts()
    return "ConvNet" if "ConvNet" in models.index else str(models.index[0])


def pool(g: pd.DataFrame) -> dict:
    """Mean ± (population) std over every network of every entry in ``g``, with the number of seeds
    and networks; entries without per-network accuracies contribute their mean (``n_nets`` 0)."""
    accs = [a for lst in g["accs"] for a in lst]
    seeds = g["seed"].dropna().nunique() or g["run"].nunique()
    if accs:
        return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n_nets": len(accs), "n_seeds": seeds}
    return {"mean": float(g["mean"].mean()), "std": float(g["std"].mean()), "n_nets": 0, "n_seeds": seeds}


def _fmt(mean: float, std: float | None = None, digits: int = 1, counts: tuple | None = None) -> str:
    if mean is None or mean != mean:
        return ""
    text = f"{mean:.{digits}f}" if std is None or std != std else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + (f" ({counts[0]}/{counts[1]})" if counts else "")


def _ipc_label(ipc: float) -> str:
    return "whole" if ipc != ipc else f"{int(ipc)}" if float(ipc).is_integer() else f"{ipc:g}"


CELL_KEYS = ["row", "protocol_key", "dataset", "ipc", "eval_model"]


def pooled(df: pd.DataFrame) -> pd.DataFrame:
    """One line per table cell (:data:`CELL_KEYS`) with :func:`pool`'s numbers and the labels."""
    out = []
    for key, g in df.groupby(CELL_KEYS, sort=False, dropna=False):
        first = g.iloc[0]
        out.append({**dict(zip(CELL_KEYS, key)), **pool(g), "method": first["method"],
                    "protocol_label": first["protocol_label"], "protocol_name": first["protocol_name"],
                    "selection_name": first["selection_name"], "model": first["model"],
                    "notebook": first["notebook"], "variant": first["variant"], "config": first["config"]})
    return pd.DataFrame(out, columns=CELL_KEYS + ["mean", "std", "n_nets", "n_seeds", "method", "protocol_label",
                                                  "protocol_name", "selection_name", "model", "notebook", "variant",
                                                  "config"])


@dataclasses.dataclass
class Table:
    """A formatted table: ``cells`` (strings), ``best`` (bool mask), ``values`` (means)."""

    cells: pd.DataFrame
    best: pd.DataFrame
    values: pd.DataFrame
    title: str = ""
    note: str = ""
    long: pd.DataFrame | None = None  # tidy form

    @property
    def empty(self) -> bool:
        return self.cells.empty


def _empty(title: str, note: str, long: pd.DataFrame | None = None) -> Table:
    e = pd.DataFrame()
    return Table(e, e, e, title, note, long)


def _grid(long: pd.DataFrame, rows: list, cols: list, text: str = "text") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``cells`` and ``values`` frames of ``long``'s ``label`` x ``col`` entries."""
    cells = pd.DataFrame("", index=rows, columns=pd.Index(cols) if not isinstance(cols[0], tuple) else
                         pd.MultiIndex.from_tuples(cols, names=["dataset", "IPC"]))
    values = pd.DataFrame(np.nan, index=rows, columns=cells.columns)
    for r in long.itertuples():
        cells.loc[r.label, r.col] = getattr(r, text)
        values.loc[r.label, r.col] = r.mean
    return cells, values


def _sorted_columns(cols) -> list:
    """(dataset, IPC label) columns by dataset, then IPC (the whole-dataset column last)."""
    return sorted(set(cols), key=lambda c: (c[0], math.inf if c[1] == "whole" else float(c[1])))


def _block(protocol_name: str, selection: str) -> tuple:
    """Sort key of a (protocol, selection) block: the standard protocol first, whole-dataset rows last."""
    return (protocol_name == "whole", protocol_name != "standard", protocol_name, selection)


def table1(df: pd.DataFrame, published: pd.DataFrame | None = None, eval_model: str | None = None,
           digits: int = 1) -> Table:
    """Rows ``<row> · <protocol>`` x columns (dataset, IPC): our cells (:func:`pooled`, main
    evaluation model) and the published numbers (``<method> (paper) · <protocol>``), in blocks of
    one (protocol, selection); the best of our rows per column and block is marked."""
    em = eval_model or main_eval_model(df)
    ours = pooled(df[df["eval_model"] == em]) if len(df) else pooled(df)
    ours["label"] = [f"{r} · {p}" for r, p in zip(ours["row"], ours["protocol_label"])]
    ours["text"] = [_fmt(m, s, digits, (ns, nn)) for m, s, ns, nn in
                    zip(ours["mean"], ours["std"], ours["n_seeds"], ours["n_nets"])]
    ours["source"] = "ours"
    long = pd.concat([ours, _paper_cells(published, ours)], ignore_index=True) if published is not None else ours
    if long.empty:
        return _empty("Method x (dataset, IPC)", "no runs found", long)
    long["col"] = [(ds, _ipc_label(i)) for ds, i in zip(long["dataset"], long["ipc"])]
    long["block"] = [_block(p, s) for p, s in zip(long["protocol_name"], long["selection_name"])]
    order = long.sort_values(["block", "source", "label"], key=lambda c: c if c.name != "label" else c.str.lower())
    rows = list(dict.fromkeys(order["label"]))
    cells, values = _grid(long, rows, _sorted_columns(long["col"]))
    best = pd.DataFrame(False, index=rows, columns=cells.columns)
    for _, g in ours.groupby([ours["protocol_name"], ours["selection_name"], ours["dataset"], ours["ipc"]], dropna=False):
        col = (g["dataset"].iloc[0], _ipc_label(g["ipc"].iloc[0]))
        best.loc[g.loc[np.isclose(g["mean"], g["mean"].max()), "label"].tolist(), col] = True
    cells.index.name = "method · protocol"
    note = (f"Test accuracy (%) of {em or 'ConvNet'} trained on the synthetic set; mean ± std over every evaluated "
            "network of every seed in a cell, (seeds/networks) after it. A row is one method, variant, "
            "configuration and protocol: cells never pool different settings. Rows come in blocks of one protocol "
            "and selection; the best of our rows is marked per block and column, so a paper row "
            "(ddkit/published.csv, full-size datasets) is compared with ours evaluated the same way only.")
    if ours.empty:
        note += " No runs found: paper rows only."
    return Table(cells, best, values, "Method x (dataset, IPC)", note, long)


def _paper_cells(published: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """Published numbers as cells; a whole-dataset number fills every IPC column of its dataset."""
    rows = []
    for r in published.itertuples():
        ipcs = [r.ipc] if r.ipc == r.ipc else sorted(set(published.loc[(published["dataset"] == r.dataset)
                                                                        & published["ipc"].notna(), "ipc"])
                                                     | set(ours.loc[ours["dataset"] == r.dataset, "ipc"]))
        label = f"{canonical_method(r.method)} (paper) · {protocol_title(r.protocol, r.selection)}"
        rows += [{"label": label, "dataset": r.dataset, "ipc": float(i), "mean": float(r.mean), "text": _fmt(r.mean),
                  "protocol_name": r.protocol, "selection_name": r.selection, "source": "paper", "ref": r.source,
                  "method": canonical_method(r.method)} for i in ipcs]
    return pd.DataFrame(rows, columns=["label", "dataset", "ipc", "mean", "text", "protocol_name", "selection_name",
                                       "source", "ref", "method"])


def cross_arch_table(df: pd.DataFrame, digits: int = 1) -> Table:
    """Rows ``<row> (<distillation model>) · dataset · IPC · protocol``, columns evaluation models,
    for synthetic sets evaluated on two or more architectures (or on one other than the
    distillation model)."""
    if df.empty:
        return _empty("Cross-architecture", "no cross-architecture evaluations found")
    cells_long = pooled(df)
    cells_long["label"] = [f"{r} ({m}) · {d} · IPC {_ipc_label(i)} · {p}" for r, m, d, i, p in zip(
        cells_long["row"], cells_long["model"], cells_long["dataset"], cells_long["ipc"], cells_long["protocol_label"])]
    n_eval = cells_long.groupby("label")["eval_model"].transform("nunique")
    foreign = (cells_long["eval_model"] != cells_long["model"]).groupby(cells_long["label"]).transform("any")
    long = cells_long[(n_eval >= 2) | foreign].copy()
    if long.empty:
        return _empty("Cross-architecture", "no cross-architecture evaluations found", long)
    long["col"] = long["eval_model"]
    long["text"] = [_fmt(m, s, digits, (ns, nn)) for m, s, ns, nn in
                    zip(long["mean"], long["std"], long["n_seeds"], long["n_nets"])]
    cells, values = _grid(long, list(dict.fromkeys(sorted(long["label"]))), sorted(set(long["col"])))
    best = values.eq(values.max(axis=0), axis=1) & values.notna()
    cells.index.name = "distilled (model) · dataset · IPC · protocol"
    return Table(cells, best, values, "Cross-architecture: evaluation model",
                 "Test accuracy (%) of each evaluation architecture trained on the synthetic set, (seeds/networks); "
                 "best per column marked.", long)


def ablation_table(df: pd.DataFrame, eval_model: str | None = None, digits: int = 1) -> Table:
    """Per notebook, method and protocol with at least two variants or configurations: one row each,
    columns (dataset, IPC); the best per group and column marked."""
    em = eval_model or main_eval_model(df)
    d = df[(df["eval_model"] == em) & df["headline"].astype(bool)] if len(df) else df
    if d.empty:
        return _empty("Ablation", "no ablation runs found")
    p = pooled(d)
    n_rows = p.groupby(["notebook", "method", "protocol_label"])["row"].transform("nunique")
    long = p[n_rows >= 2].copy()
    if long.empty:
        return _empty("Ablation", "no ablation runs found (no method has two variants or configurations)")
    long["label"] = [f"{nb}: {r if r != m else m + ' [default]'} · {pl}" for nb, r, m, pl in
                     zip(long["notebook"], long["row"], long["method"], long["protocol_label"])]
    long["col"] = [(ds, _ipc_label(i)) for ds, i in zip(long["dataset"], long["ipc"])]
    long["text"] = [_fmt(m, s, digits, (ns, nn)) for m, s, ns, nn in
                    zip(long["mean"], long["std"], long["n_seeds"], long["n_nets"])]
    cells, values = _grid(long, list(dict.fromkeys(long.sort_values("label")["label"])), _sorted_columns(long["col"]))
    best = pd.DataFrame(False, index=cells.index, columns=cells.columns)
    for (_, col), g in long.groupby([long["notebook"] + long["method"] + long["protocol_label"], "col"]):
        best.loc[g.loc[np.isclose(g["mean"], g["mean"].max()), "label"].tolist(), col] = True
    cells.index.name = "notebook: method [variant; configuration] · protocol"
    return Table(cells, best, values, "Ablation", "Best variant per method, protocol and column marked.", long)


SELECTION_COLUMNS = {"last": "last epoch", "best_val": "best validation epoch",
                     "best_test": "best test epoch (test-set selection)"}


def selection_table(df: pd.DataFrame, digits: int = 1) -> Table:
    """For entries that recorded ``selection`` (``evaluate_synset(..., val_per_class, eval_every_epochs)``):
    the test accuracy after the last epoch, at the best validation epoch, and the best test
    accuracy over the checkpoints (selection on the test set, optimistic), pooled like Table 1."""
    d = df[df["selection"].map(lambda s: isinstance(s, dict) and bool(s))] if len(df) else df
    if d.empty:
        return _empty("Model selection", "no entry recorded a selection (evaluate_synset with eval_every_epochs "
                      "or val_per_class)")
    rows = []
    for key, g in d.groupby(CELL_KEYS, sort=False, dropna=False):
        first = g.iloc[0]
        label = f"{first['row']} · {first['dataset']} · IPC {_ipc_label(first['ipc'])} · {first['eval_model']} · " \
                f"{first['protocol_label']}"
        for sel, col in SELECTION_COLUMNS.items():
            accs = [a for s in g["selection"] for a in s.get(sel, [])]
            if accs:
                rows.append({"label": label, "col": col, "mean": float(np.mean(accs)),
                             "text": _fmt(float(np.mean(accs)), float(np.std(accs)), digits)})
    long = pd.DataFrame(rows)
    cells, values = _grid(long, list(dict.fromkeys(long["label"])),
                          [c for c in SELECTION_COLUMNS.values() if c in set(long["col"])])
    cells.index.name = "row · dataset · IPC · eval model · protocol"
    return Table(cells, pd.DataFrame(False, index=cells.index, columns=cells.columns), values,
                 "Model selection: which epoch is reported",
                 "Same networks, three reports: after the last epoch (the standard protocol), at the checkpoint "
                 "with the best accuracy on a validation split held out of the real training set (honest), and "
                 "the best test accuracy over checkpoints (selection on the test set, as DiM/IDM/DSDM report; "
                 "optimistic). The gap between the last two is the test-set selection's bias.", long)


# --------------------------------------------------------------------------- paired comparisons
def per_seed_means(g: pd.DataFrame) -> dict:
    """``{seed: mean test accuracy over that seed's networks}`` (entries without a seed are left out)."""
    out = {}
    for seed, h in g.dropna(subset=["seed"]).groupby("seed"):
        accs = [a for lst in h["accs"] for a in lst]
        out[seed] = float(np.mean(accs)) if accs else float(h["mean"].mean())
    return out


def compare_table(df: pd.DataFrame, eval_model: str | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Paired differences between the rows of one column (dataset, IPC, evaluation model, protocol)
    that share at least two seeds: per seed, the difference of the two rows' mean accuracies;
    :func:`ddkit.stats.paired_difference` gives the mean and its t interval over seeds. One line per
    pair, the better row first."""
    from .stats import format_paired, paired_difference

    em = eval_model or main_eval_model(df)
    d = df[df["eval_model"] == em] if len(df) else df
    lines = []
    for (ds, ipc, _), g in d.groupby(["dataset", "ipc", "protocol_key"], sort=True, dropna=False):
        by_row = {row: per_seed_means(h) for row, h in g.groupby("row")}
        label = g["protocol_label"].iloc[0]
        for a, b in itertools.combinations(sorted(by_row), 2):
            seeds = sorted(set(by_row[a]) & set(by_row[b]))
            if len(seeds) < 2:
                continue
            r = paired_difference([by_row[a][s] for s in seeds], [by_row[b][s] for s in seeds], confidence)
            if r["mean"] < 0:
                a, b = b, a
                r = paired_difference([by_row[a][s] for s in seeds], [by_row[b][s] for s in seeds], confidence)
            lines.append({"dataset": ds, "ipc": _ipc_label(ipc), "protocol": label, "method": a, "baseline": b,
                          "seeds": ", ".join(str(s) for s in seeds), "difference": format_paired(r), **r})
    return pd.DataFrame(lines, columns=["dataset", "ipc", "protocol", "method", "baseline", "seeds", "difference",
                                        "n", "mean", "std", "lo", "hi", "diffs"])


# --------------------------------------------------------------------------- DD-Ranking robust scores
def _normalised_exp(x: float) -> float:
    """DD-Ranking's map of a score in [-1, 1] to [0, 100]: (e^x - e^-1) / (e - e^-1) x 100."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1)) * 100


def robust_scores(acc_syn: float, acc_rdm: float, *, acc_real_hard: float | None = None,
                  acc_syn_hard: float | None = None, acc_syn_naug: float | None = None,
                  acc_rdm_naug: float | None = None, w: float = 0.5, gamma: float = 0.5) -> dict:
    """DD-Ranking's scores (Li et al. 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
    Distillation"; definitions in its documentation, ``doc/introduction.md``), computed on
    accuracies as fractions in [0, 1] (arguments in percent), so the exponents lie in [-1, 1]:

    * IOR (improvement over random) = Acc(syn-any) - Acc(rdm-any): the synthetic set against random
      real images at the same IPC, evaluated the same way (``acc_syn``, ``acc_rdm``).
    * HLR (hard-label recovery) = Acc(real-hard) - Acc(syn-hard): the whole training set against
      the synthetic images with hard labels (``acc_syn_hard`` defaults to ``acc_syn``).
    * LRS (label-robust score) = (e^a - e^-1) / (e - e^-1) x 100 with a = w IOR - (1 - w) HLR.
    * ARS (augmentation-robust score) = the same map of b = gamma (Acc(syn-aug) - Acc(rdm-aug))
      + (1 - gamma) (Acc(syn-naug) - Acc(rdm-naug)); ``acc_syn``/``acc_rdm`` are the augmented pair.

    Returns IOR and HLR in percentage points and LRS, ARS in percent; a score whose inputs are
    missing is NaN. ``ValueError`` for weights outside [0, 1]."""
    for name, v in (("w", w), ("gamma", gamma)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name}={v!r} must lie in [0, 1]")
    f = {k: (v / 100 if v is not None and v == v else None) for k, v in dict(
        syn=acc_syn, rdm=acc_rdm, real=acc_real_hard, syn_hard=acc_syn if acc_syn_hard is None else acc_syn_hard,
        syn_naug=acc_syn_naug, rdm_naug=acc_rdm_naug).items()}
    nan = math.nan
    ior = f["syn"] - f["rdm"] if f["syn"] is not None and f["rdm"] is not None else None
    hlr = f["real"] - f["syn_hard"] if f["real"] is not None and f["syn_hard"] is not None else None
    lrs = _normalised_exp(w * ior - (1 - w) * hlr) if ior is not None and hlr is not None else nan
    ars = _normalised_exp(gamma * ior + (1 - gamma) * (f["syn_naug"] - f["rdm_naug"])) \
        if ior is not None and f["syn_naug"] is not None and f["rdm_naug"] is not None else nan
    return {"IOR": nan if ior is None else 100 * ior, "HLR": nan if hlr is None else 100 * hlr, "LRS": lrs, "ARS": ars}


def _with(protocol_key_: str, **changes) -> str:
    return protocol_key({**json.loads(protocol_key_), **changes})


def _random_reference(p: pd.DataFrame) -> dict:
    """``{(protocol_key, dataset, ipc): accuracy}`` of random real images: the plain ``Random`` row, or
    the only Random row of that cell (a variant such as "teacher soft labels"); none when ambiguous."""
    out = {}
    for key, g in p[p["method"] == "Random"].groupby(["protocol_key", "dataset", "ipc"], dropna=False):
        plain = g[g["row"] == "Random"]
        if len(plain) or len(g) == 1:
            out[key] = (plain if len(plain) else g)["mean"].iloc[0]
    return out


def robust_table(df: pd.DataFrame, eval_model: str | None = None, digits: int = 1) -> Table:
    """:func:`robust_scores` per row of Table 1 (main evaluation model). Random is the random-real row
    of the same dataset, IPC and protocol (:func:`_random_reference`); real-hard the ``Whole
    dataset`` entries of the dataset (any IPC) under the same protocol with ``labels="hard"``;
    syn-hard the same row under that protocol; the no-augmentation pair the same rows under
    ``dsa="none"``."""
    em = eval_model or main_eval_model(df)
    p = pooled(df[df["eval_model"] == em]) if len(df) else pooled(df)
    if p.empty:
        return _empty("Robust scores (DD-Ranking)", "no runs found")
    acc = {(r.row, r.protocol_key, r.dataset, r.ipc): r.mean for r in p.itertuples()}
    rdm = _random_reference(p)
    whole = {(r.protocol_key, r.dataset): r.mean for r in p[p["method"] == "Whole dataset"].itertuples()}
    rows = []
    for r in p[~p["method"].isin(["Random", "Whole dataset"])].itertuples():
        hard, naug = _with(r.protocol_key, labels="hard"), _with(r.protocol_key, dsa="none")
        s = robust_scores(r.mean, rdm.get((r.protocol_key, r.dataset, r.ipc)),
                          acc_real_hard=whole.get((hard, r.dataset)),
                          acc_syn_hard=acc.get((r.row, hard, r.dataset, r.ipc)),
                          acc_syn_naug=acc.get((r.row, naug, r.dataset, r.ipc)),
                          acc_rdm_naug=rdm.get((naug, r.dataset, r.ipc)))
        if s["IOR"] == s["IOR"]:
            label = f"{r.row} · {r.dataset} · IPC {_ipc_label(r.ipc)} · {r.protocol_label}"
            rows += [{"label": label, "col": k, "mean": v, "text": _fmt(v, None, digits)} for k, v in s.items()]
    if not rows:
        return _empty("Robust scores (DD-Ranking)", "no row has a Random row under the same protocol (IOR needs it)")
    long = pd.DataFrame(rows)
    cells, values = _grid(long, list(dict.fromkeys(long["label"])), ["IOR", "HLR", "LRS", "ARS"])
    cells.index.name = "row · dataset · IPC · protocol"
    return Table(cells, pd.DataFrame(False, index=cells.index, columns=cells.columns), values,
                 "Robust scores (DD-Ranking)",
                 "DD-Ranking (Li et al. 2025) on accuracies as fractions: IOR = Acc(syn) - Acc(random real, same IPC "
                 "and protocol), HLR = Acc(whole dataset, hard labels) - Acc(syn, hard labels), in points; "
                 "LRS = (e^a - 1/e)/(e - 1/e) x 100 with a = IOR/2 - HLR/2 and ARS likewise with "
                 "b = (IOR_aug + IOR_no-aug)/2, in %. Empty: the needed evaluation was not run "
                 "(a Whole dataset entry for HLR/LRS, dsa='none' evaluations for ARS).", long)


# --------------------------------------------------------------------------- budget ledger
def ledger_table(df: pd.DataFrame, eval_model: str | None = None) -> Table:
    """Per row of Table 1: the ``ledger`` its entries recorded (``ddkit.results.budget_ledger``):
    bytes stored (images, soft labels, generator parameters) and training images per class the
    evaluation network sees per epoch; rows without a ledger say so."""
    em = eval_model or main_eval_model(df)
    d = df[df["eval_model"] == em] if len(df) else df
    if d.empty:
        return _empty("Budget ledger", "no runs found")
    cols = {"stored_bytes": "stored (KiB)", "image_bytes": "images (KiB)", "label_bytes": "soft labels (KiB)",
            "generator_bytes": "generator (KiB)", "images_per_class_per_epoch": "images / class / epoch"}
    rows = []
    for (row, ds, ipc, pl), g in d.groupby(["row", "dataset", "ipc", "protocol_label"], sort=True, dropna=False):
        ledgers = [json.dumps(x, sort_keys=True) for x in g["ledger"] if isinstance(x, dict)]
        label = f"{row} · {ds} · IPC {_ipc_label(ipc)} · {pl}"
        if not ledgers:
            rows.append({"label": label, "col": "note", "mean": math.nan, "text": "not recorded"})
            continue
        ledger = json.loads(ledgers[0])
        note = "" if len(set(ledgers)) == 1 else "differs between runs: first shown"
        for k, col in cols.items():
            v = ledger.get(k)
            text = "" if v is None else f"{v / 1024:.1f}" if k.endswith("bytes") else f"{v:g}"
            rows.append({"label": label, "col": col, "mean": _num(v), "text": text})
        rows.append({"label": label, "col": "note", "mean": math.nan, "text": note})
    long = pd.DataFrame(rows)
    cells, values = _grid(long, list(dict.fromkeys(long["label"])), [*cols.values(), "note"])
    cells.index.name = "row · dataset · IPC · protocol"
    return Table(cells, pd.DataFrame(False, index=cells.index, columns=cells.columns), values, "Budget ledger",
                 "What a row stores and what its evaluation network trains on: a factor-2 set (2x2 mosaics) shows "
                 "4 images per stored image, a generator as many as its protocol draws per epoch.", long)

# --------------------------------------------------------------------------- export
def _col_label(c) -> str:
    if isinstance(c, tuple):
        ds, ipc = c
        return f"{ds} · IPC {ipc}"
    return str(c)


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def to_markdown(t: Table) -> str:
    """A GitHub Markdown table; best cells in bold."""
    if t.empty:
        return f"_{t.note or 'empty table'}_\n"
    head = [t.cells.index.name or ""] + [_col_label(c) for c in t.cells.columns]
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    for i in t.cells.index:
        cells = []
        for c in t.cells.columns:
            v = t.cells.loc[i, c]
            cells.append(f"**{v}**" if v and bool(t.best.loc[i, c]) else v)
        label = f"_{i}_" if " (paper)" in str(i) else str(i)
        lines.append("| " + " | ".join(_md_escape(x) for x in [label] + cells) + " |")
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$").replace("·", r"$\cdot$")


def to_latex(t: Table, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs LaTeX table; best cells in ``\\textbf``; two header rows for (dataset, IPC)."""
    if t.empty:
        return f"% {t.note or 'empty table'}\n"
    cols = list(t.cells.columns)
    out = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption or t.title:
        out.append(r"\caption{" + _tex_escape(caption or t.title) + "}")
    if label:
        out.append(r"\label{" + label + "}")
    out.append(r"\begin{tabular}{l" + "c" * len(cols) + "}")
    out.append(r"\toprule")
    if isinstance(t.cells.columns, pd.MultiIndex):
        groups: list[tuple[str, int]] = []
        for ds, _ in cols:
            if groups and groups[-1][0] == ds:
                groups[-1] = (ds, groups[-1][1] + 1)
            else:
                groups.append((ds, 1))
        out.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_tex_escape(ds)}}}" for ds, n in groups) + r" \\")
        start, rules = 2, []
        for _, n in groups:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        out.append(" ".join(rules))
        out.append(_tex_escape(t.cells.index.name or "") + " / IPC & " + " & ".join(_tex_escape(i) for _, i in cols) + r" \\")
    else:
        out.append(_tex_escape(t.cells.index.name or "") + " & " + " & ".join(_tex_escape(c) for c in cols) + r" \\")
    out.append(r"\midrule")
    previous = None
    for i in t.cells.index:
        is_paper = " (paper)" in str(i)
        if previous is not None and is_paper != previous:
            out.append(r"\midrule")
        previous = is_paper
        row = []
        for c in cols:
            v = _tex_escape(t.cells.loc[i, c])
            row.append(r"\textbf{" + v + "}" if v and bool(t.best.loc[i, c]) else v)
        name = _tex_escape(i)
        if " (paper)" in str(i):
            name = r"\textit{" + name + "}"
        out.append(name + " & " + " & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.note:
        out.append(r"\par\vspace{2pt}{\footnotesize " + _tex_escape(t.note) + "}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv_frame(t: Table) -> pd.DataFrame:
    """The table layout with best cells suffixed by ``*`` and one flat header row."""
    if t.empty:
        return pd.DataFrame()
    cells = t.cells.copy()
    for i in cells.index:
        for c in cells.columns:
            if cells.loc[i, c] and bool(t.best.loc[i, c]):
                cells.loc[i, c] = cells.loc[i, c] + " *"
    cells.columns = [_col_label(c) for c in cells.columns]
    return cells


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_table(t: Table, out_dir: str | os.PathLike, name: str, formats: Iterable[str] = ("md", "tex", "csv")) -> list[Path]:
    """``<name>.md``, ``<name>.tex``, ``<name>.csv`` (+ ``<name>_long.csv``, tidy)."""
    out_dir = Path(out_dir)
    paths = []
    for fmt in formats:
        p = out_dir / f"{name}.{fmt}"
        if fmt == "md":
            text = (f"### {t.title}\n\n" if t.title else "") + to_markdown(t) + (f"\n{t.note}\n" if t.note and not t.empty else "")
        elif fmt == "tex":
            text = to_latex(t, label=f"tab:{name}")
        elif fmt == "csv":
            text = to_csv_frame(t).to_csv()
            if t.long is not None and len(t.long):
                long = t.long.drop(columns=[c for c in ("accs", "params", "block") if c in t.long.columns])
                _atomic_text(out_dir / f"{name}_long.csv", long.to_csv(index=False))
                paths.append(out_dir / f"{name}_long.csv")
        else:
            raise ValueError(f"unknown table format {fmt!r} (md, tex, csv)")
        _atomic_text(p, text)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- plots
def _accuracy_long(df: pd.DataFrame, published: pd.DataFrame | None, eval_model: str | None) -> pd.DataFrame:
    """Tidy (series, panel, ipc, accuracy, source) for :func:`plot_accuracy_vs_ipc`: a panel per
    dataset and (protocol, selection) block; paper numbers only in the panel of their protocol."""
    em = eval_model or main_eval_model(df)
    d = df[df["eval_model"] == em] if len(df) else df
    rows = [dict(series=r.row, panel=f"{r.dataset} · {protocol_title(r.protocol_name, r.selection_name)}",
                 ipc=r.ipc, accuracy=a, source="ours") for r in d.itertuples() for a in (r.accs or [r.mean])]
    for r in (published.itertuples() if published is not None else []):
        if r.ipc == r.ipc:
            rows.append(dict(series=canonical_method(r.method), panel=f"{r.dataset} · {protocol_title(r.protocol, r.selection)}",
                             ipc=r.ipc, accuracy=r.mean, source="paper"))
    return pd.DataFrame(rows, columns=["series", "panel", "ipc", "accuracy", "source"])


def plot_accuracy_vs_ipc(df: pd.DataFrame, published: pd.DataFrame | None = None, eval_model: str | None = None):
    """Accuracy vs IPC, one panel per (dataset, protocol): ours solid (± std over the evaluated
    networks), the papers' numbers dashed in the panel of their own protocol, so every panel
    compares like with like. ``None`` when there is nothing to draw."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = _accuracy_long(df, published, eval_model)
    if data.empty:
        return None
    panels = sorted(data["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4), squeeze=False)
    series = sorted(data["series"].unique(), key=str.lower)
    palette = dict(zip(series, sns.color_palette("tab10" if len(series) <= 10 else "tab20", len(series))))
    for ax, panel in zip(axes[0], panels):
        sub = data[data["panel"] == panel]
        sns.lineplot(data=sub, x="ipc", y="accuracy", hue="series", style="source", style_order=["ours", "paper"],
                     dashes={"ours": "", "paper": (4, 2)}, markers={"ours": "o", "paper": "X"}, errorbar="sd",
                     palette=palette, ax=ax, legend=True)
        ipcs = sorted(sub["ipc"].unique())
        if len(ipcs) > 1 and ipcs[0] > 0:
            ax.set_xscale("log")
        ax.set_xticks(ipcs)
        ax.set_xticklabels([_ipc_label(i) for i in ipcs])
        ax.minorticks_off()
        ax.set(title=panel, xlabel="images per class (IPC)", ylabel="test accuracy (%)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Accuracy vs IPC per protocol (solid: ours, dashed: paper under the same protocol)")
    fig.tight_layout()
    return fig


def iterations_long(df: pd.DataFrame, eval_model: str | None = None) -> pd.DataFrame:
    """Tidy (series, panel, iterations, accuracy) from every entry's ``curve``."""
    em = eval_model or main_eval_model(df)
    d = df[(df["eval_model"] == em) & df["curve"].map(lambda c: isinstance(c, list) and bool(c))] if len(df) else df
    rows = [dict(series=f"{r.row} · {r.protocol_label}", panel=f"{r.dataset} · IPC {_ipc_label(r.ipc)}",
                 iterations=float(p["iteration"]), accuracy=float(a))
            for r in d.itertuples() for p in r.curve for a in p["accs"]]
    return pd.DataFrame(rows, columns=["series", "panel", "iterations", "accuracy"])


def plot_accuracy_vs_iterations(df: pd.DataFrame, eval_model: str | None = None):
    """Accuracy vs distillation iterations from the entries' ``curve`` (mean ± std over the
    networks at each point). ``None`` when no entry recorded a curve."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = iterations_long(df, eval_model)
    if data.empty:
        return None
    panels = sorted(data["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sns.lineplot(data=data[data["panel"] == p], x="iterations", y="accuracy", hue="series", marker="o",
                     errorbar="sd", ax=ax)
        ax.set(title=p, xlabel="distillation iterations", ylabel="test accuracy (%)")
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Accuracy vs distillation iterations")
    fig.tight_layout()
    return fig


def plot_cross_arch(df: pd.DataFrame):
    """Heat map of the cross-architecture table (``None`` when empty)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    t = cross_arch_table(df)
    if t.empty:
        return None
    v = t.values
    fig, ax = plt.subplots(figsize=(4.0 + 1.3 * v.shape[1], 1.6 + 0.45 * v.shape[0]))
    sns.heatmap(v, annot=True, fmt=".1f", cmap="viridis", cbar_kws={"label": "test accuracy (%)"}, ax=ax)
    ax.set(xlabel="evaluation model", ylabel="", title="Cross-architecture generalisation")
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class Report:
    runs: pd.DataFrame
    published: pd.DataFrame | None
    table1: Table
    cross_arch: Table
    ablation: Table
    selection: Table | None = None
    compare: pd.DataFrame | None = None
    robust: Table | None = None
    ledger: Table | None = None
    figures: dict = dataclasses.field(default_factory=dict)  # name -> Figure (or None)
    files: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    out_dir: Path | None = None

    @property
    def n_runs(self) -> int:
        return int(self.runs["path"].nunique()) if len(self.runs) else 0

    def tables(self) -> dict:
        """File name -> table, in the order of ``report.md``."""
        return {"table1": self.table1, "cross_arch": self.cross_arch, "ablation": self.ablation,
                "selection": self.selection, "robust": self.robust, "ledger": self.ledger}

    def protocols_markdown(self) -> str:
        """Each protocol label of our rows with every setting that defines it."""
        seen = self.runs.drop_duplicates("protocol_key")
        ours = [f"- **{r.protocol_label}**: " + ", ".join(f"{k}={v}" for k, v in sorted(r.protocol.items()))
                for r in seen.sort_values("protocol_label").itertuples()]
        papers = [f"- paper rows **{k}**: {v}" for k, v in PUBLISHED_PROTOCOLS.items()]
        return "\n".join(ours + papers) + "\n"

    def compare_markdown(self) -> str:
        if self.compare is None or self.compare.empty:
            return "_no two rows of one column share two or more seeds: run both methods on the same seeds_\n"
        cols = ["dataset", "ipc", "protocol", "method", "baseline", "seeds", "difference"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_md_escape(str(getattr(r, c))) for c in cols) + " |" for r in self.compare.itertuples()]
        return "\n".join(lines) + "\n\nMean paired difference (method - baseline) over shared seeds with a 95% t interval.\n"

    def markdown(self) -> str:
        root = self.runs.attrs.get("results_dir", "results")
        parts = ["# ddkit report", ""]
        if self.n_runs == 0:
            parts.append(f"**No runs found** under `{root}`: showing the published numbers only. Run `ddkit sweep "
                         "params/demo.yaml` (or any notebook) first.\n")
        else:
            parts.append(f"{self.n_runs} run(s), {len(self.runs)} evaluated synthetic set(s) from `{root}`.\n")
        if self.runs.attrs.get("excluded"):
            parts.append(f"{self.runs.attrs['excluded']} test/tiny run(s) left out (`ddkit report --include-test` "
                         "shows them).\n")
        sections = [("table1", self.table1), ("protocols", None), ("cross_arch", self.cross_arch),
                    ("ablation", self.ablation), ("selection", self.selection), ("compare", None),
                    ("robust", self.robust), ("ledger", self.ledger)]
        for name, t in sections:
            if name == "protocols":
                parts += ["## Protocols", "", self.protocols_markdown()]
            elif name == "compare":
                parts += ["## compare: paired differences (same seeds)", "", self.compare_markdown()]
            elif t is not None:
                parts += [f"## {t.title}", "", to_markdown(t), (t.note + "\n") if t.note and not t.empty else ""]
        for name, fig in self.figures.items():
            parts.append(f"![{name}]({name}.png)\n" if fig is not None else f"_{name}: nothing to plot_\n")
        if self.notes:
            parts += ["## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def summary(self) -> str:
        lines = [f"report: {self.n_runs} run(s), {len(self.runs)} evaluated set(s)"
                 + ("" if self.n_runs else " - no runs found, paper rows only")]
        lines += [f"  wrote {p}" for p in self.files]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def build_report(
    results_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    formats: Iterable[str] = ("md", "tex", "csv"),
    paper: bool = True,
    published: str | os.PathLike | pd.DataFrame | None = None,
    plots: bool = True,
    eval_model: str | None = None,
    close_figures: bool = True,
    include_test: bool = False,
) -> Report:
    """Collect, tabulate, plot and write everything into ``out_dir`` (default
    ``<results_dir>/report``): ``table1.*``, ``cross_arch.*``, ``ablation.*``, ``selection.*``,
    ``robust.*``, ``ledger.*``, ``compare.csv``, ``runs.csv``, ``acc_vs_ipc.png``,
    ``acc_vs_iterations.png``, ``cross_arch_heatmap.png``, ``report.md``. Empty results are fine:
    the paper rows are still shown. Test/tiny runs only with ``include_test``."""
    formats = list(formats)
    runs = collect(results_dir, include_test=include_test)
    pub = (published if isinstance(published, pd.DataFrame) else load_published(published)) if paper else None
    rep = Report(runs=runs, published=pub, table1=table1(runs, pub, eval_model), cross_arch=cross_arch_table(runs),
                 ablation=ablation_table(runs, eval_model), selection=selection_table(runs),
                 compare=compare_table(runs, eval_model), robust=robust_table(runs, eval_model),
                 ledger=ledger_table(runs, eval_model))
    rep.notes += [f"skipped unreadable {s}" for s in runs.attrs.get("skipped", [])]
    out = Path(out_dir) if out_dir else default_out_dir(results_dir)
    rep.out_dir = out
    out.mkdir(parents=True, exist_ok=True)
    for name, t in rep.tables().items():
        if t.empty and name != "table1":
            rep.notes.append(f"{name}: {t.note}")
            for fmt in formats:  # no stale tables from an earlier report
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
        else:
            rep.files += write_table(t, out, name, formats)
    _atomic_text(out / "compare.csv", rep.compare.drop(columns=["diffs"]).to_csv(index=False))
    flat = runs.drop(columns=["params", "curve", "protocol", "selection", "ledger"]).copy()
    flat["accs"] = [json.dumps(a) for a in flat["accs"]]
    _atomic_text(out / "runs.csv", flat.to_csv(index=False))
    rep.files += [out / "compare.csv", out / "runs.csv"]
    if plots:
        rep.files += _write_plots(rep, out, eval_model, close_figures)
    _atomic_text(out / "report.md", rep.markdown())
    rep.files.append(out / "report.md")
    return rep


def _write_plots(rep: Report, out: Path, eval_model: str | None, close_figures: bool) -> list:
    import matplotlib.pyplot as plt

    from .results import save_figure

    makers = {"acc_vs_ipc": lambda: plot_accuracy_vs_ipc(rep.runs, rep.published, eval_model),
              "acc_vs_iterations": lambda: plot_accuracy_vs_iterations(rep.runs, eval_model),
              "cross_arch_heatmap": lambda: plot_cross_arch(rep.runs)}
    files = []
    for name, make in makers.items():
        fig = make()
        rep.figures[name] = fig
        path = out / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            rep.notes.append(f"{name}.png: nothing to plot")
            continue
        files.append(save_figure(fig, path))
        if close_figures:
            plt.close(fig)
    return files
