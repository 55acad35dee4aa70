"""Shared pieces of the distribution-matching notebooks built on the DM loop
(IID, notebook 03; DSDM, notebook 04).

The objectives themselves live in the notebooks (one visible cell each); what both notebooks
would otherwise copy lives here: the pool factory with its checks, the (embedding, last
feature map) pair from one forward pass, feature extraction for t-SNE, the DSDM
learning-rate rule, pixel-range clamping and the memory-bank update of DSDM's Algorithm 1, and
the run's bookkeeping around the loop: the real-image start and its evaluation, the accuracy
curve and its plot, and the ``evaluations`` of ``result.json`` (the run folder, checkpoints and
files are ``ddkit.runs.results.Run``'s).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..augment import decode
from ..losses import PrototypeBank, class_prototypes
from ..runs.results import evaluation_entry
from .distill import IMAGE_STEPS, init_synthetic
from .pools import IDMQueue, PretrainedPool, RandomPool
from ..train import embed_all  # noqa: F401  (re-exported: the notebooks import it from here)
from ..core.utils import make_generator, resolve_device

#: Pool kinds a notebook can ask for.
POOL_KINDS = ("random", "idm", "pretrained")


def make_pool(kind: str, dataset, model: str = "ConvNet", *, device=None, generator=None, seed: int = 0,
              model_kw: dict | None = None, **kw):
    """Build a model pool by kind: ``"random"`` (DM: a fresh init per iteration),
    ``"idm"`` (IDM's queue of partly trained nets, :class:`ddkit.methods.pools.IDMQueue`; ``kw`` are
    its settings) or ``"pretrained"`` (:class:`ddkit.methods.pools.PretrainedPool`; ``kw``:
    ``num_models``, ``epochs``, ``train_per_class``, ``augment``, ``cache_dir``, ...).
    ``model_kw``: architecture arguments of the pool's networks (e.g. ``{"width": 64}``, see :func:`conv_kw`).
    An unknown kind raises ``ValueError`` listing :data:`POOL_KINDS`, before any work."""
    if kind not in POOL_KINDS:
        raise ValueError(f"unknown pool kind {kind!r}; expected one of {list(POOL_KINDS)}")
    if kind == "random":
        if kw:
            raise ValueError(f"the random pool takes no settings, got {sorted(kw)}")
        return RandomPool.for_dataset(model, dataset, device=device, **(model_kw or {}))
    if kind == "idm":
        return IDMQueue(model, dataset.channels, dataset.num_classes, dataset.im_size, device=device,
                        generator=generator, **kw, **(model_kw or {}))
    return PretrainedPool(model, dataset, seed=seed, device=device, **kw, **(model_kw or {}))


def conv_kw(architecture: str, width: int) -> dict:
    """``{"width": width}`` for the ConvNet family when ``width`` > 0, else ``{}`` (the architecture's
    default: 128, the reference ConvNet). Lets a CPU run narrow the matching and evaluation ConvNets."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width={width!r} must be an int >= 0 (0 = the architecture's default)")
    return {"width": width} if width and architecture.startswith("ConvNet") else {}


def embed_and_map(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                  num_classes: int | None = None):
    """``(net.embed(x), net.feature_maps(x)[-1])`` from one forward pass.

    ConvNet's embedding is the flattened last block (REFERENCE_NOTES), ResNet's the pooled
    last stage: both come from the last feature map, so one pass gives both. With labels
    ``y``, a BatchNorm net runs one pass per class (``ddkit.methods.distill.per_class_forward``)."""
    def last_map(inp):
        return net.feature_maps(inp)[-1]

    if y is not None:
        from .distill import per_class_forward
        last = per_class_forward(last_map, net, x, y, num_classes)
    else:
        last = last_map(x)
    if hasattr(net, "embed_from_last"):
        return net.embed_from_last(last), last
    return net.embed(x), last


def pixel_lr_to_normalized(lr_pixel: float, dataset) -> float:
    """The learning rate in ddkit's normalised image space equivalent to ``lr_pixel`` on
    [0, 1] pixels: with x = (p - mean) / std, an SGD step of ``lr`` on p is a step of
    ``lr / std^2`` on x (averaged over channels)."""
    inv = sum(1.0 / (s * s) for s in dataset.std) / len(dataset.std)
    return float(lr_pixel) * inv


def dsdm_lr(ipc: int, dataset=None, base: float = 0.1) -> float:
    """DSDM's image learning rate ``base * ipc / 10`` (0.01 at IPC 1, 0.1 at IPC 10, 0.5 at IPC 50): ``base``
    the paper's eta_DSDM = 0.1 (§5.1), ``ipc / 10`` DSDM's code (argument.py ``tune_lr_img``). The reference
    optimises [0, 1] pixels; with a ``dataset`` the rate is converted to ddkit's normalised space
    (:func:`pixel_lr_to_normalized`)."""
    if ipc < 1:
        raise ValueError(f"ipc={ipc} must be >= 1")
    lr = base * ipc / 10.0
    return pixel_lr_to_normalized(lr, dataset) if dataset is not None else lr


def pixel_bounds(dataset, device=None):
    """Per-channel (lo, hi) tensors (1, C, 1, 1) of the normalised images of [0, 1] pixels."""
    device = resolve_device(device)
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@torch.no_grad()
def clamp_pixels_(images: torch.Tensor, dataset) -> torch.Tensor:
    """Clamp normalised images in place to the [0, 1] pixel range, per channel (DSDM/IDC)."""
    lo, hi = pixel_bounds(dataset, images.device)
    images.copy_(torch.maximum(torch.minimum(images, hi), lo))
    return images


@torch.no_grad()
def synthetic_prototypes(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """Class prototypes (C, D) and the present mask of ``net``'s embeddings of ``x`` (no grad)."""
    return class_prototypes(embed_all(net, x), y, num_classes)


@torch.no_grad()
def update_bank(bank: PrototypeBank, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                num_classes: int, dsa=None, generator=None) -> torch.Tensor:
    """DSDM Algorithm 1, lines 11-12 (Eq. 7-8): the prototypes of the optimised synthetic data
    under the current iteration's model, folded into the memory bank. Returns the bank value.

    ``dsa`` (a ``DSA``): the prototypes are taken of augmented images, one draw per class, as the
    official DSDM code does (it augments each class's decoded synthetic batch before the no-grad
    forward); ``None`` uses the plain images (the paper's Algorithm 1 does not say)."""
    if dsa is not None:
        x = dsa.apply(x, dsa.sample(num_classes, generator=generator, device=x.device), y)
    protos, present = synthetic_prototypes(net, x, y, num_classes)
    return bank.update(protos, present)


def gradient_norms(objectives: dict, batch, images: torch.Tensor) -> dict:
    """``{name: ||d objectives[name](batch)["loss"] / d images||}`` on one fixed batch (its synthetic
    side must be built from ``images`` with autograd). Pass cumulative objectives (term 1, terms 1+2,
    ...) and difference the gradients to get each term's own share (see :func:`term_shares`)."""
    grads = {}
    for name, objective in objectives.items():
        grads[name] = torch.autograd.grad(objective(batch)["loss"], images, retain_graph=True)[0]
    return grads


def term_shares(cumulative_grads: dict) -> dict:
    """Each term's gradient norm and its share of the sum of norms, from the gradients of cumulative
    objectives in order (``{"proto": g1, "sd": g(1+2), "h": g(1+2+3)}`` -> the terms' own gradients
    g1, g(1+2) - g1, g(1+2+3) - g(1+2); exact, the objectives being sums)."""
    names, prev, own = list(cumulative_grads), None, {}
    for name in names:
        g = cumulative_grads[name]
        own[name] = g if prev is None else g - prev
        prev = g
    norms = {n: float(v.norm()) for n, v in own.items()}
    total = sum(norms.values()) or 1.0
    return {n: {"grad_norm": v, "share": v / total} for n, v in norms.items()}


# --------------------------------------------------------------------------- the notebooks' run settings
def resolve_image_step(image_step: str, base: str) -> str:
    """``"auto"`` -> the reference's stepping: ``"joint"`` for the DM base (DM / IID-on-DM code sums the
    class losses, one step), ``"per_class"`` otherwise (IDM, IID-on-IDM, IDC-based DSDM)."""
    if image_step not in ("auto",) + IMAGE_STEPS:
        raise ValueError(f"image_step={image_step!r}; expected 'auto' or one of {list(IMAGE_STEPS)}")
    if image_step != "auto":
        return image_step
    return "joint" if base == "dm" else "per_class"


def eval_model_list(eval_model: str, eval_models) -> list:
    """The architectures to evaluate on: ``eval_model`` first, then ``eval_models`` (no repeats)."""
    out = [eval_model]
    for m in eval_models or []:
        if m not in out:
            out.append(m)
    return out


class GeneratorState:
    """A ``torch.Generator`` that ``distill``'s checkpoints can save and restore (``extra_state``):
    e.g. the generator an objective uses to draw its pretrained network."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])


class AccuracyCurve:
    """Test accuracy against distillation iterations (IID Fig. 5; the reference codes' evaluation
    every N iterations), as a ``distill`` ``after_step`` hook that checkpoints with the loop.

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


def plot_accuracy_curves(curves: dict, *, every: int, iterations: int, ylabel: str):
    """IID Fig. 5: mean test accuracy (error bars: std over the evaluated networks) against distillation
    iterations, one line per ``{label: AccuracyCurve.points}`` (an empty list draws nothing). Checks
    first that each non-empty curve was evaluated at every ``every``-th iteration up to ``iterations``
    (a resumed run included), ``ValueError`` naming the label otherwise. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

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


def chain_steps(*hooks):
    """One ``after_step`` calling each of ``hooks`` (None entries skipped) in order."""
    hooks = [h for h in hooks if h is not None]

    def after_step(iteration, syn, batch):
        for h in hooks:
            h(iteration, syn, batch)

    return after_step


#: Epochs between test checkpoints of each protocol's evaluation networks (0: the last epoch only; None: every
#: ``epochs``, one test at the end recorded as a checkpoint). "dsdm": DSDM's public code (argument.py: for
#: distilled data ``args.epochs = 1500; args.epoch_print_freq = args.epochs``) tests every ``epoch_print_freq``
#: epochs in its IDC-based training loop and keeps the best (``is_best = acc1 > best_acc1``): one test, at
#: the end, so its "best test" is the last epoch's test accuracy, selected on the test set.
PROTOCOL_TEST_EVERY = {"standard": 0, "dsdm": None}


def protocol_evaluator(dataset, protocol: str, *, num_models: int, epochs: int, seed: int, device=None,
                       compile: str = "off", width: int = 0, amp: str = "off", eval_every_epochs: int | None = -1,
                       val_per_class: int = 0):
    """``evaluate(x, y, model) -> EvalResult``: a synthetic set trained on ``num_models`` fresh ``model``
    networks for ``epochs`` under the named protocol of ``ddkit.evaluate.PROTOCOLS`` (its schedule, batch
    and CutMix; the run's epochs), the same for every set a notebook evaluates (the accuracy curve, the
    cross-architecture table). ``compile``: the notebook's 'auto' / 'on' / 'off'; ``width``: ConvNet width
    (:func:`conv_kw`); ``amp``: the notebook's ``eval_amp`` (mixed precision of training and test passes,
    recorded in each result's settings when not 'off'). ``eval_every_epochs``: test checkpoints (-1: the
    protocol's, :data:`PROTOCOL_TEST_EVERY`; the ``EvalResult`` then carries the last-epoch and the best-test
    selections); ``val_per_class`` > 0 adds the validation selection (``ddkit.evaluate.SELECTIONS``)."""
    from ..evaluate import PROTOCOLS, evaluate_synset

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; expected one of {list(PROTOCOLS)}")
    settings = {k: v for k, v in PROTOCOLS[protocol].items() if k != "epochs"}
    every = PROTOCOL_TEST_EVERY.get(protocol, 0) if eval_every_epochs == -1 else eval_every_epochs
    every = epochs if every is None else every

    def evaluate(x, y, model: str = "ConvNet"):
        return evaluate_synset(x, y, dataset, model=model, num_models=num_models, epochs=epochs, seed=seed,
                               device=device, compile=compile, model_kw=conv_kw(model, width),
                               amp=amp, eval_every_epochs=every, val_per_class=val_per_class, **settings)

    return evaluate


def real_start(dataset, ipc: int, *, factor: int = 1, seed: int = 0, device=None):
    """``(syn, x_init)``: the synthetic set initialised from real images of each class
    (``init_synthetic(init="real")``, drawn with ``make_generator(seed)``, so every method of a notebook
    starts from the same images) and a copy of its stored images before any step."""
    syn = init_synthetic(dataset, ipc, factor=factor, init="real", generator=make_generator(seed), device=device)
    return syn, syn.images.detach().clone()


def evaluate_start(evaluate, x_init: torch.Tensor, labels: torch.Tensor, factor: int):
    """The starting point under the run's protocol: the stored initial images (random real images, or
    their mosaics with ``factor`` > 1) decoded like the distilled set, then ``evaluate(x, y)``."""
    return evaluate(*decode(x_init, labels, factor))


def hard_label_protocol(name: str, selection: str = "last") -> dict:
    """The protocol record of the DM-family notebooks: ``name`` (``ddkit.evaluate.PROTOCOLS``), hard labels,
    and the ``selection`` of ``ddkit.evaluate.SELECTIONS`` whose accuracies the entry holds ("last": the last
    epoch's; "best_test": the best test checkpoint, selected on the test set; "best_val": by validation)."""
    from ..evaluate import SELECTIONS

    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r}; expected one of {list(SELECTIONS)}")
    return {"name": name, "labels": "hard", "selection": selection}


def _selection_entries(entry: dict, result, record: dict) -> list:
    """Besides the last-epoch ``entry``: one entry per other selection ``result`` recorded (best test, best
    validation), with that selection's accuracies and its label in the protocol."""
    import numpy as np

    out = []
    for label, accs in (getattr(result, "selection", None) or {}).items():
        if label == "last":
            continue
        accs = [float(a) for a in accs]
        out.append({**entry, "protocol": {**entry["protocol"], **hard_label_protocol(record["name"], label)},
                    "accs": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))})
    return out


def evaluation_entries(results: dict, *, ipc: int, protocol: str, eval_model: str, ledgers: dict,
                       curves: dict | None = None, res_init=None) -> list:
    """``result.json``'s ``evaluations``: one entry per evaluated set and architecture of
    ``results = {method: {architecture: EvalResult}}`` under :func:`hard_label_protocol` (the last epoch, plus
    one entry per other selection the result recorded, e.g. DSDM's best test), each with its method's ledger
    (``ledgers[method]``, ``ddkit.runs.results.budget_ledger``) and, on ``eval_model``, its accuracy curve when one
    was recorded (``curves[method]`` non-empty); then the starting point ("Random real", variant "init") when
    ``res_init`` is given."""
    record = hard_label_protocol(protocol)
    curves = curves or {}
    entries = []
    for method, by_model in results.items():
        for m, r in by_model.items():
            entry = evaluation_entry(method, r, ipc=ipc, protocol=record, ledger=ledgers[method],
                                     curve=(curves.get(method) or None) if m == eval_model else None)
            entries += [entry] + _selection_entries(entry, r, record)
    if res_init is not None:
        entries.append(evaluation_entry("Random real", res_init, ipc=ipc, protocol=record, variant="init"))
    return entries


def evaluation_record(results: dict, *, ipc: int, protocol: str, eval_model: str, ledgers: dict,
                      curves: dict | None = None, res_init=None) -> dict:
    """The evaluation fields of a DM-family run's ``result.json`` (keywords of
    ``ddkit.runs.results.Run.finish``): ``evaluations`` (:func:`evaluation_entries`, same arguments) and,
    when the starting point was evaluated, its accuracies as ``init_accs`` / ``init_mean`` / ``init_std``."""
    record = {"evaluations": evaluation_entries(results, ipc=ipc, protocol=protocol, eval_model=eval_model,
                                                ledgers=ledgers, curves=curves, res_init=res_init)}
    if res_init is not None:
        record.update(init_accs=res_init.accs, init_mean=res_init.mean, init_std=res_init.std)
    return record


#: The notebook parameters of IDM's queue (IDM's defaults: 100 nets, a new one every 30 iterations, 10 SGD
#: steps of batch 256 per iteration).
IDM_QUEUE_KEYS = ("idm_max_nets", "idm_interval", "idm_train_steps", "idm_train_batch")


def idm_queue_settings(params: dict, *, track_accuracy: bool = False) -> dict:
    """The keyword arguments of ``make_pool("idm", ...)`` (``ddkit.methods.pools.IDMQueue``) from a notebook's
    ``idm_*`` parameters (:data:`IDM_QUEUE_KEYS`, checked by ``ddkit.runs.params.KNOWN``)."""
    missing = [k for k in IDM_QUEUE_KEYS if k not in params]
    if missing:
        raise ValueError(f"the IDM queue settings need the parameters {missing}")
    return dict(max_nets=params["idm_max_nets"], interval=params["idm_interval"],
                train_steps=params["idm_train_steps"], batch_size=params["idm_train_batch"],
                track_accuracy=bool(track_accuracy))


def claim_sentence(method: str, res, baseline: str, res_base, paper_gain: float, budget: str) -> str:
    """A sentence on whether ``method`` beat ``baseline`` in this run, computed from the accuracies
    (one seed: a difference within the networks' spread is called a tie; pooled seeds with paired
    intervals are in docs/evidence.md)."""
    import numpy as np

    diff = res.mean - res_base.mean
    spread = float(np.hypot(res.std, res_base.std))
    if abs(diff) <= spread:
        verdict = "a tie within the networks' spread"
    else:
        verdict = f"{method} {'ahead' if diff > 0 else 'behind'}"
    held = "held" if diff > spread else "did not show"
    return (f"{method} {res.mean:.2f} ± {res.std:.2f} vs {baseline} {res_base.mean:.2f} ± {res_base.std:.2f}: "
            f"{diff:+.2f} points ({verdict}; paper: {paper_gain:+.1f}). At this budget ({budget}) the paper's claim "
            f"{held} in this run.")
