"""What a notebook declares and accepts: its ``parameters`` cell (:func:`notebook_parameters`, read
with :mod:`ast`, whatever its comments say), its ``CHECKS`` (:func:`notebook_spec`: the same
``ddkit.runs.params.Rule`` checks ``check_params`` applies in the notebook: the literal's type, the
kit's or the declared range or choices) and its ``RULES`` (:func:`notebook_rules`), all read with
:mod:`ast`, none of the notebook run.

:func:`check_key` and :func:`check_value` hold one grid value against the first two and
:func:`check_run` a whole run against the rules, so a sweep rejects before any run what the notebook
would reject (``ValueError`` naming where the value came from).
"""
from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from typing import Any

from ..core.utils import REPO_ROOT
from .params import KNOWN, Rule, as_constraint, check_rules, rule_names

__all__ = ["ParamInfo", "notebook_parameters", "parameters_source", "papermill_blind_spots", "notebook_spec",
           "notebook_rules", "check_run", "check_key", "check_value", "default_notebooks_dir"]


def default_notebooks_dir() -> Path:
    """``<repo>/notebooks`` when ddkit runs from a checkout, else ``./notebooks``."""
    root = REPO_ROOT
    return root / "notebooks" if (root / "notebooks").is_dir() else Path.cwd() / "notebooks"


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One key of a notebook's ``parameters`` cell."""

    name: str
    default: Any  # the literal value, or the source text when it is not a literal
    type: type | None  # None: any value accepted
    help: str = ""


_ANNOTATION_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_PARAM_CACHE: dict[tuple[str, float], dict[str, ParamInfo]] = {}


def notebook_parameters(path: str | os.PathLike) -> dict[str, ParamInfo]:
    """The keys of a notebook's ``parameters`` cell with their defaults, types and help comments.

    The cell is parsed with :mod:`ast` (every top-level ``name = <literal>`` or
    ``name: type = <literal>``), so any comment is fine; :func:`papermill_blind_spots` lists the
    keys papermill's own line parser would miss (it reads ``=`` inside a comment as a second
    assignment and drops the line)."""
    path = Path(path).resolve()
    cache_key = (str(path), path.stat().st_mtime)
    if cache_key not in _PARAM_CACHE:
        source = parameters_source(path)
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise ValueError(f"notebook {path}: its parameters cell is not valid Python ({exc})") from exc
        lines = source.splitlines()
        out = {}
        for st in tree.body:
            info = _param_info(st, lines)
            if info is not None:
                out[info.name] = info
        if not out:
            raise ValueError(f"notebook {path}: its parameters cell assigns no parameter")
        _PARAM_CACHE[cache_key] = out
    return _PARAM_CACHE[cache_key]


def parameters_source(path: str | os.PathLike) -> str:
    """The source of the notebook's cell tagged ``parameters`` (``ValueError`` when there is none)."""
    import nbformat

    try:
        cells = nbformat.read(str(path), as_version=4).cells
    except Exception as exc:
        raise ValueError(f"cannot read notebook {path}: {exc}") from exc
    for cell in cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return cell.source
    raise ValueError(f"notebook {path} has no cell tagged 'parameters'")


def _param_info(st: ast.stmt, lines: list[str]) -> ParamInfo | None:
    """One assignment of the parameters cell as a :class:`ParamInfo` (None for anything else)."""
    if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
        name, value, ann = st.targets[0].id, st.value, None
    elif isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.value is not None:
        name, value, ann = st.target.id, st.value, ast.unparse(st.annotation).strip("'\"")
    else:
        return None
    try:
        default = ast.literal_eval(value)
        typ: type | None = None if default is None else (list if isinstance(default, tuple) else type(default))
    except ValueError:
        default, typ = ast.unparse(value), None
    if ann in _ANNOTATION_TYPES:
        typ = _ANNOTATION_TYPES[ann]
    tail = lines[value.end_lineno - 1].encode()[value.end_col_offset:].decode().strip()  # offsets count bytes
    return ParamInfo(name, default, typ, tail[1:].strip() if tail.startswith("#") else "")


def papermill_blind_spots(path: str | os.PathLike) -> list[str]:
    """The keys of the parameters cell that ``papermill.inspect_notebook`` does not report (papermill
    skips a line holding two ``=``, e.g. one in its comment); ``[]`` when it sees them all."""
    import logging

    import papermill as pm

    log = logging.getLogger("papermill.translators")
    level = log.level
    log.setLevel(logging.ERROR)  # its "Unable to parse line" warnings: the answer says the same
    try:
        seen = set(pm.inspect_notebook(str(path)))
    finally:
        log.setLevel(level)
    return [k for k in notebook_parameters(path) if k not in seen]


_SPEC_CACHE: dict[tuple[str, float], dict[str, Rule]] = {}


def notebook_spec(path: str | os.PathLike) -> dict[str, Rule]:
    """The :class:`ddkit.runs.params.Rule` of every key of a notebook's parameters cell: the type of its
    literal and its constraint from the notebook's ``CHECKS``, so that a sweep rejects before any run what
    the notebook's ``check_params(globals(), CHECKS)`` would reject.

    ``CHECKS = {...}`` (in the first code cell assigning it) is read with :mod:`ast`, not run: its values
    are constraint calls whose arguments are literals or names the same cell imports from ddkit
    (``Choice(*PROTOCOLS)``), and ``**NAME`` merges a dict imported from ddkit. Keys it does not list get
    their ``ddkit.runs.params.KNOWN`` constraint; a notebook without ``CHECKS`` (a fixture, the report
    notebook) gets the types and those alone."""
    path = Path(path).resolve()
    cache_key = (str(path), path.stat().st_mtime)
    if cache_key not in _SPEC_CACHE:
        params = notebook_parameters(path)
        body = _checks_cell(path)
        checks = {} if body is None else _read_checks(body, path.name)
        stray = sorted(set(checks) - set(params))
        if stray:
            raise ValueError(f"notebook {path.name}: CHECKS constrains {stray}, which its parameters cell lacks")
        _SPEC_CACHE[cache_key] = {k: _rule(i, as_constraint(checks[k]) if k in checks else KNOWN.get(k))
                                  for k, i in params.items()}
    return _SPEC_CACHE[cache_key]


def _rule(info: ParamInfo, check) -> Rule:
    """The rule of one parameters-cell key: its annotation's or its literal's type, ``check``."""
    if info.type is None or info.type is list:
        return Rule.of(info.default if info.type is not None else None, check)
    return Rule(info.type, None, check)


def _checks_cell(path: Path, name: str = "CHECKS") -> list | None:
    """The statements of the first code cell (not the parameters cell) that assigns ``name``."""
    import nbformat

    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []) or name not in cell.source:
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError:
            continue
        if _assignment_index(body, name) is not None:
            return body
    return None


def _ddkit_imports(body: list) -> dict[str, Any]:
    """``{name: object}`` of the ``from ddkit... import name`` statements of ``body``, imported."""
    import importlib

    out = {}
    for st in body:
        if isinstance(st, ast.ImportFrom) and st.level == 0 and (st.module or "").split(".")[0] == "ddkit":
            module = importlib.import_module(st.module)
            out.update({a.asname or a.name: getattr(module, a.name) for a in st.names})
    return out


def _read_checks(body: list, where: str) -> dict:
    """The value of ``CHECKS = {...}`` in ``body``, evaluated from literals and ddkit's names only."""
    names = _ddkit_imports(body)

    def value(node):
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.Subscript):
            return value(node.value)[value(node.slice)]
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                out.update(value(v) if k is None else {ast.literal_eval(k): value(v)})
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            args = []
            for a in node.args:
                args.extend(value(a.value) if isinstance(a, ast.Starred) else [value(a)])
            return names[node.func.id](*args, **{kw.arg: value(kw.value) for kw in node.keywords})
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise ValueError(f"notebook {where}: CHECKS holds {ast.unparse(node)!r}; use literals, names imported "
                             f"from ddkit and calls of them (it is read, not run)") from None

    return value(body[_assignment_index(body, "CHECKS")].value)


def _assignment_index(body: list, name: str) -> int | None:
    """Index of the first statement of ``body`` assigning ``name`` (or None)."""
    return next((i for i, st in enumerate(body) if isinstance(st, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == name for t in st.targets)), None)


_RULES_CACHE: dict[tuple[str, float], dict[str, str]] = {}


def notebook_rules(path: str | os.PathLike) -> dict[str, str]:
    """The notebook's ``RULES = {expression: message}`` (cross-key conditions its
    ``check_params(globals(), CHECKS, RULES)`` applies), read with :mod:`ast`; ``{}`` when it has none.
    ``ValueError`` when it is not a dict of string literals, or a rule reads a name the parameters cell
    lacks."""
    path = Path(path).resolve()
    cache_key = (str(path), path.stat().st_mtime)
    if cache_key not in _RULES_CACHE:
        body = _checks_cell(path, "RULES")
        rules = {}
        if body is not None:
            node = body[_assignment_index(body, "RULES")].value
            try:
                rules = ast.literal_eval(node)
            except ValueError:
                rules = None
            if not isinstance(rules, dict) or not all(isinstance(v, str) for kv in rules.items() for v in kv):
                raise ValueError(f"notebook {path.name}: RULES must be a dict of string literals "
                                 f"{{expression: message}} (it is read, not run)")
            params = notebook_parameters(path)
            for rule in rules:
                unknown = [n for n in rule_names(rule) if n not in params]
                if unknown:
                    raise ValueError(f"notebook {path.name}: rule {rule!r} reads {unknown}, not parameters")
        _RULES_CACHE[cache_key] = rules
    return _RULES_CACHE[cache_key]


def check_run(path: str | os.PathLike, values: dict, where: str, check_files: bool = True) -> None:
    """Apply the notebook's ``RULES`` (:func:`notebook_rules`) to one run's full values (defaults plus
    what the run sets) and, with ``check_files``, check that a ``.npz`` dataset exists (relative paths
    are taken from the notebook's folder, where papermill runs it); ``ValueError`` naming ``where``."""
    path = Path(path).resolve()
    dataset = values.get("dataset")
    if check_files and isinstance(dataset, str) and dataset.endswith(".npz"):
        file = Path(dataset).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            raise ValueError(f"{where}: dataset {dataset!r}: no such file ({file})")
    try:
        check_rules(values, notebook_rules(path))
    except ValueError as exc:
        raise ValueError(f"{where}: notebook {path.name} would refuse these parameters: {exc}") from None


def check_value(key: str, value: Any, rule: Rule, info: ParamInfo, where: str) -> Any:
    """``value`` as the notebook will see it (``Rule.validate``: an int for a float key becomes a float)."""
    try:
        return rule.validate(key, value)
    except ValueError as exc:
        type_name = getattr(rule.type, "__name__", "any value")
        raise ValueError(f"{where}: key {key!r} expects {type_name} (notebook default {info.default!r}): "
                         f"{exc}") from None


def check_key(key: str, spec: dict[str, ParamInfo], nb: Path, where: str) -> ParamInfo:
    """``spec[key]``; ``ValueError`` for a key notebook ``nb`` does not declare (with close matches)."""
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

