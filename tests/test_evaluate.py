import pytest
import torch
import torch.nn.functional as F

from ddkit.evaluate import PROTOCOLS, cross_arch_eval, evaluate_synset
from ddkit.models import get_model
from ddkit.train import accuracy, soft_cross_entropy, train_classifier, train_steps


def test_soft_cross_entropy_matches_hard():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(soft_cross_entropy(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(y, 3).float()), F.cross_entropy(logits, y))


def test_evaluation_learns_and_is_deterministic(tiny_ds):
    x, y = tiny_ds.x_train, tiny_ds.y_train
    r1 = evaluate_synset(x, y, tiny_ds, num_models=2, epochs=15, batch_size=32, seed=3, progress=False)
    r2 = evaluate_synset(x, y, tiny_ds, num_models=2, epochs=15, batch_size=32, seed=3, progress=False)
    assert r1.accs == r2.accs and len(r1.accs) == 2
    assert r1.mean > 50  # 4 classes: chance is 25 %
    assert r1.settings["dsa"] == tiny_ds.dsa_strategy and r1.settings["schedule"] == "standard"


def test_soft_labels_one_hot_equal_hard(tiny_ds):
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    hard = evaluate_synset(x, y, tiny_ds, num_models=1, epochs=5, dsa=False, progress=False)
    soft = evaluate_synset(x, F.one_hot(y, 4).float(), tiny_ds, num_models=1, epochs=5, dsa=False,
                           progress=False)
    assert abs(hard.mean - soft.mean) <= 2.5


def test_dsdm_protocol_runs_with_cutmix(tiny_ds):
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    kw = {**PROTOCOLS["dsdm"], "epochs": 3}
    r = evaluate_synset(x, y, tiny_ds, num_models=1, progress=False, **kw)
    assert r.settings["schedule"] == "multistep" and r.settings["cutmix_p"] == 0.5


def test_standard_schedule_resets_optimizer(tiny_ds, monkeypatch):
    import ddkit.train as tr
    made = []
    real_sgd = tr.sgd
    monkeypatch.setattr(tr, "sgd", lambda m, lr, *a: made.append(lr) or real_sgd(m, lr, *a))
    net = get_model("ConvNet", 1, 4, (28, 28), width=8)
    train_classifier(net, tiny_ds.x_train[:8], tiny_ds.y_train[:8], epochs=6)
    assert made == pytest.approx([0.01, 0.001])  # a fresh optimizer at epoch 6 // 2 + 1


def test_batch_source_protocol(tiny_ds):
    calls = []

    def source(step, gen):
        calls.append(step)
        return tiny_ds.x_train[:8], tiny_ds.y_train[:8]

    r = evaluate_synset(None, None, tiny_ds, num_models=1, epochs=2, batch_source=source, steps_per_epoch=3,
                        progress=False)
    assert calls == list(range(6)) and len(r.accs) == 1


def test_bad_synsets_fail_clearly(tiny_ds):
    x = tiny_ds.x_train[:4]
    with pytest.raises(ValueError, match="4 images but y_syn has 3"):
        evaluate_synset(x, tiny_ds.y_train[:3], tiny_ds, progress=False)
    with pytest.raises(ValueError, match="soft labels have 10 classes"):
        evaluate_synset(x, torch.full((4, 10), 0.1), tiny_ds, progress=False)
    with pytest.raises(ValueError, match="needs"):
        evaluate_synset(torch.zeros(4, 3, 32, 32), tiny_ds.y_train[:4], tiny_ds, progress=False)


def test_cross_arch_table(tiny_ds):
    df = cross_arch_eval(tiny_ds.x_train[::8], tiny_ds.y_train[::8], tiny_ds, models=("ConvNet", "MLP"),
                         num_models=1, epochs=2, progress=False)
    assert list(df["model"]) == ["ConvNet", "MLP"] and set(df.columns) >= {"mean", "std", "accs"}


def test_train_steps_changes_weights_and_accuracy_in_range(tiny_ds):
    net = get_model("ConvNet", 1, 4, (28, 28), width=16)
    before = [p.clone() for p in net.parameters()]
    opt = train_steps(net, tiny_ds, 3, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert isinstance(opt, torch.optim.SGD)
    acc = accuracy(net, tiny_ds.x_test, tiny_ds.y_test)
    assert 0 <= acc <= 100
