"""CIFAR-style DenseNet (growth 32, blocks 6-12-24-16, 3x3 stem)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import _ZooModel, _mid, _norm2d, _norm_kind


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
