"""EAD: effect alignment for dataset distillation (papers/05_ead.md).

The replacement effect of swapping a group ``G`` of the training set ``D`` for a group ``A`` is
``R(G, A) = L(P, theta*_D) - L(P, theta*_{D-G+A})`` (Eq. 3). Unrolling SGD on ``D`` and
linearising each step around the recorded trajectory ``{(theta_t, eta_t)}`` gives, for
mean-normalised losses ``L(X, theta) = mean_{x in X} l(theta, x)`` and ``n' = |D| - |G| + |A|``:

    R(G, A) ~ sum_t eta_t < g_P^t, g_{D-G+A}^t - g_D^t >
            = sum_t eta_t < g_P^t, alpha g_D^t - (|G|/n') g_G^t + (|A|/n') g_A^t >     (*)

with ``alpha = (|G| - |A|) / n'`` (:func:`ddkit.losses.replacement_alpha`). The paper's Eq. 4 writes
``<g_P, g_G - alpha g_D> - <g_P, g_A>``: that is (*) with the opposite sign and with ``g_G``, ``g_A``
scaled by ``n'`` instead of their own sizes, i.e. it mixes sum- and mean-normalised gradients. For
``G = D`` and ``A = S`` (*) collapses to ``sum_t eta_t <g_P^t, g_S^t - g_D^t>`` (Eq. 7 as written drops
the ``eta_t``: ``eta_weighting=False``, the default): coefficient 1
on the real term (``real_coef=1``, the default), whereas the literal ``(1 - alpha)`` equals
``(2|S| - |D|) / |S|`` (about -|D|/|S|). ``notebooks/05_ead.ipynb`` derives this step by step.

This module holds
- :class:`EADSynSet`: synthetic images + learnable soft labels (parameterised as logits),
- :func:`loss_grads` / :func:`ead_objective`: per-checkpoint gradients through
  ``torch.func.functional_call`` (no shared model is mutated) and the objective: Eq. 7 (``"paper"``) or
  the ddkit extensions ``"squared"`` (Eq. 7's signed value squared) and ``"vector"`` (a squared effect per
  probe sample and checkpoint, via :func:`probe_effects`),
- :func:`distill_ead`: Algorithm 1 (with an lr schedule and a fixed monitor set, :func:`make_monitor`),
- per-update diagnostics: :func:`effect_values`, :func:`label_entropy`.

The checks that this effect estimate tracks retraining (:func:`ddkit.methods.ead_checks.logistic_estimator_check`),
the diagnostics over many draws and the evidence summaries live in :mod:`ddkit.methods.ead_checks`, which builds on
this module (never the other way round).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap
from tqdm.auto import tqdm

from ..augment import DSA
from ..losses import effect_alignment_loss, effect_alignment_squared_loss, effect_alignment_vector_loss
from ..core.utils import atomic_torch_save, check_same_device, make_generator, resolve_device, safe_torch_load
from ..train import soft_cross_entropy
from .trajectory import SCHEDULES, lr_at


# =============================================================================== soft labels
def check_soft_labels(y: torch.Tensor, num_classes: int, n: int | None = None, name: str = "soft labels",
                      atol: float = 1e-4) -> torch.Tensor:
    """``ValueError`` unless ``y`` is (n, num_classes) rows of probabilities (>= 0, summing to 1)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        raise ValueError(f"{name} must be a (N, K) tensor, got {getattr(y, 'shape', type(y).__name__)}")
    if y.shape[1] != num_classes:
        raise ValueError(f"{name} have {y.shape[1]} classes, but the dataset has {num_classes}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name}: {y.shape[0]} rows for {n} images")
    if not torch.isfinite(y).all() or (y < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    if not torch.allclose(y.sum(1), torch.ones_like(y[:, 0]), atol=atol):
        raise ValueError(f"{name}: rows must sum to 1 (got sums in "
                         f"[{y.sum(1).min().item():.4f}, {y.sum(1).max().item():.4f}])")
    return y


class EADSynSet:
    """Synthetic images and soft labels, both learnable.

    ``images`` (N, C, H, W) and ``label_logits`` (N, K) are leaf tensors with ``requires_grad``;
    the soft labels are ``softmax(label_logits)``, so they stay a distribution whatever the
    optimiser does. ``classes`` (N,) records the class each image was initialised from (for the
    hard-label baseline and for display).
    """

    def __init__(self, images: torch.Tensor, label_logits: torch.Tensor, classes: torch.Tensor,
                 num_classes: int | None = None):
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if label_logits.dim() != 2 or label_logits.shape[0] != images.shape[0]:
            raise ValueError(f"label_logits must be (N, K) with N={images.shape[0]}, got {tuple(label_logits.shape)}")
        if num_classes is not None and label_logits.shape[1] != num_classes:
            raise ValueError(f"soft labels have {label_logits.shape[1]} classes, but the dataset has {num_classes}")
        if not torch.isfinite(label_logits).all():
            raise ValueError("label_logits must be finite")
        self.images = images.detach().clone().requires_grad_(True)
        self.label_logits = label_logits.detach().clone().to(images).requires_grad_(True)
        self.classes = classes.detach().clone().long().to(images.device)

    @classmethod
    def from_soft_labels(cls, images, soft_labels, classes=None, num_classes: int | None = None, eps: float = 1e-8):
        """Build from probabilities (checked: right class count, rows sum to 1); logits = log(p)."""
        check_soft_labels(soft_labels, num_classes if num_classes is not None else soft_labels.shape[-1],
                          len(images))
        classes = soft_labels.argmax(1) if classes is None else classes
        return cls(images, soft_labels.clamp_min(eps).log(), classes, num_classes)

    @classmethod
    def init_real(cls, dataset, ipc: int, teacher, temperature: float = 1.0, generator=None, device=None):
        """Algorithm 1's initialisation: ``ipc`` random real images per class (class balanced) and
        soft labels ``softmax(teacher(x) / temperature)`` from the trajectory's final model."""
        if ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}")
        small = [c for c in range(dataset.num_classes) if len(dataset.class_indices(c)) < ipc]
        if small:
            raise ValueError(f"ipc={ipc} exceeds the training images of classes {small}")
        dev = resolve_device(device)
        x, y = dataset.sample_classes(ipc, generator=generator)
        x, y = x.to(dev), y.to(dev)
        with torch.no_grad():
            logits = teacher.to(dev)(x) / temperature
        if logits.shape[1] != dataset.num_classes:
            raise ValueError(f"teacher outputs {logits.shape[1]} classes, dataset has {dataset.num_classes}")
        return cls(x, logits, y, dataset.num_classes)

    @property
    def num_classes(self) -> int:
        return self.label_logits.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def soft_labels(self) -> torch.Tensor:
        return torch.softmax(self.label_logits, dim=1)

    def tensors(self):
        """Detached copies ``(images, soft_labels)`` for evaluation and saving."""
        return self.images.detach().clone(), self.soft_labels().detach().clone()

    def parameters(self):
        return [self.images, self.label_logits]


# =============================================================================== gradients
def checkpoint_tensors(model, state: dict, device, requires_grad: bool = True):
    """(params, buffers) dicts for ``functional_call`` from a checkpoint's state_dict: fresh tensors on
    ``device`` (leaves with ``requires_grad``), so no shared model or stored state is ever modified."""
    names = dict(model.named_parameters())
    missing = [k for k in names if k not in state]
    if missing:
        raise ValueError(f"checkpoint lacks parameters {missing[:3]}...: it belongs to another architecture")
    params = {k: state[k].detach().to(device).clone().requires_grad_(requires_grad) for k in names}
    buffers = {k: state[k].detach().to(device).clone() for k, _ in model.named_buffers() if k in state}
    return params, buffers


def loss_grads(model, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor,
               create_graph: bool = False) -> tuple:
    """Per-parameter gradient of ``soft_cross_entropy(model(x), y)`` (mean over the batch) at ``params``.
    ``create_graph=True`` keeps the graph so the result is differentiable w.r.t. ``x`` and ``y``."""
    out = functional_call(model, (params, buffers), (x,))
    loss = soft_cross_entropy(out, y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return grads if create_graph else tuple(g.detach() for g in grads)


def _dot(a, b) -> torch.Tensor:
    return sum((u.reshape(-1) * v.reshape(-1)).sum() for u, v in zip(a, b))


OBJECTIVES = ("paper", "squared", "vector")


def check_objective(objective: str) -> str:
    """``ValueError`` unless ``objective`` is one of :data:`OBJECTIVES`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES} ('paper' = Eq. 7 |.|, "
                         f"'squared' = (Eq. 7 signed)^2, 'vector' = per-probe-sample squared effects; the last two "
                         f"are ddkit extensions)")
    return objective


def _per_sample_loss(model, params, buffers, x, y):
    out = functional_call(model, (params, buffers), (x,))
    return F.cross_entropy(out, y, reduction="none") if y.dim() == 1 else -(y * F.log_softmax(out, 1)).sum(1)


def probe_effects(model, params: dict, buffers: dict, x_probe, y_probe, direction) -> torch.Tensor:
    """``e_p = <grad l(theta, p), direction>`` for every probe sample ``p`` (a (|P|,) vector), by one
    forward-mode product (``torch.func.jvp``): no per-sample gradients are materialised. Their mean is
    ``<g_P, direction>``."""
    tangent = dict(zip(params.keys(), (d.detach() for d in direction)))
    primal = {k: v.detach() for k, v in params.items()}
    _, e = jvp(lambda p: _per_sample_loss(model, p, buffers, x_probe, y_probe), (primal,), (tangent,))
    return e


def per_sample_grads(model, params: dict, buffers: dict, x, y) -> torch.Tensor:
    """(N, n_params) matrix of per-sample loss gradients (``torch.func.vmap`` of ``grad``), flattened in
    ``params`` order: the rows ``g_p`` of :func:`ddkit.losses.effect_alignment_vector_loss`."""
    primal = {k: v.detach() for k, v in params.items()}

    def one(xi, yi):
        return grad(lambda p: _per_sample_loss(model, p, buffers, xi[None], yi[None]).sum())(primal)

    g = vmap(one)(x, y)
    return torch.cat([g[k].reshape(len(x), -1) for k in primal], 1)


def effect_values(model, checkpoints, x_probe, y_probe, x_real, y_real, x_syn, y_syn, *, real_coef: float = 1.0,
                  eta_weighting: bool = False) -> dict:
    """The three objectives at fixed batches and checkpoints, without graphs (monitoring, diagnostics).

    Returns ``signed`` (inside Eq. 7's bars: ``sum_t w_t <g_P, c g_D - g_S>``), ``paper`` (``|signed|``,
    Eq. 7), ``squared`` (``signed^2``) and ``vector`` (``sum_t mean_p (w_t e_p^t)^2``), ``real_term``,
    ``syn_term``. ``x_syn`` may carry hard (N,) or soft (N, K) labels.
    """
    dev = x_syn.device
    signed, vector, real, syn = 0.0, 0.0, 0.0, 0.0
    for ck in checkpoints:
        w = float(ck.lr) if eta_weighting else 1.0
        params, buffers = checkpoint_tensors(model, ck.state, dev)
        gp = loss_grads(model, params, buffers, x_probe, y_probe)
        gd = loss_grads(model, params, buffers, x_real, y_real)
        gs = loss_grads(model, params, buffers, x_syn, y_syn)
        e = probe_effects(model, params, buffers, x_probe, y_probe, [real_coef * d - s for d, s in zip(gd, gs)])
        real += w * float(_dot(gp, gd))
        syn += w * float(_dot(gp, gs))
        vector += float(((w * e) ** 2).mean())
    signed = real_coef * real - syn
    return {"signed": signed, "paper": abs(signed), "squared": signed ** 2, "vector": vector,
            "real_term": real, "syn_term": syn}


def ead_objective(model, checkpoints, x_probe, y_probe, x_real, y_real, x_syn, y_syn, *, real_coef: float = 1.0,
                  eta_weighting: bool = False, objective: str = "paper", streaming: bool = False, leaves=None) -> dict:
    """The effect alignment objective over the sampled ``checkpoints`` (list of ``Checkpoint``).

    Per checkpoint: ``g_P`` (probe batch) and ``g_D`` (real batch) without graph, ``g_S`` (synthetic
    batch, soft labels) with ``create_graph=True``. Weights ``w_t = 1`` by default (Eq. 7 as written: no
    ``eta_t``; the paper's §3.2 puts the learning rate in the time-step distribution); ``eta_weighting``
    gives ``w_t = eta_t``, a ddkit option (TracIn-style). ``objective``: ``"paper"`` = Eq. 7, ``|real_coef * real_term - syn_term|``
    (:func:`ddkit.losses.effect_alignment_loss`), ``real_term = sum_t w_t <g_P, g_D>``; ``"squared"`` =
    its square (:func:`ddkit.losses.effect_alignment_squared_loss`); ``"vector"`` = per-probe-sample
    squared effects (:func:`ddkit.losses.effect_alignment_vector_loss`). The last two are ddkit
    extensions. Returns ``{"loss", "real_term", "syn_term"}``.

    ``streaming=False``: builds every checkpoint's graph (for ``"vector"`` with per-sample probe
    gradients, :func:`per_sample_grads`) and calls the ``ddkit.losses`` function; the caller runs
    ``loss.backward()``. ``streaming=True``: memory-light exact equivalent, accumulated checkpoint by
    checkpoint into ``leaf.grad`` for each tensor in ``leaves``; ``loss`` is then a detached value.
    With ``B = sum_t w_t <g_P, g_S>`` and ``r = c A - B``: ``d|r| = -sign(r) dB`` and ``d r^2 = -2 r dB``;
    for ``"vector"``, with ``e^t = J_P^t v^t`` (``v^t = c g_D^t - g_S^t``, :func:`probe_effects`) and
    ``u^t = (J_P^t)^T e^t`` (the gradient of ``sum_p e_p l_p``), ``dL = -sum_t (2 w_t^2 / |P|) <u^t, d g_S^t>``.
    """
    check_objective(objective)
    dev = x_syn.device
    weights = [float(c.lr) if eta_weighting else 1.0 for c in checkpoints]
    if not streaming:
        gP, gD, gS = [], [], []
        for ck in checkpoints:
            params, buffers = checkpoint_tensors(model, ck.state, dev)
            gP.append(per_sample_grads(model, params, buffers, x_probe, y_probe) if objective == "vector"
                      else loss_grads(model, params, buffers, x_probe, y_probe))
            gD.append(loss_grads(model, params, buffers, x_real, y_real))
            gS.append(loss_grads(model, params, buffers, x_syn, y_syn, create_graph=True))
        fn = {"paper": effect_alignment_loss, "squared": effect_alignment_squared_loss,
              "vector": effect_alignment_vector_loss}[objective]
        loss = fn(gP, gD, gS, real_coef=real_coef, weights=weights)
        mean_p = [p.mean(0) if objective == "vector" else torch.cat([t.reshape(-1) for t in p]) for p in gP]
        flat = lambda g: torch.cat([t.detach().reshape(-1) for t in g])
        real = sum(w * float(p @ flat(d)) for w, p, d in zip(weights, mean_p, gD))
        syn = sum(w * float(p @ flat(s)) for w, p, s in zip(weights, mean_p, gS))
        return {"loss": loss, "real_term": real, "syn_term": syn}
    if not leaves:
        raise ValueError("streaming=True needs `leaves` (the tensors to receive gradients)")
    acc = [torch.zeros_like(t) for t in leaves]
    real, syn, vector = 0.0, 0.0, 0.0
    for w, ck in zip(weights, checkpoints):
        params, buffers = checkpoint_tensors(model, ck.state, dev)
        gp = loss_grads(model, params, buffers, x_probe, y_probe)
        gd = loss_grads(model, params, buffers, x_real, y_real)
        gs = loss_grads(model, params, buffers, x_syn, y_syn, create_graph=True)
        real += w * float(_dot(gp, gd))
        if objective == "vector":
            e = probe_effects(model, params, buffers, x_probe, y_probe,
                              [real_coef * d - s.detach() for d, s in zip(gd, gs)])
            vector += float(((w * e) ** 2).mean())
            u = torch.autograd.grad((e * _per_sample_loss(model, params, buffers, x_probe, y_probe)).sum(),
                                    list(params.values()))
            b = -(2.0 * w * w / len(x_probe)) * _dot(u, gs)
        else:
            b = w * _dot(gp, gs)
        syn += w * float(_dot(gp, [s.detach() for s in gs]))
        for a, g in zip(acc, torch.autograd.grad(b, leaves, retain_graph=True, allow_unused=True)):
            if g is not None:
                a.add_(g)
        del gs, b
    r = real_coef * real - syn
    if objective == "vector":
        scale, value = 1.0, vector
    elif objective == "squared":
        scale, value = -2.0 * r, r * r
    else:
        scale, value = -(math.copysign(1.0, r) if r != 0 else 0.0), abs(r)
    for t, a in zip(leaves, acc):
        g = a.mul_(scale)
        t.grad = g if t.grad is None else t.grad + g
    return {"loss": torch.tensor(value), "real_term": real, "syn_term": syn}


# =============================================================================== Algorithm 1
def _check_inputs(syn: EADSynSet, dataset, trajectory, t_m: int, model: str | None):
    trajectory.check_compatible(dataset, model)
    if t_m > len(trajectory):
        raise ValueError(f"t_m={t_m} is larger than the trajectory ({len(trajectory)} checkpoints)")
    if t_m < 1:
        raise ValueError(f"t_m must be >= 1, got {t_m}")
    if syn.num_classes != dataset.num_classes:
        raise ValueError(f"soft labels have {syn.num_classes} classes, but {dataset.name} has {dataset.num_classes}")
    if tuple(syn.images.shape[1:]) != (dataset.channels, *dataset.im_size):
        raise ValueError(f"synthetic images have shape {tuple(syn.images.shape[1:])}, {dataset.name} needs "
                         f"{(dataset.channels, *dataset.im_size)}")


@dataclass
class Monitor:
    """A fixed evaluation point of the objective: probe batch, real batch and checkpoints that do not
    change between updates, so its curve shows what the updates do, apart from the per-draw noise."""

    x_probe: torch.Tensor
    y_probe: torch.Tensor
    x_real: torch.Tensor
    y_real: torch.Tensor
    checkpoints: list
    every: int = 10


def make_monitor(dataset, trajectory, *, batch_probe: int, batch_real: int, every: int = 10,
                 num_checkpoints: int = 0, seed: int = 0) -> Monitor:
    """A :class:`Monitor` with disjoint random probe / real batches of ``dataset`` and all checkpoints
    (``num_checkpoints=0``) or that many, evenly spaced along the trajectory (first and last included)."""
    if int(every) != every or every < 1:
        raise ValueError(f"monitor every={every!r} must be a positive integer")
    if int(num_checkpoints) != num_checkpoints or not 0 <= num_checkpoints <= len(trajectory):
        raise ValueError(f"monitor num_checkpoints={num_checkpoints!r} must be an integer in [0, {len(trajectory)}] "
                         f"(0 = all checkpoints)")
    picks = (range(len(trajectory)) if num_checkpoints == 0 else
             sorted({int(round(i)) for i in np.linspace(0, len(trajectory) - 1, int(num_checkpoints))}))
    n = len(dataset.x_train)
    if batch_probe + batch_real > n:
        raise ValueError(f"batch_probe + batch_real = {batch_probe + batch_real} exceeds the {n} training images")
    idx = torch.randperm(n, generator=make_generator(seed))[:batch_probe + batch_real].to(dataset.x_train.device)
    p, d = idx[:batch_probe], idx[batch_probe:]
    return Monitor(dataset.x_train[p], dataset.y_train[p], dataset.x_train[d], dataset.y_train[d],
                   [trajectory.checkpoint(i) for i in picks], int(every))


def label_entropy(y: torch.Tensor) -> float:
    """Mean Shannon entropy (nats) of the rows of a (N, K) probability matrix."""
    return float(-(y * y.clamp_min(1e-12).log()).sum(1).mean())


def distill_ead(syn: EADSynSet, dataset, trajectory, *, iterations: int, t_m: int, lr_img: float, lr_label: float,
                batch_syn: int = 0, batch_real: int = 256, batch_probe: int = 256, real_coef: float = 1.0,
                eta_weighting: bool = False, objective: str = "paper", optimizer: str = "sgd", momentum: float = 0.5,
                lr_schedule: str = "constant", streaming: bool = True, dsa=None, model: str | None = None,
                monitor_every: int = 0, monitor_checkpoints: int = 0, monitor_seed: int = 0, seed: int = 0,
                device=None, progress: bool = True, checkpoint=None, checkpoint_every: int = 10) -> list:
    """EAD Algorithm 1: ``iterations`` updates of the synthetic images and soft labels (in place in ``syn``).

    Each update samples ``S_t`` (``batch_syn`` synthetic images, 0 = all), a probe batch ``P``
    (``batch_probe``) and a real batch ``D_t`` (``batch_real``, disjoint from ``P``), ``t_m``
    checkpoints of ``trajectory``, evaluates :func:`ead_objective` (``objective``: ``"paper"`` = Eq. 7,
    or the ddkit extensions ``"squared"`` / ``"vector"``) and takes one optimiser step on images
    (``lr_img``) and label logits (``lr_label``), both scaled by ``lr_schedule`` (``constant``, ``step``,
    ``cosine``: :func:`ddkit.methods.trajectory.lr_at` over the ``iterations``). ``dsa`` (as in
    :func:`ddkit.methods.distill.distill`): True (the dataset's strategy), False/None/"none", a strategy string,
    or a callable ``dsa(x, generator)``; applied (per-sample draws) to all three batches.

    Returns the history, one dict per update: ``loss`` (this draw's objective), ``real_term``,
    ``syn_term``, ``lr_img`` / ``lr_label`` (this update's scheduled rates), ``step_norm`` (Frobenius norm of
    this update's image change), ``grad_norm`` (of the images' gradient), ``displacement``
    (``||x - x_0||_F``), ``entropy`` (mean soft-label entropy), and every ``monitor.every`` updates (and
    after the last) ``monitor``: :func:`effect_values` at the monitor's fixed batches.
    Inputs are checked before any compute (``ValueError``).

    ``monitor_every``: every that many updates (0: never) the objective is also evaluated on a fixed
    monitor set (:func:`make_monitor`: probe and real batches of ``batch_probe`` / ``batch_real`` images drawn
    once from ``monitor_seed``, and all checkpoints or ``monitor_checkpoints`` of them, evenly spaced); its
    curve shows what the updates do to the objective, apart from the noise of the per-update draws.

    ``checkpoint``: a path; every ``checkpoint_every`` updates (and after the last) the loop state
    (images, label logits, optimiser, both generators, the initial images, the history) is saved there
    atomically, and a call that finds the file resumes from it: the same result as an uninterrupted
    run. The file is tied to the set's shape, ``objective``, ``seed``, the trajectory and (with a
    decaying ``lr_schedule``) ``iterations``; another setting is a clear ``ValueError``.
    """
    _check_inputs(syn, dataset, trajectory, t_m, model)
    check_objective(objective)
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer={optimizer!r}; expected 'sgd' or 'adam'")
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r}; expected one of {SCHEDULES}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations={iterations!r} must be a non-negative integer")
    n_real = len(dataset.x_train)
    if batch_real + batch_probe > n_real:
        raise ValueError(f"batch_real + batch_probe = {batch_real + batch_probe} exceeds the {n_real} training images")
    monitor = (make_monitor(dataset, trajectory, batch_probe=batch_probe, batch_real=batch_real, every=monitor_every,
                            num_checkpoints=monitor_checkpoints, seed=monitor_seed) if monitor_every else None)
    dev = resolve_device(device)
    check_same_device(dev, "distill_ead", syn=syn.images)
    data = dataset.to(dev)
    dsa = DSA(data.dsa_strategy) if dsa is True else (None if dsa in (False, None, "", "none") else
                                                      DSA(dsa) if isinstance(dsa, str) else dsa)
    net = trajectory.build_model(device=dev).train()  # a template: only its structure is used
    for p in net.parameters():
        p.requires_grad_(False)
    groups = [{"params": [syn.images], "lr": lr_img}, {"params": [syn.label_logits], "lr": lr_label}]
    opt = torch.optim.SGD(groups, lr=lr_img, momentum=momentum) if optimizer == "sgd" else torch.optim.Adam(groups)
    gen = make_generator(seed)
    aug_gen = make_generator(seed + 1, dev)
    n_syn = len(syn)
    bs = n_syn if batch_syn in (0, None) or batch_syn >= n_syn else batch_syn
    x0 = syn.images.detach().clone()
    meta = {"kind": "ead-checkpoint", "shape": list(syn.images.shape), "objective": objective, "seed": int(seed),
            "trajectory": dict(trajectory.meta), "iterations": int(iterations) if lr_schedule != "constant" else None}
    history, start = [], 0
    if checkpoint is not None and Path(checkpoint).is_file():
        history, start = _load_ead_state(checkpoint, meta, iterations, syn, opt, gen, aug_gen, x0)

    def monitored():
        return effect_values(net, monitor.checkpoints, monitor.x_probe.to(dev), monitor.y_probe.to(dev),
                             monitor.x_real.to(dev), monitor.y_real.to(dev), syn.images.detach(),
                             syn.soft_labels().detach(), real_coef=real_coef, eta_weighting=eta_weighting)

    bar = tqdm(range(start, iterations), desc=f"EAD ({objective})", disable=not progress, initial=start,
               total=iterations)
    for it in bar:
        t0 = time.time()
        rec = {"iteration": it, "monitor": monitored()} if monitor is not None and it % monitor.every == 0 else \
            {"iteration": it}
        for group, base in zip(opt.param_groups, (lr_img, lr_label)):
            group["lr"] = lr_at(it, iterations, base, lr_schedule)
        s_idx = torch.randperm(n_syn, generator=gen)[:bs].to(dev)
        r_idx = torch.randperm(n_real, generator=gen)[:batch_real + batch_probe].to(dev)
        p_idx, d_idx = r_idx[:batch_probe], r_idx[batch_probe:]
        cks = trajectory.sample(t_m, gen)
        x_s = syn.images[s_idx]
        y_s = torch.softmax(syn.label_logits[s_idx], dim=1)
        x_p, y_p, x_d, y_d = data.x_train[p_idx], data.y_train[p_idx], data.x_train[d_idx], data.y_train[d_idx]
        if dsa is not None:
            x_s, x_p, x_d = dsa(x_s, generator=aug_gen), dsa(x_p, generator=aug_gen), dsa(x_d, generator=aug_gen)
        opt.zero_grad(set_to_none=True)
        out = ead_objective(net, cks, x_p, y_p, x_d, y_d, x_s, y_s, real_coef=real_coef, eta_weighting=eta_weighting,
                            objective=objective, streaming=streaming, leaves=syn.parameters())
        if not streaming:
            out["loss"].backward()
        before = syn.images.detach().clone()
        grad_norm = float(syn.images.grad.norm()) if syn.images.grad is not None else 0.0
        opt.step()
        with torch.no_grad():
            rec.update(loss=float(out["loss"].detach()), real_term=out["real_term"], syn_term=out["syn_term"],
                       step_norm=float((syn.images - before).norm()), displacement=float((syn.images - x0).norm()),
                       grad_norm=grad_norm, entropy=label_entropy(syn.soft_labels()), lr_img=opt.param_groups[0]["lr"],
                       lr_label=opt.param_groups[1]["lr"], checkpoints=[c.index for c in cks],
                       seconds=time.time() - t0)
        if not math.isfinite(rec["loss"]):
            raise ValueError(f"EAD loss became {rec['loss']} at iteration {it}; lower lr_img / lr_label")
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.2e}")
        if checkpoint is not None and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations):
            atomic_torch_save({"meta": meta, "iteration": it + 1, "images": syn.images.detach().cpu(),
                               "label_logits": syn.label_logits.detach().cpu(), "opt": opt.state_dict(),
                               "gen": gen.get_state(), "aug_gen": aug_gen.get_state(), "x0": x0.cpu(),
                               "history": history}, checkpoint)
    if monitor is not None and history:
        history[-1]["monitor_after"] = monitored()
    return history


def _load_ead_state(path, meta: dict, iterations: int, syn: EADSynSet, opt, gen, aug_gen, x0) -> tuple:
    """Restore :func:`distill_ead`'s state from ``path`` in place; returns ``(history, iteration)``."""
    state = safe_torch_load(path, expect=meta)
    if state["iteration"] > iterations:
        raise ValueError(f"checkpoint {path} is at update {state['iteration']} but iterations={iterations}: ask for "
                         "at least as many, or delete the checkpoint to start over")
    with torch.no_grad():
        syn.images.copy_(state["images"].to(syn.images.device))
        syn.label_logits.copy_(state["label_logits"].to(syn.label_logits.device))
        x0.copy_(state["x0"].to(x0.device))
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    aug_gen.set_state(state["aug_gen"])  # generator states are CPU byte tensors on every device
    return state["history"], state["iteration"]
