"""The report's tables, built from :func:`ddkit.reporting.report_collect.collect`'s long DataFrame.

A :class:`Table` holds formatted ``cells``, a ``best`` mask, the ``values`` (means) and its tidy
``long`` form; ``ddkit.reporting.report_render`` writes it as Markdown, LaTeX or CSV. How a cell pools:

* a cell is one (row, protocol, dataset, IPC, evaluation model) (:data:`CELL_KEYS`, :func:`pooled`);
  **seeds** pool as the papers do: mean ± std over every evaluated network of every seed
  (:func:`pool`); the cell shows ``(seeds/networks)``.
* the main table (:func:`table1`) uses one evaluation model (ConvNet when present,
  :func:`main_eval_model`); other evaluation models go to the cross-architecture table.
* published numbers carry their protocol and selection; rows are grouped in blocks of one
  (protocol, selection) and the best of our rows is marked per block, so a paper row is only
  compared with our rows evaluated the same way.

Tables: main (:func:`table1`), cross-architecture, ablation, model selection (last / best
validation / best test epoch), paired comparisons (:func:`compare_table`, same seeds,
``ddkit.core.stats.paired_difference``), DD-Ranking robust scores (:func:`robust_scores`), budget ledger.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pandas as pd

from .report_collect import canonical_method, protocol_key, protocol_title, to_float

__all__ = [
    "Table",
    "table1",
    "cross_arch_table",
    "ablation_table",
    "selection_table",
    "compare_table",
    "robust_scores",
    "robust_table",
    "ledger_table",
    "main_eval_model",
    "pool",
    "pooled",
    "per_seed_means",
    "ipc_label",
    "CELL_KEYS",
]


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


def ipc_label(ipc: float) -> str:
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
    long["col"] = [(ds, ipc_label(i)) for ds, i in zip(long["dataset"], long["ipc"])]
    long["block"] = [_block(p, s) for p, s in zip(long["protocol_name"], long["selection_name"])]
    order = long.sort_values(["block", "source", "label"], key=lambda c: c if c.name != "label" else c.str.lower())
    rows = list(dict.fromkeys(order["label"]))
    cells, values = _grid(long, rows, _sorted_columns(long["col"]))
    best = pd.DataFrame(False, index=rows, columns=cells.columns)
    for _, g in ours.groupby([ours["protocol_name"], ours["selection_name"], ours["dataset"], ours["ipc"]], dropna=False):
        col = (g["dataset"].iloc[0], ipc_label(g["ipc"].iloc[0]))
        best.loc[g.loc[np.isclose(g["mean"], g["mean"].max()), "label"].tolist(), col] = True
    cells.index.name = "method · protocol"
    note = (f"Test accuracy (%) of {em or 'ConvNet'} trained on the synthetic set; mean ± std over every evaluated "
            "network of every seed in a cell, (seeds/networks) after it. A row is one method, variant, "
            "configuration and protocol: cells never pool different settings. Rows come in blocks of one protocol "
            "and selection; the best of our rows is marked per block and column, so a paper row "
            "(ddkit/reporting/published.csv, full-size datasets) is compared with ours evaluated the same way only.")
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
    cells_long["label"] = [f"{r} ({m}) · {d} · IPC {ipc_label(i)} · {p}" for r, m, d, i, p in zip(
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
    long["col"] = [(ds, ipc_label(i)) for ds, i in zip(long["dataset"], long["ipc"])]
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
        label = f"{first['row']} · {first['dataset']} · IPC {ipc_label(first['ipc'])} · {first['eval_model']} · " \
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
    :func:`ddkit.core.stats.paired_difference` gives the mean and its t interval over seeds. One line per
    pair, the better row first."""
    from ..core.stats import format_paired, paired_difference

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
            lines.append({"dataset": ds, "ipc": ipc_label(ipc), "protocol": label, "method": a, "baseline": b,
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
            label = f"{r.row} · {r.dataset} · IPC {ipc_label(r.ipc)} · {r.protocol_label}"
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
    """Per row of Table 1: the ``ledger`` its entries recorded (``ddkit.runs.results.budget_ledger``):
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
        label = f"{row} · {ds} · IPC {ipc_label(ipc)} · {pl}"
        if not ledgers:
            rows.append({"label": label, "col": "note", "mean": math.nan, "text": "not recorded"})
            continue
        ledger = json.loads(ledgers[0])
        note = "" if len(set(ledgers)) == 1 else "differs between runs: first shown"
        for k, col in cols.items():
            v = ledger.get(k)
            text = "" if v is None else f"{v / 1024:.1f}" if k.endswith("bytes") else f"{v:g}"
            rows.append({"label": label, "col": col, "mean": to_float(v), "text": text})
        rows.append({"label": label, "col": "note", "mean": math.nan, "text": note})
    long = pd.DataFrame(rows)
    cells, values = _grid(long, list(dict.fromkeys(long["label"])), [*cols.values(), "note"])
    cells.index.name = "row · dataset · IPC · protocol"
    return Table(cells, pd.DataFrame(False, index=cells.index, columns=cells.columns), values, "Budget ledger",
                 "What a row stores and what its evaluation network trains on: a factor-2 set (2x2 mosaics) shows "
                 "4 images per stored image, a generator as many as its protocol draws per epoch.", long)
