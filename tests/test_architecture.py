"""docs/architecture.md matches the code: names exist, every module is placed, imports point down.

* every name the page quotes in backticks as ``ddkit.<module>.<name>`` (or ``<module>.<name>``
  for a ddkit module) exists (attribute chains such as ``ddkit.augment.DSA.apply`` too);
* every module of the package appears in exactly one layer of the "## Layers" list;
* every ddkit import of a module (at the top or inside a function, parsed with ``ast``) targets a
  module of a lower layer, so the graph has no cycles (checked separately as well).
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()
MODULES = sorted(p.stem for p in (REPO / "ddkit").glob("*.py") if p.stem != "__init__")


def layers(doc: str = DOC) -> dict[str, int]:
    """``{module: layer number}`` from the numbered list under "## Layers"."""
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"(\d+)\.\s", line)
        if m:
            for mod in re.findall(r"`ddkit\.(\w+)`", line):
                assert mod not in out, f"ddkit.{mod} is listed in two layers"
                out[mod] = int(m.group(1))
    return out


def ddkit_imports(module: str) -> set[str]:
    """ddkit modules that ``ddkit/<module>.py`` imports anywhere in its body."""
    tree = ast.parse((REPO / "ddkit" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:   # from .x import y / from . import x
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.level == 0 and node.module and node.module.split(".")[0] == "ddkit":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ddkit.")}
    return (found & set(MODULES)) - {module}


def quoted_names(doc: str = DOC) -> list[str]:
    """``ddkit.mod.name`` / ``mod.name`` quoted in backticks (signatures and calls cut at '('; file
    names such as ``report.md`` are not names)."""
    names = []
    for span in re.findall(r"`([^`\n]+)`", doc):
        head = re.split(r"[(\s\[=]", span.strip(), maxsplit=1)[0]
        parts = head.split(".")
        if re.search(r"\.(md|json|pt|png|py|ya?ml|ipynb|csv|tex)$", head):
            continue   # a file name such as `report.md`, not a Python name
        if parts[0] == "ddkit" and len(parts) >= 3 and parts[1] in MODULES:
            names.append(head)
        elif parts[0] in MODULES and len(parts) >= 2:
            names.append("ddkit." + head)
    return names


def test_the_page_quotes_names_and_places_modules():
    assert len(quoted_names()) > 50 and len(layers()) >= 10


@pytest.mark.parametrize("name", sorted(set(quoted_names())))
def test_every_quoted_name_exists(name):
    _, mod, *attrs = name.split(".")
    obj = importlib.import_module(f"ddkit.{mod}")
    for a in attrs:
        assert hasattr(obj, a), f"docs/architecture.md quotes `{name}`, but {obj!r} has no {a!r}"
        obj = getattr(obj, a)


def test_every_module_is_in_one_layer():
    placed = layers()
    assert sorted(set(MODULES) - set(placed)) == [], "modules missing from docs/architecture.md ## Layers"
    assert sorted(set(placed) - set(MODULES)) == [], "layers name modules that do not exist"


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_to_lower_layers(module):
    placed = layers()
    up = sorted(m for m in ddkit_imports(module) if placed.get(m, 99) >= placed.get(module, 0))
    assert not up, (f"ddkit.{module} (layer {placed.get(module)}) imports "
                    + ", ".join(f"ddkit.{m} (layer {placed.get(m)})" for m in up))


def test_import_graph_has_no_cycles():
    graph = {m: ddkit_imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])


def test_the_checks_catch_an_upward_import_and_a_missing_module():
    """The layer parser and the import rule on a made-up page: a wrong order is seen."""
    page = "## Layers\n1. `ddkit.runs.results`\n2. `ddkit.core.utils`\n## Rooms\n"
    placed = layers(page)
    assert placed == {"results": 1, "utils": 2}
    assert "utils" in ddkit_imports("results") and placed["utils"] >= placed["results"]   # would fail
    assert "cli" not in placed
