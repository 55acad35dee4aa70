"""Every command the documentation shows runs.

The examples are read from README.md, params/README.md, docs/*.md and the source (docstrings and
comments) of ddkit/*.py:

* ``ddkit sweep <file> ...``: the file exists and ``ddkit sweep <file> <the example's options>
  --dry-run`` succeeds (validation of every run against its notebook's CHECKS, nothing executes;
  ``--results-dir`` points at a temporary folder);
* ``ddkit report ...``: its options parse;
* ``python -m <module>``: the module can be found;
* any other ``.yaml`` / ``.ipynb`` path with a folder in an example command exists.

Every command of README.md's ``bash`` blocks runs as written, in its cheapest form
(:func:`test_every_readme_shell_command_works_as_written`): ``make`` targets exist, ``ddkit run``
validates its runs (torchrun is not started), ``ddkit report`` writes a report, ``papermill``
prepares the notebook with the file's parameters (``--prepare-only``), sweeps dry-run.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
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
          if cmd == "ddkit sweep" and args and (re.search(r"\.(ya?ml|ipynb)$", args[0]) or (REPO / args[0]).is_dir())]


def test_the_documentation_shows_sweep_examples():
    assert len(SWEEPS) >= 8 and any(w.startswith("README.md") for w, _ in SWEEPS)


@pytest.mark.parametrize("where, args", SWEEPS, ids=[w for w, _ in SWEEPS])
def test_sweep_example_names_an_existing_file_and_dry_runs(where, args, tmp_path, monkeypatch, capsys):
    import ddkit.batch.sweep_grid

    monkeypatch.chdir(REPO)
    check_run = ddkit.batch.sweep_grid.check_run  # examples may use a dataset file the page makes first
    monkeypatch.setattr(ddkit.batch.sweep_grid, "check_run", lambda *a: check_run(*a[:3], False))
    assert (REPO / args[0]).exists(), f"{where}: {args[0]} does not exist"
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


def readme_shell_commands() -> list[tuple[str, list[str]]]:
    """Every command line of README.md's ``bash`` blocks (``.venv/bin/`` dropped, comments cut)."""
    found, block = [], False
    for n, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() == "```bash"
            continue
        if block and line.strip():
            for part in re.split(r"\s&&\s", re.split(r"\s#\s", line)[0]):
                argv = shlex.split(part)
                argv[0] = argv[0].removeprefix(".venv/bin/")
                found.append((f"README.md:{n}", argv))
    return found


README_COMMANDS = readme_shell_commands()


def test_readme_shows_its_commands():
    programs = {argv[0] for _, argv in README_COMMANDS}
    assert {"make", "ddkit", "papermill", "jupyter", "conda", "pytest"} <= programs


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("where, argv", README_COMMANDS, ids=[w for w, _ in README_COMMANDS])
def test_every_readme_shell_command_works_as_written(where, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("DDKIT_RESULTS", str(tmp_path / "results"))
    prog, args = argv[0], argv[1:]
    if prog == "make":
        assert set(args) <= _make_targets(), f"{where}: no Makefile target {set(args) - _make_targets()}"
    elif argv[:2] == ["conda", "activate"]:
        import yaml

        assert yaml.safe_load((REPO / "environment.yml").read_text())["name"] == args[1], where
    elif prog in ("jupyter", "conda", "pytest"):
        paths = {"jupyter": [a for a in args[1:] if not a.startswith("-")],   # jupyter lab <folder>
                 "conda": args[args.index("-f") + 1:][:1] if "-f" in args else [],
                 "pytest": [a for a in args if not a.startswith("-")]}[prog]
        assert paths and all((REPO / a).exists() for a in paths), f"{where}: {paths}"
        module = {"jupyter": "jupyterlab", "pytest": "nbval", "conda": "yaml"}[prog]
        assert importlib.util.find_spec(module), f"{where}: {module} is not installed"
    elif prog == "papermill":
        _papermill_prepares(where, args, tmp_path)
    elif prog == "ddkit" and args[0] == "run":
        _ddkit_run_validates(where, args, tmp_path, monkeypatch)
    elif prog == "ddkit" and args[0] == "report":
        assert main([*args, "--out", str(tmp_path / "report"), "--no-plots"]) == 0, where
        assert (tmp_path / "report" / "report.md").is_file()
    elif prog == "ddkit" and args[0] == "sweep":
        kept = [a for a in args[1:] if a not in ("--workers", "2")]
        if "--scheduler" in kept:
            kept = kept[:kept.index("--scheduler")]
        assert main(["sweep", *kept, "--dry-run", "--no-progress"]) == 0, f"{where}: {capsys.readouterr().err}"
    else:
        pytest.fail(f"{where}: no check for {argv}")


def _papermill_prepares(where: str, args: list[str], tmp_path) -> None:
    """``papermill <in> <out> -f <params>``: the notebook takes the file's parameters (no execution)."""
    import subprocess
    import sys

    out = tmp_path / Path(args[1]).name
    cmd = [sys.executable, "-m", "papermill", args[0], str(out), *args[2:], "--prepare-only"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{where}: {done.stderr[-2000:]}"
    assert out.is_file() and "injected-parameters" in out.read_text()


def _ddkit_run_validates(where: str, args: list[str], tmp_path, monkeypatch) -> None:
    """``ddkit run``: the command line parses and the params file's runs validate; torchrun is replaced
    by a recorder (a script that does not exist, like ``my_script.py``, is only parsed)."""
    import ddkit.batch.launch
    from ddkit.cli import _parse

    started = []
    monkeypatch.setattr(ddkit.batch.launch.subprocess, "call", lambda cmd: started.append(cmd) or 0)
    a = _parse(args)
    if a.target.endswith(".py") and not (REPO / a.target).is_file():
        return
    assert main(args) == 0, where
    assert started and f"--nproc_per_node={a.nproc}" in started[0]


#: references that cannot resolve in a user's clone: the kit's private notes and absolute paths
OUTSIDE = re.compile(r"\.\./shared\b|\bshared/(CONTRACT|REFERENCE_NOTES|STYLE|papers)\b|\bREFERENCE_NOTES\.md"
                     r"|\bCONTRACT\.md|\bSTYLE\.md|(?<![\w.])/wor[k]/")
SKIP_DIRS = {".git", ".venv", "results", "data", "__pycache__", ".ipynb_checkpoints", "build", "dist", ".pytest_cache"}
TEXT = {".py", ".md", ".ipynb", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".csv", ".json", ""}


def _repository_files() -> list[Path]:
    """The clone's text files: what git tracks or would add (build outputs such as ``*.egg-info`` and
    the virtualenv are ignored), else a walk of the tree."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        paths = [REPO / f for f in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = sorted(REPO.rglob("*"))
    out = []
    for path in paths:
        rel = path.relative_to(REPO)
        if path.is_file() and not SKIP_DIRS & set(rel.parts[:-1]) and path.suffix in TEXT and rel.parts[0] != ".git":
            out.append(path)
    return sorted(out)


def test_no_file_refers_outside_the_clone():
    """Notebooks, docs, params (params/paper too), code and tests point only at files of the clone."""
    files = _repository_files()
    assert any(p.parts[-2:] == ("cpu", "03_iid.yaml") for p in files) and REPO / "README.md" in files
    bad = [f"{p.relative_to(REPO)}:{n}: {m.group(0)}" for p in files
           for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) for m in OUTSIDE.finditer(line)]
    assert not bad, "references outside the clone (use docs/sources.md or the paper itself):\n" + "\n".join(bad)


def test_markdown_links_and_named_docs_resolve():
    """Relative links of the Markdown pages and the ``docs/*.md`` files they name exist."""
    missing = []
    for page in [REPO / "README.md", REPO / "params" / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
        missing += [f"{page.name}: {d}" for d in re.findall(r"\bdocs/[\w-]+\.md", text) if not (REPO / d).is_file()]
    assert not missing, missing
