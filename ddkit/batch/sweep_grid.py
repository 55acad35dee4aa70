"""Papermill sweeps, the plan: grid files -> runs (:class:`SweepRun`); nothing is executed here
(``ddkit.batch.sweep`` executes them).

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

A folder stands for its ``*.yaml`` files (``ddkit sweep params/cpu`` runs them all); a notebook
(``ddkit sweep notebooks/00_quickstart.ipynb``) is one run named ``defaults`` with its own
defaults (``--set`` changes them).

Validation happens for every document of every file before any run starts: unknown
notebook, unknown key (not in the notebook's ``parameters`` cell,
``ddkit.runs.notebook_params.notebook_parameters``), a value the notebook's own ``CHECKS`` rejects (the same
``ddkit.runs.params.Rule`` checks ``check_params`` applies in the notebook: the literal's type, range,
choices; ``ddkit.runs.notebook_params.notebook_spec`` reads them with ``ast``), a combination the notebook's own checks
refuse (its ``RULES``, ``notebook_params.check_run``), a
``.npz`` dataset that does not exist, empty grid lists, duplicate run names
and malformed YAML raise ``ValueError`` naming the file and the key.

Python::

    from ddkit.batch.sweep_grid import expand
    runs = expand(["params/demo.yaml"])          # validation only
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..runs.notebook_params import check_key, check_run, check_value, default_notebooks_dir, notebook_parameters, \
    notebook_spec
from ..runs.results import notebook_key, resolve_results_dir

__all__ = ["SweepRun", "expand", "load_grid_documents", "resolve_notebook", "validate_params_file"]

GRID_KEYS = ("notebook", "description", "name", "params", "grid", "resources")
# a document holding only "defaults:" sets shared params/grid/name/resources for later documents
SWEEP_KEYS = ("run_name", "results_dir")
_NAME_OK = re.compile(r"[^A-Za-z0-9._=+-]+")


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass
class SweepRun:
    """One papermill execution."""

    notebook: str  # absolute path of the input notebook
    key: str  # results folder of the notebook (``ddkit.runs.results.notebook_key``)
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
    check_files: bool = True,
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
        fixed[k] = check_value(k, v, checks.get(k), check_key(k, spec, nb, where), where)
    for k, v in (overrides or {}).items():
        if k in SWEEP_KEYS:
            raise ValueError(f"--set {k}=...: {k} is set by the sweep itself")
        fixed[k] = check_value(k, v, checks.get(k), check_key(k, spec, nb, f"--set {k}"), f"--set {k}")
    combos, grid_keys = _grid_products(grid, where)
    for k in grid_keys:
        check_key(k, spec, nb, where)
        if k in SWEEP_KEYS:
            raise ValueError(f"{where}: {k!r} cannot be a grid key (use 'name:' for run names)")
        if k in fixed and k not in (overrides or {}):
            raise ValueError(f"{where}: key {k!r} is both in 'params' and in 'grid'")
    for c in combos:
        for k, v in c.items():
            c[k] = check_value(k, v, checks.get(k), spec[k], f"{where}: grid")
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
        check_run(nb, {**defaults, **values}, f"{where}: run {_sanitize(name)}", check_files)
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


def _grid_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files to expand: a folder stands for its ``*.yaml`` / ``*.yml`` files (sorted), a
    notebook (``.ipynb``) for one run with its defaults; ``ValueError`` for a folder without any."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise ValueError(f"{p} is a folder without grid files (*.yaml); give a grid or params file")
            files += found
        else:
            files.append(p)
    return files


def expand(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    results_dir: str | os.PathLike | None = None,
    notebooks_dir: str | os.PathLike | None = None,
    overrides: dict | None = None,
    resources: dict | None = None,
    check_files: bool = True,
) -> list[SweepRun]:
    """Read and validate grid files; return every run (nothing is executed).

    ``check_files=False`` skips the existence check of ``.npz`` datasets (files a user makes
    before running, e.g. the evidence subsets), for validating the files themselves.

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
    for p in _grid_files(paths):
        if p.suffix == ".ipynb":
            runs += _expand_document({"notebook": str(p.resolve()), "name": "defaults"}, p, str(p), results_dir,
                                     nbdir, overrides, resources, False, check_files)
            continue
        docs = load_grid_documents(p)
        shared: dict = {}
        for i, doc in enumerate(docs):
            where = _where(p, i, len(docs))
            if set(doc) == {"defaults"}:
                shared = _check_defaults(doc["defaults"], where)
                continue
            if shared and not _is_flat(doc):
                doc = _merge_defaults(shared, doc)
            runs += _expand_document(doc, p, where, results_dir, nbdir, overrides, resources, _is_flat(doc),
                                     check_files)
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
    return expand([path], results_dir=Path("/nonexistent-results"), notebooks_dir=notebooks_dir, check_files=False)

