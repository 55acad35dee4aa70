import json
import os

import pytest
import torch

from ddkit.results import REQUIRED_KEYS, auto_run_name, load_synset, notebook_key, read_result, run_dir, \
    save_synset, start_run, write_result
from ddkit.utils import atomic_write_json, safe_torch_load


def test_notebook_key_and_run_name():
    assert notebook_key("00_quickstart") == "quickstart" and notebook_key("03_iid.ipynb") == "iid"
    assert auto_run_name({"dataset": "/x/my.npz", "ipc": 10, "seed": 2}) == "my_ipc10_s2"


def test_write_and_read_result(tmp_path):
    rd = run_dir(tmp_path, "03_iid", "r1")
    rec = write_result(rd, method="IID", dataset="mnist5k", ipc=10, model="ConvNet", params={"a": 1},
                       accs=[90.0, 92.0], seconds=1.5, device="cpu")
    assert rd == tmp_path / "iid" / "r1"
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


def test_start_run_records_environment(tmp_path):
    params = {"dataset": "mnist5k", "ipc": 1, "seed": 3, "device": "cpu", "run_name": "", "results_dir": str(tmp_path),
              "eval_model": "ConvNet"}
    run = start_run(params, "00_quickstart", load_data=False)
    assert run.dir == tmp_path / "quickstart" / "mnist5k_ipc1_s3"
    rec = run.finish(method="DM", accs=[50.0])
    for k in ("ddkit_version", "git_commit", "device", "created", "torch_version"):
        assert rec[k]
    assert rec["device"] == "cpu" and rec["params"]["seed"] == 3
