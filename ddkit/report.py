"""Collect ``results/**/result.json`` into the papers' tables and plots.

``build_report(results_dir, out_dir)`` does everything ``ddkit report`` does:

* :func:`collect` reads every ``result.json`` (CONTRACT "Results on disk") into one
  DataFrame, one row per evaluated synthetic set (``source == "ours"``).
* :func:`table1`: method x (dataset, IPC), ``mean ± std`` (pooled over all evaluated
  networks of all runs in the cell, i.e. over seeds and ``num_eval``), the best of
  our rows per column marked (bold in Markdown/LaTeX, ``*`` in CSV); published numbers
  (:func:`load_published`, ``ddkit/published.csv``) appended as ``<method> (paper)``
  rows.
* :func:`cross_arch_table`: (method, distillation model) x evaluation model.
* :func:`ablation_table`: per notebook and method, one row per parameter variant.
* plots (seaborn): accuracy vs IPC per method (paper rows dashed), accuracy vs
  distillation iterations, cross-architecture heat map.
* :func:`write_table` exports Markdown, LaTeX (booktabs) and CSV.

Optional ``result.json`` fields the report understands (all extras of ``write_result``):

``variant``
    an ablation label (e.g. ``"w/o L_CC"``); runs without it get a label built from
    the parameters that differ between runs of the same method/dataset/IPC.
``baselines``
    ``{method name: {mean, std, accs}}``: other methods evaluated in the same run under
    the same protocol (e.g. random real images): one more row each.
``baseline_method, baseline_accs, baseline_mean, baseline_std``
    the same for a single baseline.
``variants``
    ``{label: {mean, std, accs}}``: ablation variants of this run's method (e.g.
    ``{"w/o L_h": ...}``): rows ``<method> [<label>]`` in Table 1 and the ablation table.
``table``
    ``{method: {ipc: {mean, std, accs[, model]}}}``: one run evaluated at several IPCs
    and/or with baselines (the GAN notebooks: a generator is redeployed at any IPC). The
    entry named ``"... (ours)"`` (or the run's method) is this run's method.
``<label>_accs, <label>_mean, <label>_std``
    the same for one variant (all three keys present; e.g. DSDM's ``no_h_*``).
``extra_results``
    list of ``{method, accs, mean, std[, eval_model]}``: more rows from one run (e.g. the
    quickstart's coreset baselines).
``cross_arch``
    ``{eval_model: {mean, std, accs}}`` or a list of ``{eval_model, mean, std, accs}``: the
    same synthetic set evaluated on other architectures. A run whose ``eval_model``
    differs from its ``model`` also counts as a cross-architecture entry.
``curve``
    list of ``{iteration, mean[, std]}``: accuracy during distillation.

Tables only use runs evaluated with the main evaluation model (``eval_model`` argument,
default ConvNet when present, else the most common one) and, among runs that differ only
in ``iterations``, the longest.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

__all__ = [
    "collect",
    "load_published",
    "table1",
    "cross_arch_table",
    "ablation_table",
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
#: parameters that never define a variant (bookkeeping, or a table axis)
NOT_A_VARIANT = frozenset(
    {"seed", "run_name", "results_dir", "data_root", "device", "dataset", "ipc", "iterations", "tsne",
     "compare_dm", "progress"}
)
_ALIASES = {
    "random": "Random", "randomreal": "Random", "randomsubset": "Random", "herding": "Herding",
    "kcenter": "K-Center", "forgetting": "Forgetting", "dm": "DM", "dim": "DiM", "idm": "IDM",
    "wholedataset": "Whole dataset", "whole": "Whole dataset", "originaldataset": "Whole dataset",
    "ganskd": "GAN + SKD", "gandiskd": "GAN + SKD", "gangloballocal": "GAN global/local", "gangl": "GAN global/local",
    "dsdm": "DSDM", "ead": "EAD", "dmiid": "DM+IID", "idmiid": "IDM+IID",
}


def canonical_method(name: Any) -> str:
    """One spelling per method, so ours and the papers' rows share a colour."""
    s = str(name)
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", s.lower()), s)


def default_results_dir() -> Path:
    try:
        from ddkit.results import resolve_results_dir

        return Path(resolve_results_dir(""))
    except Exception:  # pragma: no cover
        return Path(__file__).resolve().parents[1] / "results"


def default_out_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/report`` (the Makefile's ``make demo`` location)."""
    return Path(results_dir or default_results_dir()) / "report"


# --------------------------------------------------------------------------- collection
def _stats(accs, mean=None, std=None) -> tuple[list, float, float]:
    accs = [float(a) for a in (accs or []) if a is not None and a == a]
    if accs:
        return accs, float(np.mean(accs)), float(np.std(accs))
    m = float(mean) if isinstance(mean, (int, float)) else math.nan
    s = float(std) if isinstance(std, (int, float)) else math.nan
    return [], m, s


def _ipc(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def collect(results_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per evaluated synthetic set found under ``results_dir``.

    ``method`` is :func:`canonical_method` of the recorded name (``method_raw``).
    Columns: ``notebook, run, method, dataset, ipc, model, eval_model, iterations, seed,
    mean, std, accs, n, seconds, variant, kind (main/baseline/extra), params, cross_arch,
    curve, created, path, source``. Unreadable files are skipped with a warning and listed
    in ``df.attrs["skipped"]``.
    """
    root = Path(results_dir) if results_dir else default_results_dir()
    rows, skipped = [], []
    files = sorted(root.rglob("result.json")) if root.is_dir() else []
    for f in files:
        try:
            rec = json.loads(f.read_text())
            if not isinstance(rec, dict) or "method" not in rec:
                raise ValueError("not a result record (no 'method')")
        except Exception as exc:
            skipped.append(f"{f}: {exc}")
            warnings.warn(f"skipping {f}: {exc}", stacklevel=2)
            continue
        params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
        rel = f.parent.relative_to(root)
        base = {
            "notebook": rel.parts[0] if len(rel.parts) > 1 else "",
            "run": f.parent.name,
            "dataset": str(rec.get("dataset", params.get("dataset", ""))),
            "ipc": _ipc(rec.get("ipc", params.get("ipc"))),
            "model": str(rec.get("model", params.get("model", ""))),
            "eval_model": str(rec.get("eval_model") or params.get("eval_model") or rec.get("model", "")),
            "iterations": rec["iterations"] if isinstance(rec.get("iterations"), (int, float)) else params.get("iterations"),
            "seed": params.get("seed"),
            "seconds": rec.get("seconds"),
            "params": params,
            "created": rec.get("created"),
            "path": str(f),
            "source": "ours",
        }
        accs, m, s = _stats(rec.get("accs"), rec.get("mean"), rec.get("std"))
        rows.append({**base, "method": str(rec["method"]), "mean": m, "std": s, "accs": accs, "n": len(accs),
                     "variant": rec.get("variant"), "kind": "main", "cross_arch": rec.get("cross_arch"),
                     "curve": rec.get("curve")})
        if rec.get("baseline_method"):
            accs, m, s = _stats(rec.get("baseline_accs"), rec.get("baseline_mean"), rec.get("baseline_std"))
            rows.append({**base, "method": str(rec["baseline_method"]), "mean": m, "std": s, "accs": accs,
                         "n": len(accs), "variant": rec.get("variant"), "kind": "baseline", "cross_arch": None,
                         "curve": None})
        for key, kind in (("baselines", "baseline"), ("variants", "variant")):
            mapping = rec.get(key)
            if not isinstance(mapping, dict):
                continue
            for name, val in mapping.items():
                if not isinstance(val, dict):
                    continue
                accs, m, s = _stats(val.get("accs"), val.get("mean"), val.get("std"))
                method, variant = (str(name), rec.get("variant")) if kind == "baseline" else (str(rec["method"]), str(name))
                rows.append({**base, "method": method, "mean": m, "std": s, "accs": accs, "n": len(accs),
                             "variant": variant, "kind": kind, "cross_arch": val.get("cross_arch"), "curve": None})
        # "table": {method: {ipc: {mean, std, accs}}} (GAN notebooks: one generator, several IPCs)
        table = rec.get("table")
        if isinstance(table, dict):
            for name, per_ipc in table.items():
                if not isinstance(per_ipc, dict):
                    continue
                ours = "(ours)" in str(name).lower() or canonical_method(name) == canonical_method(rec["method"])
                for k, val in per_ipc.items():
                    if not isinstance(val, dict) or _ipc(k) != _ipc(k):
                        continue
                    if ours and _ipc(k) == base["ipc"]:
                        continue  # that is the main row
                    accs, m, s = _stats(val.get("accs"), val.get("mean"), val.get("std"))
                    rows.append({**base, "ipc": _ipc(k), "method": str(rec["method"]) if ours else str(name),
                                 "eval_model": str(val.get("model") or base["eval_model"]), "mean": m, "std": s,
                                 "accs": accs, "n": len(accs), "variant": rec.get("variant"),
                                 "kind": "main" if ours else "baseline", "cross_arch": None, "curve": None})
        # "<label>_accs/_mean/_std" triples (e.g. DSDM's no_h_*): variants of this run's method
        for k in rec:
            label = k[:-5] if k.endswith("_accs") else None
            if not label or label == "baseline" or f"{label}_mean" not in rec or f"{label}_std" not in rec:
                continue
            if not isinstance(rec[k], list):
                continue
            accs, m, s = _stats(rec[k], rec.get(f"{label}_mean"), rec.get(f"{label}_std"))
            rows.append({**base, "method": str(rec["method"]), "mean": m, "std": s, "accs": accs, "n": len(accs),
                         "variant": label, "kind": "variant", "cross_arch": None, "curve": None})
        for extra in rec.get("extra_results") or []:
            if not isinstance(extra, dict) or "method" not in extra:
                continue
            accs, m, s = _stats(extra.get("accs"), extra.get("mean"), extra.get("std"))
            rows.append({**base, "eval_model": str(extra.get("eval_model", base["eval_model"])),
                         "method": str(extra["method"]), "mean": m, "std": s, "accs": accs, "n": len(accs),
                         "variant": extra.get("variant", rec.get("variant")), "kind": "extra",
                         "cross_arch": extra.get("cross_arch"), "curve": None})
    cols = ["notebook", "run", "method", "dataset", "ipc", "model", "eval_model", "iterations", "seed", "mean",
            "std", "accs", "n", "seconds", "variant", "kind", "params", "cross_arch", "curve", "created", "path",
            "source"]
    df = pd.DataFrame(rows, columns=cols)
    df["method_raw"] = df["method"]
    df["method"] = df["method"].map(canonical_method)
    df["iterations"] = pd.to_numeric(df["iterations"], errors="coerce")
    df.attrs["skipped"] = skipped
    df.attrs["results_dir"] = str(root)
    return df


def load_published(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Published numbers (columns ``method, dataset, ipc, mean, source``; empty ``ipc`` =
    whole dataset) with ``source_kind == "paper"``."""
    df = pd.read_csv(path or PUBLISHED_CSV, dtype={"method": str, "dataset": str, "source": str})
    missing = {"method", "dataset", "ipc", "mean", "source"} - set(df.columns)
    if missing:
        raise ValueError(f"{path or PUBLISHED_CSV}: missing column(s) {sorted(missing)}")
    df["ipc"] = pd.to_numeric(df["ipc"], errors="coerce")
    df["mean"] = pd.to_numeric(df["mean"], errors="coerce")
    return df


# --------------------------------------------------------------------------- selection
def main_eval_model(df: pd.DataFrame) -> str | None:
    if df.empty:
        return None
    models = df["eval_model"].value_counts()
    return "ConvNet" if "ConvNet" in models.index else str(models.index[0])


def _variant_labels(df: pd.DataFrame, by: list[str]) -> pd.Series:
    """Label each row by the parameters that differ within its ``by`` group."""
    labels = pd.Series([""] * len(df), index=df.index, dtype=object)
    for _, g in df.groupby(by, dropna=False, sort=False):
        explicit = g["variant"].notna()
        labels.loc[g.index[explicit]] = g.loc[explicit, "variant"].astype(str)
        rest = g[~explicit]
        if len(rest) < 2:
            continue
        keys = sorted(set().union(*(p.keys() for p in rest["params"])) - NOT_A_VARIANT)
        varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in rest["params"]}) > 1]
        for i, p in zip(rest.index, rest["params"]):
            labels.loc[i] = ", ".join(f"{k}={p.get(k)}" for k in varying)
    return labels


def _select_main(df: pd.DataFrame, eval_model: str | None) -> tuple[pd.DataFrame, str | None]:
    d = df[df["source"] == "ours"].copy()
    d["variant_label"] = pd.Series(dtype=object)
    if d.empty:
        return d, None
    em = eval_model or main_eval_model(d)
    d = d[d["eval_model"] == em].copy()
    if d.empty:
        return d, em
    d["ipc"] = d["ipc"].astype(float)
    d["variant_label"] = _variant_labels(d, ["notebook", "method", "dataset", "ipc"])
    # among runs that differ only in the number of iterations, keep the longest
    it = d["iterations"].fillna(-1)
    longest = it.groupby([d["notebook"], d["method"], d["dataset"], d["ipc"], d["variant_label"]]).transform("max")
    return d[it == longest], em


def _pool(g: pd.DataFrame) -> tuple[float, float, int]:
    accs = [a for lst in g["accs"] for a in lst]
    if accs:
        return float(np.mean(accs)), float(np.std(accs)), len(accs)
    return float(g["mean"].mean()), float(g["std"].mean()) if g["std"].notna().any() else math.nan, 0


def _fmt(mean: float, std: float | None, digits: int = 1) -> str:
    if mean is None or mean != mean:
        return ""
    if std is None or std != std:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


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


def _ipc_label(ipc: float) -> str:
    return "whole" if ipc != ipc else f"{int(ipc)}" if float(ipc).is_integer() else f"{ipc:g}"


def table1(
    df: pd.DataFrame,
    published: pd.DataFrame | None = None,
    eval_model: str | None = None,
    digits: int = 1,
) -> Table:
    """Method x (dataset, IPC) mean ± std, best of our rows per column marked, paper rows
    (``"<method> (paper)"``) appended when ``published`` is given."""
    d, em = _select_main(df, eval_model)
    long_rows = []
    for (method, variant, dataset, ipc), g in d.groupby(["method", "variant_label", "dataset", "ipc"], sort=True):
        m, s, n = _pool(g)
        label = f"{method} [{variant}]" if variant else method
        long_rows.append(dict(row=label, method=method, dataset=dataset, ipc=ipc, mean=m, std=s, n_nets=n,
                              n_runs=len(g), source="ours"))
    ours_labels = sorted({r["row"] for r in long_rows}, key=lambda s: (canonical_method(s).lower(), s))
    if published is not None and len(published):
        pub = published.copy()
        ipcs_by_ds = {ds: sorted({r["ipc"] for r in long_rows if r["dataset"] == ds} | set(
            pub.loc[(pub["dataset"] == ds) & pub["ipc"].notna(), "ipc"])) for ds in pub["dataset"].unique()}
        for _, r in pub.iterrows():
            targets = [r["ipc"]] if r["ipc"] == r["ipc"] else ipcs_by_ds.get(r["dataset"], [])
            for ipc in targets:
                long_rows.append(dict(row=f"{canonical_method(r['method'])} (paper)", method=r["method"], dataset=r["dataset"],
                                      ipc=float(ipc), mean=float(r["mean"]), std=math.nan, n_nets=0, n_runs=0,
                                      source="paper", ref=r["source"]))
    long = pd.DataFrame(long_rows, columns=["row", "method", "dataset", "ipc", "mean", "std", "n_nets", "n_runs",
                                            "source", "ref"])
    if long.empty:
        empty = pd.DataFrame()
        return Table(empty, empty, empty, "Method x (dataset, IPC)", "no runs found", long)
    paper_labels = list(dict.fromkeys(long.loc[long["source"] == "paper", "row"]))
    row_order = ours_labels + [p for p in paper_labels if p not in ours_labels]
    cols = sorted({(r.dataset, r.ipc) for r in long.itertuples()}, key=lambda c: (c[0], c[1]))
    col_index = pd.MultiIndex.from_tuples([(ds, _ipc_label(ipc)) for ds, ipc in cols], names=["dataset", "IPC"])
    cells = pd.DataFrame("", index=row_order, columns=col_index)
    values = pd.DataFrame(np.nan, index=row_order, columns=col_index)
    best = pd.DataFrame(False, index=row_order, columns=col_index)
    for r in long.itertuples():
        c = (r.dataset, _ipc_label(r.ipc))
        cells.loc[r.row, c] = _fmt(r.mean, r.std, digits)
        values.loc[r.row, c] = r.mean
    for c in col_index:
        ours = values.loc[ours_labels, c].dropna() if ours_labels else pd.Series(dtype=float)
        if len(ours):
            top = ours.max()
            for lbl in ours.index[np.isclose(ours.values, top)]:
                best.loc[lbl, c] = True
    cells.index.name = "method"
    note = (f"Test accuracy (%) of {em or 'ConvNet'} trained on the synthetic set; mean ± std over all "
            f"evaluated networks of all runs (seeds) in a cell; best of our rows per column marked. "
            f"'(paper)' rows: published numbers (ddkit/published.csv), full-size datasets.")
    if not ours_labels:
        note += " No runs found: paper rows only."
    return Table(cells, best, values, "Method x (dataset, IPC)", note, long)


def cross_arch_long(df: pd.DataFrame) -> pd.DataFrame:
    """(method, dataset, ipc, model, eval_model, mean, std, accs) from runs and ``cross_arch``."""
    rows = []
    d = df[(df["source"] == "ours") & df["kind"].isin(["main", "extra"])]
    if "variant" in d and d["variant"].notna().any():
        d = d[d["variant"].isna()]
    for r in d.itertuples():
        rows.append(dict(method=r.method, dataset=r.dataset, ipc=r.ipc, model=r.model, eval_model=r.eval_model,
                         accs=r.accs, mean=r.mean, std=r.std))
        ca = r.cross_arch
        items = []
        if isinstance(ca, dict):
            items = [{"eval_model": k, **(v if isinstance(v, dict) else {"mean": v})} for k, v in ca.items()]
        elif isinstance(ca, list):
            items = [dict(x) for x in ca if isinstance(x, dict)]
        for it in items:
            em = it.get("eval_model") or it.get("model")
            if not em:
                continue
            accs, m, s = _stats(it.get("accs"), it.get("mean"), it.get("std"))
            rows.append(dict(method=r.method, dataset=r.dataset, ipc=r.ipc, model=r.model, eval_model=str(em),
                             accs=accs, mean=m, std=s))
    out = pd.DataFrame(rows, columns=["method", "dataset", "ipc", "model", "eval_model", "accs", "mean", "std"])
    if out.empty:
        return out
    # only synthetic sets seen by at least two architectures (or by a foreign one)
    key = [out["method"], out["dataset"], out["ipc"].astype(float), out["model"]]
    n_eval = out.groupby(key)["eval_model"].transform("nunique")
    foreign = (out["eval_model"] != out["model"]).groupby(key).transform("any")
    return out[(n_eval >= 2) | foreign].reset_index(drop=True)


def cross_arch_table(df: pd.DataFrame, digits: int = 1) -> Table:
    """Rows ``method (distilled with <model>), dataset, IPC``; columns evaluation models.
    Empty when every synthetic set was evaluated on one architecture only."""
    ca = cross_arch_long(df)
    if ca.empty or ca["eval_model"].nunique() < 2 and not (ca["eval_model"] != ca["model"]).any():
        empty = pd.DataFrame()
        return Table(empty, empty, empty, "Cross-architecture", "no cross-architecture evaluations found", ca)
    ca = ca.drop_duplicates(subset=["method", "dataset", "ipc", "model", "eval_model", "mean"])
    long_rows = []
    for (method, dataset, ipc, model, em), g in ca.groupby(["method", "dataset", "ipc", "model", "eval_model"]):
        m, s, n = _pool(g)
        long_rows.append(dict(row=f"{method} ({model}) · {dataset} · IPC {_ipc_label(ipc)}", eval_model=em,
                              mean=m, std=s, n_nets=n))
    long = pd.DataFrame(long_rows)
    values = long.pivot_table(index="row", columns="eval_model", values="mean", aggfunc="first")
    stds = long.pivot_table(index="row", columns="eval_model", values="std", aggfunc="first").reindex_like(values)
    cells = pd.DataFrame("", index=values.index, columns=values.columns)
    for i in values.index:
        for c in values.columns:
            cells.loc[i, c] = _fmt(values.loc[i, c], stds.loc[i, c], digits)
    best = values.eq(values.max(axis=0), axis=1) & values.notna()
    cells.index.name = "distilled (model) · dataset · IPC"
    return Table(cells, best, values, "Cross-architecture: evaluation model",
                 "Test accuracy (%) of each evaluation architecture trained on the synthetic set; best per column "
                 "marked.", long)


def ablation_table(df: pd.DataFrame, eval_model: str | None = None, digits: int = 1) -> Table:
    """Per notebook and method, one row per variant (the ``variant`` field, or the
    parameters that differ between its runs); columns (dataset, IPC). Only groups with
    at least two variants appear."""
    d, _ = _select_main(df, eval_model)
    if d.empty:
        empty = pd.DataFrame()
        return Table(empty, empty, empty, "Ablation", "no ablation runs found", d)
    d = d.copy()
    # variants across the whole notebook/method (not per cell), so rows line up
    d["variant_label"] = _variant_labels(d, ["notebook", "method"])
    long_rows = []
    for (nb, method), g in d.groupby(["notebook", "method"]):
        if g["variant_label"].nunique() < 2:
            continue
        for (variant, dataset, ipc), h in g.groupby(["variant_label", "dataset", "ipc"]):
            m, s, n = _pool(h)
            long_rows.append(dict(row=f"{nb}: {method} [{variant or 'default'}]", dataset=dataset, ipc=ipc,
                                  mean=m, std=s, n_nets=n, notebook=nb, method=method, variant=variant))
    if not long_rows:
        empty = pd.DataFrame()
        return Table(empty, empty, empty, "Ablation", "no ablation runs found (no method has two variants)", d)
    long = pd.DataFrame(long_rows)
    long["col"] = [(ds, _ipc_label(i)) for ds, i in zip(long["dataset"], long["ipc"])]
    cols = pd.MultiIndex.from_tuples(sorted(set(long["col"]), key=lambda c: (c[0], float(c[1]) if c[1] != "whole" else 1e9)),
                                     names=["dataset", "IPC"])
    rows = list(dict.fromkeys(long["row"]))
    cells = pd.DataFrame("", index=rows, columns=cols)
    values = pd.DataFrame(np.nan, index=rows, columns=cols)
    for r in long.itertuples():
        cells.loc[r.row, r.col] = _fmt(r.mean, r.std, digits)
        values.loc[r.row, r.col] = r.mean
    best = pd.DataFrame(False, index=rows, columns=cols)
    for (nb, method), g in long.groupby(["notebook", "method"]):
        idx = list(dict.fromkeys(g["row"]))
        for c in cols:
            v = values.loc[idx, c].dropna()
            if len(v):
                best.loc[v.index[np.isclose(v.values, v.max())], c] = True
    cells.index.name = "notebook: method [variant]"
    return Table(cells, best, values, "Ablation", "Best variant per method and column marked.", long)


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
        label = f"_{i}_" if str(i).endswith("(paper)") else str(i)
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
    first_paper = True
    for i in t.cells.index:
        if str(i).endswith("(paper)") and first_paper:
            out.append(r"\midrule")
            first_paper = False
        row = []
        for c in cols:
            v = _tex_escape(t.cells.loc[i, c])
            row.append(r"\textbf{" + v + "}" if v and bool(t.best.loc[i, c]) else v)
        name = _tex_escape(i)
        if str(i).endswith("(paper)"):
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
                long = t.long.drop(columns=[c for c in ("accs", "params") if c in t.long.columns])
                _atomic_text(out_dir / f"{name}_long.csv", long.to_csv(index=False))
                paths.append(out_dir / f"{name}_long.csv")
        else:
            raise ValueError(f"unknown table format {fmt!r} (md, tex, csv)")
        _atomic_text(p, text)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- plots
def _accuracy_long(df: pd.DataFrame, published: pd.DataFrame | None, eval_model: str | None) -> pd.DataFrame:
    d, _ = _select_main(df, eval_model)
    rows = []
    for r in d.itertuples():
        label = canonical_method(r.method) + (f" [{r.variant_label}]" if r.variant_label else "")
        for a in (r.accs or [r.mean]):
            rows.append(dict(method=label, dataset=r.dataset, ipc=r.ipc, accuracy=a, source="ours"))
    if published is not None:
        for r in published.itertuples():
            if r.ipc == r.ipc:
                rows.append(dict(method=canonical_method(r.method), dataset=r.dataset, ipc=r.ipc,
                                 accuracy=r.mean, source="paper"))
    return pd.DataFrame(rows, columns=["method", "dataset", "ipc", "accuracy", "source"])


def plot_accuracy_vs_ipc(df: pd.DataFrame, published: pd.DataFrame | None = None, eval_model: str | None = None):
    """Accuracy vs IPC per method, one panel per dataset; ours solid (± std over the
    evaluated networks), the papers' numbers dashed and labelled "paper". ``None`` when
    there is nothing to draw."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = _accuracy_long(df, published, eval_model)
    if data.empty:
        return None
    datasets = sorted(data["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(7.2 * len(datasets), 4), squeeze=False)
    methods = sorted(data["method"].unique(), key=str.lower)
    colors = sns.color_palette("tab10" if len(methods) <= 10 else "tab20", len(methods))
    palette = dict(zip(methods, colors))
    for ax, ds in zip(axes[0], datasets):
        sub = data[data["dataset"] == ds]
        sns.lineplot(data=sub, x="ipc", y="accuracy", hue="method", style="source", style_order=["ours", "paper"],
                     dashes={"ours": "", "paper": (4, 2)}, markers={"ours": "o", "paper": "X"}, errorbar="sd",
                     palette=palette, ax=ax, legend=True)
        if published is not None:
            whole = published[(published["dataset"] == ds) & published["ipc"].isna()]
            for w in whole.itertuples():
                ax.axhline(w.mean, color="grey", ls=":", lw=1, label=f"{w.method} (paper): {w.mean:g}")
        ipcs = sorted(sub["ipc"].unique())
        if len(ipcs) > 1 and ipcs[0] > 0:
            ax.set_xscale("log")
        ax.set_xticks(ipcs)
        ax.set_xticklabels([_ipc_label(i) for i in ipcs])
        ax.minorticks_off()
        ax.set_title(ds)
        ax.set_xlabel("images per class (IPC)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Accuracy vs IPC (solid: ours, dashed: paper)")
    fig.tight_layout()
    return fig


def iterations_long(df: pd.DataFrame, eval_model: str | None = None) -> pd.DataFrame:
    d = df[(df["source"] == "ours") & (df["kind"] == "main")]  # baselines did not run those iterations
    em = eval_model or main_eval_model(d)
    d = d[d["eval_model"] == em] if em else d
    rows = []
    for r in d.itertuples():
        panel = f"{r.dataset} · IPC {_ipc_label(r.ipc)}"
        if r.iterations == r.iterations and r.iterations is not None:
            for a in (r.accs or [r.mean]):
                rows.append(dict(method=canonical_method(r.method), panel=panel, iterations=float(r.iterations),
                                 accuracy=a, kind="final"))
        for pt in r.curve or []:
            if isinstance(pt, dict) and "iteration" in pt and "mean" in pt:
                rows.append(dict(method=canonical_method(r.method), panel=panel, iterations=float(pt["iteration"]),
                                 accuracy=float(pt["mean"]), kind="curve"))
    data = pd.DataFrame(rows, columns=["method", "panel", "iterations", "accuracy", "kind"])
    if data.empty:
        return data
    n_it = data.groupby(["method", "panel"])["iterations"].transform("nunique")
    return data[n_it >= 2]


def plot_accuracy_vs_iterations(df: pd.DataFrame, eval_model: str | None = None):
    """Accuracy vs distillation iterations (runs that differ in ``iterations`` and/or
    ``curve`` records). ``None`` when no method has two iteration counts."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = iterations_long(df, eval_model)
    if data.empty:
        return None
    panels = sorted(data["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sns.lineplot(data=data[data["panel"] == p], x="iterations", y="accuracy", hue="method", marker="o",
                     errorbar="sd", ax=ax)
        ax.set_title(p)
        ax.set_xlabel("distillation iterations")
        ax.set_ylabel("test accuracy (%)")
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
    ax.set_xlabel("evaluation model")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title("Cross-architecture generalisation")
    fig.tight_layout()
    return fig


def _save_fig(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class Report:
    runs: pd.DataFrame
    published: pd.DataFrame | None
    table1: Table
    cross_arch: Table
    ablation: Table
    figures: dict = dataclasses.field(default_factory=dict)  # name -> Figure (or None)
    files: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    out_dir: Path | None = None

    @property
    def n_runs(self) -> int:
        return int(self.runs["path"].nunique()) if len(self.runs) else 0

    def markdown(self) -> str:
        parts = ["# ddkit report", ""]
        if self.n_runs == 0:
            parts.append(f"**No runs found** under `{self.runs.attrs.get('results_dir', 'results')}`: "
                         "showing the published numbers only. Run `ddkit sweep params/demo.yaml` (or any notebook) "
                         "first.\n")
        else:
            parts.append(f"{self.n_runs} run(s), {len(self.runs)} evaluated synthetic set(s) from "
                         f"`{self.runs.attrs.get('results_dir', '')}`.\n")
        for t in (self.table1, self.cross_arch, self.ablation):
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
) -> Report:
    """Collect, tabulate, plot and write everything into ``out_dir`` (default
    ``<results_dir>/report``): ``table1.*``, ``cross_arch.*``, ``ablation.*``, ``runs.csv``,
    ``acc_vs_ipc.png``, ``acc_vs_iterations.png``, ``cross_arch_heatmap.png``,
    ``report.md``. Empty results are fine: the paper rows are still shown."""
    formats = list(formats)
    runs = collect(results_dir)
    pub = None
    if paper:
        pub = published if isinstance(published, pd.DataFrame) else load_published(published)
    rep = Report(runs=runs, published=pub, table1=table1(runs, pub, eval_model),
                 cross_arch=cross_arch_table(runs), ablation=ablation_table(runs, eval_model))
    rep.notes += [f"skipped unreadable {s}" for s in runs.attrs.get("skipped", [])]
    out = Path(out_dir) if out_dir else default_out_dir(results_dir)
    rep.out_dir = out
    out.mkdir(parents=True, exist_ok=True)
    rep.files += write_table(rep.table1, out, "table1", formats)
    for name, t in (("cross_arch", rep.cross_arch), ("ablation", rep.ablation)):
        if t.empty:
            rep.notes.append(f"{name}: {t.note}")
            for fmt in formats:  # no stale tables from an earlier report
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
        else:
            rep.files += write_table(t, out, name, formats)
    flat = runs.drop(columns=["params", "cross_arch", "curve"]).copy()
    flat["accs"] = [json.dumps(a) for a in flat["accs"]]
    _atomic_text(out / "runs.csv", flat.to_csv(index=False))
    rep.files.append(out / "runs.csv")
    if plots:
        import matplotlib.pyplot as plt

        makers = {
            "acc_vs_ipc": lambda: plot_accuracy_vs_ipc(runs, pub, eval_model),
            "acc_vs_iterations": lambda: plot_accuracy_vs_iterations(runs, eval_model),
            "cross_arch_heatmap": lambda: plot_cross_arch(runs),
        }
        for name, make in makers.items():
            fig = make()
            rep.figures[name] = fig
            path = out / f"{name}.png"
            if fig is None:
                path.unlink(missing_ok=True)
                rep.notes.append(f"{name}.png: nothing to plot")
                continue
            rep.files.append(_save_fig(fig, path))
            if close_figures:
                plt.close(fig)
    _atomic_text(out / "report.md", rep.markdown())
    rep.files.append(out / "report.md")
    return rep
