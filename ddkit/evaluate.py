"""The standard evaluation protocol (DC/DSA/DM ``evaluate_synset``) and cross-architecture tables.

Train ``num_models`` freshly initialised networks on the synthetic set only; report the test
accuracy after the last epoch (no best-epoch selection); mean ± std over the networks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import DSA
from .models import forward_flops, get_model, resolve_compile
from .train import accuracy, train_classifier
from .utils import make_generator, resolve_device

#: Named protocols: keyword sets for :func:`evaluate_synset`.
#: "standard": REFERENCE_NOTES (SGD 0.01, mom 0.9, wd 5e-4, batch 256, 1000 epochs, step decay, DSA).
#: "dsdm": DSDM's own (1500 epochs, batch 64, MultiStepLR x0.2 at 2/3 and 5/6, DSA + CutMix p 0.5).
PROTOCOLS = {
    "standard": dict(epochs=1000, batch_size=256, schedule="standard", cutmix_p=0.0),
    "dsdm": dict(epochs=1500, batch_size=64, schedule="multistep", cutmix_p=0.5),
}


@dataclass
class EvalResult:
    """Test accuracies (percent) of the networks trained on a synthetic set."""

    accs: list
    model: str = "ConvNet"
    settings: dict = field(default_factory=dict)

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


def _check_labels(x_syn, y_syn, dataset):
    if len(x_syn) != len(y_syn):
        raise ValueError(f"x_syn has {len(x_syn)} images but y_syn has {len(y_syn)} labels")
    if tuple(x_syn.shape[1:]) != (dataset.channels, *dataset.im_size):
        raise ValueError(f"synthetic images have shape {tuple(x_syn.shape[1:])}, dataset {dataset.name} needs "
                         f"{(dataset.channels, *dataset.im_size)}")
    if y_syn.dim() == 2 and y_syn.shape[1] != dataset.num_classes:
        raise ValueError(f"soft labels have {y_syn.shape[1]} classes, dataset {dataset.name} has "
                         f"{dataset.num_classes}")


def evaluate_synset(x_syn, y_syn, dataset, model: str = "ConvNet", num_models: int = 5, epochs: int = 1000,
                    lr: float = 0.01, batch_size: int = 256, dsa=True, seed: int = 0, device=None,
                    schedule: str = "standard", cutmix_p: float = 0.0, model_kw: dict | None = None,
                    batch_source=None, steps_per_epoch: int | None = None, progress: bool = True,
                    compile=False, channels_last: bool = False) -> EvalResult:
    """Evaluate a synthetic set by the standard protocol (CONTRACT ``evaluate_synset``).

    ``y_syn``: (N,) ints or (N, K) soft labels (soft cross-entropy). ``dsa``: True (the dataset's
    strategy), False, a strategy string or a DSA object. Network ``i`` is initialised from seed
    ``seed * 1000 + i``: the same seed on the same device gives the same accuracies.
    ``batch_source`` (generator protocols) replaces ``x_syn``/``y_syn`` batches, see ``train_classifier``.

    Speed flags (issue 7): ``compile`` True / False / "auto" trains and tests through one
    ``torch.compile``d module per architecture and device, kept for the whole process: each
    network's fresh weights (same seed rule, so the same initial weights as the plain path) are
    loaded into it in place, so the graph is compiled once, not once per network; "auto"
    compiles only when the expected eager work is large (``ddkit.models.COMPILE_AUTO_SECONDS``).
    ``channels_last`` feeds channels-last batches. Accuracies match the plain path within
    training noise (float reassociation changes the SGD trajectory, not the distribution).
    """
    dev = resolve_device(device)
    if x_syn is not None:
        _check_labels(x_syn, y_syn, dataset)
        x_syn, y_syn = x_syn.detach().to(dev), y_syn.detach().to(dev)
    data = dataset.to(dev)
    aug = _dsa_for(dsa, dataset)
    model_kw = dict(model_kw or {})
    use_compile = compile
    if compile == "auto":
        probe = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
        n = len(x_syn) if x_syn is not None else batch_size * (steps_per_epoch or 1)
        steps = steps_per_epoch or -(-n // batch_size)
        work = num_models * epochs * steps * min(n, batch_size) * 3 * forward_flops(
            probe, (dataset.channels, *dataset.im_size))
        use_compile = resolve_compile("auto", work)
    else:
        use_compile = resolve_compile(compile)
    accs = []
    for i in tqdm(range(num_models), desc=f"eval {model}", disable=not progress, leave=False):
        run_seed = seed * 1000 + i
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(run_seed)
            net = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, **model_kw)
        net = net.to(dev)
        if use_compile:  # the process-wide module of this architecture, with this network's weights
            shared = _shared_net(model, dataset, model_kw, dev)
            shared.load_state_dict(net.state_dict())
            net = shared
        gen = make_generator(run_seed, dev)
        train_classifier(net, x_syn, y_syn, epochs=epochs, lr=lr, batch_size=batch_size, dsa=aug,
                         schedule=schedule, cutmix_p=cutmix_p, num_classes=dataset.num_classes, generator=gen,
                         batch_source=batch_source, steps_per_epoch=steps_per_epoch, compile=use_compile,
                         channels_last=channels_last)
        accs.append(accuracy(net, data.x_test, data.y_test, compile=use_compile, channels_last=channels_last))
    settings = dict(epochs=epochs, lr=lr, batch_size=batch_size, dsa=aug.strategy if aug else "none",
                    schedule=schedule, cutmix_p=cutmix_p, num_models=num_models, seed=seed)
    return EvalResult(accs, model, settings)


_SHARED_NETS: dict = {}


def _shared_net(model: str, dataset, model_kw: dict, dev):
    """One module per (architecture, shapes, model arguments, device) for compiled evaluation."""
    key = (model, dataset.channels, dataset.num_classes, tuple(dataset.im_size), repr(sorted(model_kw.items())),
           str(dev))
    if key not in _SHARED_NETS:
        _SHARED_NETS[key] = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size,
                                      **model_kw).to(dev)
    return _SHARED_NETS[key]


def cross_arch_eval(x_syn, y_syn, dataset, models=("ConvNet", "ResNet18", "AlexNet", "VGG11"), **kw):
    """Evaluate one synthetic set on several architectures; returns a DataFrame
    (model, mean, std, accs), one row per architecture (cross-architecture tables)."""
    import pandas as pd

    rows = []
    for name in models:
        r = evaluate_synset(x_syn, y_syn, dataset, model=name, **kw)
        rows.append({"model": name, "mean": r.mean, "std": r.std, "accs": r.accs})
    return pd.DataFrame(rows)
