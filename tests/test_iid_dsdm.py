"""IID (notebook 03) and DSDM (notebook 04): the notebooks' objective cells, their parameter checks,
the DSDM memory-bank update and the shared helpers of ddkit.methods.dm (CPU, tiny tensors).

The objectives are tested where they live: the cell tagged ``objective`` of each notebook is
executed here, so the notebook and the test cannot drift apart."""
import json
from pathlib import Path

import pytest
import torch

from ddkit.data import ImageDataset
from ddkit.methods.distill import MatchBatch, init_synthetic, distill
from ddkit.methods.dm import embed_and_map
from ddkit.core.utils import make_generator, resolve_device
from ddkit.losses import PrototypeBank, class_prototypes
from ddkit.methods.pools import IDMQueue, RandomPool
from ddkit.models import get_model, reinit_

torch.set_num_threads(1)
NB = Path(__file__).resolve().parent.parent / "notebooks"


def cells(name):
    return json.loads((NB / name).read_text())["cells"]


def tagged_source(name, tag):
    found = ["".join(c["source"]) for c in cells(name) if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"{name}: expected one cell tagged {tag!r}"
    return found[0]


def check_cell(name):
    """The code cell right after the parameters cell (imports + validation, no compute)."""
    cs = cells(name)
    i = next(i for i, c in enumerate(cs) if "parameters" in c.get("metadata", {}).get("tags", []))
    return "".join(next(c for c in cs[i + 1:] if c["cell_type"] == "code")["source"])


def run_check(name, **overrides):
    ns = {}
    exec(tagged_source(name, "parameters"), ns)
    ns.update(overrides)
    exec(check_cell(name), ns)
    return ns


def load_objective(name, factory):
    ns = {}
    exec(tagged_source(name, "objective"), ns)
    return ns[factory]


def tiny_dataset(classes=3, n=16, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n)
    x = torch.randn(len(y), 1, size, size, generator=g) + 0.5 * y.view(-1, 1, 1, 1).float()
    return ImageDataset("tiny", x, y, x.clone(), y.clone(), (0.5,), (0.25,), [str(c) for c in range(classes)],
                        "color_crop_cutout_scale_rotate")


def make_batch(ds, net, per_class=4, real_per_class=8, seed=0):
    g = make_generator(seed)
    x_real, y_real = ds.sample_classes(real_per_class, generator=g)
    syn = init_synthetic(ds, per_class, generator=g, device=ds.device)  # beside the real batch and the net
    return syn, (lambda it=0: MatchBatch(net, x_real, y_real, syn.images, syn.labels, it, ds.num_classes))


def frozen_net(name="ConvNet", ds=None, seed=0, device="cpu", **kw):
    """A frozen, re-initialised net on ``device`` ("auto": where ``distill(device=None)`` runs)."""
    net = get_model(name, ds.channels, ds.num_classes, ds.im_size, **kw).to(resolve_device(device))
    reinit_(net, make_generator(seed))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.train()


class FixedPool:
    """A pool that always returns the same frozen net (deterministic loss for descent checks)."""

    def __init__(self, net):
        self.net = net

    def draw(self, generator=None):
        return self.net

    def load(self, i):
        return self.net


def descend(objective, syn, batch_fn, steps=6, lr=0.05):
    opt = torch.optim.SGD([syn.images], lr=lr)
    losses = []
    for it in range(steps):
        terms = objective(batch_fn(it))
        losses.append(float(terms["loss"].detach()))
        opt.zero_grad()
        terms["loss"].backward()
        g = syn.images.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        opt.step()
    return losses


# --------------------------------------------------------------------------- IID objective
@pytest.mark.parametrize("form,alpha,beta", [("squared", 0.0, 0.0), ("exp", 0.02, 0.0), ("exp", 0.02, 1.5)])
def test_iid_objective_is_differentiable_and_descends(form, alpha, beta):
    ds = tiny_dataset()
    make_iid_objective = load_objective("03_iid.ipynb", "make_iid_objective")
    net = frozen_net(ds=ds, width=16)
    cc_net = frozen_net("ResNet10", ds=ds, seed=1)
    syn, batch = make_batch(ds, net)
    obj = make_iid_objective(cc_pool=FixedPool(cc_net), lambda_cc=0.05, lambda_cm=0.01, cc_form=form,
                             alpha=alpha, beta=beta, generator=make_generator(0))
    terms = obj(batch())
    assert set(terms) == {"loss", "dm", "cm", "cc"}
    assert torch.allclose(terms["loss"].detach(), terms["dm"] + terms["cm"] + terms["cc"])
    assert all(not t.requires_grad for k, t in terms.items() if k != "loss")
    losses = descend(obj, syn, batch)
    assert losses[-1] < losses[0]


def test_iid_objective_terms_switch_off_and_match_the_dm_objective():
    from ddkit.methods.distill import dm_objective
    ds = tiny_dataset()
    make_iid_objective = load_objective("03_iid.ipynb", "make_iid_objective")
    net = frozen_net(ds=ds, width=16)
    _, batch = make_batch(ds, net)
    base = make_iid_objective(lambda_cc=0.0, lambda_cm=0.0)(batch())
    assert set(base) == {"loss", "dm"}
    assert torch.allclose(base["loss"], dm_objective(batch())["loss"], rtol=1e-5)
    only_cm = make_iid_objective(lambda_cc=0.0, lambda_cm=0.01)(batch())
    assert set(only_cm) == {"loss", "dm", "cm"}
    with pytest.raises(ValueError, match="cc_pool"):
        make_iid_objective(lambda_cc=0.05)


def test_iid_idm_variant_with_class_aware_ce_uses_queue_accuracy():
    import torch.nn.functional as F
    ds = tiny_dataset()
    make_iid_objective = load_objective("03_iid.ipynb", "make_iid_objective")
    q = IDMQueue("ConvNet", ds.channels, ds.num_classes, ds.im_size, initial_nets=1, train_steps=2,
                 batch_size=8, track_accuracy=True, width=16, generator=make_generator(0), device=ds.device)
    g = make_generator(0)
    net = q.draw(g)
    q.after_iteration(ds, g)
    i = next(k for k, n in enumerate(q.nets) if n is net)
    assert q.accs[i] is not None and 0 <= q.accuracy_of(net) <= 100
    q.accs[i] = 50.0  # a known accuracy (percent, as the reference's meter)
    syn, batch = make_batch(ds, net)
    obj = make_iid_objective(lambda_cc=0.0, lambda_cm=0.03, ce_weight=0.5, queue=q)
    terms = obj(batch())
    with torch.no_grad():
        logits = net(syn.images)
        expect = sum(F.cross_entropy(logits[syn.labels == c], syn.labels[syn.labels == c])
                     for c in range(ds.num_classes))  # sum over classes of the per-class mean CE
    assert torch.allclose(terms["ce"], 0.5 * 50.0 * expect, rtol=1e-4)
    losses = descend(obj, syn, batch, lr=0.002)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("channels_last", [False, True])
def test_iid_objective_runs_in_the_shared_loop_with_factor_2(channels_last):
    kw = {"channels_last": True} if channels_last else {}  # the objective then sees a FastView of the net
    ds = tiny_dataset()
    make_iid_objective = load_objective("03_iid.ipynb", "make_iid_objective")
    syn = init_synthetic(ds, 1, factor=2, generator=make_generator(0))  # IPC 1, 4 samples per class
    pool = RandomPool.for_dataset("ConvNet", ds, width=16)
    obj = make_iid_objective(cc_pool=FixedPool(frozen_net("ResNet10", ds=ds, device="auto")), lambda_cc=0.05,
                             lambda_cm=0.01)
    before = syn.images.detach().clone()
    hist = distill(syn, ds, obj, pool, 3, lr_img=0.1, batch_real=8, progress=False, **kw, graphs=False)
    assert len(hist) == 3 and {"dm", "cm", "cc"} <= set(hist[0])
    assert not torch.equal(before, syn.images.detach())


# --------------------------------------------------------------------------- IID parameter checks
def test_iid_defaults_pass_the_check():
    ns = run_check("03_iid.ipynb")
    assert ns["P"].base == "dm" and ns["pool_kind"] == "random"


@pytest.mark.parametrize("overrides,match", [
    ({"ipc": 1}, "covariance"),
    ({"lambda_cc": -0.05}, "lambda_cc"),
    ({"lambda_cm": -1.0}, "lambda_cm"),
    ({"dm_pool": "queue"}, "dm_pool"),
    ({"base": "idn"}, "base"),
    ({"idm_ce_weight": 0.5}, "idm pool"),
    ({"cc_form": "cubic"}, "cc_form"),
])
def test_iid_bad_settings_fail_before_compute(overrides, match):
    with pytest.raises(ValueError, match=match):
        run_check("03_iid.ipynb", **overrides)


def test_iid_ipc1_runs_with_idm_base_and_factor_2_or_without_cm():
    assert run_check("03_iid.ipynb", ipc=1, base="idm", factor=2)["pool_kind"] == "idm"
    run_check("03_iid.ipynb", ipc=1, use_cm=False)


# --------------------------------------------------------------------------- DSDM objective
def test_dsdm_objective_is_differentiable_descends_and_uses_the_bank():
    ds = tiny_dataset()
    make_dsdm_objective = load_objective("04_dsdm.ipynb", "make_dsdm_objective")
    net = frozen_net(ds=ds, width=16)
    syn, batch = make_batch(ds, net)
    d = net.embed_dim
    bank = PrototypeBank(ds.num_classes, d)
    obj = make_dsdm_objective(bank, lambda_sd=50.0, lambda_h=0.2, h_scale="1/d")
    assert set(obj(batch())) == {"loss", "proto", "sd"}  # no L_h before the first bank update
    bank.update_from(net.embed, syn.images.detach(), syn.labels)
    terms = obj(batch())
    assert set(terms) == {"loss", "proto", "sd", "h"}
    assert abs(float(terms["h"])) < 1e-6  # the bank holds exactly the current prototypes
    losses = descend(obj, syn, batch)
    assert losses[-1] < losses[0]
    # h_start delays L_h; h_scale "1" is d times the "1/d" term
    late = make_dsdm_objective(bank, lambda_h=0.2, h_start=5)
    assert "h" not in late(batch(0)) and "h" in late(batch(5))
    t_d = make_dsdm_objective(bank, lambda_sd=0.0, h_scale="1/d")(batch(1))["h"]
    t_1 = make_dsdm_objective(bank, lambda_sd=0.0, h_scale="1")(batch(1))["h"]
    assert float(t_d) > 0 and torch.allclose(t_1, t_d * d, rtol=1e-4)


def test_dsdm_bank_update_after_each_step_in_the_shared_loop():
    ds = tiny_dataset()
    make_dsdm_objective = load_objective("04_dsdm.ipynb", "make_dsdm_objective")
    net = frozen_net(ds=ds, width=16, device="auto")
    pool = FixedPool(net)
    syn = init_synthetic(ds, 1, factor=2, generator=make_generator(0))
    bank = PrototypeBank(ds.num_classes, net.embed_dim, momentum=0.9)
    seen = []

    def after_step(it, s, batch):
        x, y = s.detached()
        before = bank.value.clone()
        bank.update_from(batch.net.embed, x, y)
        protos, _ = class_prototypes(net.embed(x), y, ds.num_classes)
        expect = protos if it == 0 else 0.9 * before + 0.1 * protos  # Eq. 8 (first value stored)
        assert torch.allclose(bank.value, expect, atol=1e-5)
        assert not bank.value.requires_grad
        seen.append(it)

    hist = distill(syn, ds, make_dsdm_objective(bank), pool, 3, lr_img=0.1, batch_real=8, after_step=after_step,
                   progress=False, graphs=False)
    assert seen == [0, 1, 2] and bank.num_updates == 3
    assert "h" not in hist[0] and "h" in hist[1]


def test_bank_update_from_needs_no_grad_and_handles_absent_classes():
    ds = tiny_dataset()
    net = frozen_net(ds=ds, width=16)
    bank = PrototypeBank(ds.num_classes, net.embed_dim)
    x = torch.randn(4, 1, 12, 12, requires_grad=True)
    y = torch.tensor([0, 0, 2, 2])
    v = bank.update_from(net.embed, x, y)
    assert not v.requires_grad and torch.equal(v[1], torch.zeros(net.embed_dim))
    assert bank.num_updates == 1


# --------------------------------------------------------------------------- DSDM parameter checks
def test_dsdm_defaults_pass_the_check():
    assert run_check("04_dsdm.ipynb")["P"].pool == "pretrained"


@pytest.mark.parametrize("overrides,match", [
    ({"ipc": 1, "factor": 1}, "covariance"),
    ({"lambda_h": -0.2}, "lambda_h"),
    ({"lambda_sd": -50.0}, "lambda_sd"),
    ({"pool": "pretrained_resnet"}, "pool"),
    ({"h_scale": "d"}, "h_scale"),
    ({"bank_init": "random"}, "bank_init"),
    ({"lr_img": -0.1}, "lr_img"),
    ({"dsdm_lambda": 1.0}, "unknown parameter"),
])
def test_dsdm_bad_settings_fail_before_compute(overrides, match):
    if "dsdm_lambda" in overrides:  # an unknown key injected by papermill
        ns = {}
        exec(tagged_source("04_dsdm.ipynb", "parameters"), ns)
        ns["In"] = ["# Parameters\ndsdm_lambda = 1.0\n"]
        ns["dsdm_lambda"] = 1.0
        with pytest.raises(ValueError, match=match):
            exec(check_cell("04_dsdm.ipynb"), ns)
        return
    with pytest.raises(ValueError, match=match):
        run_check("04_dsdm.ipynb", **overrides)


# --------------------------------------------------------------------------- ddkit.methods.dm helpers
def test_pixel_lr_conversion_matches_a_pixel_space_step():
    """Notebook 04's learning-rate rule: a step of lr on [0, 1] pixels is lr / std^2 on normalised images."""
    ds = tiny_dataset()
    p = torch.rand(2, 1, 4, 4, requires_grad=True)
    target = torch.rand(2, 1, 4, 4)
    loss = ((p - target) ** 2).sum()
    (gp,) = torch.autograd.grad(loss, p)
    z = ds.normalize(p.detach()).requires_grad_(True)
    (gz,) = torch.autograd.grad(((z * 0.25 + 0.5 - target) ** 2).sum(), z)  # the same loss in z
    lr = 0.1
    p_new = p.detach() - lr * gp
    z_new = z.detach() - lr * (sum(1.0 / (s * s) for s in ds.std) / len(ds.std)) * gz
    assert torch.allclose(ds.normalize(p_new), z_new, atol=1e-5)


@pytest.mark.parametrize("name", ["ConvNet", "ResNet10", "ConvNetBN"])
def test_embed_and_map_matches_embed_and_feature_maps(name):
    ds = tiny_dataset()
    net = frozen_net(name, ds=ds)
    x, y = ds.sample_classes(2, generator=make_generator(0))
    with torch.no_grad():
        f, m = embed_and_map(net, x)
        assert torch.allclose(f, net.embed(x), atol=1e-5)
        assert torch.allclose(m, net.feature_maps(x)[-1], atol=1e-5)
        f2, _ = embed_and_map(net, x, y, ds.num_classes)  # per-class passes for BatchNorm
        assert f2.shape == f.shape


# --------------------------------------------------------------------------- resume, stepping, diagnostics
class DrawnPool:
    """Two frozen nets, one drawn per call from the generator (so the generator's state matters)."""

    def __init__(self, nets):
        self.nets = nets

    def draw(self, generator=None):
        return self.nets[int(torch.randint(len(self.nets), (1,), generator=generator))]


def _iid_on_idm_run(ds, iterations, checkpoint=None):
    make_iid_objective = load_objective("03_iid.ipynb", "make_iid_objective")
    cc_pool = DrawnPool([frozen_net("ConvNet", ds=ds, seed=s, width=8, device="auto") for s in (1, 2)])
    queue = IDMQueue("ConvNet", ds.channels, ds.num_classes, ds.im_size, generator=make_generator(3), max_nets=4,
                     interval=2, train_steps=1, batch_size=8, width=8)
    syn = init_synthetic(ds, 1, factor=2, generator=make_generator(0))
    cc_draws = make_generator(5)  # a torch.Generator in extra_state is checkpointed too
    obj = make_iid_objective(cc_pool=cc_pool, lambda_cc=0.05, lambda_cm=0.01, generator=cc_draws)
    hist = distill(syn, ds, obj, queue, iterations, lr_img=0.2, batch_real=8, progress=False,
                   image_step="per_class", checkpoint=checkpoint, checkpoint_every=1,
                   extra_state={"cc_draws": cc_draws}, graphs=False)
    return syn.images.detach().clone(), hist


def test_iid_on_idm_resumes_to_the_uninterrupted_run(tmp_path, deterministic):
    """Notebook 03's loop (IDM queue, per-class steps, L_CC draws from a checkpointed generator)
    stopped after 2 iterations and resumed equals the 4-iteration run."""
    ds = tiny_dataset()
    full, h_full = _iid_on_idm_run(ds, 4)
    ck = tmp_path / "ck.pt"
    _iid_on_idm_run(ds, 2, checkpoint=ck)
    resumed, h_res = _iid_on_idm_run(ds, 4, checkpoint=ck)
    assert torch.allclose(full, resumed, atol=1e-6)
    assert [h["loss"] for h in h_res] == pytest.approx([h["loss"] for h in h_full], rel=1e-6)


def pixel_bounds(ds):
    """Notebook 04's clamp: the normalised values of [0, 1] pixels, per channel, on the rule's device."""
    mean, std = (torch.tensor(v, device=resolve_device(None)).view(1, -1, 1, 1) for v in (ds.mean, ds.std))
    return (0 - mean) / std, (1 - mean) / std


def _dsdm_run(ds, iterations, checkpoint=None):
    from ddkit.augment import DSA
    from ddkit.methods.dm import AccuracyCurve

    make_dsdm_objective = load_objective("04_dsdm.ipynb", "make_dsdm_objective")
    pool = DrawnPool([frozen_net("ConvNet", ds=ds, seed=s, width=8, device="auto") for s in (1, 2)])
    syn = init_synthetic(ds, 1, factor=2, generator=make_generator(0))
    bank = PrototypeBank(ds.num_classes, pool.nets[0].embed_dim)
    bank_draws, dsa = make_generator(7), DSA(ds.dsa_strategy)
    curve = AccuracyCurve(2, lambda x, y: type("R", (), {"accs": [float(x.mean())]})())

    def after_step(it, s, batch):
        x, y = s.detached()
        bank.update_from(batch.net.embed, dsa.apply(x, dsa.sample(ds.num_classes, generator=bank_draws, device=x.device), y), y)
        curve(it, s, batch)

    lo, hi = pixel_bounds(ds)
    hist = distill(syn, ds, make_dsdm_objective(bank, lambda_h=0.2), pool, iterations, lr_img=0.5, batch_real=8,
                   progress=False, image_step="per_class", clamp=(lo, hi), after_step=after_step,
                   checkpoint=checkpoint, checkpoint_every=1,
                   extra_state={"bank": bank, "bank_draws": bank_draws, "curve": curve}, graphs=False)
    return syn.images.detach().clone(), hist, bank.value.clone(), curve.points


def test_dsdm_resumes_to_the_uninterrupted_run_bank_and_curve_included(tmp_path, deterministic):
    ds = tiny_dataset()
    full, h_full, bank_full, curve_full = _dsdm_run(ds, 4)
    ck = tmp_path / "ck.pt"
    _dsdm_run(ds, 3, checkpoint=ck)
    resumed, h_res, bank_res, curve_res = _dsdm_run(ds, 4, checkpoint=ck)
    assert torch.allclose(full, resumed, atol=1e-6) and torch.allclose(bank_full, bank_res, atol=1e-6)
    assert [p["iteration"] for p in curve_res] == [2, 4] and curve_res == curve_full
    assert "h" in h_full[-1] and [h["loss"] for h in h_res] == pytest.approx([h["loss"] for h in h_full], rel=1e-6)
    lo, hi = pixel_bounds(ds)
    assert bool((full >= lo - 1e-6).all() and (full <= hi + 1e-6).all())  # clamped when the loop ends


def test_bank_update_from_embeds_in_chunks_like_one_pass():
    ds = tiny_dataset()
    net = frozen_net(ds=ds, width=8)
    x, y = ds.sample_classes(4, generator=make_generator(0))
    bank = PrototypeBank(ds.num_classes, net.embed_dim)
    bank.update_from(net.embed, x, y, chunk=5)
    expect, _ = class_prototypes(net.embed(x), y, ds.num_classes)
    assert torch.allclose(bank.value, expect, atol=1e-5) and not bank.value.requires_grad


def test_accuracy_curve_records_every_n_and_round_trips():
    from ddkit.methods.dm import AccuracyCurve

    syn = init_synthetic(tiny_dataset(), 1, generator=make_generator(0))
    calls = []
    curve = AccuracyCurve(3, lambda x, y: calls.append(len(x)) or type("R", (), {"accs": [50.0, 60.0]})())
    for it in range(7):
        curve(it, syn)
    assert [p["iteration"] for p in curve.points] == [3, 6] and calls == [3, 3]
    other = AccuracyCurve(3, None)
    other.load_state_dict(curve.state_dict())
    assert other.points == curve.points
    with pytest.raises(ValueError, match="every=-1"):
        AccuracyCurve(-1, None)


@pytest.mark.parametrize("name,overrides,match", [
    ("03_iid.ipynb", {"image_step": "perclass"}, "image_step"),
    ("03_iid.ipynb", {"eval_models": ["ConvNet", "ResNet99"]}, "ResNet99"),
    ("03_iid.ipynb", {"momentum_img": 1.5}, "momentum_img"),
    ("04_dsdm.ipynb", {"baselines": ["dm", "dn"]}, "dn"),
    ("04_dsdm.ipynb", {"eval_every": -1}, "eval_every"),
    ("04_dsdm.ipynb", {"compile": "yes"}, "compile"),
])
def test_loop_parameters_are_checked_before_compute(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_check(name, **overrides)


def _runs_of(notebook):
    from ddkit.batch import sweep

    root = NB.parent / "params"
    for path in sorted(root.rglob("*.yaml")):
        try:
            runs = sweep.validate_params_file(path, notebooks_dir=NB)
        except ValueError:
            continue  # files of other shapes are checked by tests/test_sweep.py
        for run in runs:
            if Path(run.notebook).name == notebook:
                yield f"{path.relative_to(root)}:{run.label}", run


@pytest.mark.parametrize("notebook", ["03_iid.ipynb", "04_dsdm.ipynb"])
def test_every_params_run_of_03_and_04_passes_the_notebooks_own_check(notebook, tmp_path):
    """Every run of params/paper, params/cpu and params/evidence for the notebook passes the notebook's
    check cell (types, choices, ranges, impossible combinations), not only the sweep's key check."""
    checked = 0
    for label, run in _runs_of(notebook):
        params = {k: v for k, v in run.params.items() if k != "results_dir"}
        try:
            run_check(notebook, results_dir=str(tmp_path), **params)
        except ValueError as e:
            raise AssertionError(f"{label}: {e}") from None
        checked += 1
    assert checked >= 10
