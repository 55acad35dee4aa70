"""The synthetic set and what the DM family's objectives receive: :class:`SyntheticSet` (learnable
images, class-major labels, the factor-l partition), :func:`init_synthetic`, :class:`MatchBatch` and
the DM objective (Eq. 2), with the per-class helpers the loops of :mod:`ddkit.methods.distill` share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..augment import decode, mosaic_init
from ..core.checks import check_int, check_ipc
from ..core.utils import resolve_device
from ..losses import mean_embedding_loss
from ..models import has_batchnorm


@dataclass
class SyntheticSet:
    """Learnable synthetic images (normalised space), class-major labels, partition factor."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    factor: int = 1

    @property
    def ipc(self) -> int:
        return len(self.labels) // self.num_classes

    def decoded(self):
        """(x, y) the training images: factor x factor upsampled quadrants per stored image."""
        return decode(self.images, self.labels, self.factor)

    def detached(self):
        """Decoded images and labels without grad (for evaluation and saving)."""
        with torch.no_grad():
            x, y = self.decoded()
        return x.detach().clone(), y.detach().clone()


def init_synthetic(dataset, ipc: int, factor: int = 1, init: str = "real", generator=None,
                   device=None) -> SyntheticSet:
    """``ipc`` stored images per class: random real images (``init="real"``; with ``factor > 1``
    a mosaic of factor^2 downscaled real images each) or Gaussian noise (``init="noise"``)."""
    if init not in ("real", "noise"):
        raise ValueError(f"init={init!r}; expected 'real' or 'noise'")
    if init == "real":  # noise needs no real images
        check_ipc(ipc, dataset, factor)
    check_int("ipc", ipc)
    dev = resolve_device(device)
    k = dataset.num_classes
    labels = torch.arange(k).repeat_interleave(ipc)
    if init == "noise":
        images = torch.randn(k * ipc, dataset.channels, *dataset.im_size, generator=generator)
    else:
        per_class = []
        for c in range(k):
            real = dataset.sample(c, ipc * factor * factor, generator).cpu()
            per_class.append(mosaic_init(real, factor) if factor > 1 else real)
        images = torch.cat(per_class)
    return SyntheticSet(images.to(dev).detach().clone().requires_grad_(True), labels.to(dev), k, factor)


@dataclass
class MatchBatch:
    """What an objective sees in one iteration (both sides already siamese-augmented)."""

    net: nn.Module
    x_real: torch.Tensor
    y_real: torch.Tensor
    x_syn: torch.Tensor
    y_syn: torch.Tensor
    iteration: int
    num_classes: int

    def features(self, fn: Callable | None = None) -> tuple:
        """``(real features, synthetic features)``: ``fn(net, x, y, num_classes)`` on both sides (default:
        the embedding, class by class where the net has BatchNorm: :func:`per_class_forward` of
        ``net.embed``), the real side under ``torch.no_grad()``: a constant target, as in every DM-family
        reference code. E.g. ``ddkit.methods.dm.embed_and_map`` gives (embedding, last feature map) pairs."""
        fn = fn or _embed
        with torch.no_grad():
            real = fn(self.net, self.x_real, self.y_real, self.num_classes)
        return real, fn(self.net, self.x_syn, self.y_syn, self.num_classes)


def _embed(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return per_class_forward(net.embed, net, x, y, num_classes)


#: How ``distill`` steps the images (see the module docstring).
IMAGE_STEPS = ("joint", "per_class")


def class_rows(syn: SyntheticSet, c: int) -> slice:
    """Rows of ``syn.images`` holding class ``c`` (the stored set is class-major)."""
    ipc = syn.ipc
    return slice(c * ipc, (c + 1) * ipc)


def real_class_rows(y_real: torch.Tensor, classes) -> dict:
    """``{class: slice}`` of a class-major real batch (:meth:`ddkit.data.ImageDataset.sample_classes`)
    by the counts actually drawn: a class smaller than the batch size gives all its images, so a
    class's rows are not ``batch_real`` wide in general."""
    counts = torch.bincount(y_real, minlength=max(classes, default=-1) + 1).tolist()
    rows, start = {}, 0
    for c in classes:
        rows[c] = slice(start, start + counts[c])
        start += counts[c]
    return rows


#: Images per pass on the side without autograd (the real batch): bounds activation memory
#: (a ConvNet-3 pass holds ~0.5 MB per image per layer; 2560 real images at once would be
#: 1.3 GB per activation) at no cost in speed; exact for per-sample normalisation.
NO_GRAD_CHUNK = 512


def per_class_forward(fn: Callable, net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                      chunk: int = NO_GRAD_CHUNK):
    """``fn(x)`` in one pass when ``net`` has no BatchNorm (instance norm: identical results;
    without autograd in passes of ``chunk`` images), else one pass per class (BatchNorm
    statistics must stay per class, as in the reference)."""
    if not has_batchnorm(net):
        if chunk and len(x) > chunk and not torch.is_grad_enabled():
            return torch.cat([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        return fn(x)
    out = None
    for c in range(num_classes):
        idx = (y == c).nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        part = fn(x[idx])
        if out is None:
            out = part.new_empty((len(x),) + tuple(part.shape[1:]))
        out = out.index_copy(0, idx, part)
    return out


def dm_objective(batch: MatchBatch) -> dict:
    """DM (Zhao & Bilen 2023, Eq. 2; docs/sources.md, "DM"): sum over classes of the squared
    distance between mean real and mean synthetic embeddings; real side without grad."""
    f_real, f_syn = batch.features()
    loss = mean_embedding_loss(f_real, batch.y_real, f_syn, batch.y_syn, batch.num_classes)
    return {"loss": loss}
