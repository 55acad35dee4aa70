"""ddkit.gan_*: networks, GAN losses, checkpoints, cache, pool, stage 2, evaluation."""
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.data import ImageDataset, load_dataset
from ddkit.methods import gan_train
from ddkit.methods.gan_nets import ConditionalGenerator, Discriminator, GEN_ARCHS
from ddkit.methods.gan_losses import (dim_objective, discriminator_loss, GAN_LOSSES, generator_loss,
    gradient_penalty, GeneratorBatch, TermBalance)
from ddkit.methods.gan_checkpoint import build_gan, CHECKPOINT_FORMAT, GANState, load_checkpoint, save_checkpoint
from ddkit.methods.gan_train import siamese_augment, stage1, stage1_key, train_gan
from ddkit.methods.gan_stage2 import (GANModelPool, match_generator, objective_fingerprint, stage2,
                                      stage2_schedule)
from ddkit.methods.gan_eval import (BEST_TEST_LABEL, claim_verdict, dim_steps_per_epoch, EVAL_PROTOCOLS,
    evaluate_generator, evidence_markdown, GeneratorEvaluator, paired_over_seeds)
from ddkit.core.utils import make_generator
from ddkit.losses import feature_matching_loss, logit_matching_loss
from ddkit.methods.gan_params import GAN_CHECKS
from ddkit.models import reinit_
from ddkit.runs.notebook_cells import run_tagged

torch.set_num_threads(1)


def tiny_dataset(name="tiny", channels=1, size=28, classes=4, n=8):
    g = make_generator(0)
    xtr = torch.randn(n * classes, channels, size, size, generator=g)
    xte = torch.randn(2 * classes, channels, size, size, generator=g)
    ytr = torch.arange(classes).repeat_interleave(n)
    yte = torch.arange(classes).repeat_interleave(2)
    mean, std = (0.3,) * channels, (0.4,) * channels
    return ImageDataset(name, xtr, ytr, xte, yte, mean, std, [str(c) for c in range(classes)])


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


# --------------------------------------------------------------------------- networks

@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_shapes(size, channels):
    G = ConditionalGenerator(10, channels, size, z_dim=16, width=8)
    D = Discriminator(10, channels, size, width=8)
    z, y = torch.randn(5, 16), torch.tensor([0, 1, 2, 3, 9])
    t = G(z, y)
    assert t.shape == (5, channels, size, size)
    assert t.min() >= -1 and t.max() <= 1
    s, logits = D(t, y)
    assert s.shape == (5,) and logits.shape == (5, 10)
    x, yy = G.sample(3, seed=0)
    assert x.shape == (30, channels, size, size)
    assert yy.tolist() == [c for c in range(10) for _ in range(3)]   # class-major
    # normalised space: tanh range maps to [(0 - mean) / std, (1 - mean) / std]
    assert torch.allclose(G.from_normalized(G.to_normalized(t)), t, atol=1e-6)


def test_generate_range_is_normalised_space():
    G = ConditionalGenerator(3, 1, 28, z_dim=8, width=8, mean=[0.1307], std=[0.3081])
    x = G.generate([0, 1, 2], generator=make_generator(1))
    assert x.min() >= (0 - 0.1307) / 0.3081 - 1e-5 and x.max() <= (1 - 0.1307) / 0.3081 + 1e-5


@pytest.mark.parametrize("arch", GEN_ARCHS)
def test_conditioning_changes_output_and_is_deterministic(arch):
    G = ConditionalGenerator(10, 1, 28, z_dim=16, width=8, arch=arch)
    reinit_(G, make_generator(0))                       # ddkit's init (build_gan), not torch's default
    with torch.no_grad():                               # BN running statistics of a used generator
        for _ in range(30):
            G(torch.randn(32, 16), torch.randint(10, (32,)))
    G.eval()
    z = torch.randn(1, 16).repeat(10, 1)
    x = G.generate(torch.arange(10), z)
    assert (x[0] - x[1]).abs().max() > 1e-4           # changing y changes the image
    again = G.generate(torch.arange(10), z.clone())
    assert torch.equal(x, again)                       # same z and y -> same image
    a, _ = G.sample(2, seed=5)
    b, _ = G.sample(2, seed=5)
    c, _ = G.sample(2, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_projection_discriminator_uses_label():
    D = Discriminator(4, 1, 28, width=8, projection=True)
    torch.nn.init.normal_(D.embed.weight)
    x = torch.randn(2, 1, 28, 28)
    s0, _ = D(x, torch.tensor([0, 0]))
    s1, _ = D(x, torch.tensor([1, 1]))
    assert not torch.allclose(s0, s1)
    with pytest.raises(ValueError, match="label-conditioned"):
        D(x)


# --------------------------------------------------------------------------- GAN losses

def test_gradient_penalty_linear_critic_by_hand():
    w = torch.tensor([[[[3.0, 4.0]]]])                # ||w|| = 5 for every x_hat
    critic = lambda x: (x * w).flatten(1).sum(1)       # noqa: E731
    xr, xf = torch.randn(3, 1, 1, 2), torch.randn(3, 1, 1, 2)
    gp = gradient_penalty(critic, xr, xf, generator=make_generator(0))
    assert torch.allclose(gp, torch.tensor((5.0 - 1.0) ** 2))


def test_gradient_penalty_quadratic_critic_by_hand():
    critic = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)   # noqa: E731  grad = x_hat
    xr = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    xf = torch.tensor([[[[3.0, 0.0]]], [[[0.0, 2.0]]]])
    eps = torch.tensor([0.5, 0.25])
    gp = gradient_penalty(critic, xr, xf, eps=eps)
    x_hat = [[2.0, 1.0], [0.0, 1.5]]                   # eps * xr + (1 - eps) * xf
    norms = [math.hypot(*v) for v in x_hat]
    want = sum((nv - 1) ** 2 for nv in norms) / 2
    assert abs(gp.item() - want) < 1e-5
    # differentiable (create_graph): the penalty has a gradient w.r.t. the critic's params
    lin = nn.Linear(2, 1)
    gp2 = gradient_penalty(lambda x: lin(x.flatten(1)).squeeze(1), xr, xf, eps=eps)
    gp2.backward()
    # a linear critic's input gradient is w everywhere: gp = (||w|| - 1)^2, d gp / d w = 2 (||w|| - 1) w / ||w||
    w = lin.weight.detach()
    assert gp2.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    assert torch.allclose(lin.weight.grad, 2 * (w.norm() - 1) * w / w.norm(), atol=1e-6)


class _StubD(nn.Module):
    """Score = sum of pixels * w (linear critic), class logits = fixed linear map."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.cls = nn.Linear(2, 3)

    def forward(self, x, y=None):
        f = x.flatten(1)
        return self.w * f.sum(1), self.cls(f)


def test_wgan_gp_losses_by_hand():
    D = _StubD()
    xr, xf = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    y = torch.tensor([0, 1, 2, 0])
    d = discriminator_loss(D, xr, y, xf, y, "wgan_gp", gp_lambda=10.0)
    sr, sf = D(xr)[0], D(xf)[0]
    gp_hand = (0.5 * math.sqrt(2) - 1) ** 2           # ||grad|| = |w| * sqrt(2)
    ce = F.cross_entropy(D(xr)[1], y)
    assert torch.allclose(d["gp"], torch.tensor(gp_hand), atol=1e-6)
    assert torch.allclose(d["loss"], sf.mean() - sr.mean() + 10 * gp_hand + ce, atol=1e-5)
    g = generator_loss(D, xf, y, "wgan_gp")
    assert torch.allclose(g["loss"], -sf.mean() + F.cross_entropy(D(xf)[1], y), atol=1e-6)


def test_cgan_losses_by_hand():
    D = _StubD()
    xr, xf = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    y = torch.tensor([0, 1, 2, 0])
    sr, sf = D(xr)[0], D(xf)[0]
    d = discriminator_loss(D, xr, y, xf, y, "cgan")
    # -[log D(x|y) + log(1 - D(G(z)|y))], D = sigmoid
    want = -(torch.log(torch.sigmoid(sr)).mean() + torch.log(1 - torch.sigmoid(sf)).mean())
    assert torch.allclose(d["loss"], want, atol=1e-5) and "gp" not in d and "aux" not in d
    g = generator_loss(D, xf, y, "cgan")
    assert torch.allclose(g["loss"], -torch.log(torch.sigmoid(sf)).mean(), atol=1e-5)
    g_sat = generator_loss(D, xf, y, "cgan", saturating=True)
    assert torch.allclose(g_sat["loss"], torch.log(1 - torch.sigmoid(sf)).mean(), atol=1e-5)


@pytest.mark.parametrize("loss", GAN_LOSSES)
def test_real_networks_losses_backprop(loss):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8, gan_loss=loss)
    train_gan(st, ds, epochs=1, batch_size=8, iters_per_epoch=2, progress=False)
    assert len(st.history) == 2 and all(math.isfinite(v) for v in st.history[-1].values()
                                        if isinstance(v, float))
    assert st.epochs_done == 1


# --------------------------------------------------------------------------- checkpoints & cache

def test_checkpoint_round_trip(tmp_path):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    st.params = {"gan_epochs": 1, "betas": [0.0, 0.9], "lr": 1e-4}
    train_gan(st, ds, epochs=1, batch_size=8, iters_per_epoch=2, progress=False)
    path = save_checkpoint(st, tmp_path / "g.pt")
    back = load_checkpoint(path, ds)
    st.G.eval(), back.G.eval()
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    assert torch.equal(st.G(z, y), back.G(z, y))
    for a, b in zip(st.D.state_dict().values(), back.D.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = st.opt_g.state_dict()["state"], back.opt_g.state_dict()["state"]
    assert torch.equal(sa[0]["exp_avg"], sb[0]["exp_avg"])
    assert back.params["gan_epochs"] == 1 and back.epochs_done == 1 and len(back.history) == 2
    obj = torch.load(path, weights_only=True)          # plain weights_only load works
    assert obj["meta"]["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("other,key", [
    (dict(name="other"), "dataset"),
    (dict(channels=3), "channels"),
    (dict(size=32), "im_size"),
    (dict(classes=5), "num_classes"),
])
def test_mismatched_checkpoint_fails_clearly(tmp_path, other, key):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    path = save_checkpoint(st, tmp_path / "g.pt")
    kw = dict(name="tiny", channels=1, size=28, classes=4)
    kw.update(other)
    with pytest.raises(ValueError, match=key):
        load_checkpoint(path, tiny_dataset(**kw))


def test_foreign_checkpoint_fails(tmp_path):
    torch.save({"meta": {"kind": "synset"}, "x": torch.zeros(1)}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="format"):
        load_checkpoint(tmp_path / "s.pt", tiny_dataset())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "junk.pt", tiny_dataset())


def test_stage1_cache_and_resume(tmp_path):
    ds = tiny_dataset()
    kw = dict(z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_iters=2, cache_dir=tmp_path,
              progress=False)
    a = stage1(ds, gan_epochs=1, **kw)
    assert not a.meta["cache_hit"] and len(list(tmp_path.glob("*.pt"))) == 1
    b = stage1(ds, gan_epochs=1, **kw)
    assert b.meta["cache_hit"]
    for p, q in zip(a.G.state_dict().values(), b.G.state_dict().values()):
        assert torch.equal(p, q)
    # a killed 2-epoch run leaves a 1-epoch checkpoint under the 2-epoch key: it resumes
    cfg = dict(z_dim=8, gen_width=8, disc_width=8, gan_loss="wgan_gp", gan_lr=1e-4, gan_betas=[0.0, 0.9],
               gan_batch_size=8, gan_epochs=2, gan_iters=2, d_steps=1, gp_lambda=10.0, aux_weight=None,
               seed=0, gen_arch="dim", gen_conditioning="concat", fake_aux=False, step_order="d_first",
               d_labels="real")
    shutil.copy(a.meta["cache"], tmp_path / f"{stage1_key(ds, cfg)}.pt")
    c = stage1(ds, gan_epochs=2, **kw)
    assert not c.meta["cache_hit"] and c.epochs_done == 2 and len(c.history) == 4
    d = stage1(ds, gan_epochs=2, **{**kw, "cache_dir": tmp_path / "fresh"})
    for p, q in zip(c.G.state_dict().values(), d.G.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6)            # resumed == uninterrupted


# --------------------------------------------------------------------------- pool, stage 2

def test_pool_draw_and_mid_layer():
    ds = tiny_dataset(size=32, channels=3)
    pool = GANModelPool(["ConvNet"], 3, 4, (32, 32), width=8)
    net = pool.draw(make_generator(0))
    assert pool.mid_layer == 1 and all(not p.requires_grad for p in net.parameters())
    before = [p.clone() for p in net.parameters()]
    pool.warm(ds, 2, make_generator(1))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    b = pool.batch(ds.x_train[:3], ds.y_train[:3], ds.x_train[3:6], ds.y_train[3:6], iteration=4, epoch=2)
    assert b.net is net and b.mid_layer == pool.mid_layer and (b.iteration, b.epoch) == (4, 2)
    logits, mid = b.logits_and_mid(ds.x_train[:3])
    assert torch.allclose(logits, net(ds.x_train[:3]), atol=1e-5)
    assert mid.shape == net.feature_maps(ds.x_train[:3])[1].shape
    rpool = GANModelPool(["resnet10"], 3, 4, (32, 32))
    rpool.draw(make_generator(0))
    assert rpool.current_name == "ResNet10" and rpool.mid_layer == 1      # layer2
    deep = GANModelPool(["ConvNet"], 3, 4, 32, width=8, mid_layer=2)
    net2 = deep.draw(make_generator(0))
    logits, mid = deep.batch(ds.x_train[:3], ds.y_train[:3], ds.x_train[:3], ds.y_train[:3]).logits_and_mid(ds.x_train[:3])
    assert deep.mid_layer == 2 and logits.shape == (3, 4)
    assert torch.allclose(mid, net2.feature_maps(ds.x_train[:3])[2], atol=1e-6)
    assert mid.shape != net2.feature_maps(ds.x_train[:3])[1].shape     # a deeper (smaller) map than layer 1
    with pytest.raises(ValueError, match="mid_layer"):
        GANModelPool(["ConvNet"], 3, 4, 32, width=8, mid_layer=7).draw()
    with pytest.raises(RuntimeError, match="draw a model first"):
        GANModelPool(["ConvNet"], 3, 4, 32, width=8).batch(ds.x_train[:1], ds.y_train[:1], ds.x_train[:1], ds.y_train[:1])


def _global_local(w_g, w_l):
    def objective(b):
        with torch.no_grad():
            l_real, f_real = b.logits_and_mid(b.x_real)
        l_syn, f_syn = b.logits_and_mid(b.x_syn)
        glob = logit_matching_loss(l_syn, l_real)
        loc = feature_matching_loss(f_syn, f_real)
        return {"loss": w_g * glob + w_l * loc, "global": glob, "local": loc}
    return objective


def test_global_local_training_lowers_heldout_matching_loss(mnist):
    st = build_gan(mnist, z_dim=16, gen_width=16, disc_width=8, seed=0)
    objective = _global_local(1e-3, 1e-4)
    pool = GANModelPool(["ConvNet"], 1, 10, (28, 28), width=16)
    tuned = match_generator(st, mnist, objective, pool=pool, epochs=1, iterations=25,
                                batch_size=32, lr=2e-3, pool_train_steps=0, gan_weight=0.0,
                                progress=False, seed=0)

    def heldout_loss(G):
        g = make_generator(123)
        total = 0.0
        G.eval()
        with torch.no_grad():
            for i in range(3):                           # held-out = test-set batches
                xr, yr = mnist.x_test[i * 64:(i + 1) * 64], mnist.y_test[i * 64:(i + 1) * 64]
                xs = G.generate(yr, generator=g)
                b = pool.batch(xr, yr, xs, yr)           # the pool's current (frozen) network
                total += float(objective(b)["loss"])
        return total

    before, after = heldout_loss(st.G), heldout_loss(tuned.G)
    print("held-out matching loss before/after", before, after)
    assert after < 0.8 * before, (before, after)
    assert len(tuned.history) == 25 and "match_global" in tuned.history[0]


def test_dim_objective_runs_and_stage2_cache(tmp_path):
    ds = tiny_dataset()
    st = stage1(ds, z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_epochs=1, gan_iters=1,
                cache_dir=tmp_path, progress=False)
    kw = dict(pool_models=["ConvNet"], epochs=1, iterations=2, batch_size=8, pool_train_steps=1, pool_batch_size=8,
              progress=False)
    a = stage2(st, ds, dim_objective(0.01), **kw)
    assert not a.meta["cache_hit"] and "match_global" in a.history[0]
    b = stage2(st, ds, dim_objective(0.01), **{**kw, "desc": "another label"})   # display settings: same key
    assert b.meta["cache_hit"] and b.meta["cache"] == a.meta["cache"]
    assert not stage2(st, ds, dim_objective(0.02), **kw).meta["cache_hit"]      # a closed-over weight changed
    assert not stage2(st, ds, dim_objective(0.01), **{**kw, "iterations": 3}).meta["cache_hit"]
    # stage 2 works on a copy: the stage-1 generator (CGAN baseline) and its optimizer are untouched
    assert not torch.equal(st.G.fc.weight, a.G.fc.weight)
    s1, s2 = st.opt_g.state_dict()["state"][0], a.opt_g.state_dict()["state"][0]
    assert s1["exp_avg"].data_ptr() != s2["exp_avg"].data_ptr()
    assert not torch.equal(s1["exp_avg"], s2["exp_avg"]) and int(s1["step"]) == 1


_OBJECTIVE_CELL = """
import torch
from ddkit.losses import logit_matching_loss

def make_objective(w=0.01):
    def objective(batch):
        l_syn = batch.net(batch.x_syn)
        with torch.no_grad():
            l_real = batch.net(batch.x_real)
        glob = logit_matching_loss(l_syn, l_real, reduction="mean")
        return {"loss": w * glob, "global": glob}
    return objective
"""


def test_stage2_cache_is_keyed_by_the_objective_code(tmp_path):
    """An edited objective (a different function, same name, same weights) is a cache miss; the
    same code with the same parameters, defined again (as a re-run notebook cell does), is a hit."""
    ds = tiny_dataset()
    st = stage1(ds, z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_epochs=1, gan_iters=1,
                cache_dir=tmp_path, progress=False)
    kw = dict(pool_models=["ConvNet"], epochs=1, iterations=1, batch_size=8, pool_train_steps=0, pool_batch_size=8,
              progress=False)

    def objective_from(cell, w=0.01):
        ns = {}
        exec(compile(cell, "<notebook cell>", "exec"), ns)
        return ns["make_objective"](w)

    first = stage2(st, ds, objective_from(_OBJECTIVE_CELL), **kw)
    assert not first.meta["cache_hit"]
    again = stage2(st, ds, objective_from(_OBJECTIVE_CELL), **kw)                 # same code, same weight
    assert again.meta["cache_hit"] and torch.equal(again.G.fc.weight, first.G.fc.weight)
    edited = _OBJECTIVE_CELL.replace('reduction="mean"', 'reduction="sum"')
    miss = stage2(st, ds, objective_from(edited), **kw)
    assert not miss.meta["cache_hit"] and miss.meta["cache"] != first.meta["cache"]
    assert not stage2(st, ds, objective_from(_OBJECTIVE_CELL, 0.5), **kw).meta["cache_hit"]
    assert objective_fingerprint(objective_from(_OBJECTIVE_CELL)) == objective_fingerprint(
        objective_from(_OBJECTIVE_CELL))
    with pytest.raises(TypeError, match="objective must be a Python function"):
        objective_fingerprint(object())


# --------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("protocol", EVAL_PROTOCOLS)
def test_evaluate_generator_protocols(protocol):
    ds = tiny_dataset()
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    r = evaluate_generator(G, ds, 2, protocol=protocol, model="ConvNet", num_models=1, epochs=2,
                               batch_size=4, progress=False)
    assert r.protocol == protocol and len(r.accs) == 1 and 0 <= r.mean <= 100
    assert r.as_dict()["protocol"] == protocol


def test_evaluator_show_columns_are_classes():
    """Each panel is ddkit.runs.viz.class_grid of the generator's samples, classes as columns (same noise per panel)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ddkit.runs.viz import class_grid

    ds = tiny_dataset()
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    fig = GeneratorEvaluator(ds, [1], seed=1).show({"a": G, "b": G}, ipc=3)
    x, y = G.sample(3, seed=1)
    want = class_grid(x, y, ds, classes_as="columns")
    assert want.shape == (3 * 29 - 1, 4 * 29 - 1)   # 3 rows of samples, 4 columns of classes, 1 px gaps
    for ax in fig.axes:
        assert (ax.get_images()[0].get_array() == want).all()
    plt.close(fig)


def test_fixed_sets_per_model_trains_network_i_on_the_set_of_seed_plus_i():
    from ddkit.evaluate import evaluate_synset

    ds = tiny_dataset()
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    kw = dict(model="ConvNet", epochs=2, batch_size=4, progress=False)
    per = evaluate_generator(G, ds, 1, num_models=2, seed=3, fixed_sets="per_model", **kw)
    want = [evaluate_synset(*G.sample(1, seed=3 + i), ds, num_models=1, seed=3 + i, **kw, graphs=False).accs[0] for i in range(2)]
    assert per.accs == pytest.approx(want) and per.fixed_sets == "per_model"
    one = evaluate_generator(G, ds, 1, num_models=2, seed=3, fixed_sets="one", **kw)
    assert one.accs == pytest.approx(evaluate_synset(*G.sample(1, seed=3), ds, num_models=2, seed=3, **kw, graphs=False).accs)
    rr = GeneratorEvaluator(ds, [1], "fixed", num_models=2, seed=3, fixed_sets="per_model", model="ConvNet",
                            epochs=2, progress=False).random_real()[1]
    assert len(rr.accs) == 2 and rr.as_dict()["fixed_sets"] == "per_model"
    with pytest.raises(ValueError, match="unknown fixed_sets 'many'"):
        evaluate_generator(G, ds, 1, fixed_sets="many", **kw)


def scripted_accuracy(monkeypatch, values):
    """``ddkit.evaluate.accuracy`` returns ``values`` in call order (a tiny net on random data sits at
    chance, so a "best" of a flat curve cannot tell the best epoch from the last one); returns the
    list of calls made, to check that every scripted value was used."""
    from ddkit import evaluate as evalmod
    script, calls = iter(values), []

    def fake(net, x, y, **kw):
        calls.append(len(x))
        return next(script)
    monkeypatch.setattr(evalmod, "accuracy", fake)
    return calls


def test_evaluator_both_protocols_rows_and_entries(monkeypatch):
    ds = tiny_dataset()
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    kw = dict(model="ConvNet", num_models=1, epochs=3, progress=False)
    # call order: random real (last epoch), G fixed (last epoch), G dim (epochs 1, 2, 3)
    calls = scripted_accuracy(monkeypatch, [30.0, 40.0, 60.0, 80.0, 70.0])
    ev = GeneratorEvaluator(ds, [1], "both", dim_batch=4, dim_test_every=1, **kw)
    ev.random_real()
    ev.generators({"G": G})
    res = ev.results
    assert len(calls) == 5
    assert list(res) == [("Random real", "fixed"), ("G", "fixed"), ("G", "dim")]
    table = ev.table("ConvNet")
    best = f"G · dim · {BEST_TEST_LABEL}"
    assert list(table.index) == ["Random real · fixed", "G · fixed", "G · dim", best]
    assert list(table["protocol"]) == ["fixed", "fixed", "dim", "dim"]
    assert list(table["selection"]) == ["last", "last", "last", "best_test"]
    # the best-test row is the best test evaluation (80 at epoch 2), not the last one (70)
    curve = res["G", "dim"][1].curve
    assert [(p["epoch"], p["test"]) for p in curve] == [(1, [60.0]), (2, [80.0]), (3, [70.0])]
    assert res["G", "dim"][1].select("best_test").accs == [80.0]
    assert res["G", "dim"][1].accs == [70.0]
    assert list(table["IPC 1"]) == ["30.00 ± 0.00", "40.00 ± 0.00", "70.00 ± 0.00", "80.00 ± 0.00"]
    # one evaluation entry per (method, protocol, selection): ours under both protocols
    entries = ev.entries()
    keys = [(e["method"], e["protocol"]["name"], e["protocol"]["selection"]) for e in entries]
    assert keys == [("Random real", "fixed", "last"), ("G", "fixed", "last"), ("G", "dim", "last"),
                    ("G", "dim", "best_test")]
    dim_entry = entries[2]["protocol"]
    assert dim_entry["steps_per_epoch"] == 4 * 1 // 4 + 1 and dim_entry["schedule"] == "constant"
    assert dim_entry["dsa"] == "color_crop" and dim_entry["labels"] == "random"
    assert ev.protocols == ["fixed", "dim"] and GeneratorEvaluator(ds, [1], "dim").protocols == ["dim"]
    assert GeneratorEvaluator(ds, [1], "dim").random_real() == {}      # a fixed set: not under "dim"
    with pytest.raises(ValueError, match="eval protocol"):
        GeneratorEvaluator(ds, [1], "resample")
    with pytest.raises(ValueError, match="ipc"):
        GeneratorEvaluator(ds, [0])


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_value_error():
    ds = tiny_dataset()
    with pytest.raises(ValueError, match="gan_loss"):
        build_gan(ds, gan_loss="lsgan")
    with pytest.raises(ValueError, match="gan_loss"):
        generator_loss(_StubD(), torch.zeros(1, 1, 1, 2), torch.tensor([0]), "hinge")
    with pytest.raises(ValueError, match="pool model"):
        GANModelPool(["ConvNet", "Transformer"], 1, 4, 28)
    with pytest.raises(ValueError, match="image sizes"):
        ConditionalGenerator(10, 3, 64)
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8)
    with pytest.raises(ValueError, match="labels"):
        G.generate([0, 4])
    with pytest.raises(ValueError, match="labels"):
        G.generate(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="z must be"):
        G(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ipc"):
        G.sample(0)
    with pytest.raises(ValueError, match="protocol"):
        evaluate_generator(G, ds, 1, protocol="best")
    with pytest.raises(ValueError, match="form"):
        dim_objective(0.01, "l2")
    with pytest.raises(ValueError, match="w_global"):
        dim_objective(-0.01)


def test_dim_objective_forms_by_hand():
    net = nn.Linear(2, 3)
    net.requires_grad_(False)
    xr, xs, y = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    b = GeneratorBatch(net, xr, y, xs, y, 0, 0, 0)
    d = dim_objective(0.01, "dim")(b)
    want = ((F.log_softmax(net(xr), 1) - F.log_softmax(net(xs), 1)) ** 2).mean()
    assert torch.allclose(d["global"], want) and torch.allclose(d["loss"], 0.01 * want)
    p = dim_objective(0.5, "paper")(b)
    assert torch.allclose(p["loss"], 0.5 * ((net(xr) - net(xs)) ** 2).sum())


def test_gan_checks_check_params():
    from ddkit.runs.params import check_params

    spec = GAN_CHECKS
    good = dict(gan_loss="wgan_gp", gan_epochs=1, gan_seed=-1, gan_iters=0, gan_batch_size=8, gan_lr=1e-4, gan_betas=[0.0, 0.9],
                d_steps=1, gp_lambda=10.0, aux_weight=1.0, z_dim=8, gen_width=8, disc_width=8, match_epochs=1,
                batch_size=8, match_lr=5e-6, gan_weight=1.0, pool_models=["ConvNet", "ResNet18"],
                pool_train_steps=1, pool_batch_size=8, mid_layer=-1, deploy_ipcs=[1, 10],
                eval_protocol="fixed", fixed_sets="per_model", baselines=["cgan", "dim"], dim_form="dim",
                gan_checkpoint="", use_cache=True, fake_aux=True, step_order="g_first", d_labels="random",
                gen_arch="dim", gen_conditioning="concat", match_betas=[0.0, 0.9], match_aug="color_crop_cutout",
                pool_dsa="color_crop", pool_lr=0.01, dim_batch=64, dim_test_every=200)
    check_params(good, spec, defaults=good)
    for key, bad, msg in [("gan_loss", "lsgan", "gan_loss"), ("pool_models", ["ConvNet", "Nope"], "unknown model"),
                          ("gan_weight", -1.0, "gan_weight"), ("eval_protocol", "x", "eval_protocol"),
                          ("gan_checkpoint", "/nonexistent.pt", "checkpoint"),
                          ("gan_betas", [0.5, 1.0], "gan_betas=1.0 is too large; expected < 1"),
                          ("fixed_sets", "all", "fixed_sets"),
                          ("match_betas", [0.0, 1.2], "match_betas=1.2 is too large; expected < 1"),
                          ("match_aug", "color_blur", "unknown DSA op"), ("pool_dsa", "zoom", "unknown DSA op"),
                          ("step_order", "random", "step_order"), ("d_labels", "fake", "d_labels"),
                          ("gen_arch", "big", "gen_arch"), ("gen_conditioning", "add", "gen_conditioning"),
                          ("eval_protocol", "resample", "eval_protocol"), ("dim_batch", 0, "dim_batch"),
                          ("dim_test_every", 0, "dim_test_every"), ("pool_lr", 0.0, "pool_lr")]:
        with pytest.raises(ValueError, match=msg):
            check_params({**good, key: bad}, spec, defaults=good)
    rules = {"len(gan_betas) == 2 and len(match_betas) == 2": "Adam takes two betas"}   # the notebooks' rule
    with pytest.raises(ValueError, match="Adam takes two betas"):
        check_params({**good, "gan_betas": [0.9]}, spec, rules, defaults=good)


def test_stage1_refuses_a_foreign_checkpoint_and_bad_betas(tmp_path):
    other = tiny_dataset(name="other", channels=3, size=32)
    path = save_checkpoint(build_gan(other, z_dim=8, gen_width=8, disc_width=8), tmp_path / "g.pt")
    with pytest.raises(ValueError, match="Adam takes two betas"):
        stage1(tiny_dataset(), gan_betas=(0.0, 1.5), gan_epochs=1, use_cache=False)
    with pytest.raises(ValueError, match="trained for dataset='other'"):
        stage1(tiny_dataset(), checkpoint=str(path))


# --------------------------------------------------------------------------- DiM's pipeline

def _convs(module):
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("size,first_kernel", [(28, 3), (32, 4)])
def test_dim_generator_architecture(size, first_kernel):
    G = ConditionalGenerator(10, 1, size, z_dim=100, width=12, arch="dim")
    convs = _convs(G.net)
    assert len(convs) == 8                                       # DiM: 8 conv layers
    kinds = ["T" if isinstance(m, nn.ConvTranspose2d) else "C" for m in convs]
    assert kinds == ["T", "C", "C", "C", "T", "C", "T", "C"]
    assert convs[0].kernel_size == (first_kernel, first_kernel) and convs[-1].out_channels == 1
    # BN + ReLU after every conv but the last, then tanh
    mods = list(G.net)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in mods) == 7 and isinstance(mods[-1], nn.Tanh)
    shapes, h = [], torch.zeros(2, 12, 4, 4)
    for m in mods:
        h = m(h)
        if isinstance(m, nn.ConvTranspose2d):
            shapes.append(h.shape[-1])
    assert shapes == ([7, 14, 28] if size == 28 else [8, 16, 32])
    assert len(_convs(ConditionalGenerator(10, 1, size, width=12, arch="compact").net)) == 4
    with pytest.raises(ValueError, match="gen_arch='big'"):
        ConditionalGenerator(10, 1, size, arch="big")


def test_overwrite_conditioning_replaces_the_first_entries_of_z():
    G = ConditionalGenerator(4, 1, 28, z_dim=10, width=8, conditioning="overwrite").eval()
    assert G.fc.in_features == 10
    z, y = torch.randn(3, 10), torch.tensor([0, 1, 3])
    z2 = z.clone()
    z2[:, :4] = 5.0                                              # overwritten by the one-hot
    assert torch.equal(G(z, y), G(z2, y))
    z3 = z.clone()
    z3[:, 6] += 1.0                                              # a kept entry
    assert not torch.allclose(G(z, y), G(z3, y))
    assert not torch.allclose(G(z, y), G(z, torch.tensor([1, 1, 3])))
    assert ConditionalGenerator(4, 1, 28, z_dim=10, width=8).fc.in_features == 14   # concat
    with pytest.raises(ValueError, match="z_dim must be >= 4"):
        ConditionalGenerator(4, 1, 28, z_dim=3, conditioning="overwrite")


def test_checkpoint_keeps_architecture(tmp_path):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8, gen_arch="compact", gen_conditioning="overwrite")
    back = load_checkpoint(save_checkpoint(st, tmp_path / "g.pt"), ds)
    assert back.G.arch == "compact" and back.G.conditioning == "overwrite"
    st.G.eval(), back.G.eval()
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    assert torch.equal(st.G(z, y), back.G(z, y))


def test_fake_class_cross_entropy_on_the_discriminator_by_hand():
    D = _StubD()
    xr, xf = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    y, yf = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])
    sr, sf = D(xr)[0], D(xf)[0]
    gp_hand = (0.5 * math.sqrt(2) - 1) ** 2
    ce_real, ce_fake = F.cross_entropy(D(xr)[1], y), F.cross_entropy(D(xf)[1], yf)
    d = discriminator_loss(D, xr, y, xf, yf, "wgan_gp", gp_lambda=10.0, fake_aux=True)
    # DiM: s_fake - s_real + CE(c(x_fake), y_fake) + CE(c(x_real), y_real) + lambda * GP
    assert torch.allclose(d["loss"], sf.mean() - sr.mean() + ce_fake + ce_real + 10 * gp_hand, atol=1e-5)
    assert torch.allclose(d["aux_fake"], ce_fake)
    half = discriminator_loss(D, xr, y, xf, yf, "wgan_gp", aux_weight=0.5, fake_aux=True)
    assert torch.allclose(half["loss"], sf.mean() - sr.mean() + 0.5 * (ce_fake + ce_real) + 10 * gp_hand,
                          atol=1e-5)
    off = discriminator_loss(D, xr, y, xf, yf, "wgan_gp", fake_aux=False)
    assert "aux_fake" not in off and torch.allclose(off["loss"], d["loss"] - ce_fake, atol=1e-5)


def _record_gan_calls(monkeypatch, state):
    """Record the order of the G/D optimiser steps and the labels D's fakes get."""
    order, labels = [], []
    for name, opt in (("g", state.opt_g), ("d", state.opt_d)):
        step = opt.step
        monkeypatch.setattr(opt, "step", lambda *a, _s=step, _n=name, **k: (order.append(_n), _s(*a, **k))[1])
    real_loss = discriminator_loss

    def spy(D, xr, yr, xf, yf, *a, **k):
        labels.append((yr.clone(), yf.clone()))
        return real_loss(D, xr, yr, xf, yf, *a, **k)

    monkeypatch.setattr(gan_train, "discriminator_loss", spy)   # what the GAN steps call
    return order, labels


@pytest.mark.parametrize("step_order,d_labels", [("d_first", "real"), ("g_first", "random")])
def test_stage1_step_order_and_d_labels(monkeypatch, step_order, d_labels):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    order, labels = _record_gan_calls(monkeypatch, st)
    train_gan(st, ds, epochs=1, batch_size=16, iters_per_epoch=3, progress=False, step_order=step_order,
                  d_labels=d_labels, fake_aux=True)
    assert order == (["d", "g"] * 3 if step_order == "d_first" else ["g", "d"] * 3)
    same = [torch.equal(yr, yf) for yr, yf in labels]
    assert all(same) if d_labels == "real" else not any(same)
    assert "d_aux_fake" in st.history[-1]
    with pytest.raises(ValueError, match="step_order='both'"):
        train_gan(st, ds, epochs=2, step_order="both", progress=False)


def test_stage2_dim_order_betas_and_iterations(monkeypatch):
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    pool = GANModelPool(["ConvNet"], 1, 4, (28, 28), width=8, batch_size=8)
    tuned = match_generator(st, ds, dim_objective(0.01), pool=pool, epochs=2, iterations=5, batch_size=8,
                                lr=3e-4, betas=(0.5, 0.99), pool_train_steps=0, progress=False)
    for opt in (tuned.opt_g, tuned.opt_d):                       # stage-2 optimiser from the arguments
        assert opt.param_groups[0]["betas"] == (0.5, 0.99) and opt.param_groups[0]["lr"] == 3e-4
    assert len(tuned.history) == 5 and [h["epoch"] for h in tuned.history] == [0, 0, 0, 1, 1]
    assert all(h["w_gan"] == h["g_loss"] for h in tuned.history)          # gan_weight 1
    order, labels = _record_gan_calls(monkeypatch, st)
    st2 = st.copy()
    monkeypatch.setattr(GANState, "copy", lambda self, lr=None, betas=None: st)   # record on st's optimisers
    match_generator(st2, ds, dim_objective(0.01), pool=pool, epochs=1, iterations=2, batch_size=8,
                        pool_train_steps=0, progress=False, step_order="g_first", d_labels="random")
    assert order == ["g", "d", "g", "d"] and not any(torch.equal(a, b) for a, b in labels)
    with pytest.raises(ValueError, match="match_betas"):
        match_generator(st, ds, dim_objective(0.01), pool=pool, epochs=1, betas=(0.5,), progress=False)


def test_stage2_schedule_by_hand():
    assert stage2_schedule(3, 10, 1000, 64) == [4, 3, 3]       # exactly `iterations` updates
    assert stage2_schedule(2, 0, 100, 32) == [3, 3]            # DiM: full passes, last batch dropped
    assert stage2_schedule(1, 7, 10, 64) == [7]
    with pytest.raises(ValueError, match="iterations=2 < match_epochs=3"):
        stage2_schedule(3, 2, 100, 8)
    with pytest.raises(ValueError, match="iterations=-1"):
        stage2_schedule(3, -1, 100, 8)


def test_stage2_passes_every_optimiser_setting():
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    out = stage2(st, ds, dim_objective(0.01), use_cache=False, pool_models=["ConvNet"], mid_layer=None,
                 pool_batch_size=8, pool_lr=0.05, pool_dsa="color_crop", epochs=1, iterations=3, batch_size=8,
                 lr=2e-4, betas=(0.5, 0.999), pool_train_steps=1, gan_weight=1.0, gp_lambda=10.0, aux_weight=1.0,
                 step_order="g_first", d_labels="random", fake_aux=True, match_aug="color_crop_cutout", seed=0,
                 progress=False)
    assert out.opt_g.param_groups[0]["betas"] == (0.5, 0.999) and out.opt_d.param_groups[0]["lr"] == 2e-4
    s2 = out.params["stage2"]
    assert s2["pool_lr"] == 0.05 and s2["pool_dsa"] == "color_crop" and s2["match_aug"] == "color_crop_cutout"
    assert len(out.history) == 3 and "d_aux_fake" in out.history[-1]


# --------------------------------------------------------------------------- augmentation

def test_pool_warm_up_uses_dsa_on_every_batch():
    ds = tiny_dataset()
    pool = GANModelPool(["ConvNet"], 1, 4, (28, 28), width=8, batch_size=6, dsa="color_crop")
    assert pool.dsa.strategy == "color_crop"
    seen = []
    real_dsa = pool.dsa

    def spy(x, generator=None):
        out = real_dsa(x, generator=generator)
        seen.append((x, out))
        return out

    pool.dsa = spy
    pool.draw(make_generator(0))
    pool.warm(ds, 3, make_generator(1))
    assert len(seen) == 3 and all(x.shape == (6, 1, 28, 28) for x, _ in seen)
    assert all(not torch.equal(x, out) for x, out in seen)           # the model saw augmented batches
    assert GANModelPool(["ConvNet"], 1, 4, 28, dsa="").dsa is None
    with pytest.raises(ValueError, match="unknown DSA op"):
        GANModelPool(["ConvNet"], 1, 4, 28, dsa="color_blur")


def test_siamese_augment_one_draw_for_the_whole_batch():
    from ddkit.augment import DSA

    aug = DSA("color_crop_cutout")
    g = make_generator(0)
    xr = torch.randn(5, 1, 28, 28)
    xs = xr.flip(0).clone().requires_grad_(True)                   # the same images, reversed
    ar, as_ = siamese_augment(aug, xr, xs, g)
    assert torch.allclose(as_, ar.flip(0), atol=1e-6)               # same draw for every image, both sides
    assert not torch.allclose(ar, xr)
    as_.sum().backward()
    assert xs.grad is not None and xs.grad.abs().sum() > 0         # differentiable w.r.t. the synthetic side


def test_match_aug_feeds_augmented_pairs_to_the_objective():
    ds = tiny_dataset()
    st = build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    seen = []

    def objective(b):
        seen.append(b.x_real.detach().clone())
        return dim_objective(0.01)(b)

    pool = GANModelPool(["ConvNet"], 1, 4, (28, 28), width=8, batch_size=8)
    for aug in ("", "color"):
        seen.clear()
        match_generator(st, ds, objective, pool=pool, epochs=1, iterations=2, batch_size=8, pool_train_steps=0,
                            gan_weight=0.0, progress=False, match_aug=aug)
        dist = [(x.flatten(1)[:, None] - ds.x_train.flatten(1)[None]).abs().amax(2).min(1).values.max() for x in seen]
        if aug:
            assert all(d > 1e-3 for d in dist)                     # not the raw training images
        else:
            assert all(d < 1e-4 for d in dist)


# --------------------------------------------------------------------------- the dim protocol

def test_dim_steps_per_epoch_formula():
    assert dim_steps_per_epoch(10, 1, 64) == 10 * 1 // 64 + 1 == 1
    assert dim_steps_per_epoch(10, 10, 64) == 2
    assert dim_steps_per_epoch(10, 50, 128) == 4
    with pytest.raises(ValueError, match="dim_batch"):
        dim_steps_per_epoch(10, 1, 0)


def test_dim_protocol_draws_new_images_every_step(monkeypatch):
    ds = tiny_dataset()
    scripted_accuracy(monkeypatch, [80.0, 60.0])
    G = ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    calls = []
    G.register_forward_hook(lambda m, inp, out: calls.append((inp[0].clone(), inp[1].clone(), m.training)))
    r = evaluate_generator(G, ds, 3, protocol="dim", model="ConvNet", num_models=1, epochs=2, dim_batch=5,
                               dim_test_every=1, progress=False)
    steps = 4 * 3 // 5 + 1
    assert r.settings["steps_per_epoch"] == steps == 3
    assert len(calls) == 2 * steps                                 # one generated batch per training step
    assert all(z.shape == (5, 8) and not training for z, _, training in calls)
    for (z0, y0, _), (z1, y1, _) in zip(calls, calls[1:]):
        assert not torch.allclose(z0, z1)                           # fresh noise at every step
    assert len({tuple(y.tolist()) for _, y, _ in calls}) > 1       # random labels, redrawn
    assert r.settings["schedule"] == "constant" and r.settings["dsa"] == "color_crop"
    assert [(p["epoch"], p["test"]) for p in r.curve] == [(1, [80.0]), (2, [60.0])]
    assert r.selection["best_test"] == [80.0] and r.selection["last"] == r.accs == [60.0]
    assert r.select("best_test").selected == "best_test" and r.select("best_test").accs == [80.0]
    with pytest.raises(ValueError, match="selection 'best_val' not recorded"):
        r.select("best_val")


# --------------------------------------------------------------------------- balance

def test_term_balance_by_hand():
    t = lambda a, b: {"global": torch.tensor(a), "local": torch.tensor(b)}   # noqa: E731
    fixed = TermBalance({"global": 0.01, "local": 0.001})
    out = fixed(t(2.0, 3000.0))
    assert out["w_global"].item() == pytest.approx(0.02) and out["loss"].item() == pytest.approx(3.02)
    eq = TermBalance({"global": 0.01, "local": 0.001}, "equal_start")
    s0 = 0.01 * 2.0 + 0.001 * 3000.0
    first = eq(t(2.0, 3000.0))
    assert first["w_global"].item() == pytest.approx(s0 / 2) == pytest.approx(first["w_local"].item())
    second = eq(t(4.0, 1000.0))                                    # weights kept from the first batch
    assert second["w_global"].item() == pytest.approx(s0 / 2 / 2.0 * 4.0)
    assert second["w_local"].item() == pytest.approx(s0 / 2 / 3000.0 * 1000.0)
    rm = TermBalance({"global": 0.01, "local": 0.001}, "running_mean")
    rm(t(2.0, 3000.0))
    second = rm(t(4.0, 1000.0))                                    # divided by the running means 3 and 2000
    assert second["w_global"].item() == pytest.approx(s0 / 2 * 4.0 / 3.0)
    assert second["w_local"].item() == pytest.approx(s0 / 2 * 1000.0 / 2000.0)
    x = torch.tensor(2.0, requires_grad=True)
    out = rm({"global": x, "local": torch.tensor(1.0)})
    out["loss"].backward()
    assert x.grad.item() == pytest.approx(out["w_global"].item() / 2.0)   # w_<t> is w L_t; w is constant
    with pytest.raises(ValueError, match="balance='auto'"):
        TermBalance({"global": 0.01}, "auto")
    with pytest.raises(ValueError, match="missing"):
        fixed({"global": torch.tensor(1.0)})


# --------------------------------------------------------------------------- claims over seeds

def _write_seed(root, seed, ours, dim, extra_param=0):
    from ddkit.runs.results import evaluation_entry, write_result

    rd = root / f"ev_s{seed}"
    rd.mkdir(parents=True)
    params = {"dataset": "x", "ipc": 1, "seed": seed, "run_name": f"ev_s{seed}", "lr": 0.1 + extra_param}
    ev = [evaluation_entry("GAN + SKD", ours, ipc=1, protocol={"name": "dim", "selection": "best_test"}),
          evaluation_entry("DiM", dim, ipc=1, protocol={"name": "dim", "selection": "best_test"})]
    write_result(rd, method="GAN + SKD", dataset="x", ipc=1, model="ConvNet", params=params, accs=ours,
                 seconds=1.0, evaluations=ev)
    return params


def test_paired_over_seeds_and_verdict_by_hand(tmp_path):
    _write_seed(tmp_path, 0, [80.0, 82.0], [79.0, 79.0])              # seed means 81 vs 79: +2
    _write_seed(tmp_path, 1, [70.5], [69.0])                          # +1.5
    _write_seed(tmp_path, 2, [74.5], [72.0])                          # +2.5
    _write_seed(tmp_path / "other", 3, [0.0], [99.0], extra_param=1)   # another configuration: ignored
    d = paired_over_seeds(tmp_path / "ev_s0", "GAN + SKD", "DiM", ipc=1, protocol="dim", selection="best_test")
    assert d["seeds"] == [0, 1, 2] and d["diffs"] == pytest.approx([2.0, 1.5, 2.5]) and d["mean"] == pytest.approx(2.0)
    half = 4.302652729911275 * 0.5 / math.sqrt(3)                      # t_{0.975, 2} * sd / sqrt(n), sd = 0.5
    assert d["lo"] == pytest.approx(2.0 - half) and claim_verdict(d).startswith("held (+2.00 points")
    assert claim_verdict({**d, "lo": -1.0, "hi": 3.0}).startswith("not shown")
    assert claim_verdict({**d, "lo": -3.0, "hi": -1.0}).startswith("reversed")
    with pytest.raises(ValueError, match="no run under"):
        paired_over_seeds(tmp_path / "ev_s0", "GAN + SKD", "DiM", ipc=10, protocol="dim")
    ev = GeneratorEvaluator(tiny_dataset(), [1], "dim")
    with pytest.raises(ValueError, match="no run under"):              # no last-epoch entries were saved
        ev.claim(tmp_path / "ev_s1", "GAN + SKD", "DiM")
    ev.selections = lambda: [("dim", "best_test", "best")]              # another seed's run finds the same seeds
    assert ev.claim(tmp_path / "ev_s1", "GAN + SKD", "DiM") == [(1, "best", claim_verdict(d))]
    table = evidence_markdown(tmp_path, "ev_s")
    row = next(line for line in table.splitlines() if line.startswith("| GAN + SKD |"))
    accs = torch.tensor([80.0, 82.0, 70.5, 74.5])                      # every network of every seed
    assert f"{accs.mean():.2f} ± {accs.std(unbiased=False):.2f}" in row and "+2.00" in row and "held" in row


def test_term_scales_by_hand():
    st = GANState(None, None, None, None, {}, history=[{"a": -1.0, "b": 2.0}, {"a": 3.0}, {"a": 5.0, "b": 4.0}])
    assert st.term_scales(["a", "b", "c"], window=2) == {"a": (2.0, 4.0), "b": (3.0, 3.0)}


# --------------------------------------------------------------------------- the notebooks' objective cells

def _objective_cell(stem):
    from pathlib import Path

    return run_tagged(Path(__file__).parents[1] / "notebooks" / f"{stem}.ipynb", "objective")


def _batch():
    from ddkit.models import get_model

    net = get_model("ConvNet", 1, 4, (28, 28), width=8)
    reinit_(net, make_generator(0))
    net.requires_grad_(False)
    g = make_generator(1)
    xr, xs = torch.randn(6, 1, 28, 28, generator=g), torch.randn(6, 1, 28, 28, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    return GeneratorBatch(net, xr, y, xs, y, net.mid_layer, 0, 0)


def test_notebook_01_objective_cell_by_hand():
    ns = _objective_cell("01_gan_global_local")
    b = _batch()
    out = ns["make_global_local_objective"](0.01, 0.001, "dim")(b)
    glob = ((F.log_softmax(b.net(b.x_real), 1) - F.log_softmax(b.net(b.x_syn), 1)) ** 2).mean()
    fr, fs = b.net.feature_maps(b.x_real)[b.mid_layer], b.net.feature_maps(b.x_syn)[b.mid_layer]
    loc = (fr.mean(0) - fs.mean(0)).abs().sum()                      # DiM: L1 of batch-mean feature maps
    assert torch.allclose(out["loss"], 0.01 * glob + 0.001 * loc, rtol=1e-5)
    assert torch.allclose(out["w_global"], 0.01 * glob, rtol=1e-5) and torch.allclose(out["w_local"], 0.001 * loc, rtol=1e-5)
    eq = ns["make_global_local_objective"](0.01, 0.001, "dim", "equal_start")(b)
    assert torch.allclose(eq["w_global"], eq["w_local"]) and torch.allclose(eq["loss"], out["loss"], rtol=1e-5)


def test_notebook_02_objective_cell_by_hand():
    ns = _objective_cell("02_gan_skd")
    b = _batch()
    lr, ls = b.net(b.x_real), b.net(b.x_syn)
    z = lambda x: (x - x.mean(1, keepdim=True)) / ((x.std(1, keepdim=True) + 1e-7) * 2.0)   # noqa: E731 (Eq. 3)
    pr, ps = F.softmax(z(lr), 1), F.softmax(z(ls), 1)
    kl = (pr * (pr.log() - ps.log())).sum(1).mean()                  # Eq. 6, batch mean
    out = ns["make_skd_objective"](0.01, 2.0, True)(b)
    assert torch.allclose(out["loss"], 0.01 * 4.0 * kl, rtol=1e-4) and torch.allclose(out["w_skd"], out["loss"])
    raw = ns["make_skd_objective"](0.01, 2.0, False)(b)             # No Stand.: softmax(x / tau)
    qr, qs = F.softmax(lr / 2.0, 1), F.softmax(ls / 2.0, 1)
    assert torch.allclose(raw["skd"], (qr * (qr.log() - qs.log())).sum(1).mean(), rtol=1e-4)


def test_evaluator_selections_by_hand():
    assert GeneratorEvaluator(tiny_dataset(), [1], "both").selections() == [
        ("fixed", "last", "fixed, last epoch"), ("dim", "last", "dim, last epoch"),
        ("dim", "best_test", "dim (best test eval: test-set selection)")]


def test_tagged_cell_loader_refuses_a_missing_tag():
    from pathlib import Path

    from ddkit.runs.notebook_cells import tagged_source

    nb = Path(__file__).parents[1] / "notebooks" / "02_gan_skd.ipynb"
    assert "def make_skd_objective" in tagged_source(nb, "objective")
    with pytest.raises(ValueError, match="expected exactly one cell tagged 'no-such-tag', found 0"):
        tagged_source(nb, "no-such-tag")


@pytest.mark.parametrize("notebook", ["01_gan_global_local.ipynb", "02_gan_skd.ipynb"])
def test_every_params_run_of_01_and_02_passes_the_notebooks_own_check(notebook, tmp_path):
    """Every run of params/paper, params/cpu and params/evidence for the notebook passes the notebook's
    check cell (its CHECKS and ``check_notebook_params``), with the notebook's own parameter names."""
    import json
    from pathlib import Path

    from ddkit.batch import sweep

    root = Path(__file__).parents[1]
    cells = json.loads((root / "notebooks" / notebook).read_text())["cells"]
    at = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    check = "".join(next(c for c in cells[at + 1:] if c["cell_type"] == "code")["source"])
    checked = 0
    for path in sorted((root / "params").rglob("*.yaml")):
        if path.relative_to(root / "params").parts[0] not in ("paper", "cpu", "evidence"):
            continue
        try:
            runs = sweep.validate_params_file(path, notebooks_dir=root / "notebooks")
        except ValueError:
            continue                                   # files of other shapes: tests/test_sweep.py
        for run in (r for r in runs if Path(r.notebook).name == notebook):
            ns = run_tagged(root / "notebooks" / notebook, "parameters")
            ns.update({k: v for k, v in run.params.items() if k != "results_dir"}, results_dir=str(tmp_path))
            try:
                exec(check, ns)
            except ValueError as e:
                raise AssertionError(f"{path.relative_to(root)}:{run.label}: {e}") from None
            checked += 1
    assert checked >= 10
