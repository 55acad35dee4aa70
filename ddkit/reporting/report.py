"""``ddkit report``: every ``result.json``'s ``evaluations`` into the papers' tables and plots.

``build_report(results_dir, out_dir)`` does everything ``ddkit report`` does and returns a
:class:`Report`. The pieces, one room each:

* ``ddkit.reporting.report_collect``: reading ``result.json`` files (and older shapes) into one long
  DataFrame, one row per evaluated synthetic set (:func:`collect`), and the published numbers
  (:func:`load_published`);
* ``ddkit.reporting.report_tables``: pooling rows into cells and the tables (:func:`table1`, ...);
* ``ddkit.reporting.report_render``: a table as Markdown, LaTeX and CSV files (:func:`write_table`);
* ``ddkit.reporting.report_plots``: the figures.

Sections of ``report.md``: main table, protocols, cross-architecture, ablation, model selection
(last / best validation / best test epoch), paired comparisons (:func:`compare_table`, same seeds,
``ddkit.core.stats.paired_difference``), DD-Ranking robust scores (:func:`robust_scores`), budget ledger,
plots (accuracy vs IPC, accuracy vs distillation iterations from entries' ``curve``, cross-arch).

The names of those rooms that notebooks and tests use as ``ddkit.reporting.report.<name>`` are re-exported
here (:data:`__all__`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .report_collect import (PUBLISHED_CSV, PUBLISHED_PROTOCOLS, collect, legacy_evaluations, load_published,
                             notebook_defaults)
from .report_plots import iterations_long, plot_accuracy_vs_ipc, plot_accuracy_vs_iterations, plot_cross_arch
from .report_render import md_escape, to_latex, to_markdown, write_table, write_text
from .report_tables import (Table, ablation_table, compare_table, cross_arch_table, ledger_table, robust_scores,
                            robust_table, selection_table, table1)
from ..runs.results import resolve_results_dir

__all__ = [
    "collect",
    "legacy_evaluations",
    "load_published",
    "notebook_defaults",
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
    "iterations_long",
    "default_out_dir",
    "build_report",
    "Report",
    "PUBLISHED_CSV",
]


def default_out_dir(results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/report`` (the Makefile's ``make demo`` location)."""
    return resolve_results_dir(results_dir) / "report"


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
        lines += ["| " + " | ".join(md_escape(str(getattr(r, c))) for c in cols) + " |" for r in self.compare.itertuples()]
        return "\n".join(lines) + "\n\nMean paired difference (method - baseline) over shared seeds with a 95% t interval.\n"

    def reproduction_markdown(self, docs_dir: str | os.PathLike | None = None) -> str:
        """The recorded rows of ``docs/reproduction.md`` (written by ``ddkit reproduce``: the papers' table
        cells at the papers' budget), or a pointer to ``ddkit reproduce --list`` when none is recorded."""
        path = Path(docs_dir or Path(__file__).resolve().parents[2] / "docs") / "reproduction.md"
        table = [line for line in path.read_text().splitlines() if line.startswith("|")] if path.is_file() else []
        ran = [line for line in table[2:] if line.split("|")[9].strip() != "not run"]
        if not ran:
            return "_No table cell reproduced yet: `ddkit reproduce --list`, then `ddkit reproduce <cell>`._\n"
        return "\n".join(table[:2] + ran) + "\n\nAll cells, run or not: `docs/reproduction.md`.\n"

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
        parts += ["## Reproduction of the papers' table cells", "", self.reproduction_markdown()]
        for name, fig in self.figures.items():
            parts.append(f"![{name}]({name}.png)\n" if fig is not None else f"_{name}: nothing to plot_\n")
        if self.notes:
            parts += ["## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def summary(self) -> str:
        root = self.runs.attrs.get("results_dir", "results")
        lines = [f"report: {self.n_runs} run(s), {len(self.runs)} evaluated set(s) from {root}"
                 + ("" if self.n_runs else " - no runs found there, paper rows only")]
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
    ``acc_vs_iterations.png``, ``cross_arch_heatmap.png``, ``report.md``, each table in ``formats``
    (``report.md`` only with "md", ``runs.csv`` and ``compare.csv`` only with "csv"). Empty results are fine:
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
    if "csv" in formats:
        write_text(out / "compare.csv", rep.compare.drop(columns=["diffs"]).to_csv(index=False))
        flat = runs.drop(columns=["params", "curve", "protocol", "selection", "ledger"]).copy()
        flat["accs"] = [json.dumps(a) for a in flat["accs"]]
        write_text(out / "runs.csv", flat.to_csv(index=False))
        rep.files += [out / "compare.csv", out / "runs.csv"]
    if plots:
        rep.files += _write_plots(rep, out, eval_model, close_figures)
    if "md" in formats:
        write_text(out / "report.md", rep.markdown())
        rep.files.append(out / "report.md")
    return rep


def _write_plots(rep: Report, out: Path, eval_model: str | None, close_figures: bool) -> list:
    import matplotlib.pyplot as plt

    from ..runs.results import save_figure

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
