"""Input checks for the public functions: run first, before any heavy work.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, not allowed)
with a message naming the parameter, the bad value and what is allowed, e.g.
``num_models=0 is not allowed; expected an int >= 1``. Device strings are checked by
:func:`ddkit.core.utils.resolve_device`, notebook parameters by :mod:`ddkit.runs.params`.
"""
from __future__ import annotations

import math
import numbers

import torch

#: Tolerance on the row sums of soft labels (float32 softmax outputs sum to 1 within ~1e-6).
SOFT_LABEL_TOL = 1e-4


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} dtype {value.dtype}"
    return repr(value)


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``: bools, floats, strings and None are rejected (``TypeError``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={_show(value)} has type {type(value).__name__}; expected an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; expected an int >= {minimum}")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, exclusive: bool = False) -> float:
    """``value`` as a finite float (``> minimum`` when ``exclusive``, else ``>=``); bools and strings rejected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={_show(value)} has type {type(value).__name__}; expected a number")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed; expected a finite number")
    if minimum is not None and (value < minimum or (exclusive and value == minimum)):
        raise ValueError(f"{name}={value!r} is not allowed; expected a number {'>' if exclusive else '>='} {minimum}")
    return float(value)


def check_interval(name: str, value, low: float, high: float, what: str = "a number") -> float:
    """``value`` as a finite float in ``[low, high]``; bools and strings rejected."""
    v = check_number(name, value)
    if not low <= v <= high:
        raise ValueError(f"{name}={value!r} is not allowed; expected {what} in [{low:g}, {high:g}]")
    return v


def check_probability(name: str, value) -> float:
    """``value`` as a probability: a finite number in [0, 1]."""
    return check_interval(name, value, 0, 1, "a probability")


def check_choice(name: str, value, choices) -> str:
    """``value`` must be one of ``choices`` (names: datasets, protocols, strategies, kinds)."""
    if value not in tuple(choices):
        raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
    return value


def check_im_size(name: str, im_size) -> tuple:
    """An image size: an int or (H, W) of ints >= 1."""
    sizes = (im_size,) if isinstance(im_size, numbers.Integral) and not isinstance(im_size, bool) else im_size
    if not isinstance(sizes, (tuple, list, torch.Size)) or not 1 <= len(sizes) <= 3:
        raise TypeError(f"{name}={im_size!r}; expected an int or an (H, W) tuple of ints >= 1")
    for s in sizes:
        check_int(name, s)
    return tuple(int(s) for s in sizes)


def check_images(name: str, x, channels: int | None = None, im_size=None) -> torch.Tensor:
    """A non-empty finite float (N, C, H, W) tensor, with ``channels`` / ``im_size`` when given."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on device meta (shapes only, no values); expected a tensor holding images")
    if x.dim() != 4:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected images (N, C, H, W)")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); expected at least one image")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating-point tensor (normalised images)")
    want = (channels, *tuple(im_size)) if channels is not None and im_size is not None else None
    if want is not None and tuple(x.shape[1:]) != tuple(want):
        raise ValueError(f"{name} has images of shape {tuple(x.shape[1:])} (C, H, W); the dataset needs {tuple(want)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values ({int((~torch.isfinite(x)).sum())} entries)")
    return x


def check_labels(name: str, y, num_classes: int, n: int | None = None) -> torch.Tensor:
    """Hard labels (N,) of an integer dtype in 0..K-1, or soft labels (N, K): finite, >= 0, rows summing to 1.
    ``n``: the number of images they label."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.dim() not in (1, 2):
        raise ValueError(f"{name} has shape {tuple(y.shape)}; expected (N,) class indices or (N, K) soft labels")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels for {n} images; expected one label per image")
    if y.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(y.shape)}); expected at least one label")
    if y.dim() == 1:
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"{name} has dtype {y.dtype}; hard labels must be an integer dtype (int64), "
                            f"soft labels a (N, {num_classes}) float tensor")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} contains label {bad}; expected class indices 0..{num_classes - 1}")
        return y
    if y.shape[1] != num_classes:
        raise ValueError(f"{name}: soft labels have {y.shape[1]} classes; expected (N, {num_classes})")
    if not y.is_floating_point():
        raise TypeError(f"{name} has dtype {y.dtype}; soft labels must be a float tensor")
    if not bool(torch.isfinite(y).all()) or bool((y < 0).any()):
        raise ValueError(f"{name} contains NaN, Inf or negative values; soft labels are probabilities")
    sums = y.double().sum(1)
    worst = float((sums - 1).abs().max())
    if worst > SOFT_LABEL_TOL:
        raise ValueError(f"{name}: soft-label rows must sum to 1, got sums in [{float(sums.min()):.4g}, "
                         f"{float(sums.max()):.4g}]")
    return y


def check_synset(x, y, dataset, x_name: str = "x_syn", y_name: str = "y_syn") -> None:
    """A synthetic set for ``dataset``: images of its shape and labels of its classes, one per image."""
    check_images(x_name, x, dataset.channels, dataset.im_size)
    if isinstance(y, torch.Tensor) and y.dim() >= 1 and len(y) != len(x):
        raise ValueError(f"{x_name} has {len(x)} images but {y_name} has {len(y)} labels; expected one per image")
    check_labels(y_name, y, dataset.num_classes)


def check_ipc(ipc, dataset, factor: int = 1, name: str = "ipc") -> int:
    """Images per class: an int >= 1 that every class of ``dataset`` can fill (``ipc * factor^2`` real
    images per class)."""
    check_int(name, ipc)
    need = ipc * factor * factor
    sizes = [len(dataset.class_indices(c)) for c in range(dataset.num_classes)]
    small = min(range(len(sizes)), key=sizes.__getitem__)
    if sizes[small] < need:
        raise ValueError(f"{name}={ipc} is too large: class {small} of {dataset.name} has only {sizes[small]} training "
                         f"images and {need} are needed" + (f" (ipc x factor^2 = {ipc} x {factor * factor})"
                                                             if factor > 1 else "") + f"; use {name} <= "
                         f"{sizes[small] // (factor * factor)}")
    return int(ipc)
