"""``make gpu-check`` (``python -m bench.gpu_check``): ddkit on CUDA, one line per check.

1. every notebook at its tiny defaults with ``device="cuda"`` (papermill, results in a temporary
   folder through ``$DDKIT_RESULTS``; notebooks without a ``device`` parameter run as they are);
2. the unit tests that take a device (the ``device`` fixture of tests/conftest.py) with
   ``DDKIT_TEST_DEVICES=cuda``;
3. ``python -m bench --quick`` (ddkit's paths pick CUDA through ``device="auto"``).

Budget: :data:`BUDGET_SECONDS` in all (each check gets what is left). Exits 0 when every check
passed; 1 when one failed; 2, with a message saying so, when no CUDA device is present.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 600


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


def checks(tmp: Path) -> list:
    """``(name, command, extra environment)`` of every check, in order."""
    py = sys.executable
    out = []
    for nb in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")):
        cmd = [py, "-m", "papermill", str(nb), str(tmp / nb.name), "--cwd", str(REPO / "notebooks"),
               "--kernel", "python3", "--log-level", "ERROR"]
        if _notebook_takes_device(nb):
            cmd += ["-p", "device", "cuda"]
        out.append((f"notebook {nb.stem} (device=cuda)", cmd, {}))
    out.append(("unit tests taking a device (cuda)",
                [py, "-m", "pytest", str(REPO / "tests"), "-q", "-x", "-p", "no:cacheprovider", "-k", "cuda"],
                {"DDKIT_TEST_DEVICES": "cuda"}))
    out.append(("python -m bench --quick", [py, "-m", "bench", "--quick", "--out", str(tmp / "bench")], {}))
    return out


def main() -> int:
    why = no_gpu_message()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    import torch

    print(f"gpu-check on {torch.cuda.get_device_name(0)} (torch {torch.__version__})", flush=True)
    start, failed = time.perf_counter(), 0
    with tempfile.TemporaryDirectory(prefix="ddkit_gpu_check_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "DDKIT_RESULTS": str(tmp / "results"),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for name, cmd, extra in checks(tmp):
            left = BUDGET_SECONDS - (time.perf_counter() - start)
            if left <= 0:
                print(f"SKIP {name}: the {BUDGET_SECONDS} s budget is spent", flush=True)
                failed += 1
                continue
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=left)
                ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
            except subprocess.TimeoutExpired:
                ok, tail = False, [f"timed out after {left:.0f} s"]
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.0f} s)"
                  + ("" if ok else f": {tail[0] if tail else 'no output'}"), flush=True)
    print(f"gpu-check: {'all passed' if not failed else f'{failed} failed'} in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
