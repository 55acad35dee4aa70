"""``ddkit reproduce`` and the shipped sets: the cell list, the time box, stop-and-resume, the manifest."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from ddkit.batch import reproduce as rp
from ddkit.batch import reproduce_docs as rd
from ddkit.core import timebox
from ddkit.core.utils import make_generator
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool
from ddkit.runs.results import save_synset

DISTILLED = Path(rp.REPO) / "distilled"
MAIN_TABLES = {  # paper -> (method, datasets of its main table that params/paper covers)
    "01_gan_global_local": ("GAN global/local", {"mnist", "fashion_mnist", "cifar10"}),
    "02_gan_skd": ("GAN + SKD", {"mnist", "fashion_mnist", "cifar10"}),
    "03_iid": ("IID (DM base)", {"svhn", "cifar10", "cifar100", "tinyimagenet"}),
    "04_dsdm": ("DSDM", {"mnist", "fashion_mnist", "svhn", "cifar10", "cifar100"}),
    "05_ead": ("EAD", {"mnist", "fashion_mnist", "cifar10", "cifar100"}),
}


def test_list_has_every_main_table_cell_with_its_run():
    rows = rp.list_rows()
    ids = [r["cell"] for r in rows]
    assert len(ids) == len(set(ids))
    for paper, (method, datasets) in MAIN_TABLES.items():
        assert {r["dataset"] for r in rows if r["paper"] == paper and r["method"] == method} == datasets, paper
    by_id = {r["cell"]: r for r in rows}
    assert by_id["dm-fmnist-ipc10"]["published"] == "83.5 ± 0.3"
    assert by_id["dsdm-fmnist-ipc10"]["protocol"] == "dsdm/best_test"
    assert by_id["ganlg-fmnist-ipc10"]["published"] == "88.6 ± 0.1"
    assert by_id["ead-fmnist-ipc1"]["published"] == "86.7"
    # DM at FMNIST IPC 10: 20000 iterations x 17.5 ms (measured) + 5 networks: a few minutes
    assert 5 < by_id["dm-fmnist-ipc10"]["gpu_min_est"] < 10
    for c in rp.load_cells():  # every cell's grid entry selects a run of its parameters file, at its IPC
        assert rp.paper_runs(c)[0].params.get("ipc", c.ipc) == c.ipc, c.cell


def test_cells_agree_with_published_csv():
    from ddkit.reporting.report_collect import load_published

    pub = load_published()
    cells = {(c.method, c.dataset, c.ipc): c for c in rp.load_cells()}
    shared = [r for r in pub.itertuples() if (r.method, r.dataset, r.ipc) in cells]
    assert len(shared) >= 10
    for r in shared:
        c = cells[(r.method, r.dataset, r.ipc)]
        assert (c.mean, c.protocol, c.selection) == (r.mean, r.protocol, r.selection), c.cell


def test_unknown_cell_and_bad_minutes_are_refused():
    with pytest.raises(ValueError, match="unknown cell 'dm-fmnist-ipc7'"):
        rp.get_cell("dm-fmnist-ipc7")
    with pytest.raises(ValueError, match="minutes=-1"):
        rp.run_cell("dm-fmnist-ipc10", minutes=-1)


def test_distill_stops_at_the_deadline_and_resumes_equal(tiny_ds, tmp_path, monkeypatch):
    def run(ck):
        syn = init_synthetic(tiny_ds, 2, generator=make_generator(0))
        distill(syn, tiny_ds, dm_objective, RandomPool.for_dataset("ConvNet", tiny_ds, width=8), 5, batch_real=4,
                progress=False, checkpoint=ck, graphs=False)
        return syn.images.detach().clone()

    whole = run(tmp_path / "a.pt")
    monkeypatch.setenv(timebox.DEADLINE_ENV, repr(time.time() - 1))
    with pytest.raises(timebox.TimeBoxReached, match="at iteration 1 of 5") as e:
        run(tmp_path / "b.pt")
    assert timebox.progress_of(str(e.value)) == (1, 5)
    monkeypatch.delenv(timebox.DEADLINE_ENV)
    assert torch.equal(run(tmp_path / "b.pt"), whole)  # deterministic CPU loop: bitwise equal


def test_bad_deadline_names_the_value(monkeypatch):
    monkeypatch.setenv(timebox.DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match="DDKIT_DEADLINE='soon'"):
        timebox.expired()


def test_smoke_cell_stops_resumes_and_equals_an_uninterrupted_run(tmp_path):
    """End to end through papermill (about a minute on 2 cores): a deadline already passed stops the
    first invocation after one iteration; the second resumes it; the result equals one uninterrupted run."""
    first = rp.run_cell("dm-fmnist-ipc10", smoke=True, minutes=0, results_dir=tmp_path / "a", log=lambda *_: None)
    assert first["row"]["status"] == "partial" and first["seeds"]["0"]["iterations_done"] == 1
    resumed = rp.run_cell("dm-fmnist-ipc10", smoke=True, results_dir=tmp_path / "a", log=lambda *_: None)
    whole = rp.run_cell("dm-fmnist-ipc10", smoke=True, results_dir=tmp_path / "b", log=lambda *_: None)
    assert resumed["row"]["status"] == whole["row"]["status"] == "complete"
    assert resumed["seeds"]["0"]["invocations"] == 2
    res = [json.loads((tmp_path / d / "dm-fmnist-ipc10-smoke/quickstart/s0/result.json").read_text()) for d in "ab"]
    assert res[0]["accs"] == res[1]["accs"]
    sets = [torch.load(tmp_path / d / "dm-fmnist-ipc10-smoke/quickstart/s0/synset.pt") for d in "ab"]
    assert torch.equal(sets[0]["x"], sets[1]["x"])
    md = (tmp_path / "a/dm-fmnist-ipc10-smoke/reproduction.md").read_text()
    assert "| dm-fmnist-ipc10 | 04_dsdm | Table 1 | 83.5 ± 0.3 |" in md and "| dsdm-fmnist-ipc10 |" in md
    assert md.count("| not run |") == len(rp.load_cells()) - 1
    shipped = tmp_path / "a/dm-fmnist-ipc10-smoke/distilled"
    assert rd.verify_manifest(shipped) == [] and rd.load_manifest(shipped)[0]["shape"] == [20, 1, 28, 28]


def _ship(tmp_path, tiny_ds) -> Path:
    out = tmp_path / "distilled"
    x, y = tiny_ds.x_train[:20], tiny_ds.y_train[:20]
    path = save_synset(tmp_path, x, y, dataset=tiny_ds.name)
    (out / "04_dsdm").mkdir(parents=True)
    shutil.copyfile(path, out / "04_dsdm/dm-x_s0.pt")
    line = {"file": "04_dsdm/dm-x_s0.pt", "sha256": rd.sha256(out / "04_dsdm/dm-x_s0.pt"), "kind": "synset",
            "dataset": tiny_ds.name, "ipc": 2, "protocol": "standard/last"}
    (out / rd.MANIFEST).write_text(json.dumps([line]))
    return out


def test_manifest_hash_mismatch_is_found(tmp_path, tiny_ds):
    out = _ship(tmp_path, tiny_ds)
    assert rd.verify_manifest(out) == []
    with open(out / "04_dsdm/dm-x_s0.pt", "ab") as f:
        f.write(b"x")
    assert [b["file"] for b in rd.verify_manifest(out)] == ["04_dsdm/dm-x_s0.pt"]
    assert rd.verify_manifest(tmp_path / "empty") == []  # no manifest: nothing shipped, nothing wrong


def test_a_shipped_set_re_evaluates(tmp_path, tiny_ds):
    out = _ship(tmp_path, tiny_ds)
    res = rd.evaluate_shipped(out / "04_dsdm/dm-x_s0.pt", epochs=2, num_eval=1, dataset=tiny_ds)
    assert len(res.accs) == 1 and 0 <= res.accs[0] <= 100 and res.settings["epochs"] == 2


def test_every_shipped_set_verifies_and_evaluates():
    """Every line of distilled/MANIFEST.json (none yet is fine): hash, size budget, a 2-epoch evaluation."""
    from ddkit.data import load_dataset

    assert rd.verify_manifest(DISTILLED) == []
    lines = rd.load_manifest(DISTILLED)
    assert sum(line["bytes"] for line in lines) < 20e6
    for line in lines:
        res = rd.evaluate_shipped(DISTILLED / line["file"], epochs=2, num_eval=1, dataset=load_dataset(line["dataset"]))
        assert len(res.accs) == 1, line["file"]


def test_dsdm_protocol_records_the_best_test_selection_beside_the_last_epoch(tiny_ds):
    from ddkit.methods.dm import Comparison

    x, y = tiny_ds.x_train[:20], tiny_ds.y_train[:20]
    dsdm = Comparison(tiny_ds, "dsdm", num_models=1, epochs=3, seed=0)
    res = dsdm.evaluate(x, y)
    assert set(res.selection) == {"last", "best_test"} and [p["epoch"] for p in res.epoch_curve] == [3]
    entries = dsdm.entries({"DSDM": {"ConvNet": res}}, ipc=2, ledgers={"DSDM": {}})
    assert [e["protocol"]["selection"] for e in entries] == ["last", "best_test"]
    assert entries[1]["accs"] == res.selection["best_test"] and entries[1]["protocol"]["name"] == "dsdm"
    std = Comparison(tiny_ds, "standard", num_models=1, epochs=3, seed=0).evaluate(x, y)
    assert std.selection == {}  # the standard protocol: the last epoch only, as before


def test_a_legacy_result_keeps_its_recorded_protocol_or_is_refused():
    from ddkit.reporting.report_collect import _legacy_protocol

    assert _legacy_protocol({"params": {"eval_protocol": "dsdm", "eval_epochs": 1500}})["name"] == "dsdm"
    assert _legacy_protocol({"params": {}})["name"] == "standard"
    with pytest.raises(ValueError, match="eval_protocol='dim'"):
        _legacy_protocol({"params": {"eval_protocol": "dim"}})


def test_a_generator_ships_without_its_discriminator_and_re_evaluates(tmp_path, tiny_ds):
    from ddkit.methods.gan_checkpoint import build_gan, save_checkpoint

    run = tmp_path / "cell/gan/s0"
    run.mkdir(parents=True)
    state = build_gan(tiny_ds, z_dim=16, gen_width=8, disc_width=8, gen_arch="compact")
    save_checkpoint(state, run / "generator.pt")
    cell = rp.get_cell("ganlg-fmnist-ipc1")
    rec = {"seeds": {"0": {"run_dir": "gan/s0", "status": "complete"}}, "commit": "abc"}
    line, = rd.ship_sets(cell, tmp_path / "cell", rec, tmp_path / "distilled", {"ours": 50.0})
    shipped = torch.load(tmp_path / "distilled" / line["file"], weights_only=False)
    assert set(shipped) == {"meta", "params", "G"} and line["kind"] == "generator"
    assert line["dataset"] == tiny_ds.name and rd.verify_manifest(tmp_path / "distilled") == []
    res = rd.evaluate_shipped(tmp_path / "distilled" / line["file"], epochs=2, num_eval=1, dataset=tiny_ds)
    assert len(res.accs) == 1
