"""ddkit.report: synthetic result.json files -> tables (md/tex/csv, best marked) and plots."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ddkit import report as rp  # noqa: E402


def put(root: Path, nb: str, run: str, method: str, dataset: str, ipc: int, accs, seed=0, model="ConvNet",
        eval_model="ConvNet", iterations=100, **extra) -> Path:
    params = dict(dataset=dataset, ipc=ipc, model=model, eval_model=eval_model, iterations=iterations, seed=seed,
                  run_name=run, results_dir=str(root), device="auto", **extra.pop("params", {}))
    mean = sum(accs) / len(accs)
    std = (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5
    rec = dict(method=method, dataset=dataset, ipc=ipc, model=model, params=params, accs=list(accs), mean=mean,
               std=std, seconds=1.0, ddkit_version="0.1.0", git_commit="abc", device="cpu",
               created="2026-01-01T00:00:00+00:00", **extra)
    d = root / nb / run
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps(rec))
    return d


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    # Table 1: two methods x two IPCs x two seeds on mnist5k; DM wins at IPC 10, random at IPC 1
    for seed in (0, 1):
        put(root, "quickstart", f"dm_ipc1_s{seed}", "DM", "mnist5k", 1, [60 + seed, 62 + seed], seed=seed)
        put(root, "quickstart", f"dm_ipc10_s{seed}", "DM", "mnist5k", 10, [90 + seed, 91 + seed], seed=seed,
            extra_results=[dict(method="random", accs=[80.0 + seed, 81.0])])
        put(root, "quickstart", f"rnd_ipc1_s{seed}", "random", "mnist5k", 1, [70.0, 71.0], seed=seed)
    # ablation: IID with / without the covariance term, plus its DM baseline
    put(root, "iid", "full", "DM+IID", "mnist5k", 10, [93.0, 94.0], params=dict(use_cm=True, lambda_cc=0.05),
        baseline_method="DM", baseline_accs=[90.5, 91.5], baseline_mean=91.0, baseline_std=0.5)
    put(root, "iid", "no_cm", "DM+IID", "mnist5k", 10, [92.0, 92.0], params=dict(use_cm=False, lambda_cc=0.05),
        no_cc_accs=[91.0], no_cc_mean=91.0, no_cc_std=0.0, pool_accs=[50.0])  # a variant triple; pool_accs is not
    # accuracy vs iterations: DSDM at 3 iteration counts (+ a curve)
    for it, acc in ((10, 50.0), (20, 60.0), (40, 65.0)):
        put(root, "dsdm", f"it{it}", "DSDM", "mnist5k", 10, [acc, acc + 1], iterations=it,
            curve=[dict(iteration=5, mean=40.0)] if it == 40 else None,
            **(dict(variants={"w/o h": {"accs": [60.0, 61.0]}},
                    baselines={"random real": {"mean": 30.0, "std": 1.0, "accs": [29.0, 31.0]}}) if it == 40 else {}))
    # cross-architecture: one run with a cross_arch mapping, one evaluated on AlexNet directly
    put(root, "gan_skd", "xarch", "GAN+SKD", "mnist5k", 10, [95.0, 95.0],
        cross_arch={"ResNet18": {"mean": 90.0, "std": 1.0, "accs": [89.0, 91.0]}, "VGG11": {"mean": 88.0}})
    put(root, "gan_skd", "alex", "GAN+SKD", "mnist5k", 10, [85.0, 86.0], eval_model="AlexNet")
    # a generator redeployed at IPC 1 and 10 with its baselines (the GAN notebooks' "table")
    put(root, "gan_global_local", "gen", "GAN global/local", "mnist5k", 10, [96.0, 96.0],
        table={"Global/local (ours)": {"1": {"mean": 80.0, "std": 0.0, "accs": [80.0]},
                                       "10": {"mean": 96.0, "std": 0.0, "accs": [96.0, 96.0]}},
               "DiM": {"1": {"mean": 79.0, "std": 0.0, "accs": [79.0]}, "10": {"mean": 94.0, "accs": [94.0]}}})
    # junk that must be skipped, not crash
    (root / "junk" / "bad").mkdir(parents=True)
    (root / "junk" / "bad" / "result.json").write_text("{not json")
    (root / "pools").mkdir()
    return root


def test_collect(results):
    with pytest.warns(UserWarning, match="skipping"):
        df = rp.collect(results)
    assert len(df.attrs["skipped"]) == 1
    assert set(df["method"]) == {"DM", "Random", "DM+IID", "DSDM", "GAN + SKD", "GAN global/local", "DiM"}
    assert {"random", "random real", "GAN+SKD"} <= set(df["method_raw"])  # canonical spellings above
    assert (df["kind"] == "baseline").sum() == 4 and (df["kind"] == "extra").sum() == 2
    assert (df["kind"] == "variant").sum() == 2
    dm10 = df[(df["method"] == "DM") & (df["ipc"] == 10) & (df["notebook"] == "quickstart")]
    assert sorted(dm10["mean"]) == [90.5, 91.5]


def test_table1_pools_seeds_marks_best_and_adds_paper_rows(results):
    with pytest.warns(UserWarning):
        df = rp.collect(results)
    t = rp.table1(df, rp.load_published())
    cells, best = t.cells, t.best
    # DM at IPC 10 pools quickstart (4 nets: 90, 91, 91, 92) and the IID baseline (90.5, 91.5)
    assert cells.loc["DM", ("mnist5k", "10")] == "91.0 ± 0.6"
    assert cells.loc["Random", ("mnist5k", "1")] == "70.5 ± 0.5"
    assert bool(best.loc["GAN global/local", ("mnist5k", "1")]) and best[("mnist5k", "1")].sum() == 1
    # quickstart "random" (80, 81, 81, 81) and DSDM's "random real" baseline (29, 31) share a row
    assert cells.loc["Random", ("mnist5k", "10")] == "63.8 ± 23.9"
    assert cells.loc["DSDM [w/o h]", ("mnist5k", "10")] == "60.5 ± 0.5"
    # the IID ablation variants appear as labelled rows; the best of IPC 10 is GAN+SKD (ConvNet eval)
    assert "DM+IID [use_cm=True]" in cells.index and "DM+IID [use_cm=False]" in cells.index
    assert bool(best.loc["GAN global/local", ("mnist5k", "10")])
    assert best[("mnist5k", "10")].sum() == 1
    assert cells.loc["GAN global/local", ("mnist5k", "1")] == "80.0 ± 0.0"  # from its "table"
    assert cells.loc["DiM", ("mnist5k", "1")] == "79.0 ± 0.0"
    # DSDM: only the longest run (40 iterations) enters Table 1
    assert cells.loc["DSDM", ("mnist5k", "10")] == "65.5 ± 0.5"
    # paper rows: labelled, never marked best, whole dataset spread over the IPC columns
    assert cells.loc["DM (paper)", ("fashion_mnist", "10")] == "83.5"
    assert cells.loc["Whole dataset (paper)", ("fashion_mnist", "50")] == "93.5"
    assert not best.loc[[i for i in cells.index if i.endswith("(paper)")]].any().any()
    assert list(cells.index).index("DM (paper)") > list(cells.index).index("Random")
    assert cells.loc["Random (paper)", ("fashion_mnist", "1")] == "51.4"

    md = rp.to_markdown(t)
    assert "**96.0 ± 0.0**" in md
    assert "_DM (paper)_" in md and "mnist5k · IPC 10" in md
    tex = rp.to_latex(t)
    assert r"\textbf{96.0 $\pm$ 0.0}" in tex and r"\multicolumn{" in tex and r"\textit{DM (paper)}" in tex
    assert r"\toprule" in tex and "fashion\\_mnist" in tex
    csv = rp.to_csv_frame(t)
    assert csv.loc["GAN global/local", "mnist5k · IPC 10"] == "96.0 ± 0.0 *"


def test_cross_arch_and_ablation_tables(results):
    with pytest.warns(UserWarning):
        df = rp.collect(results)
    ca = rp.cross_arch_table(df)
    row = "GAN + SKD (ConvNet) · mnist5k · IPC 10"
    assert list(ca.cells.index) == [row], "sets evaluated on one architecture only are left out"
    assert ca.cells.loc[row, "ConvNet"] == "95.0 ± 0.0"
    assert ca.cells.loc[row, "ResNet18"] == "90.0 ± 1.0"
    assert ca.cells.loc[row, "VGG11"] == "88.0"
    assert ca.cells.loc[row, "AlexNet"] == "85.5 ± 0.5"
    ab = rp.ablation_table(df)
    labels = list(ab.cells.index)
    assert "iid: DM+IID [use_cm=True]" in labels and "iid: DM+IID [use_cm=False]" in labels
    assert bool(ab.best.loc["iid: DM+IID [use_cm=True]", ("mnist5k", "10")])
    assert "dsdm: DSDM [w/o h]" in labels and "dsdm: DSDM [default]" in labels
    assert ab.cells.loc["iid: DM+IID [no_cc]", ("mnist5k", "10")] == "91.0 ± 0.0"
    assert not any(lbl.startswith("quickstart") for lbl in labels)


def test_build_report_writes_tables_and_plots(results, tmp_path):
    out = tmp_path / "report"
    with pytest.warns(UserWarning):
        rep = rp.build_report(results, out)
    for name in ("table1", "cross_arch", "ablation"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for png in ("acc_vs_ipc", "acc_vs_iterations", "cross_arch_heatmap"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert "**96.0 ± 0.0**" in (out / "table1.md").read_text()
    back = pd.read_csv(out / "table1.csv", header=0, index_col=0)
    assert back.loc["GAN global/local", "mnist5k · IPC 10"].endswith("*")
    long = pd.read_csv(out / "table1_long.csv")
    assert {"ours", "paper"} == set(long["source"])
    assert (out / "runs.csv").is_file() and "ddkit report" in (out / "report.md").read_text()
    # the plots carry the data: the paper series is drawn dashed beside ours
    fig = rp.plot_accuracy_vs_ipc(rep.runs, rep.published)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "paper" in labels and "ours" in labels
    fig_it = rp.plot_accuracy_vs_iterations(rep.runs)
    xs = sorted({x for line in fig_it.axes[0].get_lines() for x in line.get_xdata()})
    assert xs == [5.0, 10.0, 20.0, 40.0]


def test_empty_results_show_paper_rows(tmp_path, capsys):
    from ddkit.cli import main

    out = tmp_path / "rep"
    assert main(["report", "--results-dir", str(tmp_path / "nothing"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no runs found" in text
    md = (out / "table1.md").read_text()
    assert "DSDM (paper)" in md and "93.5" in md
    assert (out / "acc_vs_ipc.png").is_file()
    assert not (out / "cross_arch.md").exists() and not (out / "acc_vs_iterations.png").exists()
    assert "No runs found" in (out / "report.md").read_text()
    rep = rp.build_report(tmp_path / "nothing", out, paper=False, plots=False)
    assert rep.table1.empty and rep.n_runs == 0


def test_published_csv_is_well_formed():
    pub = rp.load_published()
    assert list(pub.columns[:5]) == ["method", "dataset", "ipc", "mean", "source"]
    assert pub["mean"].between(0, 100).all() and pub["source"].str.len().gt(0).all()
    row = pub[(pub["method"] == "GAN + SKD") & (pub["ipc"] == 10)]
    assert float(row["mean"].iloc[0]) == 89.0

