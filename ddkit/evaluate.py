"""The standard evaluation protocol (DC/DSA/DM ``evaluate_synset``).

Train ``num_models`` freshly initialised networks on the synthetic set only; report the test
accuracy after the last epoch (no best-epoch selection); mean ± std over the networks.

Optional model selection (off by default): with ``eval_every_epochs`` each network is tested every
that many epochs (and after the last), giving an accuracy-vs-epoch curve and the *test-selected*
best (the best test accuracy over those checkpoints, as DiM, IDM, MTT and DSDM report: selection on
the test set, optimistic). With ``val_per_class`` a validation split is held out of the real
training set and the checkpoint with the best validation accuracy selects the reported test
accuracy (an honest selection). :attr:`EvalResult.selection` holds all three, labelled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import DSA
from .core import timebox
from .core.checks import check_int, check_number, check_probability, check_synset
from .core.resume import UnitStore, dataset_fingerprint, settings_key, tensor_digest
from .core.utils import make_generator, resolve_device
from .fast.distributed import current as current_group, gather_in_order, my_items
from .fast.ensemble import can_train_together, train_together
from .fast.eval_graphs import can_capture, train_and_test
from .fast.speed import check_amp, forward_flops, resolve_channels_last, resolve_compile
from .models import get_model
from .train import SCHEDULES, accuracy, train_classifier

#: Named protocols: keyword sets for :func:`evaluate_synset`.
#: "standard": docs/sources.md (SGD 0.01, mom 0.9, wd 5e-4, batch 256, 1000 epochs, step decay, DSA).
#: "dsdm": DSDM's own (1500 epochs, batch 64, MultiStepLR x0.2 at 2/3 and 5/6, DSA + CutMix p 0.5).
PROTOCOLS = {
    "standard": dict(epochs=1000, batch_size=256, schedule="standard", cutmix_p=0.0),
    "dsdm": dict(epochs=1500, batch_size=64, schedule="multistep", cutmix_p=0.5),
}


#: Labels of :attr:`EvalResult.selection`: which epoch's test accuracy each network reports.
SELECTIONS = {
    "last": "test accuracy after the last epoch (the standard protocol)",
    "best_val": "test accuracy at the checkpoint with the best validation accuracy (held-out real images)",
    "best_test": "best test accuracy over the checkpoints (selection on the test set: optimistic)",
}


@dataclass
class EvalResult:
    """Test accuracies (percent) of the networks trained on a synthetic set.

    ``accs``: one per network after the last epoch. With checkpoints (``eval_every_epochs`` or
    ``val_per_class``), ``epoch_curve`` lists ``{"epoch", "test": [per net], "val": [per net]}``
    and ``selection`` maps each label of :data:`SELECTIONS` that applies to one accuracy per net."""

    accs: list
    model: str = "ConvNet"
    settings: dict = field(default_factory=dict)
    epoch_curve: list = field(default_factory=list)
    selection: dict = field(default_factory=dict)

    def select(self, name: str) -> "EvalResult":
        """The same evaluation reporting the ``name`` selection (``settings["selection"]`` says which)."""
        if name not in self.selection:
            raise ValueError(f"selection {name!r} not recorded; this result has {sorted(self.selection)} "
                             f"(known: {sorted(SELECTIONS)}; 'best_val' needs val_per_class > 0, 'best_test' "
                             f"needs eval_every_epochs > 0 or val_per_class > 0)")
        return EvalResult(list(self.selection[name]), self.model, {**self.settings, "selection": name},
                          self.epoch_curve, self.selection)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accs))

    @property
    def std(self) -> float:
        return float(np.std(self.accs))  # population std, as the reference code reports

    def __str__(self):
        return f"{self.model}: {self.mean:.2f} ± {self.std:.2f} (n={len(self.accs)})"


def _dsa_for(dsa, dataset):
    if dsa is True:
        return DSA(dataset.dsa_strategy)
    if dsa in (False, None, "", "none"):
        return None
    return DSA(dsa) if isinstance(dsa, str) else dsa


def _check_protocol_args(num_models, epochs, lr, batch_size, schedule, x_syn, y_syn, dataset, batch_source,
                         checkpoint) -> None:
    """:func:`evaluate_synset`'s inputs, before any work (``ddkit.core.checks`` messages)."""
    check_int("num_models", num_models)
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_number("lr", lr, 0, exclusive=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {list(SCHEDULES)}")
    if x_syn is not None or batch_source is None:
        check_synset(x_syn, y_syn, dataset)
    elif checkpoint is not None:
        raise ValueError("checkpoint needs x_syn / y_syn (a batch_source has no content key to store results under)")


def validation_indices(dataset, per_class: int, seed: int = 0) -> torch.Tensor:
    """Training-set indices of ``per_class`` random real images of every class, drawn with their own
    generator (seed ``seed``): the validation split of validation-split model selection."""
    if per_class < 0 or int(per_class) != per_class:
        raise ValueError(f"val_per_class={per_class!r} must be a non-negative integer (0 = no validation split)")
    gen = make_generator(seed, "cpu")
    picks = []
    for c in range(dataset.num_classes):
        idx = dataset.class_indices(c).cpu()
        if len(idx) < per_class:
            raise ValueError(f"val_per_class={per_class} but class {c} of {dataset.name} has only {len(idx)} "
                             f"training images; use at most {len(idx)}")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks)


def validation_split(dataset, per_class: int, seed: int = 0):
    """``(x_val, y_val)`` of :func:`validation_indices`, on the dataset's device."""
    keep = validation_indices(dataset, per_class, seed).to(dataset.x_train.device)
    return dataset.x_train[keep], dataset.y_train[keep]


def without_validation(dataset, per_class: int, seed: int = 0):
    """The dataset without its validation split (:func:`validation_indices` with the same ``per_class`` and
    ``seed`` as the evaluation): what distillation, coresets and pools may draw from when a run selects by
    validation, so that the selection never sees images the set was built from. ``per_class=0``: the
    dataset itself."""
    if not per_class:
        return dataset
    keep = torch.ones(len(dataset.y_train), dtype=torch.bool)
    keep[validation_indices(dataset, per_class, seed)] = False
    rows = keep.nonzero().squeeze(1).to(dataset.x_train.device)
    return type(dataset)(dataset.name, dataset.x_train[rows], dataset.y_train[rows], dataset.x_test, dataset.y_test,
                         dataset.mean, dataset.std, dataset.classes, dataset.dsa_strategy)


def checkpoint_epochs(epochs: int, eval_every_epochs: int, val_per_class: int) -> list:
    """Epochs after which a network is tested: every ``eval_every_epochs`` and the last one; with a
    validation split but no period, every ``max(1, epochs // 10)`` epochs; none when both are 0."""
    if eval_every_epochs < 0:
        raise ValueError(f"eval_every_epochs={eval_every_epochs!r} must be >= 0 (0 = test after the last epoch only)")
    every = eval_every_epochs or (max(1, epochs // 10) if val_per_class else 0)
    if not every:
        return []
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def _checkpoint_recorder(net, data, val, checkpoints: list, **acc_kw):
    """``(points, on_epoch_end)``: the callback appends ``{"epoch", "test"[, "val"]}`` to ``points``
    after each checkpoint epoch (``None`` when there are no checkpoints)."""
    points: list = []

    def on_epoch_end(epochs_done: int) -> None:
        if epochs_done in checkpoints:
            point = {"epoch": epochs_done, "test": accuracy(net, data.x_test, data.y_test, **acc_kw)}
            if val is not None:
                point["val"] = accuracy(net, *val, **acc_kw)
            points.append(point)

    return points, (on_epoch_end if checkpoints else None)


def _select(epoch_curve: list, num_models: int, has_val: bool) -> dict:
    """Per network: the last checkpoint's test accuracy, the best test accuracy, and (with a
    validation split) the test accuracy at the best validation accuracy (ties: the later epoch)."""
    tests = [[pt["test"][i] for pt in epoch_curve] for i in range(num_models)]
    out = {"last": [t[-1] for t in tests], "best_test": [max(t) for t in tests]}
    if has_val:
        vals = [[pt["val"][i] for pt in epoch_curve] for i in range(num_models)]
        best = [max(range(len(v)), key=lambda k: (v[k], k)) for v in vals]
        out["best_val"] = [t[k] for t, k in zip(tests, best)]
    return out


def evaluate_synset(x_syn, y_syn, dataset, model: str = "ConvNet", num_models: int = 5, epochs: int = 1000,
                    lr: float = 0.01, batch_size: int = 256, dsa=True, seed: int = 0, device=None,
                    schedule: str = "standard", cutmix_p: float = 0.0, model_kw: dict | None = None,
                    batch_source=None, steps_per_epoch: int | None = None, progress: bool = True,
                    compile=False, channels_last="auto", val_per_class: int = 0,
                    eval_every_epochs: int = 0, checkpoint=None, batched="auto", amp: str = "off",
                    graphs="auto") -> EvalResult:
    """Evaluate a synthetic set by the standard protocol (CONTRACT ``evaluate_synset``).

    Trains ``num_models`` fresh ``model`` networks on ``(x_syn, y_syn)`` only and returns their test
    accuracies after the last epoch. ``y_syn``: (N,) ints or (N, K) soft labels (soft cross-entropy).
    ``dsa``: True (the dataset's strategy), False, a strategy string or a DSA object. Network ``i`` is
    initialised from seed ``seed * 1000 + i``: the same seed on the same device gives the same accuracies.
    ``batch_source`` (generator protocols) replaces ``x_syn``/``y_syn`` batches, see ``train_classifier``.

    Model selection (module docstring): ``eval_every_epochs`` (DiM's "test every 200 epochs, report the
    best") and ``val_per_class`` (a held-out real validation split); both 0 = the standard protocol.
    ``checkpoint``: a JSON file where each finished network is stored, so that a re-run resumes.
    Speed options, none of which changes the protocol: ``compile``, ``channels_last``, ``amp``,
    ``batched`` (networks trained together, vmapped) and ``graphs`` (each epoch one CUDA graph); each
    is described, with what it applies to, in docs/evaluation.md. ``settings["trainer"]`` records
    which loop trained the networks.
    """
    _check_protocol_args(num_models, epochs, lr, batch_size, schedule, x_syn, y_syn, dataset, batch_source, checkpoint)
    check_amp(amp)
    check_probability("cutmix_p", cutmix_p)
    if batched not in (True, False, "auto"):
        raise ValueError(f"batched={batched!r}; expected True, False or 'auto'")
    dev = resolve_device(device)
    if x_syn is not None:
        x_syn, y_syn = x_syn.detach().to(dev), y_syn.detach().to(dev)
    data = dataset.to(dev)
    aug = _dsa_for(dsa, dataset)
    model_kw = dict(model_kw or {})
    use_compile = _eval_compile(compile, model, dataset, model_kw, x_syn, batch_size, steps_per_epoch,
                                num_models * epochs)
    channels_last = resolve_channels_last(channels_last, use_compile)
    checkpoints = checkpoint_epochs(epochs, eval_every_epochs, val_per_class)
    val = validation_split(data, val_per_class, seed) if val_per_class else None
    group = current_group()
    store = _network_store(checkpoint, group.rank, group.world_size, settings_key(
        synset=tensor_digest(x_syn, y_syn), dataset=[dataset.name, dataset_fingerprint(dataset)], model=model,
        model_kw=model_kw, epochs=epochs, lr=lr, batch_size=batch_size, dsa=repr(aug), seed=seed, schedule=schedule,
        cutmix_p=cutmix_p, steps_per_epoch=steps_per_epoch, checkpoints=checkpoints, val_per_class=val_per_class,
        device=dev.type, amp=amp))
    train_kw = dict(epochs=epochs, lr=lr, batch_size=batch_size, dsa=aug, schedule=schedule, cutmix_p=cutmix_p,
                    num_classes=dataset.num_classes, batch_source=batch_source, steps_per_epoch=steps_per_epoch,
                    amp=amp)
    captured = _use_graphs(graphs, dev, model, dataset, model_kw, aug, x_syn, batch_source, steps_per_epoch,
                           cutmix_p, amp, use_compile and compile != "auto", group.world_size)
    use_compile = use_compile and not captured        # "auto": the captured epoch needs no compiler
    together = _use_together(batched, dev, captured, use_compile, group.world_size, model, dataset, model_kw,
                             num_models)
    mine = _finished_networks(store, my_items(num_models))  # network -> (accuracy, checkpoints) of this rank
    if captured and len(mine) < num_models:    # the unfinished networks, together; draws seeded by the first
        todo = [i for i in range(num_models) if i not in mine]
        nets = [_fresh_net(model, dataset, model_kw, seed * 1000 + i, dev) for i in todo]
        c_accs, c_points = train_and_test(nets, x_syn, y_syn, epochs=epochs, lr=lr, batch_size=batch_size, dsa=aug,
                                          schedule=schedule, seed=seed * 1000 + todo[0],
                                          test=(data.x_test, data.y_test), checkpoints=checkpoints, val=val,
                                          capture=dev.type == "cuda")
        _keep(mine, store, zip(todo, zip(c_accs, c_points)))
    elif together and len(mine) < num_models:
        t_accs, t_points = _evaluate_together(model, dataset, model_kw, num_models, seed, dev, data, val,
                                              checkpoints, x_syn, y_syn, train_kw)
        mine = {}
        _keep(mine, store, enumerate(zip(t_accs, t_points)))
    todo = [] if together or captured else [i for i in my_items(num_models) if i not in mine]
    for i in tqdm(todo, desc=f"eval {model}", disable=not progress, leave=False):
        net = _fresh_net(model, dataset, model_kw, seed * 1000 + i, dev)
        if use_compile:  # the process-wide module of this architecture, with this network's weights
            shared = _shared_net(model, dataset, model_kw, dev)
            shared.load_state_dict(net.state_dict())
            net = shared
        points, on_epoch_end = _checkpoint_recorder(net, data, val, checkpoints, compile=use_compile,
                                                    channels_last=channels_last, amp=amp)
        train_classifier(net, x_syn, y_syn, generator=make_generator(seed * 1000 + i, dev), compile=use_compile,
                         channels_last=channels_last, on_epoch_end=on_epoch_end, **train_kw)
        acc = points[-1]["test"] if points else accuracy(net, data.x_test, data.y_test, compile=use_compile,
                                                         channels_last=channels_last, amp=amp)
        _keep(mine, store, [(i, (acc, points))])
        if store is not None and len(mine) < num_models and group.world_size == 1 and timebox.expired():
            raise timebox.stop_loop(len(mine), num_models, f"evaluation, {checkpoint}", unit="network")
    settings = dict(epochs=epochs, lr=lr, batch_size=batch_size, dsa=aug.strategy if aug else "none",
                    schedule=schedule, cutmix_p=cutmix_p, num_models=num_models, seed=seed,
                    trainer="graphs" if captured else "together" if together else "one_by_one")
    return _result(gather_in_order(num_models, mine), model, settings, amp, y_syn, checkpoints,
                   eval_every_epochs, val_per_class, val is not None)


def _eval_compile(compile, model, dataset, model_kw, x_syn, batch_size, steps_per_epoch, network_epochs) -> bool:
    """``compile`` True / False / "auto" resolved; "auto" compiles when the expected eager training work
    (``network_epochs`` epochs of forward + backward) is large (``ddkit.fast.speed.resolve_compile``)."""
    if compile != "auto":
        return resolve_compile(compile)
    probe = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
    n = len(x_syn) if x_syn is not None else batch_size * (steps_per_epoch or 1)
    steps = steps_per_epoch or -(-n // batch_size)
    work = network_epochs * steps * min(n, batch_size) * 3 * forward_flops(probe, (dataset.channels,
                                                                                  *dataset.im_size))
    return resolve_compile("auto", work, label="evaluate")


def _network_store(checkpoint, rank: int, world_size: int, key):
    """The evaluation checkpoint (:class:`ddkit.core.resume.UnitStore`) under ``key``, one file per rank
    when distributed (no two writers per file); None without a ``checkpoint``."""
    if checkpoint is None:
        return None
    if world_size > 1:
        checkpoint = Path(checkpoint).with_suffix(f".rank{rank}{Path(checkpoint).suffix}")
    return UnitStore(checkpoint, key)


def _use_together(batched, dev, captured: bool, use_compile: bool, world_size: int, model, dataset, model_kw,
                  num_models: int) -> bool:
    """Whether the networks train together in one vmapped pass (``batched`` True / False / "auto":
    "auto" on CUDA only); True where it cannot is a ValueError naming the conditions."""
    wanted = batched is True or (batched == "auto" and dev.type == "cuda")
    together = (wanted and not captured and not use_compile and world_size == 1
                and _together_ok(model, dataset, model_kw, num_models))
    if batched is True and not together:
        raise ValueError(f"batched=True: {model} cannot be trained together here (needs num_models >= 2, no "
                         f"BatchNorm or buffers, compile off, one process); use batched='auto' or False")
    return together


def _keep(mine: dict, store, finished) -> None:
    """Record finished networks ``(i, (accuracy, checkpoints))`` in ``mine`` and in the checkpoint ``store``."""
    for i, (acc, points) in finished:
        mine[i] = (acc, points)
        if store is not None:
            store.put(i, {"acc": acc, "points": points})


def _result(gathered, model, settings: dict, amp, y_syn, checkpoints, eval_every_epochs, val_per_class,
            has_val: bool) -> EvalResult:
    """The :class:`EvalResult` of the gathered ``(accuracy, checkpoints)`` per network."""
    accs, per_net = [acc for acc, _ in gathered], [points for _, points in gathered]
    if amp != "off":
        settings["amp"] = amp
    if y_syn is not None:
        settings["labels"] = "soft" if y_syn.dim() == 2 else "hard"
    if not checkpoints:
        return EvalResult(accs, model, settings)
    settings.update(eval_every_epochs=eval_every_epochs or max(1, settings["epochs"] // 10), val_per_class=val_per_class)
    curve = [{"epoch": e, "test": [p[k]["test"] for p in per_net]}
             | ({"val": [p[k]["val"] for p in per_net]} if has_val else {}) for k, e in enumerate(checkpoints)]
    return EvalResult(accs, model, settings, curve, _select(curve, len(accs), has_val))


def _use_graphs(graphs, dev, model, dataset, model_kw, aug, x_syn, batch_source, steps_per_epoch, cutmix_p, amp,
                use_compile, world_size) -> bool:
    """Whether :func:`evaluate_synset` trains through :mod:`ddkit.fast.eval_graphs` (``graphs`` True /
    False / "auto", see there); True where it does not apply is a ValueError naming the reason."""
    if graphs not in (True, False, "auto"):
        raise ValueError(f"graphs={graphs!r}; expected True, False or 'auto'")
    if graphs is False or (graphs == "auto" and dev.type != "cuda"):
        return False
    probe = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
    reasons = [why for why, bad in [
        ("a batch_source or steps_per_epoch", x_syn is None or batch_source is not None or steps_per_epoch),
        (f"cutmix_p={cutmix_p}", cutmix_p > 0), (f"amp={amp!r}", amp != "off"), ("compile", use_compile),
        (f"{world_size} processes", world_size > 1),
        (f"DSA {aug!r}", aug is not None and not (isinstance(aug, DSA) and aug.mode == "S")),
        (f"{model} has buffers, BatchNorm or dropout", not can_capture([probe]))] if bad]
    if graphs is True and reasons:
        raise ValueError(f"graphs=True does not apply here ({'; '.join(reasons)}); use graphs='auto' or False")
    return not reasons


def _finished_networks(store, items) -> dict:
    """The networks of ``items`` already in the evaluation checkpoint ``store`` (None: none):
    ``{i: (accuracy, checkpoints)}``."""
    if store is None:
        return {}
    return {i: (d["acc"], d["points"]) for i in items if (d := store.get(i)) is not None}


def _fresh_net(model: str, dataset, model_kw: dict, run_seed: int, dev):
    """Network ``i``'s initial weights: drawn with torch's RNG seeded ``run_seed`` (the caller's RNG
    state is restored), then moved to ``dev``."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(run_seed)
        net = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
    return net.to(dev)


def _together_ok(model: str, dataset, model_kw: dict, num_models: int) -> bool:
    probe = [get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
             for _ in range(min(num_models, 2))]
    return can_train_together(probe)


def _evaluate_together(model, dataset, model_kw, num_models, seed, dev, data, val, checkpoints, x_syn, y_syn,
                       train_kw):
    """The N networks of :func:`evaluate_synset` trained in one vmapped pass (:mod:`ddkit.fast.ensemble`):
    same initial weights and generators as the one-by-one loop. Returns ``(accs, per_net_points)``."""
    nets = [_fresh_net(model, dataset, model_kw, seed * 1000 + i, dev) for i in range(num_models)]
    gens = [make_generator(seed * 1000 + i, dev) for i in range(num_models)]
    amp = train_kw["amp"]
    recorders = [_checkpoint_recorder(net, data, val, checkpoints, amp=amp) for net in nets]

    def on_epoch_end(epochs_done):
        for _, callback in recorders:
            if callback is not None:
                callback(epochs_done)

    train_together(nets, x_syn, y_syn, generators=gens, on_epoch_end=on_epoch_end, **train_kw)
    per_net = [points for points, _ in recorders]
    accs = [points[-1]["test"] if points else accuracy(net, data.x_test, data.y_test, amp=amp)
            for net, points in zip(nets, per_net)]
    return accs, per_net


_SHARED_NETS: dict = {}


def _shared_net(model: str, dataset, model_kw: dict, dev):
    """One module per (architecture, shapes, model arguments, device) for compiled evaluation."""
    key = (model, dataset.channels, dataset.num_classes, tuple(dataset.im_size), repr(sorted(model_kw.items())),
           str(dev))
    if key not in _SHARED_NETS:
        _SHARED_NETS[key] = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size,
                                      **model_kw).to(dev)
    return _SHARED_NETS[key]
