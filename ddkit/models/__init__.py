"""The model zoo of dataset distillation (DC / DSA / DM reference definitions).

Architectures follow the public DC/DSA/DM ``networks.py`` / ``utils.get_network``
definitions (facts only; the code here is ddkit's own):

* ``ConvNet``: ``depth`` x [Conv 3x3, norm, act, pool], width 128, instance norm
  (``GroupNorm(C, C, affine=True)``), ReLU, 2x2 average pooling, then one Linear.
  Single-channel inputs pad the first conv by 3, so 28x28 -> 32x32 and the ConvNet-3
  embedding is 128 * 4 * 4 = 2048. ``ConvNetD4`` is the depth-4 variant (64x64 inputs).
* ``ResNet10`` / ``ResNet18``: CIFAR ResNets (3x3 stem, BasicBlocks [1,1,1,1] /
  [2,2,2,2]) with instance norm; ``*BN`` variants use BatchNorm.
* ``AlexNet``, ``VGG11`` (instance norm; ``VGG11BN``), ``LeNet``, ``MLP``: the
  cross-architecture networks of the reference zoo, with its single-channel paddings.
* ``DenseNet121``: CIFAR-style DenseNet-121 (growth 32, blocks 6-12-24-16, 3x3 stem).

Every model has ``forward(x) -> logits``, ``embed(x) -> (N, D)`` (the input of the
last Linear layer), ``feature_maps(x) -> list`` of the per-stage outputs, in order,
an int ``mid_layer`` (index into ``feature_maps``) and an int ``embed_dim``.
``forward`` is computed through ``embed`` and ``embed`` through ``feature_maps``, so
no features are computed twice. Flattening uses ``flatten`` (works on
channels_last / non-contiguous tensors). The speed levers (torch.compile caches, channels-last
views, FLOP estimates, mixed precision) live in :mod:`ddkit.fast.speed`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core.checks import check_im_size, check_int
from .blocks import _as_hw
from .classic import AlexNet, LeNet, MLP, VGG
from .convnet import ConvNet
from .densenet import DenseNet
from .resnet import ResNet


__all__ = [
    "MODEL_NAMES",
    "get_model",
    "reinit_",
    "has_batchnorm",
    "ConvNet",
    "ResNet",
    "AlexNet",
    "VGG",
    "LeNet",
    "MLP",
    "DenseNet",
]

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict]] = {
    "ConvNet": (ConvNet, {"depth": 3}),
    "ConvNetD4": (ConvNet, {"depth": 4}),
    "ConvNetBN": (ConvNet, {"depth": 3, "norm": "batchnorm"}),
    "ResNet10": (ResNet, {"blocks": (1, 1, 1, 1), "norm": "instancenorm"}),
    "ResNet10BN": (ResNet, {"blocks": (1, 1, 1, 1), "norm": "batchnorm"}),
    "ResNet18": (ResNet, {"blocks": (2, 2, 2, 2), "norm": "instancenorm"}),
    "ResNet18BN": (ResNet, {"blocks": (2, 2, 2, 2), "norm": "batchnorm"}),
    "AlexNet": (AlexNet, {}),
    "VGG11": (VGG, {"cfg": "VGG11", "norm": "instancenorm"}),
    "VGG11BN": (VGG, {"cfg": "VGG11", "norm": "batchnorm"}),
    "LeNet": (LeNet, {}),
    "MLP": (MLP, {}),
    "DenseNet121": (DenseNet, {"blocks": (6, 12, 24, 16), "growth": 32}),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, channels: int, num_classes: int, im_size=(32, 32),
              generator: torch.Generator | None = None, **kw) -> nn.Module:
    """Build a zoo model by name (case-insensitive), e.g. ``get_model("ConvNet", 1, 10,
    (28, 28))``. ``kw`` override the architecture defaults (ConvNet: ``width``,
    ``depth``, ``norm``, ``act``, ``pool``; ResNet/VGG/DenseNet: ``norm``). With a
    ``generator`` the weights are drawn deterministically through :func:`reinit_`.
    Unknown names raise ``ValueError`` listing :data:`MODEL_NAMES`."""
    lookup = {n.lower(): n for n in MODEL_NAMES}
    key = lookup.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODEL_NAMES)}")
    cls, defaults = _REGISTRY[key]
    check_int("channels", channels)
    check_int("num_classes", num_classes)
    check_im_size("im_size", im_size)
    model = cls(int(channels), int(num_classes), _as_hw(im_size), **{**defaults, **kw})
    model.model_name = key
    if generator is not None:
        reinit_(model, generator)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """True when any submodule is a BatchNorm layer (batch statistics couple samples)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


@torch.no_grad()
def reinit_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise every parameter in place with each module's default init
    (``reset_parameters``; BatchNorm running statistics are reset too).

    A seed is drawn from ``generator`` (from the global RNG when None) and the default
    RNGs of the devices holding the parameters are seeded with it inside
    ``torch.random.fork_rng``, so the caller's global RNG state is untouched. Same
    generator state (and device) -> identical weights. Module and parameter objects
    keep their identity (optimizers / compiled modules stay valid). Returns ``model``.
    """
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device).item())
    else:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    tensors = list(model.parameters()) + list(model.buffers())
    devices = {t.device for t in tensors if t.device.type != "cpu"}
    dev_types = {d.type for d in devices}
    if len(dev_types) > 1:
        raise ValueError(f"reinit_: parameters on several device types {sorted(dev_types)}")
    if dev_types:
        dev_type = dev_types.pop()
        backend = getattr(torch, dev_type)
        indices = sorted({d.index if d.index is not None else backend.current_device()
                          for d in devices})
        rng = torch.random.fork_rng(devices=indices, device_type=dev_type)
    else:
        dev_type, backend, indices = "cpu", None, []
        rng = torch.random.fork_rng(devices=[])
    with rng:
        torch.default_generator.manual_seed(seed)
        for i in indices:
            if dev_type == "cuda":
                torch.cuda.default_generators[i].manual_seed(seed)
            else:  # other accelerators (mps, xpu): seed the backend's default RNG
                backend.manual_seed(seed)
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            elif isinstance(m, _BatchNorm):
                m.reset_running_stats()
    return model
