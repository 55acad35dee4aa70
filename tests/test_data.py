import numpy as np
import pytest
import torch

from ddkit.data import load_dataset


def test_mnist5k_shapes_balance_normalisation(mnist5k):
    ds = mnist5k
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 400))
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 100))
    assert (ds.num_classes, ds.channels, ds.im_size) == (10, 1, (28, 28))
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    # normalised with MNIST's constants: roughly zero mean / unit std
    assert abs(ds.x_train.mean().item()) < 0.1 and 0.9 < ds.x_train.std().item() < 1.1
    x01 = ds.denormalize(ds.x_train[:5])
    assert x01.min() >= 0 and x01.max() <= 1
    assert torch.allclose(ds.normalize(x01), ds.x_train[:5], atol=1e-5)
    assert ds.dsa_strategy == "color_crop_cutout_scale_rotate"  # digits: no flip


def test_mnist5k_split_is_deterministic_and_disjoint(mnist5k):
    again = load_dataset("mnist5k")
    assert torch.equal(again.x_train, mnist5k.x_train)
    tr = {tuple(r) for r in mnist5k.x_train.flatten(1)[:, ::7].numpy().round(3).tolist()}
    te = {tuple(r) for r in mnist5k.x_test.flatten(1)[:, ::7].numpy().round(3).tolist()}
    assert len(tr & te) <= 2  # MNIST has a few exact duplicates at most


def test_sampling(mnist5k):
    g = torch.Generator().manual_seed(0)
    idx = mnist5k.sample_indices(3, 50, g)
    assert len(set(idx.tolist())) == 50 and (mnist5k.y_train[idx] == 3).all()
    x = mnist5k.sample(3, 5, torch.Generator().manual_seed(1))
    assert torch.equal(x, mnist5k.sample(3, 5, torch.Generator().manual_seed(1)))
    xb, yb = mnist5k.sample_classes(4, generator=g)
    assert xb.shape == (40, 1, 28, 28) and torch.equal(yb, torch.arange(10).repeat_interleave(4))
    assert torch.equal(mnist5k.class_indices(2), torch.nonzero(mnist5k.y_train == 2).squeeze(1))


def test_npz_loading_layouts(tmp_path):
    rng = np.random.RandomState(0)
    for layout, shape in [("nhw", (12, 8, 8)), ("nhwc", (12, 8, 8, 3)), ("nchw", (12, 3, 8, 8))]:
        p = tmp_path / f"{layout}.npz"
        np.savez(p, x_train=rng.randint(0, 256, shape).astype(np.uint8), y_train=np.arange(12) % 3,
                 x_test=rng.randint(0, 256, (6,) + shape[1:]).astype(np.uint8), y_test=np.arange(6) % 3)
        ds = load_dataset(str(p))
        c = 1 if layout == "nhw" else 3
        assert ds.x_train.shape == (12, c, 8, 8) and ds.num_classes == 3 and ds.channels == c
        assert abs(ds.x_train.mean().item()) < 1e-4


def test_npz_errors(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4, int))
    with pytest.raises(ValueError, match="x_test"):
        load_dataset(str(p))
    p2 = tmp_path / "float_labels.npz"
    np.savez(p2, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4), x_test=np.zeros((2, 8, 8)),
             y_test=np.zeros(2, int))
    with pytest.raises(ValueError, match="integer labels"):
        load_dataset(str(p2))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_dataset(str(tmp_path / "junk.npz"))
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "missing.npz"))


def test_unknown_and_missing_datasets(tmp_path):
    with pytest.raises(ValueError, match="mnist5k"):
        load_dataset("imagenet-1k")
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        load_dataset("tinyimagenet", root=tmp_path)


def test_fashion_mnist_from_debian_package(tmp_path):
    from ddkit.data import DEBIAN_FASHION_MNIST
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion_mnist", root=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.classes[0] == "T-shirt/top" and ds.dsa_strategy.endswith("flip_scale_rotate")
