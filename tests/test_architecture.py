"""docs/architecture.md matches the code: rooms, import direction, module sizes, quoted names.

* every module of the package is placed in exactly one room of the "## Rooms" table, and in the
  room its path says (``ddkit/<room>/x.py``; the contract modules and ``ddkit/models/`` at the top);
* every ddkit import of a module (at the top or inside a function, parsed with ``ast``) targets its
  own room or a room the table lets it import, and science (the contract modules, ``fast``,
  ``methods``, ``core``) never imports tooling (``reporting``, ``batch``, ``cli``), whatever the
  table says; the module graph has no cycle;
* no module is over 500 lines except ``ddkit/losses.py``;
* every name the page quotes in backticks as ``ddkit.<module>.<name>`` exists.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ddkit"
DOC = (REPO / "docs" / "architecture.md").read_text()
ROOM_PACKAGES = ("core", "fast", "runs", "methods", "reporting", "batch")
SCIENCE = {"core", "contract", "fast", "methods"}
TOOLING = {"reporting", "batch", "cli"}
MAX_LINES = 500
LONG_ALLOWED = {"ddkit.losses"}   # the papers' equations, one after another


def dotted(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: every module of the package except the package face and the rooms' docstring-only packages
MODULES = sorted(m for m in map(dotted, PKG.rglob("*.py"))
                 if m != "ddkit" and m not in {f"ddkit.{r}" for r in ROOM_PACKAGES})


def room_of_path(module: str) -> str:
    """The room a module's path puts it in."""
    top = module.split(".")[1]
    if top in ROOM_PACKAGES:
        return top
    return "cli" if top == "cli" else "contract"


def rooms(doc: str = DOC) -> dict[str, tuple[list[str], set[str]]]:
    """``{room: (modules, rooms it may import)}`` from the table under "## Rooms"."""
    section = doc.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("room", "---"):
            continue
        may = set() if cells[3] == "nothing" else {r.strip() for r in cells[3].split(",")}
        out[cells[0]] = (re.findall(r"`(ddkit[\w.]*)`", cells[2]), may)
    return out


def placed(doc: str = DOC) -> dict[str, str]:
    """``{module: room}``; a module listed twice fails."""
    out: dict[str, str] = {}
    for room, (mods, _) in rooms(doc).items():
        for m in mods:
            assert m not in out, f"{m} is listed in rooms {out[m]} and {room}"
            out[m] = room
    return out


def ddkit_imports(module: str) -> set[str]:
    """ddkit modules that ``module`` imports anywhere in its body (relative imports resolved;
    ``from pkg import name`` counts as the module ``pkg.name`` when that is a module)."""
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known = set(MODULES) | {"ddkit"} | {f"ddkit.{r}" for r in ROOM_PACKAGES}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ddkit":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found |= subs or {target}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ddkit"}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: ddkit_imports(m) for m in MODULES}


def test_the_page_has_the_rooms_and_quotes_names():
    assert set(rooms()) == {"contract", "cli", *ROOM_PACKAGES}
    assert len(quoted_names()) > 50


def test_every_module_is_in_the_room_its_path_says():
    where = placed()
    assert sorted(set(MODULES) - set(where)) == [], "modules missing from docs/architecture.md ## Rooms"
    assert sorted(set(where) - set(MODULES)) == [], "the rooms table names modules that do not exist"
    wrong = {m: (r, room_of_path(m)) for m, r in where.items() if r != room_of_path(m)}
    assert not wrong, f"listed room != room of the path: {wrong}"


def test_room_packages_hold_only_their_concern():
    for r in ROOM_PACKAGES:
        tree = ast.parse((PKG / r / "__init__.py").read_text())
        assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), f"ddkit/{r}/__init__.py: a docstring only"


def test_science_never_imports_tooling():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts
                 if room_of_path(m) in SCIENCE and room_of_path(t) in TOOLING)
    assert not bad, bad
    assert not SCIENCE & TOOLING


@pytest.mark.parametrize("module", MODULES)
def test_imports_follow_the_rooms_table(module):
    table = rooms()
    mine = room_of_path(module)
    allowed = table[mine][1] | {mine}
    bad = sorted(f"{t} ({room_of_path(t)})" for t in GRAPH[module] if room_of_path(t) not in allowed)
    assert not bad, f"{module} ({mine}, may import {sorted(allowed)}) imports {', '.join(bad)}"


def test_import_graph_has_no_cycles():
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(GRAPH[m]):
            visit(n, [*path, m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])


@pytest.mark.parametrize("module", MODULES)
def test_module_size(module):
    path = PKG.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES or module in LONG_ALLOWED, f"{path.relative_to(REPO)} has {n} lines (> {MAX_LINES})"


def quoted_names(doc: str = DOC) -> list[str]:
    """``ddkit.<module>.<name>`` quoted in backticks (signatures and calls cut at '('; file names such
    as ``report.md`` are not names; a module alone is checked by the rooms table)."""
    names = []
    for span in re.findall(r"`([^`\n]+)`", doc):
        head = re.split(r"[(\s\[=]", span.strip(), maxsplit=1)[0]
        if re.fullmatch(r"ddkit(\.\w+)+", head) and not re.search(r"\.(md|json|pt|png|py|ya?ml|ipynb|csv|tex)$", head):
            names.append(head)
    return names


def split_module(name: str) -> tuple[str, list[str]]:
    """``ddkit.a.b.c`` -> (the longest prefix that is a module or package, the attribute chain)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        mod = ".".join(parts[:i])
        if mod in MODULES or mod == "ddkit" or mod in {f"ddkit.{r}" for r in ROOM_PACKAGES}:
            return mod, parts[i:]
    raise AssertionError(f"docs/architecture.md quotes `{name}`, which names no ddkit module")


@pytest.mark.parametrize("name", sorted(set(quoted_names())))
def test_every_quoted_name_exists(name):
    mod, attrs = split_module(name)
    obj = importlib.import_module(mod)
    for a in attrs:
        assert hasattr(obj, a), f"docs/architecture.md quotes `{name}`, but {obj!r} has no {a!r}"
        obj = getattr(obj, a)


PAGES = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_name_quoted_in_the_other_pages_exists(page):
    """README.md, bench/README.md and docs/*.md quote ddkit names the same way; each must exist."""
    missing = []
    for name in sorted(set(quoted_names(page.read_text()))):
        mod, attrs = split_module(name)
        obj = importlib.import_module(mod)
        for a in attrs:
            if not hasattr(obj, a):
                missing.append(name)
                break
            obj = getattr(obj, a)
    assert not missing, f"{page.relative_to(REPO)} quotes names that do not exist: {missing}"


def test_the_checks_catch_a_wrong_room_an_upward_import_and_a_missing_module():
    """The rules on a made-up page and graph: each kind of mistake is seen."""
    page = ("## Rooms\n| room | concern | modules | may import |\n|---|---|---|---|\n"
            "| core | c | `ddkit.core.utils` | nothing |\n| runs | r | `ddkit.core.checks` | core |\n## Next\n")
    assert rooms(page) == {"core": (["ddkit.core.utils"], set()), "runs": (["ddkit.core.checks"], {"core"})}
    assert placed(page)["ddkit.core.checks"] != room_of_path("ddkit.core.checks")       # wrong room seen
    assert "ddkit.runs.results" in GRAPH["ddkit.methods.dm"]                            # an edge is seen
    assert room_of_path("ddkit.runs.results") not in rooms(page)["core"][1]             # would be refused
    assert "ddkit.cli" not in placed(page)                                              # missing module seen
    assert "ddkit.fast.storage" in GRAPH["ddkit.data"]                                  # `from .fast import storage`
