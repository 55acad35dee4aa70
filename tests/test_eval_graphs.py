"""The captured evaluation trainer (ddkit.fast.eval_graphs): its maths against the library's trainers."""
import pytest
import torch

from ddkit.augment import DSA
from ddkit.evaluate import evaluate_synset
from ddkit.fast.eval_graphs import EpochProgram, can_capture, train_and_test
from ddkit.models import get_model
from ddkit.train import accuracy, train_classifier


def _nets(ds, k, seed=0):
    out = []
    for i in range(k):
        torch.manual_seed(seed + i)
        out.append(get_model("ConvNet", ds.channels, ds.num_classes, ds.im_size, width=16))
    return out


def test_augment_draws_one_family_per_network(tiny_ds):
    nets = _nets(tiny_ds, 3)
    x, y = tiny_ds.x_train[:10], tiny_ds.y_train[:10]
    program = EpochProgram(nets, x, y, lr=0.01, batch_size=256, dsa=DSA(tiny_ds.dsa_strategy))
    seen = []
    real_apply = DSA.apply_on_device

    def spy(self, flat, params, group=None):
        seen.append(params.op.view(3, 10))
        return real_apply(self, flat, params, group)

    DSA.apply_on_device = spy
    try:
        program.run_epoch()
    finally:
        DSA.apply_on_device = real_apply
    ops = seen[0]
    assert (ops == ops[:, :1]).all()                 # one family per network and call
    assert len(seen) == 1


@pytest.mark.parametrize("schedule,epochs", [("standard", 5), ("multistep", 7), ("none", 3)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("vectorize", [False, True])
def test_epochs_equal_train_classifier(tiny_ds, schedule, epochs, soft, vectorize):
    """Without DSA and with the whole set in one batch the sample order cannot matter (a mean), so
    the program must reproduce train_classifier's weights, schedule and momentum reset included."""
    x, y = tiny_ds.x_train[:24], tiny_ds.y_train[:24]
    if soft:
        y = torch.softmax(torch.randn(24, tiny_ds.num_classes, generator=torch.Generator().manual_seed(3)), 1)
    ours, ref = _nets(tiny_ds, 2), _nets(tiny_ds, 2)
    kw = dict(epochs=epochs, lr=0.05, batch_size=256, schedule=schedule)
    train_and_test(ours, x, y, dsa=None, seed=0, test=(tiny_ds.x_test, tiny_ds.y_test), capture=False,
                   vectorize=vectorize, **kw)
    for net in ref:
        train_classifier(net, x, y, dsa=None, generator=torch.Generator().manual_seed(0), **kw)
    for a, b in zip(ours, ref):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_several_batches_cover_the_set_once(tiny_ds):
    x = torch.arange(22.0).view(22, 1, 1, 1).expand(22, 1, 28, 28).contiguous()
    program = EpochProgram(_nets(tiny_ds, 2), x, tiny_ds.y_train[:22], lr=0.01, batch_size=8)
    batches = program._batches()
    assert [b.shape for b in batches] == [(2, 8), (2, 8), (2, 6)]
    for net in range(2):
        assert sorted(torch.cat([b[net] for b in batches]).tolist()) == list(range(22))


@pytest.mark.parametrize("vectorize", [False, True])
def test_accuracies_equal_library_accuracy(tiny_ds, vectorize):
    nets = _nets(tiny_ds, 3)
    program = EpochProgram(nets, tiny_ds.x_train[:8], tiny_ds.y_train[:8], lr=0.01, batch_size=8, vectorize=vectorize)
    assert program.accuracies(tiny_ds.x_test, tiny_ds.y_test, batch_size=7) == pytest.approx(
        [accuracy(n, tiny_ds.x_test, tiny_ds.y_test) for n in nets])


def test_evaluate_synset_graphs_path(tiny_ds):
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    kw = dict(num_models=2, epochs=6, dsa=False, batch_size=256, model_kw={"width": 16}, progress=False,
              eval_every_epochs=3)
    ours = evaluate_synset(x, y, tiny_ds, graphs=True, **kw)
    ref = evaluate_synset(x, y, tiny_ds, graphs=False, batched=False, **kw)
    assert ours.settings["trainer"] == "graphs" and ref.settings["trainer"] == "one_by_one"
    assert [pt["epoch"] for pt in ours.epoch_curve] == [3, 6]
    assert ours.accs == pytest.approx(ref.accs, abs=100 / len(tiny_ds.x_test) + 1e-9)
    again = evaluate_synset(x, y, tiny_ds, graphs=True, dsa=True, **{k: v for k, v in kw.items() if k != "dsa"})
    assert again.accs == evaluate_synset(x, y, tiny_ds, graphs=True, dsa=True,
                                         **{k: v for k, v in kw.items() if k != "dsa"}).accs   # same seed


def test_graphs_true_refuses_what_it_cannot_train(tiny_ds):
    x, y = tiny_ds.x_train[:8], tiny_ds.y_train[:8]
    kw = dict(num_models=2, epochs=1, progress=False)
    with pytest.raises(ValueError, match="cutmix_p=0.5"):
        evaluate_synset(x, y, tiny_ds, graphs=True, cutmix_p=0.5, **kw)
    with pytest.raises(ValueError, match="BatchNorm"):
        evaluate_synset(x, y, tiny_ds, model="ConvNet", model_kw={"norm": "batchnorm"}, graphs=True, **kw)
    with pytest.raises(ValueError, match="graphs='yes'"):
        evaluate_synset(x, y, tiny_ds, graphs="yes", **kw)
    assert not can_capture([torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))])
    assert can_capture([torch.nn.Sequential(torch.nn.Linear(3, 3))])


def test_captured_replay_equals_eager(tiny_ds, device):
    """On CUDA: graph replays are the eager epochs from the same generator state (cuDNN deterministic,
    TF32 off, so both run the same kernels on the same inputs)."""
    if device.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    x, y = tiny_ds.x_train[:30].to(device), tiny_ds.y_train[:30].to(device)
    dsa = DSA(tiny_ds.dsa_strategy)
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.manual_seed(0)
        eager = EpochProgram(_nets(tiny_ds, 2), x, y, lr=0.01, batch_size=16, dsa=dsa)
        state = torch.cuda.get_rng_state(device)
        for _ in range(3):
            eager.run_epoch()
        torch.cuda.set_rng_state(state, device)
        captured = EpochProgram(_nets(tiny_ds, 2), x, y, lr=0.01, batch_size=16, dsa=dsa)
        captured.capture()
        torch.cuda.set_rng_state(state, device)
        for _ in range(3):
            captured.epoch()
        torch.cuda.synchronize(device)
        for a, b in zip(eager.params, captured.params):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


def test_graphs_resume_trains_only_the_unfinished_networks(tiny_ds, tmp_path):
    x, y = tiny_ds.x_train[::4], tiny_ds.y_train[::4]
    kw = dict(num_models=3, epochs=2, model_kw={"width": 8}, progress=False, graphs=True,
              checkpoint=tmp_path / "eval.json")
    first = evaluate_synset(x, y, tiny_ds, **kw)
    import json
    stored = json.loads((tmp_path / "eval.json").read_text())
    units = next(iter(stored.values())) if isinstance(stored, dict) and len(stored) == 1 else stored
    assert first.settings["trainer"] == "graphs"
    calls = []
    import ddkit.evaluate as ev
    real = ev.train_and_test

    def spy(nets, *a, **k):
        calls.append(len(nets))
        return real(nets, *a, **k)

    ev.train_and_test = spy
    try:
        again = evaluate_synset(x, y, tiny_ds, **kw)
    finally:
        ev.train_and_test = real
    assert calls == [] and again.accs == first.accs            # every network read back from the store
    assert units
