"""Deploying and evaluating a generator (paper 01 Eq. 10): the fixed-set protocol and DiM's
``validate`` (:data:`EVAL_PROTOCOLS`, :func:`evaluate_generator`), and :class:`GeneratorEvaluator`, which
evaluates a notebook's generators and the random-real floor under its protocols and turns the results
into a table, the ``result.json`` evaluation entries, the paired claim check over seeds and class grids.

* ``"fixed"``: IPC images per class drawn once (shared, or one set per network: :data:`FIXED_SETS`),
  then the standard protocol (``ddkit.evaluate.evaluate_synset``).
* ``"dim"``: DiM's ``validate``: a fresh generated batch every step, last epoch and
  best-of-test-evaluations reported (the latter labelled as a selection on the test set).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.stats import format_paired, paired_difference
from ..core.utils import make_generator
from ..evaluate import EvalResult, evaluate_synset
from ..runs.results import evaluation_entry, read_result
from .gan_nets import ConditionalGenerator, positive_int

__all__ = ["EVAL_PROTOCOLS", "NOTEBOOK_PROTOCOLS", "FIXED_SETS", "SELECTIONS", "GeneratorEval",
           "evaluate_generator", "random_real_eval", "GeneratorEvaluator", "BEST_TEST_LABEL",
           "dim_steps_per_epoch", "dim_batch_source", "evaluation_entries", "paired_over_seeds", "claim_verdict",
           "evidence_markdown"]

#: Deployment evaluation protocols: a fixed set of IPC images per class (the standard
#: protocol, ``evaluate_synset``), or DiM's ``validate`` (fresh generated batch every step,
#: :func:`evaluate_generator`).
EVAL_PROTOCOLS = ("fixed", "dim")
#: What a notebook's ``eval_protocol`` may say: one protocol, or ``"both"`` (fixed first).
NOTEBOOK_PROTOCOLS = (*EVAL_PROTOCOLS, "both")
#: Fixed-protocol sets: ``"one"`` set (seed ``seed``) for every evaluation network, or
#: ``"per_model"``: network ``i`` trains on its own set (seed ``seed + i``), so the mean is over
#: draws from the generator as well as over networks.
FIXED_SETS = ("one", "per_model")
#: Evaluation-selection labels written into a result's protocol (``"best_test"``: DiM's report).
SELECTIONS = ("last", "best_test", "best_val")


@dataclass
class GeneratorEval:
    """Accuracy of networks trained on generator output (percent), with the protocol used.

    ``accs``: after the last epoch. ``selection``: name (:data:`SELECTIONS`) -> one accuracy per
    network (the ``dim`` protocol records ``"best_test"``, DiM's reported number, and with a
    validation split ``"best_val"``); ``settings``: the protocol's settings (``name`` included);
    ``curve``: ``[{"epoch", "test": [per network]}, ...]`` at the test evaluations."""
    mean: float
    std: float
    accs: list
    protocol: str
    ipc: int
    model: str
    seconds: float
    sample_seconds: float
    fixed_sets: str = "one"
    selected: str = "last"
    selection: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mean", "std", "accs", "protocol", "ipc", "model", "seconds",
                                               "sample_seconds", "fixed_sets", "selected", "selection",
                                               "settings", "curve")}

    def select(self, name: str) -> "GeneratorEval":
        """The same evaluation reporting selection ``name`` (e.g. ``"best_test"``)."""
        if name == "last":
            accs = self.selection.get("last", self.accs)
        elif name in self.selection:
            accs = self.selection[name]
        else:
            raise ValueError(f"selection {name!r} not recorded; this evaluation has "
                             f"{sorted(['last', *self.selection])}")
        t = torch.tensor(accs, dtype=torch.float64)
        return GeneratorEval(float(t.mean()), float(t.std(unbiased=False)), list(accs), self.protocol, self.ipc,
                             self.model, self.seconds, self.sample_seconds, self.fixed_sets, name,
                             self.selection, self.settings, self.curve)

    def protocol_record(self) -> dict:
        """``{"name": protocol, <settings>, "selection": ...}`` for ``ddkit.runs.results.evaluation_entry``."""
        return {**self.settings, "name": self.protocol, "selection": self.selected}


def _check_fixed_sets(fixed_sets):
    if fixed_sets not in FIXED_SETS:
        raise ValueError(f"unknown fixed_sets {fixed_sets!r}; expected one of {FIXED_SETS}")


def _evaluate_fixed_sets(draw, dataset, fixed_sets, num_models, seed, **kw):
    """Standard protocol on sets from ``draw(seed) -> (x, y)``: one set for all ``num_models``
    networks, or (``"per_model"``) network ``i`` on the set of seed ``seed + i``, itself
    evaluated as ``evaluate_synset(..., num_models=1, seed=seed + i)``. Returns an ``EvalResult``."""
    if fixed_sets == "one":
        return evaluate_synset(*draw(seed), dataset, num_models=num_models, seed=seed, **kw)
    runs = [evaluate_synset(*draw(seed + i), dataset, num_models=1, seed=seed + i, **kw) for i in range(num_models)]
    return EvalResult([a for r in runs for a in r.accs], runs[0].model)


def dim_steps_per_epoch(num_classes: int, ipc: int, batch_size: int) -> int:
    """Training steps per epoch of DiM's generator evaluation: ``K * ipc // batch + 1`` (DiM's
    ``pool_match.py`` writes ``10 * ipc // batch_size + 1`` for its 10-class datasets), so an epoch
    sees about as many generated images as an IPC-sized set would hold."""
    for name, v in (("num_classes", num_classes), ("ipc", ipc), ("dim_batch", batch_size)):
        positive_int(name, v)
    return num_classes * ipc // batch_size + 1


def dim_batch_source(G: ConditionalGenerator, batch_size: int):
    """``batch_source(step, generator) -> (x, y)`` for ``train_classifier``: at EVERY step a fresh
    batch of ``batch_size`` generated images with uniformly random labels (new noise, no gradient,
    the generator's current mode), as DiM's ``validate`` draws them."""
    positive_int("dim_batch", batch_size)

    def source(step, generator):
        gdev = generator.device if generator is not None else torch.device("cpu")
        y = torch.randint(G.num_classes, (batch_size,), generator=generator, device=gdev).to(G.device)
        with torch.no_grad():
            return G.generate(y, G.noise(batch_size, generator)), y

    return source


def evaluate_generator(G: ConditionalGenerator, dataset, ipc: int, *, protocol: str = "fixed",
                       model: str = "ConvNet", num_models: int = 5, epochs: int = 1000,
                       lr: float = 0.01, batch_size: int = 256, dsa=True, seed: int = 0,
                       device=None, progress: bool = True, fixed_sets: str = "one",
                       dim_batch: int = 64, dim_test_every: int = 200, dim_dsa: str = "color_crop",
                       val_per_class: int = 0) -> GeneratorEval:
    """Deploy the generator at ``ipc`` images per class and evaluate it (test accuracy, %).

    * ``"fixed"``: a fixed set (:meth:`ConditionalGenerator.sample` with ``seed``), then the
      standard protocol (:func:`ddkit.evaluate.evaluate_synset`: ``lr``, ``batch_size``, ``dsa``,
      step decay); ``fixed_sets="per_model"`` gives network ``i`` its own set (seed ``seed + i``).
    * ``"dim"``: DiM's ``validate``: every step a fresh batch of ``dim_batch`` generated images with
      random labels (:func:`dim_batch_source`), :func:`dim_steps_per_epoch` steps per epoch, SGD at
      a constant ``lr`` (0.01), ``dim_dsa`` per sample (DiM: ``color_crop``), a test evaluation every
      ``dim_test_every`` epochs (and after the last). ``accs`` is the last epoch's; ``selection``
      holds ``"best_test"`` (best of the test evaluations: DiM's reported number, selection on the
      test set) and, with ``val_per_class`` held-out real images per class, ``"best_val"``.
    The returned :class:`GeneratorEval` records the protocol and its settings.
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {EVAL_PROTOCOLS}")
    _check_fixed_sets(fixed_sets)
    positive_int("ipc", ipc)
    positive_int("num_models", num_models)
    t0 = time.perf_counter()
    x, y = G.sample(ipc, seed=seed) if protocol == "fixed" else (None, None)
    sample_seconds = time.perf_counter() - t0
    was = G.training
    G.eval()
    try:
        if protocol == "fixed":
            r = _evaluate_fixed_sets(lambda s: (x, y) if s == seed else G.sample(ipc, seed=s), dataset,
                                     fixed_sets, num_models, seed, model=model, epochs=epochs, lr=lr,
                                     batch_size=batch_size, dsa=dsa, device=device, progress=progress)
            settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": "step",
                        "dsa": "dataset" if dsa is True else str(dsa), "fixed_sets": fixed_sets,
                        "num_models": num_models}
            selection, curve = {}, []
        else:
            positive_int("dim_test_every", dim_test_every)
            steps = dim_steps_per_epoch(G.num_classes, ipc, dim_batch)
            r = evaluate_synset(None, None, dataset, model=model, num_models=num_models, epochs=epochs, lr=lr,
                                batch_size=dim_batch, dsa=dim_dsa, seed=seed, device=device, schedule="none",
                                batch_source=dim_batch_source(G, dim_batch), steps_per_epoch=steps,
                                progress=progress, eval_every_epochs=dim_test_every, val_per_class=val_per_class)
            settings = {"epochs": epochs, "lr": lr, "batch_size": dim_batch, "steps_per_epoch": steps,
                        "schedule": "constant", "dsa": dim_dsa, "test_every": dim_test_every,
                        "labels": "random", "num_models": num_models, "val_per_class": val_per_class}
            sel = getattr(r, "selection", {}) or {}
            selection = {"last": list(r.accs), "best_test": list(sel["best_test"])}  # evaluate's labels
            if "best_val" in sel:
                selection["best_val"] = list(sel["best_val"])
            curve = [{"epoch": int(p["epoch"]), "test": list(p["test"])} for p in getattr(r, "epoch_curve", [])]
    finally:
        G.train(was)
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], protocol, ipc, model,
                         time.perf_counter() - t0, sample_seconds,
                         fixed_sets if protocol == "fixed" else "-", "last", selection, settings, curve)


def evaluation_entries(method: str, per_ipc: dict, eval_model: str | None = None, variant: str = "") -> list:
    """``ddkit.runs.results.evaluation_entry`` records of one method: one per IPC and selection
    (``"fixed"``: the last epoch; ``"dim"``: the last epoch and the best test evaluation)."""
    out = []
    for ipc, r in per_ipc.items():
        for name in (s for s in SELECTIONS if s == "last" or s in r.selection):
            e = r.select(name)
            out.append(evaluation_entry(method, e.accs, ipc=int(ipc), eval_model=eval_model or r.model,
                                        variant=variant, protocol=e.protocol_record()))
    return out


def random_real_eval(dataset, ipc, *, model="ConvNet", num_models=5, epochs=1000, seed=0, device=None,
                     progress=True, fixed_sets: str = "one") -> GeneratorEval:
    """Random real images (``ipc`` per class, seeded) under the standard protocol: the floor a
    distilled generator has to beat. ``fixed_sets="per_model"``: a new random subset per network
    (as DC/DM's random baseline draws one per experiment)."""
    _check_fixed_sets(fixed_sets)
    t0 = time.perf_counter()
    r = _evaluate_fixed_sets(lambda s: dataset.sample_classes(ipc, generator=make_generator(s + 17)), dataset,
                             fixed_sets, num_models, seed, model=model, epochs=epochs, device=device,
                             progress=progress)
    settings = {"epochs": epochs, "lr": 0.01, "batch_size": 256, "schedule": "step", "dsa": "dataset",
                "fixed_sets": fixed_sets, "num_models": num_models}
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], "fixed", ipc, model,
                         time.perf_counter() - t0, 0.0, fixed_sets, settings=settings)


#: Row suffix of DiM's reported number (best of the test evaluations) in :meth:`GeneratorEvaluator.table`.
BEST_TEST_LABEL = "best test eval (test-set selection)"


class GeneratorEvaluator:
    """The evaluation of a generative notebook: generators (and the random-real floor) deployed at
    every IPC of ``ipcs`` and evaluated under ``protocol`` (one of :data:`NOTEBOOK_PROTOCOLS`;
    ``"both"``: the fixed set first, then DiM's ``validate``), each with :func:`evaluate_generator`'s
    settings given here. ``results``: ``{(name, protocol): {ipc: GeneratorEval}}`` in the order
    evaluated; :meth:`table`, :meth:`entries` and :meth:`claim` read it."""

    def __init__(self, dataset, ipcs, protocol: str = "both", *, model: str = "ConvNet", num_models: int = 5,
                 epochs: int = 1000, seed: int = 0, device=None, fixed_sets: str = "one", dim_batch: int = 64,
                 dim_test_every: int = 200, progress: bool = True):
        if protocol not in NOTEBOOK_PROTOCOLS:
            raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {NOTEBOOK_PROTOCOLS}")
        _check_fixed_sets(fixed_sets)
        self.dataset, self.ipcs, self.seed = dataset, [positive_int("ipc", k) for k in ipcs], seed
        #: the protocols evaluated, in order (``"both"``: ``["fixed", "dim"]``)
        self.protocols = list(EVAL_PROTOCOLS) if protocol == "both" else [protocol]
        self.settings = dict(model=model, num_models=num_models, epochs=epochs, seed=seed, device=device,
                             progress=progress, fixed_sets=fixed_sets)
        self.dim = dict(dim_batch=dim_batch, dim_test_every=dim_test_every)
        self.results: dict = {}

    def random_real(self, name: str = "Random real") -> dict:
        """The floor: random real images (``ipc`` per class, seed ``seed + 17``; ``fixed_sets="per_model"``:
        a new subset per network, as DC/DM's random baseline) under the standard protocol, a fixed set
        and so evaluated only when the protocols include ``"fixed"``. Returns ``{ipc: GeneratorEval}``."""
        if "fixed" in self.protocols:
            self.results[name, "fixed"] = {k: random_real_eval(self.dataset, k, **self.settings) for k in self.ipcs}
        return self.results.get((name, "fixed"), {})

    def generators(self, generators: dict) -> dict:
        """Every generator of ``{name: G}`` under every protocol (protocol-major) at every IPC
        (:func:`evaluate_generator`); returns the new ``{(name, protocol): {ipc: GeneratorEval}}``."""
        new = {(name, p): {k: evaluate_generator(G, self.dataset, k, protocol=p, **self.settings, **self.dim)
                           for k in self.ipcs}
               for p in self.protocols for name, G in generators.items()}
        self.results.update(new)
        return new

    def table(self, index_name: str = ""):
        """A pandas DataFrame of the results (rows ``"<name> · <protocol>"``, plus
        ``"<name> · dim · best test eval (test-set selection)"`` for DiM's reported number; columns:
        protocol, selection and ``"mean ± std"`` per IPC)."""
        import pandas as pd

        rows = {}
        for (name, p), per in self.results.items():
            rows[f"{name} · {p}"] = per
            if p == "dim":
                rows[f"{name} · dim · {BEST_TEST_LABEL}"] = {k: r.select("best_test") for k, r in per.items()}
        table = pd.DataFrame({f"IPC {k}": {n: f"{per[k].mean:.2f} ± {per[k].std:.2f}" for n, per in rows.items()}
                              for k in self.ipcs})
        table.insert(0, "selection", [per[self.ipcs[0]].selected for per in rows.values()])
        table.insert(0, "protocol", [per[self.ipcs[0]].protocol for per in rows.values()])
        table.index.name = index_name
        return table

    def entries(self, names: dict | None = None) -> list:
        """:func:`evaluation_entries` of every result, for ``result.json``'s ``evaluations``.
        ``names``: ``{name: (method, variant)}`` for the recorded method names (default: the name)."""
        out = []
        for (name, _), per in self.results.items():
            method, variant = (names or {}).get(name, (name, ""))
            out += evaluation_entries(method, per, self.settings["model"], variant)
        return out

    def selections(self) -> list:
        """``(protocol, selection, label)`` of every reported number: the last epoch of each protocol,
        and for ``"dim"`` also the best test evaluation (DiM's report, a selection on the test set)."""
        out = []
        for p in self.protocols:
            out.append((p, "last", f"{p}, last epoch"))
            if p == "dim":
                out.append((p, "best_test", f"{p} (best test eval: test-set selection)"))
        return out

    def claim(self, run_dir, method: str, baseline: str, *, variant: str = "", baseline_variant: str = "") -> list:
        """``[(ipc, label, verdict)]`` for every IPC and :meth:`selections` entry: ``method`` against
        ``baseline`` paired over the seeds of this run's configuration saved beside ``run_dir``
        (:func:`paired_over_seeds`, :func:`claim_verdict`)."""
        return [(k, label, claim_verdict(paired_over_seeds(run_dir, method, baseline, ipc=k, protocol=p, selection=sel,
                                                           variant=variant, baseline_variant=baseline_variant)))
                for k in self.ipcs for p, sel, label in self.selections()]

    def show(self, generators: dict, ipc: int = 1, max_ipc: int = 10):
        """One panel per generator: columns = classes, rows = samples (seed ``seed``: the same noise
        for every generator, so the panels differ only by the training), each a
        :func:`ddkit.runs.viz.class_grid`. Returns the figure."""
        import matplotlib.pyplot as plt

        from ..runs.viz import class_grid

        n = min(ipc, max_ipc)
        fig, axes = plt.subplots(1, len(generators), figsize=(3.6 * len(generators), 0.45 * n + 1.3), squeeze=False)
        for ax, (name, G) in zip(axes[0], generators.items()):
            x, y = G.sample(n, seed=self.seed)
            grid = class_grid(x, y, self.dataset, per_class=n, classes_as="columns")
            ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(name)
            ax.axis("off")
        fig.tight_layout()
        return fig


def paired_over_seeds(run_dir, method: str, baseline: str, *, ipc: int, protocol: str,
                      selection: str = "last", variant: str = "", baseline_variant: str = "") -> dict:
    """Paired difference (method - baseline) of per-seed mean accuracies over the runs beside
    ``run_dir`` (its parent folder) whose parameters equal those of ``run_dir/result.json`` except
    ``seed`` / ``run_name`` / ``results_dir`` (the seeds of one sweep), from their ``evaluations``
    entries (``ddkit.core.stats.paired_difference``: mean and 95% t interval). Adds ``"seeds"``."""
    free = {"seed", "run_name", "results_dir"}
    results_root = Path(run_dir).parent
    same = {k: v for k, v in read_result(Path(run_dir) / "result.json")["params"].items() if k not in free}
    by_seed: dict = {}
    for path in sorted(Path(results_root).glob("*/result.json")):
        try:
            rec = read_result(path)
        except ValueError:
            continue
        if {k: v for k, v in (rec.get("params") or {}).items() if k not in free} != same:
            continue
        found = {}
        for e in rec.get("evaluations", []):
            pr = e.get("protocol") or {}
            if e.get("ipc") == ipc and pr.get("name") == protocol and pr.get("selection", "last") == selection:
                for role, (m, var) in (("m", (method, variant)), ("b", (baseline, baseline_variant))):
                    if e.get("method") == m and (e.get("variant") or "") == var:
                        found[role] = e["mean"]
        if len(found) == 2:
            by_seed[rec["params"]["seed"]] = found
    seeds = sorted(by_seed)
    if not seeds:
        raise ValueError(f"no run under {results_root} has both {method!r} and {baseline!r} at IPC {ipc} "
                         f"({protocol}, {selection})")
    out = paired_difference([by_seed[s]["m"] for s in seeds], [by_seed[s]["b"] for s in seeds])
    return {**out, "seeds": seeds}


def evidence_markdown(results_root, run_prefix: str, baseline: str = "DiM") -> str:
    """A Markdown table of the runs ``<results_root>/<run_prefix>*/result.json`` (the seeds of one
    evidence sweep): per (method, variant, protocol, selection, IPC) the mean ± std over every
    evaluated network of every seed, and the paired difference against ``baseline`` (per-seed
    means, 95% t interval, :func:`claim_verdict`)."""
    cells: dict = {}
    for path in sorted(Path(results_root).glob(f"{run_prefix}*/result.json")):
        rec = read_result(path)
        seed = rec["params"]["seed"]
        for e in rec.get("evaluations", []):
            pr = e.get("protocol") or {}
            key = (e["method"], e.get("variant") or "", pr.get("name"), pr.get("selection", "last"), e["ipc"])
            cells.setdefault(key, {})[seed] = e["accs"]
    lines = ["| method | protocol · selection | IPC | mean ± std (all networks) | seeds | "
             f"paired vs {baseline} (95% CI) | method > {baseline}? |", "|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: (k[2], k[3], k[4], k[0] != baseline, k[0], k[1])):
        method, variant, proto, sel, ipc = key
        by_seed = cells[key]
        accs = torch.tensor([a for s in sorted(by_seed) for a in by_seed[s]], dtype=torch.float64)
        base = cells.get((baseline, "", proto, sel, ipc), {})
        pair, verdict = "", ""
        common = sorted(set(by_seed) & set(base))
        if (method, variant) != (baseline, "") and common:
            d = paired_difference([sum(by_seed[s]) / len(by_seed[s]) for s in common],
                                  [sum(base[s]) / len(base[s]) for s in common])
            pair, verdict = format_paired(d), claim_verdict(d).split(" (")[0]
        label = f"{method} ({variant})" if variant else method
        sel_label = "best test eval (test-set selection)" if sel == "best_test" else sel
        lines.append(f"| {label} | {proto} · {sel_label} | {ipc} | {float(accs.mean()):.2f} ± "
                     f"{float(accs.std(unbiased=False)):.2f} | {len(by_seed)} | {pair} | {verdict} |")
    return "\n".join(lines)


def claim_verdict(diff: dict) -> str:
    """Words for a paired difference: held (interval above 0), reversed (below 0), not shown."""
    if diff["n"] < 2:
        return f"{diff['mean']:+.2f} points on one seed: no interval, so not shown either way"
    span = f"{diff['mean']:+.2f} points, 95% interval [{diff['lo']:+.2f}, {diff['hi']:+.2f}] over {diff['n']} seeds"
    if diff["lo"] > 0:
        return f"held ({span})"
    if diff["hi"] < 0:
        return f"reversed ({span})"
    return f"not shown ({span}: the interval contains 0)"

