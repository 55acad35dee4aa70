"""Every command the documentation shows runs.

The examples are read from README.md, params/README.md, docs/*.md and the source (docstrings and
comments) of ddkit/*.py:

* ``ddkit sweep <file> ...``: the file exists and ``ddkit sweep <file> <the example's options>
  --dry-run`` succeeds (validation of every run against its notebook's SPEC, nothing executes;
  ``--results-dir`` points at a temporary folder);
* ``ddkit report ...``: its options parse;
* ``python -m <module>``: the module can be found;
* any other ``.yaml`` / ``.ipynb`` path with a folder in an example command exists.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from ddkit.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "README.md", REPO / "params" / "README.md", *sorted((REPO / "docs").glob("*.md")),
           *sorted((REPO / "ddkit").glob("*.py"))]
COMMAND = re.compile(r"(?:^|[\s`(])(?:\S*/)?(ddkit (?:sweep|report)|python -m|papermill)(?=\s|`|$)(.*)")
#: options of ``ddkit sweep`` that choose where and how runs execute (replaced by the dry run's own)
EXECUTION = {"--workers": 1, "--scheduler": 1, "--gpus": 1, "--threads": 1, "--timeout": 1, "--kernel": 1,
             "--results-dir": 1, "--force": 0}


def _arguments(rest: str) -> list[str]:
    """The command's arguments: up to a closing backtick, a shell comment or a docstring end."""
    rest = re.split(r"`|\s#\s|\"\"\"|\s#$", rest)[0]
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def _is_command(cmd: str, args: list[str]) -> bool:
    """A command, not prose that names the tool: what follows is a file, a module or an option."""
    if cmd == "ddkit report":
        return not args or args[0].startswith("--")
    first = args[0] if args else ""
    if cmd == "papermill":
        return first.endswith(".ipynb")
    if cmd == "python -m":
        return bool(re.fullmatch(r"[A-Za-z_][\w.]*", first))
    return bool(re.fullmatch(r"[\w./<>-]+", first))


def examples() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in COMMAND.finditer(line):
                args = _arguments(m.group(2))
                if _is_command(m.group(1), args):
                    found.append((f"{path.relative_to(REPO)}:{n}", m.group(1), args))
    return found


EXAMPLES = examples()
SWEEPS = [(where, args) for where, cmd, args in EXAMPLES
          if cmd == "ddkit sweep" and args and re.search(r"\.ya?ml$", args[0])]


def test_the_documentation_shows_sweep_examples():
    assert len(SWEEPS) >= 8 and any(w.startswith("README.md") for w, _ in SWEEPS)


@pytest.mark.parametrize("where, args", SWEEPS, ids=[w for w, _ in SWEEPS])
def test_sweep_example_names_an_existing_file_and_dry_runs(where, args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert (REPO / args[0]).is_file(), f"{where}: {args[0]} does not exist"
    kept, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
        elif a.split("=")[0] in EXECUTION:
            skip = EXECUTION[a.split("=")[0]] if "=" not in a else 0
        else:
            kept.append(a)
    rc = main(["sweep", *kept, "--dry-run", "--no-progress", "--results-dir", str(tmp_path)])
    assert rc == 0, f"{where}: ddkit sweep {' '.join(kept)} --dry-run -> {rc}: {capsys.readouterr().err}"
    assert "dry run:" in capsys.readouterr().out


@pytest.mark.parametrize("where, cmd, args", EXAMPLES, ids=[w for w, _, _ in EXAMPLES])
def test_every_example_command_parses_and_names_existing_files(where, cmd, args):
    if cmd == "python -m":
        assert args and importlib.util.find_spec(args[0]) is not None, f"{where}: no module {args[:1]}"
        return
    for a in args:
        if re.search(r"\.(ya?ml|ipynb)$", a) and "/" in a and "<" not in a:
            assert (REPO / a).is_file(), f"{where}: {a} does not exist"
    if cmd.startswith("ddkit") and not (args and args[0].startswith("<")):
        argv = [cmd.split()[1], *args]
        if "--help" in args:
            with pytest.raises(SystemExit) as done:
                build_parser().parse_args(argv)
            assert done.value.code == 0
        else:
            build_parser().parse_args(argv)   # SystemExit(2) on an unknown option
