"""uint8 / memory-mapped dataset storage (ddkit.fast.storage) and ImageFolder trees."""
import os

import numpy as np
import pytest
import torch

from ddkit.data import is_dataset_name, load_dataset
from ddkit.fast.storage import ImageStore, cache_key, to_uint8


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def stored(mnist5k, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {"float32": mnist5k, "uint8": load_dataset("mnist5k", storage="uint8"),
            "memmap": load_dataset("mnist5k", storage="memmap", cache_dir=cache), "cache": cache}


@pytest.mark.parametrize("kind", ["uint8", "memmap"])
def test_compact_storage_draws_the_float_paths_batches(stored, kind):
    ref, ds = stored["float32"], stored[kind]
    assert ds.storage == kind and ref.storage == "float32"
    assert isinstance(ds.x_train, ImageStore) and ds.x_train.pixels.dtype in (torch.uint8, np.uint8)
    assert ds.x_train.nbytes * 4 == ref.x_train.numel() * ref.x_train.element_size()  # 4x less
    xa, ya = ref.sample_classes(16, generator=_gen(3))
    xb, yb = ds.sample_classes(16, generator=_gen(3))
    assert torch.equal(ya, yb) and xb.dtype == torch.float32
    torch.testing.assert_close(xb, xa, rtol=0, atol=1e-6)  # same operations: equal up to float rounding
    torch.testing.assert_close(ds.sample(4, 5, _gen(1)), ref.sample(4, 5, _gen(1)), rtol=0, atol=1e-6)
    # the float view keeps old callers working: slicing, indexing, whole-tensor use
    torch.testing.assert_close(ds.x_test[10:20], ref.x_test[10:20], rtol=0, atol=1e-6)
    torch.testing.assert_close(ds.x_train[7], ref.x_train[7], rtol=0, atol=1e-6)
    assert ds.x_train.shape == ref.x_train.shape and len(ds.x_train) == len(ref.x_train)
    assert abs(ds.x_train.mean().item() - ref.x_train.mean().item()) < 1e-5
    torch.testing.assert_close(torch.cat([ds.x_test[:3], ds.x_test[3:5]]), ref.x_test[:5], rtol=0, atol=1e-6)
    assert torch.equal(ds.class_indices(2), ref.class_indices(2))


def test_get_images_normalises_on_the_target_device(stored):
    ds = stored["uint8"]
    idx = torch.tensor([5, 0, 3999])
    x = ds.get_images(idx, "cpu")
    hand = (ds.x_train.pixels[idx].float() / 255.0 - 0.1307) / 0.3081  # MNIST's constants, by hand
    torch.testing.assert_close(x, hand, rtol=0, atol=1e-6)
    moved = ds.to("meta")  # a device without data: the uint8 tensor moves, normalisation happens there
    assert moved.x_train.pixels.device.type == "meta" and moved.get_images(idx).device.type == "meta"


def test_memmap_cache_is_written_once_atomically_and_reused(stored, tmp_path):
    cache = stored["cache"]
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left
    x_file = entries[0] / "x_train.npy"
    assert np.load(x_file, mmap_mode="r").dtype == np.uint8
    stamp = x_file.stat().st_mtime_ns
    again = load_dataset("mnist5k", storage="memmap", cache_dir=cache)
    assert x_file.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert isinstance(again.x_train.pixels, np.memmap) or isinstance(again.x_train.pixels.base, np.memmap)
    # float32 / uint8 from the cache equal the direct load
    via_cache = load_dataset("mnist5k", storage="uint8", cache_dir=cache)
    assert torch.equal(via_cache.x_train.pixels, stored["uint8"].x_train.pixels)


def test_cache_write_failure_leaves_nothing(tmp_path, monkeypatch):
    import ddkit.fast.storage as st

    def boom(folder, split, x, y):
        np.save(folder / f"x_{split}.npy", np.zeros((1, 1, 2, 2), np.uint8))
        raise OSError("disk full")

    monkeypatch.setattr(st, "write_split", boom)
    with pytest.raises(OSError, match="disk full"):
        load_dataset("mnist5k", storage="memmap", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_npz_memmap_keyed_by_file_and_float_input_quantised(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(12, 8, 8, 3)).astype(np.uint8)
    y = np.repeat(np.arange(3), 4)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    ref = load_dataset(str(path))
    mm = load_dataset(str(path), storage="memmap", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(np.asarray(mm.x_train.pixels), x.transpose(0, 3, 1, 2))
    torch.testing.assert_close(mm.x_train[:], ref.x_train, rtol=0, atol=1e-5)
    assert mm.mean == ref.mean and mm.std == ref.std
    # a changed file is a new cache entry (keyed by path, size, mtime), not a stale read
    np.savez(path, x_train=255 - x, y_train=y, x_test=x[:6], y_test=y[:6])
    os.utime(path, ns=(1, 1))
    mm2 = load_dataset(str(path), storage="memmap", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(np.asarray(mm2.x_train.pixels), 255 - x.transpose(0, 3, 1, 2))
    assert len(list((tmp_path / "c").iterdir())) == 2
    # float pixels in [0, 1] are rounded to the nearest 1/255
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.5, 1.0, 1.2], np.float32)), [0, 128, 255, 255])


def _png_tree(root, classes, per_split, size, seed=0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    images = {}
    for split, n in per_split.items():
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
                images[(split, c, i)] = arr
    return images


def test_imagefolder_tree_resized_and_center_cropped(tmp_path):
    from PIL import Image

    root = tmp_path / "tinynette"
    images = _png_tree(root, ["n01", "n02", "n03"], {"train": 2, "val": 1}, size=(24, 16))
    assert is_dataset_name(str(root))
    ds = load_dataset(str(root), storage="memmap", cache_dir=tmp_path / "cache", resolution=8)
    assert ds.classes == ["n01", "n02", "n03"] and ds.x_train.shape == (6, 3, 8, 8)
    assert ds.y_train.tolist() == [0, 0, 1, 1, 2, 2] and ds.y_test.tolist() == [0, 1, 2]
    assert ds.mean == (0.485, 0.456, 0.406)
    # by hand: shorter side (16) to 8 keeps the aspect ratio -> 12 x 8, then the centre 8 x 8 (columns 2..9)
    im = Image.fromarray(images[("train", "n02", 1)]).resize((12, 8), Image.BILINEAR)
    expect = np.asarray(im)[:, 2:10].transpose(2, 0, 1)
    np.testing.assert_array_equal(np.asarray(ds.x_train.pixels[3]), expect)
    # the float32 view of the same cache entry (no second decode)
    f = load_dataset(str(root), cache_dir=tmp_path / "cache", resolution=8)
    assert f.storage == "float32" and len(list((tmp_path / "cache").iterdir())) == 1
    torch.testing.assert_close(f.x_train, ds.x_train[:], rtol=0, atol=1e-6)
    other = load_dataset(str(root), storage="uint8", cache_dir=tmp_path / "cache", resolution=12)
    assert other.x_train.shape == (6, 3, 12, 12) and len(list((tmp_path / "cache").iterdir())) == 2


def test_bad_storage_and_resolution(tmp_path):
    with pytest.raises(ValueError, match="storage='fp16'.*float32"):
        load_dataset("mnist5k", storage="fp16")
    root = tmp_path / "t"
    _png_tree(root, ["a"], {"train": 1, "val": 1}, size=(8, 8))
    with pytest.raises(ValueError, match="resolution=2"):
        load_dataset(str(root), resolution=2, cache_dir=tmp_path / "c")
    assert cache_key(a=1) != cache_key(a=2) and cache_key(a=1, b=2) == cache_key(b=2, a=1)
