"""Tests for ddkit.augment: DSA (Zhao & Bilen 2021) and factor-l decode / mosaic init."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import DSA, OPS, DSAParams, decode, mosaic_init, strategy_for

FULL = "color_crop_cutout_flip_scale_rotate"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def force_op(p: DSAParams, name: str) -> DSAParams:
    """Same values, every row using family `name`."""
    return dataclasses.replace(p, op=torch.full_like(p.op, p.ops.index(name)))


def smooth_images(n, c, h, w, seed=0):
    """Low-frequency random images (so down/up-sampling loses little)."""
    g = gen(seed)
    small = torch.randn(n, c, 4, 4, generator=g)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------- strategy parsing
def test_strategy_for():
    assert strategy_for("mnist") == "color_crop_cutout_scale_rotate"
    assert strategy_for("mnist5k") == "color_crop_cutout_scale_rotate"
    assert strategy_for("SVHN") == "color_crop_cutout_scale_rotate"
    for name in ("fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "x.npz"):
        assert strategy_for(name) == FULL


def test_unknown_op_raises_listing_allowed():
    with pytest.raises(ValueError) as e:
        DSA("color_blur_crop")
    msg = str(e.value)
    assert "blur" in msg and all(op in msg for op in OPS)


@pytest.mark.parametrize("strategy", ["none", "None", "", None])
def test_none_is_identity(strategy):
    d = DSA(strategy)
    x = torch.randn(3, 3, 8, 8)
    assert d.is_identity
    assert torch.equal(d(x, gen()), x)
    assert torch.equal(d.apply(x, d.sample(3, gen())), x)


def test_reference_constants():
    d = DSA(FULL)
    assert (d.flip_p, d.scale, d.rotate, d.crop, d.cutout) == (0.5, 1.2, 15.0, 0.125, 0.5)
    assert (d.brightness, d.saturation, d.contrast) == (1.0, 2.0, 0.5)
    p = d.sample(2000, gen())
    assert p.scale_x.min() >= 1 / 1.2 - 1e-6 and p.scale_x.max() <= 1.2 + 1e-6
    assert p.angle.abs().max() <= math.radians(15) + 1e-6
    assert 0.4 < p.flip.float().mean() < 0.6
    assert set(p.op.tolist()) == set(range(6))


# --------------------------------------------------------------------- shapes / families
@pytest.mark.parametrize("op", OPS)
def test_each_family_shape_and_changes_image(op):
    d = DSA(FULL)
    x = torch.randn(4, 3, 16, 16)
    p = force_op(d.sample(4, gen(1)), op)
    if op == "flip":
        p = dataclasses.replace(p, flip=torch.ones_like(p.flip))
    y = d.apply(x, p)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.allclose(y, x)


def test_full_strategy_shapes_and_mixed_families():
    d = DSA(FULL)
    x = torch.randn(12, 3, 32, 32)
    p = d.sample(12, gen(2))
    assert len(set(p.op.tolist())) > 1  # mixed families in one call
    y = d.apply(x, p)
    assert y.shape == x.shape
    # each sample equals its own family applied alone
    for i in range(12):
        yi = d.apply(x[i:i + 1], p.index([i]))
        torch.testing.assert_close(y[i:i + 1], yi)


def test_mnist_shapes_no_flip():
    d = DSA(strategy_for("mnist"))
    assert "flip" not in d.ops
    x = torch.randn(5, 1, 28, 28)
    assert d(x, gen()).shape == x.shape


def test_crop_is_integer_translation_with_zero_fill():
    d = DSA("crop")
    x = torch.arange(64.).view(1, 1, 8, 8) + 1
    p = d.sample(1, gen())
    # shift = int(8 * 0.125 + 0.5) = 1; fraction 0 -> -1, fraction ~1 -> +1
    p = dataclasses.replace(p, crop_h=torch.tensor([0.0]), crop_w=torch.tensor([0.99]))
    y = d.apply(x, p)[0, 0]
    assert torch.equal(y[0], torch.zeros(8))           # row shifted in from outside
    assert torch.equal(y[1:, :7], x[0, 0, :7, 1:])     # out[i, j] = x[i - 1, j + 1]
    assert torch.equal(y[:, 7], torch.zeros(8))


def test_cutout_square_size():
    d = DSA("cutout")
    p = dataclasses.replace(d.sample(1, gen()), cutout_h=torch.tensor([0.5]),
                            cutout_w=torch.tensor([0.5]))
    y = d.apply(torch.ones(1, 2, 16, 16), p)
    assert (y == 0).sum().item() == 2 * 8 * 8  # int(16 * 0.5 + 0.5) = 8


def test_color_on_single_channel_keeps_structure():
    d = DSA("color")
    x = torch.randn(3, 1, 8, 8)
    y = d.apply(x, d.sample(3, gen()))
    assert torch.isfinite(y).all() and y.shape == x.shape


# --------------------------------------------------------------------- siamese semantics
def test_siamese_identical_inputs_identical_outputs():
    d = DSA(FULL)
    x = torch.randn(1, 3, 16, 16)
    p = d.sample(10, gen(3))
    for c in range(10):
        grp = torch.full((2,), c, dtype=torch.long)
        y = d.apply(torch.cat([x, x]), p, grp)
        assert torch.equal(y[0], y[1])


def test_batched_real_and_syn_equal_separate_calls():
    d = DSA(FULL)
    classes, n_real, n_syn = 4, 5, 2
    real = torch.randn(classes * n_real, 3, 16, 16)
    syn = torch.randn(classes * n_syn, 3, 16, 16)
    y_real = torch.arange(classes).repeat_interleave(n_real)
    y_syn = torch.arange(classes).repeat_interleave(n_syn)
    p = d.sample(classes, gen(4))
    both = d.apply(torch.cat([real, syn]), p, torch.cat([y_real, y_syn]))
    for c in range(classes):
        pc = p.index([c])
        zeros_r = torch.zeros(n_real, dtype=torch.long)
        zeros_s = torch.zeros(n_syn, dtype=torch.long)
        sep_r = d.apply(real[y_real == c], pc, zeros_r)
        sep_s = d.apply(syn[y_syn == c], pc, zeros_s)
        torch.testing.assert_close(both[:len(real)][y_real == c], sep_r)
        torch.testing.assert_close(both[len(real):][y_syn == c], sep_s)


def test_different_groups_get_different_transforms():
    d = DSA(FULL)
    x = torch.randn(1, 3, 16, 16).expand(8, -1, -1, -1)
    p = d.sample(8, gen(5))
    y = d.apply(x, p, torch.arange(8))
    distinct = {tuple(y[i].flatten()[:50].round(decimals=4).tolist()) for i in range(8)}
    assert len(distinct) >= 6  # a flip draw may leave an image unchanged


def test_shared_op_draws_one_family():
    d = DSA(FULL)
    p = d.sample(50, gen(6), shared_op=True)
    assert len(set(p.op.tolist())) == 1
    assert len(set(p.angle.tolist())) == 50  # values stay per row


def test_eval_per_sample_draws_differ():
    x = torch.randn(1, 3, 16, 16).expand(16, -1, -1, -1)
    for per_sample_op in (False, True):
        d = DSA("crop_scale_rotate", per_sample_op=per_sample_op)
        y = d(x, gen(7))
        distinct = {tuple(y[i].flatten().round(decimals=4).tolist()) for i in range(16)}
        assert len(distinct) >= 8


def test_eval_reference_one_family_per_call():
    d = DSA(FULL)
    g = gen(8)
    for _ in range(5):
        p = d.sample(32, g, shared_op=not d.per_sample_op)
        assert len(set(p.op.tolist())) == 1


def test_determinism_with_seeded_generator():
    d = DSA(FULL)
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(d(x, gen(9)), d(x, gen(9)))
    a, b = d.sample(6, gen(10)), d.sample(6, gen(10))
    assert torch.equal(d.apply(x, a), d.apply(x, b))
    assert not torch.equal(d(x, gen(9)), d(x, gen(11)))


def test_no_global_rng_use():
    d = DSA(FULL)
    x = torch.randn(4, 3, 8, 8)
    state = torch.get_rng_state()
    d(x, gen(0))
    d.apply(x, d.sample(2, gen(1)), torch.tensor([0, 1, 1, 0]))
    assert torch.equal(state, torch.get_rng_state())


def test_group_none_requires_matching_rows():
    d = DSA(FULL)
    with pytest.raises(ValueError):
        d.apply(torch.randn(3, 3, 8, 8), d.sample(2, gen()))


# --------------------------------------------------------------------- gradients
@pytest.mark.parametrize("op", OPS)
def test_n1_backprops(op):
    d = DSA(FULL)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    p = force_op(d.sample(1, gen(12)), op)
    y = d.apply(x, p, torch.zeros(1, dtype=torch.long))
    (y ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_full_strategy_backprops_leaf_ipc1():
    d = DSA(FULL)
    syn = torch.randn(10, 3, 8, 8, requires_grad=True)  # IPC 1, 10 classes
    real = torch.randn(30, 3, 8, 8)
    p = d.sample(10, gen(13))
    out = d.apply(torch.cat([real, syn]),
                  p, torch.cat([torch.arange(10).repeat(3), torch.arange(10)]))
    out[30:].sum().backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_each_family(op):
    d = DSA(FULL)
    p = force_op(d.sample(2, gen(14)), op)
    if op == "flip":
        p = dataclasses.replace(p, flip=torch.tensor([True, False]))
    x = torch.randn(2, 3, 8, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: d.apply(t, p), (x,), eps=1e-6, atol=1e-4)


# --------------------------------------------------------------------- decode / mosaic
def test_decode_shapes_and_labels():
    x = torch.randn(3, 1, 28, 28)
    y = torch.tensor([0, 1, 2])
    xd, yd = decode(x, y, 2)
    assert xd.shape == (12, 1, 28, 28)
    assert yd.tolist() == [0, 1, 2] * 4
    soft = torch.softmax(torch.randn(3, 10), 1)
    _, sd = decode(x, soft, 2)
    assert sd.shape == (12, 10) and torch.equal(sd[3:6], soft)


def test_decode_tile_order():
    # image i, tile t = row * f + col  ->  output index t * N + i
    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 2:, :2] = 1.0  # bottom-left tile of image 1 (t = 2)
    xd, _ = decode(x, torch.tensor([0, 1]), 2)
    assert torch.allclose(xd[2 * 2 + 1], torch.ones(1, 4, 4))
    assert xd.sum() == xd[5].sum()


def test_decode_factor1_identity_and_bad_factor():
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    xd, yd = decode(x, y, 1)
    assert xd is x and yd is y
    with pytest.raises(ValueError):
        decode(x, y, 0)
    with pytest.raises(ValueError):
        mosaic_init(torch.randn(5, 3, 8, 8), 2)  # 5 is not a multiple of 4


def test_decode_non_divisible_size():
    x = torch.randn(2, 3, 32, 30)
    xd, yd = decode(x, torch.tensor([0, 1]), 3)
    assert xd.shape == (18, 3, 32, 30) and yd.shape == (18,)


def test_decode_mosaic_roundtrip():
    x = smooth_images(8, 3, 32, 32)  # n = 2 mosaics at factor 2
    m = mosaic_init(x, 2)
    assert m.shape == (2, 3, 32, 32)
    xd, _ = decode(m, torch.zeros(2, dtype=torch.long), 2)
    smoothed = F.interpolate(F.interpolate(x, size=(16, 16), mode="area"), size=(32, 32),
                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(xd, smoothed, atol=1e-5, rtol=1e-5)
    assert (xd - x).abs().mean() < 0.1 * x.abs().mean()
    assert torch.equal(mosaic_init(x, 1), x)


def test_decode_mosaic_roundtrip_mnist_size():
    x = smooth_images(4, 1, 28, 28, seed=1)
    xd, _ = decode(mosaic_init(x, 2), torch.zeros(1, dtype=torch.long), 2)
    assert xd.shape == x.shape and (xd - x).abs().mean() < 0.1 * x.abs().mean()


def test_decode_gradcheck():
    x = torch.randn(1, 2, 6, 6, dtype=torch.double, requires_grad=True)
    y = torch.tensor([3])
    assert torch.autograd.gradcheck(lambda t: decode(t, y, 2)[0], (x,))


def test_color_matches_reference_formula():
    d = DSA("color")
    x = torch.randn(2, 3, 8, 8)
    p = d.sample(2, gen(15))
    b, s, c = (t.view(-1, 1, 1, 1) for t in (p.brightness, p.saturation, p.contrast))
    ref = x + b
    ref = (ref - ref.mean(1, keepdim=True)) * s + ref.mean(1, keepdim=True)
    ref = (ref - ref.mean((1, 2, 3), keepdim=True)) * c + ref.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(d.apply(x, p), ref)


def test_mode_m_applies_all_families_and_params_strategy_checked():
    d = DSA("flip_crop", mode="M")
    x = torch.randn(2, 1, 8, 8)
    p = d.sample(2, gen(16))
    y = d.apply(x, p)
    assert torch.equal(y, d._crop(d._flip(x, p), p))
    with pytest.raises(ValueError):
        DSA(FULL).apply(x, p)
