"""What a notebook declares and accepts: its ``parameters`` cell (:func:`notebook_parameters`, read
with ``papermill.inspect_notebook``) and its ``SPEC`` (:func:`notebook_spec`, the same
``ddkit.params.Param`` checks ``check_params`` applies in the notebook: type, range, choices).

:func:`check_key` and :func:`check_value` hold one grid value against both, so a sweep rejects
before any run what the notebook would reject (``ValueError`` naming where the value came from).
"""
from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path
from typing import Any

from .params import Param
from .utils import REPO_ROOT

__all__ = ["ParamInfo", "notebook_parameters", "notebook_spec", "check_key", "check_value", "default_notebooks_dir"]


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


def check_value(key: str, value: Any, check: Param | None, info: ParamInfo, where: str) -> Any:
    """``value`` as the notebook will see it (``Param.validate``: an int for a float key becomes a float)."""
    if check is None:
        raise ValueError(f"{where}: key {key!r} is in the parameters cell but not in the notebook's SPEC, "
                         f"so the notebook would reject it")
    try:
        return check.validate(key, list(value) if isinstance(value, tuple) else value)
    except ValueError as exc:
        raise ValueError(f"{where}: key {key!r} expects {getattr(check.type, '__name__', check.type)} "
                         f"(notebook default {info.default!r}): {exc}") from None


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

