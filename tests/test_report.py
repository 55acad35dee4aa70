"""ddkit.reporting.report: result.json evaluations -> tables (md/tex/csv), comparisons, robust scores, plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ddkit.reporting import report as rp  # noqa: E402
from ddkit.runs.results import evaluation_entry, write_result  # noqa: E402

STD = {"name": "standard", "epochs": 300, "num_models": 2, "dsa": "color_crop_cutout_scale_rotate"}


def put(root: Path, nb: str, run: str, method: str, evaluations: list, *, ipc=10, seed=0, run_kind="user",
        dataset="mnist5k", **params) -> Path:
    """A run folder written by the real writer; ``evaluations``: (method, accs, extra kw) triples."""
    d = root / nb / run
    d.mkdir(parents=True, exist_ok=True)
    P = dict(dataset=dataset, ipc=ipc, model="ConvNet", eval_model="ConvNet", seed=seed, run_name=run,
             results_dir=str(root), **params)
    ev = [evaluation_entry(m, accs, ipc=kw.pop("ipc", ipc), eval_model=kw.pop("eval_model", "ConvNet"),
                           protocol=kw.pop("protocol", STD), **kw) for m, accs, kw in evaluations]
    write_result(d, method=method, dataset=dataset, ipc=ipc, model="ConvNet", params=P, accs=ev[0]["accs"],
                 seconds=1.0, device="cpu", evaluations=ev, run_kind=run_kind)
    return d


def legacy(root: Path, nb: str, run: str, **rec) -> None:
    """A result.json in one of the shapes written before the evaluations list."""
    params = dict(dataset="mnist5k", ipc=rec.get("ipc", 10), seed=0, eval_model="ConvNet", eval_epochs=20, num_eval=2,
                  results_dir="")  # a user's run (a pytest folder here would mark it a test run)
    base = dict(dataset="mnist5k", ipc=10, model="ConvNet", params=params, seconds=1.0, ddkit_version="0.1.0",
                git_commit="abc", device="cpu", created="2026-01-01T00:00:00+00:00")
    (root / nb / run).mkdir(parents=True)
    (root / nb / run / "result.json").write_text(json.dumps({**base, **rec}))


def test_one_row_per_configuration_and_protocol_seeds_pooled(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1):  # one configuration, two seeds: one cell
        put(root, "quickstart", f"dm_s{seed}", "DM", [("DM", [90 + seed, 91 + seed], {})], seed=seed, iterations=400)
    put(root, "quickstart", "dm_short", "DM", [("DM", [70.0, 72.0], {})], iterations=20)  # another configuration
    long_protocol = {**STD, "epochs": 1000}
    put(root, "quickstart", "dm_long_eval", "DM", [("DM", [95.0, 95.0], {"protocol": long_protocol})], iterations=400)
    put(root, "gan", "g", "DiM", [("DiM", [80.0], {"protocol": {"name": "dim", "selection": "best_test"}}),
                                  ("DiM", [75.0], {"protocol": {"name": "fixed"}})])
    df = rp.collect(root)
    t = rp.table1(df).cells
    col = ("mnist5k", "10")
    std300, std1000 = "standard (epochs=300)", "standard (epochs=1000)"
    # 4 networks of 2 seeds: mean 91, population std sqrt(0.5)
    assert t.loc[f"DM [iterations=400] · {std300}", col] == "91.0 ± 0.7 (2/4)"
    assert t.loc[f"DM [iterations=20] · {std300}", col] == "71.0 ± 1.0 (1/2)"
    assert t.loc[f"DM · {std1000}", col] == "95.0 ± 0.0 (1/2)"  # the only run under that protocol: no label
    assert t.loc["DiM · dim, best_test", col] == "80.0 ± 0.0 (1/1)"
    assert t.loc["DiM · fixed", col] == "75.0 ± 0.0 (1/1)"
    assert len(t) == 5, "no row dropped, none merged"


def test_test_and_tiny_runs_stay_out_unless_asked(tmp_path):
    root = tmp_path / "results"
    put(root, "quickstart", "user", "DM", [("DM", [90.0], {})])
    put(root, "quickstart", "ci", "DM", [("DM", [7.8], {})], run_kind="test")
    put(root, "quickstart", "tiny", "EAD", [("EAD", [42.9], {})], run_kind="tiny")
    legacy(root, "gan", "old_pytest", method="GAN global/local", accs=[5.8], mean=5.8, std=0.0,
           params=dict(dataset="mnist5k", ipc=10, seed=0, results_dir="/tmp/pytest-of-me/pytest-3/x/results"))
    defaults = rp.notebook_defaults("quickstart")  # nbval ran the notebook at its defaults into results/
    assert {"ipc", "iterations", "eval_epochs", "val_per_class"} <= set(defaults) and defaults["results_dir"] == ""
    legacy(root, "quickstart", "mnist5k_ipc10_s0", method="DM", accs=[30.0], mean=30.0, std=0.0,
           params={**defaults, "results_dir": "", "device": "cpu"})
    df = rp.collect(root)
    assert list(df["mean"]) == [90.0] and df.attrs["excluded"] == 4
    assert set(rp.collect(root, include_test=True)["method"]) == {"DM", "EAD", "GAN global/local"}
    assert sorted(rp.collect(root, include_test=True)["run_kind"]) == ["test", "test", "tiny", "tiny", "user"]
    rep = rp.build_report(root, tmp_path / "rep", plots=False)
    assert "7.8" not in (tmp_path / "rep" / "table1.md").read_text()
    assert "4 test/tiny run(s) left out" in (tmp_path / "rep" / "report.md").read_text()
    assert rep.n_runs == 1


def test_legacy_shapes_are_converted(tmp_path):
    root = tmp_path / "results"
    legacy(root, "iid", "full", method="DM+IID", accs=[93.0, 94.0], mean=93.5, std=0.5,
           baseline_method="DM", baseline_accs=[90.5, 91.5], baseline_mean=91.0, baseline_std=0.5,
           no_cc_accs=[91.0], no_cc_mean=91.0, no_cc_std=0.0, pool_accs=[50.0],
           extra_results=[{"method": "random", "accs": [80.0, 81.0]}],
           cross_arch={"ResNet18": {"mean": 90.0, "std": 1.0, "accs": [89.0, 91.0]}, "VGG11": {"mean": 88.0}},
           curve=[{"iteration": 5, "mean": 40.0}])
    legacy(root, "gan_global_local", "gen", method="GAN global/local", accs=[96.0], mean=96.0, std=0.0,
           table={"Global/local (ours)": {"1": {"accs": [80.0]}, "10": {"accs": [96.0]}},
                  "DiM": {"1": {"mean": 79.0, "std": 0.0}}},
           variants={"w/o local": {"accs": [95.0]}}, baselines={"random real": {"accs": [70.0]}})
    df = rp.collect(root)
    got = sorted((r.method, r.method_raw, r.variant, r.eval_model, r.ipc, r.mean) for r in df.itertuples())
    assert got == sorted([  # every row, one per legacy shape (pool_accs without _mean/_std is no variant)
        ("DM+IID", "DM+IID", "", "ConvNet", 10, 93.5),                          # headline
        ("DM", "DM", "", "ConvNet", 10, 91.0),                                  # baseline_method + baseline_*
        ("DM+IID", "DM+IID", "no_cc", "ConvNet", 10, 91.0),                     # <label>_accs/_mean/_std
        ("Random", "random", "", "ConvNet", 10, 80.5),                          # extra_results
        ("DM+IID", "DM+IID", "", "ResNet18", 10, 90.0),                         # cross_arch
        ("DM+IID", "DM+IID", "", "VGG11", 10, 88.0),
        ("GAN global/local", "GAN global/local", "", "ConvNet", 10, 96.0),      # headline (= table's ours at 10)
        ("GAN global/local", "GAN global/local", "", "ConvNet", 1, 80.0),       # table, ours at IPC 1
        ("DiM", "DiM", "", "ConvNet", 1, 79.0),                                 # table, another method
        ("GAN global/local", "GAN global/local", "w/o local", "ConvNet", 10, 95.0),  # variants
        ("Random", "random real", "", "ConvNet", 10, 70.0),                     # baselines mapping
    ])
    assert json.loads(df["protocol_key"].iloc[0]) == {"name": "standard", "epochs": 20, "num_models": 2,
                                                      "selection": "last", "labels": "hard"}
    head = df[(df["method"] == "DM+IID") & (df["variant"] == "") & (df["eval_model"] == "ConvNet")].iloc[0]
    assert head["curve"] == [{"iteration": 5, "accs": [40.0]}]


def test_cross_arch_table_and_iterations_plot_from_entries(tmp_path):
    root = tmp_path / "results"
    curve = [{"iteration": 10, "accs": [50.0, 52.0]}, {"iteration": 20, "accs": [60.0, 62.0]}]
    put(root, "dsdm", "r", "DSDM", [("DSDM", [95.0, 95.0], {"curve": curve}),
                                    ("DSDM", [89.0, 91.0], {"eval_model": "ResNet18"}),
                                    ("DSDM", [85.0, 86.0], {"eval_model": "AlexNet"}),
                                    ("Random", [60.0, 61.0], {})])
    df = rp.collect(root)
    ca = rp.cross_arch_table(df)
    row = "DSDM (ConvNet) · mnist5k · IPC 10 · standard"
    assert list(ca.cells.index) == [row], "sets evaluated on one architecture only are left out"
    assert ca.cells.loc[row, "ResNet18"] == "90.0 ± 1.0 (1/2)" and ca.cells.loc[row, "AlexNet"] == "85.5 ± 0.5 (1/2)"
    assert "ResNet18" not in " ".join(rp.table1(df).cells.index), "the main table holds one evaluation model"
    fig = rp.plot_accuracy_vs_iterations(df)
    xs = sorted({x for line in fig.axes[0].get_lines() for x in line.get_xdata()})
    assert xs == [10.0, 20.0]
    data = rp.iterations_long(df)
    assert data.groupby("iterations")["accuracy"].mean().to_dict() == {10.0: 51.0, 20.0: 61.0}


def test_paper_rows_carry_their_protocol_and_best_is_marked_per_block(tmp_path):
    root = tmp_path / "results"
    put(root, "quickstart", "q", "DM", [("DM", [80.0], {}), ("Random", [70.0], {})], ipc=1, dataset="fashion_mnist")
    put(root, "gan", "g", "GAN global/local", [("GAN global/local", [85.0], {"protocol": {"name": "dim",
                                                                                          "selection": "best_test"}})],
        ipc=1, dataset="fashion_mnist")
    t = rp.table1(rp.collect(root), rp.load_published())
    col = ("fashion_mnist", "1")
    rows = list(t.cells.index)
    assert t.cells.loc["DM (paper) · standard", col] == "70.7"
    assert t.cells.loc["GAN global/local (paper) · dim, best_test", col] == "85.5"
    assert t.cells.loc["EAD (paper) · unstated", col] == "86.7"
    # a block per protocol: our standard rows, then the papers' standard rows, then the dim block
    assert rows.index("Random · standard") < rows.index("DM (paper) · standard") \
        < rows.index("GAN global/local · dim, best_test") < rows.index("GAN global/local (paper) · dim, best_test")
    # the best is marked per block: DM among the standard rows, ours GAN among the dim rows
    assert bool(t.best.loc["DM · standard", col]) and not bool(t.best.loc["Random · standard", col])
    assert bool(t.best.loc["GAN global/local · dim, best_test", col])
    assert not t.best.loc[[r for r in rows if "(paper)" in r]].any().any()
    md = rp.to_markdown(t)
    assert "_DM (paper) · standard_" in md and "**85.0 ± 0.0 (1/1)**" in md
    tex = rp.to_latex(t)
    assert r"\textit{DM (paper) $\cdot$ standard}" in tex and r"\toprule" in tex


def test_compare_gives_paired_differences_over_shared_seeds(tmp_path):
    root = tmp_path / "results"
    for seed, (dm, rnd) in enumerate([(82.0, 80.0), (84.0, 81.0), (86.0, 82.0)]):  # diffs 2, 3, 4
        put(root, "quickstart", f"s{seed}", "DM", [("DM", [dm, dm], {}), ("Random", [rnd], {})], seed=seed)
    put(root, "quickstart", "lonely", "Herding", [("Herding", [75.0], {})], seed=7)  # no shared seed
    cmp = rp.compare_table(rp.collect(root))
    assert len(cmp) == 1
    r = cmp.iloc[0]
    half = 4.302652729911275 * 1.0 / 3 ** 0.5  # t_{0.975, 2} * sd / sqrt(n), sd of (2, 3, 4) = 1
    assert (r["method"], r["baseline"], r["n"]) == ("DM", "Random", 3) and r["mean"] == pytest.approx(3.0)
    assert r["lo"] == pytest.approx(3.0 - half) and r["hi"] == pytest.approx(3.0 + half)
    rep = rp.build_report(root, tmp_path / "rep", plots=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## compare" in md and "+3.00 [" in md and rep.compare.iloc[0]["seeds"] == "0, 1, 2"


def test_robust_scores_by_hand():
    e, inv = math.e, math.exp(-1)
    s = rp.robust_scores(80.0, 60.0, acc_real_hard=95.0, acc_syn_hard=70.0, acc_syn_naug=70.0, acc_rdm_naug=55.0)
    assert s["IOR"] == pytest.approx(20.0) and s["HLR"] == pytest.approx(25.0)
    # a = 0.5 * 0.20 - 0.5 * 0.25 = -0.025; b = 0.5 * 0.20 + 0.5 * 0.15 = 0.175 (fractions, not percent)
    assert s["LRS"] == pytest.approx((math.exp(-0.025) - inv) / (e - inv) * 100) == pytest.approx(25.8437, abs=1e-3)
    assert s["ARS"] == pytest.approx((math.exp(0.175) - inv) / (e - inv) * 100) == pytest.approx(35.0309, abs=1e-3)
    assert rp.robust_scores(100.0, 0.0, acc_real_hard=100.0)["LRS"] == pytest.approx(100 * (math.exp(0.5) - inv) / (e - inv))
    only = rp.robust_scores(80.0, 60.0)
    assert only["IOR"] == pytest.approx(20.0) and math.isnan(only["LRS"]) and math.isnan(only["ARS"])
    with pytest.raises(ValueError, match="w=1.5"):
        rp.robust_scores(80.0, 60.0, w=1.5)


def test_robust_table_pairs_the_right_evaluations(tmp_path):
    root = tmp_path / "results"
    naug = {**STD, "dsa": "none"}
    put(root, "quickstart", "q", "DM", [("DM", [80.0], {}), ("Random", [60.0], {}),
                                        ("DM", [70.0], {"protocol": naug}), ("Random", [55.0], {"protocol": naug})])
    put(root, "whole", "w", "Whole dataset", [("Whole dataset", [95.0], {})])
    t = rp.robust_table(rp.collect(root))
    row = [i for i in t.cells.index if i.startswith("DM · mnist5k · IPC 10 · standard (") and "dsa=color" in i][0]
    v = t.values.loc[row]
    want = rp.robust_scores(80.0, 60.0, acc_real_hard=95.0, acc_syn_naug=70.0, acc_rdm_naug=55.0)
    assert v["IOR"] == pytest.approx(20.0) and v["HLR"] == pytest.approx(15.0)
    assert v["LRS"] == pytest.approx(want["LRS"]) and v["ARS"] == pytest.approx(want["ARS"])


def test_selection_and_ledger_tables(tmp_path):
    from ddkit.evaluate import EvalResult
    from ddkit.runs.results import budget_ledger

    import torch

    root = tmp_path / "results"
    res = EvalResult([60.0, 62.0], "ConvNet", {}, [{"epoch": 2, "test": [60.0, 62.0], "val": [1.0, 1.0]}],
                     {"last": [60.0, 62.0], "best_val": [61.0, 61.0], "best_test": [64.0, 66.0]})
    led = budget_ledger(10, images=torch.zeros(10, 1, 28, 28), factor=2)
    d = root / "dsdm" / "r"
    d.mkdir(parents=True)
    write_result(d, method="DSDM", dataset="mnist5k", ipc=1, model="ConvNet", params={"seed": 0}, accs=res,
                 seconds=1.0, evaluations=[evaluation_entry("DSDM", res, ipc=1, protocol=STD, ledger=led)],
                 run_kind="user")
    df = rp.collect(root)
    sel = rp.selection_table(df)
    (label,) = sel.cells.index
    assert sel.cells.loc[label, "last epoch"] == "61.0 ± 1.0"
    assert sel.cells.loc[label, "best validation epoch"] == "61.0 ± 0.0"
    assert sel.cells.loc[label, "best test epoch (test-set selection)"] == "65.0 ± 1.0"
    lt = rp.ledger_table(df)
    (label,) = lt.cells.index
    assert lt.cells.loc[label, "stored (KiB)"] == f"{10 * 784 * 4 / 1024:.1f}"
    assert lt.cells.loc[label, "images / class / epoch"] == "4"  # 1 stored image per class, 2x2 mosaic


def test_build_report_writes_every_section(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1):
        put(root, "quickstart", f"s{seed}", "DM", [("DM", [90.0 + seed], {}), ("Random", [80.0], {})], seed=seed)
    out = tmp_path / "report"
    rep = rp.build_report(root, out)
    for name in ("table1", "robust", "ledger"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    assert not (out / "cross_arch.md").exists() and not (out / "selection.md").exists()
    assert (out / "acc_vs_ipc.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    for section in ("## Method x (dataset, IPC)", "## Protocols", "## compare", "## Robust scores", "## Budget ledger"):
        assert section in md
    back = pd.read_csv(out / "table1.csv", header=0, index_col=0)
    assert back["mnist5k · IPC 10"].dropna().str.endswith("*").sum() == 1
    assert set(pd.read_csv(out / "table1_long.csv")["source"]) == {"ours", "paper"}
    assert len(pd.read_csv(out / "runs.csv")) == 4 and rep.n_runs == 2


def test_empty_results_show_paper_rows(tmp_path, capsys):
    from ddkit.cli import main

    out = tmp_path / "rep"
    (tmp_path / "nothing").mkdir()
    assert main(["report", "--results-dir", str(tmp_path / "nothing"), "--out", str(out)]) == 0
    assert f"from {tmp_path / 'nothing'} - no runs found" in capsys.readouterr().out
    md = (out / "table1.md").read_text()
    assert "DSDM (paper) · dsdm, best_test" in md and "93.5" in md
    assert (out / "acc_vs_ipc.png").is_file() and not (out / "acc_vs_iterations.png").exists()
    assert "No runs found" in (out / "report.md").read_text()
    rep = rp.build_report(tmp_path / "nothing", out, paper=False, plots=False)
    assert rep.table1.empty and rep.n_runs == 0


def test_cli_refuses_a_missing_results_folder_and_an_unreadable_published_file(tmp_path, capsys):
    from ddkit.cli import main

    assert main(["report", "--results-dir", str(tmp_path / "typo"), "--out", str(tmp_path / "rep")]) == 2
    assert str(tmp_path / "typo") in capsys.readouterr().err and not (tmp_path / "rep").exists()
    assert main(["report", "--results-dir", str(tmp_path), "--published", "nope.csv", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "--published nope.csv" in err and "Traceback" not in err


def test_cli_formats_write_only_the_asked_files(tmp_path, capsys):
    from ddkit.cli import main

    out = tmp_path / "rep"
    assert main(["report", "--results-dir", str(tmp_path), "--out", str(out), "--formats", "csv", "--no-plots"]) == 0
    assert {p.suffix for p in out.iterdir()} == {".csv"} and (out / "table1.csv").is_file()
    assert main(["report", "--results-dir", str(tmp_path), "--out", str(tmp_path / "md"), "--formats", "md",
                 "--no-plots"]) == 0
    assert {p.suffix for p in (tmp_path / "md").iterdir()} == {".md"}


def test_cli_include_test(tmp_path, capsys):
    from ddkit.cli import main

    root = tmp_path / "results"
    put(root, "quickstart", "ci", "DM", [("DM", [7.8], {})], run_kind="test")
    assert main(["report", "--results-dir", str(root), "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    assert "7.8" not in (tmp_path / "a" / "table1.md").read_text()
    assert main(["report", "--results-dir", str(root), "--out", str(tmp_path / "b"), "--no-plots",
                 "--include-test"]) == 0
    assert "7.8" in (tmp_path / "b" / "table1.md").read_text()


def test_published_csv_is_well_formed_and_sourced(tmp_path):
    pub = rp.load_published()
    assert list(pub.columns) == ["method", "dataset", "ipc", "mean", "protocol", "selection", "source"]
    assert pub["mean"].between(0, 100).all() and pub["source"].str.len().gt(0).all()
    ead = pub[pub["method"] == "EAD"].set_index("dataset")
    assert ead["ipc"].eq(1).all() and ead["mean"].to_dict() == {"fashion_mnist": 86.7, "mnist": 98.4, "cifar10": 46.3,
                                                                "cifar100": 21.5}
    proto = pub.groupby("method")[["protocol", "selection"]].first()
    assert tuple(proto.loc["GAN + SKD"]) == tuple(proto.loc["GAN global/local"]) == ("dim", "best_test")
    assert tuple(proto.loc["DSDM"]) == ("dsdm", "best_test") and tuple(proto.loc["DM"]) == ("standard", "last")
    bad = tmp_path / "published.csv"
    bad.write_text("method,dataset,ipc,mean,source\nDM,mnist,1,1.0,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['protocol', 'selection'\]"):
        rp.load_published(bad)


def test_quickstart_notebook_writes_entries_the_report_reads(tmp_path):
    """The quickstart at a tiny setting, into a temporary folder: one result.json whose entries
    become the report's rows (marked as a test run, so only ``include_test`` shows them)."""
    import papermill as pm

    root = tmp_path / "results"
    nb = Path(__file__).resolve().parent.parent / "notebooks" / "00_quickstart.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        cwd=str(nb.parent), parameters=dict(ipc=1, iterations=2, batch_real=8, eval_epochs=2,
                                                            num_eval=1, val_per_class=2, eval_whole=True,
                                                            results_dir=str(root), run_name="tiny", device="cpu"))
    rec = json.loads((root / "quickstart" / "tiny" / "result.json").read_text())
    assert rec["run_kind"] == "test"
    assert [e["method"] for e in rec["evaluations"]] == ["Random", "Herding", "DM", "Whole dataset"]
    assert rp.collect(root).empty
    df = rp.collect(root, include_test=True)
    t = rp.table1(df).cells
    assert {"DM · standard", "Random · standard", "Herding [random ConvNet] · standard",
            "Whole dataset · standard"} == set(t.index)
    assert t.loc["DM · standard", ("mnist5k", "1")].endswith("(1/1)") and t.loc["DM · standard", ("mnist5k", "whole")] == ""
    assert t.loc["Whole dataset · standard", ("mnist5k", "whole")].endswith("(1/1)")
    assert rp.selection_table(df).cells.shape == (4, 3)  # last / best validation / best test per set
    dm = df[df["method"] == "DM"].iloc[0]
    rnd, whole = (df[df["method"] == m].iloc[0]["mean"] for m in ("Random", "Whole dataset"))
    robust = rp.robust_table(df).values
    (row,) = [i for i in robust.index if i.startswith("DM ·")]
    assert robust.loc[row, "IOR"] == pytest.approx(dm["mean"] - rnd)
    assert robust.loc[row, "HLR"] == pytest.approx(whole - dm["mean"])
    ledger = rp.ledger_table(df).cells
    at_ipc1 = ledger[ledger.index.str.contains("IPC 1 ")]
    assert len(at_ipc1) == 3 and (at_ipc1["images / class / epoch"] == "1").all()
    assert (at_ipc1["stored (KiB)"] == f"{10 * 784 * 4 / 1024:.1f}").all()


def _shape(fig) -> tuple[int, float, float]:
    """(panels drawn, width in inches, width / height)."""
    w, h = fig.get_size_inches()
    return len(fig.axes), float(w), float(w / h)


def test_accuracy_vs_ipc_draws_only_our_panels_in_a_readable_grid(tmp_path):
    import matplotlib.pyplot as plt

    root = tmp_path / "results"
    put(root, "quickstart", "one", "DM", [("DM", [90.0, 91.0], {}), ("Random", [80.0], {})], ipc=1)
    pub = rp.load_published()
    panels_in_paper = {(r.dataset, r.protocol, r.selection) for r in pub.itertuples() if r.ipc == r.ipc}
    assert len(panels_in_paper) > 3  # the paper rows alone fill a wide strip
    fig = rp.plot_accuracy_vs_ipc(rp.collect(root), pub)
    n, width, ratio = _shape(fig)
    assert n == 1 and fig.axes[0].get_title().startswith("mnist5k · standard") and ratio <= 3
    plt.close(fig)
    for i, ds in enumerate(("fashion_mnist", "cifar10", "mnist", "svhn")):  # five panels of ours: 2 rows x 3
        put(root, "quickstart", f"r{i}", "DM", [("DM", [60.0 + i], {})], dataset=ds)
    fig = rp.plot_accuracy_vs_ipc(rp.collect(root), pub)
    n, width, ratio = _shape(fig)
    assert n == 5 and width <= 13 and ratio <= 3
    assert len({round(ax.get_position().x0, 2) for ax in fig.axes}) == 3  # three columns
    plt.close(fig)
    fig = rp.plot_accuracy_vs_ipc(rp.collect(tmp_path / "none"), pub)  # no runs: the papers' panels, gridded
    n, width, ratio = _shape(fig)
    assert n == len(panels_in_paper) and width <= 13 and ratio <= 3
    plt.close(fig)
