"""Run folders and ``result.json`` (CONTRACT "Results on disk"), written atomically."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .utils import REPO_ROOT, atomic_torch_save, atomic_write_bytes, atomic_write_json, environment_info, \
    safe_torch_load

REQUIRED_KEYS = ("method", "dataset", "ipc", "model", "params", "accs", "mean", "std", "seconds",
                 "ddkit_version", "git_commit", "device", "created")


def notebook_key(stem: str) -> str:
    """Results folder name of a notebook: its file stem without the number prefix
    (``00_quickstart`` -> ``quickstart``, ``03_iid.ipynb`` -> ``iid``)."""
    return re.sub(r"^\d+_", "", Path(stem).stem if str(stem).endswith(".ipynb") else str(stem))


def resolve_results_dir(results_dir: str | Path | None = "") -> Path:
    """'' or None -> ``<repo>/results``; relative paths are taken from the current directory."""
    return Path(results_dir) if results_dir else REPO_ROOT / "results"


def auto_run_name(params: dict, keys=("dataset", "ipc", "seed")) -> str:
    """A readable run name from params, e.g. ``mnist5k_ipc10_s0``."""
    ds = Path(str(params.get("dataset", "data"))).stem
    parts = [ds] + [f"{'ipc' if k == 'ipc' else k[0]}{params[k]}" for k in keys[1:] if k in params]
    return "_".join(parts)


def run_dir(results_dir, notebook: str, run_name: str) -> Path:
    """``<results_dir>/<notebook_key>/<run_name>/`` (created)."""
    d = resolve_results_dir(results_dir) / notebook_key(notebook) / run_name
    d.mkdir(parents=True, exist_ok=True)
    return d


def evaluation_entry(method: str, accs, *, ipc, eval_model: str | None = None, variant: str = "",
                     protocol: dict | str | None = None, curve: list | None = None, **extra) -> dict:
    """One entry of ``result.json``'s ``evaluations`` list: one evaluated synthetic set.

    ``accs``: an ``EvalResult`` (its model and settings fill ``eval_model`` and ``protocol``) or a
    list of test accuracies (percent). ``protocol``: a dict with at least ``name`` plus the settings
    that define it (epochs, num_models, dsa, schedule, labels, selection, ...) or just a name.
    ``curve``: accuracy against distillation iterations, ``[{"iteration": i, "accs": [...]}, ...]``.
    ``extra``: e.g. ``val_accs``, ``selection``. The report reads only these entries."""
    import numpy as np

    settings = {}
    if hasattr(accs, "accs"):
        settings = dict(getattr(accs, "settings", {}) or {})
        eval_model = eval_model or getattr(accs, "model", None)
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


def write_result(rd: Path, *, method: str, dataset: str, ipc, model: str, params: dict, accs, seconds: float,
                 device=None, evaluations: list | None = None, **extra) -> dict:
    """Write ``rd/result.json`` atomically with the contract keys plus ``extra`` (JSON-able values).

    ``accs`` is a list of test accuracies in percent (or an ``EvalResult``): the headline.
    ``evaluations``: every evaluated synthetic set of the run, each from :func:`evaluation_entry`
    (when omitted, one entry is made from the headline)."""
    import numpy as np

    if evaluations is None:
        evaluations = [evaluation_entry(method, accs, ipc=ipc, eval_model=extra.get("eval_model"))]
    extra["evaluations"] = list(evaluations)
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


class Run:
    """One notebook run: validated params, device, dataset, run folder and a clock.

        run = start_run(P, "03_iid")        # right after check_params
        ...
        run.save_synset(x, y); run.save_figure(fig, "grid.png")
        run.finish(method="IID", accs=result, model=P.eval_model)   # result.json, atomic
    """

    def __init__(self, params, notebook: str, name_keys=("dataset", "ipc", "seed"), load_data: bool = True):
        import time

        from .data import load_dataset
        from .utils import resolve_device, seed_everything

        self.params = params.as_dict() if hasattr(params, "as_dict") else dict(params)
        self.notebook = notebook_key(notebook)
        self.device = resolve_device(self.params.get("device", "auto"))
        seed_everything(int(self.params.get("seed", 0)))
        self.dataset = load_dataset(self.params["dataset"], self.params.get("data_root") or None) \
            if load_data else None
        self.name = self.params.get("run_name") or auto_run_name(self.params, name_keys)
        self.dir = run_dir(self.params.get("results_dir", ""), self.notebook, self.name)
        self._t0 = time.time()

    @property
    def seconds(self) -> float:
        import time
        return time.time() - self._t0

    def sub(self, suffix: str) -> Path:
        """A sibling run folder (e.g. a baseline evaluated in the same notebook)."""
        return run_dir(self.params.get("results_dir", ""), self.notebook, f"{self.name}_{suffix}")

    def save_synset(self, x, y, name: str = "synset.pt", rd: Path | None = None, **meta) -> Path:
        meta = {"dataset": self.params["dataset"], "notebook": self.notebook, **meta}
        return save_synset(rd or self.dir, x, y, name=name, **meta)

    def save_figure(self, fig, name: str, rd: Path | None = None) -> Path:
        return save_figure(fig, (rd or self.dir) / name)

    def finish(self, *, method: str, accs, model: str | None = None, ipc=None, rd: Path | None = None,
               seconds: float | None = None, **extra) -> dict:
        """Write ``result.json`` (contract keys + ``extra``) and return the record.

        ``model`` is the distillation/matching model (the ``model`` parameter); the architecture
        the accuracies were measured on is recorded as ``eval_model``."""
        return write_result(rd or self.dir, method=method, dataset=self.params["dataset"],
                            ipc=self.params.get("ipc") if ipc is None else ipc,
                            model=model or self.params.get("model"), params=self.params, accs=accs,
                            seconds=self.seconds if seconds is None else seconds, device=self.device,
                            notebook=self.notebook, run_name=self.name,
                            **{"eval_model": self.params.get("eval_model"), **extra})


def start_run(params, notebook: str, **kw) -> Run:
    """Resolve device, seed every RNG, load the dataset and create the run folder (see :class:`Run`)."""
    return Run(params, notebook, **kw)
