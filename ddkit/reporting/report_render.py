"""A :class:`ddkit.reporting.report_tables.Table` as text: Markdown (:func:`to_markdown`), booktabs LaTeX
(:func:`to_latex`), a CSV layout (:func:`to_csv_frame`), and the files of one table
(:func:`write_table`: ``<name>.md``, ``.tex``, ``.csv`` and the tidy ``<name>_long.csv``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..core.utils import atomic_write_bytes
from .report_tables import Table

__all__ = ["to_markdown", "to_latex", "to_csv_frame", "write_table", "write_text", "md_escape"]


def _col_label(c) -> str:
    if isinstance(c, tuple):
        ds, ipc = c
        return f"{ds} · IPC {ipc}"
    return str(c)


def md_escape(s: str) -> str:
    """``s`` with ``|`` escaped for a Markdown table cell."""
    return str(s).replace("|", "\\|")


def to_markdown(t: Table) -> str:
    """A GitHub Markdown table; best cells in bold."""
    if t.empty:
        return f"_{t.note or 'empty table'}_\n"
    head = [t.cells.index.name or ""] + [_col_label(c) for c in t.cells.columns]
    lines = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    for i in t.cells.index:
        cells = []
        for c in t.cells.columns:
            v = t.cells.loc[i, c]
            cells.append(f"**{v}**" if v and bool(t.best.loc[i, c]) else v)
        label = f"_{i}_" if " (paper)" in str(i) else str(i)
        lines.append("| " + " | ".join(md_escape(x) for x in [label] + cells) + " |")
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


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically (``ddkit.core.utils.atomic_write_bytes``)."""
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
                write_text(out_dir / f"{name}_long.csv", long.to_csv(index=False))
                paths.append(out_dir / f"{name}_long.csv")
        else:
            raise ValueError(f"unknown table format {fmt!r} (md, tex, csv)")
        write_text(p, text)
        paths.append(p)
    return paths

