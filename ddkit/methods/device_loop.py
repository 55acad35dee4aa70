"""``distill``'s device-side loop (``graphs``): the joint DM-family iteration with every draw on the device,
captured once as a CUDA graph and replayed (eager on the CPU). :func:`ddkit.methods.distill.distill` dispatches
here when :func:`graphs_unsupported` finds nothing against the configuration; the pieces a graph needs (device
re-initialisation, the per-class sampler, :func:`ddkit.fast.graphs.capture`) live in :mod:`ddkit.fast.graphs`.

Inside the captured step the flags of ``distill`` mean what they mean in the eager loop: ``amp="bf16"`` runs
the objective under ``torch.autocast`` (without autocast's weight cache, which a graph cannot hold across
replays), ``compile=True`` runs the network's ``embed`` / ``forward`` through ``torch.compile`` (compiled
during the warm-up calls, before capture; fused normalisation / ReLU / pooling kernels), ``channels_last``
feeds the network channels-last inputs. ``amp="fp16"`` is refused: its loss scale is adjusted on the host.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..augment import decode
from ..core.utils import atomic_torch_save, make_generator, safe_torch_load, same_device
from ..fast.distributed import current
from ..fast.graphs import capture, check_class_batch, class_table, draw_class_batches, reinit_on_device_, \
    reinit_unsupported
from ..fast.speed import autocast, fast_view
from ..fast.storage import ImageStore
from ..models import has_batchnorm
from .synthetic import MatchBatch, SyntheticSet, dm_objective

__all__ = ["graphs_unsupported", "DeviceIteration", "distill_on_device", "LOG_EVERY"]

#: Iterations between two reads of the logged terms by the host in :func:`distill_on_device` (one
#: host sync per read; a checkpoint and the last iteration read too).
LOG_EVERY = 50


def graphs_unsupported(syn: SyntheticSet, dataset, objective, pool, batch_real: int, image_step: str = "joint",
                       after_step=None, extra_state=None, amp: str = "off", device=None) -> str | None:
    """Why :func:`distill_on_device` cannot run this ``distill`` configuration, or None. It needs: a pool
    whose ``draw`` only re-initialises its ``net`` (``fresh_init_per_draw``: :class:`ddkit.methods.pools.RandomPool`;
    re-drawn in place on the device) of a network without BatchNorm (its class-by-class forward splits the
    batch on the host) on ``device``; ``image_step="joint"``; an objective
    free of host syncs: :func:`dm_objective` or one marked ``objective.graph_safe = True``; no ``after_step``,
    ``extra_state``, ``amp="fp16"`` or data parallelism; ``batch_real`` at most the smallest class;
    the dataset's images in memory (not a memmap)."""
    fresh = getattr(pool, "fresh_init_per_draw", False) and isinstance(getattr(pool, "net", None), nn.Module)
    net = pool.net if fresh else None
    reasons = [
        (not fresh, f"the pool ({type(pool).__name__}) does not draw a freshly initialised net (a RandomPool does)"),
        (image_step != "joint", f"image_step={image_step!r} (the device loop steps jointly)"),
        (not (objective is dm_objective or getattr(objective, "graph_safe", False)),
         f"objective {getattr(objective, '__name__', objective)!r} is neither dm_objective nor marked graph_safe"),
        (after_step is not None, "an after_step callback runs on the host every iteration"),
        (bool(extra_state), "extra_state is updated on the host"),
        (amp == "fp16", "amp='fp16' adjusts its loss scale on the host ('bf16' needs no scale)"),
        (current().world_size > 1, "data-parallel runs sync the images between ranks"),
        (isinstance(dataset.x_train, ImageStore) and dataset.x_train.kind != "uint8",
         "the training images are a memmap, not in memory"),
        (batch_real > min(len(dataset.class_indices(c)) for c in range(dataset.num_classes)),
         f"batch_real={batch_real} exceeds the smallest class"),
    ]
    if fresh:
        reasons += [(has_batchnorm(net), "the network has BatchNorm (class-by-class forward)"),
                    (reinit_unsupported(net) is not None, f"re-initialisation: {reinit_unsupported(net)}"),
                    (device is not None and not same_device(next(net.parameters()).device, device),
                     f"the pool's network is on {next(net.parameters()).device}, the run on {device}")]
    return next((why for bad, why in reasons if bad), None)


class DeviceIteration:
    """One iteration of the joint DM-family step with every draw on the device (what the graph captures).

    :meth:`draw`: the network re-drawn in place, ``batch_real`` real indices per class, one DSA draw per
    class, all from ``generator``; :meth:`update`: siamese DSA (row c for class c's real and synthetic
    images), ``objective`` (under ``amp``'s autocast; the network seen through ``compile`` /
    ``channels_last``), the gradient of its ``"loss"`` w.r.t. the images (float32), SGD with momentum
    (``buf = momentum * buf + grad; images -= lr * buf``, torch's SGD) and the clamp; returns the
    logged terms as one tensor (names in :attr:`names`). ``batch.iteration`` is the constant ``iteration``.
    """

    def __init__(self, syn: SyntheticSet, data, objective, net: nn.Module, aug, batch_real: int, lr: float,
                 momentum: float, clamp, generator: torch.Generator, momentum_buffer: torch.Tensor,
                 iteration: int = 0, amp: str = "off", compile: bool = False, channels_last: bool = False):
        self.syn, self.data, self.objective, self.net, self.aug = syn, data, objective, net, aug
        self.batch_real, self.lr, self.momentum, self.clamp = batch_real, lr, momentum, clamp
        self.generator, self.buf, self.iteration, self.amp = generator, momentum_buffer, iteration, amp
        self.view = fast_view(net, compile, channels_last)
        k, dev = data.num_classes, syn.images.device
        self.table, self.valid = class_table([data.class_indices(c) for c in range(k)], dev)
        check_class_batch(self.valid, batch_real)
        self.y_real = torch.arange(k, device=dev).repeat_interleave(batch_real)
        self.names: list = []
        self.terms = None

    def draw(self) -> tuple:
        """``(real indices, DSA params)`` of this iteration; re-draws :attr:`net` in place."""
        reinit_on_device_(self.net, self.generator)
        idx = draw_class_batches(self.table, self.valid, self.batch_real, self.generator)
        k = self.data.num_classes
        return idx, (self.aug.sample(k, generator=self.generator) if self.aug is not None else None)

    def update(self, idx: torch.Tensor, p) -> torch.Tensor:
        """The objective on the real images ``idx`` and the current set, augmented with ``p``; one image step."""
        syn, k = self.syn, self.data.num_classes
        x_real = self.data.get_images(idx)
        x_syn, y_syn = decode(syn.images, syn.labels, syn.factor)
        if self.aug is not None:
            x_real = self.aug.apply_on_device(x_real, p, self.y_real)
            x_syn = self.aug.apply_on_device(x_syn, p, y_syn if y_syn.dim() == 1 else y_syn.argmax(1))
        with autocast(self.amp, syn.images.device, cache=False):
            terms = self.objective(MatchBatch(self.view, x_real, self.y_real, x_syn, y_syn, self.iteration, k))
        (grad,) = torch.autograd.grad(terms["loss"].float(), syn.images)
        with torch.no_grad():
            self.buf.mul_(self.momentum).add_(grad)
            syn.images.add_(self.buf, alpha=-self.lr)
            if self.clamp is not None:
                syn.images.clamp_(*self.clamp)
        self.names = list(terms)
        return torch.stack([t.detach().float().reshape(()) for t in terms.values()])

    def step(self) -> None:
        """:meth:`draw` then :meth:`update`; the terms land in :attr:`terms` (kept for graph replays)."""
        terms = self.update(*self.draw())
        if self.terms is None:
            self.terms = terms
        else:
            self.terms.copy_(terms)


def distill_on_device(syn: SyntheticSet, data, objective, pool, iterations: int, lr_img: float, momentum: float,
                      batch_real: int, aug, seed: int, dev: torch.device, clamp=None, checkpoint=None,
                      checkpoint_every: int = 200, progress: bool = True, desc: str = "distill", amp: str = "off",
                      compile: bool = False, channels_last: bool = False) -> list:
    """``distill``'s device-side loop (``graphs``): :class:`DeviceIteration` from one generator on ``dev``
    seeded with ``seed``, captured once as a CUDA graph and replayed on CUDA (eager on the CPU); the logged
    terms are read back every :data:`LOG_EVERY` iterations. The checkpoint is ``distill``'s (images, the
    optimiser state with its momentum buffer, iteration, history) plus this generator's state
    (``"g_device"``); the eager loop can resume it (its own generators restart from ``seed``)."""
    gen = make_generator(seed, dev)
    opt = torch.optim.SGD([syn.images], lr=lr_img, momentum=momentum)  # holds the buffer for checkpoints
    history, start = [], 0
    if checkpoint is not None and Path(checkpoint).is_file():
        history, start = _load_device_checkpoint(checkpoint, syn, opt, gen, iterations)
    buf = opt.state[syn.images].setdefault("momentum_buffer", torch.zeros_like(syn.images).detach())
    loop = DeviceIteration(syn, data, objective, pool.net.train(), aug, batch_real, lr_img, momentum, clamp,
                           gen, buf, start, amp=amp, compile=compile, channels_last=channels_last)
    step = loop.step
    if dev.type == "cuda" and start < iterations:  # the warm-up allocates loop.terms, which the graph writes
        step = capture(loop.step, gen, [syn.images, buf]).replay
    bar = tqdm(total=iterations, initial=start, desc=desc, disable=not progress)
    pending = []
    for it in range(start, iterations):
        step()
        pending.append(loop.terms.clone())
        saving = checkpoint is not None and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations)
        if saving or len(pending) == LOG_EVERY or it + 1 == iterations:
            history += [dict(zip(loop.names, row)) for row in torch.stack(pending).tolist()]
            bar.update(len(pending))
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
            pending = []
        if saving:
            _save_device_checkpoint(checkpoint, syn, opt, gen, it + 1, history, seed, dev)
    bar.close()
    return history


def _load_device_checkpoint(path, syn: SyntheticSet, opt, gen: torch.Generator, iterations: int) -> tuple:
    state = safe_torch_load(path, expect={"shape": list(syn.images.shape)})
    if state["iteration"] > iterations:
        raise ValueError(f"checkpoint {path} is at iteration {state['iteration']} but iterations={iterations}: "
                         "ask for at least as many iterations, or delete the checkpoint to start over")
    with torch.no_grad():
        syn.images.copy_(state["images"].to(syn.images.device))
    opt.load_state_dict(state["opt"])
    if "g_device" in state:
        gen.set_state(state["g_device"])
    return state["history"], state["iteration"]


def _save_device_checkpoint(path, syn: SyntheticSet, opt, gen: torch.Generator, iteration: int, history: list,
                            seed: int, dev: torch.device) -> None:
    if not current().is_main:
        return
    fresh = {"g_data": make_generator(seed).get_state(), "g_aug": make_generator(seed + 1, dev).get_state(),
             "g_pool": make_generator(seed + 2).get_state()}
    atomic_torch_save({
        "meta": {"shape": list(syn.images.shape), "kind": "distill-checkpoint"},
        "images": syn.images.detach().cpu(), "opt": opt.state_dict(), "iteration": iteration,
        "history": history, "g_device": gen.get_state(), "extra": {}, **fresh}, path)
