"""Copies between notebooks are marked and kept in sync; unmarked copies are refused.

A notebook may repeat another notebook's cell on purpose (the reader of one notebook should see the
whole recipe). Such a code cell starts with the marker line (as diffusers' ``# Copied from``)::

    # Copied from notebooks/01_gan_global_local.ipynb: stage1

naming the source notebook and the tag of its source cell; the rest of the cell must equal that cell,
character for character. Any other block of :data:`BLOCK` or more consecutive code lines that two
notebooks share is refused: mark it as a copy, or move it into ddkit. Lines are compared after
stripping indentation and trailing comments; blank lines, comments, imports and lines of brackets
only are skipped. A call or a dict literal that shares :data:`KEYWORDS` or more ``key=value`` pairs
with one of another notebook is a copy too, in whatever order its arguments are written. The ``parameters`` cells are not compared (docs/notebooks.md prescribes their
contract keys).
"""
from __future__ import annotations

import ast
import itertools
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BLOCK = 6
KEYWORDS = 12
MARKER = re.compile(r"# Copied from (notebooks/[\w.-]+\.ipynb): ([\w-]+)")
_PUNCTUATION = re.compile(r"^[\s()\[\]{},:;.]*$")
_TRAILING_COMMENT = re.compile(r"\s+#(?![^\"']*[\"']).*$")


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


def marked_copy(cell) -> tuple[str, str] | None:
    """``(source notebook, tag)`` of a cell whose first line is the copy marker, else None."""
    m = MARKER.fullmatch(cell.source.split("\n", 1)[0].strip())
    return (m.group(1), m.group(2)) if m else None


def _import_lines(source: str) -> set[int]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython syntax: every line counts
        return set()
    return {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in range(node.lineno, node.end_lineno + 1)}


def cell_lines(source: str) -> list[str]:
    """The cell's code lines as compared (see the module docstring)."""
    imports, out = _import_lines(source), []
    for n, line in enumerate(source.splitlines(), 1):
        code = _TRAILING_COMMENT.sub("", line.strip())
        if n not in imports and code and not code.startswith(("#", "%", "!")) and not _PUNCTUATION.match(code):
            out.append(code)
    return out


def compared_cells(path: Path) -> list[tuple[int, str]]:
    """``(code cell index, source)`` of the cells that must not repeat another notebook's code."""
    return [(i, c.source) for i, c in enumerate(code_cells(path))
            if not marked_copy(c) and "parameters" not in c.metadata.get("tags", [])]


def keyword_sets(path: Path) -> list[tuple[int, frozenset]]:
    """The ``key=value`` pairs (as written, order ignored) of every call and dict literal with at least
    :data:`KEYWORDS` of them, with the index of its code cell."""
    out = []
    for i, source in compared_cells(path):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                pairs = {(k.arg, ast.unparse(k.value)) for k in node.keywords if k.arg}
            elif isinstance(node, ast.Dict):
                pairs = {(ast.unparse(k), ast.unparse(v)) for k, v in zip(node.keys, node.values) if k is not None}
            else:
                continue
            if len(pairs) >= KEYWORDS:
                out.append((i, frozenset(pairs)))
    return out


def blocks(path: Path) -> dict[tuple, int]:
    """Every run of :data:`BLOCK` consecutive compared lines of an unmarked, non-parameters cell,
    with the index of its code cell."""
    out = {}
    for i, source in compared_cells(path):
        lines = cell_lines(source)
        for k in range(len(lines) - BLOCK + 1):
            out.setdefault(tuple(lines[k:k + BLOCK]), i)
    return out


COPIES = [(nb, i) for nb in NOTEBOOKS for i, c in enumerate(code_cells(nb)) if marked_copy(c)]


def test_there_are_marked_copies():
    assert len(COPIES) >= 2


@pytest.mark.parametrize("nb, i", COPIES, ids=[f"{nb.stem}[{i}]" for nb, i in COPIES])
def test_a_marked_copy_equals_its_source(nb, i):
    cell = code_cells(nb)[i]
    source_nb, tag = marked_copy(cell)
    tagged = [c for c in code_cells(ROOT / source_nb) if tag in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: {source_nb} has {len(tagged)} code cells tagged {tag!r}, not one"
    assert marked_copy(tagged[0]) is None, f"{nb.name}: copy the source cell itself, not a copy of it"
    body = cell.source.split("\n", 1)[1] if "\n" in cell.source else ""
    assert body == tagged[0].source, f"{nb.name}: the cell marked as a copy of {source_nb}:{tag} differs from it"


PAIRS = list(itertools.combinations(NOTEBOOKS, 2))


@pytest.mark.parametrize("a, b", PAIRS, ids=[f"{a.stem}-{b.stem}" for a, b in PAIRS])
def test_no_unmarked_copies(a, b):
    ba, bb = blocks(a), blocks(b)
    shared = [k for k in ba if k in bb]
    assert not shared, (f"{a.name} (code cell {ba[shared[0]]}) and {b.name} (code cell {bb[shared[0]]}) share "
                        f"{len(shared)} run(s) of {BLOCK} lines, e.g.:\n  " + "\n  ".join(shared[0])
                        + "\nmark the cell '# Copied from notebooks/<source>.ipynb: <tag>' or move it into ddkit")
    for (i, pa), (j, pb) in itertools.product(keyword_sets(a), keyword_sets(b)):
        same = sorted(pa & pb)
        assert len(same) < KEYWORDS, (f"{a.name} (code cell {i}) and {b.name} (code cell {j}) share a call or dict "
                                      f"with {len(same)} identical key=value pairs: {same}; mark the copy")


def _notebook(path: Path, *sources: str, tags=()) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for cell, tag in zip(nb.cells, tags):
        cell.metadata["tags"] = [tag] if tag else []
    nbformat.write(nb, str(path))
    return path


def test_the_checks_catch_a_drifted_copy_and_an_unmarked_block(tmp_path, monkeypatch):
    body = "\n".join(f"x{k} = f(x{k - 1}, {k})  # step {k}" for k in range(1, 8))
    src = _notebook(tmp_path / "a.ipynb", "import os\n" + body, tags=["recipe"])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    marker = "# Copied from notebooks/a.ipynb: recipe\n"
    (tmp_path / "notebooks").mkdir()
    src.rename(tmp_path / "notebooks" / "a.ipynb")
    same = _notebook(tmp_path / "b.ipynb", marker + "import os\n" + body)
    test_a_marked_copy_equals_its_source(same, 0)
    drifted = _notebook(tmp_path / "c.ipynb", marker + "import os\n" + body.replace("7)", "8)"))
    with pytest.raises(AssertionError, match="differs"):
        test_a_marked_copy_equals_its_source(drifted, 0)
    unmarked = _notebook(tmp_path / "d.ipynb", "y = 1\n\n" + body.replace("  # step", "  # another comment"))
    with pytest.raises(AssertionError, match="share 2 run"):
        test_no_unmarked_copies(tmp_path / "notebooks" / "a.ipynb", unmarked)
    test_no_unmarked_copies(tmp_path / "notebooks" / "a.ipynb", same)   # a marked copy is not counted
    short = _notebook(tmp_path / "e.ipynb", "\n".join(body.splitlines()[:BLOCK - 1]))
    test_no_unmarked_copies(tmp_path / "notebooks" / "a.ipynb", short)


def test_a_reordered_call_is_still_a_copy(tmp_path):
    keys = [f"k{n}" for n in range(KEYWORDS)]
    call = "f(" + ", ".join(f"{k}=P.{k}" for k in keys) + ")"
    reordered = "f(" + ", ".join(f"{k}=P.{k}" for k in reversed(keys)) + ")"
    a, b = _notebook(tmp_path / "a.ipynb", call), _notebook(tmp_path / "b.ipynb", "x = " + reordered)
    with pytest.raises(AssertionError, match=f"{KEYWORDS} identical key=value pairs"):
        test_no_unmarked_copies(a, b)
    test_no_unmarked_copies(a, _notebook(tmp_path / "c.ipynb", reordered.replace("P.k0", "Q.k0")))
