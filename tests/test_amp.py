"""Mixed precision (``amp``): "off" is the float32 path bit for bit (against loops written out the
plain way); "bf16" / "fp16" run and stay close. The accuracy-distribution comparison on real data
is a benchmark item (bench/amp_accuracy.py; bench/public_dm.py pairs float32 and bf16
evaluation networks), not a test."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import DSA, decode
from ddkit.core.utils import make_generator
from ddkit.evaluate import evaluate_synset
from ddkit.fast.speed import autocast, check_amp, grad_scaler
from ddkit.methods.distill import MatchBatch, distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool
from ddkit.models import get_model
from ddkit.train import accuracy, train_classifier


def _dm(ds, iterations=2, device="cpu", **kw):
    syn = init_synthetic(ds, 2, generator=make_generator(0), device=device)
    pool = RandomPool.for_dataset("ConvNet", ds, width=16, device=device)
    hist = distill(syn, ds, dm_objective, pool, iterations, batch_real=8, seed=3, progress=False, device=device,
                   graphs=False, **kw)  # the eager loop, whose draws the plain loop below repeats
    return [h["loss"] for h in hist], syn.images.detach().clone()


def _plain_dm_loop(ds, iterations=2, seed=3, device="cpu"):
    """distill's joint DM iteration written out in float32: plain backward and SGD step."""
    syn = init_synthetic(ds, 2, generator=make_generator(0), device=device)
    pool = RandomPool.for_dataset("ConvNet", ds, width=16, device=device)
    aug = DSA(ds.dsa_strategy)
    ds = ds.to(device)
    g_data, g_aug, g_pool = make_generator(seed), make_generator(seed + 1, device), make_generator(seed + 2)
    opt = torch.optim.SGD([syn.images], lr=1.0, momentum=0.5)
    losses = []
    for it in range(iterations):
        net = pool.draw(g_pool)
        x_real, y_real = ds.sample_classes(8, generator=g_data)
        p = aug.sample(ds.num_classes, generator=g_aug, device=x_real.device)
        x_real = aug.apply(x_real, p, y_real)
        x_syn, y_syn = decode(syn.images, syn.labels, 1)
        x_syn = aug.apply(x_syn, p, y_syn)
        loss = dm_objective(MatchBatch(net, x_real, y_real, x_syn, y_syn, it, ds.num_classes))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses, syn.images.detach().clone()


def test_distill_amp_off_is_the_float32_loop_exactly(tiny_ds, device, deterministic):
    losses, images = _dm(tiny_ds, amp="off", device=device)
    ref_losses, ref_images = _plain_dm_loop(tiny_ds, device=device)
    if device.type == "cpu":
        assert losses == ref_losses and torch.equal(images, ref_images)
    else:  # deterministic kernels, but grid_sample's backward (DSA scale / rotate) adds atomically on CUDA:
        # float32 rounding of a few terms per pixel, far below TF32's ~1e-3 or bf16's ~1e-2
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=0.0)
        torch.testing.assert_close(images, ref_images, rtol=1e-5, atol=1e-6)


def test_train_classifier_amp_off_is_the_float32_loop_exactly(tiny_ds):
    x, y = tiny_ds.x_train[:20], tiny_ds.y_train[:20]
    net = get_model("ConvNet", 1, 4, (28, 28), width=8, generator=make_generator(1))
    ref = copy.deepcopy(net)
    train_classifier(net, x, y, epochs=2, batch_size=8, schedule="none", generator=make_generator(2), amp="off")
    g, opt = make_generator(2), torch.optim.SGD(ref.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ref.train()
    for _ in range(2):
        perm = torch.randperm(20, generator=g)
        for b in range(0, 20, 8):
            idx = perm[b:b + 8]
            loss = F.cross_entropy(ref(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_distill_bf16_runs_and_stays_close(tiny_ds, device):
    l32, x32 = _dm(tiny_ds, device=device)
    l16, x16 = _dm(tiny_ds, amp="bf16", device=device)
    assert all(abs(a - b) <= 0.05 * abs(a) for a, b in zip(l32, l16)), (l32, l16)
    assert not torch.equal(x16, x32)  # the flag is on: bf16 rounding changes the numbers
    assert (x16 - x32).abs().max() < 0.05 * x32.abs().max()


def test_train_and_accuracy_bf16_stay_close(tiny_ds):
    x, y = tiny_ds.x_train[:24], tiny_ds.y_train[:24]
    nets = []
    for amp in ("off", "bf16"):
        net = get_model("ConvNet", 1, 4, (28, 28), width=8, generator=make_generator(1))
        train_classifier(net, x, y, epochs=2, batch_size=8, generator=make_generator(2), amp=amp)
        nets.append(net)
    for p, q in zip(*(n.parameters() for n in nets)):
        assert (p - q).abs().max() <= 0.02 * p.abs().max() + 1e-3
    acc = [accuracy(nets[0], tiny_ds.x_test, tiny_ds.y_test, amp=a) for a in ("off", "bf16")]
    assert abs(acc[0] - acc[1]) <= 5.0


def test_fp16_runs_with_a_loss_scaler(tiny_ds, device):
    losses, images = _dm(tiny_ds, iterations=1, amp="fp16", device=device)
    assert all(torch.isfinite(torch.tensor(losses))) and torch.isfinite(images).all()
    assert grad_scaler("fp16", "cpu").is_enabled() and not grad_scaler("bf16", "cpu").is_enabled()
    with autocast("bf16", "cpu"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_evaluate_synset_records_amp_and_rejects_unknown(tiny_ds):
    x, y = init_synthetic(tiny_ds, 1, generator=make_generator(0)).detached()
    kw = dict(num_models=2, epochs=1, progress=False, model_kw={"width": 8})
    r = evaluate_synset(x, y, tiny_ds, amp="bf16", **kw, graphs=False)
    assert r.settings["amp"] == "bf16" and len(r.accs) == 2
    assert "amp" not in evaluate_synset(x, y, tiny_ds, **kw, graphs=False).settings
    for bad in ("fp8", True, None):
        with pytest.raises(ValueError, match="amp"):
            check_amp(bad)
    with pytest.raises(ValueError, match="amp='half'"):
        evaluate_synset(x, y, tiny_ds, amp="half", **kw, graphs=False)


def test_the_comparison_passes_the_notebooks_eval_amp(tiny_ds):
    from ddkit.methods.dm import Comparison

    x, y = init_synthetic(tiny_ds, 1, generator=make_generator(0)).detached()
    kw = dict(num_models=1, epochs=1, seed=0, width=8)
    assert Comparison(tiny_ds, "standard", amp="bf16", **kw).evaluate(x, y).settings["amp"] == "bf16"
    assert "amp" not in Comparison(tiny_ds, "standard", **kw).evaluate(x, y).settings
