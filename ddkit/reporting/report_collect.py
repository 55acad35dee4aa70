"""Read every ``result.json``'s ``evaluations`` into one long DataFrame (:func:`collect`).

The report reads one schema: each ``result.json`` holds an ``evaluations`` list
(``ddkit.runs.results.evaluation_entry``), one entry per evaluated synthetic set with ``method, variant,
protocol {name + settings}, ipc, eval_model, accs`` (optional ``curve``, ``selection``, ``epoch_curve``,
``ledger``). Files written before that list existed are read through :func:`legacy_evaluations`, a
converter of their shapes.

The keys every table cell pools under (``ddkit.reporting.report_tables`` groups by them):

* one **row** per (method, variant, configuration, protocol). The configuration is the set of run
  parameters that differ between runs of the same method, dataset, IPC, evaluation model and
  protocol (e.g. ``iterations=400``); it labels entries of the run's own method only (a baseline
  evaluated inside a run is defined by its method, ``variant`` and protocol). The protocol is the
  entry's ``protocol`` dict without the evaluation seed (``selection`` defaults to ``"last"``,
  ``labels`` to ``"hard"``): :func:`protocol_key`. Rows are never dropped or merged across these keys.
* method names are spelled one way (:func:`canonical_method`), so ours and the papers' rows share a
  row name and a colour.
* runs marked ``run_kind: "test"`` or ``"tiny"`` (``ddkit.runs.results.RUN_KINDS``) are skipped unless
  ``include_test=True``.

The published numbers (``published.csv``, :func:`load_published`) carry their protocol and
selection (:data:`PUBLISHED_PROTOCOLS`).
"""
from __future__ import annotations

import ast
import functools
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.utils import REPO_ROOT
from ..runs.results import RUN_KINDS, evaluation_entry, resolve_results_dir

__all__ = [
    "collect",
    "legacy_evaluations",
    "load_published",
    "canonical_method",
    "protocol_key",
    "protocol_title",
    "notebook_defaults",
    "to_float",
    "COLUMNS",
    "PUBLISHED_CSV",
    "PUBLISHED_PROTOCOLS",
]

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
#: run parameters that never define a configuration (bookkeeping, a table axis, or the protocol)
NOT_A_CONFIG = frozenset(
    {"seed", "run_name", "results_dir", "data_root", "device", "deterministic", "dataset", "ipc", "progress", "tsne",
     "eval_model", "eval_epochs", "num_eval", "eval_protocol", "baselines", "compare_dm", "compare_no_h"}
)
#: runs the report leaves out unless asked (``include_test``)
SKIPPED_KINDS = tuple(k for k in RUN_KINDS if k != "user")
#: protocol settings read as these values when an entry does not record them
PROTOCOL_DEFAULTS = {"selection": "last", "labels": "hard"}
_ALIASES = {
    "random": "Random", "randomreal": "Random", "randomsubset": "Random", "herding": "Herding",
    "kcenter": "K-Center", "forgetting": "Forgetting", "dm": "DM", "dim": "DiM", "idm": "IDM",
    "wholedataset": "Whole dataset", "whole": "Whole dataset", "originaldataset": "Whole dataset",
    "ganskd": "GAN + SKD", "gandiskd": "GAN + SKD", "gangloballocal": "GAN global/local", "gangl": "GAN global/local",
    "dsdm": "DSDM", "ead": "EAD", "dmiid": "DM+IID", "idmiid": "IDM+IID",
}


def canonical_method(name: Any) -> str:
    """One spelling per method, so ours and the papers' rows share a row name and a colour."""
    s = str(name)
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", s.lower()), s)



# --------------------------------------------------------------------------- reading
def _legacy_protocol(rec: dict) -> dict:
    """The protocol of a pre-``evaluations`` file: the recorded ``eval_protocol`` parameter (default
    "standard", the only protocol before it existed) with its ``eval_settings`` or the notebook
    parameters. ``ValueError`` naming the file's value when it is not one of ``ddkit.evaluate.PROTOCOLS``
    (a block of another protocol would take it silently)."""
    from ..evaluate import PROTOCOLS

    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    name = params.get("eval_protocol") or "standard"
    if name not in PROTOCOLS:
        raise ValueError(f"a pre-'evaluations' result.json records eval_protocol={name!r}, which the report cannot "
                         f"place (known: {sorted(PROTOCOLS)}); re-run it or remove it")
    if isinstance(rec.get("eval_settings"), dict) and rec["eval_settings"]:
        return {"name": name, **rec["eval_settings"]}
    known = {"epochs": params.get("eval_epochs"), "num_models": params.get("num_eval")}
    return {"name": name, **{k: v for k, v in known.items() if v is not None}}


def _legacy_entry(method, val: dict, *, ipc, eval_model, protocol, variant="") -> dict:
    """An entry from a ``{mean, std, accs}`` mapping (``accs`` may be missing: mean and std kept)."""
    accs = [a for a in (val.get("accs") or []) if isinstance(a, (int, float)) and a == a]
    entry = evaluation_entry(str(method), accs, ipc=ipc, eval_model=eval_model, variant=variant or "",
                             protocol=dict(protocol))
    if not accs:
        entry["mean"], entry["std"] = val.get("mean"), val.get("std")
    return entry


def legacy_evaluations(rec: dict) -> list:
    """Entries for a ``result.json`` written before the ``evaluations`` list, one per shape it used:
    the headline (``accs``, ``variant``, ``curve`` of ``{iteration, mean}``); ``baseline_method`` +
    ``baseline_accs``; ``baselines`` / ``variants`` mappings; ``table`` ``{method: {ipc: {...}}}``
    (the run's method is the key with "(ours)" or its own name); ``<label>_accs/_mean/_std``
    triples (variants); ``extra_results``; ``cross_arch`` (other evaluation models)."""
    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    ipc, method = rec.get("ipc", params.get("ipc")), str(rec["method"])
    em = str(rec.get("eval_model") or params.get("eval_model") or rec.get("model", ""))
    kw = dict(protocol=_legacy_protocol(rec), eval_model=em)
    head = _legacy_entry(method, rec, ipc=ipc, variant=rec.get("variant") or "", **kw)
    if rec.get("curve"):
        head["curve"] = [{"iteration": p["iteration"], "accs": [p["mean"]]} for p in rec["curve"]
                         if isinstance(p, dict) and "iteration" in p and "mean" in p]
    out = [head]
    if rec.get("baseline_method"):
        out.append(_legacy_entry(rec["baseline_method"], {k[9:]: v for k, v in rec.items() if k.startswith("baseline_")},
                                 ipc=ipc, **kw))
    out += [_legacy_entry(name, v, ipc=ipc, **kw) for name, v in (rec.get("baselines") or {}).items()
            if isinstance(v, dict)]
    out += [_legacy_entry(method, v, ipc=ipc, variant=str(name), **kw) for name, v in (rec.get("variants") or {}).items()
            if isinstance(v, dict)]
    for name, per_ipc in (rec.get("table") or {}).items():
        ours = "(ours)" in str(name).lower() or canonical_method(name) == canonical_method(method)
        for k, v in (per_ipc or {}).items():
            if isinstance(v, dict) and to_float(k) == to_float(k) and not (ours and to_float(k) == to_float(ipc)):  # not the headline
                out.append(_legacy_entry(method if ours else name, v, ipc=to_float(k), **{**kw, "eval_model": v.get("model", em)}))
    for k in rec:
        label = k[:-5] if k.endswith("_accs") else None
        if label and label != "baseline" and isinstance(rec[k], list) and {f"{label}_mean", f"{label}_std"} <= set(rec):
            out.append(_legacy_entry(method, {"accs": rec[k]}, ipc=ipc, variant=label, **kw))
    out += [_legacy_entry(x["method"], x, ipc=ipc, variant=x.get("variant", ""), **{**kw, "eval_model": x.get("eval_model", em)})
            for x in rec.get("extra_results") or [] if isinstance(x, dict) and "method" in x]
    ca = rec.get("cross_arch")
    items = [{"eval_model": k, **(v if isinstance(v, dict) else {"mean": v})} for k, v in ca.items()] \
        if isinstance(ca, dict) else [x for x in ca or [] if isinstance(x, dict)]
    out += [_legacy_entry(method, x, ipc=ipc, **{**kw, "eval_model": x.get("eval_model") or x.get("model")})
            for x in items]
    return out


#: parameters a sweep or a test sets on every run: not part of a notebook's configuration
RUN_BOOKKEEPING = ("run_name", "results_dir", "data_root", "device")


@functools.lru_cache(maxsize=None)
def notebook_defaults(key: str) -> dict | None:
    """The ``parameters`` cell of ``notebooks/NN_<key>.ipynb`` as a dict (``None`` when not found)."""
    for path in sorted((REPO_ROOT / "notebooks").glob(f"[0-9][0-9]_{key}.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                tree = ast.parse("".join(cell["source"]))
                return {t.id: ast.literal_eval(n.value) for n in tree.body for t in n.targets}
    return None


def _legacy_run_kind(rec: dict, notebook: str) -> str:
    """Older files carry no ``run_kind``: one written into a pytest temporary folder was a test, one
    run at its notebook's default parameters (the tiny CI configuration, e.g. by nbval) is tiny.
    A notebook records all its parameters; parameters it gained later are not compared, but the
    file must hold at least three quarters of today's."""
    params = rec.get("params") or {}
    if re.search(r"pytest-of-|ddkit-test-results-", str(params.get("results_dir", ""))):
        return "test"
    defaults = {k: v for k, v in (notebook_defaults(notebook) or {}).items() if k not in RUN_BOOKKEEPING}
    shared = [k for k in defaults if k in params]
    at_defaults = bool(shared) and len(shared) >= 0.75 * len(defaults) and all(params[k] == defaults[k] for k in shared)
    return "tiny" if at_defaults else "user"


def protocol_key(protocol: dict | None) -> str:
    """What makes two evaluations the same protocol: every setting but the evaluation seed, with
    :data:`PROTOCOL_DEFAULTS` filled in (canonical JSON)."""
    p = {**PROTOCOL_DEFAULTS, **(protocol or {})}
    p.pop("seed", None)
    p.setdefault("name", "standard")
    return json.dumps(p, sort_keys=True, default=str)


def _entry_row(entry: dict, run: dict) -> dict:
    protocol = json.loads(protocol_key(entry.get("protocol")))
    accs = [float(a) for a in entry.get("accs") or []]
    mean = float(np.mean(accs)) if accs else to_float(entry.get("mean"))
    std = float(np.std(accs)) if accs else to_float(entry.get("std"))
    seed = entry.get("seed", run["seed"])
    return {**run, "method_raw": str(entry["method"]), "method": canonical_method(entry["method"]),
            "variant": str(entry.get("variant") or ""), "protocol": protocol, "protocol_key": protocol_key(protocol),
            "protocol_name": protocol["name"], "selection_name": protocol["selection"],
            "ipc": to_float(entry.get("ipc", run["ipc"])), "eval_model": str(entry.get("eval_model") or run["model"]),
            "accs": accs, "mean": mean, "std": std, "n": len(accs), "seed": seed,
            "headline": canonical_method(entry["method"]) == run["run_method"],
            "curve": entry.get("curve"), "selection": entry.get("selection"), "ledger": entry.get("ledger")}


def to_float(v) -> float:
    """``float(v)``; NaN when ``v`` is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan



def _read_run(path: Path, root: Path) -> tuple[dict, list]:
    rec = json.loads(path.read_text())
    if not isinstance(rec, dict) or "method" not in rec:
        raise ValueError("not a result record (no 'method')")
    params = rec.get("params") if isinstance(rec.get("params"), dict) else {}
    rel = path.parent.relative_to(root)
    run = {"notebook": rel.parts[0] if len(rel.parts) > 1 else "", "run": path.parent.name, "path": str(path),
           "dataset": str(rec.get("dataset", params.get("dataset", ""))), "ipc": to_float(rec.get("ipc", params.get("ipc"))),
           "model": str(rec.get("model", params.get("model", ""))), "seed": params.get("seed"),
           "iterations": to_float(params.get("iterations")), "params": params, "seconds": rec.get("seconds"),
           "created": rec.get("created"),
           "run_method": canonical_method(rec["method"]), "source": "ours"}
    run["run_kind"] = rec.get("run_kind") or _legacy_run_kind(rec, run["notebook"])
    entries = rec["evaluations"] if isinstance(rec.get("evaluations"), list) else legacy_evaluations(rec)
    return run, entries


COLUMNS = ["notebook", "run", "method", "method_raw", "variant", "config", "row", "protocol_label", "dataset", "ipc",
           "model", "eval_model", "seed", "mean", "std", "accs", "n", "protocol_name", "selection_name",
           "protocol_key", "protocol", "iterations", "seconds", "run_kind", "headline", "params", "curve",
           "selection", "ledger", "created", "path", "source"]


def collect(results_dir: str | os.PathLike | None = None, include_test: bool = False) -> pd.DataFrame:
    """One row per ``evaluations`` entry of every ``result.json`` under ``results_dir``.

    Columns :data:`COLUMNS`; ``row`` is the table row name (method, [variant; configuration]),
    ``protocol_label`` the protocol's short name. Unreadable files are skipped with a warning
    (``df.attrs["skipped"]``); test/tiny runs are left out unless ``include_test``
    (``df.attrs["excluded"]`` counts them)."""
    root = resolve_results_dir(results_dir)
    rows, skipped, excluded = [], [], 0
    for f in sorted(root.rglob("result.json")) if root.is_dir() else []:
        try:
            run, entries = _read_run(f, root)
            new = [_entry_row(e, run) for e in entries]
        except Exception as exc:
            skipped.append(f"{f}: {exc}")
            warnings.warn(f"skipping {f}: {exc}", stacklevel=2)
            continue
        if run["run_kind"] in SKIPPED_KINDS and not include_test:
            excluded += 1
            continue
        rows += new
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("config", "row", "protocol_label")]
                      + ["run_method"])
    df["config"] = _config_labels(df)
    df["row"] = [_row_name(m, v, c) for m, v, c in zip(df["method"], df["variant"], df["config"])]
    df["protocol_label"] = _protocol_labels(df)
    df = df[COLUMNS].reset_index(drop=True)
    df.attrs.update(skipped=skipped, excluded=excluded, results_dir=str(root))
    return df


def _row_name(method: str, variant: str, config: str) -> str:
    tags = "; ".join(t for t in (variant, config) if t)
    return f"{method} [{tags}]" if tags else method


def _config_labels(df: pd.DataFrame) -> pd.Series:
    """Per (method, variant, dataset, IPC, eval model, protocol): the run parameters that differ
    between the runs whose own method it is (``k=v, ...``); '' when they agree."""
    labels = pd.Series("", index=df.index, dtype=object)
    own = df[df["headline"].astype(bool)] if len(df) else df
    for _, g in own.groupby(["method", "variant", "dataset", "ipc", "eval_model", "protocol_key"], dropna=False):
        keys = sorted(set().union(*(p.keys() for p in g["params"])) - NOT_A_CONFIG)
        varying = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in g["params"]}) > 1]
        for i, p in zip(g.index, g["params"]):
            labels[i] = ", ".join(f"{k}={p.get(k)}" for k in varying)
    return labels


def _protocol_labels(df: pd.DataFrame) -> pd.Series:
    """``name`` (``, <selection>`` unless last epoch), plus the settings that differ between the
    protocols sharing that name and selection."""
    labels = pd.Series("", index=df.index, dtype=object)
    for (name, sel), g in df.groupby(["protocol_name", "selection_name"]):
        base = protocol_title(name, sel)
        protos = {k: json.loads(k) for k in g["protocol_key"].unique()}
        keys = sorted(set().union(*protos.values()))
        varying = [k for k in keys if len({json.dumps(p.get(k), default=str) for p in protos.values()}) > 1]
        for i, k in zip(g.index, g["protocol_key"]):
            labels[i] = base + (f" ({', '.join(f'{s}={protos[k].get(s)}' for s in varying)})" if varying else "")
    return labels


#: The protocols of ``published.csv`` (docs/sources.md).
PUBLISHED_PROTOCOLS = {
    "standard": "DC/DSA/DM: fresh ConvNets trained on the set, SGD 0.01, step decay at half, DSA, 1000 epochs; "
                "test accuracy after the last epoch",
    "dsdm": "DSDM's own: 1500 epochs, batch 64, MultiStepLR x0.2 at 2/3 and 5/6, DSA + CutMix; best test "
            "accuracy over the code's test checkpoints (one, after the last epoch)",
    "dim": "DiM's generator evaluation (pool_match.py): a fresh generated batch every step, constant lr 0.01, "
           "color_crop DSA, tested every 200 epochs; best of those test accuracies",
    "unstated": "the paper does not state its evaluation protocol",
    "whole": "a network trained on the full training set",
}


def protocol_title(name: str, selection: str) -> str:
    """``"dim, best_test"``; the selection is left out for the last-epoch report (and when unstated)."""
    return name if selection in ("last", "", None, name) else f"{name}, {selection}"


def load_published(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Published numbers: columns ``method, dataset, ipc, mean, protocol, selection, source`` (empty
    ``ipc`` = whole dataset). ``ValueError`` naming the missing columns."""
    df = pd.read_csv(path or PUBLISHED_CSV, dtype={"method": str, "dataset": str, "source": str, "protocol": str,
                                                   "selection": str})
    missing = {"method", "dataset", "ipc", "mean", "protocol", "selection", "source"} - set(df.columns)
    if missing:
        raise ValueError(f"{path or PUBLISHED_CSV}: missing column(s) {sorted(missing)}; expected method, dataset, "
                         f"ipc, mean, protocol, selection, source")
    df["ipc"] = pd.to_numeric(df["ipc"], errors="coerce")
    df["mean"] = pd.to_numeric(df["mean"], errors="coerce")
    return df
