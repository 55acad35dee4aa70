"""Train the evaluation protocol's N networks together.

The protocol trains N independent networks on a tiny set (100 images at IPC 10): one network's
step is too small to keep the cores busy. Here the N networks' parameters are stacked
(``torch.func.stack_module_state``) and one ``torch.func.vmap`` of ``functional_call`` runs all N
forward/backward passes at once (vmap turns N convolutions into one grouped convolution). Each
network keeps its own initialisation, its own generator and so its own shuffles, DSA draws and
CutMix draws, in the order :func:`ddkit.train.train_classifier` makes them; SGD with momentum and
weight decay is elementwise, so one optimizer over the stacked tensors updates each network as its
own optimizer would. Results equal the sequential path up to float reassociation
(``tests/test_ensemble.py``).

Not for networks with BatchNorm (running statistics are updated in place, which vmap cannot do per
network): :func:`can_train_together` says so and ``evaluate_synset`` falls back to the sequential
loop.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..models import has_batchnorm
from ..train import epoch_order, schedule_epoch, sgd, soft_cross_entropy, training_batch, training_shape
from .speed import autocast, grad_scaler


def can_train_together(models: Sequence[nn.Module]) -> bool:
    """True when :func:`train_together` applies: more than one network, all of one architecture,
    no BatchNorm and no buffers (vmap cannot update running statistics per network)."""
    if len(models) < 2 or has_batchnorm(models[0]) or any(True for _ in models[0].buffers()):
        return False
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
    return all(type(m) is type(models[0]) and s == shapes[0] for m, s in zip(models, shapes))


def _losses(logits: torch.Tensor, targets: list) -> torch.Tensor:
    """Sum over networks of each network's mean (soft) cross-entropy; ``logits`` (N, B, K)."""
    if all(t.dim() == 1 for t in targets):
        per_sample = F.cross_entropy(logits.flatten(0, 1), torch.cat(targets), reduction="none")
        return per_sample.view(logits.shape[:2]).mean(1).sum()
    return sum(soft_cross_entropy(lg, t) for lg, t in zip(logits, targets))


@torch.no_grad()
def _write_back(models: Sequence[nn.Module], names: list, stacked: dict) -> None:
    """Copy each network's slice of the stacked parameters into its own module."""
    for i, m in enumerate(models):
        params = dict(m.named_parameters())
        for name in names:
            params[name].copy_(stacked[name][i])


def train_together(models: Sequence[nn.Module], x: torch.Tensor | None, y: torch.Tensor | None, *, epochs: int,
                   generators: Sequence[torch.Generator], lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 5e-4, batch_size: int = 256, dsa=None, schedule: str = "standard",
                   cutmix_p: float = 0.0, num_classes: int | None = None, batch_source: Callable | None = None,
                   steps_per_epoch: int | None = None, amp: str = "off",
                   on_epoch_end: Callable[[int], None] | None = None) -> list:
    """Train ``models[i]`` with ``generators[i]`` exactly as ``train_classifier(models[i], ...,
    generator=generators[i])`` would (same arguments, see there), all networks in one vmapped pass per
    step. The trained weights are written back into the modules after every epoch (so
    ``on_epoch_end(epochs_done)`` may test them) and at the end. Returns ``models``."""
    if not can_train_together(models):
        raise ValueError("train_together needs >= 2 networks of one architecture without BatchNorm or buffers; "
                         "train them one by one with ddkit.train.train_classifier")
    if len(generators) != len(models):
        raise ValueError(f"train_together got {len(models)} networks but {len(generators)} generators")
    n, steps, num_classes = training_shape("train_together", x, y, amp=amp, schedule=schedule,
                                           batch_source=batch_source, batch_size=batch_size,
                                           steps_per_epoch=steps_per_epoch, num_classes=num_classes,
                                           cutmix_p=cutmix_p)
    for m in models:
        m.train()
    stacked, _ = stack_module_state(list(models))
    names = list(stacked)
    base = copy.deepcopy(models[0]).to("meta")

    def one(params, xb):
        return functional_call(base, params, (xb,))

    forward = vmap(one)
    tensors = [stacked[k] for k in names]
    opt = sgd(tensors, lr, momentum, weight_decay)
    scaler = grad_scaler(amp, tensors[0].device)
    step = 0
    for ep in range(epochs):
        opt = schedule_epoch(opt, ep, epochs, schedule, lambda new_lr: sgd(tensors, new_lr, momentum, weight_decay))
        perms = [epoch_order(n, g, x, batch_source) for g in generators]
        for b in range(steps):
            batches = [training_batch(x, y, perm, b, batch_size, step, g, batch_source=batch_source, dsa=dsa,
                                      cutmix_p=cutmix_p, num_classes=num_classes) for perm, g in zip(perms, generators)]
            xb = torch.stack([xb for xb, _ in batches])
            with autocast(amp, xb.device):
                logits = forward(stacked, xb)
            loss = _losses(logits.float(), [yb for _, yb in batches])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
        _write_back(models, names, stacked)
        if on_epoch_end is not None:
            on_epoch_end(ep + 1)
    return list(models)
