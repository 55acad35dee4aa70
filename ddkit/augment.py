"""Differentiable Siamese Augmentation and factor-l partition/expansion.

DSA follows Zhao & Bilen, "Dataset Condensation with Differentiable Siamese
Augmentation" (ICML 2021) and the constants of the reference ``ParamDiffAug``
(VICO-UoE/DatasetCondensation, ``utils.py``):

==========  =====================================================================
family      reference behaviour (all differentiable w.r.t. the images)
==========  =====================================================================
color       brightness ``x + (u - 0.5) * 1.0``, then saturation
            ``(x - mean_c) * (u * 2.0) + mean_c`` (mean over channels), then
            contrast ``(x - mean) * (u + 0.5) + mean`` (mean over C, H, W)
crop        integer translation in ``[-s, s]``, ``s = int(H * 0.125 + 0.5)`` (per axis),
            pixels shifted in from outside are zero
cutout      a ``int(H * 0.5 + 0.5)`` square (per axis) set to zero, centre uniform
flip        horizontal flip with probability 0.5
scale       ``affine_grid`` with ``diag(sx, sy)``, ``sx, sy ~ U(1/1.2, 1.2)`` independent
rotate      ``affine_grid`` rotation by ``U(-15, 15)`` degrees
==========  =====================================================================

Mode ``'S'`` (the reference default) applies ONE family per draw.  The reference
makes the matching siamese by replaying a seed and copying sample 0's draw to the
whole batch; here a draw is an explicit :class:`DSAParams` row and ``group`` says
which row each sample uses, so real and synthetic images of class ``c`` (row ``c``)
can be augmented identically, for all classes in one call.

Factor-l partition/expansion (IDC "uniform multi-formation", used by IDM and DSDM):
:func:`decode` cuts every stored image into ``factor x factor`` tiles and upsamples
each back (bilinear, like IDC's ``decode_zoom``); :func:`mosaic_init` builds the
mosaics from real images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

__all__ = ["DSA", "DSAParams", "OPS", "strategy_for", "decode", "mosaic_init"]

#: The op families of the reference ``AUGMENT_FNS`` (mode 'S' draws one of them).
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

_NO_FLIP = {"mnist", "mnist5k", "svhn"}


def strategy_for(dataset_name: str) -> str:
    """Reference DSA strategy: no flip for digits (MNIST, MNIST5k, SVHN), flip otherwise."""
    name = str(dataset_name).lower().replace("-", "_")
    if name in _NO_FLIP:
        return "color_crop_cutout_scale_rotate"
    return "color_crop_cutout_flip_scale_rotate"


def _parse_strategy(strategy) -> tuple:
    if strategy is None:
        return ()
    if isinstance(strategy, (list, tuple)):
        parts = [str(p) for p in strategy]
    else:
        s = str(strategy).strip()
        if s.lower() in ("", "none"):
            return ()
        parts = [p for p in s.split("_") if p != ""]
    bad = [p for p in parts if p not in OPS]
    if bad:
        raise ValueError(
            f"unknown DSA op(s) {bad} in strategy {strategy!r}; allowed ops: {', '.join(OPS)} "
            "(joined by '_', e.g. 'color_crop_cutout_flip_scale_rotate'), or 'none'")
    return tuple(parts)


@dataclass
class DSAParams:
    """One DSA draw per row (group).  Every tensor field has shape ``(G,)``.

    ``op`` indexes ``ops`` (the strategy's families, in order).  All families' values
    are drawn for every row, so a row can be replayed whatever its family.
    Crop and cutout positions are uniform fractions in ``[0, 1)``, turned into
    pixel positions for the actual image size at ``apply`` time.
    """

    ops: tuple
    op: torch.Tensor          # long, index into ops
    brightness: torch.Tensor  # additive shift (u - 0.5) * brightness
    saturation: torch.Tensor  # factor u * saturation
    contrast: torch.Tensor    # factor u + contrast
    crop_h: torch.Tensor      # fraction -> translation along H
    crop_w: torch.Tensor      # fraction -> translation along W
    cutout_h: torch.Tensor    # fraction -> cutout centre along H
    cutout_w: torch.Tensor    # fraction -> cutout centre along W
    flip: torch.Tensor        # bool
    scale_x: torch.Tensor     # affine_grid theta[0, 0]
    scale_y: torch.Tensor     # affine_grid theta[1, 1]
    angle: torch.Tensor       # radians

    def _tensor_names(self):
        return [f.name for f in fields(self) if f.name != "ops"]

    def __len__(self) -> int:
        return int(self.op.shape[0])

    def index(self, idx) -> "DSAParams":
        """Rows ``idx`` (a long tensor / list / slice) as a new DSAParams."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.op.device)
        return replace(self, **{n: getattr(self, n)[idx] for n in self._tensor_names()})

    def to(self, device) -> "DSAParams":
        device = torch.device(device)
        if self.op.device == device:
            return self
        return replace(self, **{n: getattr(self, n).to(device) for n in self._tensor_names()})

    @property
    def op_names(self) -> list:
        """The family name of each row."""
        return [self.ops[i] for i in self.op.tolist()] if self.ops else []


class DSA:
    """Differentiable Siamese Augmentation (Zhao & Bilen 2021), reference constants.

    Args:
        strategy: families joined by ``'_'`` (see :data:`OPS`), e.g.
            ``'color_crop_cutout_flip_scale_rotate'``; ``'none'``/``''``/``None`` = identity.
        flip, scale, rotate, crop, cutout, brightness, saturation, contrast: the
            ``ParamDiffAug`` values (prob_flip 0.5, ratio_scale 1.2, ratio_rotate 15 deg,
            ratio_crop_pad 0.125, ratio_cutout 0.5, brightness 1.0, saturation 2.0,
            contrast 0.5).
        mode: ``'S'`` (reference default: one family per draw) or ``'M'`` (every family
            of the strategy in sequence).
        per_sample_op: for ``dsa(x)`` (evaluation).  False (reference): one family per
            call for the whole batch, per-sample values; True: family drawn per sample.
    """

    def __init__(self, strategy="color_crop_cutout_flip_scale_rotate", flip=0.5, scale=1.2,
                 rotate=15.0, crop=0.125, cutout=0.5, brightness=1.0, saturation=2.0,
                 contrast=0.5, mode="S", per_sample_op=False):
        self.ops = _parse_strategy(strategy)
        self.strategy = "_".join(self.ops) if self.ops else "none"
        if mode not in ("S", "M"):
            raise ValueError(f"DSA mode must be 'S' (one family per draw) or 'M' (all), got {mode!r}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {flip}")
        if scale < 1.0:
            raise ValueError(f"scale ratio must be >= 1 (sx, sy ~ U(1/scale, scale)), got {scale}")
        self.mode = mode
        self.per_sample_op = bool(per_sample_op)
        self.flip_p = float(flip)
        self.scale = float(scale)
        self.rotate = float(rotate)
        self.crop = float(crop)
        self.cutout = float(cutout)
        self.brightness = float(brightness)
        self.saturation = float(saturation)
        self.contrast = float(contrast)

    def __repr__(self):
        return (f"DSA({self.strategy!r}, mode={self.mode!r}, flip={self.flip_p}, scale={self.scale}, "
                f"rotate={self.rotate}, crop={self.crop}, cutout={self.cutout}, "
                f"brightness={self.brightness}, saturation={self.saturation}, contrast={self.contrast})")

    @property
    def is_identity(self) -> bool:
        return not self.ops

    # ------------------------------------------------------------------ drawing
    def sample(self, groups: int, generator: torch.Generator | None = None, device=None,
               shared_op: bool = False) -> DSAParams:
        """Draw ``groups`` independent parameter rows (e.g. one per class).

        Randomness comes only from ``generator`` (draws happen on its device, then move
        to ``device``); ``generator=None`` falls back to torch's default generator.
        ``shared_op=True`` draws one family for all rows (the reference draws one per
        DiffAugment call); values stay per row.
        """
        groups = int(groups)
        if groups < 0:
            raise ValueError(f"groups must be >= 0, got {groups}")
        gdev = generator.device if generator is not None else torch.device(device or "cpu")
        out_dev = torch.device(device) if device is not None else gdev
        n_ops = max(len(self.ops), 1)
        if shared_op:
            op = torch.randint(0, n_ops, (1,), generator=generator, device=gdev).expand(groups).clone()
        else:
            op = torch.randint(0, n_ops, (groups,), generator=generator, device=gdev)
        u = torch.rand(groups, 11, generator=generator, device=gdev)
        lo = 1.0 / self.scale
        p = DSAParams(
            ops=self.ops,
            op=op,
            brightness=(u[:, 0] - 0.5) * self.brightness,
            saturation=u[:, 1] * self.saturation,
            contrast=u[:, 2] + self.contrast,
            crop_h=u[:, 3].contiguous(),
            crop_w=u[:, 4].contiguous(),
            cutout_h=u[:, 5].contiguous(),
            cutout_w=u[:, 6].contiguous(),
            flip=u[:, 7] < self.flip_p,
            scale_x=u[:, 8] * (self.scale - lo) + lo,
            scale_y=u[:, 9] * (self.scale - lo) + lo,
            angle=(u[:, 10] - 0.5) * 2.0 * math.radians(self.rotate),
        )
        return p.to(out_dev)

    # ------------------------------------------------------------------ applying
    def apply(self, x: torch.Tensor, params: DSAParams, group=None) -> torch.Tensor:
        """Augment ``x`` (N, C, H, W) with rows of ``params``.

        ``group`` (N,) long: the row sample ``i`` uses (siamese: real and synthetic
        images of class ``c`` both point at row ``c``).  ``None``: row ``i`` for sample
        ``i`` (needs ``N == len(params)``).  Out-of-place and differentiable w.r.t. ``x``.
        """
        if self.is_identity:
            return x
        if x.dim() != 4:
            raise ValueError(f"DSA expects images (N, C, H, W), got shape {tuple(x.shape)}")
        if tuple(params.ops) != tuple(self.ops):
            raise ValueError(f"params were drawn for strategy {'_'.join(params.ops)!r}, "
                             f"this DSA uses {self.strategy!r}")
        n = x.shape[0]
        params = params.to(x.device)
        if group is None:
            if n != len(params):
                raise ValueError(f"group=None needs one params row per sample: {n} samples, "
                                 f"{len(params)} rows")
            p = params
        else:
            group = torch.as_tensor(group, dtype=torch.long, device=x.device)
            if group.shape != (n,):
                raise ValueError(f"group must have shape ({n},), got {tuple(group.shape)}")
            p = params.index(group)
        if n == 0:
            return x
        if self.mode == "M":
            for name in self.ops:
                x = self._op(name, x, p)
            return x
        op_cpu = p.op.cpu()  # one host sync; families are few
        present = torch.unique(op_cpu).tolist()
        if len(present) == 1:
            return self._op(self.ops[present[0]], x, p)
        outs, order = [], []
        for k in present:
            idx_cpu = (op_cpu == k).nonzero().squeeze(1)
            idx = idx_cpu.to(x.device)
            outs.append(self._op(self.ops[k], x.index_select(0, idx), p.index(idx)))
            order.append(idx_cpu)
        perm = torch.cat(order)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n)
        return torch.cat(outs)[inv.to(x.device)]

    def apply_on_device(self, x: torch.Tensor, params: DSAParams, group=None) -> torch.Tensor:
        """:meth:`apply` without a host sync (for CUDA graphs, :mod:`ddkit.fast.graphs`): in mode ``'S'``
        every family of the strategy runs on every sample and each sample keeps its own family's
        output (``torch.where``), instead of reading the drawn families on the host to split the batch.
        Same values and gradients as :meth:`apply`; the arithmetic of all families (cheap next to
        the networks)."""
        if self.is_identity or self.mode == "M":
            return self.apply(x, params, group)
        if x.dim() != 4:
            raise ValueError(f"DSA expects images (N, C, H, W), got shape {tuple(x.shape)}")
        p = params.to(x.device)
        if group is not None:
            p = p.index(torch.as_tensor(group, dtype=torch.long, device=x.device))
        if len(p) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} samples but {len(p)} params rows (give group, or one row per sample)")
        out = x
        for k, name in enumerate(self.ops):
            out = torch.where((p.op == k).view(-1, 1, 1, 1), self._op(name, x, p), out)
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Evaluation-time DSA: per-sample values; one family per call unless ``per_sample_op``."""
        if self.is_identity:
            return x
        params = self.sample(x.shape[0], generator=generator, device=x.device,
                             shared_op=not self.per_sample_op)
        return self.apply(x, params)

    # ------------------------------------------------------------------ op families
    def _op(self, name, x, p):
        return getattr(self, "_" + name)(x, p)

    @staticmethod
    def _col(t, x):
        return t.to(x.dtype).view(-1, 1, 1, 1)

    def _color(self, x, p):
        x = x + self._col(p.brightness, x)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * self._col(p.saturation, x) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * self._col(p.contrast, x) + m

    def _flip(self, x, p):
        return torch.where(p.flip.view(-1, 1, 1, 1), x.flip(3), x)

    def _crop(self, x, p):
        n, c, h, w = x.shape
        sh, sw = int(h * self.crop + 0.5), int(w * self.crop + 0.5)
        th = _frac_to_int(p.crop_h, 2 * sh + 1) - sh
        tw = _frac_to_int(p.crop_w, 2 * sw + 1) - sw
        # output[i, j] = x[i + th, j + tw], zero outside (zero pad of 1 then clamp)
        rows = (torch.arange(h, device=x.device) + th[:, None] + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device) + tw[:, None] + 1).clamp(0, w + 1)
        xp = F.pad(x, (1, 1, 1, 1))
        xr = xp.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
        return xr.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def _cutout(self, x, p):
        n, c, h, w = x.shape
        ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
        start_h = _frac_to_int(p.cutout_h, h + 1 - ch % 2) - ch // 2
        start_w = _frac_to_int(p.cutout_w, w + 1 - cw % 2) - cw // 2
        r = torch.arange(h, device=x.device)[None, :]
        q = torch.arange(w, device=x.device)[None, :]
        rin = (r >= start_h[:, None]) & (r < start_h[:, None] + ch)
        cin = (q >= start_w[:, None]) & (q < start_w[:, None] + cw)
        keep = ~(rin[:, :, None] & cin[:, None, :])
        return x * keep.unsqueeze(1).to(x.dtype)

    def _scale(self, x, p):
        sx, sy = p.scale_x.to(x.dtype), p.scale_y.to(x.dtype)
        z = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
        return _warp(x, theta)

    def _rotate(self, x, p):
        a = p.angle.to(x.dtype)
        cos, sin, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, -sin, z], 1), torch.stack([sin, cos, z], 1)], 1)
        return _warp(x, theta)


def _frac_to_int(u, k):
    """Map fractions in [0, 1) to integers uniform in {0, ..., k-1}."""
    return (u * k).floor().long().clamp(0, max(k - 1, 0))


def _warp(x, theta):
    # reference: F.affine_grid / F.grid_sample defaults (bilinear, zero padding,
    # align_corners=False on current torch)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------- factor-l
def _check_factor(factor) -> int:
    if isinstance(factor, bool) or int(factor) != factor or int(factor) < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def decode(x: torch.Tensor, y: torch.Tensor, factor: int):
    """Factor-l partition & expansion (IDC ``decode_zoom``; IDM / DSDM factor 2).

    Each stored image (N, C, H, W) is cut into ``factor x factor`` tiles, each tile
    upsampled back to (H, W) bilinearly (align_corners=False, IDC's ``nn.Upsample``).
    Output order is tile-major like IDC: index ``t * N + i`` is tile ``t = row * factor
    + col`` of image ``i``; labels (N,) or (N, K) are tiled the same way.  When H or W is
    not divisible by ``factor`` the image is edge-padded at the bottom/right to a
    multiple (IDC pads with a constant).  ``factor == 1`` returns ``(x, y)`` unchanged.
    """
    factor = _check_factor(factor)
    if factor == 1:
        return x, y
    if x.dim() != 4:
        raise ValueError(f"decode expects images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if y.shape[0] != n:
        raise ValueError(f"decode: {n} images but {y.shape[0]} labels")
    if h < factor or w < factor:
        raise ValueError(f"decode: image {h}x{w} is smaller than factor {factor}")
    sh, sw = math.ceil(h / factor), math.ceil(w / factor)
    if sh * factor != h or sw * factor != w:
        x = F.pad(x, (0, sw * factor - w, 0, sh * factor - h), mode="replicate")
    tiles = (x.reshape(n, c, factor, sh, factor, sw)
              .permute(2, 4, 0, 1, 3, 5)
              .reshape(factor * factor * n, c, sh, sw))
    out = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    y_out = y.repeat(factor * factor, *([1] * (y.dim() - 1)))
    return out, y_out


def mosaic_init(images: torch.Tensor, factor: int, mode: str = "area") -> torch.Tensor:
    """(n * factor^2, C, H, W) real images -> (n, C, H, W) mosaics (IDC/IDM init).

    Image ``t * n + i`` is downscaled to (ceil(H/factor), ceil(W/factor)) and placed in
    tile ``t = row * factor + col`` of mosaic ``i``, the inverse of :func:`decode`'s
    order, so ``decode(mosaic_init(x))`` ~ a smoothed ``x``.  ``mode`` is the
    ``F.interpolate`` downscaling mode: 'area' (box average, default) or 'nearest'
    (what IDC's init uses), 'bilinear', ...  ``factor == 1`` returns a copy.
    """
    factor = _check_factor(factor)
    if images.dim() != 4:
        raise ValueError(f"mosaic_init expects images (N, C, H, W), got {tuple(images.shape)}")
    m, c, h, w = images.shape
    if factor == 1:
        return images.clone()
    k = factor * factor
    if m % k != 0:
        raise ValueError(f"mosaic_init: {m} images is not a multiple of factor^2 = {k}")
    n = m // k
    sh, sw = math.ceil(h / factor), math.ceil(w / factor)
    kw = {"antialias": True} if mode in ("bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kw["align_corners"] = False
    small = F.interpolate(images, size=(sh, sw), mode=mode, **kw)
    mosaic = (small.reshape(factor, factor, n, c, sh, sw)
                   .permute(2, 3, 0, 4, 1, 5)
                   .reshape(n, c, factor * sh, factor * sw))
    return mosaic[:, :, :h, :w].contiguous()
