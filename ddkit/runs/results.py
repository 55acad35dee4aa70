"""Run folders and ``result.json`` (CONTRACT "Results on disk"), written atomically."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..core.utils import REPO_ROOT, atomic_torch_save, atomic_write_bytes, atomic_write_json, environment_info, \
    safe_torch_load

REQUIRED_KEYS = ("method", "dataset", "ipc", "model", "params", "accs", "mean", "std", "seconds",
                 "ddkit_version", "git_commit", "device", "created")
#: Environment variable naming the results folder when no explicit one is given (tests set it).
RESULTS_ENV = "DDKIT_RESULTS"
#: Environment variable marking the runs of a process (``run_kind`` in result.json); tests set "test".
RUN_KIND_ENV = "DDKIT_RUN_KIND"
#: ``run_kind`` values: "user" (the default) reaches the report; "test" and "tiny" (CI-sized
#: configurations) are skipped by the report unless asked (``ddkit report --include-test``).
RUN_KINDS = ("user", "tiny", "test")
ENTRY_KEYS = ("method", "variant", "protocol", "ipc", "eval_model", "accs", "mean", "std")


def notebook_key(stem: str) -> str:
    """Results folder name of a notebook: its file stem without the number prefix
    (``00_quickstart`` -> ``quickstart``, ``03_iid.ipynb`` -> ``iid``)."""
    return re.sub(r"^\d+_", "", Path(stem).stem if str(stem).endswith(".ipynb") else str(stem))


def resolve_results_dir(results_dir: str | Path | None = "") -> Path:
    """The results folder, the one rule every ddkit module uses: ``results_dir`` when given, else
    ``$DDKIT_RESULTS``, else the repository's ``results/`` when the current directory lies inside the
    ddkit checkout this package runs from (the repository root, ``notebooks/`` where Jupyter and
    papermill start a notebook's kernel, or any other subfolder), else ``./results`` of the current
    directory (after ``pip install`` the package lives in site-packages: no checkout). So the CLI,
    sweeps and notebooks opened in JupyterLab all write and read one folder. Relative paths are taken
    from the current directory."""
    if results_dir:
        return Path(results_dir)
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    root = checkout_root()
    cwd = Path.cwd().resolve()
    if root is not None and (cwd == root or root in cwd.parents):
        return root / "results"
    return cwd / "results"


def checkout_root() -> Path | None:
    """The ddkit repository this package runs from (its ``pyproject.toml`` and ``notebooks/`` beside
    the package), or None for an installed copy."""
    root = REPO_ROOT.resolve()
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def current_run_kind(run_kind: str | None = None) -> str:
    """``run_kind`` when given, else ``$DDKIT_RUN_KIND``, else "user"; ``ValueError`` outside :data:`RUN_KINDS`."""
    kind = run_kind or os.environ.get(RUN_KIND_ENV) or "user"
    if kind not in RUN_KINDS:
        raise ValueError(f"run_kind={kind!r} (from {'the argument' if run_kind else RUN_KIND_ENV}); "
                         f"allowed: {', '.join(RUN_KINDS)}")
    return kind


def auto_run_name(params: dict, keys=("dataset", "ipc", "seed")) -> str:
    """A readable run name from params, e.g. ``mnist5k_ipc10_s0``."""
    ds = Path(str(params.get("dataset", "data"))).stem
    parts = [ds] + [f"{'ipc' if k == 'ipc' else k[0]}{params[k]}" for k in keys[1:] if k in params]
    return "_".join(parts)


def evaluation_entry(method: str, accs, *, ipc, eval_model: str | None = None, variant: str = "",
                     protocol: dict | str | None = None, curve: list | None = None, **extra) -> dict:
    """One entry of ``result.json``'s ``evaluations`` list: one evaluated synthetic set.

    ``accs``: an ``EvalResult`` (its model and settings fill ``eval_model`` and ``protocol``; its
    ``selection`` and ``epoch_curve``, when recorded, are kept: the last-epoch, validation-selected
    and test-selected accuracies, ``ddkit.evaluate.SELECTIONS``) or a list of test accuracies
    (percent). ``protocol``: a dict with at least ``name`` plus the settings that define it (epochs,
    num_models, dsa, schedule, labels, selection, ...) or just a name.
    ``curve``: accuracy against distillation iterations, ``[{"iteration": i, "accs": [...]}, ...]``.
    ``extra``: e.g. ``ledger`` (:func:`budget_ledger`). The report reads only these entries."""
    import numpy as np

    settings = {}
    if hasattr(accs, "accs"):
        settings = dict(getattr(accs, "settings", {}) or {})
        eval_model = eval_model or getattr(accs, "model", None)
        if getattr(accs, "selection", None):
            extra = {"selection": accs.selection, "epoch_curve": accs.epoch_curve, **extra}
        accs = accs.accs
    accs = [float(a) for a in accs]
    if isinstance(protocol, str):
        protocol = {"name": protocol}
    protocol = {**settings, **(protocol or {})}
    protocol.setdefault("name", "standard")
    entry = {"method": method, "variant": variant, "protocol": protocol, "ipc": ipc, "eval_model": eval_model,
             "accs": accs, "mean": float(np.mean(accs)) if accs else None,
             "std": float(np.std(accs)) if accs else None}
    if curve is not None:
        entry["curve"] = [{"iteration": int(p["iteration"]), "accs": [float(a) for a in p["accs"]]} for p in curve]
    entry.update(extra)
    return entry


def budget_ledger(num_classes: int, *, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                  generator: torch.nn.Module | None = None, factor: int = 1,
                  images_per_class_per_epoch: float | None = None) -> dict:
    """What a distilled set costs and what its evaluation network sees (an entry's ``ledger``).

    * ``image_bytes``: the stored images (``numel * element_size``); ``label_bytes``: soft labels
      (N, K) only (hard labels are implied by the class-ordered layout: 0 bytes);
      ``generator_bytes``: the generator's parameters; ``stored_bytes``: their sum.
    * ``images_per_class_per_epoch``: training images of one class the evaluation network sees per
      epoch: ``len(images) * factor**2 / num_classes`` (a factor-2 set stores 2x2 mosaics, each
      expanded to 4 images, IDM), or the value given (a generator protocol: steps x batch / K)."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor={factor!r} must be a positive integer (1 = no partition, 2 = IDM's 2x2)")
    if images_per_class_per_epoch is None and images is None:
        raise ValueError("budget_ledger needs images or images_per_class_per_epoch")

    def nbytes(t):
        return int(t.numel() * t.element_size())

    image_bytes = nbytes(images) if images is not None else 0
    label_bytes = nbytes(labels) if labels is not None and labels.dim() == 2 else 0
    generator_bytes = sum(nbytes(q) for q in generator.parameters()) if generator is not None else 0
    seen = images_per_class_per_epoch if images_per_class_per_epoch is not None else \
        len(images) * factor ** 2 / num_classes
    return {"stored_bytes": image_bytes + label_bytes + generator_bytes, "image_bytes": image_bytes,
            "label_bytes": label_bytes, "generator_bytes": generator_bytes, "factor": int(factor),
            "images_per_class_per_epoch": float(seen)}


def check_evaluations(evaluations) -> list:
    """``evaluations`` as a list, each entry checked for :data:`ENTRY_KEYS` (``ValueError`` naming the
    entry and the missing keys; build entries with :func:`evaluation_entry`)."""
    if not isinstance(evaluations, (list, tuple)):
        raise ValueError(f"evaluations={type(evaluations).__name__}; expected a list of evaluation_entry(...) dicts")
    for i, e in enumerate(evaluations):
        missing = [k for k in ENTRY_KEYS if not isinstance(e, dict) or k not in e]
        if missing:
            raise ValueError(f"evaluations[{i}] lacks {missing}; build entries with ddkit.runs.results.evaluation_entry")
    return list(evaluations)


def write_result(rd: Path, *, method: str, dataset: str, ipc, model: str, params: dict, accs, seconds: float,
                 device=None, evaluations: list | None = None, run_kind: str | None = None, **extra) -> dict:
    """Write ``rd/result.json`` atomically with the contract keys plus ``extra`` (JSON-able values).

    ``accs`` is a list of test accuracies in percent (or an ``EvalResult``): the headline.
    ``evaluations``: every evaluated synthetic set of the run, each from :func:`evaluation_entry`
    (when omitted, one entry is made from the headline). ``run_kind``: see :data:`RUN_KINDS`
    (default ``$DDKIT_RUN_KIND`` or "user")."""
    import numpy as np

    if evaluations is None:
        evaluations = [evaluation_entry(method, accs, ipc=ipc, eval_model=extra.get("eval_model"))]
    extra["evaluations"] = check_evaluations(evaluations)
    extra["run_kind"] = current_run_kind(run_kind)
    if hasattr(accs, "accs"):
        extra.setdefault("eval_settings", getattr(accs, "settings", {}))
        accs = accs.accs
    accs = [float(a) for a in accs]
    record = {
        "method": method, "dataset": dataset, "ipc": ipc, "model": model, "params": params,
        "accs": accs, "mean": float(np.mean(accs)) if accs else None,
        "std": float(np.std(accs)) if accs else None, "seconds": float(seconds),
        **environment_info(device), **extra,
    }
    atomic_write_json(Path(rd) / "result.json", record)
    return record


def read_result(path) -> dict:
    """Read a ``result.json``; ``ValueError`` if it is not valid JSON or lacks contract keys."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable result.json ({e})") from None
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise ValueError(f"{path}: result.json lacks {missing}")
    return rec


def save_synset(rd: Path, x: torch.Tensor, y: torch.Tensor, name: str = "synset.pt", **meta) -> Path:
    """Save a synthetic set (images in the normalised space, labels hard or soft) atomically;
    loadable with ``torch.load(..., weights_only=True)``."""
    path = Path(rd) / name
    atomic_torch_save({"x": x.detach().cpu(), "y": y.detach().cpu(), "meta": meta}, path)
    return path


def load_synset(path, expect: dict | None = None):
    """(x, y, meta) from :func:`save_synset`; ``expect`` checks meta keys (e.g. dataset)."""
    obj = safe_torch_load(path, expect)
    return obj["x"], obj["y"], obj["meta"]


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically (PNG by the suffix)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


#: Parameters that do not change what a distillation loop computes: :func:`loop_key` leaves them out
#: (the evaluation settings count only when ``eval_every`` records a curve inside the loop).
LOOP_NEUTRAL_KEYS = ("iterations", "run_name", "results_dir", "device", "resume", "checkpoint_every", "compile",
                     "tsne", "tsne_class", "compare_dm", "compare_no_h", "eval_no_h", "eval_init", "eval_models",
                     "baselines", "deterministic")
EVAL_KEYS = ("eval_model", "eval_epochs", "num_eval", "eval_protocol")


def loop_key(params: dict) -> str:
    """A short hash of the parameters that determine a distillation loop's result (not ``iterations``:
    a longer run resumes a shorter one's checkpoint)."""
    import hashlib

    drop = set(LOOP_NEUTRAL_KEYS) | (set(EVAL_KEYS) if not params.get("eval_every") else set())
    kept = {k: v for k, v in sorted(params.items()) if k not in drop}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Run:
    """One notebook run, the one lifecycle of every method notebook: open, checkpoint, save, finish.

        run = Run(P, "03_iid", suffix=P.base)    # right after check_params: device, determinism, seed, folder
        distill(..., device=run.device, checkpoint=run.checkpoint("iid"))
        run.save_set(syn); run.save_figures({"images.png": fig})     # synset.pt, figures
        rec = run.finish("IID", res, evaluations=[run.evaluation("IID", res, ledger=run.ledger(10, images=x))])

    Opening resolves ``params["device"]``, applies ``params["deterministic"]``
    (``ddkit.core.utils.set_deterministic``), seeds every RNG with ``params["seed"]``, creates
    ``<results>/<notebook_key>/<run name>/`` (``run.dir``; ``run_name``, else ``<dataset>_ipc<ipc>_s<seed>_<suffix>``;
    the results folder ``run.results`` from :func:`resolve_results_dir`) and starts the clock that ``result.json``'s
    ``seconds`` reads. ``params``: the validated parameters (``as_dict()`` or a dict)."""

    def __init__(self, params, notebook: str, suffix: str = ""):
        import time

        from ..core.utils import resolve_device, seed_everything, set_deterministic

        self.params = params.as_dict() if hasattr(params, "as_dict") else dict(params)
        if "dataset" not in self.params:
            raise ValueError(f"Run needs the dataset parameter (result.json records it); got {sorted(self.params)}")
        self.notebook = notebook_key(notebook)
        self.device = resolve_device(self.params.get("device", "auto"))
        set_deterministic(self.params.get("deterministic", False))
        seed_everything(int(self.params.get("seed", 0)))
        self.name = self.params.get("run_name") or "_".join(filter(None, (auto_run_name(self.params), suffix)))
        self.results = resolve_results_dir(self.params.get("results_dir", ""))  # shared caches live here too
        self.dir = self.results / self.notebook / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()

    @property
    def seconds(self) -> float:
        """Seconds since the run was opened."""
        import time
        return time.time() - self._t0

    def checkpoint(self, tag: str) -> Path | None:
        """``<run folder>/checkpoint_<tag>_<loop_key(params)>.pt``, or None when ``params["resume"]`` is
        False. Keyed by what determines the loop: a run with other settings never resumes this one's state."""
        if not self.params.get("resume", True):
            return None
        return self.dir / f"checkpoint_{tag}_{loop_key(self.params)}.pt"

    def save_set(self, images, labels=None, name: str = "synset.pt", **meta) -> Path:
        """``synset.pt`` (:func:`save_synset`; the metadata names the dataset): a synthetic set object
        (``detached()`` gives the decoded training set, what evaluation trains on; its stored images, the
        mosaics when ``factor`` > 1, go into the metadata with ``ipc`` and ``factor``) or ``images`` and
        ``labels`` tensors."""
        if labels is None:
            syn = images
            images, labels = syn.detached()
            meta = {"ipc": syn.ipc, "factor": syn.factor, "stored": syn.images.detach().cpu(), **meta}
        meta = {"dataset": self.params["dataset"], "notebook": self.notebook, **meta}
        return save_synset(self.dir, images, labels, name=name, **meta)

    def save_figures(self, figures: dict) -> list:
        """Save ``{file name: figure}`` in the run folder with :func:`save_figure` (None entries: figures
        the run did not draw, skipped); returns the paths written."""
        return [save_figure(fig, self.dir / name) for name, fig in figures.items() if fig is not None]

    def evaluation(self, method: str, accs, **fields) -> dict:
        """One entry of ``result.json``'s ``evaluations`` (:func:`evaluation_entry`); ``ipc``
        defaults to the run's (``ipc=None``: a set without an IPC, such as the whole training data)."""
        fields.setdefault("ipc", self.params.get("ipc"))
        return evaluation_entry(method, accs, **fields)

    #: What a set costs and what its evaluation network sees (:func:`budget_ledger`), an entry's ``ledger``.
    ledger = staticmethod(budget_ledger)

    def finish(self, method: str, accs, *, evaluations: list | None = None, **extra) -> dict:
        """Write ``result.json`` atomically (:func:`write_result`) and print where it is with its headline.

        ``accs``: the headline (an ``EvalResult`` or test accuracies in percent); ``evaluations``: every
        evaluated set (:func:`evaluation_entry`); ``extra``: the run's own JSON-able fields. ``dataset``,
        ``ipc``, the matching ``model`` and ``eval_model`` are read from the parameters unless ``extra``
        gives them (the loaded dataset's name, another IPC), so the record cannot disagree with the
        parameters by accident; ``notebook``, ``run_name`` and ``seconds`` come from the run."""
        p = self.params
        fields = {"dataset": p["dataset"], "ipc": p.get("ipc"), "model": p.get("model"),
                  "eval_model": p.get("eval_model"), **extra}
        rec = write_result(self.dir, method=method, params=p, accs=accs, seconds=self.seconds, device=self.device,
                           evaluations=evaluations, notebook=self.notebook, run_name=self.name, **fields)
        print(f"{self.dir / 'result.json'} {method} {rec['mean']:.2f} ± {rec['std']:.2f} ({rec['seconds']:.0f}s)")
        return rec
