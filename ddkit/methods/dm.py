"""Shared pieces of the distribution-matching notebooks built on the DM loop
(IID, notebook 03; DSDM, notebook 04).

The objectives themselves live in the notebooks (one visible cell each); what both notebooks
would otherwise copy lives here: the pool factory with its checks, the (embedding, last
feature map) pair from one forward pass, and :class:`Comparison`: how the
notebook's distilled sets are compared (the same real-image start, the same evaluation protocol, the
accuracy curve and its plot, the ``evaluations`` of ``result.json`` and the sentence on the paper's
claim; the run folder, checkpoints and files are ``ddkit.runs.results.Run``'s).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..core.utils import make_generator
from ..evaluate import PROTOCOLS, SELECTIONS, evaluate_synset
from ..runs.results import evaluation_entry
from .distill import SyntheticSet, init_synthetic, per_class_forward
from .pools import IDMQueue, PretrainedPool, RandomPool

#: Pool kinds a notebook can ask for.
POOL_KINDS = ("random", "idm", "pretrained")


def make_pool(kind: str, dataset, model: str = "ConvNet", *, device=None, generator=None, seed: int = 0,
              width: int = 0, model_kw: dict | None = None, **kw):
    """Build a model pool by kind: ``"random"`` (DM: a fresh init per iteration),
    ``"idm"`` (IDM's queue of partly trained nets, :class:`ddkit.methods.pools.IDMQueue`; ``kw`` are
    its settings) or ``"pretrained"`` (:class:`ddkit.methods.pools.PretrainedPool`; ``kw``:
    ``num_models``, ``epochs``, ``train_per_class``, ``augment``, ``cache_dir``, ...).
    ``width``: ConvNet width (:func:`conv_kw`; 0 = the architecture's default); ``model_kw``: other
    architecture arguments of the pool's networks.
    An unknown kind raises ``ValueError`` listing :data:`POOL_KINDS`, before any work."""
    if kind not in POOL_KINDS:
        raise ValueError(f"unknown pool kind {kind!r}; expected one of {list(POOL_KINDS)}")
    model_kw = {**conv_kw(model, width), **(model_kw or {})}
    if kind == "random":
        if kw:
            raise ValueError(f"the random pool takes no settings, got {sorted(kw)}")
        return RandomPool.for_dataset(model, dataset, device=device, **model_kw)
    if kind == "idm":
        return IDMQueue(model, dataset.channels, dataset.num_classes, dataset.im_size, device=device,
                        generator=generator, **kw, **model_kw)
    return PretrainedPool(model, dataset, seed=seed, device=device, **kw, **model_kw)


def conv_kw(architecture: str, width: int) -> dict:
    """``{"width": width}`` for the ConvNet family when ``width`` > 0, else ``{}`` (the architecture's
    default: 128, the reference ConvNet). Lets a CPU run narrow the matching and evaluation ConvNets."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width={width!r} must be an int >= 0 (0 = the architecture's default)")
    return {"width": width} if width and architecture.startswith("ConvNet") else {}


def embed_and_map(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                  num_classes: int | None = None):
    """``(net.embed(x), net.feature_maps(x)[-1])`` from one forward pass.

    ConvNet's embedding is the flattened last block (docs/sources.md), ResNet's the pooled
    last stage: both come from the last feature map, so one pass gives both. With labels
    ``y``, a BatchNorm net runs one pass per class (``ddkit.methods.distill.per_class_forward``)."""
    def last_map(inp):
        return net.feature_maps(inp)[-1]

    if y is not None:
        last = per_class_forward(last_map, net, x, y, num_classes)
    else:
        last = last_map(x)
    if hasattr(net, "embed_from_last"):
        return net.embed_from_last(last), last
    return net.embed(x), last



class AccuracyCurve:
    """Test accuracy against distillation iterations (IID Fig. 5; the reference codes' evaluation
    every N iterations), as a ``distill`` ``after_step`` hook that checkpoints with the loop
    (``extra_state``); built by :meth:`Comparison.curve`.

    ``evaluate(x, y) -> EvalResult`` is the run's own protocol; ``every = 0`` records nothing."""

    def __init__(self, every: int, evaluate):
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ValueError(f"every={every!r} must be an int >= 0")
        self.every, self.evaluate, self.points = every, evaluate, []

    def __call__(self, iteration: int, syn, batch=None) -> None:
        if self.every and (iteration + 1) % self.every == 0:
            x, y = syn.detached()
            self.points.append({"iteration": iteration + 1, "accs": list(self.evaluate(x, y).accs)})

    def state_dict(self) -> dict:
        return {"points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.points = list(state["points"])


#: Epochs between test checkpoints of each protocol's evaluation networks (0: the last epoch only; None: every
#: ``epochs``, one test at the end recorded as a checkpoint). "dsdm": DSDM's public code (argument.py: for
#: distilled data ``args.epochs = 1500; args.epoch_print_freq = args.epochs``) tests every ``epoch_print_freq``
#: epochs in its IDC-based training loop and keeps the best (``is_best = acc1 > best_acc1``): one test, at
#: the end, so its "best test" is the last epoch's test accuracy, selected on the test set.
PROTOCOL_TEST_EVERY = {"standard": 0, "dsdm": None}


class Comparison:
    """How a DM-family notebook compares its distilled sets: every method starts from the same real
    images (:meth:`start`), is trained on by the same evaluation networks (:meth:`evaluate`,
    :meth:`evaluate_set`; during the loop :meth:`curve`), and enters ``result.json`` the same way
    (:meth:`record`); :meth:`claim` says whether the paper's gain showed in this run.

    ``protocol``: a name of ``ddkit.evaluate.PROTOCOLS`` (its schedule, batch and CutMix; the run's
    ``epochs``); ``num_models`` fresh networks per evaluation; ``eval_model`` first, then ``eval_models``
    (no repeats) are the architectures of :attr:`models`. ``seed``: the start's images and the
    evaluation networks. ``compile``: the notebook's 'auto' / 'on' / 'off'; ``width``: ConvNet width
    (:func:`conv_kw`); ``amp``: the notebook's ``eval_amp`` (mixed precision of training and test passes,
    recorded in each result's settings when not 'off'). ``eval_every_epochs``: test checkpoints (-1: the
    protocol's, :data:`PROTOCOL_TEST_EVERY`; the ``EvalResult`` then carries the last-epoch and the
    best-test selections); ``val_per_class`` > 0 adds the validation selection (``ddkit.evaluate.SELECTIONS``)."""

    def __init__(self, dataset, protocol: str = "standard", *, num_models: int, epochs: int, seed: int = 0,
                 device=None, eval_model: str = "ConvNet", eval_models=(), compile: str = "off", width: int = 0,
                 amp: str = "off", eval_every_epochs: int | None = -1, val_per_class: int = 0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}; expected one of {list(PROTOCOLS)}")
        every = PROTOCOL_TEST_EVERY.get(protocol, 0) if eval_every_epochs == -1 else eval_every_epochs
        self.dataset, self.protocol, self.seed, self.device, self.width = dataset, protocol, seed, device, width
        self.models = [eval_model]
        for m in eval_models or []:
            if m not in self.models:
                self.models.append(m)
        self._settings = dict({k: v for k, v in PROTOCOLS[protocol].items() if k != "epochs"},
                              num_models=num_models, epochs=epochs, seed=seed, device=device, compile=compile,
                              amp=amp, eval_every_epochs=epochs if every is None else every,
                              val_per_class=val_per_class)

    def start(self, ipc: int, factor: int = 1):
        """``(syn, init)``: the synthetic set initialised from real images of each class
        (``init_synthetic(init="real")`` drawn from ``seed``, so every method of a notebook starts from the
        same images) and a frozen copy of it before any step (``init.images``: the stored images, mosaics
        with ``factor`` > 1; ``init.detached()``: decoded like the distilled set)."""
        syn = init_synthetic(self.dataset, ipc, factor=factor, init="real", generator=make_generator(self.seed),
                             device=self.device)
        return syn, SyntheticSet(syn.images.detach().clone(), syn.labels, syn.num_classes, factor)

    def evaluate(self, x, y, model: str = "ConvNet"):
        """``EvalResult`` of ``(x, y)`` trained on by fresh ``model`` networks under the protocol."""
        return evaluate_synset(x, y, self.dataset, model=model, model_kw=conv_kw(model, self.width),
                               **self._settings)

    def evaluate_set(self, syn) -> dict:
        """``{architecture: EvalResult}`` of a synthetic set (decoded) on each of :attr:`models`."""
        x, y = syn.detached()
        return {m: self.evaluate(x, y, model=m) for m in self.models}

    def curve(self, every: int) -> AccuracyCurve:
        """An :class:`AccuracyCurve` evaluating every ``every`` iterations (0: never) with :meth:`evaluate` on
        the run's evaluation architecture (the first of :attr:`models`)."""
        return AccuracyCurve(every, lambda x, y: self.evaluate(x, y, model=self.models[0]))

    @staticmethod
    def plot_curves(curves: dict, *, every: int, iterations: int, ylabel: str):
        """IID Fig. 5: mean test accuracy (error bars: std over the evaluated networks) against distillation
        iterations, one line per ``{label: AccuracyCurve.points}`` (an empty list draws nothing). Checks
        first that each non-empty curve was evaluated at every ``every``-th iteration up to ``iterations``
        (a resumed run included), ``ValueError`` naming the label otherwise. Returns the figure."""
        import matplotlib.pyplot as plt

        expected = list(range(every, iterations + 1, every))
        for label, pts in curves.items():
            got = [p["iteration"] for p in pts]
            if pts and got != expected:
                raise ValueError(f"the {label!r} curve was evaluated at iterations {got}, expected {expected}")
        fig, ax = plt.subplots(figsize=(6, 3))
        for label, pts in curves.items():
            ax.errorbar([p["iteration"] for p in pts], [np.mean(p["accs"]) for p in pts],
                        [np.std(p["accs"]) for p in pts], marker="o", capsize=3, label=label)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        return fig

    def protocol_record(self, selection: str = "last") -> dict:
        """The protocol of the entries: its name, hard labels, and the ``selection`` of
        ``ddkit.evaluate.SELECTIONS`` whose accuracies the entry holds ("last": the last epoch's;
        "best_test": the best test checkpoint, selected on the test set; "best_val": by validation)."""
        if selection not in SELECTIONS:
            raise ValueError(f"selection={selection!r}; expected one of {list(SELECTIONS)}")
        return {"name": self.protocol, "labels": "hard", "selection": selection}

    def entries(self, results: dict, *, ipc: int, ledgers: dict, curves: dict | None = None,
                res_init=None) -> list:
        """``result.json``'s ``evaluations``: one entry per evaluated set and architecture of
        ``results = {method: {architecture: EvalResult}}`` (the last epoch, plus one entry per other selection
        the result recorded, e.g. DSDM's best test), each with its method's ledger (``ledgers[method]``,
        ``ddkit.runs.results.Run.ledger``) and, on the first of :attr:`models`, its accuracy curve when one was
        recorded (``curves[method]`` non-empty); then the starting point ("Random real", variant "init") when
        ``res_init`` is given."""
        record, curves, out = self.protocol_record(), curves or {}, []
        for method, by_model in results.items():
            for m, r in by_model.items():
                entry = evaluation_entry(method, r, ipc=ipc, protocol=record, ledger=ledgers[method],
                                         curve=(curves.get(method) or None) if m == self.models[0] else None)
                out.append(entry)
                for label, accs in (getattr(r, "selection", None) or {}).items():  # best test, best validation
                    if label != "last":
                        accs = [float(a) for a in accs]
                        out.append({**entry, "protocol": {**entry["protocol"], **self.protocol_record(label)},
                                    "accs": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))})
        if res_init is not None:
            out.append(evaluation_entry("Random real", res_init, ipc=ipc, protocol=record, variant="init"))
        return out

    def record(self, results: dict, *, ipc: int, ledgers: dict, curves: dict | None = None, res_init=None) -> dict:
        """The evaluation fields of the run's ``result.json`` (keywords of ``ddkit.runs.results.Run.finish``):
        ``evaluations`` (:meth:`entries`, same arguments) and, when the starting point was evaluated, its
        accuracies as ``init_accs`` / ``init_mean`` / ``init_std``."""
        record = {"evaluations": self.entries(results, ipc=ipc, ledgers=ledgers, curves=curves, res_init=res_init)}
        if res_init is not None:
            record.update(init_accs=res_init.accs, init_mean=res_init.mean, init_std=res_init.std)
        return record

    @staticmethod
    def claim(method: str, res, baseline: str, res_base, paper_gain: float, budget: str) -> str:
        """A sentence on whether ``method`` beat ``baseline`` in this run, computed from the accuracies
        (one seed: a difference within the networks' spread is called a tie; pooled seeds with paired
        intervals are in docs/evidence.md)."""
        diff = res.mean - res_base.mean
        spread = float(np.hypot(res.std, res_base.std))
        if abs(diff) <= spread:
            verdict = "a tie within the networks' spread"
        else:
            verdict = f"{method} {'ahead' if diff > 0 else 'behind'}"
        held = "held" if diff > spread else "did not show"
        return (f"{method} {res.mean:.2f} ± {res.std:.2f} vs {baseline} {res_base.mean:.2f} ± {res_base.std:.2f}: "
                f"{diff:+.2f} points ({verdict}; paper: {paper_gain:+.1f}). At this budget ({budget}) the paper's "
                f"claim {held} in this run.")
