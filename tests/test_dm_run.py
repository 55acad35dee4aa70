"""The run bookkeeping notebooks 03 and 04 share (ddkit.methods.dm): start, curve plot, records, saved files,
and ``MatchBatch.features`` (the real side without grad)."""
import json
import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from ddkit.data import ImageDataset  # noqa: E402
from ddkit.methods.distill import MatchBatch, dm_objective, per_class_forward  # noqa: E402
from ddkit.methods.dm import Comparison, embed_and_map  # noqa: E402
from ddkit.evaluate import EvalResult  # noqa: E402
from ddkit.losses import mean_embedding_loss  # noqa: E402
from ddkit.models import get_model  # noqa: E402
from ddkit.runs.results import Run, budget_ledger, load_synset  # noqa: E402


def tiny(classes=3, n=6, size=8):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n)
    x = torch.randn(len(y), 1, size, size, generator=g)
    return ImageDataset("tiny", x, y, x.clone(), y.clone(), (0.5,), (0.25,), [str(c) for c in range(classes)])


def test_the_start_is_seeded_and_keeps_a_copy_of_the_start():
    ds = tiny()
    syn, init = Comparison(ds, num_models=1, epochs=1, seed=3).start(2)
    syn2, _ = Comparison(ds, num_models=1, epochs=1, seed=3).start(2)
    x0 = init.images
    assert torch.equal(syn.images, syn2.images) and torch.equal(syn.images, x0)
    with torch.no_grad():
        syn.images.add_(1.0)
    assert not torch.equal(syn.images, x0)  # a copy, not a view
    # each stored row is a real training image of its class
    for row, c in zip(x0, syn.labels):
        assert any(torch.equal(row, r) for r in ds.x_train[ds.y_train == c])


def test_the_start_decodes_mosaics_like_the_distilled_set():
    ds = tiny(size=8)
    syn, init = Comparison(ds, num_models=1, epochs=1, seed=0).start(1, factor=2)
    x0, y0 = init.detached()  # what the notebooks evaluate as the starting point
    assert not init.images.requires_grad and init.factor == 2
    x_dec, y_dec = syn.decoded()  # the set as evaluation sees it: 4 images per stored mosaic
    assert x0.shape == (3 * 4, 1, 8, 8) and torch.equal(x0, x_dec.detach())
    assert torch.equal(y0, y_dec) and sorted(y0.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_features_real_side_has_no_grad_and_default_is_the_embedding():
    ds = tiny()
    net = get_model("ConvNet", 1, 3, (8, 8), width=4, depth=1)
    x_syn = ds.x_train[:6].clone().requires_grad_(True)
    batch = MatchBatch(net, ds.x_train, ds.y_train, x_syn, ds.y_train[:6] * 0 + torch.tensor([0, 0, 1, 1, 2, 2]), 0, 3)
    f_real, f_syn = batch.features()
    assert not f_real.requires_grad and f_syn.requires_grad
    assert torch.allclose(f_real, per_class_forward(net.embed, net, ds.x_train, ds.y_train, 3))
    (fr, mr), (fs, ms) = batch.features(embed_and_map)
    assert torch.allclose(fr, f_real) and mr.dim() == 4 and not mr.requires_grad and ms.requires_grad
    # dm_objective is DM's Eq. 2 on these features
    want = mean_embedding_loss(f_real, batch.y_real, f_syn, batch.y_syn, 3)
    assert torch.allclose(dm_objective(batch)["loss"], want)


def curve(*its):
    return [{"iteration": i, "accs": [10.0 * i, 10.0 * i + 2]} for i in its]


def test_plot_curves_checks_the_iterations_and_draws_means():
    fig = Comparison.plot_curves({"A": curve(2, 4), "B": []}, every=2, iterations=4, ylabel="acc")
    lines = fig.axes[0].lines
    assert [list(l.get_ydata()) for l in lines][0] == [21.0, 41.0]
    with pytest.raises(ValueError, match=r"'A' curve was evaluated at iterations \[2\], expected \[2, 4\]"):
        Comparison.plot_curves({"A": curve(2)}, every=2, iterations=4, ylabel="acc")


def test_the_record_and_the_run_keep_every_set_architecture_curve_and_start(tmp_path, capsys, deterministic):
    ds = tiny(n=8)
    comparison = Comparison(ds, "standard", num_models=1, epochs=1, eval_model="ConvNet", eval_models=["MLP"])
    syn, _ = comparison.start(2, factor=2)
    res = {"M": {"ConvNet": EvalResult([60.0, 62.0]), "MLP": EvalResult([40.0], model="MLP")},
           "Base": {"ConvNet": EvalResult([55.0])}}
    ledger = budget_ledger(3, images=syn.images, factor=2)
    init = EvalResult([30.0, 32.0])
    entries = comparison.entries(res, ipc=2, ledgers={"M": ledger, "Base": ledger}, curves={"M": curve(5), "Base": []},
                                 res_init=init)
    by = {(e["method"], e["eval_model"]): e for e in entries}
    assert set(by) == {("M", "ConvNet"), ("M", "MLP"), ("Base", "ConvNet"), ("Random real", "ConvNet")}
    assert "curve" in by["M", "ConvNet"] and "curve" not in by["M", "MLP"] and "curve" not in by["Base", "ConvNet"]
    assert by["Random real", "ConvNet"]["variant"] == "init" and by["M", "MLP"]["protocol"]["labels"] == "hard"
    record = comparison.record(res, ipc=2, ledgers={"M": ledger, "Base": ledger}, curves={"M": curve(5), "Base": []},
                               res_init=init)
    assert record == {"evaluations": entries, "init_accs": [30.0, 32.0], "init_mean": 31.0, "init_std": 1.0}
    assert set(comparison.record(res, ipc=2, ledgers={"M": ledger, "Base": ledger})) == {"evaluations"}
    assert comparison.models == ["ConvNet", "MLP"]

    # what notebooks 03 and 04 do with them: the set, then result.json through the run
    params = {"dataset": "tiny", "ipc": 2, "model": "ConvNet", "eval_model": "ConvNet", "eval_protocol": "standard",
              "seed": 0, "device": "cpu", "results_dir": str(tmp_path), "run_name": "r"}
    run = Run(params, "03_iid")
    run.save_set(syn)
    run.finish("M", res["M"]["ConvNet"], **record, note="x")
    stored = json.loads((run.dir / "result.json").read_text())
    assert stored["accs"] == [60.0, 62.0] and stored["note"] == "x" and stored["init_accs"] == [30.0, 32.0]
    assert stored["evaluations"] == entries and stored["eval_model"] == "ConvNet" and stored["dataset"] == "tiny"
    x, y, meta = load_synset(run.dir / "synset.pt")
    dx, dy = syn.detached()
    assert torch.equal(x, dx.cpu()) and torch.equal(y, dy.cpu()) and len(x) == 4 * len(syn.images)  # decoded 2x2
    assert torch.equal(meta["stored"], syn.images.detach()) and meta["dataset"] == "tiny"
    assert meta["ipc"] == 2 and meta["factor"] == 2
    assert re.search(r"r/result\.json M 61\.00 ± 1\.00 \(\d+s\)$", capsys.readouterr().out.strip())


def test_the_accuracy_curve_trains_the_runs_evaluation_architecture():
    ds = tiny(n=4)
    comparison = Comparison(ds, "standard", num_models=1, epochs=1, eval_model="MLP", eval_models=["ConvNet"])
    seen = []
    comparison.evaluate = lambda x, y, model="ConvNet": seen.append(model) or EvalResult([50.0], model=model)
    syn, _ = comparison.start(1)
    hook = comparison.curve(1)
    hook(0, syn)
    assert seen == ["MLP"] and hook.points == [{"iteration": 1, "accs": [50.0]}]
