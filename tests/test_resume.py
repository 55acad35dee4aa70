"""Every long loop resumes: stopped after k steps (an exception from inside the loop, as a kill would
leave it: only what was checkpointed survives), then run again with the same arguments, it gives the
result of the uninterrupted run. Loops: EAD updates, trajectory training, pretrained pools, evaluation
of many networks (DM-family ``distill``: tests/test_distill.py, tests/test_iid_dsdm.py)."""
from __future__ import annotations

import json

import pytest
import torch

from ddkit import evaluate as evalmod
from ddkit.core.utils import make_generator
from ddkit.data import ImageDataset
from ddkit.evaluate import evaluate_synset
from ddkit.methods import ead as eadmod
from ddkit.methods import pools as poolmod
from ddkit.methods import trajectory as trajmod
from ddkit.methods.ead import EADSynSet, distill_ead
from ddkit.methods.pools import PretrainedPool
from ddkit.methods.trajectory import Trajectory

SMALL = {"width": 8}


class Stop(Exception):
    """The simulated kill."""


def stop_after(monkeypatch, module, name: str, calls: int) -> dict:
    """Make ``module.name`` raise :class:`Stop` on its call number ``calls + 1`` (counts in the returned dict)."""
    real, seen = getattr(module, name), {"n": 0}

    def wrapped(*a, **k):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Stop(f"stopped after {calls} calls of {name}")
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return seen


@pytest.fixture(scope="module")
def small(mnist5k):
    idx = torch.cat([mnist5k.class_indices(c)[:10] for c in range(mnist5k.num_classes)])
    return ImageDataset(mnist5k.name, mnist5k.x_train[idx], mnist5k.y_train[idx], mnist5k.x_test[:100],
                        mnist5k.y_test[:100], mnist5k.mean, mnist5k.std, mnist5k.classes, mnist5k.dsa_strategy)


@pytest.fixture(scope="module")
def traj(small, tmp_path_factory):
    return Trajectory.get(small, "ConvNet", epochs=1, batch_size=25, lr=0.05, model_kw=SMALL, seed=0,
                          results_dir=str(tmp_path_factory.mktemp("res")), progress=False)


# ------------------------------------------------------------------------------ trajectory training
def test_trajectory_training_resumes_to_the_uninterrupted_run(small, tmp_path, monkeypatch):
    kw = dict(epochs=2, batch_size=25, lr=0.05, model_kw=SMALL, seed=3, progress=False)  # 4 steps per epoch
    full = Trajectory.train(small, "ConvNet", **kw)
    ck = tmp_path / "traj.partial.pt"
    with monkeypatch.context() as m:
        stop_after(m, trajmod, "lr_at", 5)  # one lr_at call per step: killed in step 6, mid-epoch 2
        with pytest.raises(Stop):
            Trajectory.train(small, "ConvNet", checkpoint=ck, checkpoint_every=2, **kw)
    assert ck.is_file()
    again = Trajectory.train(small, "ConvNet", checkpoint=ck, checkpoint_every=2, **kw)
    assert torch.equal(again.losses, full.losses) and torch.equal(again.steps, full.steps)
    assert torch.equal(again.lrs, full.lrs) and len(again.states) == len(full.states)
    for a, b in zip(again.states + [again.final], full.states + [full.final]):
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_trajectory_get_keeps_a_partial_run_and_removes_it_when_done(small, tmp_path, monkeypatch):
    kw = dict(epochs=1, batch_size=25, lr=0.05, model_kw=SMALL, seed=4, results_dir=str(tmp_path), progress=False,
              checkpoint_every=1)
    with monkeypatch.context() as m:
        stop_after(m, trajmod, "lr_at", 2)
        with pytest.raises(Stop):
            Trajectory.get(small, "ConvNet", **kw)
    (partial,) = (tmp_path / "trajectories").glob("*.partial.pt")
    seen = stop_after(monkeypatch, trajmod, "lr_at", 10 ** 6)
    traj = Trajectory.get(small, "ConvNet", **kw)
    assert seen["n"] == 2, "the resumed run trains only the 2 remaining of 4 steps"
    assert not partial.exists() and traj.path.is_file() and len(traj) == 4


def test_trajectory_checkpoint_of_another_key_is_refused(small, tmp_path, monkeypatch):
    kw = dict(epochs=1, batch_size=25, lr=0.05, model_kw=SMALL, progress=False)
    ck = tmp_path / "t.pt"
    with monkeypatch.context() as m:
        stop_after(m, trajmod, "lr_at", 2)
        with pytest.raises(Stop):
            Trajectory.train(small, "ConvNet", seed=0, checkpoint=ck, checkpoint_every=1, **kw)
    with pytest.raises(ValueError, match="seed=0.*seed=1"):
        Trajectory.train(small, "ConvNet", seed=1, checkpoint=ck, **kw)


# ------------------------------------------------------------------------------ EAD updates
def _ead(small, traj, checkpoint=None, **kw):
    syn = EADSynSet.init_real(small, 1, traj.teacher(), generator=make_generator(0))
    hist = distill_ead(syn, small, traj, iterations=5, t_m=2, lr_img=0.01, lr_label=0.02, optimizer="adam",
                       lr_schedule="cosine", objective="paper", batch_real=16, batch_probe=16, seed=1,
                       progress=False, checkpoint=checkpoint, checkpoint_every=2, **kw)
    return syn, hist


def _comparable(hist):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in hist]


def test_ead_resumes_to_the_uninterrupted_run(small, traj, tmp_path, monkeypatch):
    mon = dict(monitor_every=2, monitor_checkpoints=2)  # the fixed monitor set, evaluated every 2 updates
    full, h_full = _ead(small, traj, **mon)
    ck = tmp_path / "ead.pt"
    with monkeypatch.context() as m:
        stop_after(m, eadmod, "ead_objective", 3)  # killed in update 4; the checkpoint holds updates 1-2
        with pytest.raises(Stop):
            _ead(small, traj, ck, **mon)
    assert torch.load(ck, weights_only=True)["iteration"] == 2
    seen = stop_after(monkeypatch, eadmod, "ead_objective", 10 ** 6)
    again, h_again = _ead(small, traj, ck, **mon)
    assert seen["n"] == 3, "updates 3-5 only"
    assert torch.equal(again.images, full.images) and torch.equal(again.label_logits, full.label_logits)
    assert _comparable(h_again) == _comparable(h_full)


def test_ead_checkpoint_of_another_objective_or_schedule_length_is_refused(small, traj, tmp_path):
    ck = tmp_path / "ead.pt"
    _ead(small, traj, ck)
    syn = EADSynSet.init_real(small, 1, traj.teacher(), generator=make_generator(0))
    with pytest.raises(ValueError, match="objective='paper'.*objective='vector'"):
        distill_ead(syn, small, traj, iterations=5, t_m=2, lr_img=0.01, lr_label=0.02, objective="vector",
                    lr_schedule="cosine", batch_real=16, batch_probe=16, seed=1, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="iterations=5.*iterations=7"):
        distill_ead(syn, small, traj, iterations=7, t_m=2, lr_img=0.01, lr_label=0.02, objective="paper",
                    lr_schedule="cosine", batch_real=16, batch_probe=16, seed=1, progress=False, checkpoint=ck)


# ------------------------------------------------------------------------------ pretrained pools
def _flat(net):
    return torch.cat([p.detach().flatten() for p in net.state_dict().values()])


def test_pretrained_pool_resumes_to_the_uninterrupted_build(small, tmp_path, monkeypatch):
    kw = dict(num_models=3, epochs=1, seed=2, train_per_class=4, progress=False, test_samples=20, **SMALL)
    full = PretrainedPool("ConvNet", small, cache_dir=tmp_path / "full", **kw)
    with monkeypatch.context() as m:
        stop_after(m, poolmod, "train_classifier", 2)  # killed while training model 3
        with pytest.raises(Stop):
            PretrainedPool("ConvNet", small, cache_dir=tmp_path / "killed", **kw)
    assert len(torch.load(next((tmp_path / "killed").glob("*.pt")), weights_only=True)["states"]) == 2
    seen = stop_after(monkeypatch, poolmod, "train_classifier", 10 ** 6)
    again = PretrainedPool("ConvNet", small, cache_dir=tmp_path / "killed", **kw)
    assert seen["n"] == 1, "only the missing model is trained"
    assert all(torch.equal(_flat(again.load(i)), _flat(full.load(i))) for i in range(3))
    assert again.accs == full.accs


# ------------------------------------------------------------------------------ evaluation of many networks
def _evaluate(small, checkpoint=None, **kw):
    x = small.x_train[::10][:10]
    y = small.y_train[::10][:10]
    return evaluate_synset(x, y, small, model="ConvNet", num_models=3, epochs=2, batch_size=8, seed=5,
                           progress=False, model_kw=SMALL, checkpoint=checkpoint, **kw, graphs=False)


def test_evaluation_resumes_at_network_granularity(small, tmp_path, monkeypatch):
    full = _evaluate(small, eval_every_epochs=1)
    ck = tmp_path / "eval.json"
    with monkeypatch.context() as m:
        stop_after(m, evalmod, "train_classifier", 2)  # killed while training network 3
        with pytest.raises(Stop):
            _evaluate(small, ck, eval_every_epochs=1)
    stored = json.loads(ck.read_text())
    assert [sorted(v) for v in stored["keys"].values()] == [["0", "1"]]
    seen = stop_after(monkeypatch, evalmod, "train_classifier", 10 ** 6)
    again = _evaluate(small, ck, eval_every_epochs=1)
    assert seen["n"] == 1, "networks 1 and 2 are not retrained"
    assert again.accs == full.accs and again.epoch_curve == full.epoch_curve and again.selection == full.selection
    _evaluate(small, ck, eval_every_epochs=1)
    assert seen["n"] == 1, "a finished evaluation is read back whole"


def test_evaluation_checkpoint_is_keyed_by_the_synset_and_settings(small, tmp_path, monkeypatch):
    ck = tmp_path / "eval.json"
    _evaluate(small, ck)
    seen = stop_after(monkeypatch, evalmod, "train_classifier", 10 ** 6)
    _evaluate(small, ck, lr=0.02)  # another setting: trained anew, stored beside
    assert seen["n"] == 3
    x = small.x_train[::10][:10] + 0.01  # another synthetic set
    evaluate_synset(x, small.y_train[::10][:10], small, num_models=3, epochs=2, batch_size=8, seed=5,
                    progress=False, model_kw=SMALL, checkpoint=ck, graphs=False)
    assert seen["n"] == 6 and len(json.loads(ck.read_text())["keys"]) == 3


def test_evaluation_checkpoint_not_a_ddkit_file(small, tmp_path):
    ck = tmp_path / "eval.json"
    ck.write_text('{"accs": [1, 2]}')
    with pytest.raises(ValueError, match="eval.json is not a ddkit checkpoint"):
        _evaluate(small, ck)
    ck.write_text('{"format": "ddkit-unit-st')
    with pytest.raises(ValueError, match="eval.json is not a readable ddkit checkpoint"):
        _evaluate(small, ck)
