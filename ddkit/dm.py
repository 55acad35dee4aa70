"""Shared pieces of the distribution-matching notebooks built on the DM loop (issue 4:
IID, notebook 03; DSDM, notebook 04).

The objectives themselves live in the notebooks (one visible cell each); what both notebooks
would otherwise copy lives here: the pool factory with its checks, the (embedding, last
feature map) pair from one forward pass, feature extraction for t-SNE, the DSDM
learning-rate rule, pixel-range clamping and the memory-bank update of DSDM's Algorithm 1.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .losses import PrototypeBank, class_prototypes
from .pools import IDMQueue, PretrainedPool, RandomPool
from .train import embed_all  # noqa: F401  (re-exported: the notebooks import it from here)

#: Pool kinds a notebook can ask for.
POOL_KINDS = ("random", "idm", "pretrained")


def make_pool(kind: str, dataset, model: str = "ConvNet", *, device=None, generator=None, seed: int = 0, **kw):
    """Build a model pool by kind: ``"random"`` (DM: a fresh init per iteration),
    ``"idm"`` (IDM's queue of partly trained nets, :class:`ddkit.pools.IDMQueue`; ``kw`` are
    its settings) or ``"pretrained"`` (:class:`ddkit.pools.PretrainedPool`; ``kw``:
    ``num_models``, ``epochs``, ``train_per_class``, ``augment``, ``cache_dir``, ...).
    An unknown kind raises ``ValueError`` listing :data:`POOL_KINDS`, before any work."""
    if kind not in POOL_KINDS:
        raise ValueError(f"unknown pool kind {kind!r}; expected one of {list(POOL_KINDS)}")
    if kind == "random":
        if kw:
            raise ValueError(f"the random pool takes no settings, got {sorted(kw)}")
        return RandomPool.for_dataset(model, dataset, device=device)
    if kind == "idm":
        return IDMQueue(model, dataset.channels, dataset.num_classes, dataset.im_size, device=device,
                        generator=generator, **kw)
    return PretrainedPool(model, dataset, seed=seed, device=device, **kw)


def check_weights(**weights) -> None:
    """``ValueError`` naming the first negative (or non-finite) loss weight."""
    for name, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not (w >= 0) or w == float("inf"):
            raise ValueError(f"{name}={w!r}: loss weights must be finite numbers >= 0")


def embed_and_map(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                  num_classes: int | None = None):
    """``(net.embed(x), net.feature_maps(x)[-1])`` from one forward pass.

    ConvNet's embedding is the flattened last block (REFERENCE_NOTES), ResNet's the pooled
    last stage: both come from the last feature map, so one pass gives both. With labels
    ``y``, a BatchNorm net runs one pass per class (``ddkit.distill.per_class_forward``)."""
    def last_map(inp):
        return net.feature_maps(inp)[-1]

    if y is not None:
        from .distill import per_class_forward
        last = per_class_forward(last_map, net, x, y, num_classes)
    else:
        last = last_map(x)
    if hasattr(net, "embed_from_last"):
        return net.embed_from_last(last), last
    return net.embed(x), last


def pixel_lr_to_normalized(lr_pixel: float, dataset) -> float:
    """The learning rate in ddkit's normalised image space equivalent to ``lr_pixel`` on
    [0, 1] pixels: with x = (p - mean) / std, an SGD step of ``lr`` on p is a step of
    ``lr / std^2`` on x (averaged over channels)."""
    inv = sum(1.0 / (s * s) for s in dataset.std) / len(dataset.std)
    return float(lr_pixel) * inv


def dsdm_lr(ipc: int, dataset=None, base: float = 0.1) -> float:
    """DSDM's image learning rate ``base * ipc / 10`` (0.01 at IPC 1, 0.1 at IPC 10, 0.5 at IPC 50;
    REFERENCE_NOTES seed 4). The reference optimises [0, 1] pixels; with a ``dataset`` the rate is
    converted to ddkit's normalised space (:func:`pixel_lr_to_normalized`)."""
    if ipc < 1:
        raise ValueError(f"ipc={ipc} must be >= 1")
    lr = base * ipc / 10.0
    return pixel_lr_to_normalized(lr, dataset) if dataset is not None else lr


def pixel_bounds(dataset, device=None):
    """Per-channel (lo, hi) tensors (1, C, 1, 1) of the normalised images of [0, 1] pixels."""
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@torch.no_grad()
def clamp_pixels_(images: torch.Tensor, dataset) -> torch.Tensor:
    """Clamp normalised images in place to the [0, 1] pixel range, per channel (DSDM/IDC)."""
    lo, hi = pixel_bounds(dataset, images.device)
    images.copy_(torch.maximum(torch.minimum(images, hi), lo))
    return images


@torch.no_grad()
def synthetic_prototypes(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """Class prototypes (C, D) and the present mask of ``net``'s embeddings of ``x`` (no grad)."""
    return class_prototypes(embed_all(net, x), y, num_classes)


@torch.no_grad()
def update_bank(bank: PrototypeBank, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                num_classes: int) -> torch.Tensor:
    """DSDM Algorithm 1, lines 11-12 (Eq. 7-8): the prototypes of the optimised synthetic data
    under the current iteration's model, folded into the memory bank. Returns the bank value."""
    protos, present = synthetic_prototypes(net, x, y, num_classes)
    return bank.update(protos, present)
