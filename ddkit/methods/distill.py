"""The shared image-optimisation loop of the DM family (DM, IDM, IID, DSDM).

Each iteration: draw a network from the pool; sample a real batch of ``batch_real`` images per
class (all classes in one tensor); decode the synthetic set (factor-l partition/expansion);
apply siamese DSA (one parameter draw per class shared by that class's real and synthetic
images, all classes in one call); evaluate the objective; SGD on the images.

Two ways to step (``image_step``), because the reference codes differ:

- ``"joint"`` (DM, IID-on-DM: their code sums the class losses and steps once): one
  ``backward`` of the whole objective and one ``step()`` per iteration.
- ``"per_class"`` (IDM, IID-on-IDM and IDC-based DSDM: their code steps inside the class loop):
  for each class c in order, class c's synthetic rows are decoded and augmented from the
  *current* images, the objective is evaluated on class c's real and synthetic samples alone,
  and ``step()`` runs on the one tensor that holds every class's images. With momentum this is
  NOT the joint step: at each of the K steps the other classes' rows move by their momentum
  buffer (``buf = m * buf``), so after one iteration row c has moved K times, not once.
  ``tests/test_distill.py`` checks it against a loop written the reference's way.

Objectives that couple classes (none of the DM family's do) would differ between the two
beyond the momentum effect; every objective here is a sum of per-class terms.

Data-parallel under ``torchrun`` (:mod:`ddkit.fast.distributed`): each rank evaluates the objective on
its block of classes only. Exact for objectives that are sums of per-class terms - DM (Eq. 2),
IDM, IID's L_CC / covariance terms, DSDM's L_proto, L_SD and L_h (each term of class c involves only
class c's real and synthetic samples and the prototype bank, which every rank updates identically
from the synced set) - because class c's rows receive gradient from class c's term alone. The
reductions these need: the rows, broadcast from their owner after each iteration, and the logged
terms, summed over ranks. An objective that couples classes sets ``objective.couples_classes =
True`` and is evaluated whole on every rank. With ``"per_class"`` a rank still takes the K steps
of the class loop, a zero-gradient step for the classes it does not own, so its rows move by their
momentum exactly as in the one-process loop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..augment import DSA, decode
from ..core import timebox
from ..core.checks import check_int, check_interval, check_number
from ..fast.distributed import ClassShard, current
from ..fast.graphs import (capture, check_class_batch, class_table, draw_class_batches, reinit_on_device_,
                           reinit_unsupported)
from ..core.utils import atomic_torch_save, check_same_device, make_generator, resolve_device, safe_torch_load
from ..fast.speed import autocast, check_amp, fast_view, forward_flops, grad_scaler, resolve_channels_last, resolve_compile
from ..fast.storage import ImageStore
from ..models import has_batchnorm
from .synthetic import (IMAGE_STEPS, MatchBatch, SyntheticSet, class_rows, dm_objective, init_synthetic,
                        per_class_forward, real_class_rows)

#: The loop's own names, and the synthetic set's (``ddkit.methods.synthetic``) that callers take from here.
__all__ = ["distill", "sample_match_batch", "graphs_unsupported", "distill_on_device", "DeviceIteration",
           "IMAGE_STEPS", "MatchBatch", "SyntheticSet", "dm_objective", "init_synthetic", "per_class_forward"]


def distill(syn: SyntheticSet, dataset, objective: Callable[[MatchBatch], dict], pool, iterations: int,
            lr_img: float = 1.0, momentum: float = 0.5, batch_real: int = 256, dsa=True, seed: int = 0,
            device=None, after_step: Callable | None = None, clamp: tuple | None = None,
            checkpoint: str | Path | None = None, checkpoint_every: int = 200, extra_state: dict | None = None,
            progress: bool = True, desc: str = "distill", compile=False, channels_last="auto",
            image_step: str = "joint", amp: str = "off", graphs="auto") -> list:
    """Optimise ``syn.images`` for ``iterations`` steps of ``objective`` (see module docstring).

    - ``objective(batch) -> {"loss": tensor, "<term>": tensor, ...}``; every term is logged.
    - ``pool``: ``draw(generator)`` and optional ``after_iteration(dataset, generator)``.
    - ``dsa``: True (the dataset's strategy), False/"none", a strategy string or a ``DSA``.
    - ``after_step(iteration, syn, batch)``: e.g. DSDM's memory-bank update.
    - ``clamp``: (lo, hi) bounds on the images (DSDM clamps pixels): after the step with ``"joint"``;
      with ``"per_class"`` once per iteration before the class loop, as the DSDM / IDC code does (and
      once more when the loop ends, so the returned set is in range).
    - ``image_step``: ``"joint"`` (one step per iteration) or ``"per_class"`` (one step after each
      class's loss, as the IDM / IDC reference loops do; see the module docstring).
    - ``checkpoint``: a path; the loop saves its state there every ``checkpoint_every`` iterations
      (atomic) and resumes from it when it exists (``extra_state``: objects with
      ``state_dict``/``load_state_dict`` saved along, e.g. a prototype bank, or ``torch.Generator``s).
    - Speed flags (results equal the plain path up to float reassociation, see
      tests/test_speed_flags.py): ``compile`` True / False / "auto" runs the objective's
      ``net.embed`` / ``net.feature_maps`` / ``net(x)`` through ``torch.compile`` (once per pool
      module: in-place re-initialisation reuses the graph; "auto" compiles only when the run's
      expected eager work is above ``ddkit.fast.speed.COMPILE_AUTO_SECONDS``); ``channels_last`` True /
      False / "auto" (default: on when compiled, ``ddkit.fast.speed.resolve_channels_last``) feeds the
      network channels-last inputs. The objective then sees a :class:`ddkit.fast.speed.FastView`
      of the drawn network as ``batch.net``.
    - Under ``torchrun`` (``ddkit run --nproc N``) the classes are split over the ranks (module
      docstring); every rank returns the same history and ends with the whole set; only rank 0
      writes the checkpoint.
    - Time box (``ddkit.core.timebox``): with a ``checkpoint``, one process and ``$DDKIT_DEADLINE`` passed,
      the loop saves its state after the current iteration and raises ``TimeBoxReached``.
    - ``amp``: "off" (float32, the exact previous path), "bf16" or "fp16": the objective (the no-grad
      real-side forward and the synthetic forward) runs under ``torch.autocast`` on ``device``
      (``ddkit.fast.speed.autocast``); the backward and the image step stay float32 ("fp16" scales the loss).
    - ``graphs``: "auto" (default), True or False: the device-side loop (:func:`distill_on_device`:
      every draw from one generator on the device, the whole iteration one CUDA graph on CUDA, eager
      on the CPU). "auto" takes it on CUDA when :func:`graphs_unsupported` finds nothing against the
      configuration (else the loop below, whose numbers it leaves unchanged); True insists (a
      ``ValueError`` gives the reason); its draws differ from this loop's (same distributions).
    Returns the history: one dict of floats per iteration.
    """
    if image_step not in IMAGE_STEPS:
        raise ValueError(f"image_step={image_step!r}; expected one of {list(IMAGE_STEPS)}")
    check_int("iterations", iterations, 0)
    check_int("batch_real", batch_real)
    check_number("lr_img", lr_img, 0, exclusive=True)
    check_interval("momentum", momentum, 0, 1)
    check_amp(amp)
    dev = resolve_device(device)
    check_same_device(dev, "distill", syn=syn.images, pool=pool)
    data = dataset.to(dev)
    aug = DSA(data.dsa_strategy) if dsa is True else (None if dsa in (False, None, "", "none") else
                                                      DSA(dsa) if isinstance(dsa, str) else dsa)
    if _use_graphs(graphs, dev, syn, data, objective, pool, batch_real, image_step, after_step, extra_state,
                   compile, amp):
        return distill_on_device(syn, data, objective, pool, iterations, lr_img, momentum, batch_real, aug, seed,
                                 dev, clamp, checkpoint, checkpoint_every, progress, desc)
    g_data, g_aug, g_pool = make_generator(seed, "cpu"), make_generator(seed + 1, dev), \
        make_generator(seed + 2, "cpu")
    opt = torch.optim.SGD([syn.images], lr=lr_img, momentum=momentum)
    extra_state = extra_state or {}
    gens = {"g_data": g_data, "g_aug": g_aug, "g_pool": g_pool}
    history, start = _resume(checkpoint, iterations, syn, opt, gens, extra_state, pool, dev)
    k = data.num_classes
    shard = ClassShard(k, syn.ipc, replicate=getattr(objective, "couples_classes", False))
    step = _ImageStep(image_step, objective, syn, opt, aug, k, shard, clamp,
                      (lambda: autocast(amp, dev), grad_scaler(amp, dev)))
    use_compile = _loop_compile(compile, pool, data, syn, batch_real, iterations - start)
    channels_last = resolve_channels_last(channels_last, use_compile)
    save = (lambda done: _save(checkpoint, done, history, syn, opt, gens, extra_state, pool, shard)) \
        if checkpoint is not None else None
    progress = progress and shard.group.is_main
    bar = tqdm(range(start, iterations), desc=desc, disable=not progress, initial=start, total=iterations)
    for it in bar:
        net = fast_view(pool.draw(g_pool), use_compile, channels_last)
        x_real, y_real = data.sample_classes(batch_real, generator=g_data, keep=shard.keep)
        p = aug.sample(k, generator=g_aug, device=dev) if aug is not None else None
        if aug is not None:
            x_real = aug.apply(x_real, p, y_real)
        terms, batch = step(net, x_real, y_real, p, it)
        if hasattr(pool, "after_iteration"):
            pool.after_iteration(data, g_pool)
        if after_step is not None:
            after_step(it, syn, batch)
        history.append({name: float(v.detach() if torch.is_tensor(v) else v) for name, v in terms.items()})
        if progress and it % 10 == 0:
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
        if save is not None:
            _checkpoint_or_stop(save, it + 1, iterations, checkpoint_every, checkpoint, shard)
    step.finish()
    return history


class _ImageStep:
    """One iteration's image update of :func:`distill` after the real batch is drawn: ``"joint"`` (one
    step on the whole objective) or ``"per_class"`` (the reference's class loop, one step per class), on
    this process's classes (:class:`ddkit.fast.distributed.ClassShard`; every class in one process),
    then the rows synced from their owners and the logged terms summed over processes.
    ``precision``: ``(autocast context, grad scaler)`` of the ``amp`` flag."""

    def __init__(self, image_step: str, objective, syn: SyntheticSet, opt, aug, num_classes: int, shard, clamp,
                 precision):
        self.joint, self.objective, self.syn, self.opt = image_step == "joint", objective, syn, opt
        self.num_classes = num_classes
        self.aug, self.shard, self.clamp, self.precision = aug, shard, clamp, precision

    def __call__(self, net, x_real, y_real, p, it: int) -> tuple:
        """``(terms, last batch)`` of iteration ``it``."""
        syn, shard = self.syn, self.shard
        if self.joint:
            batch = _syn_batch(syn, shard.rows(), net, x_real, y_real, self.aug, p, it, self.num_classes)
            terms = _step(self.objective, batch, self.opt, syn, self.clamp, self.precision)
        else:
            terms, batch = self._class_loop(net, x_real, y_real, p, it)
        shard.sync(syn.images)
        return shard.reduce_terms(terms), batch

    def _class_loop(self, net, x_real, y_real, p, it: int) -> tuple:
        """The reference's class loop: for each class, decode, augment, loss, step on all rows (another
        process's class: a zero-gradient step, so this process's rows move by their momentum)."""
        syn, classes = self.syn, self.shard.classes
        _clamp(syn, self.clamp)
        per_class_terms, batch = [], None
        real_rows = real_class_rows(y_real, classes)
        for c in range(self.num_classes):
            if c not in classes:
                _zero_gradient_step(self.opt, syn)
                continue
            real_c = real_rows[c]
            batch = _syn_batch(syn, class_rows(syn, c), net, x_real[real_c], y_real[real_c], self.aug, p, it,
                               self.num_classes)
            per_class_terms.append(_step(self.objective, batch, self.opt, syn, None, self.precision))
        return {name: sum(t[name].detach() for t in per_class_terms) for name in per_class_terms[0]}, batch

    def finish(self) -> None:
        """With ``"per_class"`` the clamp runs before each class loop: once more, so the set ends in range."""
        if not self.joint:
            _clamp(self.syn, self.clamp)


def _checkpoint_or_stop(save, done: int, iterations: int, every: int, checkpoint, shard) -> None:
    """After ``done`` iterations: save every ``every`` iterations and at the end; past the time box
    (``ddkit.core.timebox``, one process) save and raise ``TimeBoxReached``."""
    if done % every == 0 or done == iterations:
        save(done)
    if done < iterations and shard.group.world_size == 1 and timebox.expired():
        if done % every:
            save(done)
        raise timebox.stop_loop(done, iterations, str(checkpoint))


def _resume(checkpoint, iterations: int, syn: SyntheticSet, opt, gens: dict, extra_state: dict, pool, dev) -> tuple:
    """``(history, first iteration)`` of :func:`distill`: restored from ``checkpoint`` when the file exists
    (images, optimiser, generators, ``extra_state``, the pool's state), else ``([], 0)``."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return [], 0
    state = safe_torch_load(checkpoint, expect={"shape": list(syn.images.shape)})
    if state["iteration"] > iterations:
        raise ValueError(f"checkpoint {checkpoint} is at iteration {state['iteration']} but iterations={iterations}: "
                         "ask for at least as many iterations, or delete the checkpoint to start over")
    with torch.no_grad():
        syn.images.copy_(state["images"].to(dev))
    opt.load_state_dict(state["opt"])
    for name, g in gens.items():
        g.set_state(state[name].cpu() if g.device.type == "cpu" else state[name])
    for k, obj in extra_state.items():
        saved = state.get("extra", {}).get(k)
        if saved is None or isinstance(obj, torch.Generator) != isinstance(saved, torch.Tensor):
            raise ValueError(f"checkpoint {checkpoint} holds no matching state for extra_state[{k!r}] "
                             f"({type(obj).__name__}): written by other code; delete it to start over")
        load = obj.set_state if isinstance(obj, torch.Generator) else obj.load_state_dict
        load(saved)
    if hasattr(pool, "load_state_dict") and "pool" in state:
        pool.load_state_dict(state["pool"])
    return state["history"], state["iteration"]


def _save(checkpoint, iteration: int, history: list, syn: SyntheticSet, opt, gens: dict, extra_state: dict, pool,
          shard) -> None:
    """:func:`distill`'s checkpoint after ``iteration`` iterations (atomic; process 0 writes it after the
    ranks' momentum buffers are synced)."""
    if "momentum_buffer" in opt.state.get(syn.images, {}):
        shard.sync(opt.state[syn.images]["momentum_buffer"])
    if not shard.group.is_main:
        return
    atomic_torch_save({
        "meta": {"shape": list(syn.images.shape), "kind": "distill-checkpoint"},
        "images": syn.images.detach().cpu(), "opt": opt.state_dict(), "iteration": iteration,
        "history": history, **{name: g.get_state() for name, g in gens.items()},
        "extra": {k: o.get_state() if isinstance(o, torch.Generator) else o.state_dict()
                  for k, o in extra_state.items()},
        **({"pool": pool.state_dict()} if hasattr(pool, "state_dict") else {})}, checkpoint)


def _loop_compile(compile, pool, data, syn: SyntheticSet, batch_real: int, iterations_left: int) -> bool:
    """``compile`` of :func:`distill` resolved: "auto" weighs the remaining iterations' work (real forwards
    plus synthetic forwards and backwards of the pool's network) against a compile's cost."""
    if compile != "auto":
        return resolve_compile(compile)
    net = getattr(pool, "net", None)
    work = None
    if net is not None:
        n_img = data.num_classes * batch_real + 3 * len(syn.images) * syn.factor ** 2
        work = iterations_left * n_img * forward_flops(net, (data.channels, *data.im_size))
    return resolve_compile("auto", work, label="distill")


def sample_match_batch(syn: SyntheticSet, dataset, net, batch_real: int, dsa=None, generator=None,
                       aug_generator=None, iteration: int = 0) -> MatchBatch:
    """One iteration's :class:`MatchBatch` outside the loop (diagnostics): ``batch_real`` real images per
    class and the whole decoded synthetic set, with one siamese DSA draw per class when ``dsa`` (a ``DSA``)."""
    k = dataset.num_classes
    x_real, y_real = dataset.sample_classes(batch_real, generator=generator)
    p = dsa.sample(k, generator=aug_generator, device=x_real.device) if dsa is not None else None
    if dsa is not None:
        x_real = dsa.apply(x_real, p, y_real)
    return _syn_batch(syn, slice(None), net, x_real, y_real, dsa, p, iteration, k)


def _syn_batch(syn: SyntheticSet, rows: slice, net, x_real, y_real, aug, p, iteration: int, k: int) -> MatchBatch:
    """A :class:`MatchBatch` of the given stored rows, decoded and augmented from the current images
    with the iteration's siamese draw ``p`` (row ``c`` of ``p`` for class ``c``)."""
    x_syn, y_syn = decode(syn.images[rows], syn.labels[rows], syn.factor)
    if aug is not None:
        x_syn = aug.apply(x_syn, p, y_syn if y_syn.dim() == 1 else y_syn.argmax(1))
    return MatchBatch(net, x_real, y_real, x_syn, y_syn, iteration, k)


def _step(objective, batch: MatchBatch, opt, syn: SyntheticSet, clamp, precision) -> dict:
    """One objective evaluation, backward and optimiser step (then the clamp); returns the terms.
    ``precision``: ``(autocast context, grad scaler)`` of the ``amp`` flag; for "off" a null context
    and a disabled scaler (``scale`` and ``step`` are then the identity and ``opt.step()``)."""
    context, scaler = precision
    with context():
        terms = objective(batch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(terms["loss"].float()).backward()
    scaler.step(opt)
    scaler.update()
    _clamp(syn, clamp)
    return terms


def _zero_gradient_step(opt, syn: SyntheticSet) -> None:
    """An optimiser step with a zero gradient (SGD with momentum: every row moves by its buffer)."""
    syn.images.grad = torch.zeros_like(syn.images)
    opt.step()


def _clamp(syn: SyntheticSet, clamp) -> None:
    if clamp is not None:
        with torch.no_grad():
            syn.images.clamp_(*clamp)


# =========================================================================== device-side loop (CUDA graphs)

#: Iterations between two reads of the logged terms by the host in :func:`distill_on_device` (one
#: host sync per read; a checkpoint and the last iteration read too).
LOG_EVERY = 50

#: ``distill(graphs=...)`` values.
GRAPHS = ("auto", True, False)


def graphs_unsupported(syn: SyntheticSet, dataset, objective, pool, batch_real: int, image_step: str = "joint",
                       after_step=None, extra_state=None, compile=False, amp: str = "off", device=None) -> str | None:
    """Why :func:`distill_on_device` cannot run this ``distill`` configuration, or None. It needs: a pool
    whose ``draw`` only re-initialises its ``net`` (``fresh_init_per_draw``: :class:`ddkit.methods.pools.RandomPool`;
    re-drawn in place on the device) of a network without BatchNorm (its class-by-class forward splits the
    batch on the host) on ``device``; ``image_step="joint"``; an objective
    free of host syncs: :func:`dm_objective` or one marked ``objective.graph_safe = True``; no ``after_step``,
    ``extra_state``, ``amp``, ``compile=True`` or data parallelism; ``batch_real`` at most the smallest class;
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
        (amp != "off", f"amp={amp!r}"),
        (compile is True, "compile=True asks for torch.compile"),
        (current().world_size > 1, "data-parallel runs sync the images between ranks"),
        (isinstance(dataset.x_train, ImageStore) and dataset.x_train.kind != "uint8",
         "the training images are a memmap, not in memory"),
        (batch_real > min(len(dataset.class_indices(c)) for c in range(dataset.num_classes)),
         f"batch_real={batch_real} exceeds the smallest class"),
    ]
    if fresh:
        reasons += [(has_batchnorm(net), "the network has BatchNorm (class-by-class forward)"),
                    (reinit_unsupported(net) is not None, f"re-initialisation: {reinit_unsupported(net)}"),
                    (device is not None and not _same_device(next(net.parameters()).device, device),
                     f"the pool's network is on {next(net.parameters()).device}, the run on {device}")]
    return next((why for bad, why in reasons if bad), None)


def _same_device(a, b) -> bool:
    """``cuda`` and ``cuda:<current>`` are the same device."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    current_index = torch.cuda.current_device() if a.type == "cuda" else None
    return (a.index if a.index is not None else current_index) == (b.index if b.index is not None else current_index)


def _use_graphs(graphs, dev, syn, data, objective, pool, batch_real, image_step, after_step, extra_state,
                compile, amp) -> bool:
    """``distill``'s dispatch: True when the device-side loop runs (see ``graphs`` in its docstring)."""
    if graphs not in GRAPHS:
        raise ValueError(f"graphs={graphs!r}; expected one of {list(GRAPHS)}")
    if graphs is False or (graphs == "auto" and dev.type != "cuda"):
        return False
    why = graphs_unsupported(syn, data, objective, pool, batch_real, image_step, after_step, extra_state, compile,
                             amp, dev)
    if why and graphs is True:
        raise ValueError(f"graphs=True: the device-side loop cannot run this configuration: {why}")
    return why is None


class DeviceIteration:
    """One iteration of the joint DM-family step with every draw on the device (what the graph captures).

    :meth:`draw`: the network re-drawn in place, ``batch_real`` real indices per class, one DSA draw per
    class, all from ``generator``; :meth:`update`: siamese DSA (row c for class c's real and synthetic
    images), ``objective``, the gradient of its ``"loss"`` w.r.t. the images, SGD with momentum
    (``buf = momentum * buf + grad; images -= lr * buf``, torch's SGD) and the clamp; returns the
    logged terms as one tensor (names in :attr:`names`). ``batch.iteration`` is the constant ``iteration``.
    """

    def __init__(self, syn: SyntheticSet, data, objective, net: nn.Module, aug, batch_real: int, lr: float,
                 momentum: float, clamp, generator: torch.Generator, momentum_buffer: torch.Tensor,
                 iteration: int = 0):
        self.syn, self.data, self.objective, self.net, self.aug = syn, data, objective, net, aug
        self.batch_real, self.lr, self.momentum, self.clamp = batch_real, lr, momentum, clamp
        self.generator, self.buf, self.iteration = generator, momentum_buffer, iteration
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
        terms = self.objective(MatchBatch(self.net, x_real, self.y_real, x_syn, y_syn, self.iteration, k))
        (grad,) = torch.autograd.grad(terms["loss"], syn.images)
        with torch.no_grad():
            self.buf.mul_(self.momentum).add_(grad)
            syn.images.add_(self.buf, alpha=-self.lr)
        _clamp(syn, self.clamp)
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
                      checkpoint_every: int = 200, progress: bool = True, desc: str = "distill") -> list:
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
                           gen, buf, start)
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
