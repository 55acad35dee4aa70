"""Notebook parameters, declared once: the type of each key comes from its literal in the ``parameters``
cell, the keys the kit knows (:data:`KNOWN`: ``dataset``, ``ipc``, ``seed``, ``lr_img``, ``compile``, ...)
carry their constraints wherever they appear, a notebook declares only its own keys' constraints and its
cross-key rules, and one call checks everything before compute::

    CHECKS = {"lambda_cc": "[0, inf)", "cc_form": ["squared", "exp"]}
    RULES = {"not use_cm or ipc * factor ** 2 >= 2": "the covariance term needs 2 samples per class"}
    P = check_params(globals(), CHECKS, RULES)

Every key of the parameters cell must hold a value of its default's type (an int is fine for a float
key) that its constraint allows; a key papermill injected that the parameters cell does not have (a typo
in a sweep file) is an error too. A constraint is written as a literal (:func:`as_constraint`: an interval
``"[0, 1)"`` or a list of the allowed values) or as a constraint object (:class:`Range`, :class:`Choice`,
:class:`Model`, ...). A rule is a Python expression over the parameter names (comparisons,
arithmetic, ``and``/``or``/``not``, ``len``/``min``/``max``/``set``) that must hold. Errors are
``ValueError`` naming the key, the bad value and what is allowed. A constraint's arguments are literals or
names imported from ddkit and rules are text, so a sweep reads the same declaration from the notebook file
(``ddkit.runs.notebook_params.notebook_spec`` / ``notebook_rules``) without running any of it.
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
           "KNOWN", "Params", "as_constraint", "check_params", "check_rules", "parameters_cell"]


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


_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf)"
_INTERVAL = re.compile(rf"\s*([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])\s*")


def as_constraint(check) -> Constraint:
    """A constraint from its literal form: an interval string in the usual notation (``"[0, inf)"``: at
    least 0; ``"(0, inf)"``: positive; ``"[0, 1)"``; ``inf`` / ``-inf`` for no bound) is a :class:`Range`,
    a list or tuple of values is a :class:`Choice`, a constraint object is itself."""
    if isinstance(check, Constraint):
        return check
    if isinstance(check, (list, tuple)):
        return Choice(*check)
    if isinstance(check, str) and (m := _INTERVAL.fullmatch(check)):
        lo, hi = float(m[2]), float(m[3])
        if lo > hi:
            raise ValueError(f"interval {check!r}: the lower bound is above the upper one")
        bound = lambda x: None if math.isinf(x) else (int(x) if x.is_integer() else x)  # noqa: E731
        return Range(bound(lo), bound(hi), lo_open=m[1] == "(" and bound(lo) is not None,
                     hi_open=m[4] == ")" and bound(hi) is not None)
    raise ValueError(f"constraint {check!r}: write an interval such as '[0, inf)' or '(0, 1]', a list of the "
                     f"allowed values, or a constraint object (Range, Choice, Model, ...)")


#: Constraints of the keys the kit knows, applied wherever a notebook's parameters cell has the key (a
#: notebook's ``CHECKS`` adds its own keys and may override one of these): the contract keys, the
#: DM-family loop (``batch_real``, ``lr_img``, ``momentum_img``, ``image_step``), the evaluation and speed
#: settings, resume, and IDM's queue (``idm_*``).
KNOWN = {
    "dataset": Dataset(), "ipc": Range(1), "model": Model(), "iterations": Range(0), "seed": Range(0),
    "device": Device(), "eval_model": Model(), "eval_epochs": Range(1), "num_eval": Range(1), "run_name": RunName(),
    "batch_real": Range(1), "lr_img": Range(0, lo_open=True), "momentum_img": Range(0, 1, hi_open=True),
    "image_step": Choice("auto", "joint", "per_class"), "eval_models": Model(), "eval_every": Range(0),
    "compile": Choice("auto", "on", "off"), "amp": Choice("off", "bf16", "fp16"),
    "eval_amp": Choice("off", "bf16", "fp16"), "checkpoint_every": Range(1),
    "idm_max_nets": Range(1), "idm_interval": Range(1), "idm_train_steps": Range(0), "idm_train_batch": Range(1),
}

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


def check_params(namespace: dict, checks: dict | None = None, rules: dict | None = None, *,
                 defaults: dict | None = None, extra: dict | None = None) -> Params:
    """Check the notebook's parameters (``globals()``) against their defaults' types, :data:`KNOWN` and
    ``checks`` (``{key: constraint}``, overriding :data:`KNOWN`), then ``rules`` (:func:`check_rules`).

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
    checks = {**KNOWN, **{k: as_constraint(c) for k, c in checks.items()}}
    params = {k: Rule.of(d, checks.get(k)).validate(k, values[k]) for k, d in defaults.items()}
    check_rules(params, rules or {})
    return Params(**params)


#: What a rule may call besides the parameters.
RULE_FUNCTIONS = {"len": len, "min": min, "max": max, "abs": abs, "set": set, "any": any, "all": all}
_RULE_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
               ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Compare, ast.Eq, ast.NotEq,
               ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot, ast.IfExp, ast.Call,
               ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Subscript)


def rule_names(rule: str) -> list[str]:
    """The names a rule reads, in order of first use; ``ValueError`` for anything but an expression of
    the allowed forms (it is evaluated, so it may not reach attributes, lambdas or other functions)."""
    try:
        tree = ast.parse(rule, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"rule {rule!r} is not a Python expression ({exc.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _RULE_NODES) or (isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id in RULE_FUNCTIONS and not node.keywords)):
            raise ValueError(f"rule {rule!r}: {ast.unparse(node) if hasattr(node, 'lineno') else type(node).__name__}"
                             f" is not allowed (parameters, literals, operators and {sorted(RULE_FUNCTIONS)})")
    return list(dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in RULE_FUNCTIONS))


def check_rules(params: dict, rules: dict) -> None:
    """``rules`` is ``{expression: message}``: each expression, over the parameter names, must hold;
    ``ValueError(message)`` with the values it read otherwise (an unknown name is an error too)."""
    for rule, message in rules.items():
        names = rule_names(rule)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"rule {rule!r} reads {unknown}, which are not parameters of this notebook")
        if not eval(compile(rule, "<rule>", "eval"), {"__builtins__": {}, **RULE_FUNCTIONS},  # noqa: S307
                    {n: params[n] for n in names}):
            here = ", ".join(f"{n}={params[n]!r}" for n in names)
            raise ValueError(f"{message} (rule: {rule}; here {here})")
