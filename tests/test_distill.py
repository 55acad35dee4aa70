import pytest
import torch

from ddkit.core.utils import make_generator, resolve_device
from ddkit.evaluate import evaluate_synset
from ddkit.methods.distill import MatchBatch, dm_objective, distill, init_synthetic, per_class_forward
from ddkit.methods.pools import RandomPool
from ddkit.models import get_model


def test_init_synthetic_from_real_and_factor(tiny_ds):
    syn = init_synthetic(tiny_ds, 3, generator=make_generator(0))
    assert syn.images.shape == (12, 1, 28, 28) and syn.images.requires_grad
    assert torch.equal(syn.labels, torch.arange(4).repeat_interleave(3))
    real = {tuple(r) for r in tiny_ds.x_train.flatten(1)[:, ::5].tolist()}
    assert all(tuple(r) in real for r in syn.images.detach().flatten(1)[:, ::5].tolist())
    syn2 = init_synthetic(tiny_ds, 2, factor=2, generator=make_generator(0))
    x, y = syn2.decoded()
    assert syn2.images.shape == (8, 1, 28, 28) and x.shape == (32, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((4,), 8))
    with pytest.raises(ValueError, match="only 20 training images"):
        init_synthetic(tiny_ds, 6, factor=2)


def test_one_forward_equals_per_class_forwards(tiny_ds):
    """Instance norm: one pass over all classes gives the same DM loss as per-class passes."""
    net = get_model("ConvNet", 1, 4, (28, 28))
    x, y = tiny_ds.sample_classes(5, generator=make_generator(0))
    xs, ys = tiny_ds.sample_classes(2, generator=make_generator(1))
    batched = dm_objective(MatchBatch(net, x, y, xs, ys, 0, 4))["loss"]
    per_class = sum(((net.embed(x[y == c]).mean(0) - net.embed(xs[ys == c]).mean(0)) ** 2).sum()
                    for c in range(4))
    assert torch.allclose(batched, per_class, rtol=1e-4)


def test_batchnorm_models_get_per_class_passes(tiny_ds):
    net = get_model("ConvNetBN", 1, 4, (28, 28)).train()
    x, y = tiny_ds.sample_classes(3, generator=make_generator(0))
    out = per_class_forward(net.embed, net, x, y, 4)
    expect = torch.cat([net.embed(x[y == c]) for c in range(4)])
    assert torch.allclose(out, expect, atol=1e-5)
    assert not torch.allclose(net.embed(x), expect, atol=1e-3)


def _run(tiny_ds, iterations, **kw):
    syn = init_synthetic(tiny_ds, 2, generator=make_generator(0))
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=16)
    hist = distill(syn, tiny_ds, dm_objective, pool, iterations, batch_real=4, seed=0, progress=False, **kw, graphs=False)
    return syn.images.detach().clone(), hist


def test_distill_is_deterministic_and_resumes(tiny_ds, tmp_path, deterministic):
    a, ha = _run(tiny_ds, 4)
    b, hb = _run(tiny_ds, 4)
    if a.device.type == "cpu":
        assert torch.equal(a, b) and ha == hb
    else:  # grid_sample's backward (DSA scale / rotate) adds atomically on CUDA: float32 rounding only
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
        assert [h["loss"] for h in hb] == pytest.approx([h["loss"] for h in ha], rel=1e-5)
    ck = tmp_path / "ck.pt"
    _run(tiny_ds, 2, checkpoint=ck, checkpoint_every=1)  # "interrupted" after 2 iterations
    c, hc = _run(tiny_ds, 4, checkpoint=ck, checkpoint_every=1)  # resumes at 2
    assert torch.allclose(a, c, atol=1e-6) and [h["loss"] for h in hc] == pytest.approx([h["loss"] for h in ha])


def test_a_checkpoint_without_matching_extra_state_is_refused_with_its_path(tiny_ds, tmp_path):
    ck = tmp_path / "ck.pt"
    _run(tiny_ds, 1, checkpoint=ck, checkpoint_every=1, extra_state={"draws": make_generator(5)})
    state = torch.load(ck, weights_only=True)
    state["extra"]["draws"] = {"state": state["extra"]["draws"]}   # how older code stored a generator
    torch.save(state, ck)
    with pytest.raises(ValueError, match=r"ck\.pt holds no matching state for extra_state\['draws'\]"):
        _run(tiny_ds, 2, checkpoint=ck, extra_state={"draws": make_generator(5)})
    plain = tmp_path / "plain.pt"
    _run(tiny_ds, 1, checkpoint=plain, checkpoint_every=1)
    with pytest.raises(ValueError, match=r"no matching state for extra_state\['bank'\]"):
        _run(tiny_ds, 2, checkpoint=plain, extra_state={"bank": make_generator(6)})


def _reference_per_class_loop(tiny_ds, iterations, ipc=2, factor=1, batch_real=4, lr=1.0, momentum=0.5, seed=0):
    """The IDM / IDC reference loop written out: per class, that class's real batch and synthetic
    rows, siamese DSA, the DM loss of that class alone, backward, ``step()`` on the whole tensor."""
    from ddkit.augment import DSA, decode

    dev = resolve_device(None)  # where distill(device=None) runs, its augmentation generator included
    syn = init_synthetic(tiny_ds, ipc, factor=factor, generator=make_generator(0))
    images, tiny_ds = syn.images, tiny_ds.to(dev)
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=16)
    aug = DSA(tiny_ds.dsa_strategy)
    g_data, g_aug, g_pool = make_generator(seed), make_generator(seed + 1, dev), make_generator(seed + 2)
    opt = torch.optim.SGD([images], lr=lr, momentum=momentum)
    for _ in range(iterations):
        net = pool.draw(g_pool)
        x_real, y_real = tiny_ds.sample_classes(batch_real, generator=g_data)
        p = aug.sample(4, generator=g_aug, device=dev)
        for c in range(4):
            real_c = aug.apply(x_real[y_real == c], p, y_real[y_real == c])
            xs, ys = decode(images[c * ipc:(c + 1) * ipc], syn.labels[c * ipc:(c + 1) * ipc], factor)
            xs = aug.apply(xs, p, ys)
            with torch.no_grad():
                mean_real = net.embed(real_c).mean(0)
            loss = ((mean_real - net.embed(xs).mean(0)) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return images.detach().clone()


@pytest.mark.parametrize("factor", [1, 2])
def test_per_class_image_steps_equal_the_reference_loop(tiny_ds, factor, deterministic):
    ref = _reference_per_class_loop(tiny_ds, 3, factor=factor)
    syn = init_synthetic(tiny_ds, 2, factor=factor, generator=make_generator(0))
    pool = RandomPool.for_dataset("ConvNet", tiny_ds, width=16)
    distill(syn, tiny_ds, dm_objective, pool, 3, batch_real=4, seed=0, progress=False, image_step="per_class", graphs=False)
    assert torch.allclose(syn.images.detach(), ref, atol=1e-5)


def test_per_class_steps_differ_from_joint_under_momentum_and_agree_without(tiny_ds, deterministic):
    """Momentum moves every row at each of the K per-class steps: joint != per_class; with
    momentum 0 and a sum of per-class terms the two are the same update."""
    def run(step, momentum):
        syn = init_synthetic(tiny_ds, 2, generator=make_generator(0))
        distill(syn, tiny_ds, dm_objective, RandomPool.for_dataset("ConvNet", tiny_ds, width=16), 3,
                batch_real=4, seed=0, progress=False, image_step=step, momentum=momentum, graphs=False)
        return syn.images.detach()

    assert (run("joint", 0.5) - run("per_class", 0.5)).abs().max() > 1e-3
    assert torch.allclose(run("joint", 0.0), run("per_class", 0.0), atol=1e-5)


def _subset(ds, sizes):
    """``ds`` with the first ``sizes[c]`` training images of class ``c``."""
    from ddkit.data import ImageDataset
    keep = torch.cat([ds.class_indices(c)[:n] for c, n in enumerate(sizes)])
    return ImageDataset(ds.name, ds.x_train[keep], ds.y_train[keep], ds.x_test, ds.y_test, ds.mean, ds.std,
                        ds.classes, ds.dsa_strategy)


@pytest.mark.parametrize("sizes,batch_real", [([6, 6, 6, 6], 10), ([20, 3, 12, 7], 10), ([20, 3, 12, 7], 100)])
def test_per_class_equals_joint_at_momentum_zero_when_classes_are_smaller_than_batch_real(tiny_ds, sizes,
                                                                                          batch_real, device):
    """``sample_classes`` gives all of a class smaller than ``batch_real``: each class's loss must still
    see its own real images (a ``batch_real``-wide slice mixes classes: the images then differ by 0.15-0.2).
    Tolerance 1e-4: the two paths embed different batch compositions (float reassociation; on CUDA
    cuDNN picks algorithms by batch size)."""
    ds = _subset(tiny_ds, sizes)

    def run(step):
        syn = init_synthetic(ds, 2, generator=make_generator(0), device=device)
        distill(syn, ds, dm_objective, RandomPool.for_dataset("ConvNet", ds, device=device, width=16), 2, device=device,
                batch_real=batch_real, seed=0, progress=False, image_step=step, momentum=0.0, graphs=False)
        return syn.images.detach()

    assert torch.allclose(run("joint"), run("per_class"), atol=1e-4)


def test_distill_refuses_a_checkpoint_past_the_requested_iterations(tiny_ds, tmp_path):
    ck = tmp_path / "ck.pt"
    _run(tiny_ds, 3, checkpoint=ck, checkpoint_every=1)
    with pytest.raises(ValueError, match="at iteration 3 but iterations=2"):
        _run(tiny_ds, 2, checkpoint=ck)


def test_distill_rejects_an_unknown_image_step(tiny_ds):
    syn = init_synthetic(tiny_ds, 2, generator=make_generator(0))
    with pytest.raises(ValueError, match="image_step='perclass'"):
        distill(syn, tiny_ds, dm_objective, RandomPool.for_dataset("ConvNet", tiny_ds, width=16), 1,
                progress=False, image_step="perclass", graphs=False)


def test_distill_rejects_foreign_checkpoint(tiny_ds, tmp_path):
    ck = tmp_path / "ck.pt"
    _run(tiny_ds, 1, checkpoint=ck)
    syn = init_synthetic(tiny_ds, 3, generator=make_generator(0))
    with pytest.raises(ValueError, match="shape"):
        distill(syn, tiny_ds, dm_objective, RandomPool.for_dataset("ConvNet", tiny_ds), 2, checkpoint=ck,
                progress=False, graphs=False)


def test_dm_beats_random_real_images_at_ipc1(mnist5k):
    """The distilled set beats the real images it started from (IPC 1, real MNIST digits)."""
    g = make_generator(0)
    syn = init_synthetic(mnist5k, 1, generator=g)
    x0, y0 = syn.detached()
    pool = RandomPool.for_dataset("ConvNet", mnist5k)
    hist = distill(syn, mnist5k, dm_objective, pool, 30, batch_real=32, seed=0, progress=False, graphs=False)
    assert hist[-1]["loss"] < hist[0]["loss"]
    x1, y1 = syn.detached()
    kw = dict(num_models=2, epochs=60, seed=0, progress=False)
    random_acc = evaluate_synset(x0, y0, mnist5k, **kw, graphs=False).mean
    dm_acc = evaluate_synset(x1, y1, mnist5k, **kw, graphs=False).mean
    assert dm_acc > random_acc + 5, (dm_acc, random_acc)
