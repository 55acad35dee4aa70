"""ddkit benchmark suite: ``python -m bench`` (or ``make bench``).

Every benchmark times ddkit's path and a *reference-style* path in the same process,
alternating them repeat by repeat, and writes ``results/bench/<name>.json`` (median and spread
of each path, the paired ratio, correctness checks, machine, torch version, threads).
Benchmarks are not tests: nothing here asserts on time. See bench/README.md.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "results" / "bench"

#: benchmark modules, in run order
BENCHMARKS = ("flops", "dm_iteration", "evaluate_synset", "eval_together", "memory", "iid_dsdm", "gan_step",
              "ead_update", "storage", "notebook_e2e", "public_dm")


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), "loadavg": load,
            "mkldnn": torch.backends.mkldnn.is_available()}


def summary(times) -> dict:
    """Median and spread of a list of seconds."""
    times = [float(t) for t in times]
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "q1": q[0], "q3": q[2],
            "n": len(times), "times": times}


def ratio_summary(ref_times, fast_times) -> dict:
    """Ratio of medians and the spread of the paired (same repeat) ratios."""
    pairs = [r / f for r, f in zip(ref_times, fast_times)]
    return {"ratio": statistics.median(ref_times) / statistics.median(fast_times),
            "paired_median": statistics.median(pairs), "paired_min": min(pairs), "paired_max": max(pairs)}


def alternate(paths: dict, repeats: int, setup=None) -> dict:
    """Run each callable of ``paths`` once per repeat, alternating the order every repeat
    (A B, B A, ...) so slow drifts of a shared machine hit both paths alike. A callable gets
    the repeat index and returns anything (kept in ``outputs``). Returns
    ``{name: {"times": [...], "outputs": [...]}}``."""
    names = list(paths)
    res = {n: {"times": [], "outputs": []} for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            if setup is not None:
                setup(n, r)
            t0 = time.perf_counter()
            out = paths[n](r)
            res[n]["times"].append(time.perf_counter() - t0)
            res[n]["outputs"].append(out)
    return res


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def write_result(name: str, result: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or OUT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "machine": machine_info(), **result}, indent=2, default=float))
    tmp.replace(path)
    return path


def bench_dataset(kind: str = "28"):
    """The benchmark data: FashionMNIST when its files are present (else mnist5k) for 28x28;
    a random 3-channel tensor dataset of CIFAR-10 shape for 32x32."""
    from ddkit.data import ImageDataset, load_dataset

    if kind == "28":
        if Path("/usr/share/datasets/fashion-mnist").is_dir():
            try:
                return load_dataset("fashion_mnist")
            except (ValueError, FileNotFoundError):
                pass
        return load_dataset("mnist5k")
    g = torch.Generator().manual_seed(0)
    n_train, n_test = 5000, 2000
    x = torch.randn(n_train, 3, 32, 32, generator=g)
    y = torch.arange(10).repeat(n_train // 10)
    xt = torch.randn(n_test, 3, 32, 32, generator=g)
    yt = torch.arange(10).repeat(n_test // 10)
    return ImageDataset("random_cifar_shape", x, y, xt, yt, (0.0,) * 3, (1.0,) * 3, [str(i) for i in range(10)],
                        "color_crop_cutout_flip_scale_rotate")


def flop_floor(flops: float, ref_median: float, dd_median: float) -> dict:
    """The physical ceiling of a speed-up: ``flops`` (convolutions + matmuls the step must do,
    whatever the loop structure) at the fp32 matrix-product rate measured now is the fastest
    any fp32 path can be; ``ceiling_ratio`` = reference time / that floor is the largest ratio
    reachable without changing the maths, ``ddkit_fraction_of_floor`` how close ddkit is."""
    from bench.flops import matmul_flops

    rate = statistics.median(matmul_flops() for _ in range(3))
    floor = flops / rate
    return {"gflop": flops / 1e9, "matmul_gflops": rate / 1e9, "flop_floor_seconds": floor,
            "ceiling_ratio": ref_median / floor, "ddkit_fraction_of_floor": floor / dd_median}


def alternate_per_iteration(reference, ddkit, repeats: int, iters: int):
    """:func:`alternate` of a reference-style and a ddkit path that each run ``iters``
    iterations per call; returns ``(res, reference seconds/iteration, ddkit seconds/iteration)``."""
    res = alternate({"reference": reference, "ddkit": ddkit}, repeats)
    return res, [t / iters for t in res["reference"]["times"]], [t / iters for t in res["ddkit"]["times"]]
