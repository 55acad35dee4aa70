"""Matching losses of the ddkit papers, as plain tensor functions.

Every function takes plain tensors (any device, no CUDA assumption) and implements its
paper's equation with the paper's reduction: a sum in the paper is a sum here, other forms
are selected with ``reduction``. Where the public reference code of a method differs from
its paper, the code's variant is an option and the docstring says which one the paper's
numbers most likely came from (see ``docs/sources.md``).

Shapes: ``f`` (N, D) features, ``fmap`` (N, C, h, w) feature maps, ``y`` (N,) integer
labels in ``[0, num_classes)``, logits (N, K).

Per-class work is batched (``index_add`` over labels, one matmul per term). Arguments are
checked before compute and a bad one raises ValueError naming it, its value and what is
allowed: shapes, dtypes, scalar parameters (finite, in range) and the range of every label
argument (on the CPU one ``aminmax`` per label tensor, the only read-back to the host; on an
accelerator a device-side assertion, no read-back). Inside ``torch.compile``, ``torch.func``
transforms (vmap, grad), CUDA-graph capture and on meta tensors the checks that read tensor
values are skipped (:func:`_tracing`), so the losses trace and batch as before.
"""

from __future__ import annotations

from typing import Sequence

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "class_prototypes",
    "mean_embedding_loss",
    "class_centralization_loss",
    "local_covariance_loss",
    "semantic_diversity_loss",
    "historical_prototype_loss",
    "PrototypeBank",
    "logit_matching_loss",
    "feature_matching_loss",
    "standardize_logits",
    "skd_loss",
    "effect_alignment_loss",
    "replacement_alpha",
]

# elements of one chunk of per-sample outer products in the covariance helper (64 MB fp32)
_OUTER_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------- checks
def _check_tensor(x, name: str, ndim=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    return x


def _tracing(*tensors) -> bool:
    """True inside ``torch.compile`` / ``torch.jit`` tracing, while a CUDA graph is being captured,
    for tensors of a ``torch.func`` transform (vmap, grad) and for meta tensors: there value checks
    (a read-back) are skipped."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return True
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
    return any(isinstance(t, torch.Tensor) and (t.device.type == "meta" or wrapped(t)) for t in tensors)


def _check_number(value, name: str, low=None, high=None, low_open=False) -> float | torch.Tensor:
    """A finite real number (a Python number or a one-element tensor) in ``[low, high]`` (``(low,
    high]`` with ``low_open``); returns it unchanged."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        if _tracing(value):
            return value
        v = value.item()
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = value
    else:
        raise ValueError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    bounds = ([] if low is None else [f"{'>' if low_open else '>='} {low}"]) + ([] if high is None else [f"<= {high}"])
    if (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
            or (high is not None and v > high)):
        raise ValueError(f"{name}={v!r}; expected a finite number {' and '.join(bounds)}".rstrip())
    return value


def _check_label_range(y: torch.Tensor, num_classes: int, name: str) -> None:
    """Every label in ``[0, num_classes)``: on the CPU one min/max read back, with a ValueError; on
    an accelerator a device-side assertion (``torch._assert_async``), so that no loss call waits for
    the device (a bad label then stops the process with the same message)."""
    if y.numel() == 0 or _tracing(y):
        return
    if y.device.type != "cpu":
        torch._assert_async(((y >= 0) & (y < num_classes)).all(),
                            f"{name} holds a label outside 0..{num_classes - 1} (num_classes={num_classes})")
        return
    lo, hi = torch.stack(torch.aminmax(y)).tolist()
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} holds label {lo if lo < 0 else hi}; labels must be in 0..{num_classes - 1} "
                         f"(num_classes={num_classes})")


def _check_labels(y, n: int, name: str, x_name: str, num_classes: int | None = None) -> torch.Tensor:
    """1-d integer labels, one per sample of ``x_name``, in ``[0, num_classes)`` when given."""
    _check_tensor(y, name)
    if y.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-d tensor of integer class labels, got shape {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(
            f"{name} has {y.shape[0]} labels but {x_name} has {n} samples (first dimension)"
        )
    if num_classes is not None:
        _check_label_range(y, num_classes, name)
    return y.long()


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_reduction(reduction: str, allowed: Sequence[str]) -> None:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {list(allowed)}, got {reduction!r}")


def _reduce_classes(per_class: torch.Tensor, present: torch.Tensor, reduction: str):
    """Reduce a (C,) vector of per-class terms (zeros for skipped classes)."""
    _check_reduction(reduction, ("sum", "mean", "none"))
    if reduction == "sum":
        return per_class.sum()
    if reduction == "mean":  # mean over the classes that contributed
        return per_class.sum() / present.sum().clamp_min(1).to(per_class.dtype)
    return per_class


# --------------------------------------------------------------------------- class statistics
def _class_sums(f: torch.Tensor, y: torch.Tensor, num_classes: int):
    """Per-class sums (C, D) and counts (C,) via index_add (differentiable in f)."""
    sums = f.new_zeros((num_classes,) + tuple(f.shape[1:])).index_add(0, y, f)
    counts = torch.zeros(num_classes, dtype=f.dtype, device=f.device).index_add(
        0, y, torch.ones_like(y, dtype=f.dtype)
    )
    return sums, counts


def class_prototypes(f, y, num_classes, return_counts=False):
    """Class means (prototypes) of features: ``mu_c = (1/N_c) sum_{i: y_i=c} f_i``.

    DSDM Eq. 4 (s.t. line) / Eq. 7; DM Eq. 2. Batched with ``index_add`` (no class loop).

    Returns ``(protos, present)``: protos (C, D) (rows of absent classes are zero) and a
    (C,) bool mask of the classes with at least one sample; with ``return_counts=True``
    also the (C,) float counts: ``(protos, present, counts)``. Extra trailing dimensions of
    ``f`` (e.g. (N, C, h, w)) are kept: protos then has shape (num_classes, C, h, w).
    """
    _check_tensor(f, "f")
    if f.dim() < 2:
        raise ValueError(f"f must have shape (N, D), got {tuple(f.shape)}")
    num_classes = _check_num_classes(num_classes)
    y = _check_labels(y, f.shape[0], "y", "f", num_classes)
    return _prototypes(f, y, num_classes, return_counts)


def _prototypes(f, y, num_classes, return_counts=False):
    """:func:`class_prototypes` of checked arguments."""
    sums, counts = _class_sums(f, y, num_classes)
    shape = (num_classes,) + (1,) * (f.dim() - 1)
    protos = sums / counts.clamp_min(1).view(shape)
    present = counts > 0
    if return_counts:
        return protos, present, counts
    return protos, present


def _class_covariances(x3: torch.Tensor, y: torch.Tensor, num_classes: int, unbiased: bool):
    """Per-class covariance of matrix samples ``X_i`` (A, P): (C, A, A).

    ``Cov_c = (1/n) sum_{i: y_i=c} (X_i - X_bar_c)(X_i - X_bar_c)^T`` with n = N_c (or
    N_c - 1). Per-sample outer products (bmm) accumulated with index_add in chunks of
    samples (memory bounded, no host sync). Absent classes give zero matrices.
    """
    n, a, p = x3.shape
    protos, present, counts = _prototypes(x3, y, num_classes, return_counts=True)
    xc = x3 - protos.index_select(0, y)  # centred with the class mean
    acc = x3.new_zeros(num_classes, a, a)
    chunk = max(1, _OUTER_CHUNK_ELEMS // max(1, a * a))
    for s in range(0, n, chunk):
        blk = xc[s:s + chunk]
        acc = acc.index_add(0, y[s:s + chunk], torch.bmm(blk, blk.transpose(1, 2)))
    div = (counts - 1.0) if unbiased else counts
    cov = acc / div.clamp_min(1).view(-1, 1, 1)
    return cov, present, counts


def _check_unbiased_counts(counts: torch.Tensor, present: torch.Tensor, name: str) -> None:
    # only called when unbiased=True (this is a host sync, outside the default path)
    bad = present & (counts < 2)
    if bool(bad.any()):
        cls = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"unbiased covariance needs at least 2 samples per class; {name} has fewer than "
            f"2 samples for classes {cls}"
        )


# --------------------------------------------------------------------------- DM / DSDM / IID
def _check_class_features(f_real, y_real, f_syn, y_syn, num_classes, names=("f_real", "f_syn"), ndim=2,
                          what="feature dimension"):
    """Validate real/synthetic features (``ndim`` dims, equal size of dim 1) with their labels;
    returns the checked ``(num_classes, y_real, y_syn)``."""
    nr, ns = names
    _check_tensor(f_real, nr, ndim)
    _check_tensor(f_syn, ns, ndim)
    num_classes = _check_num_classes(num_classes)
    y_real = _check_labels(y_real, f_real.shape[0], "y_real", nr, num_classes)
    y_syn = _check_labels(y_syn, f_syn.shape[0], "y_syn", ns, num_classes)
    if f_real.shape[1] != f_syn.shape[1]:
        raise ValueError(f"{nr} and {ns} must have the same {what}, got {f_real.shape[1]} and {f_syn.shape[1]}")
    return num_classes, y_real, y_syn


def mean_embedding_loss(f_real, y_real, f_syn, y_syn, num_classes, reduction="sum"):
    """Mean-embedding (prototype) matching: DM Eq. 2, DSDM Eq. 4 (L_proto).

    ``L = sum_c || mean(f_real[y=c]) - mean(f_syn[y=c]) ||^2`` (squared L2 norm).
    Classes absent from either side are skipped (contribute 0).

    reduction: ``"sum"`` over classes (the paper's form and DM's code), ``"mean"`` over the
    classes present on both sides, ``"none"`` the (C,) per-class terms.
    Real features are not detached here: detach them in the caller if they should not
    receive gradients (DM detaches them).
    """
    num_classes, y_real, y_syn = _check_class_features(f_real, y_real, f_syn, y_syn, num_classes)
    _check_reduction(reduction, ("sum", "mean", "none"))
    mu_r, pr = _prototypes(f_real, y_real, num_classes)
    mu_s, ps = _prototypes(f_syn, y_syn, num_classes)
    present = pr & ps
    per_class = ((mu_r - mu_s) ** 2).sum(1) * present.to(mu_s.dtype)
    return _reduce_classes(per_class, present, reduction)


def class_centralization_loss(f_syn, y_syn, num_classes, alpha, beta, form="exp",
                              reduction="sum"):
    """Class centralization constraint: IID Eq. 3-4 (L_CC).

    ``form="exp"`` (the paper, default):
    ``L = sum_c sum_j max(0, exp(alpha * ||f_j - mean_c||^2) - beta)``, mean_c the mean of
    the synthetic features of class c (Eq. 4), ``alpha > 0``, ``beta >= 0``. Note exp(.) >= 1, so the
    hinge is inactive (every sample contributes exp(...) - beta) whenever beta <= 1.

    ``form="squared"``: the official IID code's simplified form
    ``L = sum_c sum_j ||f_j - mean_c||^2`` (alpha and beta are ignored). The IID paper's
    numbers most likely came from this code form (docs/sources.md on paper 03).

    reduction: ``"sum"`` over samples (paper), ``"mean"`` over samples, ``"none"`` the (N,)
    per-sample terms. A class with one sample has distance 0 (term exp(0) - beta).
    """
    _check_tensor(f_syn, "f_syn", 2)
    num_classes = _check_num_classes(num_classes)
    y_syn = _check_labels(y_syn, f_syn.shape[0], "y_syn", "f_syn", num_classes)
    if form not in ("exp", "squared"):
        raise ValueError(f"form must be 'exp' or 'squared', got {form!r}")
    if form == "exp":  # the squared form ignores them
        _check_number(alpha, "alpha", low=0, low_open=True)
        _check_number(beta, "beta", low=0)
    _check_reduction(reduction, ("sum", "mean", "none"))
    mu, _ = _prototypes(f_syn, y_syn, num_classes)
    d2 = ((f_syn - mu.index_select(0, y_syn)) ** 2).sum(1)  # (N,)
    if form == "exp":
        terms = torch.clamp(torch.exp(alpha * d2) - beta, min=0.0)
    else:
        terms = d2
    if reduction == "sum":
        return terms.sum()
    if reduction == "mean":
        return terms.mean()
    return terms


def local_covariance_loss(fmap_real, y_real, fmap_syn, y_syn, num_classes, reduction="sum",
                          unbiased=False):
    """Local-feature covariance matching: IID Eq. 5-7 (L_CM).

    Each sample's feature map is reshaped to ``X_i`` of shape (C, h*w) (C local descriptors
    of dimension h*w, not flattened). Per class and side
    ``Cov_c = (1/N_c) sum_i (X_i - X_bar_c)(X_i - X_bar_c)^T`` (C x C, X_bar_c the mean of
    the class's (C, h*w) matrices; biased 1/N_c as in Eq. 6-7 and the official code),
    ``L = sum_c || Cov_syn_c - Cov_real_c ||_F^2``.

    Classes absent from either side are skipped. One sample per class gives a zero
    covariance (DM + IID at IPC 1 is degenerate; use factor 2, or ``unbiased=True``, which
    divides by N_c - 1 and raises ValueError for classes with fewer than 2 samples).

    fmap_*: (N, C, h, w) or already reshaped (N, C, h*w). reduction: ``"sum"`` over classes
    (paper), ``"mean"`` over classes present on both sides, ``"none"`` the (C,) terms.
    """
    num_classes, y_real, y_syn = _check_class_features(fmap_real, y_real, fmap_syn, y_syn, num_classes,
                                                       ("fmap_real", "fmap_syn"), (3, 4), "number of channels")
    _check_reduction(reduction, ("sum", "mean", "none"))
    xr = fmap_real.reshape(fmap_real.shape[0], fmap_real.shape[1], -1)
    xs = fmap_syn.reshape(fmap_syn.shape[0], fmap_syn.shape[1], -1)
    cov_r, pr, nr = _class_covariances(xr, y_real, num_classes, unbiased)
    cov_s, ps, ns = _class_covariances(xs, y_syn, num_classes, unbiased)
    present = pr & ps
    if unbiased:
        _check_unbiased_counts(nr, present, "fmap_real")
        _check_unbiased_counts(ns, present, "fmap_syn")
    per_class = ((cov_s - cov_r) ** 2).sum((1, 2)) * present.to(cov_s.dtype)
    return _reduce_classes(per_class, present, reduction)


def semantic_diversity_loss(f_real, y_real, f_syn, y_syn, num_classes, unbiased=False,
                            reduction="sum", method="gram"):
    """Semantic diversity alignment: DSDM Eq. 5 (L_SD).

    ``L = sum_c (1/D) || Cov_real_c - Cov_syn_c ||_F^2``, ``Cov_c`` the D x D covariance of
    the class's feature vectors with divisor N_c (the paper, default) or N_c - 1
    (``unbiased=True``, the official DSDM code; the paper's numbers most likely came from
    the code, docs/sources.md on paper 04). With ``unbiased=True`` a class present on both sides
    with fewer than 2 samples raises ValueError. Classes absent from either side are skipped.

    method: ``"gram"`` (default) computes the same quantity without forming D x D matrices,
    via ``||Z_r^T Z_r/n_r - Z_s^T Z_s/n_s||_F^2 = sum_ij s_i s_j (z_i . z_j)^2 / (n_i n_j)``
    over same-class pairs of centred features, one gram block per class (memory
    O(max_c n_c^2), cheap for D = 2048 and a few hundred samples per class); ``"direct"`` forms the (C, D, D) covariances (memory O(C D^2)). They agree up
    to float rounding (the gram form sums signed terms, so a near-zero loss can come out a
    tiny negative number in float32).

    reduction: ``"sum"`` over classes (paper), ``"mean"`` over classes present on both
    sides, ``"none"`` the (C,) per-class terms (each already divided by D).
    """
    num_classes, y_real, y_syn = _check_class_features(f_real, y_real, f_syn, y_syn, num_classes)
    if method not in ("gram", "direct"):
        raise ValueError(f"method must be 'gram' or 'direct', got {method!r}")
    _check_reduction(reduction, ("sum", "mean", "none"))
    d = f_real.shape[1]

    if method == "direct":
        cov_r, pr, nr = _class_covariances(f_real.unsqueeze(2), y_real, num_classes, unbiased)
        cov_s, ps, ns = _class_covariances(f_syn.unsqueeze(2), y_syn, num_classes, unbiased)
        present = pr & ps
        if unbiased:
            _check_unbiased_counts(nr, present, "f_real")
            _check_unbiased_counts(ns, present, "f_syn")
        per_class = ((cov_r - cov_s) ** 2).sum((1, 2)) * present.to(cov_s.dtype) / d
        return _reduce_classes(per_class, present, reduction)

    mu_r, pr, nr = _prototypes(f_real, y_real, num_classes, return_counts=True)
    mu_s, ps, ns = _prototypes(f_syn, y_syn, num_classes, return_counts=True)
    present = pr & ps
    if unbiased:
        _check_unbiased_counts(nr, present, "f_real")
        _check_unbiased_counts(ns, present, "f_syn")
    div_r = (nr - 1.0 if unbiased else nr).clamp_min(1)
    div_s = (ns - 1.0 if unbiased else ns).clamp_min(1)
    # centred features scaled by 1/sqrt(divisor): Cov_c = sum_{i in c} z_i z_i^T
    zr = (f_real - mu_r.index_select(0, y_real)) * div_r.index_select(0, y_real).rsqrt()[:, None]
    zs = (f_syn - mu_s.index_select(0, y_syn)) * div_s.index_select(0, y_syn).rsqrt()[:, None]
    z = torch.cat([zr, zs.to(zr.dtype)], 0)
    yy = torch.cat([y_real, y_syn], 0)
    sign = torch.cat([zr.new_ones(zr.shape[0]), -zr.new_ones(zs.shape[0])], 0)
    # one gram block per class (same-class pairs only): sum_c n_c^2 D flops, not (sum_c n_c)^2 D
    order = torch.argsort(yy, stable=True)
    counts = torch.bincount(yy, minlength=num_classes).tolist()
    blocks = []
    for zc, sc in zip(z.index_select(0, order).split(counts), sign.index_select(0, order).split(counts)):
        gram = zc @ zc.t()
        blocks.append((sc[:, None] * sc[None, :] * gram * gram).sum())
    per_class = torch.stack(blocks) * present.to(z.dtype) / d
    return _reduce_classes(per_class, present, reduction)


def historical_prototype_loss(mu_syn, bank, reduction="sum", scale=1.0, mask=None):
    """Historical prototype alignment: DSDM Eq. 6 (L_h).

    ``L = scale * sum_c || mu_syn_c - h_c ||^2`` with ``bank`` the (C, D) memory bank
    ``h^(t-1)`` (a tensor or a :class:`PrototypeBank`; it is detached here).

    scale: 1.0 is the paper's Eq. 6; the official DSDM code additionally divides by the
    feature dimension d, expressed as ``scale=1/d`` (the paper's numbers most likely came
    from the code: lambda2 = 0.2 on the 1/d-scaled sum).
    mask: optional (C,) bool; classes where it is False are skipped (e.g. classes absent from
    the synthetic batch, the ``present`` mask of :func:`class_prototypes`).
    reduction: ``"sum"`` over classes (paper), ``"mean"`` over (unmasked) classes, ``"none"``.
    """
    if isinstance(bank, PrototypeBank):
        bank = bank.value
    _check_tensor(mu_syn, "mu_syn", 2)
    _check_tensor(bank, "bank", 2)
    if bank.shape != mu_syn.shape:
        raise ValueError(
            f"bank must have the shape of mu_syn {tuple(mu_syn.shape)}, got {tuple(bank.shape)}"
        )
    _check_reduction(reduction, ("sum", "mean", "none"))
    _check_number(scale, "scale", low=0)
    per_class = ((mu_syn - bank.detach().to(mu_syn)) ** 2).sum(1) * scale
    if mask is None:
        present = torch.ones(mu_syn.shape[0], dtype=torch.bool, device=mu_syn.device)
    else:
        _check_tensor(mask, "mask", 1)
        if mask.shape[0] != mu_syn.shape[0]:
            raise ValueError(f"mask must have {mu_syn.shape[0]} entries, got {mask.shape[0]}")
        present = mask.to(device=mu_syn.device, dtype=torch.bool)
        per_class = per_class * present.to(per_class.dtype)
    return _reduce_classes(per_class, present, reduction)


class PrototypeBank:
    """Memory bank of class prototypes, DSDM Eq. 8 (EMA with momentum alpha = 0.99).

    ``update(protos)``: the first update stores ``protos`` (the official code's
    initialisation, ``init="first"``, default); later updates do
    ``bank = m * bank + (1 - m) * protos``. ``init="zero"`` follows the paper's Eq. 8
    literally (h = 0 at t = 1, then the EMA from zero). Values are stored detached.
    ``present`` (optional (C,) bool) restricts an update to some classes (others keep their
    value; with ``init="first"`` a class is stored the first time it is present).
    ``update_from(embed, x, y)``: the same with the class prototypes of ``embed(x)`` (DSDM Eq. 7).

    ``.value`` (C, D) (zeros before the first update), ``.initialized`` (True after the first
    update), ``.num_updates``; ``state_dict()`` / ``load_state_dict()`` for resume;
    ``.to(device)``.
    """

    def __init__(self, num_classes, dim, momentum=0.99, init="first", device=None,
                 dtype=torch.float32):
        self.num_classes = _check_num_classes(num_classes)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        _check_number(momentum, "momentum", low=0, high=1)
        if init not in ("first", "zero"):
            raise ValueError(f"init must be 'first' or 'zero', got {init!r}")
        self.dim = dim
        self.momentum = float(momentum)
        self.init = init
        self._value = torch.zeros(num_classes, dim, device=device, dtype=dtype)
        self._seen = torch.zeros(num_classes, dtype=torch.bool, device=device)
        self.initialized = False
        self.num_updates = 0

    @property
    def value(self) -> torch.Tensor:
        return self._value

    @torch.no_grad()
    def update(self, protos, present=None):
        _check_tensor(protos, "protos", 2)
        if tuple(protos.shape) != (self.num_classes, self.dim):
            raise ValueError(
                f"protos must have shape ({self.num_classes}, {self.dim}), got "
                f"{tuple(protos.shape)}"
            )
        p = protos.detach().to(self._value.dtype)
        if p.device != self._value.device:
            self.to(p.device)
        if present is None:
            pres = torch.ones(self.num_classes, dtype=torch.bool, device=p.device)
        else:
            _check_tensor(present, "present", 1)
            if present.shape[0] != self.num_classes:
                raise ValueError(
                    f"present must have {self.num_classes} entries, got {present.shape[0]}"
                )
            pres = present.to(device=p.device, dtype=torch.bool)
        m = self.momentum
        ema = m * self._value + (1.0 - m) * p
        if self.init == "first":
            new = torch.where(self._seen[:, None], ema, p)
        else:
            new = ema
        self._value = torch.where(pres[:, None], new, self._value).clone()
        self._seen = self._seen | pres
        self.initialized = True
        self.num_updates += 1
        return self._value

    @torch.no_grad()
    def update_from(self, embed, x, y, chunk=1024):
        """DSDM Algorithm 1, lines 11-12: :meth:`update` with the class prototypes (:func:`class_prototypes`)
        of ``embed(x)``, e.g. the current network's ``embed`` of the optimised synthetic images, computed
        without autograd in chunks of ``chunk`` images; classes absent from ``y`` keep their value."""
        f = torch.cat([embed(x[i:i + chunk]) for i in range(0, len(x), chunk)])
        return self.update(*class_prototypes(f, y, self.num_classes))

    def to(self, device):
        self._value = self._value.to(device)
        self._seen = self._seen.to(device)
        return self

    def state_dict(self) -> dict:
        return {
            "value": self._value.detach().clone(),
            "seen": self._seen.clone(),
            "initialized": self.initialized,
            "num_updates": self.num_updates,
            "momentum": self.momentum,
            "init": self.init,
            "num_classes": self.num_classes,
            "dim": self.dim,
        }

    def load_state_dict(self, state: dict):
        for key in ("value", "initialized"):
            if key not in state:
                raise ValueError(f"PrototypeBank state_dict is missing {key!r}")
        value = state["value"]
        _check_tensor(value, "state_dict['value']", 2)
        if tuple(value.shape) != (self.num_classes, self.dim):
            raise ValueError(
                f"state_dict['value'] has shape {tuple(value.shape)}, this bank is "
                f"({self.num_classes}, {self.dim})"
            )
        dev = self._value.device
        self._value = value.detach().to(device=dev, dtype=self._value.dtype).clone()
        seen = state.get("seen")
        if seen is None:
            seen = torch.full((self.num_classes,), bool(state["initialized"]), dtype=torch.bool)
        self._seen = seen.to(device=dev, dtype=torch.bool).clone()
        self.initialized = bool(state["initialized"])
        self.num_updates = int(state.get("num_updates", int(self.initialized)))
        self.momentum = float(state.get("momentum", self.momentum))
        self.init = state.get("init", self.init)
        return self

    def __repr__(self):
        return (f"PrototypeBank(num_classes={self.num_classes}, dim={self.dim}, "
                f"momentum={self.momentum}, init={self.init!r}, "
                f"num_updates={self.num_updates})")


# --------------------------------------------------------------------------- GAN global/local and SKD (papers/01, 02)
def _check_paired_logits(logits_syn, logits_real):
    """(B, K) synthetic and real logits of paired samples (same shape)."""
    _check_tensor(logits_syn, "logits_syn", 2)
    _check_tensor(logits_real, "logits_real", 2)
    if logits_syn.shape != logits_real.shape:
        raise ValueError(f"logits_syn {tuple(logits_syn.shape)} and logits_real {tuple(logits_real.shape)} "
                         "must have the same shape (paired samples)")


def logit_matching_loss(logits_syn, logits_real, reduction="sum", space="logit"):
    """Global (logit) matching: papers/01 Eq. 6.

    ``L_global = sum_k sum_b (l_syn[b, k] - l_real[b, k])^2`` over paired samples (sample b
    of each batch, same label). reduction: ``"sum"`` (paper), ``"mean"`` over all B*K
    entries, ``"none"`` the (B,) per-sample sums.

    space: ``"logit"`` (paper) compares raw logits; ``"log_softmax"`` compares
    log-softmax outputs, DiM's code term ``mean((log_softmax(real) - log_softmax(syn))^2)``
    (use ``reduction="mean"``; the 0.01 weight is w_g, applied by the caller). The papers/01
    numbers most likely came from DiM's form (docs/sources.md on paper 01).
    """
    _check_paired_logits(logits_syn, logits_real)
    if space not in ("logit", "log_softmax"):
        raise ValueError(f"space must be 'logit' or 'log_softmax', got {space!r}")
    _check_reduction(reduction, ("sum", "mean", "none"))
    if space == "log_softmax":
        logits_syn = F.log_softmax(logits_syn, dim=1)
        logits_real = F.log_softmax(logits_real, dim=1)
    sq = (logits_syn - logits_real) ** 2
    if reduction == "sum":
        return sq.sum()
    if reduction == "mean":
        return sq.mean()
    return sq.sum(1)


def feature_matching_loss(f_syn, f_real, reduction="sum", pairing="sample", norm="l2"):
    """Local (mid-layer feature) matching: papers/01 Eq. 7.

    ``L_local = sum_b sum_k (f_syn[b, k] - f_real[b, k])^2`` over paired samples and every
    feature entry (features of any shape (B, ...), e.g. (B, C, h, w) maps).

    Options for DiM's code variant: ``pairing="batch_mean"`` compares the batch-mean
    features ``mean_b f_syn[b] - mean_b f_real[b]`` (batch sizes may then differ) and
    ``norm="l1"`` uses absolute instead of squared differences. DiM's term is
    ``pairing="batch_mean", norm="l1", reduction="sum"`` (times w_l = 0.001 in the caller);
    the papers/01 numbers most likely came from it (docs/sources.md on paper 01).

    reduction: ``"sum"`` (paper), ``"mean"`` over all compared entries, ``"none"`` the
    elementwise differences' terms. ``f_syn``/``f_real`` may also be equal-length lists of
    tensors (several layers): the per-layer losses are added.
    """
    if isinstance(f_syn, (list, tuple)) or isinstance(f_real, (list, tuple)):
        if not (isinstance(f_syn, (list, tuple)) and isinstance(f_real, (list, tuple))):
            raise ValueError("f_syn and f_real must both be tensors or both be lists")
        if len(f_syn) != len(f_real) or len(f_syn) == 0:
            raise ValueError(
                f"f_syn and f_real must be non-empty lists of equal length, got "
                f"{len(f_syn)} and {len(f_real)}"
            )
        if reduction == "none":
            raise ValueError("reduction='none' is not supported for lists of features")
        return sum(feature_matching_loss(a, b, reduction, pairing, norm)
                   for a, b in zip(f_syn, f_real))
    _check_tensor(f_syn, "f_syn")
    _check_tensor(f_real, "f_real")
    if f_syn.dim() < 1 or f_real.dim() < 1:
        raise ValueError("f_syn and f_real must have a batch dimension")
    if pairing not in ("sample", "batch_mean"):
        raise ValueError(f"pairing must be 'sample' or 'batch_mean', got {pairing!r}")
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    _check_reduction(reduction, ("sum", "mean", "none"))
    if pairing == "sample":
        if f_syn.shape != f_real.shape:
            raise ValueError(
                f"f_syn {tuple(f_syn.shape)} and f_real {tuple(f_real.shape)} must have the "
                f"same shape for pairing='sample'"
            )
        diff = f_syn - f_real
    else:
        if f_syn.shape[1:] != f_real.shape[1:]:
            raise ValueError(
                f"f_syn {tuple(f_syn.shape)} and f_real {tuple(f_real.shape)} must have the "
                f"same per-sample shape"
            )
        diff = f_syn.mean(0) - f_real.mean(0)
    terms = diff.abs() if norm == "l1" else diff * diff
    if reduction == "sum":
        return terms.sum()
    if reduction == "mean":
        return terms.mean()
    return terms


def standardize_logits(x, tau, eps=1e-7):
    """Logit standardisation: papers/02 Eq. 3.

    ``Z(x; tau) = (x - mean(x)) / ((std(x) + eps) * tau)`` per row (over the class
    dimension, the last one), std unbiased (N - 1), as in "Logit Standardization in KD".
    Rows of the result have mean 0 and unbiased std ~ 1/tau. ``tau > 0``, ``eps >= 0``.
    """
    _check_tensor(x, "x")
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ValueError(
            f"x must have at least 2 classes in its last dimension, got shape {tuple(x.shape)}"
        )
    _check_number(tau, "tau", low=0, low_open=True)
    _check_number(eps, "eps", low=0)
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=True)
    return (x - mean) / ((std + eps) * tau)


def skd_loss(logits_syn, logits_real, tau, standardize=True, reduction="batchmean", eps=1e-7):
    """Self-knowledge distillation loss: papers/02 Eq. 4-6.

    ``d(x) = softmax(Z(x; tau))`` (Eq. 4-5; ``Z`` = :func:`standardize_logits`, or
    ``x / tau`` with ``standardize=False``, the "No Stand." ablation) and
    ``L_SKD = KL(d(x_real) || d(x_syn)) = sum_k d_real^k log(d_real^k / d_syn^k)`` (Eq. 6),
    averaged over the batch (``reduction="batchmean"``, as in the reference KD code;
    ``"sum"`` sums over the batch, ``"none"`` gives (B,)). No tau^2 and no lambda inside:
    the caller applies Eq. 7 (``lambda * tau^2 * L_SKD``). Real logits are not detached here.
    """
    _check_paired_logits(logits_syn, logits_real)
    _check_reduction(reduction, ("batchmean", "sum", "none"))
    _check_number(tau, "tau", low=0, low_open=True)
    _check_number(eps, "eps", low=0)
    if standardize:
        z_s = standardize_logits(logits_syn, tau, eps)
        z_r = standardize_logits(logits_real, tau, eps)
    else:
        z_s = logits_syn / tau
        z_r = logits_real / tau
    logp_s = F.log_softmax(z_s, dim=1)
    logp_r = F.log_softmax(z_r, dim=1)
    kl = (logp_r.exp() * (logp_r - logp_s)).sum(1)  # (B,)
    if reduction == "batchmean":
        return kl.mean()
    if reduction == "sum":
        return kl.sum()
    return kl


# --------------------------------------------------------------------------- EAD (papers/05)
def _as_grad_list(entry, name: str):
    if isinstance(entry, torch.Tensor):
        return [entry]
    if isinstance(entry, (list, tuple)):
        if len(entry) == 0 or not all(isinstance(t, torch.Tensor) for t in entry):
            raise ValueError(f"{name} must be a tensor or a non-empty sequence of tensors")
        return list(entry)
    raise ValueError(f"{name} must be a tensor or a sequence of tensors, got {type(entry).__name__}")


def _inner(a, b, name_a: str, name_b: str) -> torch.Tensor:
    la, lb = _as_grad_list(a, name_a), _as_grad_list(b, name_b)
    if len(la) != len(lb):
        # different layouts (e.g. flat vector vs per-parameter tensors): compare flattened
        la = [torch.cat([u.reshape(-1) for u in la])]
        lb = [torch.cat([v.reshape(-1) for v in lb])]
    total = None
    for i, (u, v) in enumerate(zip(la, lb)):
        if u.numel() != v.numel():
            raise ValueError(
                f"{name_a}[{i}] and {name_b}[{i}] have different sizes: {tuple(u.shape)} "
                f"and {tuple(v.shape)}"
            )
        term = (u.reshape(-1) * v.reshape(-1).to(u)).sum()
        total = term if total is None else total + term
    return total


def _check_weights(weights, t: int) -> list:
    """The per-checkpoint weights as a list of ``t`` finite numbers >= 0 (default ones); a 1-d
    tensor is checked with one read-back."""
    if weights is None:
        return [1.0] * t
    if isinstance(weights, torch.Tensor):
        if weights.dim() != 1:
            raise ValueError(f"weights must be 1-d, got shape {tuple(weights.shape)}")
        if not _tracing(weights) and len(weights) and not bool((torch.isfinite(weights) & (weights >= 0)).all()):
            raise ValueError(f"weights={weights.tolist()}; expected finite numbers >= 0")
        w = list(weights.unbind(0))
    else:
        w = [_check_number(v, f"weights[{i}]", low=0) for i, v in enumerate(weights)]
    if len(w) != t:
        raise ValueError(f"weights must have {t} entries (one per checkpoint), got {len(w)}")
    return w


def effect_alignment_loss(probe_grads, real_grads, syn_grads, real_coef=1.0, weights=None,
                          absolute=True):
    """Effect alignment loss: EAD Eq. 7 (replacement effect estimator Eq. 5 with G = D, A = S).

    ``L = | real_coef * sum_t w_t <g_P^t, g_D^t> - sum_t w_t <g_P^t, g_S^t> |``

    Each argument is a list over the sampled checkpoints t; each entry a flat vector or a
    sequence of per-parameter tensors (if the layouts of two entries differ, both are
    flattened; the total sizes must match).
    ``weights`` (length T, default ones) can carry e.g. the learning rates eta_t (TracIn).
    ``real_coef`` is the coefficient of the real term: the paper writes (1 - alpha) with
    alpha = :func:`replacement_alpha`; with mean-normalised losses the first-order effect
    has coefficient 1 (docs/sources.md on paper 05), the default. Differentiable w.r.t. all
    inputs (build ``syn_grads`` with ``create_graph=True``). ``absolute=False`` returns the
    signed value inside the bars.
    """
    for name, g in (("probe_grads", probe_grads), ("real_grads", real_grads),
                    ("syn_grads", syn_grads)):
        if not isinstance(g, (list, tuple)) or len(g) == 0:
            raise ValueError(f"{name} must be a non-empty list over checkpoints")
    t = len(probe_grads)
    if len(real_grads) != t or len(syn_grads) != t:
        raise ValueError(
            f"probe_grads, real_grads and syn_grads must have one entry per checkpoint, got "
            f"{t}, {len(real_grads)} and {len(syn_grads)}"
        )
    w = _check_weights(weights, t)
    _check_number(real_coef, "real_coef")
    real_sum = None
    syn_sum = None
    for i in range(t):
        ip_real = _inner(probe_grads[i], real_grads[i], f"probe_grads[{i}]", f"real_grads[{i}]")
        ip_syn = _inner(probe_grads[i], syn_grads[i], f"probe_grads[{i}]", f"syn_grads[{i}]")
        real_sum = w[i] * ip_real if real_sum is None else real_sum + w[i] * ip_real
        syn_sum = w[i] * ip_syn if syn_sum is None else syn_sum + w[i] * ip_syn
    val = real_coef * real_sum - syn_sum
    return val.abs() if absolute else val


def replacement_alpha(n_data, n_removed, n_added):
    """EAD Eq. 4 coefficient: ``alpha = (|G| - |A|) / (|D| - |G| + |A|)``.

    n_data = |D|, n_removed = |G|, n_added = |A|. Returns a float; ValueError for negative
    sizes or a zero denominator (an empty dataset after replacement).
    """
    for name, v in (("n_data", n_data), ("n_removed", n_removed), ("n_added", n_added)):
        _check_number(v, name, low=0)
    if n_removed > n_data:
        raise ValueError(f"n_removed ({n_removed}) cannot exceed n_data ({n_data})")
    denom = n_data - n_removed + n_added
    if denom == 0:
        raise ValueError("n_data - n_removed + n_added must be nonzero")
    return float(n_removed - n_added) / float(denom)


def effect_alignment_squared_loss(probe_grads, real_grads, syn_grads, real_coef=1.0, weights=None):
    """Smooth form of EAD Eq. 7 (a ddkit extension, not the paper's objective):

    ``L = ( real_coef * sum_t w_t <g_P^t, g_D^t> - sum_t w_t <g_P^t, g_S^t> )^2``,

    the square of the signed value inside Eq. 7's bars (:func:`effect_alignment_loss` with
    ``absolute=False``). Same minimisers as Eq. 7; its gradient shrinks with the residual instead
    of keeping unit size with a flipping sign. Arguments as in :func:`effect_alignment_loss`.
    """
    return effect_alignment_loss(probe_grads, real_grads, syn_grads, real_coef=real_coef, weights=weights,
                                 absolute=False) ** 2


def _flat(entry, name: str) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in _as_grad_list(entry, name)])


def effect_alignment_vector_loss(probe_grads, real_grads, syn_grads, real_coef=1.0, weights=None):
    """Vector-valued effect alignment (a ddkit extension, not the paper's objective).

    Eq. 7 aligns one scalar, the probe-averaged effect summed over checkpoints. This form aligns the
    effect on every probe sample ``p`` at every checkpoint ``t`` with a squared loss:

    ``L = sum_t mean_p ( w_t <g_p^t, real_coef * g_D^t - g_S^t> )^2``

    ``probe_grads[t]``: a (R, n) tensor whose rows are per-probe-sample gradients ``g_p^t`` (the
    per-probe-sample form), or a flat vector / sequence of per-parameter tensors, taken as a single
    row ``g_P^t`` (the per-checkpoint form, ``sum_t (w_t <g_P^t, c g_D^t - g_S^t>)^2``).
    ``real_grads[t]``, ``syn_grads[t]``: flat vectors or sequences of tensors with n elements in all.
    With one row per checkpoint and one checkpoint it equals :func:`effect_alignment_squared_loss`;
    since the mean of the rows is ``g_P``, it is >= the per-checkpoint form (Jensen), with equality
    when every probe sample sees the same effect.
    """
    for name, g in (("probe_grads", probe_grads), ("real_grads", real_grads), ("syn_grads", syn_grads)):
        if not isinstance(g, (list, tuple)) or len(g) == 0:
            raise ValueError(f"{name} must be a non-empty list over checkpoints")
    t = len(probe_grads)
    if len(real_grads) != t or len(syn_grads) != t:
        raise ValueError(f"probe_grads, real_grads and syn_grads must have one entry per checkpoint, got "
                         f"{t}, {len(real_grads)} and {len(syn_grads)}")
    w = _check_weights(weights, t)
    _check_number(real_coef, "real_coef")
    total = None
    for i in range(t):
        v = real_coef * _flat(real_grads[i], f"real_grads[{i}]") - _flat(syn_grads[i], f"syn_grads[{i}]")
        p = probe_grads[i]
        rows = p if isinstance(p, torch.Tensor) and p.dim() == 2 else _flat(p, f"probe_grads[{i}]")[None]
        if rows.shape[1] != v.numel():
            raise ValueError(f"probe_grads[{i}] rows have {rows.shape[1]} elements, the real/synthetic "
                             f"gradients {v.numel()}")
        term = ((w[i] * (rows @ v.to(rows))) ** 2).mean()
        total = term if total is None else total + term
    return total
