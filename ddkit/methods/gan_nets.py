"""The DiM family's networks: the conditional generator that *is* the distilled set, and the
discriminator (notebooks 01 and 02; DiM's ``gan_model.py``, read for facts).

* :class:`ConditionalGenerator` - DiM's generator (``arch="dim"``: Linear + BN + ReLU, then deconv,
  three 3x3 convs, deconv, a 3x3 conv, deconv, a 3x3 conv to the image, tanh; 8 conv layers, BN +
  ReLU after each but the last) or ddkit's compact one (``"compact"``: three transposed convs and a
  3x3 conv). The label is *concatenated* to the noise (paper 01 Eq. 5) or, as DiM's code does,
  written over z's first K entries (``conditioning``). ``forward(z, y)`` returns the tanh image in
  [-1, 1] (the GAN space); ``generate`` / ``sample`` return images in the dataset's *normalised*
  space, ready for any ddkit model.
* :class:`Discriminator` - 8 convolutions with layer norm + LeakyReLU and two heads: a real/fake
  score and class logits (AC-GAN); ``projection=True`` conditions the score on the label.

Noise is drawn from explicit ``torch.Generator`` objects (CPU by default), so a seed gives the
same images on any device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.utils import make_generator

__all__ = ["GEN_ARCHS", "CONDITIONINGS", "SUPPORTED_SIZES", "ConditionalGenerator", "Discriminator"]

#: Generator bodies: DiM's 8-conv network (``gan_model.py``) or ddkit's compact 3-deconv one.
GEN_ARCHS = ("dim", "compact")
#: Label conditioning of G: the papers' concatenation (Eq. 5) or DiM's overwrite of z[:, :K].
CONDITIONINGS = ("concat", "overwrite")
SUPPORTED_SIZES = ((28, 28), (32, 32))


def as_hw(im_size) -> tuple[int, int]:
    if isinstance(im_size, int):
        return (im_size, im_size)
    h, w = (int(s) for s in tuple(im_size)[-2:])
    return (h, w)


def positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {tuple(allowed)}")
    return value


def _check_labels(labels, num_classes, device) -> torch.Tensor:
    y = torch.as_tensor(labels, device=device)
    if y.dim() != 1 or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"labels must be a 1-D tensor/list of int class ids, got shape "
                         f"{tuple(y.shape)} dtype {y.dtype}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got min {int(y.min())} "
                         f"max {int(y.max())}")
    return y


# --------------------------------------------------------------------------- networks

def _compact_body(width: int, hw) -> list:
    """ddkit's compact generator body: three transposed convolutions (4 -> 7/8 -> 14/16 -> 28/32)."""
    first = (nn.ConvTranspose2d(width, width, 4, 1, 0) if hw == (28, 28)   # 4 -> 7
             else nn.ConvTranspose2d(width, width, 4, 2, 1))                # 4 -> 8
    return [first, nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ConvTranspose2d(width, width, 4, 2, 1)]


def _dim_body(width: int, hw) -> list:
    """DiM's generator body (``gan_model.py``): deconv, three 3x3 convs, deconv, a 3x3 conv, deconv
    (each followed by BN + ReLU in the caller); with the final 3x3 conv that makes 8 conv layers.
    28x28: the first deconv is kernel 3 (4 -> 7), otherwise kernel 4 (4 -> 8); then x2, x2."""
    first = (nn.ConvTranspose2d(width, width, 3, 2, 1) if hw == (28, 28)   # 4 -> 7
             else nn.ConvTranspose2d(width, width, 4, 2, 1))                # 4 -> 8

    def conv():
        return nn.Conv2d(width, width, 3, 1, 1)

    def up():
        return nn.ConvTranspose2d(width, width, 4, 2, 1)
    return [first, conv(), conv(), conv(), up(), conv(), up()]


class ConditionalGenerator(nn.Module):
    """DiM-style conditional generator, ``S = G([z (+) y]; W)`` (paper 01 Eq. 5, paper 02 Eq. 2).

    ``Linear -> width*4*4`` + BN1d + ReLU, then the body (``arch``, :data:`GEN_ARCHS`):
    ``"dim"`` - DiM's 8 conv layers (deconv, 3 x conv3x3, deconv, conv3x3, deconv, conv3x3 to the
    image, each but the last with BN + ReLU); ``"compact"`` - ddkit's 3 transposed convs + conv3x3.
    ``conditioning`` (:data:`CONDITIONINGS`): ``"concat"`` feeds ``[z (+) onehot(y)]`` (the papers'
    Eq. 5); ``"overwrite"`` writes the one-hot over the first K entries of z (DiM's code).
    ``width`` is DiM's 196 channels; smaller widths (e.g. 32) keep CPU runs short.
    ``mean``/``std`` are the dataset's normalisation: ``generate``/``sample`` map the tanh
    output ``t`` to pixels ``(t + 1) / 2`` and then to ``(pixels - mean) / std``.
    """

    def __init__(self, num_classes: int, channels: int, im_size=(32, 32), z_dim: int = 100,
                 width: int = 196, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, arch: str = "dim", conditioning: str = "concat"):
        super().__init__()
        check_choice("gen_arch", arch, GEN_ARCHS)
        check_choice("gen_conditioning", conditioning, CONDITIONINGS)
        if conditioning == "overwrite" and z_dim < num_classes:
            raise ValueError(f"gen_conditioning='overwrite' writes the {num_classes}-class one-hot over the first "
                             f"entries of z, so z_dim must be >= {num_classes}; got z_dim={z_dim}")
        positive_int("num_classes", num_classes)
        positive_int("channels", channels)
        positive_int("z_dim", z_dim)
        positive_int("width", width)
        hw = as_hw(im_size)
        if hw not in SUPPORTED_SIZES:
            raise ValueError(f"ConditionalGenerator supports image sizes {SUPPORTED_SIZES}, got {hw}")
        self.num_classes, self.channels, self.im_size = num_classes, channels, hw
        self.z_dim, self.width, self.arch, self.conditioning = z_dim, width, arch, conditioning
        mean = [0.5] * channels if mean is None else [float(m) for m in mean]
        std = [0.5] * channels if std is None else [float(s) for s in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean/std need {channels} entries (std > 0), got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        in_dim = z_dim + num_classes if conditioning == "concat" else z_dim
        self.fc = nn.Linear(in_dim, width * 4 * 4)
        self.bn0 = nn.BatchNorm1d(width * 4 * 4)
        body = _dim_body(width, hw) if arch == "dim" else _compact_body(width, hw)
        layers: list[nn.Module] = []
        for m in body:
            layers += [m, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    # -- core -------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Tanh image in [-1, 1] for noise ``z`` (N, z_dim) and int labels ``y`` (N,)."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (N, {self.z_dim}), got {tuple(z.shape)}")
        y = _check_labels(y, self.num_classes, z.device)
        if len(y) != len(z):
            raise ValueError(f"z has {len(z)} rows but labels has {len(y)}")
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        if self.conditioning == "concat":        # [z (+) y], paper 01 Eq. 5
            h_in = torch.cat([z, onehot], dim=1)
        else:                                    # DiM's code: the one-hot replaces z's first K entries
            h_in = torch.cat([onehot, z[:, self.num_classes:]], dim=1)
        h = F.relu(self.bn0(self.fc(h_in)))
        return self.net(h.view(-1, self.width, 4, 4))

    def to_normalized(self, t: torch.Tensor) -> torch.Tensor:
        """[-1, 1] GAN space -> the dataset's normalised space."""
        return ((t + 1) / 2 - self.mean) / self.std

    def from_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The dataset's normalised space -> [-1, 1] GAN space (real images for D)."""
        return (x * self.std + self.mean) * 2 - 1

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` standard-normal latents, drawn on the generator's device (CPU by default)
        and moved to the model: a seed gives the same latents on any device."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(n, self.z_dim, generator=generator, device=gdev).to(self.device)

    def generate(self, labels, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for ``labels`` in the dataset's normalised space (grad flows; the module's
        current train/eval mode is used - :meth:`sample` switches to eval)."""
        y = _check_labels(labels, self.num_classes, self.device)
        if z is None:
            z = self.noise(len(y), generator)
        return self.to_normalized(self(z.to(self.device), y))

    @torch.no_grad()
    def sample(self, ipc: int, seed: int = 0, classes=None, batch_size: int = 1000):
        """Deployment (paper 01 Eq. 10): ``ipc`` images per class from seed-``seed`` noise,
        class-major, in eval mode, without gradients -> ``(x, y)`` (normalised space)."""
        positive_int("ipc", ipc)
        classes = list(range(self.num_classes)) if classes is None else list(classes)
        y = _check_labels(torch.tensor(classes).repeat_interleave(ipc), self.num_classes, self.device)
        g = make_generator(seed)
        z = self.noise(len(y), g)
        was = self.training
        self.eval()
        try:
            x = torch.cat([self.generate(y[i:i + batch_size], z[i:i + batch_size])
                           for i in range(0, len(y), batch_size)])
        finally:
            self.train(was)
        return x, y


class Discriminator(nn.Module):
    """DiM-style discriminator: 8 conv 3x3 layers at ``width`` channels (strides
    1,2,1,2,1,1,1,2), layer norm over (C, H, W) (``GroupNorm(1, C)``) + LeakyReLU(0.2),
    global max pooling, then a real/fake ``score`` head and a ``classifier`` head (AC-GAN).
    Input: images in the [-1, 1] GAN space. ``forward(x, y=None) -> (score (N,), logits)``;
    with ``projection=True`` the score is conditioned on ``y`` (needed by ``"cgan"``)."""

    STRIDES = (1, 2, 1, 2, 1, 1, 1, 2)

    def __init__(self, num_classes: int, channels: int, im_size=(32, 32), width: int = 196,
                 projection: bool = False):
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("channels", channels)
        positive_int("width", width)
        self.num_classes, self.channels, self.im_size = num_classes, channels, as_hw(im_size)
        self.width, self.projection = width, bool(projection)
        layers: list[nn.Module] = []
        c_in = channels
        for s in self.STRIDES:
            layers += [nn.Conv2d(c_in, width, 3, s, 1), nn.GroupNorm(1, width), nn.LeakyReLU(0.2)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(width, 1)
        self.classifier = nn.Linear(width, num_classes)
        self.embed = nn.Embedding(num_classes, width) if self.projection else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = torch.amax(self.features(x), dim=(2, 3))
        s = self.score(h).squeeze(1)
        if self.projection:
            if y is None:
                raise ValueError("this Discriminator is label-conditioned (projection=True): pass y")
            s = s + (self.embed(y) * h).sum(1)
        return s, self.classifier(h)
