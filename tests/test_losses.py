"""Tests of ddkit.losses against hand computations (numpy / explicit loops) on tiny tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddkit import losses as L

DT = torch.float64


def t(a, dtype=DT):
    return torch.tensor(a, dtype=dtype)


def lab(a):
    return torch.tensor(a, dtype=torch.long)


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


# ----------------------------------------------------------------------------- hand helpers
def np_mean_loss(fr, yr, fs, ys, k):
    fr, fs = np.asarray(fr, float), np.asarray(fs, float)
    total = 0.0
    for c in range(k):
        ir = [i for i in range(len(yr)) if yr[i] == c]
        is_ = [i for i in range(len(ys)) if ys[i] == c]
        if not ir or not is_:
            continue
        d = fr[ir].mean(0) - fs[is_].mean(0)
        total += float((d * d).sum())
    return total


def np_vec_cov(x, ddof):
    x = np.asarray(x, float)
    n, d = x.shape
    mu = x.mean(0)
    cov = np.zeros((d, d))
    for i in range(n):
        v = x[i] - mu
        for m in range(d):
            for q in range(d):
                cov[m, q] += v[m] * v[q]
    return cov / (n - ddof)


def np_local_cov(maps):
    """maps: (n, C, h, w) -> (C, C), 1/n sum (X_i - Xbar)(X_i - Xbar)^T, X_i = (C, h*w)."""
    maps = np.asarray(maps, float)
    n, c = maps.shape[:2]
    xs = maps.reshape(n, c, -1)
    xbar = xs.mean(0)
    cov = np.zeros((c, c))
    for i in range(n):
        cov += (xs[i] - xbar) @ (xs[i] - xbar).T
    return cov / n


# ----------------------------------------------------------------------------- prototypes
def test_class_prototypes_hand_and_mask():
    f = t([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    y = lab([0, 0, 2])
    protos, present = L.class_prototypes(f, y, 3)
    assert torch.allclose(protos, t([[2.0, 3.0], [0.0, 0.0], [10.0, 0.0]]))
    assert present.tolist() == [True, False, True]
    _, _, counts = L.class_prototypes(f, y, 3, return_counts=True)
    assert counts.tolist() == [2.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- mean embedding
def test_mean_embedding_hand_value():
    fr = [[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [5.0, 5.0]]
    yr = [0, 0, 1, 2]
    fs = [[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]]
    ys = [0, 1, 1]
    # class 0: real mean (2,1), syn (0,0) -> 5 ; class 1: real (0,1), syn (1.5,0) -> 3.25
    # class 2 absent from syn -> skipped
    got = L.mean_embedding_loss(t(fr), lab(yr), t(fs), lab(ys), 3)
    assert got.item() == pytest.approx(5.0 + 3.25)
    assert got.item() == pytest.approx(np_mean_loss(fr, yr, fs, ys, 3))
    per = L.mean_embedding_loss(t(fr), lab(yr), t(fs), lab(ys), 3, reduction="none")
    assert per.tolist() == pytest.approx([5.0, 3.25, 0.0])
    mean = L.mean_embedding_loss(t(fr), lab(yr), t(fs), lab(ys), 3, reduction="mean")
    assert mean.item() == pytest.approx(8.25 / 2)


def test_mean_embedding_random_vs_numpy_and_properties():
    fr, fs = rnd(12, 5, seed=1), rnd(7, 5, seed=2)
    yr = lab([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 0])
    ys = lab([0, 1, 2, 1, 0, 2, 0])  # class 3 absent on the syn side
    got = L.mean_embedding_loss(fr, yr, fs, ys, 4)
    assert got.item() == pytest.approx(np_mean_loss(fr.numpy(), yr.tolist(), fs.numpy(), ys.tolist(), 4))
    # zero when syn == real batch
    assert L.mean_embedding_loss(fr, yr, fr.clone(), yr.clone(), 4).item() == pytest.approx(0.0, abs=1e-12)
    # order invariance
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    assert L.mean_embedding_loss(fr, yr, fs[perm], ys[perm], 4).item() == pytest.approx(got.item())
    # per-class independence: changing class 1's syn samples leaves class 0's term unchanged
    fs2 = fs.clone()
    fs2[ys == 1] += 3.0
    a = L.mean_embedding_loss(fr, yr, fs, ys, 4, reduction="none")
    b = L.mean_embedding_loss(fr, yr, fs2, ys, 4, reduction="none")
    assert b[0].item() == pytest.approx(a[0].item()) and b[1].item() != pytest.approx(a[1].item())
    assert b[3].item() == 0.0


def test_mean_embedding_gradient_only_to_syn_when_real_detached():
    """d/d f_j of sum_c ||mu_real_c - mu_syn_c||^2 = -2 (mu_real_c - mu_syn_c) / n_syn_c for j of class c;
    the detached real side gets none."""
    fr = rnd(6, 3, seed=4).requires_grad_(True)
    fs = rnd(4, 3, seed=5).requires_grad_(True)
    yr, ys = lab([0, 0, 0, 1, 1, 1]), lab([0, 1, 0, 1])
    L.mean_embedding_loss(fr.detach(), yr, fs, ys, 2).backward()
    assert fr.grad is None
    mu_r = torch.stack([fr.detach()[yr == c].mean(0) for c in range(2)])
    mu_s = torch.stack([fs.detach()[ys == c].mean(0) for c in range(2)])
    want = -2 * (mu_r - mu_s)[ys] / 2  # two synthetic samples per class
    assert torch.allclose(fs.grad, want, atol=1e-12)


@pytest.mark.parametrize("transform", ["compile", "vmap"])
def test_argument_checks_do_not_break_compile_or_vmap(transform):
    """The label-range and scalar checks read tensors back: inside torch.compile (one graph, no
    break) and torch.func.vmap they are skipped, and the values equal the eager ones."""
    fr, fs = rnd(6, 3, seed=4), rnd(3, 4, 3, seed=5)
    yr, ys = lab([0, 0, 0, 1, 1, 1]), lab([0, 1, 0, 1])

    def losses(a, tau):
        return (L.mean_embedding_loss(fr, yr, a, ys, 2) + L.class_centralization_loss(a, ys, 2, 0.1, 1.0)
                + L.skd_loss(a, a.flip(0), tau) + L.semantic_diversity_loss(fr, yr, a, ys, 2, method="direct"))

    eager = torch.stack([losses(a, torch.tensor(2.0)) for a in fs])
    if transform == "compile":
        from torch import _dynamo
        _dynamo.reset()
        fn = torch.compile(losses, backend="eager", fullgraph=True)  # fullgraph: a graph break raises
        got = torch.stack([fn(a, torch.tensor(2.0)) for a in fs])
    else:
        got = torch.func.vmap(losses)(fs, torch.full((3,), 2.0))
    assert torch.allclose(got, eager, rtol=1e-5)


# ----------------------------------------------------------------------------- class centralization
def test_class_centralization_exp_hand_value():
    f = t([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    y = lab([0, 0, 1])
    alpha, beta = 0.5, 1.2
    # class 0 mean (1,0): distances^2 = 1, 1 -> exp(0.5) - 1.2 each; class 1 single: exp(0)-1.2 < 0
    want = 2 * max(0.0, math.exp(0.5) - 1.2) + max(0.0, 1.0 - 1.2)
    got = L.class_centralization_loss(f, y, 2, alpha, beta)
    assert got.item() == pytest.approx(want)
    per = L.class_centralization_loss(f, y, 2, alpha, beta, reduction="none")
    assert per.tolist() == pytest.approx([math.exp(0.5) - 1.2, math.exp(0.5) - 1.2, 0.0])
    assert L.class_centralization_loss(f, y, 2, alpha, beta, reduction="mean").item() == pytest.approx(want / 3)


def test_class_centralization_hinge_and_squared():
    f = rnd(9, 4, seed=6)
    y = lab([0, 1, 2, 0, 1, 2, 0, 1, 2])
    # beta larger than every exp term -> zero
    assert L.class_centralization_loss(f, y, 3, 0.1, 1e9).item() == 0.0
    # squared form: sum_j ||f_j - mean_c||^2 by loops
    fn, yn = f.numpy(), y.tolist()
    want = 0.0
    for c in range(3):
        rows = fn[[i for i in range(9) if yn[i] == c]]
        want += float(((rows - rows.mean(0)) ** 2).sum())
    got = L.class_centralization_loss(f, y, 3, alpha=123.0, beta=7.0, form="squared")
    assert got.item() == pytest.approx(want)
    # exp form with beta = 0, random values, by loops
    want_exp = 0.0
    for c in range(3):
        rows = fn[[i for i in range(9) if yn[i] == c]]
        for r in rows:
            want_exp += max(0.0, math.exp(0.2 * float(((r - rows.mean(0)) ** 2).sum())) - 0.0)
    assert L.class_centralization_loss(f, y, 3, 0.2, 0.0).item() == pytest.approx(want_exp)
    with pytest.raises(ValueError, match="form"):
        L.class_centralization_loss(f, y, 3, 0.1, 0.0, form="cube")


# ----------------------------------------------------------------------------- local covariance
def test_local_covariance_hand_value_tiny():
    # C = 2 channels, h*w = 2, one class with 2 real and 2 syn maps (written out)
    real = t([[[[1.0, 2.0]], [[0.0, 1.0]]],
              [[[3.0, 0.0]], [[2.0, 1.0]]]])  # (2, 2, 1, 2)
    syn = t([[[[0.0, 0.0]], [[1.0, 1.0]]],
             [[[2.0, 2.0]], [[1.0, 3.0]]]])
    # real: Xbar = [[2,1],[1,1]]; X1 - Xbar = [[-1,1],[-1,0]], X2 - Xbar = [[1,-1],[1,0]]
    # each outer = [[2,1],[1,1]] -> Cov_r = [[2,1],[1,1]]
    # syn: Xbar = [[1,1],[1,2]]; S1 - Sbar = [[-1,-1],[0,-1]], S2 - Sbar = [[1,1],[0,1]]
    # each outer = [[2,1],[1,1]] -> Cov_s = [[2,1],[1,1]] ... equal -> use a scaled syn
    y = lab([0, 0])
    got = L.local_covariance_loss(real, y, syn, y, 1)
    assert got.item() == pytest.approx(0.0, abs=1e-12)
    syn2 = syn * 2.0  # Cov scales by 4 -> diff = 3 * [[2,1],[1,1]] -> ||.||_F^2 = 9 * 7 = 63
    got2 = L.local_covariance_loss(real, y, syn2, y, 1)
    assert got2.item() == pytest.approx(63.0)
    cov_r = np_local_cov(real.numpy())
    assert np.allclose(cov_r, [[2.0, 1.0], [1.0, 1.0]])


def test_local_covariance_random_vs_numpy_and_properties():
    real = rnd(10, 3, 2, 2, seed=7)
    syn = rnd(6, 3, 2, 2, seed=8)
    yr = lab([0, 1, 2, 0, 1, 2, 0, 1, 0, 1])
    ys = lab([0, 0, 1, 1, 3, 3])  # class 2 absent on syn side, class 3 absent on real side
    want = []
    for c in range(4):
        ir = [i for i in range(10) if yr[i] == c]
        is_ = [i for i in range(6) if ys[i] == c]
        if not ir or not is_:
            want.append(0.0)
            continue
        d = np_local_cov(syn.numpy()[is_]) - np_local_cov(real.numpy()[ir])
        want.append(float((d * d).sum()))
    per = L.local_covariance_loss(real, yr, syn, ys, 4, reduction="none")
    assert per.tolist() == pytest.approx(want)
    assert L.local_covariance_loss(real, yr, syn, ys, 4).item() == pytest.approx(sum(want))
    assert L.local_covariance_loss(real, yr, syn, ys, 4, reduction="mean").item() == pytest.approx(sum(want) / 2)
    # already-reshaped (N, C, h*w) input gives the same value
    assert L.local_covariance_loss(real.flatten(2), yr, syn.flatten(2), ys, 4).item() == pytest.approx(sum(want))
    # zero when syn == real
    assert L.local_covariance_loss(real, yr, real.clone(), yr, 4).item() == pytest.approx(0.0, abs=1e-12)
    # order invariance
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    assert L.local_covariance_loss(real, yr, syn[perm], ys[perm], 4).item() == pytest.approx(sum(want))
    # per-class independence
    syn2 = syn.clone()
    syn2[ys == 1] = syn2[ys == 1] * 5.0 + 1.0
    per2 = L.local_covariance_loss(real, yr, syn2, ys, 4, reduction="none")
    assert per2[0].item() == pytest.approx(per[0].item())
    assert per2[1].item() != pytest.approx(per[1].item())


def test_local_covariance_unbiased_and_gradient():
    real = rnd(6, 2, 2, 2, seed=9)
    syn = rnd(4, 2, 2, 2, seed=10).requires_grad_(True)
    yr, ys = lab([0, 0, 0, 1, 1, 1]), lab([0, 0, 1, 1])
    loss = L.local_covariance_loss(real, yr, syn, ys, 2, unbiased=True)
    # unbiased = biased covariances rescaled by n/(n-1)
    want = 0.0
    for c in range(2):
        cr = np_local_cov(real.numpy()[yr.numpy() == c]) * 3 / 2
        cs = np_local_cov(syn.detach().numpy()[ys.numpy() == c]) * 2 / 1
        want += float(((cs - cr) ** 2).sum())
    assert loss.item() == pytest.approx(want)
    # its gradient is the derivative of the value (finite differences in float64)
    f = lambda s: L.local_covariance_loss(real.double(), yr, s, ys, 2, unbiased=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (syn.detach().double().requires_grad_(True),))
    with pytest.raises(ValueError, match="at least 2 samples"):
        L.local_covariance_loss(real, yr, syn.detach()[:3], lab([0, 0, 1]), 2, unbiased=True)
    # biased with one sample per class is allowed (zero covariance)
    L.local_covariance_loss(real, yr, syn.detach()[:2], lab([0, 1]), 2)


def test_local_covariance_chunking_matches(monkeypatch):
    real = rnd(20, 3, 2, 2, seed=11)
    syn = rnd(8, 3, 2, 2, seed=12)
    yr, ys = torch.arange(20) % 3, torch.arange(8) % 3
    full = L.local_covariance_loss(real, yr, syn, ys, 3)
    monkeypatch.setattr(L, "_OUTER_CHUNK_ELEMS", 9 * 3)  # chunks of 3 samples
    assert L.local_covariance_loss(real, yr, syn, ys, 3).item() == pytest.approx(full.item())


# ----------------------------------------------------------------------------- semantic diversity
@pytest.mark.parametrize("method", ["gram", "direct"])
def test_semantic_diversity_hand_value(method):
    # D = 2, one class; real: (0,0), (2,2) -> mean (1,1), biased cov [[1,1],[1,1]]
    # syn: (0,0), (2,0) -> mean (1,0), biased cov [[1,0],[0,0]]
    fr, fs = t([[0.0, 0.0], [2.0, 2.0]]), t([[0.0, 0.0], [2.0, 0.0]])
    y = lab([0, 0])
    # diff [[0,1],[1,1]] -> ||.||^2 = 3, times 1/D = 1.5
    assert L.semantic_diversity_loss(fr, y, fs, y, 1, method=method).item() == pytest.approx(1.5)
    # unbiased: covs doubled -> 4 * 3 / 2 = 6
    assert L.semantic_diversity_loss(fr, y, fs, y, 1, unbiased=True, method=method).item() == pytest.approx(6.0)


@pytest.mark.parametrize("method", ["gram", "direct"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_semantic_diversity_random_vs_numpy(method, unbiased):
    fr, fs = rnd(11, 4, seed=13), rnd(7, 4, seed=14)
    yr = lab([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 4])  # class 4 real only
    ys = lab([0, 0, 1, 1, 2, 2, 3])  # class 3 syn only
    ddof = 1 if unbiased else 0
    want = []
    for c in range(5):
        ir = [i for i in range(11) if yr[i] == c]
        is_ = [i for i in range(7) if ys[i] == c]
        if not ir or not is_:
            want.append(0.0)
            continue
        d = np_vec_cov(fr.numpy()[ir], ddof) - np_vec_cov(fs.numpy()[is_], ddof)
        want.append(float((d * d).sum()) / 4)
    per = L.semantic_diversity_loss(fr, yr, fs, ys, 5, unbiased=unbiased, reduction="none", method=method)
    assert per.tolist() == pytest.approx(want, abs=1e-12)
    assert L.semantic_diversity_loss(fr, yr, fs, ys, 5, unbiased=unbiased, method=method).item() == pytest.approx(sum(want))
    assert L.semantic_diversity_loss(fr, yr, fs, ys, 5, unbiased=unbiased, method=method,
                                     reduction="mean").item() == pytest.approx(sum(want) / 3)
    # zero when equal (class 4 has one real sample: leave it out), order invariance
    assert L.semantic_diversity_loss(fr[:10], yr[:10], fr[:10].clone(), yr[:10], 5, unbiased=unbiased, method=method).item() == pytest.approx(0.0, abs=1e-12)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    assert L.semantic_diversity_loss(fr, yr, fs[perm], ys[perm], 5, unbiased=unbiased,
                                     method=method).item() == pytest.approx(sum(want))


def test_semantic_diversity_gram_direct_gradients_agree_and_independence():
    fr = rnd(9, 3, seed=15)
    ys = lab([0, 0, 0, 1, 1, 1])
    yr = lab([0, 1, 0, 1, 0, 1, 0, 1, 0])
    grads = []
    for method in ("gram", "direct"):
        fs = rnd(6, 3, seed=16).requires_grad_(True)
        L.semantic_diversity_loss(fr, yr, fs, ys, 2, method=method).backward()
        grads.append(fs.grad)
    assert torch.allclose(grads[0], grads[1])
    fs = rnd(6, 3, seed=16)
    fs2 = fs.clone()
    fs2[3:] *= 4.0
    a = L.semantic_diversity_loss(fr, yr, fs, ys, 2, reduction="none")
    b = L.semantic_diversity_loss(fr, yr, fs2, ys, 2, reduction="none")
    assert b[0].item() == pytest.approx(a[0].item()) and b[1].item() != pytest.approx(a[1].item())


def test_semantic_diversity_unbiased_needs_two_samples():
    fr, fs = rnd(4, 3, seed=17), rnd(3, 3, seed=18)
    with pytest.raises(ValueError, match="at least 2 samples"):
        L.semantic_diversity_loss(fr, lab([0, 0, 1, 1]), fs, lab([0, 0, 1]), 2, unbiased=True)
    # biased is fine with a single sample
    L.semantic_diversity_loss(fr, lab([0, 0, 1, 1]), fs, lab([0, 0, 1]), 2)


# ----------------------------------------------------------------------------- historical prototypes
def test_historical_prototype_loss_and_scale():
    mu = t([[1.0, 2.0], [0.0, 0.0]])
    bank = t([[0.0, 0.0], [1.0, 1.0]])
    assert L.historical_prototype_loss(mu, bank).item() == pytest.approx(5.0 + 2.0)
    assert L.historical_prototype_loss(mu, bank, scale=0.5).item() == pytest.approx(3.5)
    assert L.historical_prototype_loss(mu, bank, reduction="mean").item() == pytest.approx(3.5)
    assert L.historical_prototype_loss(mu, bank, reduction="none").tolist() == pytest.approx([5.0, 2.0])
    m = torch.tensor([True, False])
    assert L.historical_prototype_loss(mu, bank, mask=m).item() == pytest.approx(5.0)
    pb = L.PrototypeBank(2, 2)
    pb.update(bank)
    assert L.historical_prototype_loss(mu, pb).item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="bank"):
        L.historical_prototype_loss(mu, t([[1.0, 2.0, 3.0]]))


def test_prototype_bank_first_update_then_ema_and_resume():
    pb = L.PrototypeBank(2, 3, momentum=0.9)
    assert not pb.initialized and torch.equal(pb.value, torch.zeros(2, 3))
    p1 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    pb.update(p1)
    assert pb.initialized and torch.equal(pb.value, p1.detach())
    assert not pb.value.requires_grad
    p2 = torch.tensor([[11.0, 12.0, 13.0], [0.0, 0.0, 0.0]])
    pb.update(p2)
    want = 0.9 * p1.detach() + 0.1 * p2
    assert torch.allclose(pb.value, want)
    # stored values are copies: mutating the input does not change the bank
    p2.add_(100.0)
    assert torch.allclose(pb.value, want)
    # resume
    pb2 = L.PrototypeBank(2, 3, momentum=0.9).load_state_dict(pb.state_dict())
    assert pb2.initialized and torch.allclose(pb2.value, want) and pb2.num_updates == 2
    p3 = torch.ones(2, 3)
    assert torch.allclose(pb2.update(p3), 0.9 * want + 0.1 * p3)
    with pytest.raises(ValueError):
        L.PrototypeBank(3, 3).load_state_dict(pb.state_dict())
    with pytest.raises(ValueError, match="protos"):
        pb.update(torch.ones(3, 3))


def test_prototype_bank_zero_init_and_present_mask():
    pz = L.PrototypeBank(1, 2, momentum=0.99, init="zero")
    pz.update(torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(pz.value, torch.tensor([[0.01, 0.02]]))
    pb = L.PrototypeBank(2, 1, momentum=0.5)
    pb.update(torch.tensor([[2.0], [8.0]]), present=torch.tensor([True, False]))
    assert pb.value.flatten().tolist() == [2.0, 0.0]
    pb.update(torch.tensor([[4.0], [6.0]]))  # class 1 seen first now -> stored
    assert pb.value.flatten().tolist() == [3.0, 6.0]


# ----------------------------------------------------------------------------- logit / feature matching
def test_logit_matching_hand_and_options():
    ls, lr = t([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]), t([[1.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    assert L.logit_matching_loss(ls, lr).item() == pytest.approx(4.0 + 2.0)
    assert L.logit_matching_loss(ls, lr, reduction="mean").item() == pytest.approx(1.0)
    assert L.logit_matching_loss(ls, lr, reduction="none").tolist() == pytest.approx([4.0, 2.0])
    # log_softmax space by hand
    def lsm(row):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        return [v - lse for v in row]
    want = 0.0
    for a, b in zip(ls.tolist(), lr.tolist()):
        want += sum((u - v) ** 2 for u, v in zip(lsm(a), lsm(b)))
    assert L.logit_matching_loss(ls, lr, space="log_softmax").item() == pytest.approx(want)
    assert L.logit_matching_loss(ls, ls.clone()).item() == 0.0
    # shift invariance only in log_softmax space
    assert L.logit_matching_loss(ls + 5.0, ls, space="log_softmax").item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="logits_real"):
        L.logit_matching_loss(ls, lr[:1])


def test_feature_matching_hand_and_options():
    fs = t([[[1.0, 2.0]], [[3.0, 4.0]]])  # (2, 1, 2)
    fr = t([[[0.0, 2.0]], [[3.0, 1.0]]])
    assert L.feature_matching_loss(fs, fr).item() == pytest.approx(1.0 + 9.0)
    assert L.feature_matching_loss(fs, fr, reduction="mean").item() == pytest.approx(10.0 / 4)
    assert L.feature_matching_loss(fs, fr, norm="l1").item() == pytest.approx(1.0 + 3.0)
    # batch mean: syn mean [[2,3]], real mean [[1.5,1.5]] -> diff (0.5, 1.5)
    assert L.feature_matching_loss(fs, fr, pairing="batch_mean").item() == pytest.approx(0.25 + 2.25)
    assert L.feature_matching_loss(fs, fr, pairing="batch_mean", norm="l1").item() == pytest.approx(2.0)
    # batch_mean allows different batch sizes
    assert L.feature_matching_loss(fs, fr[:1], pairing="batch_mean", norm="l1").item() == pytest.approx(2.0 + 1.0)
    assert L.feature_matching_loss(fs, fs.clone()).item() == 0.0
    # lists of layers add up
    assert L.feature_matching_loss([fs, fs], [fr, fs]).item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="f_real"):
        L.feature_matching_loss(fs, fr[:1])


# ----------------------------------------------------------------------------- SKD
def test_standardize_logits_moments_and_hand():
    x = rnd(5, 7, seed=19) * 3 + 2
    z = L.standardize_logits(x, tau=2.0)
    assert torch.allclose(z.mean(1), torch.zeros(5, dtype=DT), atol=1e-12)
    assert torch.allclose(z.std(1, unbiased=True), torch.full((5,), 0.5, dtype=DT), atol=1e-6)
    row = [1.0, 2.0, 6.0]
    m = sum(row) / 3
    sd = math.sqrt(sum((v - m) ** 2 for v in row) / 2)
    want = [(v - m) / ((sd + 1e-7) * 4.0) for v in row]
    assert L.standardize_logits(t([row]), 4.0)[0].tolist() == pytest.approx(want)
    with pytest.raises(ValueError):
        L.standardize_logits(t([[1.0]]), 1.0)


def test_skd_loss_matches_direct_kl():
    ls, lr = rnd(4, 5, seed=20), rnd(4, 5, seed=21)
    tau = 2.0
    def z(x):
        return (x - x.mean(1, keepdim=True)) / ((x.std(1, keepdim=True) + 1e-7) * tau)
    want = F.kl_div(F.log_softmax(z(ls), 1), F.softmax(z(lr), 1), reduction="batchmean")
    assert L.skd_loss(ls, lr, tau).item() == pytest.approx(want.item())
    # no standardisation: softmax(x / tau)
    want2 = F.kl_div(F.log_softmax(ls / tau, 1), F.softmax(lr / tau, 1), reduction="batchmean")
    assert L.skd_loss(ls, lr, tau, standardize=False).item() == pytest.approx(want2.item())
    # hand KL for one row
    a, b = [1.0, 0.0, -1.0], [0.0, 2.0, 0.0]
    pa = [math.exp(v / tau) for v in a]
    pa = [v / sum(pa) for v in pa]
    pb = [math.exp(v / tau) for v in b]
    pb = [v / sum(pb) for v in pb]
    kl = sum(p * math.log(p / q) for p, q in zip(pb, pa))  # KL(real=b || syn=a)
    assert L.skd_loss(t([a]), t([b]), tau, standardize=False).item() == pytest.approx(kl)
    # reductions and zero when equal
    per = L.skd_loss(ls, lr, tau, reduction="none")
    assert per.shape == (4,) and per.sum().item() == pytest.approx(L.skd_loss(ls, lr, tau, reduction="sum").item())
    assert L.skd_loss(ls, ls.clone(), tau).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="logits_real"):
        L.skd_loss(ls, lr[:, :3], tau)


# ----------------------------------------------------------------------------- EAD
def test_effect_alignment_hand_value_and_weights():
    gp = [t([1.0, 2.0]), t([0.0, 1.0])]
    gd = [t([3.0, 1.0]), t([2.0, 2.0])]
    gs = [t([1.0, 1.0]), t([5.0, -1.0])]
    # <gp,gd> = 5, 2 ; <gp,gs> = 3, -1 -> |(5+2) - (3-1)| = 5
    assert L.effect_alignment_loss(gp, gd, gs).item() == pytest.approx(5.0)
    # real_coef 0.5: |3.5 - 2| = 1.5
    assert L.effect_alignment_loss(gp, gd, gs, real_coef=0.5).item() == pytest.approx(1.5)
    # weights (2, 3): |2*5 + 3*2 - (2*3 + 3*(-1))| = |16 - 3| = 13
    assert L.effect_alignment_loss(gp, gd, gs, weights=[2.0, 3.0]).item() == pytest.approx(13.0)
    assert L.effect_alignment_loss(gp, gd, gs, weights=t([2.0, 3.0])).item() == pytest.approx(13.0)
    # absolute value: real_coef 0 -> |-(2)| = 2 ; signed -2
    assert L.effect_alignment_loss(gp, gd, gs, real_coef=0.0).item() == pytest.approx(2.0)
    assert L.effect_alignment_loss(gp, gd, gs, real_coef=0.0, absolute=False).item() == pytest.approx(-2.0)
    # zero when syn grads equal real grads and real_coef = 1
    assert L.effect_alignment_loss(gp, gd, [g.clone() for g in gd]).item() == 0.0


def test_effect_alignment_per_parameter_equals_flat():
    shapes = [(2, 3), (3,), (1, 2, 2)]
    def make(seed):
        return [tuple(rnd(*s, seed=seed * 10 + i) for i, s in enumerate(shapes)) for _ in range(1)] + \
               [tuple(rnd(*s, seed=seed * 10 + 5 + i) for i, s in enumerate(shapes))]
    gp, gd, gs = make(1), make(2), make(3)
    flat = lambda gs_: [torch.cat([p.reshape(-1) for p in e]) for e in gs_]
    a = L.effect_alignment_loss(gp, gd, gs, real_coef=0.7, weights=[0.3, 1.1])
    b = L.effect_alignment_loss(flat(gp), flat(gd), flat(gs), real_coef=0.7, weights=[0.3, 1.1])
    assert a.item() == pytest.approx(b.item())
    # by numpy
    want = 0.0
    for i, w in enumerate([0.3, 1.1]):
        p, d, s = flat(gp)[i].numpy(), flat(gd)[i].numpy(), flat(gs)[i].numpy()
        want += w * (0.7 * float(p @ d) - float(p @ s))
    assert a.item() == pytest.approx(abs(want))


def test_effect_alignment_gradcheck_and_errors():
    gp = [rnd(4, seed=30), rnd(4, seed=31)]
    gd = [rnd(4, seed=32), rnd(4, seed=33) + 3.0]
    s0 = rnd(4, seed=34).requires_grad_(True)
    s1 = rnd(4, seed=35).requires_grad_(True)

    def fn(a, b):
        return L.effect_alignment_loss(gp, gd, [a, (b[:2], b[2:])], real_coef=0.9, weights=[1.0, 0.5])

    assert abs(fn(s0, s1).item()) > 1e-3  # away from the kink of |.|
    assert torch.autograd.gradcheck(fn, (s0, s1))
    with pytest.raises(ValueError, match="checkpoint"):
        L.effect_alignment_loss(gp, gd, gd[:1])
    with pytest.raises(ValueError, match="weights"):
        L.effect_alignment_loss(gp, gd, gd, weights=[1.0])
    with pytest.raises(ValueError, match="sizes"):
        L.effect_alignment_loss(gp, gd, [gd[0], rnd(3)])


def test_replacement_alpha():
    # (|G| - |A|) / (|D| - |G| + |A|) = (100 - 10) / (1000 - 100 + 10)
    assert L.replacement_alpha(1000, 100, 10) == pytest.approx(90 / 910)
    assert L.replacement_alpha(60000, 60000, 100) == pytest.approx((60000 - 100) / 100)
    assert L.replacement_alpha(10, 5, 5) == 0.0
    with pytest.raises(ValueError):
        L.replacement_alpha(10, 10, 0)


# ----------------------------------------------------------------------------- shape validation
def test_bad_shapes_raise_value_error_naming_argument():
    f, y = rnd(4, 3), lab([0, 1, 0, 1])
    with pytest.raises(ValueError, match="y_real"):
        L.mean_embedding_loss(f, y[:3], f, y, 2)
    with pytest.raises(ValueError, match="f_syn"):
        L.mean_embedding_loss(f, y, f[:, :2], y, 2)
    with pytest.raises(ValueError, match="f_real"):
        L.mean_embedding_loss(f[0], y, f, y, 2)
    with pytest.raises(ValueError, match="y_syn"):
        L.mean_embedding_loss(f, y, f, y.double(), 2)
    with pytest.raises(ValueError, match="y_syn"):
        L.class_centralization_loss(f, y[:2], 2, 1.0, 0.0)
    with pytest.raises(ValueError, match="fmap_real"):
        L.local_covariance_loss(f, y, rnd(4, 3, 2, 2), y, 2)
    with pytest.raises(ValueError, match="fmap_syn"):
        L.local_covariance_loss(rnd(4, 3, 2, 2), y, rnd(4, 2, 2, 2), y, 2)
    with pytest.raises(ValueError, match="y_syn"):
        L.semantic_diversity_loss(f, y, f, y[:1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        L.mean_embedding_loss(f, y, f, y, 0)
    with pytest.raises(ValueError, match="reduction"):
        L.mean_embedding_loss(f, y, f, y, 2, reduction="avg")
    with pytest.raises(ValueError, match="y"):
        L.class_prototypes(f, y.view(2, 2), 2)


def test_float32_and_no_float64_promotion():
    f = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = [
        L.mean_embedding_loss(f, y, f * 2, y, 3),
        L.semantic_diversity_loss(f, y, f * 2, y, 3),
        L.local_covariance_loss(f.view(6, 1, 2, 2), y, f.view(6, 1, 2, 2) * 2, y, 3),
        L.class_centralization_loss(f, y, 3, 0.1, 0.5),
    ]
    assert all(o.dtype == torch.float32 and o.dim() == 0 for o in out)
