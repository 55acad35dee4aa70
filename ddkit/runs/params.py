"""Strict parameter checks for notebooks: run right after the ``parameters`` cell, before compute.

    SPEC = {**COMMON, **DM_FAMILY, "lambda_cc": Param(float, min=0)}
    P = check_params(globals(), SPEC)

Every key of ``SPEC`` must be defined with the right type and an allowed value; a key that
papermill injected but ``SPEC`` does not know (a typo in a sweep file) is an error too. Errors are
``ValueError`` naming the key, the bad value and what is allowed.
"""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type, allowed range/choices, an extra check and a help text."""

    type: type
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    item: type | None = None  # element type for lists
    min_exclusive: bool = False
    help: str = ""

    def validate(self, key: str, value):
        value = _coerce(key, value, self.type)
        items = value if self.type is list else [value]
        if self.type is list and self.item is not None:
            items = [_coerce(f"{key}[{i}]", v, self.item) for i, v in enumerate(value)]
            value = items
        for v in items:
            if self.choices is not None and v not in self.choices:
                raise ValueError(f"{key}={v!r} is not allowed; expected one of {list(self.choices)}")
            if self.min is not None and (v < self.min or (self.min_exclusive and v == self.min)):
                raise ValueError(f"{key}={v!r} is too small; expected {'>' if self.min_exclusive else '>='} "
                                 f"{self.min}")
            if self.max is not None and v > self.max:
                raise ValueError(f"{key}={v!r} is too large; expected <= {self.max}")
            if self.check is not None and (msg := self.check(v)):
                raise ValueError(f"{key}={v!r}: {msg}")
        return value


def _coerce(key, value, typ):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ValueError(f"{key} must be {_TYPE_NAMES.get(typ, typ.__name__)}, got "
                         f"{type(value).__name__} {value!r}")
    return value


def _dataset_check(v):
    from ..data import DATASET_NAMES, is_dataset_name
    return None if is_dataset_name(v) else f"unknown dataset; expected one of {list(DATASET_NAMES)} or a .npz path"


def _model_check(v):
    from ..models import MODEL_NAMES
    return None if v in MODEL_NAMES else f"unknown model; expected one of {list(MODEL_NAMES)}"


def _device_check(v):
    ok = v in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", v)
    return None if ok else "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _run_name_check(v):
    return None if re.fullmatch(r"[A-Za-z0-9_.=+-]*", v) and v not in (".", "..") else \
        "use letters, digits and _ . = + - only (it becomes a folder name)"


#: The contract keys every method notebook has.
COMMON = {
    "dataset": Param(str, check=_dataset_check, help="load_dataset name or .npz path"),
    "data_root": Param(str, help="'' = default data folder"),
    "ipc": Param(int, min=1, help="images per class"),
    "model": Param(str, check=_model_check, help="distillation/matching model"),
    "iterations": Param(int, min=0, help="distillation updates"),
    "seed": Param(int, min=0),
    "device": Param(str, check=_device_check),
    "eval_model": Param(str, check=_model_check),
    "eval_epochs": Param(int, min=1),
    "num_eval": Param(int, min=1, help="networks trained in evaluation"),
    "run_name": Param(str, check=_run_name_check, help="'' = automatic"),
    "results_dir": Param(str, help="'' = $DDKIT_RESULTS, else the repository's results/ (ddkit.runs.results.resolve_results_dir)"),
}
#: DM-family notebooks add these.
DM_FAMILY = {
    "batch_real": Param(int, min=1, help="real images per class per iteration"),
    "lr_img": Param(float, min=0, min_exclusive=True, help="learning rate of the synthetic images"),
}

_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class Params(SimpleNamespace):
    """Validated parameters: attribute access, ``as_dict()`` for result records."""

    def as_dict(self) -> dict:
        return dict(vars(self))


def _injected_names(namespace) -> set:
    """Names assigned in papermill's injected cell (its source starts with '# Parameters')."""
    names = set()
    for src in namespace.get("In", []) or []:
        if isinstance(src, str) and src.lstrip().startswith("# Parameters"):
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def check_params(namespace: dict, spec: dict, extra: dict | None = None) -> Params:
    """Validate the notebook's parameters (``globals()``) against ``spec``; see module docstring.

    ``extra``: values to check in place of namespace entries (used by sweeps and tests).
    """
    values = {**{k: namespace[k] for k in spec if k in namespace}, **(extra or {})}
    unknown = sorted((_injected_names(namespace) | set(extra or {})) - set(spec) - _IPYTHON_NAMES)
    if unknown:
        hints = [f"{u!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, spec, 1)) else "")
                 for u in unknown]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}; this notebook takes {sorted(spec)}")
    missing = [k for k in spec if k not in values]
    if missing:
        raise ValueError(f"parameter(s) {missing} missing from the parameters cell")
    return Params(**{k: spec[k].validate(k, values[k]) for k in spec})


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``: notebook-specific impossible settings."""
    if not condition:
        raise ValueError(message)
