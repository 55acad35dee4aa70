"""Training the evaluation networks together (ddkit.fast.ensemble) against the one-by-one loop: same
weights, logits and accuracies up to float reassociation; independent initialisations and draws."""
import copy

import pytest
import torch

from ddkit.augment import DSA
from ddkit.core.utils import make_generator
from ddkit.evaluate import evaluate_synset
from ddkit.fast.ensemble import can_train_together, train_together
from ddkit.methods.distill import init_synthetic
from ddkit.models import get_model
from ddkit.train import train_classifier


def _nets(n, device="cpu", **kw):
    return [get_model("ConvNet", 1, 4, (28, 28), width=8, generator=make_generator(10 + i), **kw).to(device)
            for i in range(n)]


@pytest.mark.parametrize("settings", [
    dict(schedule="standard", dsa=True, cutmix_p=0.0),   # epoch 2 switches to a fresh optimizer at lr / 10
    dict(schedule="multistep", dsa=True, cutmix_p=0.5),  # CutMix on some networks' batches only
    dict(schedule="none", dsa=False, cutmix_p=0.0, soft=True),
])
def test_train_together_equals_one_by_one(tiny_ds, settings, device, deterministic):
    settings = dict(settings)
    soft = settings.pop("soft", False)
    aug = DSA(tiny_ds.dsa_strategy) if settings.pop("dsa") else None
    x, y = tiny_ds.x_train[:22].to(device), tiny_ds.y_train[:22].to(device)  # 3 batches of 8, 8, 6
    if soft:
        y = torch.softmax(torch.randn(22, 4, generator=make_generator(5)), 1).to(device)
    kw = dict(epochs=3, batch_size=8, dsa=aug, num_classes=4, **settings)
    alone = _nets(3, device)
    together = copy.deepcopy(alone)
    for i, net in enumerate(alone):
        train_classifier(net, x, y, generator=make_generator(100 + i, device), **kw)
    seen = []
    train_together(together, x, y, generators=[make_generator(100 + i, device) for i in range(3)],
                   on_epoch_end=seen.append, **kw)
    assert seen == [1, 2, 3]
    probe = tiny_ds.x_test[:16].to(device)
    # other kernels (batched convolutions) than one by one: float32 reassociation, ~1e-6 relative per
    # step, well inside 1e-4 after 9 steps; TF32 (~1e-3, PyTorch's default on CUDA) is off here
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(b.eval()(probe), a.eval()(probe), rtol=1e-4, atol=1e-4)
    # the networks stay independent: different initialisations and draws give different weights
    w = [next(n.parameters()) for n in together]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])


def test_evaluate_synset_batched_equals_sequential(tiny_ds, device, deterministic):
    x, y = init_synthetic(tiny_ds, 3, generator=make_generator(0)).detached()
    kw = dict(device=device, num_models=2, epochs=3, batch_size=8, progress=False, model_kw={"width": 8}, eval_every_epochs=2)
    seq = evaluate_synset(x, y, tiny_ds, batched=False, **kw, graphs=False)
    bat = evaluate_synset(x, y, tiny_ds, batched=True, **kw, graphs=False)
    assert bat.accs == pytest.approx(seq.accs, abs=1e-4)
    for b, s in zip(bat.epoch_curve, seq.epoch_curve):
        assert b["epoch"] == s["epoch"] and b["test"] == pytest.approx(s["test"], abs=1e-4)
    assert (bat.settings.pop("trainer"), seq.settings.pop("trainer")) == ("together", "one_by_one")
    assert bat.settings == seq.settings
    auto = evaluate_synset(x, y, tiny_ds, **kw, graphs=False)
    assert auto.settings["trainer"] == ("together" if device.type == "cuda" else "one_by_one")
    assert auto.accs == pytest.approx(bat.accs if device.type == "cuda" else seq.accs, abs=1e-4)


def test_batchnorm_falls_back_to_one_by_one(tiny_ds):
    assert not can_train_together(_nets(2, norm="batchnorm"))
    assert not can_train_together(_nets(1))
    assert can_train_together(_nets(2))
    x, y = init_synthetic(tiny_ds, 1, generator=make_generator(0)).detached()
    kw = dict(model="ConvNetBN", num_models=2, epochs=1, progress=False, model_kw={"width": 8})
    assert evaluate_synset(x, y, tiny_ds, **kw, graphs=False).accs == evaluate_synset(x, y, tiny_ds, batched=False, **kw, graphs=False).accs
    with pytest.raises(ValueError, match="batched=True"):
        evaluate_synset(x, y, tiny_ds, batched=True, **kw, graphs=False)
    with pytest.raises(ValueError, match="batched"):
        evaluate_synset(x, y, tiny_ds, batched="yes", **kw, graphs=False)
    with pytest.raises(ValueError, match="BatchNorm"):
        train_together(_nets(2, norm="batchnorm"), x, y, epochs=1, generators=[make_generator(0)] * 2)
