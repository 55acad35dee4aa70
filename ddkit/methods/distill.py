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
from tqdm.auto import tqdm

from ..augment import DSA, decode
from ..core import timebox
from ..core.checks import check_int, check_interval, check_number
from ..fast.distributed import ClassShard
from ..core.utils import atomic_torch_save, check_same_device, make_generator, resolve_device, safe_torch_load
from ..fast.speed import autocast, check_amp, fast_view, forward_flops, grad_scaler, resolve_channels_last, resolve_compile
from .device_loop import distill_on_device, graphs_unsupported
from .synthetic import (IMAGE_STEPS, MatchBatch, SyntheticSet, class_rows, dm_objective, init_synthetic,
                        per_class_forward, real_class_rows)

#: The loop's own names, and the synthetic set's (``ddkit.methods.synthetic``) that callers take from here.
__all__ = ["distill", "sample_match_batch", "IMAGE_STEPS", "MatchBatch", "SyntheticSet", "dm_objective",
           "init_synthetic", "per_class_forward"]


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
    - ``graphs``: "auto" (default), True or False: the device-side loop
      (:func:`ddkit.methods.device_loop.distill_on_device`: every draw from one generator on the device, the
      whole iteration one CUDA graph on CUDA, eager on the CPU). "auto" takes it on CUDA when
      :func:`ddkit.methods.device_loop.graphs_unsupported` finds nothing against the configuration (else the
      loop below, whose numbers it leaves unchanged); True insists (a ``ValueError`` gives the reason); its
      draws differ from this loop's (same distributions). "auto" takes it for the float32 configuration
      measured against the public code (bench/README.md): with ``amp`` on, ``compile=True`` or
      ``channels_last=True`` it keeps this loop. With ``graphs=True`` these act inside the captured step
      (``amp="bf16"``; "fp16" is refused) and ``compile="auto"`` does not compile.
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
    if _use_graphs(graphs, dev, syn, data, objective, pool, batch_real, image_step, after_step, extra_state, amp,
                   compile is True or channels_last is True):
        use_compile = compile is True
        return distill_on_device(syn, data, objective, pool, iterations, lr_img, momentum, batch_real, aug, seed,
                                 dev, clamp, checkpoint, checkpoint_every, progress, desc, amp, use_compile,
                                 resolve_channels_last(channels_last, use_compile))
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


#: ``distill(graphs=...)`` values.
GRAPHS = ("auto", True, False)


def _use_graphs(graphs, dev, syn, data, objective, pool, batch_real, image_step, after_step, extra_state,
                amp, speed_flags: bool) -> bool:
    """``distill``'s dispatch: True when the device-side loop runs (see ``graphs`` in its docstring).
    ``speed_flags``: ``compile=True`` or ``channels_last=True`` asked for; with them or ``amp`` on, "auto"
    keeps the eager loop."""
    if graphs not in GRAPHS:
        raise ValueError(f"graphs={graphs!r}; expected one of {list(GRAPHS)}")
    if graphs is False or (graphs == "auto" and (dev.type != "cuda" or amp != "off" or speed_flags)):
        return False
    why = graphs_unsupported(syn, data, objective, pool, batch_real, image_step, after_step, extra_state, amp, dev)
    if why and graphs is True:
        raise ValueError(f"graphs=True: the device-side loop cannot run this configuration: {why}")
    return why is None
