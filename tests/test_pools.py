"""Model pools: IDM's queue and the cached pretrained pool (CPU, tiny data)."""
import math

import pytest
import torch

import ddkit.methods.pools as pools
from ddkit.core.utils import atomic_torch_save, make_generator
from ddkit.data import ImageDataset
from ddkit.methods.dm import POOL_KINDS, make_pool
from ddkit.methods.pools import IDMQueue, PretrainedPool, RandomPool

torch.set_num_threads(1)


def tiny_dataset(seed=0, name="tiny", n_per_class=12, classes=3, size=8):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    # class-dependent mean so a few SGD steps can learn something
    x = torch.randn(len(y), 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
    return ImageDataset(name, x, y, x[::2].clone(), y[::2].clone(), (0.5,), (0.25,),
                        [str(c) for c in range(classes)], "color_crop_cutout_scale_rotate")


def small_queue(ds, **kw):
    kw = {"interval": 2, "max_nets": 5, "train_steps": 2, "batch_size": 8, "width": 8, **kw}
    return IDMQueue("ConvNet", ds.channels, ds.num_classes, ds.im_size, generator=make_generator(0), **kw)


def flat(net):
    return torch.cat([p.detach().flatten().clone() for p in net.parameters()])


# --------------------------------------------------------------------------- IDM queue
def test_idm_queue_grows_every_interval_and_caps():
    ds = tiny_dataset()
    q = small_queue(ds, initial_nets=3)
    g = make_generator(1)
    sizes = []
    for _ in range(8):
        q.draw(g)
        q.after_iteration(ds, g)
        sizes.append(len(q))
    # a new net at iterations 0, 2, 4, 6 (interval 2), capped at 5
    assert sizes == [4, 4, 5, 5, 5, 5, 5, 5]
    assert q.pushed == 3 + 4 and q.iteration == 8


def test_idm_queue_push_once_per_iteration_even_with_several_draws():
    ds = tiny_dataset()
    q = small_queue(ds, initial_nets=1, nets_per_iteration=2)
    g = make_generator(0)
    q.draw(g)
    q.draw_many(g)
    assert len(q) == 2 and len(q.current) == 2
    assert all(any(n is m for m in q.nets) for n in q.current)


def test_idm_queue_training_changes_weights_and_refreezes(monkeypatch):
    ds = tiny_dataset()
    measured, real_accuracy = [], pools.accuracy
    monkeypatch.setattr(pools, "accuracy", lambda n, x, y: measured.append((n, x, y, real_accuracy(n, x, y)))
                        or measured[-1][3])
    q = small_queue(ds, initial_nets=2, train_nets=3, track_accuracy=True)
    g = make_generator(2)
    net = q.draw(g)
    assert all(not p.requires_grad for p in net.parameters()) and net.training
    before = [flat(n) for n in q.nets]
    q.after_iteration(ds, g)
    after = [flat(n) for n in q.nets]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))  # all 3 nets took SGD steps
    assert all(not p.requires_grad for n in q.nets for p in n.parameters())
    assert all(o is not None for o in q.optimizers)  # optimizers (momentum) kept per net
    # each trained net's accuracy is the one measured after its steps, on a real batch of batch_size images
    assert sorted(id(n) for n, *_ in measured) == sorted(id(n) for n in q.nets)
    rows = {tuple(r.tolist()) for r in ds.x_train.flatten(1)}
    for n, x, y, acc in measured:
        assert q.accuracy_of(n) == acc and len(x) == len(y) == 8 and {tuple(r.tolist()) for r in x.flatten(1)} <= rows
    assert q.accuracy_of(torch.nn.Linear(1, 1)) == 0.0


def test_idm_queue_train_steps_zero_keeps_weights():
    ds = tiny_dataset()
    q = small_queue(ds, initial_nets=2, train_steps=0)
    g = make_generator(0)
    q.draw(g)
    before = [flat(n) for n in q.nets]
    q.after_iteration(ds, g)
    assert all(torch.equal(b, flat(n)) for b, n in zip(before, q.nets))


def test_idm_queue_is_deterministic_per_generator():
    ds = tiny_dataset()
    runs = []
    for _ in range(2):
        q = small_queue(ds)
        g = make_generator(5)
        for _ in range(3):
            q.draw(g)
            q.after_iteration(ds, g)
        runs.append(torch.cat([flat(n) for n in q.nets]))
    assert torch.equal(*runs)


def test_idm_queue_state_dict_roundtrip():
    ds = tiny_dataset()
    q = small_queue(ds, track_accuracy=True)
    g = make_generator(3)
    for _ in range(3):
        q.draw(g)
        q.after_iteration(ds, g)
    q2 = small_queue(ds, initial_nets=0, track_accuracy=True).load_state_dict(q.state_dict())
    assert len(q2) == len(q) and q2.iteration == q.iteration and q2.accs == q.accs
    assert all(torch.equal(flat(a), flat(b)) for a, b in zip(q.nets, q2.nets))
    # continuing both gives the same nets (optimizer momentum restored)
    ga, gb = make_generator(9), make_generator(9)
    for qq, gg in ((q, ga), (q2, gb)):
        qq.draw(gg)
        qq.after_iteration(ds, gg)
    assert all(torch.equal(flat(a), flat(b)) for a, b in zip(q.nets, q2.nets))


@pytest.mark.parametrize("kw", [{"max_nets": 0}, {"interval": 0}, {"train_steps": -1}, {"lr": -0.1},
                                {"nets_per_iteration": 1.5}])
def test_idm_queue_rejects_bad_settings(kw):
    with pytest.raises(ValueError):
        small_queue(tiny_dataset(), **kw)


def test_idm_queue_rejects_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        IDMQueue("NoSuchNet", 1, 3, (8, 8))


# --------------------------------------------------------------------------- pretrained pool
def pretrained(ds, tmp_path, **kw):
    kw = {"num_models": 2, "epochs": 1, "seed": 0, "cache_dir": tmp_path, "progress": False,
          "batch_size": 16, "width": 8, "test_samples": 6, **kw}
    return PretrainedPool("ConvNet", ds, **kw)


def test_pretrained_pool_builds_caches_and_reuses(tmp_path, monkeypatch):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path)
    assert p.path.is_file() and p.path.parent == tmp_path and not p.reused
    assert len(p) == 2 and len(p.accs) == 2
    step = len(ds.x_test) // 6  # test_samples=6 evenly strided test images
    for i in range(2):
        assert p.accs[i] == pools.accuracy(p.load(i), ds.x_test[::step][:6], ds.y_test[::step][:6])
    for key in ("tiny", "ConvNet", "M2", "E1", "seed0"):
        assert key in p.path.name
    # a second pool with the same key loads the file: no training at all
    monkeypatch.setattr(pools, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached pool"))
    q = pretrained(ds, tmp_path)
    assert q.reused and q.path == p.path
    for i in range(2):
        assert torch.equal(flat(p.load(i)), flat(q.load(i)))


@pytest.mark.parametrize("change", [{"epochs": 2}, {"num_models": 3}, {"seed": 1}, {"train_per_class": 4},
                                    {"augment": "dsa"}, {"lr": 0.02}, {"width": 4}])
def test_pretrained_pool_rebuilds_on_key_change(tmp_path, change):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path)
    q = pretrained(ds, tmp_path, **change)
    assert q.path != p.path and q.path.is_file() and not q.reused
    assert len(q) == q.meta["num_models"]


def test_pretrained_pool_completes_a_partial_file(tmp_path):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path, num_models=2)
    obj = torch.load(p.path, weights_only=True)
    atomic_torch_save({"meta": obj["meta"], "states": obj["states"][:1], "accs": obj["accs"][:1]}, p.path)
    q = pretrained(ds, tmp_path, num_models=2)
    assert len(q) == 2 and not q.reused
    assert torch.equal(flat(q.load(0)), flat(p.load(0)))  # the stored model is kept, not retrained


def test_pretrained_pool_corrupt_file_is_a_clear_error(tmp_path):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path)
    p.path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable ddkit checkpoint"):
        pretrained(ds, tmp_path)


def test_pretrained_pool_foreign_file_is_a_clear_error(tmp_path):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path)
    torch.save({"weights": torch.zeros(3)}, p.path)
    with pytest.raises(ValueError, match="not a ddkit checkpoint"):
        pretrained(ds, tmp_path)
    atomic_torch_save({"meta": {**p.meta}, "states": "nope"}, p.path)
    with pytest.raises(ValueError, match="state dicts"):
        pretrained(ds, tmp_path)


def test_pretrained_pool_for_another_dataset_fails_before_training(tmp_path, monkeypatch):
    ds = tiny_dataset(seed=0)
    p = pretrained(ds, tmp_path)
    other = tiny_dataset(seed=1)  # same name and shapes, different images
    monkeypatch.setattr(pools, "train_classifier", lambda *a, **k: pytest.fail("trained before the check"))
    with pytest.raises(ValueError, match="fingerprint"):
        pretrained(other, tmp_path)
    # an explicit path to a pool made for other classes / image sizes
    bigger = tiny_dataset(classes=4)
    with pytest.raises(ValueError, match="num_classes|fingerprint"):
        pretrained(bigger, tmp_path, path=p.path)


def test_pretrained_pool_draw_is_frozen_random_and_deterministic(tmp_path):
    ds = tiny_dataset()
    p = pretrained(ds, tmp_path, num_models=3)
    idx = []
    for seed in (0, 0, 1):
        g = make_generator(seed)
        seq = []
        for _ in range(6):
            net = p.draw(g)
            assert net.training and all(not q.requires_grad for q in net.parameters())
            seq.append(p.last_index)
        idx.append(seq)
    assert idx[0] == idx[1] and idx[0] != idx[2]
    # uniform over the models: 300 seeded draws (fixed numbers, so no flakiness), ~100 each; a pool that
    # favoured one model or never drew one falls outside 60..140 (over 4 binomial standard deviations)
    g = make_generator(0)
    counts = [0, 0, 0]
    for _ in range(300):
        net = p.draw(g)
        counts[p.last_index] += 1
        drawn = p.states[p.last_index]
        assert all(torch.equal(v, drawn[k]) for k, v in net.state_dict().items())  # the model it says it drew
    assert all(60 <= n <= 140 for n in counts), counts
    assert not all(torch.equal(p.states[0][k], p.states[1][k]) for k in p.states[0])  # distinct models
    p.after_iteration(ds, make_generator(0))  # no-op


@pytest.mark.parametrize("kw", [{"num_models": 0}, {"epochs": -1}, {"augment": "mixup"}, {"lr": -1.0}])
def test_pretrained_pool_rejects_bad_settings(tmp_path, kw):
    with pytest.raises(ValueError):
        pretrained(tiny_dataset(), tmp_path, **kw)


# --------------------------------------------------------------------------- factory
def test_make_pool_kinds(tmp_path):
    ds = tiny_dataset()
    assert isinstance(make_pool("random", ds, "ConvNet"), RandomPool)
    q = make_pool("idm", ds, "ConvNet", generator=make_generator(0), max_nets=3, width=8)
    assert isinstance(q, IDMQueue) and q.max_nets == 3
    p = make_pool("pretrained", ds, "ConvNet", num_models=1, epochs=1, cache_dir=tmp_path, progress=False,
                  width=8, test_samples=0)
    assert isinstance(p, PretrainedPool) and math.isnan(p.accs[0])
    assert set(POOL_KINDS) == {"random", "idm", "pretrained"}


def test_make_pool_unknown_kind_fails_before_work():
    with pytest.raises(ValueError, match="unknown pool kind 'queue'.*random"):
        make_pool("queue", tiny_dataset())
    with pytest.raises(ValueError, match="no settings"):
        make_pool("random", tiny_dataset(), max_nets=3)


def test_idm_queue_accuracy_of_sees_through_a_fast_view():
    from ddkit.fast.speed import fast_view
    ds = tiny_dataset()
    q = small_queue(ds, initial_nets=1, train_nets=5, track_accuracy=True)
    g = make_generator(0)
    net = q.draw(g)
    q.after_iteration(ds, g)
    view = fast_view(net, channels_last=True)
    assert view is not net and q.accuracy_of(view) == q.accuracy_of(net) == q.accs[q.nets.index(net)]
