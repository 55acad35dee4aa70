import json
import os

import pytest
import torch

from ddkit.runs.results import REQUIRED_KEYS, Run, auto_run_name, load_synset, loop_key, notebook_key, read_result, \
    save_synset, write_result
from ddkit.core.utils import atomic_write_json, safe_torch_load


def test_notebook_key_and_run_name():
    assert notebook_key("00_quickstart") == "quickstart" and notebook_key("03_iid.ipynb") == "iid"
    assert auto_run_name({"dataset": "/x/my.npz", "ipc": 10, "seed": 2}) == "my_ipc10_s2"


def test_write_and_read_result(tmp_path):
    rd = tmp_path / "iid" / "r1"
    rd.mkdir(parents=True)
    rec = write_result(rd, method="IID", dataset="mnist5k", ipc=10, model="ConvNet", params={"a": 1},
                       accs=[90.0, 92.0], seconds=1.5, device="cpu")
    back = read_result(rd / "result.json")
    assert back == json.loads((rd / "result.json").read_text()) == rec
    assert set(REQUIRED_KEYS) <= set(back) and back["mean"] == 91.0 and back["std"] == 1.0
    assert not [p for p in rd.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"v": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_result_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        write_result(tmp_path, method="m", dataset="d", ipc=1, model="ConvNet", params={}, accs=[float("nan")],
                     seconds=0)
    assert not (tmp_path / "result.json").exists()


def test_synset_round_trip_weights_only(tmp_path):
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 0, 1, 1])
    p = save_synset(tmp_path, x, y, dataset="mnist5k", ipc=2)
    obj = torch.load(p, weights_only=True)
    assert torch.equal(obj["x"], x)
    x2, y2, meta = load_synset(p, expect={"dataset": "mnist5k"})
    assert torch.equal(y2, y) and meta["ipc"] == 2
    with pytest.raises(ValueError, match="dataset='mnist5k'.*cifar10"):
        load_synset(p, expect={"dataset": "cifar10"})


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable"):
        safe_torch_load(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="no 'meta'"):
        safe_torch_load(foreign)


def run_params(tmp_path, **kw):
    return {"dataset": "mnist5k", "ipc": 1, "model": "ConvNet", "seed": 3, "device": "cpu", "run_name": "",
            "results_dir": str(tmp_path), "eval_model": "ConvNet", "deterministic": False, "resume": True, **kw}


def test_run_opens_the_folder_seeds_and_records_the_environment(tmp_path, deterministic):
    from ddkit.core.utils import determinism_settings

    run = Run(run_params(tmp_path), "00_quickstart.ipynb", suffix="dm")
    assert run.dir == tmp_path / "quickstart" / "mnist5k_ipc1_s3_dm" and run.dir.is_dir()
    assert run.results == tmp_path  # the results folder, where shared caches (e.g. gan_cache) live
    assert str(run.device) == "cpu" and determinism_settings()["use_deterministic_algorithms"] is False
    drawn = torch.rand(3)
    named = Run(run_params(tmp_path, run_name="mine", deterministic=True), "00_quickstart")
    assert named.dir == tmp_path / "quickstart" / "mine" and torch.equal(torch.rand(3), drawn)  # seeded again
    assert determinism_settings()["use_deterministic_algorithms"] is True
    with pytest.raises(ValueError, match="deterministic='yes'"):
        Run(run_params(tmp_path, deterministic="yes"), "00_quickstart")
    with pytest.raises(ValueError, match="needs the dataset"):
        Run({"seed": 0, "results_dir": str(tmp_path)}, "00_quickstart")
    rec = run.finish("DM", [50.0, 52.0])
    for k in ("ddkit_version", "git_commit", "device", "created", "torch_version"):
        assert rec[k]
    assert rec["device"] == "cpu" and rec["params"]["seed"] == 3 and rec["ipc"] == 1 and rec["model"] == "ConvNet"
    assert (rec["notebook"], rec["run_name"], rec["eval_model"]) == ("quickstart", "mnist5k_ipc1_s3_dm", "ConvNet")
    assert read_result(run.dir / "result.json") == rec and rec["evaluations"][0]["accs"] == [50.0, 52.0]
    assert run.finish("DM", [50.0], ipc=10, dataset="MNIST-5k")["ipc"] == 10  # a field the run measured itself
    assert read_result(run.dir / "result.json")["dataset"] == "MNIST-5k"


def test_run_checkpoints_are_keyed_by_the_loop_and_off_without_resume(tmp_path, deterministic):
    p = {"lambda_h": 0.2, "iterations": 10, "eval_epochs": 20, "eval_every": 0}
    assert loop_key(p) == loop_key({**p, "iterations": 99, "eval_epochs": 300})
    assert loop_key(p) != loop_key({**p, "lambda_h": 0.0})
    assert loop_key({**p, "eval_every": 5}) != loop_key({**p, "eval_every": 5, "eval_epochs": 300})
    run = Run(run_params(tmp_path, **p), "04_dsdm")
    assert run.checkpoint("dsdm") == run.dir / f"checkpoint_dsdm_{loop_key(run.params)}.pt"
    longer = Run(run_params(tmp_path, **{**p, "iterations": 99}), "04_dsdm")  # resumes the shorter run's state
    assert longer.checkpoint("dsdm") == run.checkpoint("dsdm")
    assert Run(run_params(tmp_path, **{**p, "ipc": 2}), "04_dsdm").checkpoint("dsdm").name != run.checkpoint("dsdm").name
    assert Run(run_params(tmp_path, resume=False), "04_dsdm").checkpoint("dsdm") is None


def test_run_saves_the_set_and_only_the_figures_it_drew(tmp_path, deterministic):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Run(run_params(tmp_path), "05_ead")
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    path = run.save_set(x, y, ipc=2, soft_labels=False)
    x2, y2, meta = load_synset(path, expect={"dataset": "mnist5k"})
    assert path == run.dir / "synset.pt" and torch.equal(x2, x) and torch.equal(y2, y) and meta["ipc"] == 2
    assert meta["notebook"] == "ead" and not meta["soft_labels"]
    assert load_synset(run.save_set(x, y, dataset="other"))[2]["dataset"] == "other"
    fig = plt.figure()
    assert run.save_figures({"a.png": fig, "b.png": None}) == [run.dir / "a.png"]
    assert (run.dir / "a.png").stat().st_size > 0 and not (run.dir / "b.png").exists()
    plt.close(fig)


def test_paired_difference_matches_a_hand_computed_t_interval():
    from ddkit.core.stats import paired_difference

    r = paired_difference([2.0, 4.0, 6.0], [1.0, 1.0, 1.0])  # diffs 1, 3, 5: mean 3, sd 2
    half = 4.302652729911275 * 2.0 / 3 ** 0.5  # t_{0.975, 2}
    assert r["n"] == 3 and abs(r["mean"] - 3.0) < 1e-12 and abs(r["std"] - 2.0) < 1e-12
    assert abs(r["lo"] - (3.0 - half)) < 1e-9 and abs(r["hi"] - (3.0 + half)) < 1e-9


def test_paired_difference_refuses_unpaired_input():
    import pytest

    from ddkit.core.stats import paired_difference

    with pytest.raises(ValueError, match="3 values, baseline 2"):
        paired_difference([1, 2, 3], [1, 2])


def test_write_result_records_an_evaluations_list(tmp_path):
    from ddkit.evaluate import EvalResult
    from ddkit.runs.results import evaluation_entry, read_result, write_result

    res = EvalResult([50.0, 60.0], "ConvNet", {"epochs": 300, "num_models": 2})
    ev = [evaluation_entry("DM", res, ipc=10, protocol={"name": "standard"}),
          evaluation_entry("DM", [40.0], ipc=10, eval_model="ResNet18", curve=[{"iteration": 5, "accs": [30]}])]
    write_result(tmp_path, method="DM", dataset="mnist5k", ipc=10, model="ConvNet", params={}, accs=res,
                 seconds=1.0, evaluations=ev)
    rec = read_result(tmp_path / "result.json")
    assert [e["eval_model"] for e in rec["evaluations"]] == ["ConvNet", "ResNet18"]
    assert rec["evaluations"][0]["protocol"] == {"epochs": 300, "num_models": 2, "name": "standard"}
    assert rec["evaluations"][0]["mean"] == 55.0 and rec["evaluations"][1]["curve"][0]["accs"] == [30.0]


def test_results_dir_precedence(tmp_path, monkeypatch):
    """explicit argument > $DDKIT_RESULTS > ./results of the working directory, never the package's folder."""
    from ddkit.core.utils import REPO_ROOT
    from ddkit.runs.results import resolve_results_dir

    monkeypatch.setenv("DDKIT_RESULTS", str(tmp_path / "env"))
    assert resolve_results_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_results_dir("") == resolve_results_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DDKIT_RESULTS")
    monkeypatch.chdir(tmp_path)
    assert resolve_results_dir("") == tmp_path / "results" != REPO_ROOT / "results"


def test_every_module_takes_its_default_results_folder_from_the_one_helper(tmp_path, monkeypatch, tiny_ds):
    """sweep, report, pools and trajectories all land in resolve_results_dir's folder (./results here)."""
    from ddkit.batch import sweep
    from ddkit.methods.pools import PretrainedPool
    from ddkit.methods.trajectory import Trajectory
    from ddkit.reporting import report

    monkeypatch.delenv("DDKIT_RESULTS")
    monkeypatch.chdir(tmp_path)
    here = tmp_path / "results"
    assert report.default_out_dir() == here / "report"
    assert report.collect().attrs["results_dir"] == str(here)
    grid = tmp_path / "g.yaml"
    grid.write_text("notebook: 00_quickstart.ipynb\n")
    assert sweep.expand([grid])[0].results_dir == str(here)
    assert PretrainedPool("ConvNet", tiny_ds, 1, 0, build=False, progress=False).path.parent == here / "pools"
    Trajectory.get(tiny_ds, epochs=1, progress=False)
    assert len(list((here / "trajectories").glob("*.pt"))) == 1


def test_the_test_session_never_writes_into_the_repository_results():
    from ddkit.core.utils import REPO_ROOT
    from ddkit.runs.results import current_run_kind, resolve_results_dir

    assert resolve_results_dir("") != REPO_ROOT / "results" and current_run_kind() == "test"


def test_run_kind_is_recorded_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("DDKIT_RUN_KIND")
    kw = dict(method="DM", dataset="mnist5k", ipc=1, model="ConvNet", params={}, accs=[50.0], seconds=0)
    assert write_result(tmp_path, **kw)["run_kind"] == "user"
    assert write_result(tmp_path, run_kind="tiny", **kw)["run_kind"] == "tiny"
    monkeypatch.setenv("DDKIT_RUN_KIND", "test")
    assert write_result(tmp_path, **kw)["run_kind"] == "test"
    with pytest.raises(ValueError, match="run_kind='smoke'.*user, tiny, test"):
        write_result(tmp_path, run_kind="smoke", **kw)
    with pytest.raises(ValueError, match=r"evaluations\[0\] lacks \['variant'"):
        write_result(tmp_path, evaluations=[{"method": "DM"}], **kw)


def test_evaluation_entry_keeps_selection_and_epoch_curve():
    from ddkit.evaluate import EvalResult
    from ddkit.runs.results import evaluation_entry

    res = EvalResult([60.0, 62.0], "ConvNet", {"epochs": 4}, [{"epoch": 4, "test": [60.0, 62.0]}],
                     {"last": [60.0, 62.0], "best_test": [61.0, 64.0]})
    e = evaluation_entry("DiM", res.select("best_test"), ipc=10, protocol="dim")
    assert e["accs"] == [61.0, 64.0] and e["mean"] == 62.5
    assert e["protocol"] == {"epochs": 4, "selection": "best_test", "name": "dim"}
    assert e["selection"]["last"] == [60.0, 62.0] and e["epoch_curve"][0]["epoch"] == 4


def test_budget_ledger_by_hand():
    from ddkit.runs.results import budget_ledger

    x, soft = torch.zeros(20, 1, 28, 28), torch.full((20, 10), 0.1)
    led = budget_ledger(10, images=x, labels=soft, factor=2)
    assert led["image_bytes"] == 20 * 784 * 4 and led["label_bytes"] == 20 * 10 * 4
    assert led["stored_bytes"] == 62720 + 800 and led["images_per_class_per_epoch"] == 20 * 4 / 10
    hard = budget_ledger(10, images=x, labels=torch.zeros(20, dtype=torch.long))
    assert hard["label_bytes"] == 0 and hard["images_per_class_per_epoch"] == 2.0
    gen = torch.nn.Linear(3, 2)  # 8 float32 parameters
    g = budget_ledger(10, generator=gen, images_per_class_per_epoch=70.4)
    assert g == {"stored_bytes": 32, "image_bytes": 0, "label_bytes": 0, "generator_bytes": 32, "factor": 1,
                 "images_per_class_per_epoch": 70.4}
    with pytest.raises(ValueError, match="factor=0"):
        budget_ledger(10, images=x, factor=0)


def test_run_evaluation_takes_the_runs_ipc_and_its_ledger(tmp_path, deterministic):
    from ddkit.runs.results import budget_ledger, evaluation_entry

    run = Run(run_params(tmp_path), "00_quickstart")
    x = torch.zeros(10, 1, 28, 28)
    entry = run.evaluation("DM", [50.0, 52.0], variant="v", ledger=run.ledger(10, images=x))
    assert entry == evaluation_entry("DM", [50.0, 52.0], ipc=1, variant="v", ledger=budget_ledger(10, images=x))
    assert entry["ipc"] == 1 and entry["ledger"]["images_per_class_per_epoch"] == 1.0
    assert run.evaluation("Whole dataset", [90.0], ipc=None)["ipc"] is None
    assert run.finish("DM", [50.0, 52.0], evaluations=[entry])["evaluations"] == [entry]
