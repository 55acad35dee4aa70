"""Papermill sweeps: grid files -> runs -> ``results/<notebook_key>/<run_name>/``.

Grid files
==========
A grid file is YAML. Each document (``---`` separates several in one file) is a
mapping describing the runs of ONE notebook::

    notebook: 03_iid.ipynb          # resolved against notebooks/ (".ipynb" optional)
    description: IID on CIFAR-10     # optional, free text
    name: "{dataset}_ipc{ipc}_s{seed}"   # optional run-name template
    params:                          # fixed values for every run
      dataset: cifar10
      iterations: 20000
    grid:                            # cartesian product of the lists
      ipc: [1, 10, 50]
      seed: [0, 1, 2, 3, 4]
    resources: {GPU: 1}              # optional, Dask worker resources per run

* ``notebook``: a file name under ``notebooks/`` (``03_iid.ipynb`` or ``03_iid``), a
  path relative to the grid file, or an absolute path.
* ``params``: ``key: value`` flat literals, passed to every run.
* ``grid``: ``key: [v1, v2, ...]``; the runs are the cartesian product of all lists
  (the first key varies slowest). ``grid`` may also be a LIST of such mappings: the
  runs are the union of the products (handy for ablations that vary several keys
  together, e.g. ``- {lambda_cc: [0.0], lambda_cm: [0.0]}`` and
  ``- {lambda_cc: [0.05], lambda_cm: [0.01]}``). No grid = one run.
* ``name``: a ``str.format`` template over the run's parameter values (notebook
  defaults included) plus ``{notebook}`` (the stem) and ``{index}`` (0-based run number
  within the document), e.g. ``"{dataset}_ipc{ipc}_s{seed}"`` or ``"lr{lr_img:g}"``.
  Path-like string values contribute their file stem; characters other than
  ``A-Za-z0-9._=+-`` become ``-``. Default: the file stem (or its folder name when the
  stem equals the notebook stem, e.g. ``params/cpu/03_iid.yaml`` -> ``cpu``) followed by
  ``_<key><value>`` for every grid key: ``cifar10_ipc10_seed0``.
* ``resources``: e.g. ``{GPU: 1}``: on a Dask cluster each run then needs one GPU slot
  (start workers with ``dask worker tcp://host:8786 --resources "GPU=1"``). Ignored by
  the local executor.
* ``run_name`` and ``results_dir`` belong to the sweep: ``name:`` sets the first,
  ``--results-dir`` the second (``run_name`` in ``params`` is accepted as the template
  when there is no ``name``).

In a file with several documents, a document holding only ``defaults:`` (a mapping with
``params``, ``grid``, ``name``, ``resources``) sets shared values for every LATER document
of that file; a document's own values win key by key (a key a document puts in its
``grid`` is removed from the shared ``params`` and vice versa)::

    defaults:
      name: "{dataset}_ipc{ipc}_s{seed}"
      params: {dataset: mnist5k, eval_epochs: 30, num_eval: 1}
      grid: {ipc: [2, 5]}
    ---
    notebook: 03_iid.ipynb
    ---
    notebook: 05_ead.ipynb
    params: {t_m: 2}

A flat parameter file (a mapping of notebook keys only, no ``notebook:`` key), such as
``params/cpu/03_iid.yaml`` or ``params/paper/05_ead/cifar10.yaml``, is one run; its
notebook is taken from the path (``params/cpu/<stem>.yaml``,
``params/paper/<stem>/*.yaml``).

Validation happens for every document of every file before any run starts: unknown
notebook, unknown key (not in the notebook's ``parameters`` cell, read with
``papermill.inspect_notebook``), a value the notebook's own ``SPEC`` rejects (the same
``ddkit.params.Param`` checks ``check_params`` applies in the notebook: type, range,
choices; :func:`notebook_spec`), empty grid lists, duplicate run names and malformed YAML
raise ``ValueError`` naming the file and the key.

Execution
=========
Every run executes the notebook with papermill into
``<results_dir>/<notebook_key>/<run_name>/<notebook stem>.ipynb``; the notebook itself
writes ``result.json`` there (``run_name`` and ``results_dir`` are injected).

* Local: ``workers`` processes (``concurrent.futures`` with the spawn context), each
  driving one papermill kernel; ``OMP_NUM_THREADS`` defaults to cores // workers;
  ``gpus=["0", "1"]`` pins worker i to GPU ``i % 2`` (``CUDA_VISIBLE_DEVICES``).
* Dask: ``scheduler="tcp://host:8786"`` (or a ``distributed.Client`` / ``LocalCluster``)
  submits each run as one task (with its ``resources``); the workers need ddkit,
  papermill and a ``python3`` kernel, and results/ must be on a shared file system.
* Resume: a run whose ``result.json`` exists, parses and whose ``params`` match the
  requested values (``run_name, results_dir, data_root, device`` excepted) is skipped
  (``force=True`` re-runs). A run whose parameters changed is re-run; its old
  ``result.json`` is kept as ``result.prev.json``.
* Failures: the executed notebook (with the failing cell's traceback) stays in the run
  folder next to ``error.json`` (error type, message, traceback, failing cell); the
  sweep continues and the summary lists every failure.
* Progress: one line per finished run and an overall ``tqdm`` bar.

Python::

    from ddkit.sweep import expand, sweep
    runs = expand(["params/demo.yaml"])          # validation only
    summary = sweep(["params/demo.yaml"], workers=2)
    summary.failed                                # [(run, error text), ...]

Command line: ``ddkit sweep params/demo.yaml --workers 2`` (see ``ddkit.cli``).
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import itertools
import json
import os
import re
import sys
import time
import traceback as _tb
from pathlib import Path
from typing import Any, Sequence

import yaml

from .params import Param
from .results import notebook_key, resolve_results_dir
from .utils import REPO_ROOT, atomic_write_bytes

__all__ = [
    "SweepRun",
    "SweepSummary",
    "expand",
    "load_grid_documents",
    "notebook_parameters",
    "notebook_spec",
    "resolve_notebook",
    "run_status",
    "execute_run",
    "sweep",
    "validate_params_file",
    "default_notebooks_dir",
]

GRID_KEYS = ("notebook", "description", "name", "params", "grid", "resources")
# a document holding only "defaults:" sets shared params/grid/name/resources for later documents
SWEEP_KEYS = ("run_name", "results_dir")
#: keys not compared when deciding whether a finished run matches the request
IGNORED_IN_MATCH = frozenset({"run_name", "results_dir", "data_root", "device"})
_NAME_OK = re.compile(r"[^A-Za-z0-9._=+-]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------- paths
def default_notebooks_dir() -> Path:
    """``<repo>/notebooks`` when ddkit runs from a checkout, else ``./notebooks``."""
    root = REPO_ROOT
    return root / "notebooks" if (root / "notebooks").is_dir() else Path.cwd() / "notebooks"


# --------------------------------------------------------------------------- notebook parameters
@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    default: Any  # the literal value, or the source text when it is not a literal
    type: type | None  # None: any value accepted
    help: str = ""


_ANNOTATION_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_PARAM_CACHE: dict[tuple[str, float], dict[str, ParamInfo]] = {}


def notebook_parameters(path: str | os.PathLike) -> dict[str, ParamInfo]:
    """The keys of a notebook's ``parameters`` cell with their defaults and types."""
    import papermill as pm

    path = Path(path).resolve()
    cache_key = (str(path), path.stat().st_mtime)
    if cache_key in _PARAM_CACHE:
        return _PARAM_CACHE[cache_key]
    try:
        raw = pm.inspect_notebook(str(path))
    except Exception as exc:
        raise ValueError(f"cannot read the parameters of notebook {path}: {exc}") from exc
    if not raw:
        raise ValueError(f"notebook {path} has no cell tagged 'parameters' (or it is empty)")
    out = {}
    for name, info in raw.items():
        text = info.get("default", "")
        try:
            default = ast.literal_eval(text)
            typ: type | None = None if default is None else type(default)
            if typ is tuple:
                typ = list
        except (ValueError, SyntaxError):
            default, typ = text, None
        ann = (info.get("inferred_type_name") or "None").strip()
        if ann in _ANNOTATION_TYPES:
            typ = _ANNOTATION_TYPES[ann]
        out[name] = ParamInfo(name, default, typ, info.get("help", ""))
    _PARAM_CACHE[cache_key] = out
    return out


_SPEC_CACHE: dict[tuple[str, float], dict[str, Param]] = {}


def notebook_spec(path: str | os.PathLike) -> dict[str, Param]:
    """The :class:`ddkit.params.Param` checks a notebook applies to its parameters, so that a sweep
    rejects before any run what the notebook's ``check_params(globals(), SPEC)`` would reject.

    The notebook's ``SPEC = ...`` (the first code cell assigning it) is evaluated together with the
    statements of that cell it needs (its imports and assignments, traced by name), nothing else
    of the notebook. A notebook without ``SPEC`` (a fixture, the report notebook) gets one check
    per parameter-cell key from its default: the default's type (ints accepted for a float key),
    any value for a ``None`` default."""
    path = Path(path).resolve()
    cache_key = (str(path), path.stat().st_mtime)
    if cache_key not in _SPEC_CACHE:
        params = notebook_parameters(path)
        source = _spec_source(path)
        if source is None:
            _SPEC_CACHE[cache_key] = {k: Param(i.type or object) for k, i in params.items()}
        else:
            namespace = {k: i.default for k, i in params.items()}
            try:
                exec(compile(source, f"{path.name} (SPEC)", "exec"), namespace)  # noqa: S102 - the notebook's own cell
            except Exception as exc:
                raise ValueError(f"notebook {path.name}: cannot evaluate its SPEC ({type(exc).__name__}: {exc})") \
                    from exc
            _SPEC_CACHE[cache_key] = dict(namespace["SPEC"])
    return _SPEC_CACHE[cache_key]


def _spec_source(path: Path) -> str | None:
    """The statements of the notebook's ``SPEC`` cell that ``SPEC = ...`` depends on (or None)."""
    import nbformat

    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []) or "SPEC" not in cell.source:
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError:
            continue
        at = next((i for i, st in enumerate(body) if isinstance(st, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "SPEC" for t in st.targets)), None)
        if at is not None:
            return ast.unparse(_needed_statements(body[:at + 1]))
    return None


def _needed_statements(body: list) -> list:
    """The last statement of ``body`` and, walking back, the imports and assignments it needs."""
    need = {n.id for n in ast.walk(body[-1].value) if isinstance(n, ast.Name)}
    kept = [body[-1]]
    for st in reversed(body[:-1]):
        if isinstance(st, (ast.Import, ast.ImportFrom)):
            names = [a for a in st.names if (a.asname or a.name.split(".")[0]) in need]
            if names:
                kept.append(type(st)(**{**{f: getattr(st, f) for f in st._fields}, "names": names}))
        elif isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id in need for t in st.targets):
            need |= {n.id for n in ast.walk(st.value) if isinstance(n, ast.Name)}
            kept.append(st)
    return ast.Module(body=kept[::-1], type_ignores=[])


def _check_value(key: str, value: Any, check: Param | None, info: ParamInfo, where: str) -> Any:
    """``value`` as the notebook will see it (``Param.validate``: an int for a float key becomes a float)."""
    if check is None:
        raise ValueError(f"{where}: key {key!r} is in the parameters cell but not in the notebook's SPEC, "
                         f"so the notebook would reject it")
    try:
        return check.validate(key, list(value) if isinstance(value, tuple) else value)
    except ValueError as exc:
        raise ValueError(f"{where}: key {key!r} expects {getattr(check.type, '__name__', check.type)} "
                         f"(notebook default {info.default!r}): {exc}") from None


def _check_key(key: str, spec: dict[str, ParamInfo], nb: Path, where: str) -> ParamInfo:
    if not isinstance(key, str):
        raise ValueError(f"{where}: parameter names must be strings, got {key!r}")
    if key not in spec:
        import difflib

        close = difflib.get_close_matches(key, list(spec), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"{where}: unknown key {key!r}{hint}; notebook {nb.name} declares: {', '.join(spec)}"
        )
    return spec[key]


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass
class SweepRun:
    """One papermill execution."""

    notebook: str  # absolute path of the input notebook
    key: str  # results folder of the notebook (``ddkit.results.notebook_key``)
    run_name: str
    params: dict  # the values the grid file sets (without run_name/results_dir)
    results_dir: str  # absolute
    source: str = ""  # "<file>[#doc]" it came from
    resources: dict = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.key}/{self.run_name}"

    @property
    def out_dir(self) -> Path:
        return Path(self.results_dir) / self.key / self.run_name

    @property
    def output_notebook(self) -> Path:
        return self.out_dir / Path(self.notebook).name

    def notebook_params(self) -> dict:
        """Everything papermill injects."""
        return {**self.params, "run_name": self.run_name, "results_dir": self.results_dir}


def load_grid_documents(path: str | os.PathLike) -> list[dict]:
    """The YAML documents of a grid file (``ValueError`` when malformed)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {path} does not exist")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: malformed YAML: {exc}") from exc
    if not docs:
        raise ValueError(f"{path}: empty grid file (expected a mapping with 'notebook', 'params', 'grid')")
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise ValueError(
                f"{_where(path, i, len(docs))}: expected a mapping (notebook/params/grid), "
                f"got {type(d).__name__}"
            )
    return docs


def _where(path: Path, i: int, n: int) -> str:
    return f"{path}" if n == 1 else f"{path} (document {i + 1})"


def resolve_notebook(name: str, notebooks_dir: Path | None = None, base_dir: Path | None = None) -> Path:
    """Find ``name`` under notebooks/, next to the grid file, or as given."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"'notebook' must be a notebook file name, got {name!r}")
    names = [name] if name.endswith(".ipynb") else [name + ".ipynb", name]
    p = Path(name).expanduser()
    dirs = [] if p.is_absolute() else [d for d in (notebooks_dir or default_notebooks_dir(), base_dir, Path.cwd()) if d]
    candidates = [Path(n).expanduser() for n in names] if p.is_absolute() else [Path(d) / n for d in dirs for n in names]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    looked = ", ".join(sorted({str(c.parent) for c in candidates}))
    raise ValueError(f"unknown notebook {name!r} (looked in {looked})")


def _infer_notebook(path: Path, notebooks_dir: Path | None) -> Path:
    """params/cpu/<stem>.yaml and params/paper/<stem>/*.yaml name their notebook."""
    for stem in (path.stem, path.parent.name):
        try:
            return resolve_notebook(stem, notebooks_dir)
        except ValueError:
            pass
    raise ValueError(
        f"{path}: no 'notebook:' key, and no notebook named {path.stem}.ipynb or "
        f"{path.parent.name}.ipynb under {notebooks_dir or default_notebooks_dir()}"
    )


def _name_value(v: Any) -> Any:
    if isinstance(v, str) and ("/" in v or os.sep in v or v.endswith(".npz")):
        return Path(v).stem
    if isinstance(v, (list, tuple)):
        return "-".join(str(_name_value(x)) for x in v)
    return v


def _sanitize(name: str) -> str:
    return _NAME_OK.sub("-", name).strip("-.") or "run"


def _grid_products(grid: Any, where: str) -> tuple[list[dict], list[str]]:
    if grid is None:
        return [{}], []
    blocks = grid if isinstance(grid, list) else [grid]
    if not blocks:
        raise ValueError(f"{where}: 'grid' is an empty list")
    combos: list[dict] = []
    keys: list[str] = []
    for b in blocks:
        if not isinstance(b, dict):
            raise ValueError(f"{where}: 'grid' must be a mapping key: [values] (or a list of them), got {b!r}")
        for k, vals in b.items():
            if not isinstance(vals, list):
                raise ValueError(f"{where}: grid key {k!r} must map to a list of values, got {vals!r}")
            if not vals:
                raise ValueError(f"{where}: grid key {k!r} has an empty list")
            if k not in keys:
                keys.append(k)
        ks = list(b)
        for vals in itertools.product(*(b[k] for k in ks)):
            combos.append(dict(zip(ks, vals)))
    return combos, keys


def _expand_document(
    doc: dict,
    path: Path,
    where: str,
    results_dir: Path,
    notebooks_dir: Path | None,
    overrides: dict | None,
    resources: dict | None,
    flat: bool,
) -> list[SweepRun]:
    if flat:
        nb = _infer_notebook(path, notebooks_dir)
        fixed, grid, template, res = dict(doc), None, None, {}
    else:
        unknown = [k for k in doc if k not in GRID_KEYS]
        if unknown:
            raise ValueError(
                f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))}; a grid file "
                f"has {', '.join(GRID_KEYS)} (parameters go under 'params:' or 'grid:')"
            )
        if "notebook" not in doc:
            raise ValueError(f"{where}: missing 'notebook:' (the notebook to run)")
        nb = resolve_notebook(doc["notebook"], notebooks_dir, path.parent)
        fixed = doc.get("params") or {}
        if not isinstance(fixed, dict):
            raise ValueError(f"{where}: 'params' must be a mapping key: value, got {fixed!r}")
        grid = doc.get("grid")
        template = doc.get("name")
        if template is not None and (not isinstance(template, str) or not template.strip()):
            raise ValueError(f"{where}: 'name' must be a non-empty template string, got {template!r}")
        res = doc.get("resources") or {}
        if not isinstance(res, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in res.values()
        ):
            raise ValueError(f"{where}: 'resources' must map names to numbers, e.g. {{GPU: 1}}, got {res!r}")
    if resources is not None:
        res = dict(resources)

    spec = notebook_parameters(nb)
    checks = notebook_spec(nb)
    missing = [k for k in SWEEP_KEYS if k not in spec]
    if missing:
        raise ValueError(
            f"notebook {nb.name} lacks the contract parameter(s) {', '.join(missing)} "
            f"the sweep sets (see docs/notebooks.md)"
        )
    fixed = dict(fixed)
    if "results_dir" in fixed:
        raise ValueError(f"{where}: 'results_dir' is set by the sweep (--results-dir), not by the grid file")
    if "run_name" in fixed:
        rn = fixed.pop("run_name")
        if template is None and rn:
            template = str(rn)
    for k, v in list(fixed.items()):
        fixed[k] = _check_value(k, v, checks.get(k), _check_key(k, spec, nb, where), where)
    for k, v in (overrides or {}).items():
        if k in SWEEP_KEYS:
            raise ValueError(f"--set {k}=...: {k} is set by the sweep itself")
        fixed[k] = _check_value(k, v, checks.get(k), _check_key(k, spec, nb, f"--set {k}"), f"--set {k}")
    combos, grid_keys = _grid_products(grid, where)
    for k in grid_keys:
        info = _check_key(k, spec, nb, where)
        if k in SWEEP_KEYS:
            raise ValueError(f"{where}: {k!r} cannot be a grid key (use 'name:' for run names)")
        if k in fixed and k not in (overrides or {}):
            raise ValueError(f"{where}: key {k!r} is both in 'params' and in 'grid'")
    for c in combos:
        for k, v in c.items():
            c[k] = _check_value(k, v, checks.get(k), spec[k], f"{where}: grid")
    defaults = {k: i.default for k, i in spec.items()}
    if template is None:
        stem = path.stem if path.stem != nb.stem else path.parent.name
        template = stem + "".join(f"_{k}{{{k}}}" for k in grid_keys)
    runs = []
    for i, c in enumerate(combos):
        values = {**fixed, **c}
        for k in overrides or {}:
            values[k] = fixed[k]  # --set wins over the grid
        ctx = {**defaults, **values, "notebook": nb.stem, "index": i}
        ctx = {k: _name_value(v) for k, v in ctx.items()}
        try:
            name = template.format_map(ctx)
        except KeyError as exc:
            raise ValueError(
                f"{where}: run-name template {template!r} uses unknown key {exc.args[0]!r}"
            ) from None
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"{where}: bad run-name template {template!r}: {exc}") from None
        runs.append(
            SweepRun(
                notebook=str(nb),
                key=notebook_key(nb.stem),
                run_name=_sanitize(name),
                params=values,
                results_dir=str(results_dir),
                source=where,
                resources=dict(res),
            )
        )
    return runs


def _check_defaults(d: Any, where: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: 'defaults' must be a mapping with params/grid/name/resources, got {d!r}")
    bad = [k for k in d if k not in ("params", "grid", "name", "resources")]
    if bad:
        raise ValueError(f"{where}: unknown key(s) under 'defaults': {', '.join(map(repr, bad))} "
                         f"(allowed: params, grid, name, resources)")
    for k in ("params", "grid", "resources"):
        if k in d and not isinstance(d[k], dict):
            raise ValueError(f"{where}: 'defaults.{k}' must be a mapping, got {d[k]!r}")
    return d


def _merge_defaults(shared: dict, doc: dict) -> dict:
    """Later documents inherit ``defaults``; their own values win (key by key)."""
    out = dict(doc)
    for k in ("params", "grid", "resources"):
        if k in shared:
            mine = doc.get(k) or {}
            if k == "grid" and isinstance(mine, list):
                out[k] = [{**shared[k], **b} if isinstance(b, dict) else b for b in mine]
                continue
            if not isinstance(mine, dict):
                continue  # reported by the validation of the document itself
            merged = {**shared[k], **mine}
            if k == "params":  # a key the document puts in its grid leaves the shared params
                grid_keys = set(doc["grid"]) if isinstance(doc.get("grid"), dict) else set().union(
                    *[set(b) for b in doc.get("grid") or [] if isinstance(b, dict)])
                merged = {kk: vv for kk, vv in merged.items() if kk not in grid_keys or kk in mine}
            if k == "grid":
                merged = {kk: vv for kk, vv in merged.items() if kk not in (doc.get("params") or {})}
            out[k] = merged
    if "name" in shared and "name" not in doc:
        out["name"] = shared["name"]
    return out


def _is_flat(doc: dict) -> bool:
    return "notebook" not in doc and not ({"params", "grid"} & set(doc))


def expand(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    results_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    resources: dict | None = None,
) -> list[SweepRun]:
    """Read and validate grid files; return every run (nothing is executed).

    Raises ``ValueError`` naming the file (and key) for malformed files, unknown
    notebooks, unknown keys, wrong types, empty grids and duplicate run names.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("no grid file given")
    results_dir = resolve_results_dir(results_dir).expanduser().resolve()
    nbdir = Path(notebooks_dir).expanduser().resolve() if notebooks_dir else None
    runs: list[SweepRun] = []
    for p in paths:
        p = Path(p)
        docs = load_grid_documents(p)
        shared: dict = {}
        for i, doc in enumerate(docs):
            where = _where(p, i, len(docs))
            if set(doc) == {"defaults"}:
                shared = _check_defaults(doc["defaults"], where)
                continue
            if shared and not _is_flat(doc):
                doc = _merge_defaults(shared, doc)
            runs += _expand_document(doc, p, where, results_dir, nbdir, overrides, resources, _is_flat(doc))
    seen: dict[str, SweepRun] = {}
    for r in runs:
        if r.label in seen:
            raise ValueError(
                f"duplicate run name {r.label!r} (from {seen[r.label].source} and {r.source}); "
                f"add the varying keys to the 'name:' template"
            )
        seen[r.label] = r
    return runs


def validate_params_file(path: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> list[SweepRun]:
    """Check that a params/grid file only uses keys (and types) its notebook declares."""
    return expand([path], results_dir=Path("/nonexistent-results"), notebooks_dir=notebooks_dir)


# --------------------------------------------------------------------------- status
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def run_status(run: SweepRun) -> tuple[str, str]:
    """``("done" | "changed" | "failed" | "missing" | "invalid", detail)``."""
    res = run.out_dir / "result.json"
    if res.is_file():
        try:
            data = json.loads(res.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except Exception as exc:
            return "invalid", f"unreadable result.json ({exc})"
        recorded = {}
        sj = run.out_dir / "sweep.json"
        if sj.is_file():
            try:
                recorded = json.loads(sj.read_text()).get("params", {}) or {}
            except Exception:
                recorded = {}
        got = {**recorded, **(data.get("params") or {})}
        diff = [
            k for k, v in run.params.items() if k not in IGNORED_IN_MATCH and (k not in got or not _same(got[k], v))
        ]
        if diff:
            return "changed", "params changed: " + ", ".join(f"{k} {got.get(k, '<missing>')!r} -> {run.params[k]!r}" for k in diff)
        return "done", ""
    if (run.out_dir / "error.json").is_file():
        return "failed", "failed before"
    return "missing", ""


# --------------------------------------------------------------------------- execution
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _atomic_json(path: Path, obj: Any) -> None:
    """``sweep.json`` / ``error.json``: any value rendered with ``str`` (tracebacks, paths)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def _failing_cell(nb_path: Path, cell_index: int | None) -> str:
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:  # the cell with an error output
            if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                return cell.source
        if cell_index is not None and 0 <= cell_index < len(nb.cells):
            return nb.cells[cell_index].source
    except Exception:
        pass
    return ""


def write_error(run: SweepRun, exc: BaseException | str, seconds: float = 0.0) -> dict:
    """Record a failure as ``<run>/error.json`` and return the record."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(exc, BaseException):
        ename = getattr(exc, "ename", type(exc).__name__)
        evalue = getattr(exc, "evalue", str(exc))
        tb = getattr(exc, "traceback", None)
        tb_text = _ANSI.sub("", "\n".join(tb)) if tb else "".join(_tb.format_exception(exc))
        cell_index = getattr(exc, "cell_index", None)
        exec_count = getattr(exc, "exec_count", None)
    else:
        ename, evalue, tb_text, cell_index, exec_count = "Error", str(exc), str(exc), None, None
    record = {
        "run_name": run.run_name,
        "notebook": run.notebook,
        "params": run.params,
        "error": f"{ename}: {evalue}",
        "ename": ename,
        "evalue": evalue,
        "traceback": tb_text,
        "cell_index": cell_index,
        "exec_count": exec_count,
        "cell_source": (getattr(exc, "source", None) if isinstance(exc, BaseException) else None)
        or _failing_cell(run.output_notebook, cell_index),
        "executed_notebook": str(run.output_notebook),
        "seconds": round(seconds, 3),
        "created": _now(),
    }
    _atomic_json(run.out_dir / "error.json", record)
    return record


def _error_line(record: dict) -> str:
    """``"<ename>: <last non-empty line of the message>"`` (what the traceback ends with): the summary line."""
    lines = [line for line in str(record["evalue"]).splitlines() if line.strip()]
    return f"{record['ename']}: {lines[-1] if lines else ''}"


def execute_run(
    run: SweepRun,
    kernel_name: str | None = None,
    timeout: float | None = None,
    threads: int | None = None,
) -> dict:
    """Execute one run with papermill. Never raises: returns an outcome dict.

    ``{"label", "status": "ok" | "failed", "seconds", "mean", "std", "error", "out_dir"}``
    """
    import papermill as pm

    t0 = time.time()
    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("error.json", *(p.name for p in out.glob(".*.tmp"))):  # + temp files of a killed write
        (out / stale).unlink(missing_ok=True)
    res = out / "result.json"
    if res.exists():  # params changed or unreadable: keep the old one aside
        os.replace(res, out / "result.prev.json")
    _atomic_json(out / "sweep.json", {"notebook": run.notebook, "params": run.params, "source": run.source, "started": _now()})
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    outcome = {"label": run.label, "run_name": run.run_name, "key": run.key, "out_dir": str(out)}
    try:
        kw = {"execution_timeout": timeout} if timeout else {}
        pm.execute_notebook(
            run.notebook,
            str(run.output_notebook),
            parameters=run.notebook_params(),
            kernel_name=kernel_name,
            progress_bar=False,
            cwd=str(Path(run.notebook).parent),
            **kw,
        )
        if not res.is_file():
            raise RuntimeError(f"the notebook finished but wrote no result.json in {out}")
        data = json.loads(res.read_text())
    except BaseException as exc:  # noqa: BLE001 - recorded, the sweep goes on
        if isinstance(exc, KeyboardInterrupt):
            write_error(run, "interrupted (KeyboardInterrupt)", time.time() - t0)
            raise
        rec = write_error(run, exc, time.time() - t0)
        return {**outcome, "status": "failed", "seconds": time.time() - t0, "error": _error_line(rec)}
    return {
        **outcome,
        "status": "ok",
        "seconds": time.time() - t0,
        "mean": data.get("mean"),
        "std": data.get("std"),
        "error": None,
    }


@dataclasses.dataclass
class SweepSummary:
    runs: list[SweepRun]
    done: list[tuple[SweepRun, dict]] = dataclasses.field(default_factory=list)
    skipped: list[SweepRun] = dataclasses.field(default_factory=list)
    failed: list[tuple[SweepRun, str]] = dataclasses.field(default_factory=list)
    pending: list[SweepRun] = dataclasses.field(default_factory=list)  # dry run / interrupted
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not (self.pending and not self.dry_run)

    def format(self) -> str:
        if self.dry_run:
            head = f"dry run: {len(self.runs)} runs, {len(self.pending)} to run, {len(self.skipped)} finished"
        else:
            head = (
                f"sweep: {len(self.runs)} runs: {len(self.done)} ran, {len(self.skipped)} skipped "
                f"(finished before), {len(self.failed)} failed"
                + (f", {len(self.pending)} not run" if self.pending else "")
                + f" in {self.seconds:.1f}s"
            )
        lines = [head]
        for r, err in self.failed:
            lines.append(f"  FAILED {r.label}: {err}  ({r.out_dir / 'error.json'})")
        return "\n".join(lines)


def _line(outcome: dict, i: int, n: int) -> str:
    w = len(str(n))
    if outcome["status"] == "ok":
        acc = ""
        if isinstance(outcome.get("mean"), (int, float)):
            acc = f"  acc {outcome['mean']:.2f}"
            if isinstance(outcome.get("std"), (int, float)):
                acc += f" ± {outcome['std']:.2f}"
        return f"[{i:>{w}}/{n}] ok     {outcome['label']}{acc}  ({outcome['seconds']:.1f}s)"
    return f"[{i:>{w}}/{n}] FAILED {outcome['label']}: {outcome['error']}  -> {outcome['out_dir']}/error.json"


def _describe(run: SweepRun) -> str:
    vals = " ".join(f"{k}={v!r}" for k, v in run.params.items())
    return f"{run.label}  [{vals}]"


def sweep(
    grid: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[SweepRun],
    workers: int = 1,
    scheduler: Any = None,
    results_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    resources: dict | None = None,
    dry_run: bool = False,
    force: bool = False,
    kernel_name: str | None = None,
    timeout: float | None = None,
    threads: int | None = None,
    gpus: Sequence[str] | None = None,
    progress: bool = True,
    out=None,
) -> SweepSummary:
    """Expand the grid file(s) and execute the runs that are not finished.

    ``workers``: local parallel runs (processes). ``scheduler``: a Dask scheduler
    address (``"tcp://host:8786"``), a ``distributed.Client`` or a cluster object; when
    given, runs are submitted there (with their ``resources``) instead. ``gpus`` (local
    only, e.g. ``["0", "1"]``): worker process i sees only ``gpus[i % len(gpus)]``
    (``CUDA_VISIBLE_DEVICES``), so ``workers=len(gpus)`` runs one notebook per GPU.
    """
    from tqdm.auto import tqdm

    out = out or sys.stdout
    t0 = time.time()
    if isinstance(grid, (list, tuple)) and grid and all(isinstance(g, SweepRun) for g in grid):
        runs = list(grid)
    else:
        runs = expand(grid, results_dir, notebooks_dir, overrides, resources)
    summary = SweepSummary(runs=runs, dry_run=dry_run)
    todo: list[SweepRun] = []
    for r in runs:
        status, detail = run_status(r)
        if status == "done" and not force:
            summary.skipped.append(r)
        else:
            todo.append(r)
            if dry_run:
                tag = {"done": "rerun (--force)", "missing": "run", "failed": "rerun (failed before)"}.get(status, f"rerun ({detail})")
                print(f"{tag:<22} {_describe(r)}", file=out)
    if dry_run:
        for r in summary.skipped:
            print(f"{'skip (finished)':<22} {_describe(r)}", file=out)
        summary.pending = todo
        print(summary.format(), file=out)
        return summary
    if summary.skipped:
        print(f"{len(summary.skipped)} of {len(runs)} runs finished before: skipped", file=out)
    if not todo:
        summary.seconds = time.time() - t0
        print(summary.format(), file=out)
        return summary
    if threads is None and scheduler is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    bar = tqdm(total=len(todo), desc="sweep", unit="run", disable=not progress, file=sys.stderr)
    count = 0

    def finished(run: SweepRun, outcome: dict) -> None:
        nonlocal count
        count += 1
        if outcome["status"] == "ok":
            summary.done.append((run, outcome))
        else:
            summary.failed.append((run, outcome["error"]))
        bar.update(1)
        tqdm.write(_line(outcome, count, len(todo)), file=out)

    kw = dict(kernel_name=kernel_name, timeout=timeout, threads=threads)
    try:
        if scheduler is not None:
            _run_dask(todo, scheduler, kw, finished)
        elif workers <= 1 and not gpus:
            for r in todo:
                finished(r, execute_run(r, **kw))
        else:
            _run_local(todo, max(1, workers), kw, finished, gpus)
    except KeyboardInterrupt:
        bar.close()
        finished_labels = {r.label for r, _ in summary.done} | {r.label for r, _ in summary.failed}
        summary.pending = [r for r in todo if r.label not in finished_labels]
        summary.seconds = time.time() - t0
        print("\ninterrupted; re-run the same command to continue (finished runs are skipped)", file=out)
        print(summary.format(), file=out)
        raise
    bar.close()
    summary.seconds = time.time() - t0
    print(summary.format(), file=out)
    return summary


def _init_worker(gpus, counter) -> None:
    """Each local worker process pins one GPU (round robin) before any kernel starts."""
    if gpus:
        with counter.get_lock():
            i = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])


def _run_local(todo: list[SweepRun], workers: int, kw: dict, finished, gpus: Sequence[str] | None = None) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                                  initializer=_init_worker, initargs=(list(gpus or []), ctx.Value("i", 0)))
    try:
        futs = {pool.submit(execute_run, r, **kw): r for r in todo}
        for f in cf.as_completed(futs):
            r = futs[f]
            try:
                outcome = f.result()
            except Exception as exc:  # worker died (e.g. killed): record it, go on
                rec = write_error(r, exc)
                outcome = {"label": r.label, "status": "failed", "error": rec["error"], "out_dir": str(r.out_dir), "seconds": 0.0}
            finished(r, outcome)
    except BaseException:  # Ctrl-C: interrupt the running notebooks (kernels shut down cleanly), then stop
        import signal

        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGINT)
            except (OSError, AttributeError):
                pass
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.time() + 15
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.time()))
            if p.is_alive():
                p.terminate()
        raise
    pool.shutdown(wait=True)


def _run_dask(todo: list[SweepRun], scheduler: Any, kw: dict, finished) -> None:
    from dask.distributed import Client, as_completed

    own = False
    if isinstance(scheduler, Client):
        client = scheduler
    else:
        client = Client(scheduler)  # an address or a cluster object
        own = True
    futs: dict = {}
    try:
        for r in todo:
            f = client.submit(
                execute_run,
                r,
                **kw,
                key=f"ddkit-sweep-{r.key}-{r.run_name}-{time.time_ns()}",
                resources=r.resources or None,
                pure=False,
            )
            futs[f.key] = (f, r)
        for f in as_completed([f for f, _ in futs.values()]):
            r = futs[f.key][1]
            try:
                outcome = f.result()
            except Exception as exc:  # the task itself died (worker lost, ...)
                try:
                    rec = write_error(r, exc)
                    err = rec["error"]
                except OSError:
                    err = f"{type(exc).__name__}: {exc}"
                outcome = {"label": r.label, "status": "failed", "error": err, "out_dir": str(r.out_dir), "seconds": 0.0}
            finished(r, outcome)
    except BaseException:
        for f, _ in futs.values():
            f.cancel()
        raise
    finally:
        if own:
            client.close()
