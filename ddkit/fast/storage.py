"""Compact image storage: uint8 pixels in memory or in memory-mapped ``.npy`` files, normalised per batch.

``load_dataset(..., storage=...)`` (``ddkit.data``) chooses how an :class:`~ddkit.data.ImageDataset`
holds its images:

- ``"float32"`` (default): normalised float32 tensors, 4 bytes per pixel value.
- ``"uint8"``: the [0, 255] pixels in a uint8 tensor (1 byte per value, 4x less memory); each batch is
  normalised on the device it is drawn to, ``(x / 255 - mean) / std``, the same operations in the
  same order as the float32 path, so batches equal the float32 path's (bit for bit on the CPU).
- ``"memmap"``: the pixels in a read-only memory-mapped ``.npy`` file (``np.load(mmap_mode="r")``)
  that :func:`cached_arrays` writes once into a cache folder; only the rows a batch needs are read.
  For data larger than memory (ImageNet-1K at 64x64 is 15 GB of uint8, 63 GB as float32).

In the last two cases ``x_train`` / ``x_test`` are an :class:`ImageStore`: a float view that old
callers use like the float32 tensor. Indexing it (``x[idx]``, ``x[a:b]``) returns normalised float32
rows; whole-tensor use (a torch function, ``.cpu()``, ``.float()``, ``.detach()``) materialises the
full float32 tensor (the memory of the float32 path, so hot paths go through indexing or
``ImageDataset.get_images(idx, device)``, which moves the uint8 rows first and normalises on ``device``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch

#: Storage kinds of ``load_dataset(..., storage=...)``.
STORAGES = ("float32", "uint8", "memmap")
#: Bump when the cache layout changes (part of every cache key).
CACHE_FORMAT = 1


def check_storage(storage: str) -> None:
    if storage not in STORAGES:
        raise ValueError(f"storage={storage!r}; expected one of {list(STORAGES)}")


def to_uint8(x) -> np.ndarray:
    """[0, 255] uint8 pixels from uint8 input (unchanged) or float input in [0, 1] (rounded to the
    nearest 1/255: float data is quantised to 8 bits)."""
    x = x.numpy() if torch.is_tensor(x) else np.asarray(x)
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(x.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def normalize_uint8(raw: torch.Tensor, mean, std) -> torch.Tensor:
    """``(raw / 255 - mean) / std`` in float32 on ``raw``'s device (the float32 path's operations)."""
    x = raw.float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


class ImageStore:
    """N x C x H x W uint8 pixels (a torch tensor, or a read-only numpy memmap) seen as normalised
    float32 images on ``device`` (module docstring)."""

    def __init__(self, pixels, mean, std, device="cpu"):
        if not torch.is_tensor(pixels) and not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a uint8 torch tensor or numpy array, got {type(pixels).__name__}")
        if pixels.dtype not in (torch.uint8, np.uint8) or pixels.ndim != 4:
            raise ValueError(f"pixels must be N x C x H x W uint8, got dtype {pixels.dtype} shape {tuple(pixels.shape)}")
        self.pixels, self.norm_mean, self.norm_std = pixels, tuple(mean), tuple(std)
        self.device = torch.device(device) if not torch.is_tensor(pixels) else pixels.device

    @property
    def kind(self) -> str:
        return "uint8" if torch.is_tensor(self.pixels) else "memmap"

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.pixels.shape)

    dtype = torch.float32
    ndim = 4

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored pixels (on disk for ``memmap``)."""
        return int(np.prod(self.pixels.shape))

    def raw(self, idx, device=None) -> torch.Tensor:
        """The uint8 rows ``idx`` (int, slice, index tensor / list) on ``device`` (default: the store's)."""
        dev = self.device if device is None else torch.device(device)
        if torch.is_tensor(self.pixels):
            if torch.is_tensor(idx):
                idx = idx.to(self.pixels.device)
            return self.pixels[idx].to(dev)
        if torch.is_tensor(idx):
            idx = idx.cpu().numpy()
        rows = np.array(self.pixels[idx], copy=True)  # reads only these rows from the file
        return torch.from_numpy(rows).to(dev)

    def get(self, idx, device=None) -> torch.Tensor:
        """Normalised float32 rows ``idx`` on ``device``: the uint8 rows move first, then normalise."""
        raw = self.raw(idx, device)
        if raw.dim() == 3:  # one image (an int index)
            return normalize_uint8(raw.unsqueeze(0), self.norm_mean, self.norm_std)[0]
        return normalize_uint8(raw, self.norm_mean, self.norm_std)

    __getitem__ = get

    def to(self, device, *args, **kwargs) -> "ImageStore":
        """A store delivering batches on ``device``: uint8 pixels move there; a memmap stays on disk."""
        if isinstance(device, torch.dtype):
            return self.materialize().to(device, *args, **kwargs)
        device = torch.device(device)
        if torch.is_tensor(self.pixels):
            return ImageStore(self.pixels.to(device), self.norm_mean, self.norm_std)
        return ImageStore(self.pixels, self.norm_mean, self.norm_std, device)

    def materialize(self) -> torch.Tensor:
        """The whole normalised float32 tensor (the float32 path's memory)."""
        return self.get(slice(None))

    def cpu(self) -> torch.Tensor:
        return self.materialize().cpu()

    def float(self) -> torch.Tensor:
        return self.materialize()

    def detach(self) -> torch.Tensor:
        return self.materialize()

    def numpy(self) -> np.ndarray:
        return self.cpu().numpy()

    def __getattr__(self, name):
        """Any other tensor method (``mean``, ``std``, ``flatten``, ...) on the materialised tensor."""
        if name.startswith("_") or name in ("pixels", "norm_mean", "norm_std", "device"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def dense(a):
            if isinstance(a, ImageStore):
                return a.materialize()
            if isinstance(a, (list, tuple)):
                return type(a)(dense(b) for b in a)
            return a

        return func(*dense(args), **{k: dense(v) for k, v in (kwargs or {}).items()})

    def __repr__(self):
        return f"ImageStore({self.kind}, shape={tuple(self.shape)}, device={self.device})"


# ---- the on-disk cache -------------------------------------------------------------------------

def cache_key(**what) -> str:
    """A key from everything that determines a cached dataset (JSON of the sorted items, hashed)."""
    blob = json.dumps({"format": CACHE_FORMAT, **what}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def file_identity(path: Path) -> dict:
    """What identifies a source file's content cheaply: absolute path, size, modification time."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cached_arrays(cache_dir: Path, key: str, build: Callable[[Path], dict]) -> dict:
    """The cached dataset ``cache_dir/key``, written once by ``build(tmp_dir) -> meta`` when absent.

    ``build`` writes ``x_train.npy``, ``y_train.npy``, ``x_test.npy``, ``y_test.npy`` into a fresh
    temporary folder and returns the metadata (name, mean, std, classes, dsa_strategy); the folder is
    renamed into place only when complete (atomic: a crash leaves no half-written entry, and a
    concurrent writer's finished copy wins). Returns :func:`open_cached` of the entry."""
    final = Path(cache_dir) / key
    if not (final / "meta.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            meta = build(tmp)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished first: keep its copy
                if not (final / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cached(final)


def open_cached(folder: Path) -> dict:
    """``{"meta", "x_train", "y_train", "x_test", "y_test"}``: images memory-mapped read-only, labels in memory."""
    folder = Path(folder)
    out = {"meta": json.loads((folder / "meta.json").read_text())}
    for split in ("train", "test"):
        out[f"x_{split}"] = np.load(folder / f"x_{split}.npy", mmap_mode="r")
        out[f"y_{split}"] = np.load(folder / f"y_{split}.npy")
    return out


def write_split(folder: Path, split: str, x, y) -> None:
    """Save one split's uint8 images and int64 labels as ``.npy`` files in ``folder``."""
    np.save(Path(folder) / f"x_{split}.npy", to_uint8(x))
    np.save(Path(folder) / f"y_{split}.npy", np.asarray(y, dtype=np.int64))


# ---- ImageFolder trees -------------------------------------------------------------------------

def imagefolder_transform(resolution: int):
    """The field's resize for ImageNet-style folders (MTT / DATM buffers of ImageNette, ImageWoof,
    ImageNet-1K subsets): shorter side to ``resolution`` (bilinear, antialiased), then a centre crop of
    ``resolution`` x ``resolution``."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(resolution), transforms.CenterCrop(resolution)])


def write_imagefolder_split(folder: Path, split: str, root: Path, resolution: int, class_to_idx=None) -> list:
    """Stream an ImageFolder tree (``root/<class>/<image>``) through torchvision's ``ImageFolder`` and
    :func:`imagefolder_transform` into ``folder/x_<split>.npy`` (uint8, N x 3 x R x R, written row by
    row through ``np.lib.format.open_memmap``: memory stays one image) and ``y_<split>.npy``. Labels
    follow ``class_to_idx`` (the train split's) when given. Returns the split's class names."""
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(root), transform=imagefolder_transform(resolution))
    if class_to_idx is not None:
        unknown = sorted(set(ds.classes) - set(class_to_idx))
        if unknown:
            raise ValueError(f"{root} has classes {unknown[:5]} that the train split lacks")
    to_global = [class_to_idx[c] for c in ds.classes] if class_to_idx is not None else list(range(len(ds.classes)))
    x = np.lib.format.open_memmap(Path(folder) / f"x_{split}.npy", mode="w+", dtype=np.uint8,
                                  shape=(len(ds), 3, resolution, resolution))
    for i in range(len(ds)):
        img, _ = ds[i]
        x[i] = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    x.flush()
    del x
    np.save(Path(folder) / f"y_{split}.npy", np.array([to_global[t] for _, t in ds.samples], dtype=np.int64))
    return ds.classes


def imagefolder_splits(root: Path) -> tuple:
    """``(train_dir, test_dir)`` of an ImageFolder dataset: ``root/train`` and ``root/val`` (or ``root/test``)."""
    root = Path(root)
    test = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test is None:
        raise FileNotFoundError(f"{root} is not an ImageFolder dataset: expected {root}/train/<class>/* and "
                                f"{root}/val/<class>/* (or test/), e.g. ImageNette's imagenette2 folder")
    return root / "train", test
