"""Training loops over in-memory tensors (no DataLoader): the evaluation protocol's trainer,
a few SGD steps for model pools, accuracy under ``inference_mode``."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .core.checks import check_probability
from .fast.speed import autocast, check_amp, fast_view, forward_flops, grad_scaler, resolve_compile

SCHEDULES = ("standard", "multistep", "none")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; ``target`` is (N,) class ids or (N, K) probabilities (soft labels)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def sgd(model, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """The field's optimizer for network training (DC/DSA/DM protocol). ``model``: a module, or an
    iterable of tensors (the stacked parameters of :mod:`ddkit.fast.ensemble`)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cutmix(x: torch.Tensor, target: torch.Tensor, num_classes: int, generator: torch.Generator,
           beta: float = 1.0):
    """CutMix (Yun et al. 2019) as used by IDC/DSDM evaluation: paste a random box from a shuffled
    copy; the target becomes the area-weighted mix (soft), which equals IDC's lam*CE(a)+(1-lam)*CE(b)."""
    dev = generator.device
    n, _, h, w = x.shape
    lam = torch.distributions.Beta(beta, beta).sample().item() if beta != 1.0 else \
        torch.rand((), generator=generator, device=dev).item()
    perm = torch.randperm(n, generator=generator, device=dev).to(x.device)
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy = int(torch.randint(h, (), generator=generator, device=dev))
    cx = int(torch.randint(w, (), generator=generator, device=dev))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    t = F.one_hot(target, num_classes).to(x.dtype) if target.dim() == 1 else target
    return mixed, lam * t + (1 - lam) * t[perm]


def train_classifier(model: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None, *, epochs: int,
                     lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                     batch_size: int = 256, dsa=None, schedule: str = "standard", cutmix_p: float = 0.0,
                     num_classes: int | None = None, generator: torch.Generator | None = None,
                     batch_source: Callable | None = None, steps_per_epoch: int | None = None,
                     progress: bool = False, desc: str = "train", compile=False,
                     channels_last: bool = False, on_epoch_end: Callable[[int], None] | None = None,
                     amp: str = "off") -> nn.Module:
    """Train ``model`` on in-memory tensors (the DC/DSA/DM evaluation trainer).

    - ``schedule="standard"``: SGD, lr x0.1 from epoch ``epochs // 2 + 1`` with a freshly created
      optimizer (momentum buffer reset), as in the reference ``evaluate_synset``. (The reference
      loop runs ``epochs + 1`` passes; ddkit runs exactly ``epochs``.)
    - ``schedule="multistep"``: DSDM/IDC protocol, lr x0.2 at 2/3 and 5/6 of training.
    - ``dsa``: a callable ``dsa(x, generator)`` applied to every batch (per-sample draws).
    - ``cutmix_p``: probability of CutMix per batch (DSDM protocol uses 0.5).
    - ``y`` hard (N,) or soft (N, K) labels.
    - ``batch_source(step, generator) -> (x, y)`` replaces the shuffled tensors (DiM's
      resample-every-step protocol); ``steps_per_epoch`` defaults to ceil(len(x) / batch_size).
    - ``on_epoch_end(epochs_done)`` is called after each epoch (1, 2, ..., ``epochs``), e.g. to
      test the network periodically; it must leave the model's weights alone.
    - Speed flags (same maths as the plain path up to float reassociation):
      ``compile`` True / False / "auto" runs the forward (and its backward) through
      ``torch.compile`` once per module (reused when the module is re-initialised in place;
      "auto" compiles only when the expected eager work exceeds
      ``ddkit.fast.speed.COMPILE_AUTO_SECONDS``); ``channels_last`` feeds channels-last batches.
    - ``amp``: "off" (float32, the exact previous path), "bf16" or "fp16": the forward runs under
      ``torch.autocast`` on the batch's device (``ddkit.fast.speed.autocast``); the loss is taken in
      float32; "fp16" scales the loss (``ddkit.fast.speed.grad_scaler``).
    """
    n, steps, num_classes = training_shape("train_classifier", x, y, amp=amp, schedule=schedule,
                                           batch_source=batch_source, batch_size=batch_size,
                                           steps_per_epoch=steps_per_epoch, num_classes=num_classes,
                                           cutmix_p=cutmix_p)
    if compile == "auto":
        shape = x.shape[1:] if x is not None else None
        work = epochs * steps * batch_size * 3 * forward_flops(model, shape) if shape is not None else None
        compile = resolve_compile("auto", work)
    fwd = fast_view(model, resolve_compile(compile), channels_last)
    model.train()
    dev = _device_of(model)
    if x is not None:                     # the set follows the network (one copy of a small set)
        x, y = x.to(dev), y.to(dev)
    opt = sgd(model, lr, momentum, weight_decay)
    scaler = grad_scaler(amp, dev)
    step = 0
    for ep in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        opt = schedule_epoch(opt, ep, epochs, schedule, lambda new_lr: sgd(model, new_lr, momentum, weight_decay))
        perm = epoch_order(n, generator, x, batch_source)
        for b in range(steps):
            xb, yb = training_batch(x, y, perm, b, batch_size, step, generator, batch_source=batch_source, dsa=dsa,
                                    cutmix_p=cutmix_p, num_classes=num_classes)
            xb, yb = xb.to(dev), yb.to(dev)   # a batch_source may draw elsewhere
            with autocast(amp, xb.device):
                logits = fwd(xb)
            loss = soft_cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
        if on_epoch_end is not None:
            on_epoch_end(ep + 1)
    return model


def training_shape(who: str, x, y, *, amp: str, schedule: str, batch_source, batch_size: int,
                   steps_per_epoch: int | None, num_classes: int | None, cutmix_p: float) -> tuple:
    """The checks and sizes every training loop starts with (``train_classifier``,
    ``ddkit.fast.ensemble.train_together``): ``(n, steps per epoch, num_classes)``, where ``n`` is the
    number of training images (None with a ``batch_source``) and ``num_classes`` is inferred from
    ``y`` when CutMix needs it."""
    check_amp(amp)
    check_probability("cutmix_p", cutmix_p)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    if batch_source is None and (x is None or y is None):
        raise ValueError(f"{who} needs x and y, or a batch_source")
    n = len(x) if x is not None else None
    steps = steps_per_epoch or math.ceil(n / batch_size)
    if num_classes is None and cutmix_p > 0:
        num_classes = y.shape[1] if y.dim() == 2 else int(y.max()) + 1
    return n, steps, num_classes


def schedule_epoch(opt: torch.optim.Optimizer, ep: int, epochs: int, schedule: str,
                   new_sgd: Callable[[float], torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """The optimizer for epoch ``ep`` (0-based) of :func:`train_classifier`'s schedules: "standard"
    returns ``new_sgd(lr / 10)`` (momentum reset) at epoch ``epochs // 2 + 1``; "multistep" scales
    the learning rate by 0.2 at epochs ``int(2/3 epochs)`` and ``int(5/6 epochs)``."""
    if schedule == "standard" and ep == epochs // 2 + 1:
        return new_sgd(opt.param_groups[0]["lr"] * 0.1)
    if schedule == "multistep" and ep in {int(epochs * 2 / 3), int(epochs * 5 / 6)}:
        for group in opt.param_groups:
            group["lr"] *= 0.2
    return opt


def epoch_order(n, generator, x, batch_source):
    """One epoch's shuffled sample order (drawn from ``generator``), None with a ``batch_source``."""
    if batch_source is not None:
        return None
    return torch.randperm(n, generator=generator, device=generator.device if generator else "cpu").to(x.device)


def training_batch(x, y, perm, b: int, batch_size: int, step: int, generator, *, batch_source=None, dsa=None,
                   cutmix_p: float = 0.0, num_classes: int | None = None):
    """Batch ``b`` of an epoch of :func:`train_classifier`: slice of ``perm`` (or ``batch_source(step,
    generator)``), then DSA and CutMix with draws from ``generator``, in that order."""
    if batch_source is None:
        idx = perm[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx], y[idx]
    else:
        xb, yb = batch_source(step, generator)
    if dsa is not None:
        xb = dsa(xb, generator=generator)
    if cutmix_p > 0 and torch.rand((), generator=generator,
                                   device=generator.device if generator else "cpu") < cutmix_p:
        xb, yb = cutmix(xb, yb, num_classes, generator)
    return xb, yb


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, *,
             compile=False, channels_last: bool = False, amp: str = "off") -> float:
    """Top-1 accuracy in percent (eval mode, large batches, no autograd).

    Speed flags as in :func:`train_classifier`; with ``compile`` the last partial batch is
    zero-padded to ``batch_size`` (one static graph; eval-mode outputs are per sample, the
    padding rows are dropped). Correct counts are summed on the device (one host sync). ``amp``: the
    forward under ``ddkit.fast.speed.autocast`` ("off" = float32)."""
    was_training = model.training
    model.eval()
    comp = resolve_compile(compile)
    fwd = fast_view(model, comp, channels_last)
    dev = _device_of(model, x.device)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)  # the test set may live elsewhere: batches follow the network
        n = len(xb)
        if comp and n < batch_size and len(x) > batch_size:
            xb = torch.cat([xb, xb.new_zeros((batch_size - n,) + tuple(xb.shape[1:]))])
        with autocast(amp, xb.device):
            logits = fwd(xb)
        correct += (logits[:n].argmax(1) == y[i:i + batch_size].to(dev)).sum()
    model.train(was_training)
    return 100.0 * int(correct) / len(x)


def train_steps(model: nn.Module, dataset, steps: int, *, batch_size: int = 256, lr: float = 0.01,
                momentum: float = 0.9, weight_decay: float = 5e-4, generator: torch.Generator | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """``steps`` SGD steps on random real batches (pool warm-up: IDM queue, DiM/GAN pool).

    Returns the optimizer so a caller can keep its momentum across calls."""
    opt = optimizer or sgd(model, lr, momentum, weight_decay)
    model.train()
    n = len(dataset.x_train)
    gdev = generator.device if generator is not None else torch.device("cpu")
    dev = _device_of(model, dataset.device)
    for _ in range(steps):
        idx = torch.randint(n, (batch_size,), generator=generator, device=gdev).to(dataset.device)
        loss = F.cross_entropy(model(dataset.x_train[idx].to(dev)), dataset.y_train[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt


@torch.no_grad()
def embed_all(net: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate embeddings of ``x`` in large batches without autograd (coresets, t-SNE, prototypes).

    ``no_grad`` rather than ``inference_mode``: callers keep the result in state updated later
    (e.g. DSDM's prototype bank)."""
    dev = _device_of(net, x.device)
    return torch.cat([net.embed(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])


def _device_of(model: nn.Module, fallback: torch.device | None = None) -> torch.device | None:
    """Where ``model``'s parameters live (``fallback`` for a module without parameters): the trainers
    move their data there (no-op when already there)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else fallback
