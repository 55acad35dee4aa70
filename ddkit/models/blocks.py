"""What the model families share: normalisation, activation and pooling by name, output sizes, and the
zoo interface (forward via embed, embed via feature_maps).
"""

from __future__ import annotations

import torch
import torch.nn as nn


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
