"""notebooks/00_quickstart.ipynb end to end, as a user runs it.

The notebook is executed with papermill in a fresh process (its own kernel) at the issue's
setting, :data:`PARAMS` (Fashion-MNIST, IPC 10, 200 DM iterations, batch_real 256, 3 evaluation
networks x 300 epochs for each of the three sets: random real, herding, DM). Two arms, in turn:

* ``default``: the parameters cell's defaults for everything else (``compile="auto"``, float32);
* ``bf16``: the same with ``amp="bf16"`` (distillation) and ``eval_amp="bf16"`` (evaluation).

Reported per arm: wall seconds from launch to the written ``result.json`` (kernel start, data
loading, herding, DM, every evaluation and the figures included), the peak resident memory of the
process tree (kernel included; sampled every 0.25 s), and the accuracies the run recorded.
``--quick``: mnist5k, 10 iterations, one network of 20 epochs per set (a smoke run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import REPO

NOTEBOOK = REPO / "notebooks" / "00_quickstart.ipynb"
PARAMS = dict(dataset="fashion_mnist", ipc=10, iterations=200, batch_real=256, eval_epochs=300, num_eval=3)
QUICK = dict(dataset="mnist5k", ipc=10, iterations=10, batch_real=64, eval_epochs=20, num_eval=1)
ARMS = {"default": {}, "bf16": {"amp": "bf16", "eval_amp": "bf16"}}
TARGET_SECONDS = 600.0


class TreeMemory:
    """Peak summed RSS (MB) of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every, self.peak_mb = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_arm(params: dict, threads: int) -> dict:
    """Execute the notebook once with ``params`` in a fresh process; wall time, peak memory, accuracies."""
    with tempfile.TemporaryDirectory(prefix="nb_e2e_") as tmp:
        results = Path(tmp) / "results"
        full = {**params, "results_dir": str(results), "run_name": "e2e"}
        code = ("import json, sys, papermill as pm; p = json.loads(sys.argv[1]); "
                "pm.execute_notebook(sys.argv[2], sys.argv[3], parameters=p, progress_bar=False, cwd=sys.argv[4])")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(full), str(NOTEBOOK),
                                 str(Path(tmp) / "out.ipynb"), str(NOTEBOOK.parent)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with TreeMemory(proc.pid) as mem:
            _, err = proc.communicate()
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"notebook 00 failed with {params}:\n{err[-3000:]}")
        found = sorted(results.rglob("result.json"))
        if not found:
            raise RuntimeError(f"notebook 00 wrote no result.json under {results}")
        rec = json.loads(found[0].read_text())
    return {"params": full, "seconds": seconds, "peak_rss_mb": mem.peak_mb,
            "under_target": seconds < TARGET_SECONDS,
            "accuracy": {e["method"]: {"mean": e["mean"], "std": e["std"], "accs": e["accs"]}
                         for e in rec.get("evaluations", [])}}


def run(quick: bool = False) -> dict:
    import torch

    base = QUICK if quick else PARAMS
    if not quick and not Path("/usr/share/datasets/fashion-mnist").exists():
        return {"skipped": "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): the notebook "
                           "target is defined on it"}
    threads = torch.get_num_threads()
    return {"target_seconds": TARGET_SECONDS, "threads": threads,
            "arms": {name: run_arm({**base, **extra}, threads) for name, extra in ARMS.items()}}


def rows(r: dict):
    for name, arm in r["arms"].items():
        acc = ", ".join(f"{m} {v['mean']:.1f}" for m, v in arm["accuracy"].items())
        yield (f"notebook 00 end to end ({name})", r["target_seconds"], arm["seconds"],
               r["target_seconds"] / arm["seconds"],
               f"reference column = the {r['target_seconds']:.0f} s target; peak RSS {arm['peak_rss_mb']:.0f} MB; {acc}")
