"""ConvNet, the DC/DSA/DM default: depth x [Conv3x3, norm, act, pool] + Linear."""

from __future__ import annotations

import torch.nn as nn

from .blocks import _ZooModel, _activation, _as_hw, _conv_out, _mid, _norm2d, _norm_kind, _pooling


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
