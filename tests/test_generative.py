"""ddkit.generative: networks, GAN losses, checkpoints, cache, pool, stage 2, evaluation."""
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit import generative as gen
from ddkit.data import ImageDataset, load_dataset
from ddkit.losses import feature_matching_loss, logit_matching_loss
from ddkit.utils import make_generator

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
    G = gen.ConditionalGenerator(10, channels, size, z_dim=16, width=8)
    D = gen.Discriminator(10, channels, size, width=8)
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
    G = gen.ConditionalGenerator(3, 1, 28, z_dim=8, width=8, mean=[0.1307], std=[0.3081])
    x = G.generate([0, 1, 2], generator=make_generator(1))
    assert x.min() >= (0 - 0.1307) / 0.3081 - 1e-5 and x.max() <= (1 - 0.1307) / 0.3081 + 1e-5


def test_conditioning_changes_output_and_is_deterministic():
    G = gen.ConditionalGenerator(10, 1, 28, z_dim=16, width=8).eval()
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
    D = gen.Discriminator(4, 1, 28, width=8, projection=True)
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
    gp = gen.gradient_penalty(critic, xr, xf, generator=make_generator(0))
    assert torch.allclose(gp, torch.tensor((5.0 - 1.0) ** 2))


def test_gradient_penalty_quadratic_critic_by_hand():
    critic = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)   # noqa: E731  grad = x_hat
    xr = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    xf = torch.tensor([[[[3.0, 0.0]]], [[[0.0, 2.0]]]])
    eps = torch.tensor([0.5, 0.25])
    gp = gen.gradient_penalty(critic, xr, xf, eps=eps)
    x_hat = [[2.0, 1.0], [0.0, 1.5]]                   # eps * xr + (1 - eps) * xf
    norms = [math.hypot(*v) for v in x_hat]
    want = sum((nv - 1) ** 2 for nv in norms) / 2
    assert abs(gp.item() - want) < 1e-5
    # differentiable (create_graph): the penalty has a gradient w.r.t. the critic's params
    lin = nn.Linear(2, 1)
    gp2 = gen.gradient_penalty(lambda x: lin(x.flatten(1)).squeeze(1), xr, xf, eps=eps)
    gp2.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


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
    d = gen.discriminator_loss(D, xr, y, xf, y, "wgan_gp", gp_lambda=10.0)
    sr, sf = D(xr)[0], D(xf)[0]
    gp_hand = (0.5 * math.sqrt(2) - 1) ** 2           # ||grad|| = |w| * sqrt(2)
    ce = F.cross_entropy(D(xr)[1], y)
    assert torch.allclose(d["gp"], torch.tensor(gp_hand), atol=1e-6)
    assert torch.allclose(d["loss"], sf.mean() - sr.mean() + 10 * gp_hand + ce, atol=1e-5)
    g = gen.generator_loss(D, xf, y, "wgan_gp")
    assert torch.allclose(g["loss"], -sf.mean() + F.cross_entropy(D(xf)[1], y), atol=1e-6)


def test_cgan_losses_by_hand():
    D = _StubD()
    xr, xf = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    y = torch.tensor([0, 1, 2, 0])
    sr, sf = D(xr)[0], D(xf)[0]
    d = gen.discriminator_loss(D, xr, y, xf, y, "cgan")
    # -[log D(x|y) + log(1 - D(G(z)|y))], D = sigmoid
    want = -(torch.log(torch.sigmoid(sr)).mean() + torch.log(1 - torch.sigmoid(sf)).mean())
    assert torch.allclose(d["loss"], want, atol=1e-5) and "gp" not in d and "aux" not in d
    g = gen.generator_loss(D, xf, y, "cgan")
    assert torch.allclose(g["loss"], -torch.log(torch.sigmoid(sf)).mean(), atol=1e-5)
    g_sat = gen.generator_loss(D, xf, y, "cgan", saturating=True)
    assert torch.allclose(g_sat["loss"], torch.log(1 - torch.sigmoid(sf)).mean(), atol=1e-5)


@pytest.mark.parametrize("loss", gen.GAN_LOSSES)
def test_real_networks_losses_backprop(loss):
    ds = tiny_dataset()
    st = gen.build_gan(ds, z_dim=8, gen_width=8, disc_width=8, gan_loss=loss)
    gen.train_gan(st, ds, epochs=1, batch_size=8, iters_per_epoch=2, progress=False)
    assert len(st.history) == 2 and all(math.isfinite(v) for v in st.history[-1].values()
                                        if isinstance(v, float))
    assert st.epochs_done == 1


# --------------------------------------------------------------------------- checkpoints & cache

def test_checkpoint_round_trip(tmp_path):
    ds = tiny_dataset()
    st = gen.build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    st.params = {"gan_epochs": 1, "betas": [0.0, 0.9], "lr": 1e-4}
    gen.train_gan(st, ds, epochs=1, batch_size=8, iters_per_epoch=2, progress=False)
    path = gen.save_checkpoint(st, tmp_path / "g.pt")
    back = gen.load_checkpoint(path, ds)
    st.G.eval(), back.G.eval()
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    assert torch.equal(st.G(z, y), back.G(z, y))
    for a, b in zip(st.D.state_dict().values(), back.D.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = st.opt_g.state_dict()["state"], back.opt_g.state_dict()["state"]
    assert torch.equal(sa[0]["exp_avg"], sb[0]["exp_avg"])
    assert back.params["gan_epochs"] == 1 and back.epochs_done == 1 and len(back.history) == 2
    obj = torch.load(path, weights_only=True)          # plain weights_only load works
    assert obj["meta"]["format"] == gen.CHECKPOINT_FORMAT


@pytest.mark.parametrize("other,key", [
    (dict(name="other"), "dataset"),
    (dict(channels=3), "channels"),
    (dict(size=32), "im_size"),
    (dict(classes=5), "num_classes"),
])
def test_mismatched_checkpoint_fails_clearly(tmp_path, other, key):
    ds = tiny_dataset()
    st = gen.build_gan(ds, z_dim=8, gen_width=8, disc_width=8)
    path = gen.save_checkpoint(st, tmp_path / "g.pt")
    kw = dict(name="tiny", channels=1, size=28, classes=4)
    kw.update(other)
    with pytest.raises(ValueError, match=key):
        gen.load_checkpoint(path, tiny_dataset(**kw))


def test_foreign_checkpoint_fails(tmp_path):
    torch.save({"meta": {"kind": "synset"}, "x": torch.zeros(1)}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="format"):
        gen.load_checkpoint(tmp_path / "s.pt", tiny_dataset())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        gen.load_checkpoint(tmp_path / "junk.pt", tiny_dataset())


def test_stage1_cache_and_resume(tmp_path):
    ds = tiny_dataset()
    kw = dict(z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_iters=2, cache_dir=tmp_path,
              progress=False)
    a = gen.stage1(ds, gan_epochs=1, **kw)
    assert not a.meta["cache_hit"] and len(list(tmp_path.glob("*.pt"))) == 1
    b = gen.stage1(ds, gan_epochs=1, **kw)
    assert b.meta["cache_hit"]
    for p, q in zip(a.G.state_dict().values(), b.G.state_dict().values()):
        assert torch.equal(p, q)
    # a killed 2-epoch run leaves a 1-epoch checkpoint under the 2-epoch key: it resumes
    cfg = dict(z_dim=8, gen_width=8, disc_width=8, gan_loss="wgan_gp", gan_lr=1e-4, gan_betas=[0.0, 0.9],
               gan_batch_size=8, gan_epochs=2, gan_iters=2, d_steps=1, gp_lambda=10.0, aux_weight=None,
               seed=0)
    shutil.copy(a.meta["cache"], tmp_path / f"{gen.stage1_key(ds, cfg)}.pt")
    c = gen.stage1(ds, gan_epochs=2, **kw)
    assert not c.meta["cache_hit"] and c.epochs_done == 2 and len(c.history) == 4
    d = gen.stage1(ds, gan_epochs=2, **{**kw, "cache_dir": tmp_path / "fresh"})
    for p, q in zip(c.G.state_dict().values(), d.G.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6)            # resumed == uninterrupted


# --------------------------------------------------------------------------- pool, stage 2

def test_pool_draw_and_mid_layer():
    ds = tiny_dataset(size=32, channels=3)
    pool = gen.GANModelPool(["ConvNet"], 3, 4, (32, 32), width=8)
    net = pool.draw(make_generator(0))
    assert pool.mid_layer == 1 and all(not p.requires_grad for p in net.parameters())
    before = [p.clone() for p in net.parameters()]
    pool.warm(ds, 2, make_generator(1))
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    logits, mid = gen.forward_logits_mid(net, ds.x_train[:3], pool.mid_layer)
    assert torch.allclose(logits, net(ds.x_train[:3]), atol=1e-5)
    assert mid.shape == net.feature_maps(ds.x_train[:3])[1].shape
    rpool = gen.GANModelPool(["resnet10"], 3, 4, (32, 32))
    rpool.draw(make_generator(0))
    assert rpool.current_name == "ResNet10" and rpool.mid_layer == 1      # layer2
    assert gen.GANModelPool(["ConvNet"], 3, 4, 32, mid_layer=2).draw() is not None
    with pytest.raises(ValueError, match="mid_layer"):
        gen.GANModelPool(["ConvNet"], 3, 4, 32, width=8, mid_layer=7).draw()


def _global_local(w_g, w_l):
    def objective(b):
        with torch.no_grad():
            l_real, f_real = gen.forward_logits_mid(b.net, b.x_real, b.mid_layer)
        l_syn, f_syn = gen.forward_logits_mid(b.net, b.x_syn, b.mid_layer)
        glob = logit_matching_loss(l_syn, l_real)
        loc = feature_matching_loss(f_syn, f_real)
        return {"loss": w_g * glob + w_l * loc, "global": glob, "local": loc}
    return objective


def test_global_local_training_lowers_heldout_matching_loss(mnist):
    st = gen.build_gan(mnist, z_dim=16, gen_width=16, disc_width=8, seed=0)
    objective = _global_local(1e-3, 1e-4)
    pool = gen.GANModelPool(["ConvNet"], 1, 10, (28, 28), width=16)
    tuned = gen.match_generator(st, mnist, objective, pool=pool, epochs=1, iters_per_epoch=25,
                                batch_size=32, lr=2e-3, pool_train_steps=0, gan_weight=0.0,
                                progress=False, seed=0)
    net = pool.current                                   # the same frozen network

    def heldout_loss(G):
        g = make_generator(123)
        total = 0.0
        G.eval()
        with torch.no_grad():
            for i in range(3):                           # held-out = test-set batches
                xr, yr = mnist.x_test[i * 64:(i + 1) * 64], mnist.y_test[i * 64:(i + 1) * 64]
                xs = G.generate(yr, generator=g)
                b = gen.MatchBatch(net, xr, yr, xs, yr, pool.mid_layer, 0, 0)
                total += float(objective(b)["loss"])
        return total

    before, after = heldout_loss(st.G), heldout_loss(tuned.G)
    print("held-out matching loss before/after", before, after)
    assert after < 0.8 * before, (before, after)
    assert len(tuned.history) == 25 and "match_global" in tuned.history[0]


def test_dim_objective_runs_and_stage2_cache(tmp_path):
    ds = tiny_dataset()
    st = gen.stage1(ds, z_dim=8, gen_width=8, disc_width=8, gan_batch_size=8, gan_epochs=1, gan_iters=1,
                    cache_dir=tmp_path, progress=False)
    kw = dict(objective_key="dim_w0.01", pool_models=["ConvNet"], epochs=1, iters_per_epoch=2,
              batch_size=8, pool_train_steps=1, pool_batch_size=8, progress=False)
    a = gen.stage2(st, ds, gen.dim_objective(0.01), **kw)
    assert not a.meta["cache_hit"] and "match_global" in a.history[0]
    b = gen.stage2(st, ds, gen.dim_objective(0.01), **kw)
    assert b.meta["cache_hit"]
    # stage 2 works on a copy: the stage-1 generator (CGAN baseline) and its optimizer are untouched
    assert not torch.equal(st.G.fc.weight, a.G.fc.weight)
    s1, s2 = st.opt_g.state_dict()["state"][0], a.opt_g.state_dict()["state"][0]
    assert s1["exp_avg"].data_ptr() != s2["exp_avg"].data_ptr()
    assert not torch.equal(s1["exp_avg"], s2["exp_avg"]) and int(s1["step"]) == 1


# --------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("protocol", gen.EVAL_PROTOCOLS)
def test_evaluate_generator_protocols(protocol):
    ds = tiny_dataset()
    G = gen.ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    r = gen.evaluate_generator(G, ds, 2, protocol=protocol, model="ConvNet", num_models=1, epochs=2,
                               batch_size=4, progress=False)
    assert r.protocol == protocol and len(r.accs) == 1 and 0 <= r.mean <= 100
    assert r.as_dict()["protocol"] == protocol


def test_fixed_sets_per_model_trains_network_i_on_the_set_of_seed_plus_i():
    from ddkit.evaluate import evaluate_synset

    ds = tiny_dataset()
    G = gen.ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    kw = dict(model="ConvNet", epochs=2, batch_size=4, progress=False)
    per = gen.evaluate_generator(G, ds, 1, num_models=2, seed=3, fixed_sets="per_model", **kw)
    want = [evaluate_synset(*G.sample(1, seed=3 + i), ds, num_models=1, seed=3 + i, **kw).accs[0] for i in range(2)]
    assert per.accs == pytest.approx(want) and per.fixed_sets == "per_model"
    one = gen.evaluate_generator(G, ds, 1, num_models=2, seed=3, fixed_sets="one", **kw)
    assert one.accs == pytest.approx(evaluate_synset(*G.sample(1, seed=3), ds, num_models=2, seed=3, **kw).accs)
    rr = gen.random_real_eval(ds, 1, num_models=2, seed=3, fixed_sets="per_model", model="ConvNet", epochs=2,
                              progress=False)
    assert len(rr.accs) == 2 and rr.as_dict()["fixed_sets"] == "per_model"
    with pytest.raises(ValueError, match="unknown fixed_sets 'many'"):
        gen.evaluate_generator(G, ds, 1, fixed_sets="many", **kw)


def test_compare_methods_both_protocols_names_rows_and_keeps_fixed_headline():
    ds = tiny_dataset()
    G = gen.ConditionalGenerator(4, 1, 28, z_dim=8, width=8, mean=ds.mean, std=ds.std)
    table, res = gen.compare_methods({"G": G}, ds, [1], protocol="both", model="ConvNet", num_models=1,
                                     epochs=1, progress=False)
    assert list(res) == ["Random real", "G", "G · resample"]
    assert [res[n][1].protocol for n in res] == ["fixed", "fixed", "resample"]
    assert list(table["protocol"]) == ["fixed", "fixed", "resample"]
    assert gen.protocol_list("both") == ["fixed", "resample"] and gen.protocol_list("resample") == ["resample"]
    with pytest.raises(ValueError, match="eval protocol"):
        gen.protocol_list("all")


# --------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_value_error():
    ds = tiny_dataset()
    with pytest.raises(ValueError, match="gan_loss"):
        gen.build_gan(ds, gan_loss="lsgan")
    with pytest.raises(ValueError, match="gan_loss"):
        gen.generator_loss(_StubD(), torch.zeros(1, 1, 1, 2), torch.tensor([0]), "hinge")
    with pytest.raises(ValueError, match="pool model"):
        gen.GANModelPool(["ConvNet", "Transformer"], 1, 4, 28)
    with pytest.raises(ValueError, match="pool model"):
        gen.validate_gan_config(pool_models=["resnet99"])
    with pytest.raises(ValueError, match="w_local"):
        gen.validate_gan_config(weights={"w_local": -0.1})
    with pytest.raises(ValueError, match="eval_protocol"):
        gen.validate_gan_config(eval_protocol="best")
    with pytest.raises(ValueError, match="image sizes"):
        gen.ConditionalGenerator(10, 3, 64)
    G = gen.ConditionalGenerator(4, 1, 28, z_dim=8, width=8)
    with pytest.raises(ValueError, match="labels"):
        G.generate([0, 4])
    with pytest.raises(ValueError, match="labels"):
        G.generate(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="z must be"):
        G(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ipc"):
        G.sample(0)
    with pytest.raises(ValueError, match="protocol"):
        gen.evaluate_generator(G, ds, 1, protocol="best")
    with pytest.raises(ValueError, match="form"):
        gen.dim_objective(0.01, "l2")
    with pytest.raises(ValueError, match="w_global"):
        gen.dim_objective(-0.01)


def test_dim_objective_forms_by_hand():
    net = nn.Linear(2, 3)
    net.requires_grad_(False)
    xr, xs, y = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 2, 0])
    b = gen.MatchBatch(net, xr, y, xs, y, 0, 0, 0)
    d = gen.dim_objective(0.01, "dim")(b)
    want = ((F.log_softmax(net(xr), 1) - F.log_softmax(net(xs), 1)) ** 2).mean()
    assert torch.allclose(d["global"], want) and torch.allclose(d["loss"], 0.01 * want)
    p = gen.dim_objective(0.5, "paper")(b)
    assert torch.allclose(p["loss"], 0.5 * ((net(xr) - net(xs)) ** 2).sum())


def test_gan_spec_checks_params():
    from ddkit.params import check_params

    spec = gen.gan_spec()
    good = dict(gan_loss="wgan_gp", gan_epochs=1, gan_iters=0, gan_batch_size=8, gan_lr=1e-4, gan_betas=[0.0, 0.9],
                d_steps=1, gp_lambda=10.0, aux_weight=1.0, z_dim=8, gen_width=8, disc_width=8, match_epochs=1,
                batch_size=8, match_lr=5e-6, gan_weight=1.0, pool_models=["ConvNet", "ResNet18"],
                pool_train_steps=1, pool_batch_size=8, mid_layer=-1, deploy_ipcs=[1, 10],
                eval_protocol="fixed", fixed_sets="per_model", baselines=["cgan", "dim"], dim_form="dim",
                gan_checkpoint="",
                use_cache=True)
    check_params(good, spec)
    for key, bad, msg in [("gan_loss", "lsgan", "gan_loss"), ("pool_models", ["ConvNet", "Nope"], "pool model"),
                          ("gan_weight", -1.0, "gan_weight"), ("eval_protocol", "x", "eval_protocol"),
                          ("gan_checkpoint", "/nonexistent.pt", "checkpoint"),
                          ("gan_betas", [0.5, 1.0], "Adam beta"), ("fixed_sets", "all", "fixed_sets")]:
        with pytest.raises(ValueError, match=msg):
            check_params({**good, key: bad}, spec)


def test_check_notebook_params_refuses_foreign_checkpoint(tmp_path):
    from types import SimpleNamespace

    other = tiny_dataset(name="other", channels=3, size=32)
    path = gen.save_checkpoint(gen.build_gan(other, z_dim=8, gen_width=8, disc_width=8), tmp_path / "g.pt")
    P = SimpleNamespace(gan_loss="wgan_gp", pool_models=[], model="ConvNet", eval_protocol="fixed",
                        deploy_ipcs=[], ipc=1, baselines=["random"], gan_checkpoint=str(path), gan_betas=[0.0, 0.9])
    gen.check_notebook_params(P)                       # no dataset yet: names only
    P.gan_betas = [0.9]
    with pytest.raises(ValueError, match=r"gan_betas=\[0.9\]: Adam takes two betas"):
        gen.check_notebook_params(P)
    P.gan_betas = [0.0, 0.9]
    with pytest.raises(ValueError, match="Adam takes two betas"):   # the library entry point refuses it too
        gen.stage1(tiny_dataset(), gan_betas=(0.0, 1.5), gan_epochs=1, use_cache=False)
    with pytest.raises(ValueError, match="trained for dataset='other'"):
        gen.check_notebook_params(P, tiny_dataset())
    P.gan_checkpoint, P.ipc = "", 50                   # more random-real images than a class has
    with pytest.raises(ValueError, match="images per class"):
        gen.check_notebook_params(P, tiny_dataset())
