import pytest
import torch

from ddkit.methods.coreset import forgetting_counts, herding, k_center, select


def test_herding_mean_is_closer_than_random():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 5, generator=g) * torch.tensor([5.0, 1, 1, 1, 1])
    h = herding(f, 5)
    r = torch.randperm(200, generator=g)[:5]
    assert len(set(h.tolist())) == 5
    err = lambda idx: (f[idx].mean(0) - f.mean(0)).norm()  # noqa: E731
    assert err(h) < err(r)


def test_k_center_covers_better_than_random():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(300, 2, generator=g)
    cover = lambda idx: torch.cdist(f, f[idx]).min(1).values.max()  # noqa: E731
    assert cover(k_center(f, 10)) < cover(torch.randperm(300, generator=g)[:10])


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "forgetting"])
def test_select_is_class_balanced(tiny_ds, method):
    idx = select(method, tiny_ds, 3, seed=0, train_epochs=1)
    assert torch.equal(torch.bincount(tiny_ds.y_train[idx], minlength=4), torch.full((4,), 3))
    assert len(set(idx.tolist())) == 12


def test_forgetting_counts_shape(tiny_ds):
    c = forgetting_counts(tiny_ds, epochs=2)
    assert c.shape == (80,) and (c >= 0).all() and (c <= 2).all()


def test_unknown_method():
    with pytest.raises(ValueError, match="herding"):
        select("gradmatch", None, 1)
