import pytest
import torch
import torch.nn.functional as F

from ddkit.evaluate import PROTOCOLS, evaluate_synset
from ddkit.models import get_model
from ddkit.train import accuracy, soft_cross_entropy, train_classifier, train_steps


def test_soft_cross_entropy_matches_hard():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(soft_cross_entropy(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(y, 3).float()), F.cross_entropy(logits, y))


def test_evaluation_learns_and_is_deterministic(tiny_ds):
    x, y = tiny_ds.x_train, tiny_ds.y_train
    r1 = evaluate_synset(x, y, tiny_ds, num_models=2, epochs=15, batch_size=32, seed=3, progress=False, graphs=False)
    r2 = evaluate_synset(x, y, tiny_ds, num_models=2, epochs=15, batch_size=32, seed=3, progress=False, graphs=False)
    assert r1.accs == r2.accs and len(r1.accs) == 2
    assert r1.mean > 50  # 4 classes: chance is 25 %
    assert r1.settings["dsa"] == tiny_ds.dsa_strategy and r1.settings["schedule"] == "standard"


def test_soft_labels_one_hot_equal_hard(tiny_ds):
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    hard = evaluate_synset(x, y, tiny_ds, num_models=1, epochs=5, dsa=False, progress=False, graphs=False)
    soft = evaluate_synset(x, F.one_hot(y, 4).float(), tiny_ds, num_models=1, epochs=5, dsa=False,
                           progress=False, graphs=False)
    assert abs(hard.mean - soft.mean) <= 2.5
    assert (hard.settings["labels"], soft.settings["labels"]) == ("hard", "soft")  # a protocol setting


def test_cutmix_pastes_one_box_from_a_partner_and_mixes_the_labels_by_its_area():
    from ddkit.core.utils import make_generator
    from ddkit.train import cutmix

    x = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 16, 16).clone()   # image i is constant i
    y = torch.arange(6)
    mixed, t = cutmix(x, y, 6, make_generator(1))
    assert not torch.equal(mixed, x)
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    for i in range(6):
        own = (mixed[i] == i).float().mean()
        others = [v for v in mixed[i].unique().tolist() if v != i]
        assert len(others) <= 1                                    # one partner image
        assert t[i, i] == pytest.approx(float(own) if others else 1.0, abs=1e-6)
        if others:
            assert t[i, int(others[0])] == pytest.approx(1 - float(own), abs=1e-6)


def test_dsdm_protocol_runs_with_cutmix(tiny_ds, monkeypatch):
    import ddkit.train as tr

    calls = []
    real = tr.cutmix
    monkeypatch.setattr(tr, "cutmix", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    kw = {**PROTOCOLS["dsdm"], "epochs": 3}
    r = evaluate_synset(x, y, tiny_ds, num_models=1, progress=False, **kw, graphs=False)
    assert r.settings["schedule"] == "multistep" and r.settings["cutmix_p"] == 0.5
    assert calls, "the dsdm protocol trained without a single CutMix batch"
    calls.clear()
    evaluate_synset(x, y, tiny_ds, num_models=1, progress=False, **{**kw, "cutmix_p": 0.0}, graphs=False)
    assert not calls


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
                        progress=False, graphs=False)
    assert calls == list(range(6)) and len(r.accs) == 1


def test_bad_synsets_fail_clearly(tiny_ds):
    x = tiny_ds.x_train[:4]
    with pytest.raises(ValueError, match="4 images but y_syn has 3"):
        evaluate_synset(x, tiny_ds.y_train[:3], tiny_ds, progress=False, graphs=False)
    with pytest.raises(ValueError, match="soft labels have 10 classes"):
        evaluate_synset(x, torch.full((4, 10), 0.1), tiny_ds, progress=False, graphs=False)
    with pytest.raises(ValueError, match="needs"):
        evaluate_synset(torch.zeros(4, 3, 32, 32), tiny_ds.y_train[:4], tiny_ds, progress=False, graphs=False)


def test_train_steps_changes_weights_and_accuracy_in_range(tiny_ds):
    net = get_model("ConvNet", 1, 4, (28, 28), width=16)
    before = [p.clone() for p in net.parameters()]
    opt = train_steps(net, tiny_ds, 3, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert isinstance(opt, torch.optim.SGD)
    acc = accuracy(net, tiny_ds.x_test, tiny_ds.y_test)
    with torch.no_grad():
        want = 100.0 * (net(tiny_ds.x_test).argmax(1) == tiny_ds.y_test).float().mean().item()
    assert acc == pytest.approx(want, abs=1e-4)


def test_accuracy_is_the_percentage_of_correct_predictions(tiny_ds):
    """A "network" that always answers class 0 is right on exactly the class-0 share of the test set."""
    class Always0(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 4).float()
    y = tiny_ds.y_test
    assert accuracy(Always0(), tiny_ds.x_test, y) == pytest.approx(100.0 * (y == 0).sum().item() / len(y))
    assert accuracy(Always0(), tiny_ds.x_test[y == 0], y[y == 0]) == 100.0
    assert accuracy(Always0(), tiny_ds.x_test[y != 0], y[y != 0]) == 0.0


def test_selection_by_hand():
    from ddkit.evaluate import _select

    curve = [{"epoch": 2, "test": [50.0, 60.0], "val": [40.0, 70.0]},
             {"epoch": 4, "test": [70.0, 55.0], "val": [45.0, 70.0]},  # net 1: val tie -> later epoch
             {"epoch": 6, "test": [65.0, 58.0], "val": [42.0, 60.0]}]
    sel = _select(curve, 2, has_val=True)
    assert sel == {"last": [65.0, 58.0], "best_test": [70.0, 60.0], "best_val": [70.0, 55.0]}
    assert "best_val" not in _select(curve, 2, has_val=False)


def test_checkpoint_epochs():
    from ddkit.evaluate import checkpoint_epochs

    assert checkpoint_epochs(1000, 200, 0) == [200, 400, 600, 800, 1000]
    assert checkpoint_epochs(7, 3, 0) == [3, 6, 7]
    assert checkpoint_epochs(20, 0, 5) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert checkpoint_epochs(20, 0, 0) == []
    with pytest.raises(ValueError, match="eval_every_epochs=-1"):
        checkpoint_epochs(20, -1, 0)


def test_validation_selection_records_three_labelled_accuracies(tiny_ds, monkeypatch):
    from ddkit import evaluate as evalmod
    from ddkit.evaluate import validation_split, without_validation

    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    kw = dict(num_models=2, epochs=6, batch_size=32, seed=1, progress=False)
    plain = evaluate_synset(x, y, tiny_ds, **kw, graphs=False)
    seen, real_accuracy = [], evalmod.accuracy
    monkeypatch.setattr(evalmod, "accuracy", lambda net, xs, ys, **k: seen.append((xs, ys)) or
                        real_accuracy(net, xs, ys, **k))
    sel = evaluate_synset(x, y, tiny_ds, val_per_class=5, eval_every_epochs=2, **kw, graphs=False)
    monkeypatch.setattr(evalmod, "accuracy", real_accuracy)
    assert sel.accs == plain.accs, "testing at checkpoints must not change training"
    assert plain.epoch_curve == [] and plain.selection == {} and "val_per_class" not in plain.settings
    assert [p["epoch"] for p in sel.epoch_curve] == [2, 4, 6]
    assert sel.settings["val_per_class"] == 5 and sel.settings["eval_every_epochs"] == 2
    assert sel.selection["last"] == sel.accs
    for i in range(2):  # each net's reported numbers, recomputed from its curve
        tests = [p["test"][i] for p in sel.epoch_curve]
        vals = [p["val"][i] for p in sel.epoch_curve]
        k = max(k for k in range(3) if vals[k] == max(vals))
        assert sel.selection["best_test"][i] == max(tests) and sel.selection["best_val"][i] == tests[k]
    # at each checkpoint of each net: the test set, then the validation split (20 held-out training images)
    xv, yv = validation_split(tiny_ds, 5, seed=1)
    assert len(seen) == 2 * 3 * 2
    for k, (xs, ys) in enumerate(seen):
        want = (tiny_ds.x_test, tiny_ds.y_test) if k % 2 == 0 else (xv, yv)
        assert torch.equal(xs, want[0]) and torch.equal(ys, want[1])
    rows = lambda a: {tuple(r.tolist()) for r in a.flatten(1)}  # noqa: E731
    assert len(xv) == 20 and len(rows(xv)) == 20
    assert not rows(xv) & rows(tiny_ds.x_test) and rows(xv) <= rows(tiny_ds.x_train)
    best = sel.select("best_test")
    assert best.accs == sel.selection["best_test"] and best.settings["selection"] == "best_test"
    with pytest.raises(ValueError, match="'best_val' not recorded"):
        evaluate_synset(x, y, tiny_ds, eval_every_epochs=3, **kw, graphs=False).select("best_val")
    xv, yv = validation_split(tiny_ds, 5, seed=1)
    assert torch.bincount(yv, minlength=4).tolist() == [5, 5, 5, 5]
    fit = without_validation(tiny_ds, 5, seed=1)                  # what distillation may draw from
    assert len(fit.x_train) == len(tiny_ds.x_train) - 20 and not rows(xv) & rows(fit.x_train)
    assert rows(fit.x_train) | rows(xv) == rows(tiny_ds.x_train) and torch.equal(fit.x_test, tiny_ds.x_test)
    assert without_validation(tiny_ds, 0) is tiny_ds
    assert torch.equal(xv, validation_split(tiny_ds, 5, seed=1)[0])
    with pytest.raises(ValueError, match="val_per_class=21 but class 0 .* only 20"):
        validation_split(tiny_ds, 21)


def test_together_path_selects_by_validation_and_resumes_without_training(tiny_ds, tmp_path, monkeypatch):
    """Networks trained together (one vmapped pass): test and validation accuracies at each checkpoint
    (scripted, so that last, best-test and best-val differ), and a re-run from the checkpoint file
    returns the same record without training."""
    from ddkit import evaluate as evalmod
    from ddkit.evaluate import validation_split

    xv, _ = validation_split(tiny_ds, 5, seed=1)
    script = {"test": [50.0, 60.0, 55.0, 58.0], "val": [70.0, 40.0, 60.0, 45.0]}  # epoch 2: nets 0, 1; epoch 4

    def scripted(net, xs, ys, **k):
        kind = "val" if torch.equal(xs, xv) else "test" if torch.equal(xs, tiny_ds.x_test) else pytest.fail("?")
        return script[kind].pop(0)
    monkeypatch.setattr(evalmod, "accuracy", scripted)
    kw = dict(num_models=2, epochs=4, batch_size=32, seed=1, progress=False, val_per_class=5, eval_every_epochs=2,
              batched=True, model_kw={"width": 8}, checkpoint=tmp_path / "eval.json")
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    first = evaluate_synset(x, y, tiny_ds, **kw, graphs=False)
    assert script == {"test": [], "val": []}
    assert [(p["epoch"], p["test"], p["val"]) for p in first.epoch_curve] == [(2, [50.0, 60.0], [70.0, 40.0]),
                                                                              (4, [55.0, 58.0], [60.0, 45.0])]
    assert first.selection == {"last": [55.0, 58.0], "best_test": [55.0, 60.0], "best_val": [50.0, 58.0]}
    assert first.accs == [55.0, 58.0]
    fail = lambda *a, **k: pytest.fail("trained a network the checkpoint holds")  # noqa: E731
    monkeypatch.setattr(evalmod, "train_together", fail)
    monkeypatch.setattr(evalmod, "train_classifier", fail)
    again = evaluate_synset(x, y, tiny_ds, **kw, graphs=False)
    assert (again.accs, again.selection, again.epoch_curve) == (first.accs, first.selection, first.epoch_curve)
