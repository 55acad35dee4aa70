"""The report's figures from :func:`ddkit.reporting.report_collect.collect`'s rows: accuracy vs IPC per
protocol (:func:`plot_accuracy_vs_ipc`), accuracy vs distillation iterations from the entries'
``curve`` (:func:`plot_accuracy_vs_iterations`) and the cross-architecture heat map
(:func:`plot_cross_arch`). Each returns a matplotlib figure, or ``None`` when there is nothing to draw."""
from __future__ import annotations

import pandas as pd

from .report_collect import canonical_method, protocol_title
from .report_tables import cross_arch_table, ipc_label, main_eval_model

__all__ = ["plot_accuracy_vs_ipc", "panel_grid", "plot_accuracy_vs_iterations", "plot_cross_arch", "iterations_long"]


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


#: at most this many panels side by side; panel size in inches (the figure stays within about 3:1)
MAX_COLUMNS = 3
PANEL_SIZE = (4.2, 3.4)
LEGEND_HEIGHT = 0.5  # inches below the panels for the shared legend


def panel_grid(n: int) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels: at most :data:`MAX_COLUMNS` side by side."""
    cols = max(1, min(MAX_COLUMNS, n))
    return -(-n // cols), cols


def plot_accuracy_vs_ipc(df: pd.DataFrame, published: pd.DataFrame | None = None, eval_model: str | None = None):
    """Accuracy vs IPC, one panel per (dataset, protocol): ours solid (± std over the evaluated
    networks), the papers' numbers dashed in the panel of their own protocol, so every panel
    compares like with like. Only panels holding a run of ours are drawn (all the papers' panels
    when there is no run yet), in a grid at most :data:`MAX_COLUMNS` wide with one legend below,
    so the figure reads at notebook width. ``None`` when there is nothing to draw."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = _accuracy_long(df, published, eval_model)
    ours = data[data["source"] == "ours"]
    if not ours.empty:
        data = data[data["panel"].isin(set(ours["panel"]))]
    if data.empty:
        return None
    panels = sorted(data["panel"].unique())
    rows, cols = panel_grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + LEGEND_HEIGHT),
                             squeeze=False)
    series = sorted(data["series"].unique(), key=str.lower)
    palette = dict(zip(series, sns.color_palette("tab10" if len(series) <= 10 else "tab20", len(series))))
    for ax, panel in zip(axes.flat, panels):
        sub = data[data["panel"] == panel]
        sns.lineplot(data=sub, x="ipc", y="accuracy", hue="series", style="source", style_order=["ours", "paper"],
                     dashes={"ours": "", "paper": (4, 2)}, markers={"ours": "o", "paper": "X"}, errorbar="sd",
                     palette=palette, ax=ax, legend=True)
        ipcs = sorted(sub["ipc"].unique())
        if len(ipcs) > 1 and ipcs[0] > 0:
            ax.set_xscale("log")
        ax.set_xticks(ipcs)
        ax.set_xticklabels([ipc_label(i) for i in ipcs])
        ax.minorticks_off()
        ax.set(xlabel="images per class (IPC)", ylabel="test accuracy (%)")
        ax.set_title(panel, fontsize=9)
    _shared_legend(fig, axes)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    fig.suptitle("Accuracy vs IPC (solid: ours, dashed: paper, same protocol)", fontsize=10)
    fig.tight_layout(rect=(0, LEGEND_HEIGHT / fig.get_figheight(), 1, 1))
    return fig


def _shared_legend(fig, axes) -> None:
    """One legend below the panels, gathering every panel's entries (each panel's own removed)."""
    entries: dict = {}
    for ax in axes.flat:
        legend = ax.get_legend()
        if legend is None:
            continue
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in ("series", "source"):
                entries.setdefault(label, handle)
        legend.remove()
    fig.legend(entries.values(), entries.keys(), loc="lower center", ncol=min(6, max(1, len(entries))),
               fontsize=7, frameon=False)


def iterations_long(df: pd.DataFrame, eval_model: str | None = None) -> pd.DataFrame:
    """Tidy (series, panel, iterations, accuracy) from every entry's ``curve``."""
    em = eval_model or main_eval_model(df)
    d = df[(df["eval_model"] == em) & df["curve"].map(lambda c: isinstance(c, list) and bool(c))] if len(df) else df
    rows = [dict(series=f"{r.row} · {r.protocol_label}", panel=f"{r.dataset} · IPC {ipc_label(r.ipc)}",
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

