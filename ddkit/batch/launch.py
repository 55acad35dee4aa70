"""``ddkit run --nproc N <params.yaml | script.py>``: one run on N processes (GPUs) under torchrun.

:func:`torchrun_command` builds ``python -m torch.distributed.run --standalone --nproc_per_node N -m
ddkit.batch.launch <target> ...``; each of the N processes then runs :func:`main`, which executes

- a params / grid file (``params/...yaml``, the files ``ddkit sweep`` reads): its unfinished runs,
  one after the other, each notebook on every rank at once (papermill). ``distill`` and
  ``evaluate_synset`` inside split their work over the ranks (:mod:`ddkit.fast.distributed`); rank 0
  writes into the results folder, the other ranks into a temporary folder removed afterwards
  (``$DDKIT_RESULTS`` and the run's ``results_dir`` point there), so a run's results are written once;
- a Python script (``runpy``, ``sys.argv`` = the script and its arguments; on ranks > 0
  ``$DDKIT_RESULTS`` points to the temporary folder too).

Failure: :func:`main` is wrapped in torchrun's ``record``, so a rank that raises writes its error
and torchrun stops the other ranks and exits non-zero, reporting that rank's traceback as the root
cause (the first failure; the others' "connection closed" errors come later). ``ddkit run`` exits
with torchrun's status.
"""
from __future__ import annotations

import dataclasses
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record


def torchrun_command(target: str, nproc: int, args=(), overrides: dict | None = None,
                     results_dir: str | None = None, force: bool = False) -> list:
    """The torchrun command line ``ddkit run`` executes (single node, ``--standalone``)."""
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} must be an int >= 1 (processes, usually one per GPU)")
    suffix = Path(target).suffix
    if suffix not in (".py", ".yaml", ".yml"):
        raise ValueError(f"{target!r}: expected a params/grid file (.yaml) or a Python script (.py)")
    if not Path(target).is_file():
        raise FileNotFoundError(f"{target} does not exist")
    if suffix != ".py" and args:
        raise ValueError(f"extra arguments {list(args)!r} after the params file {target!r}: a params file takes no "
                         f"script arguments; put options (--set, --results-dir, --force) before the target")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ddkit.batch.launch", str(Path(target).resolve())]
    if suffix != ".py":
        for k, v in (overrides or {}).items():
            cmd += ["--set", f"{k}={json.dumps(v)}"]  # JSON is YAML: the value comes back as it was
        cmd += (["--results-dir", str(results_dir)] if results_dir else []) + (["--force"] if force else [])
    return cmd + (["--", *args] if args else [])


def run(target: str, nproc: int, args=(), **kw) -> int:
    """Run ``target`` on ``nproc`` processes; returns torchrun's exit status. A params file's runs
    are validated first (:func:`ddkit.batch.sweep_grid.expand`: keys, values, the notebooks' own checks),
    so a bad setting is a ``ValueError`` before torchrun starts."""
    cmd = torchrun_command(target, nproc, args, **kw)
    if Path(target).suffix != ".py":
        from ddkit.batch.sweep_grid import expand

        expand(target, kw.get("results_dir"), None, kw.get("overrides") or None)
    return subprocess.call(cmd)


def _run_params(path: str, overrides: dict, results_dir, force: bool, scratch: str | None, rank: int) -> None:
    from ddkit.batch.sweep import execute_run, run_status
    from ddkit.batch.sweep_grid import expand

    runs = expand(path, results_dir, None, overrides or None)
    todo = [r for r in runs if force or run_status(r)[0] != "done"]  # every rank decides alike
    for i, r in enumerate(todo):
        os.environ["DDKIT_DIST_PREFIX"] = f"ddkit-run-{i}"  # the run's kernel: a fresh process group
        mine = r if scratch is None else dataclasses.replace(r, results_dir=scratch)
        outcome = execute_run(mine)
        print(f"[rank {rank}] {r.label}: {outcome['status']} ({outcome['seconds']:.1f}s)", flush=True)
        if outcome["status"] != "ok":
            raise RuntimeError(f"rank {rank}: {r.label} failed: {outcome['error']}")


@record
def main(argv=None) -> None:
    """One rank's work (module docstring); started by torchrun."""
    import argparse

    import yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m ddkit.batch.launch")
    p.add_argument("target")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   type=lambda kv: (kv.split("=", 1)[0], yaml.safe_load(kv.split("=", 1)[1])))
    p.add_argument("--results-dir", default=None)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    scratch = None if rank == 0 else tempfile.mkdtemp(prefix=f"ddkit-rank{rank}-")
    try:
        if scratch:  # the other ranks' result writes land here
            os.environ["DDKIT_RESULTS"] = scratch
        if a.target.endswith(".py"):
            sys.argv = [a.target, *extra]
            runpy.run_path(a.target, run_name="__main__")
        else:
            _run_params(a.target, dict(a.overrides), a.results_dir, a.force, scratch, rank)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
