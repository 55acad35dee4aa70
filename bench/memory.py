"""Memory of a DM run: peak resident memory (``ru_maxrss``) after 50 and after 200
iterations of ``distill`` + ``dm_objective`` (IPC 10, batch_real 256, DSA, ConvNet-3; quick: 10 and
40 iterations at batch_real 64), and of the float32 against the bf16 path. A leak shows as growth
between the two checkpoints. Each run is its own process (``ru_maxrss`` never goes down)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CODE = """
import json, resource, sys, torch
torch.set_num_threads({threads})
from bench import bench_dataset
from ddkit.core.utils import make_generator
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool
ds = bench_dataset("28")
syn = init_synthetic(ds, 10, generator=make_generator(0))
marks, out = {marks}, {{}}
def after_step(it, syn, batch):
    if it + 1 in marks:
        out[it + 1] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
distill(syn, ds, dm_objective, RandomPool.for_dataset("ConvNet", ds), max(marks), batch_real={batch_real},
        progress=False, after_step=after_step, amp="{amp}")
print(json.dumps(out))
"""


def _peak(marks, batch_real, amp):
    import torch

    code = CODE.format(threads=torch.get_num_threads(), marks=tuple(marks), batch_real=batch_real, amp=amp)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def run(quick: bool = False) -> dict:
    marks, batch_real = ((10, 40), 64) if quick else ((50, 200), 256)
    res = {amp: _peak(marks, batch_real, amp) for amp in ("off", "bf16")}
    return {"marks": list(marks), "batch_real": batch_real, "peak_rss_mb": res,
            "growth_mb": {amp: r[marks[1]] - r[marks[0]] for amp, r in res.items()}}


def rows(r: dict):
    a, b = r["marks"]
    for amp, peaks in r["peak_rss_mb"].items():
        peaks = {int(k): v for k, v in peaks.items()}  # JSON keys are strings once saved
        yield (f"memory peak RSS amp={amp}", peaks[a], peaks[b], None,
               f"MB after {a} / {b} iterations (batch_real {r['batch_real']}); growth {r['growth_mb'][amp]:.0f} MB")
