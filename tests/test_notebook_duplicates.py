"""No two notebooks carry the same code: what they share belongs in ddkit, once.

A duplicate finder that reads only ``.py`` files cannot see the notebooks, so this check exports
the code cells of every ``notebooks/*.ipynb`` and compares them pairwise. Two notebooks fail when
they share :data:`LIMIT` or more identical non-trivial lines. A line is trivial (not counted) when
it is

* in the ``parameters`` cell or in the validation cell right after it: docs/notebooks.md (steps 2
  and 3) prescribes the same contract keys and the same ``SPEC`` / ``check_params`` /
  ``resolve_device`` / ``seed_everything`` prologue in every notebook;
* blank, a comment, a ``%`` / ``!`` magic, or part of an ``import`` statement (parsed with ``ast``,
  so a parenthesised import over several lines is one statement);
* made of brackets and punctuation only, or a lone keyword (``else:``, ``try:``, ``pass``);
* shorter than :data:`MIN_CHARS` characters without spaces (``print(ds)``, ``res = None``,
  ``with torch.no_grad():``): such lines carry no recipe.

Lines are judged and compared after stripping indentation and trailing comments (a short line with a
comment is still short); each distinct line counts once.
"""
from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
LIMIT = 10
MIN_CHARS = 20
_PUNCTUATION = re.compile(r"^[\s()\[\]{},:;.]*$")
_KEYWORD = re.compile(r"^(else|try|finally|pass|continue|break|return)\s*:?$")
_TRAILING_COMMENT = re.compile(r"\s+#(?![^\"']*[\"']).*$")


def _import_lines(source: str) -> set[int]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell with IPython syntax: fall back to line-by-line rules
        return set()
    return {n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in range(node.lineno, node.end_lineno + 1)}


def is_trivial(line: str) -> bool:
    s = line.strip()
    return (not s or s.startswith(("#", "%", "!")) or bool(_PUNCTUATION.match(s)) or bool(_KEYWORD.match(s))
            or len(s.replace(" ", "")) < MIN_CHARS)


def code_lines(path: Path) -> set[str]:
    """The notebook's distinct non-trivial code lines (see the module docstring)."""
    cells = [c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]
    at = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), None)
    kept = cells if at is None else cells[:at] + cells[at + 2:]
    out = set()
    for cell in kept:
        imports = _import_lines(cell.source)
        for n, line in enumerate(cell.source.splitlines(), 1):
            code = _TRAILING_COMMENT.sub("", line.strip())
            if n not in imports and not is_trivial(code):
                out.add(code)
    return out


def test_trivial_lines_and_imports_are_not_counted(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = "mnist5k"')
    params.metadata["tags"] = ["parameters"]
    body = ("from ddkit.runs.results import (run_dir,\n    write_result)\n# a comment\n\nif ok:\n    print(ds)\n"
            "else:\n    rd = run_dir(P.results_dir, NOTEBOOK, name)  # where the run goes\nx = f(\n)\n")
    nb.cells = [params, nbformat.v4.new_code_cell("P = check_params(globals(), SPEC)"),
                nbformat.v4.new_code_cell(body)]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    assert code_lines(path) == {"rd = run_dir(P.results_dir, NOTEBOOK, name)"}


PAIRS = [(a, b) for a, b in itertools.combinations(NOTEBOOKS, 2)]


@pytest.mark.parametrize("a, b", PAIRS, ids=[f"{a.stem}-{b.stem}" for a, b in PAIRS])
def test_two_notebooks_share_fewer_than_ten_code_lines(a, b):
    shared = sorted(code_lines(a) & code_lines(b))
    assert len(shared) < LIMIT, (f"{a.name} and {b.name} share {len(shared)} identical code lines "
                                 f"(limit {LIMIT}); move them into ddkit:\n  " + "\n  ".join(shared))
