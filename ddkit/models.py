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
views, FLOP estimates, mixed precision) live in :mod:`ddkit.speed`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .checks import check_im_size, check_int

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


# --------------------------------------------------------------------------- helpers

_NORM_ALIASES = {
    "instancenorm": "instancenorm", "instance": "instancenorm", "in": "instancenorm",
    "batchnorm": "batchnorm", "batch": "batchnorm", "bn": "batchnorm",
    "groupnorm": "groupnorm", "group": "groupnorm", "gn": "groupnorm",
    "layernorm": "layernorm", "layer": "layernorm", "ln": "layernorm",
    "none": "none", None: "none",
}


def _norm_kind(norm, allowed=("instancenorm", "batchnorm", "groupnorm", "none")) -> str:
    key = norm.lower() if isinstance(norm, str) else norm
    kind = _NORM_ALIASES.get(key)
    if kind is None or kind not in allowed:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(allowed)}")
    return kind


def _norm2d(kind: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer. 'instancenorm' is GroupNorm(C, C, affine=True) as in
    the reference code (learned per-channel affine, no running statistics)."""
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def _activation(act: str) -> nn.Module:
    act = act.lower()
    if act == "relu":
        return nn.ReLU()
    if act == "sigmoid":
        return nn.Sigmoid()
    if act in ("leakyrelu", "leaky_relu"):
        return nn.LeakyReLU(negative_slope=0.01)
    raise ValueError(f"unknown activation {act!r}; expected 'relu', 'sigmoid' or 'leakyrelu'")


def _pooling(pool: str) -> nn.Module | None:
    pool = pool.lower() if isinstance(pool, str) else pool
    if pool in ("avgpooling", "avg", "avgpool"):
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if pool in ("maxpooling", "max", "maxpool"):
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pool in ("none", None):
        return None
    raise ValueError(f"unknown pooling {pool!r}; expected 'avgpooling', 'maxpooling' or 'none'")


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _as_hw(im_size) -> tuple[int, int]:
    if isinstance(im_size, int):
        return (im_size, im_size)
    h, w = tuple(int(s) for s in im_size)[-2:]
    return (h, w)


def _mid(n_stages: int) -> int:
    """The 'mid' stage: block 2 of ConvNet-3, layer2 of a ResNet."""
    return max(0, (n_stages - 1) // 2)


class _ZooModel(nn.Module):
    """Shared interface: forward via embed, embed via feature_maps."""

    mid_layer: int = 0
    embed_dim: int = 0

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.features:
            x = stage(x)
            maps.append(x)
        return maps

    def embed_from_last(self, last: torch.Tensor) -> torch.Tensor:
        """The embedding from the last feature map (``embed(x) == embed_from_last(feature_maps(x)[-1])``),
        so one pass can give logits, embedding and mid-layer maps together."""
        return torch.flatten(last, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_from_last(self.feature_maps(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# --------------------------------------------------------------------------- ConvNet

class ConvNet(_ZooModel):
    """DC/DSA/DM ConvNet: ``depth`` x [Conv3x3(width), norm, act, pool] + Linear.

    Defaults are the reference ``get_default_convnet_setting``: width 128, depth 3,
    ReLU, instance norm (GroupNorm(C, C, affine=True)), 2x2 average pooling. As in the
    reference, a single-channel input pads the first conv by 3 (28x28 -> 32x32).
    ``features[i]`` is block ``i``; ``feature_maps(x)[-1].flatten(1) == embed(x)``.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), width: int = 128,
                 depth: int = 3, norm: str = "instancenorm", act: str = "relu",
                 pool: str = "avgpooling"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"ConvNet depth must be >= 1, got {depth}")
        norm = _norm_kind(norm, ("instancenorm", "batchnorm", "groupnorm", "layernorm", "none"))
        h, w = _as_hw(im_size)
        c_in = channels
        blocks = []
        for d in range(depth):
            pad = 3 if (channels == 1 and d == 0) else 1
            layers: list[nn.Module] = [nn.Conv2d(c_in, width, kernel_size=3, padding=pad)]
            h, w = _conv_out(h, 3, 1, pad), _conv_out(w, 3, 1, pad)
            if norm == "layernorm":
                layers.append(nn.LayerNorm([width, h, w], elementwise_affine=True))
            elif norm != "none":
                layers.append(_norm2d(norm, width))
            layers.append(_activation(act))
            p = _pooling(pool)
            if p is not None:
                layers.append(p)
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"ConvNet depth {depth} is too deep for input size {im_size}")
            blocks.append(nn.Sequential(*layers))
            c_in = width
        self.features = nn.Sequential(*blocks)
        self.embed_dim = width * h * w
        self.feature_shape = (width, h, w)
        self.classifier = nn.Linear(self.embed_dim, num_classes)
        self.mid_layer = _mid(depth)


# --------------------------------------------------------------------------- ResNet

class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, no bias) with a projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm2d(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm2d(norm, planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), _norm2d(norm, planes))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_ZooModel):
    """DC/DSA/DM CIFAR ResNet: 3x3 stem (64), four stages of BasicBlocks (64, 128, 256,
    512; strides 1, 2, 2, 2), global average pooling, Linear(512).

    Instance norm (GroupNorm(C, C, affine=True)) by default, 'batchnorm' for the BN
    variants. The reference pools with a fixed 4x4 window (1x1 output for 28/32 inputs);
    here adaptive average pooling gives the same 512-d embedding at any input size.
    ``feature_maps`` returns the outputs of layer1..layer4; ``mid_layer`` = 1 (layer2).
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32),
                 blocks: Sequence[int] = (2, 2, 2, 2), norm: str = "instancenorm"):
        super().__init__()
        norm = _norm_kind(norm)
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = _norm2d(norm, 64)
        in_planes = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 2, 2))):
            layer = []
            for s in [stride] + [1] * (n - 1):
                layer.append(BasicBlock(in_planes, planes, s, norm))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.embed_dim = 512
        self.classifier = nn.Linear(512, num_classes)
        self.mid_layer = 1

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            maps.append(out)
        return maps

    def embed_from_last(self, last: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)


# --------------------------------------------------------------------------- AlexNet

class AlexNet(_ZooModel):
    """DC/DSA/DM AlexNet: conv5(128)-pool, conv5(192)-pool, conv3(256), conv3(192),
    conv3(192)-pool (ReLU, 2x2 max pooling, no norm), Linear on the flattened map.

    Single-channel inputs pad the first conv by 4 (28x28 -> 32x32), 3-channel by 2, as
    in the reference; the embedding is 192 * 4 * 4 = 3072 at 28/32. ``feature_maps``:
    one entry per conv stage (5); ``mid_layer`` = 2 (conv3).
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)):
        super().__init__()
        h, w = _as_hw(im_size)
        spec = [  # (out, kernel, padding, pool)
            (128, 5, 4 if channels == 1 else 2, True),
            (192, 5, 2, True),
            (256, 3, 1, False),
            (192, 3, 1, False),
            (192, 3, 1, True),
        ]
        c_in, stages = channels, []
        for c_out, k, pad, pool in spec:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, padding=pad), nn.ReLU()]
            h, w = _conv_out(h, k, 1, pad), _conv_out(w, k, 1, pad)
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.features = nn.Sequential(*stages)
        self.embed_dim = c_in * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)
        self.mid_layer = _mid(len(stages))


# --------------------------------------------------------------------------- VGG

_VGG_CFG = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(_ZooModel):
    """DC/DSA/DM VGG: [Conv3x3, norm, ReLU] stages with 2x2 max pooling per the VGG
    config, Linear on the flattened map (512-d at 28/32).

    Instance norm (GroupNorm(C, C, affine=True)) by default, 'batchnorm' for VGG11BN.
    Single-channel inputs pad the first conv by 3 (28x28 -> 32x32), as in the
    reference. ``feature_maps``: one entry per conv (with its following max pool).
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), cfg: str = "VGG11",
                 norm: str = "instancenorm"):
        super().__init__()
        norm = _norm_kind(norm)
        h, w = _as_hw(im_size)
        c_in, stages, current = channels, [], None
        for i, v in enumerate(_VGG_CFG[cfg]):
            if v == "M":
                current.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                continue
            if current is not None:
                stages.append(nn.Sequential(*current))
            pad = 3 if (channels == 1 and i == 0) else 1
            current = [nn.Conv2d(c_in, v, 3, padding=pad), _norm2d(norm, v), nn.ReLU()]
            h, w = _conv_out(h, 3, 1, pad), _conv_out(w, 3, 1, pad)
            c_in = v
        stages.append(nn.Sequential(*current))
        if h < 1 or w < 1:
            raise ValueError(f"{cfg} needs inputs of at least 32x32 (28x28 single-channel), "
                             f"got {im_size}")
        self.features = nn.Sequential(*stages)
        self.embed_dim = c_in * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)
        self.mid_layer = _mid(len(stages))


# --------------------------------------------------------------------------- LeNet

class LeNet(_ZooModel):
    """DC/DSA/DM LeNet: conv5(6)-ReLU-maxpool, conv5(16)-ReLU-maxpool, FC 120, FC 84,
    FC classes. Single-channel inputs pad the first conv by 2 (28x28 keeps 16*5*5 =
    400 features). ``embed`` = the 84-d input of the last FC; ``feature_maps`` = the two
    conv stages; ``mid_layer`` = 0.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32)):
        super().__init__()
        h, w = _as_hw(im_size)
        pad = 2 if channels == 1 else 0
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2, 2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2)),
        )
        h, w = _conv_out(h, 5, 1, pad) // 2, _conv_out(w, 5, 1, pad) // 2
        h, w = _conv_out(h, 5) // 2, _conv_out(w, 5) // 2
        if h < 1 or w < 1:
            raise ValueError(f"LeNet input {im_size} is too small")
        self.head = nn.Sequential(nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84),
                                  nn.ReLU())
        self.embed_dim = 84
        self.classifier = nn.Linear(84, num_classes)
        self.mid_layer = 0

    def embed_from_last(self, last: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(last, 1))


# --------------------------------------------------------------------------- MLP

class MLP(_ZooModel):
    """DC/DSA/DM MLP: flatten, FC 128, ReLU, FC 128, ReLU, FC classes (no padding: a
    28x28 single-channel input has 784 inputs). ``feature_maps`` returns the two hidden
    activations as (N, 128, 1, 1); ``embed`` is the second one; ``mid_layer`` = 0.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32), width: int = 128):
        super().__init__()
        h, w = _as_hw(im_size)
        self.fc_1 = nn.Linear(channels * h * w, width)
        self.fc_2 = nn.Linear(width, width)
        self.embed_dim = width
        self.classifier = nn.Linear(width, num_classes)
        self.mid_layer = 0

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = F.relu(self.fc_1(torch.flatten(x, 1)))
        h2 = F.relu(self.fc_2(h1))
        return [h1[:, :, None, None], h2[:, :, None, None]]


# --------------------------------------------------------------------------- DenseNet

class _DenseLayer(nn.Module):
    """DenseNet-BC bottleneck: norm-ReLU-conv1x1(4k)-norm-ReLU-conv3x3(k), concatenated."""

    def __init__(self, in_planes: int, growth: int, norm: str):
        super().__init__()
        self.bn1 = _norm2d(norm, in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = _norm2d(norm, 4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class _Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, norm: str):
        super().__init__()
        self.bn = _norm2d(norm, in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class _NormAct(nn.Module):
    def __init__(self, norm: str, planes: int):
        super().__init__()
        self.bn = _norm2d(norm, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(x))


class DenseNet(_ZooModel):
    """CIFAR-style DenseNet-BC (the kuangliu/pytorch-cifar definition the DC zoo
    acknowledges): 3x3 stem with 2k channels, dense blocks with growth k, transitions
    with compression 0.5 and 2x2 average pooling, final norm-ReLU, global average
    pooling, Linear. DenseNet121 = growth 32, blocks (6, 12, 24, 16), 1024-d embedding.
    BatchNorm by default (as in that definition); ``norm='instancenorm'`` is available.
    ``feature_maps``: the four stages (dense block + transition; the last one with the
    final norm-ReLU); ``mid_layer`` = 1.
    """

    def __init__(self, channels: int, num_classes: int, im_size=(32, 32),
                 blocks: Sequence[int] = (6, 12, 24, 16), growth: int = 32,
                 reduction: float = 0.5, norm: str = "batchnorm"):
        super().__init__()
        norm = _norm_kind(norm)
        planes = 2 * growth
        self.conv1 = nn.Conv2d(channels, planes, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(_DenseLayer(planes, growth, norm))
                planes += growth
            if i < len(blocks) - 1:
                out_planes = int(math.floor(planes * reduction))
                layers.append(_Transition(planes, out_planes, norm))
                planes = out_planes
            else:
                layers.append(_NormAct(norm, planes))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.embed_dim = planes
        self.classifier = nn.Linear(planes, num_classes)
        self.mid_layer = _mid(len(blocks))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().feature_maps(self.conv1(x))

    def embed_from_last(self, last: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)


# --------------------------------------------------------------------------- registry

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


# --------------------------------------------------------------------------- utilities

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
