"""CIFAR ResNets (3x3 stem, BasicBlocks) with instance norm or BatchNorm."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import _ZooModel, _norm2d, _norm_kind


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
