"""Tests for ddkit.models (CPU, small inputs)."""

import pytest
import torch

from ddkit.models import MODEL_NAMES, get_model, has_batchnorm, reinit_

torch.set_num_threads(1)

REQUIRED = ("ConvNet", "ConvNetD4", "ResNet10", "ResNet18", "ResNet18BN", "AlexNet",
            "VGG11", "LeNet", "MLP", "DenseNet121")
BN_MODELS = {n for n in MODEL_NAMES if has_batchnorm(get_model(n, 3, 10, (32, 32)))}
SHAPES = [(1, 28, 28), (3, 32, 32)]


def _x(shape, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g)


def test_required_names_present():
    assert set(REQUIRED) <= set(MODEL_NAMES)
    assert isinstance(MODEL_NAMES, tuple)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shapes(name, shape):
    torch.manual_seed(0)
    m = get_model(name, shape[0], 7, shape[1:])
    x = _x(shape)
    with torch.no_grad():
        fmaps = m.feature_maps(x)
        emb = m.embed(x)
        logits = m(x)
    assert logits.shape == (2, 7)
    assert emb.ndim == 2 and emb.shape[0] == 2 and emb.shape[1] == m.embed_dim
    assert len(fmaps) > 0 and all(f.ndim == 4 and f.shape[0] == 2 for f in fmaps)
    assert isinstance(m.mid_layer, int) and 0 <= m.mid_layer < len(fmaps)
    assert torch.isfinite(logits).all()
    m.eval()   # one pass gives maps, embedding and logits (BatchNorm models: same running stats)
    with torch.no_grad():
        last = m.feature_maps(x)[-1]
        torch.testing.assert_close(m.embed_from_last(last), m.embed(x))
        torch.testing.assert_close(m.classifier(m.embed_from_last(last)), m(x))


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "DenseNet121"])
def test_64x64(name):
    m = get_model(name, 3, 5, (64, 64))
    with torch.no_grad():
        assert m(_x((3, 64, 64), n=1)).shape == (1, 5)


def test_convnetd4_64():
    m = get_model("ConvNetD4", 3, 200, (64, 64))
    with torch.no_grad():
        assert m.embed(_x((3, 64, 64), n=1)).shape == (1, 128 * 4 * 4)
    assert len(m.feature_maps(_x((3, 64, 64), n=1))) == 4


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_convnet_param_count():
    # conv1 (C*128*9 + 128) + 2 x conv (128*128*9 + 128) + 3 x GroupNorm (2*128)
    # + Linear (2048*10 + 10)
    # 1 channel: 1280 + 295168 + 768 + 20490 = 317706
    # 3 channels: 3584 + 295168 + 768 + 20490 = 320010
    assert _n_params(get_model("ConvNet", 1, 10, (28, 28))) == 317706
    assert _n_params(get_model("ConvNet", 3, 10, (32, 32))) == 320010


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_convnet_embed_2048_and_last_map(shape):
    m = get_model("ConvNet", shape[0], 10, shape[1:])
    x = _x(shape, n=3)
    with torch.no_grad():
        emb = m.embed(x)
        fm = m.feature_maps(x)
    assert emb.shape == (3, 2048)
    assert len(fm) == 3 and m.mid_layer == 1
    assert [tuple(f.shape[1:]) for f in fm] == [(128, 16, 16), (128, 8, 8), (128, 4, 4)]
    torch.testing.assert_close(fm[-1].flatten(1), emb)
    # forward == classifier(embed)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.classifier(emb))


def test_convnet_instancenorm_is_groupnorm_c_c():
    m = get_model("ConvNet", 3, 10, (32, 32))
    gns = [mod for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)]
    assert len(gns) == 3
    assert all(g.num_groups == g.num_channels == 128 and g.affine for g in gns)


def test_resnet_mid_layer_is_layer2():
    m = get_model("ResNet18", 3, 10, (32, 32))
    fm = m.feature_maps(_x((3, 32, 32), n=1))
    assert len(fm) == 4 and m.mid_layer == 1 and fm[1].shape[1] == 128
    assert not has_batchnorm(m)
    assert has_batchnorm(get_model("ResNet18BN", 3, 10, (32, 32)))


@pytest.mark.parametrize("name", ["ConvNet", "ResNet10", "AlexNet", "VGG11", "LeNet", "MLP"])
def test_channels_last(name):
    m = get_model(name, 3, 10, (32, 32))
    x = _x((3, 32, 32), n=2)
    with torch.no_grad():
        ref = m.embed(x)
        out = m.embed(x.to(memory_format=torch.channels_last))
        out_t = m(x.permute(0, 1, 3, 2))  # non-contiguous input
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert out_t.shape == (2, 10)


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n not in BN_MODELS])
def test_per_sample_independence(name):
    """Instance-norm (and norm-free) models: a batch forward equals per-sample forwards,
    so all classes can share one forward pass."""
    shape = (1, 28, 28)
    m = get_model(name, shape[0], 10, shape[1:]).train()
    x = _x(shape, n=3)
    with torch.no_grad():
        batch = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    assert not has_batchnorm(m)


@pytest.mark.parametrize("name", sorted(BN_MODELS - {"DenseNet121"}))
def test_batchnorm_models_couple_samples(name):
    m = get_model(name, 1, 10, (28, 28)).train()
    x = _x((1, 28, 28), n=3)
    with torch.no_grad():
        batch = m(x)
        pair = m(x[:2])  # same first sample, different batch statistics
    assert has_batchnorm(m)
    assert not torch.allclose(batch[0], pair[0], atol=1e-5)


def test_has_batchnorm_names():
    assert {"ResNet18BN", "DenseNet121"} <= BN_MODELS
    assert not {"ConvNet", "ConvNetD4", "ResNet10", "ResNet18", "VGG11", "AlexNet",
                "LeNet", "MLP"} & BN_MODELS


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_reinit_deterministic_and_in_place():
    m = get_model("ConvNetBN", 1, 10, (28, 28))
    params = list(m.parameters())
    ids = [id(p) for p in params]
    ptrs = [p.data_ptr() for p in params]
    m.train()
    with torch.no_grad():
        m(_x((1, 28, 28), n=4))  # move BN running stats
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    assert bn.num_batches_tracked.item() == 1

    torch.manual_seed(123)
    before_global = torch.rand(3)
    torch.manual_seed(123)
    reinit_(m, torch.Generator().manual_seed(5))
    after_global = torch.rand(3)
    torch.testing.assert_close(before_global, after_global)  # global RNG untouched

    s1 = _snapshot(m)
    assert bn.num_batches_tracked.item() == 0
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)

    reinit_(m, torch.Generator().manual_seed(5))
    s2 = _snapshot(m)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], atol=0, rtol=0)

    reinit_(m, torch.Generator().manual_seed(6))
    s3 = _snapshot(m)
    assert not torch.equal(s1["features.0.0.weight"], s3["features.0.0.weight"])

    # the generator advances: two consecutive draws differ
    g = torch.Generator().manual_seed(5)
    reinit_(m, g)
    a = m.classifier.weight.detach().clone()
    reinit_(m, g)
    assert not torch.equal(a, m.classifier.weight)

    assert [id(p) for p in m.parameters()] == ids
    assert [p.data_ptr() for p in m.parameters()] == ptrs


def test_reinit_matches_across_models_and_get_model_generator():
    a = get_model("ResNet10", 3, 10, (32, 32), generator=torch.Generator().manual_seed(1))
    b = get_model("ResNet10", 3, 10, (32, 32))
    reinit_(b, torch.Generator().manual_seed(1))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_unknown_name():
    with pytest.raises(ValueError, match="ConvNet"):
        get_model("NoSuchNet", 3, 10, (32, 32))


def test_case_insensitive_and_kwargs():
    m = get_model("convnet", 3, 10, (32, 32), width=32, depth=2, norm="none", pool="maxpooling")
    assert m.embed_dim == 32 * 8 * 8 and len(m.feature_maps(_x((3, 32, 32), n=1))) == 2
    with pytest.raises(ValueError):
        get_model("ConvNet", 3, 10, (32, 32), norm="weird")


@pytest.mark.parametrize("name", ["ConvNet", "ResNet10"])
def test_gradients_reach_inputs(name):
    """Distillation differentiates embeddings w.r.t. the synthetic images."""
    m = get_model(name, 3, 10, (32, 32))
    x = _x((3, 32, 32), n=2).requires_grad_(True)
    m.embed(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
