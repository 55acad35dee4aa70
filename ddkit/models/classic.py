"""The reference zoo's cross-architecture networks: AlexNet, VGG, LeNet, MLP."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import _ZooModel, _as_hw, _conv_out, _mid, _norm2d, _norm_kind


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
