"""``make gpu-check`` (``python -m bench.gpu_check``): ddkit on one CUDA GPU in a few minutes, one line per check.

Checks (:func:`plan`), run ``--jobs`` at a time (default 4), each in its own process group with its own time
limit, all within ``--budget`` seconds (default 480):

1. the whole unit suite with ``DDKIT_TEST_DEVICES=cuda`` (device-taking tests on CUDA; every other test
   on ``device=None``, which is CUDA there too), in ``--shards`` pytest processes split by file;
2. every notebook at its tiny defaults with ``-p device cuda`` (papermill; results in a temporary folder
   through ``$DDKIT_RESULTS``; notebooks without a ``device`` parameter run as they are; the report
   notebook after the others, whose results it reads);
3. with ``--public-dm PATH`` (or ``$PUBLIC_DM``): ``python -m bench --only public_dm --quick`` (ddkit
   against the public DM code, both on CUDA, then ``bench.graph_levers``: the graph loop's kernel profile
   and its remaining levers, bf16, channels-last, compile), alone on the GPU after the rest so that its
   timings are not shared; its table is copied into the JSON.

Writes ``--out`` (default ``results/bench/gpu_check.json``: GPU name, torch and CUDA versions, date,
budget, seconds, and per check its command, status, seconds and last output line) and beside it the same
as Markdown tables for bench/README.md (``gpu_check.md``: the checks; the public-code comparison's rows;
the graph loop's kernel profile). Exits 0 when every
check passed, 1 when one failed, timed out or did not fit the budget, 2 (with a message, before
anything runs) when no CUDA device is present.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 480
OUT = REPO / "results" / "bench" / "gpu_check.json"
#: Time limit of one check of each kind (each also stops when the budget is spent).
LIMITS = {"unit": 420, "notebook": 240, "public_dm": 300}
#: Seconds kept back for the public-code comparison, which runs alone after the rest.
PUBLIC_DM_RESERVE = 210


@dataclass
class Check:
    name: str
    kind: str                # "unit", "notebook" or "public_dm"
    cmd: list
    env: dict = field(default_factory=dict)
    needs: tuple = ()        # names of checks that must have finished first
    alone: bool = False      # runs with nothing else on the GPU
    verify: Callable[[], str | None] | None = None  # after exit status 0: why the check failed anyway


def no_gpu_message() -> str | None:
    """Why the check cannot run here (None when a CUDA device is present)."""
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "no CUDA (CPU-only build)"
    return (f"make gpu-check: no CUDA device here (torch {torch.__version__}, built with {built}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); run it on a machine "
            "with an NVIDIA GPU")


def _notebook_takes_device(path: Path) -> bool:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return bool(cells) and any(line.split("=")[0].strip() == "device" for line in cells[0].source.splitlines())


def unit_shards(n: int) -> list:
    """The unit-test files split into ``n`` lists of about equal size (largest file first, greedy)."""
    files = sorted((*(REPO / "tests").glob("test_*.py"), *(REPO / "notebooks").glob("test_*.py")),
                   key=lambda p: (-p.stat().st_size, p.name))
    shards = [[] for _ in range(max(1, min(n, len(files))))]
    sizes = [0] * len(shards)
    for f in files:
        i = sizes.index(min(sizes))
        shards[i].append(f)
        sizes[i] += f.stat().st_size
    return [sorted(s) for s in shards]


def plan(tmp: Path, public_dm: str | None = None, shards: int = 3) -> list:
    """Every :class:`Check`, in the order they are started."""
    py = sys.executable
    out = []
    for i, files in enumerate(unit_shards(shards)):
        out.append(Check(f"unit tests {i + 1}/{shards} (DDKIT_TEST_DEVICES=cuda)", "unit",
                         [py, "-m", "pytest", *map(str, files), "-q", "-p", "no:cacheprovider"],
                         {"DDKIT_TEST_DEVICES": "cuda", "DDKIT_RESULTS": str(tmp / f"results_unit{i + 1}")}))
    notebooks = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
    methods = [nb.stem for nb in notebooks if _notebook_takes_device(nb)]
    for nb in notebooks:
        cmd = [py, "-m", "papermill", str(nb), str(tmp / nb.name), "--cwd", str(REPO / "notebooks"),
               "--kernel", "python3", "--log-level", "ERROR"]
        takes_device = nb.stem in methods
        if takes_device:
            cmd += ["-p", "device", "cuda"]
        out.append(Check(f"notebook {nb.stem}" + (" (device=cuda)" if takes_device else ""), "notebook", cmd,
                         {"DDKIT_RESULTS": str(tmp / "results_notebooks")},
                         needs=() if takes_device else tuple(f"notebook {m} (device=cuda)" for m in methods)))
    if public_dm:
        out.append(Check("public DM code vs ddkit (both on CUDA, quick)", "public_dm",
                         [py, "-m", "bench", "--only", "public_dm", "--quick", "--public-dm", str(public_dm),
                          "--out", str(tmp / "bench")], alone=True, verify=lambda: public_dm_problem(tmp)))
    return out


def execute(check: Check, timeout: float, env: dict) -> dict:
    """Run one check in its own process group (killed whole on timeout): status, return code, last line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(check.cmd, env={**env, **check.env}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=max(1.0, timeout))
        status = "pass" if proc.returncode == 0 else "fail"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:  # a process outside the group (a notebook's kernel) may hold the pipe until it exits
            text, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.stdout.close()
            text = ""
            proc.wait()
        status = "timeout"
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    tail = f"timed out after {timeout:.0f} s" if status == "timeout" else (lines[-1] if lines else "no output")
    return {"status": status, "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "tail": tail}


def run_checks(checks: list, budget: float, jobs: int, env: dict, report=print) -> list:
    """Start each check when a slot is free and its ``needs`` have finished (``alone`` checks once
    everything else has); each gets ``min(its kind's limit, the budget left)``; one line per check."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    start = time.perf_counter()
    reserve = PUBLIC_DM_RESERVE if any(c.alone for c in checks) else 0
    results, waiting, running = {}, list(checks), {}

    def finish(check, res):
        why = check.verify() if res["status"] == "pass" and check.verify is not None else None
        if why:
            res = {**res, "status": "fail", "tail": why}
        results[check.name] = {"name": check.name, "kind": check.kind, "command": " ".join(map(str, check.cmd)),
                               **res}
        line = f"{res['status'].upper():7s} {check.name} ({res['seconds']:.0f} s)"
        report(line + ("" if res["status"] == "pass" else f": {res['tail']}"))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while waiting or running:
            for check in list(waiting):
                if len(running) >= jobs or (check.alone and (running or len(waiting) > 1)):
                    break
                if not all(n in results for n in check.needs):
                    continue
                waiting.remove(check)
                left = budget - (time.perf_counter() - start) - (0 if check.alone else reserve)
                if left <= 1:
                    finish(check, {"status": "skipped", "returncode": None, "seconds": 0.0,
                                   "tail": f"the {budget:.0f} s budget is spent"})
                    continue
                running[pool.submit(execute, check, min(LIMITS[check.kind], left), env)] = check
            if not running:  # nothing could start: what is left waits on nothing that will finish
                for check in waiting:
                    finish(check, {"status": "skipped", "returncode": None, "seconds": 0.0,
                                   "tail": f"needs {list(check.needs)}"})
                waiting = []
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                finish(running.pop(fut), fut.result())
    return [results[c.name] for c in checks]


def gpu_info() -> dict:
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def write_report(path: Path, info: dict, results: list, budget: float, seconds: float, public_dm: dict | None):
    from ddkit.core.utils import atomic_write_bytes, atomic_write_json

    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info, "budget_s": budget,
              "seconds": round(seconds, 1), "passed": all(r["status"] == "pass" for r in results),
              "checks": results, **({"public_dm": public_dm} if public_dm is not None else {})}
    atomic_write_json(path, record)
    atomic_write_bytes(path.with_suffix(".md"), markdown(record).encode())
    return record


def markdown(record: dict) -> str:
    """``record`` (:func:`write_report`'s) as Markdown: a heading line, the checks, and when the public-code
    comparison ran, its rows (``bench.public_dm.rows``) and the graph loop's kernel profile."""
    from bench.public_dm import rows

    def num(v, fmt="{:.4g}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"`make gpu-check` on {record['gpu']} (torch {record['torch']}, CUDA {record['cuda']}), "
             f"{record['date']}, {record['seconds']:.0f} s of a {record['budget_s']:.0f} s budget", "",
             "| check | status | seconds | last line |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {c['seconds']:.0f} | {'' if c['status'] == 'pass' else c['tail']} |"
              for c in record["checks"]]
    public = record.get("public_dm") or {}
    if "dm_seconds_per_iteration" in public:
        lines += ["", "| task | public | ddkit | ratio | note |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {num(ref)} | {num(dd)} | {num(ratio, '{:.2f}x')} | {note} |"
                  for name, ref, dd, ratio, note in rows(public)]
    prof = public.get("ddkit_dm_graph_levers", {}).get("profile", {})
    if "top" in prof:
        lines += ["", f"GPU time of one uncaptured graph-loop iteration: {prof['gpu_ms_per_iteration']:.2f} ms "
                      f"(wall {prof['wall_ms_per_uncaptured_iteration']:.2f} ms)", "",
                  "| kernel | ms per iteration | calls per iteration |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms_per_iteration']:.3f} | {k['calls_per_iteration']:.0f} |"
                  for k in prof["top"]]
    return "\n".join(lines) + "\n"


def public_dm_record(tmp: Path) -> dict | None:
    """The comparison's JSON, as ``python -m bench`` wrote it (None when it wrote none)."""
    f = tmp / "bench" / "public_dm.json"
    return json.loads(f.read_text()) if f.is_file() else None


def public_dm_problem(tmp: Path) -> str | None:
    """Why a comparison that exited 0 still failed: ``python -m bench`` exits 0 when a benchmark
    raised or skipped, its JSON then holds ``error`` or ``skipped``."""
    record = public_dm_record(tmp)
    if record is None:
        return "no public_dm.json written"
    why = record.get("error") or record.get("skipped")
    return None if not why else str(why)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(OUT), help="JSON results file (default: %(default)s)")
    ap.add_argument("--budget", type=float, default=BUDGET_SECONDS,
                    help="seconds for everything (default: %(default)s)")
    ap.add_argument("--jobs", type=int, default=4, help="checks running at once (default: %(default)s)")
    ap.add_argument("--shards", type=int, default=3, help="pytest processes of the unit suite (default: %(default)s)")
    ap.add_argument("--public-dm", default=os.environ.get("PUBLIC_DM") or None, metavar="PATH",
                    help="a checkout of VICO-UoE/DatasetCondensation: adds the comparison (default: $PUBLIC_DM)")
    args = ap.parse_args(argv)
    if args.budget <= 0 or args.jobs < 1 or args.shards < 1:
        ap.error(f"--budget must be > 0 and --jobs, --shards >= 1 (got {args.budget}, {args.jobs}, {args.shards})")
    if args.public_dm and not Path(args.public_dm, "main_DM.py").is_file():
        ap.error(f"--public-dm {args.public_dm}: no main_DM.py there (a checkout of VICO-UoE/DatasetCondensation)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    why = no_gpu_message()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    info = gpu_info()
    print(f"gpu-check on {info['gpu']} (torch {info['torch']}, CUDA {info['cuda']}), budget {args.budget:.0f} s",
          flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddkit_gpu_check_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        results = run_checks(plan(tmp, args.public_dm, args.shards), args.budget, args.jobs, env,
                             report=lambda line: print(line, flush=True))
        public = public_dm_record(tmp) if args.public_dm else None
        record = write_report(Path(args.out), info, results, args.budget, time.perf_counter() - start, public)
    failed = [r["name"] for r in results if r["status"] != "pass"]
    print(f"gpu-check: {'all passed' if not failed else f'{len(failed)} not passed'} in {record['seconds']:.0f} s; "
          f"{args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
