"""Dataset storage: peak resident memory of ``load_dataset`` and of one DM iteration for
``storage="float32"``, ``"uint8"`` and ``"memmap"``, and the time per DM iteration of each
(ratios float32 / compact in one run; ``--quick``: IPC 1, batch_real 64, one iteration).

Peak resident memory only grows within a process (``VmHWM``), so each storage is measured in a
fresh Python process (``python -m bench.storage <storage> <dataset>``): resident (``VmRSS``) and
peak memory after the imports, after ``load_dataset`` and after the DM iterations (IPC 10, batch_real 256, DSA, ConvNet-3; on
CUDA also ``torch.cuda.max_memory_allocated``). The memmap cache is written beforehand (its one-off
cost is not part of the load). Data: FashionMNIST when present, else mnist5k (bench_dataset)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORAGES = ("float32", "uint8", "memmap")


def _dataset_name() -> str:
    return "fashion_mnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "mnist5k"


def _memory_mb() -> dict:
    """``{"rss": resident now, "peak": peak resident}`` in MB (Linux ``/proc/self/status``)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024.0, "peak": int(fields["VmHWM"].split()[0]) / 1024.0}


def measure(storage: str, name: str, cache_dir: str, iters: int, ipc: int = 10, batch_real: int = 256) -> dict:
    """One storage in this (fresh) process: peaks and seconds per DM iteration."""
    import torch

    from ddkit.core.utils import make_generator, resolve_device
    from ddkit.data import load_dataset
    from ddkit.methods.distill import distill, dm_objective, init_synthetic
    from ddkit.methods.pools import RandomPool

    dev = resolve_device("auto")
    out = {"storage": storage, "dataset": name, "device": str(dev), "mb_after_imports": _memory_mb()}
    t0 = time.perf_counter()
    ds = load_dataset(name, storage=storage, cache_dir=cache_dir)
    out["load_seconds"] = time.perf_counter() - t0
    out["mb_after_load"] = _memory_mb()
    syn = init_synthetic(ds, ipc, generator=make_generator(0), device=dev)
    pool = RandomPool.for_dataset("ConvNet", ds, device=dev)
    distill(syn, ds, dm_objective, pool, 1, batch_real=batch_real, progress=False, device=dev)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    distill(syn, ds, dm_objective, pool, iters, batch_real=batch_real, seed=1, progress=False, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_mb_dm"] = torch.cuda.max_memory_allocated() / 2 ** 20
    out["seconds_per_iteration"] = (time.perf_counter() - t0) / iters
    out["mb_after_dm"] = _memory_mb()
    out["load_rss_delta_mb"] = out["mb_after_load"]["rss"] - out["mb_after_imports"]["rss"]
    out["train_images_mb"] = (ds.x_train.nbytes if storage != "float32" else
                              ds.x_train.numel() * ds.x_train.element_size()) / 2 ** 20
    return out


def run(quick: bool = False) -> dict:
    name = _dataset_name()
    iters, ipc, batch_real = (1, 1, 64) if quick else (5, 10, 256)
    with tempfile.TemporaryDirectory(prefix="ddkit-bench-storage-") as cache:
        from ddkit.data import load_dataset

        load_dataset(name, storage="memmap", cache_dir=cache)  # the one-off cache write, untimed
        per = {}
        for s in STORAGES:
            proc = subprocess.run([sys.executable, "-m", "bench.storage", s, name, cache, str(iters), str(ipc),
                                   str(batch_real)],
                                  capture_output=True, text=True, check=True)
            per[s] = json.loads(proc.stdout.strip().splitlines()[-1])
    f = per["float32"]
    return {"dataset": name, "iterations": iters, "ipc": ipc, "batch_real": batch_real, "per_storage": per,
            "ratios_vs_float32": {s: {"load_rss_delta_mb": f["load_rss_delta_mb"] / per[s]["load_rss_delta_mb"]
                                      if per[s]["load_rss_delta_mb"] > 0 else None,
                                      "peak_mb_after_dm": f["mb_after_dm"]["peak"] / per[s]["mb_after_dm"]["peak"],
                                      "seconds_per_iteration": f["seconds_per_iteration"]
                                      / per[s]["seconds_per_iteration"]}
                                  for s in STORAGES[1:]}}


def rows(result: dict):
    per, f = result["per_storage"], result["per_storage"]["float32"]
    for s in STORAGES[1:]:
        r = per[s]
        yield (f"storage {s} s/iter", f["seconds_per_iteration"], r["seconds_per_iteration"],
               result["ratios_vs_float32"][s]["seconds_per_iteration"],
               f"{result['dataset']}: load +{f['load_rss_delta_mb']:.0f} MB resident (float32) vs "
               f"+{r['load_rss_delta_mb']:.0f} MB; peak after DM {f['mb_after_dm']['peak']:.0f} vs "
               f"{r['mb_after_dm']['peak']:.0f} MB")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:]))))
