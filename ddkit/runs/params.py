"""Notebook parameters, declared once: the type of each key comes from its literal in the ``parameters``
cell, the notebook declares only the constraints of the keys that need them, and one call checks
everything before compute::

    CHECKS = {**COMMON, "lambda_cc": Range(0), "cc_form": Choice("squared", "exp")}
    P = check_params(globals(), CHECKS)

Every key of the parameters cell must hold a value of its default's type (an int is fine for a float
key) that its constraint allows; a key papermill injected that the parameters cell does not have (a typo
in a sweep file) is an error too. Errors are ``ValueError`` naming the key, the bad value and what is
allowed. A constraint's arguments are literals or names imported from ddkit, so a sweep reads the same
declaration from the notebook file (``ddkit.runs.notebook_params.notebook_spec``) without running it.
"""
from __future__ import annotations

import ast
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

__all__ = ["Range", "Choice", "Dataset", "Model", "Device", "RunName", "Augment", "ExistingFile", "Rule",
           "COMMON", "DM_FAMILY", "Params", "check_params", "parameters_cell", "require"]


class Constraint:
    """What a value (each item of a list value) must satisfy; :meth:`problem` says why it does not."""

    def problem(self, value) -> str | None:  # pragma: no cover - every constraint overrides it
        raise NotImplementedError


class _Text(Constraint):
    """A constraint on a string: any other value is refused before :meth:`text_problem` sees it."""

    def problem(self, v):
        return self.text_problem(v) if isinstance(v, str) else "is not a str"


@dataclass(frozen=True)
class Range(Constraint):
    """A finite number in ``[lo, hi]`` (``lo_open`` / ``hi_open``: the bound itself excluded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "is not a number"
        if isinstance(v, float) and not math.isfinite(v):
            return "is not a finite number"
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return f"is too small; expected {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return f"is too large; expected {'<' if self.hi_open else '<='} {self.hi}"
        return None


class Choice(Constraint):
    """One of ``options``: ``Choice("squared", "exp")`` or ``Choice(*PROTOCOLS)``."""

    def __init__(self, *options):
        self.options = tuple(options)

    def problem(self, v):
        return None if v in self.options else f"is not allowed; expected one of {list(self.options)}"

    def __eq__(self, other):
        return isinstance(other, Choice) and other.options == self.options

    def __hash__(self):
        return hash(self.options)

    def __repr__(self):
        return f"Choice{self.options!r}"


@dataclass(frozen=True)
class Dataset(_Text):
    """A ``ddkit.data.load_dataset`` name or a ``.npz`` path."""

    def text_problem(self, v):
        from ..data import DATASET_NAMES, is_dataset_name
        return None if is_dataset_name(v) else f": unknown dataset; expected one of {list(DATASET_NAMES)} or a .npz path"


@dataclass(frozen=True)
class Model(_Text):
    """A name of ``ddkit.models.MODEL_NAMES`` (``ignore_case``: in any case)."""

    ignore_case: bool = False

    def text_problem(self, v):
        from ..models import MODEL_NAMES
        names = {n.lower() for n in MODEL_NAMES} if self.ignore_case else set(MODEL_NAMES)
        return None if (v.lower() if self.ignore_case else v) in names else \
            f": unknown model; expected one of {list(MODEL_NAMES)}"


@dataclass(frozen=True)
class Device(_Text):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    def text_problem(self, v):
        ok = v in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", v)
        return None if ok else ": expected 'auto', 'cpu', 'cuda' or 'cuda:N'"


@dataclass(frozen=True)
class RunName(_Text):
    """A folder name: letters, digits and ``_ . = + -`` ('' = automatic)."""

    def text_problem(self, v):
        return None if re.fullmatch(r"[A-Za-z0-9_.=+-]*", v) and v not in (".", "..") else \
            ": use letters, digits and _ . = + - only (it becomes a folder name)"


@dataclass(frozen=True)
class Augment(_Text):
    """A DSA strategy string of ``ddkit.augment.DSA`` ('' = off)."""

    def text_problem(self, v):
        from ..augment import DSA
        try:
            DSA(v)
        except ValueError as exc:
            return f": {exc}"
        return None


@dataclass(frozen=True)
class ExistingFile(_Text):
    """A path to an existing file ('' = none)."""

    def text_problem(self, v):
        return None if not v or Path(v).is_file() else ": no such checkpoint file"


#: The constraints of the contract keys every method notebook has (the other contract keys need none).
COMMON = {"dataset": Dataset(), "ipc": Range(1), "model": Model(), "iterations": Range(0), "seed": Range(0),
          "device": Device(), "eval_model": Model(), "eval_epochs": Range(1), "num_eval": Range(1),
          "run_name": RunName()}
#: DM-family notebooks add these.
DM_FAMILY = {"batch_real": Range(1), "lr_img": Range(0, lo_open=True)}

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


def _coerce(key, value, typ):
    """``value`` as type ``typ`` (an int becomes a float for a float key); ``ValueError`` otherwise."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ValueError(f"{key} must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class Rule:
    """One parameter as checked: the type of its default literal, the type of a list's items, its constraint."""

    type: type | None  # None: any value (the default is None)
    item: type | None = None
    check: Constraint | None = None

    @classmethod
    def of(cls, default, check: Constraint | None = None) -> "Rule":
        """The rule of a parameter whose literal in the parameters cell is ``default``."""
        if default is None:
            return cls(None, None, check)
        if isinstance(default, (list, tuple)):
            kinds = {type(v) for v in default}
            item = float if kinds == {int, float} else kinds.pop() if len(kinds) == 1 else None
            return cls(list, item, check)
        return cls(type(default), None, check)

    def validate(self, key: str, value):
        """``value`` as the notebook uses it; ``ValueError`` naming ``key``, the value and what is allowed."""
        if self.type is None:
            return value
        if self.type is list and isinstance(value, tuple):
            value = list(value)
        value = _coerce(key, value, self.type)
        if self.type is list and self.item is not None:
            value = [_coerce(f"{key}[{i}]", v, self.item) for i, v in enumerate(value)]
        for v in value if self.type is list else [value]:
            if self.check is not None and (msg := self.check.problem(v)):
                raise ValueError(f"{key}={v!r}{'' if msg.startswith(':') else ' '}{msg}")
        return value


_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class Params(SimpleNamespace):
    """Validated parameters: attribute access, ``as_dict()`` for result records."""

    def as_dict(self) -> dict:
        return dict(vars(self))


def _literal_assignments(source: str) -> dict | None:
    """``{name: literal}`` of a cell made only of ``name = <literal>`` lines (None for any other cell)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    out = {}
    for st in body:
        target = st.targets[0] if isinstance(st, ast.Assign) and len(st.targets) == 1 else \
            st.target if isinstance(st, ast.AnnAssign) and st.value is not None else None
        if not isinstance(target, ast.Name):
            return None
        try:
            out[target.id] = ast.literal_eval(st.value)
        except ValueError:
            return None
        if isinstance(st, ast.AnnAssign) and ast.unparse(st.annotation) == "float" and type(out[target.id]) is int:
            out[target.id] = float(out[target.id])  # ``x: float = 2`` declares a float
    return out or None


def _is_injected(source: str) -> bool:
    return source.startswith("# Parameters\n")  # papermill's injected cell


def parameters_cell(namespace: dict) -> dict | None:
    """The defaults of the notebook's parameters cell, read from IPython's input history ``In``: the first
    executed cell made only of literal assignments (None outside IPython)."""
    for src in namespace.get("In", []) or []:
        if isinstance(src, str) and not _is_injected(src) and (found := _literal_assignments(src)):
            return found
    return None


def _injected_names(namespace) -> set:
    """Names assigned in papermill's injected cell."""
    return {k for src in namespace.get("In", []) or [] if isinstance(src, str) and _is_injected(src)
            for k in (_literal_assignments(src) or {})}


def check_params(namespace: dict, checks: dict | None = None, *, defaults: dict | None = None,
                 extra: dict | None = None) -> Params:
    """Check the notebook's parameters (``globals()``) against their defaults' types and ``checks``.

    ``defaults``: the parameters cell's literals, by default read from IPython's history ``In`` (Jupyter
    and papermill keep it, so a value papermill injects is held to the type of the cell's literal).
    Where the history lacks the cell (nbval, a plain script) nothing was injected: the values are the
    cell's own and their types are taken. ``extra``: values checked in place of namespace entries
    (sweeps and tests)."""
    checks, injected = checks or {}, _injected_names(namespace)
    if defaults is None:
        defaults = parameters_cell(namespace)
    if defaults is None:  # no parameters cell in the history: the values' own types, less the injected keys
        defaults = {k: v for k, v in namespace.items() if k in checks or (not k.startswith("_") and isinstance(
            v, (bool, int, float, str, list)) and k not in _IPYTHON_NAMES | injected)}
    stray = sorted(set(checks) - set(defaults))
    if stray:
        raise ValueError(f"constraints for {stray}, which the parameters cell does not have")
    unknown = sorted((injected | set(extra or {})) - set(defaults) - _IPYTHON_NAMES)
    if unknown:
        hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, defaults, 1)) else "")
                 for u in unknown]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}; this notebook takes {sorted(defaults)}")
    values = {**{k: namespace[k] for k in defaults if k in namespace}, **(extra or {})}
    missing = [k for k in defaults if k not in values]
    if missing:
        raise ValueError(f"parameter(s) {missing} missing from the parameters cell")
    return Params(**{k: Rule.of(d, checks.get(k)).validate(k, values[k]) for k, d in defaults.items()})


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: notebook-specific impossible settings."""
    if not condition:
        raise ValueError(message)
