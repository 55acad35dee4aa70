"""The levers left on the CUDA-graph DM iteration (``python -m bench.graph_levers``, CUDA only).

The default graph loop (``distill(graphs="auto")``, float32) is what ``bench.public_dm`` compares with the
public code. This worker measures, in one process, what each remaining lever does to it, with the same
settings (Fashion-MNIST, IPC 10, batch_real 256, DSA, ConvNet-3):

1. ``profile``: the GPU time of one iteration by kernel (``torch.profiler`` over :data:`PROFILE_STEPS`
   uncaptured device-side iterations after two warm-up ones): where the time of the captured step goes;
2. each entry of :data:`LEVERS`: ``bench.public_dm``'s graph arm (three ``distill(graphs=True)`` calls:
   first run, second run, steady iteration) with those ``distill`` keywords.

The JSON is rewritten after every piece (atomically), so a run stopped by its time limit keeps what it
measured. ``bench.public_dm`` runs this after its own arms and puts the ratios against the public code in
its table; alone: ``python -m bench.graph_levers [--iterations N] [--out FILE]`` (a table and the JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: name -> ``distill`` keywords on top of ``graphs=True`` (``channels_last="auto"`` follows ``compile``).
LEVERS = {
    "bf16": {"amp": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16+compile": {"amp": "bf16", "compile": True},
}
#: Iterations the profiler records (after two warm-up iterations).
PROFILE_STEPS = 3
#: Kernels listed in the profile (largest GPU time first).
PROFILE_TOP = 12


def profile(steps: int = PROFILE_STEPS, device: str = "cuda") -> dict:
    """GPU milliseconds per iteration of the default device-side iteration, by kernel, and the wall
    milliseconds of one uncaptured iteration (its launches included)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from ddkit.augment import DSA
    from ddkit.core.utils import make_generator
    from ddkit.methods.device_loop import DeviceIteration
    from ddkit.methods.distill import dm_objective, init_synthetic
    from ddkit.methods.pools import RandomPool

    from .public_dm import SETTINGS, _ddkit_data

    dev = torch.device(device)
    ds = _ddkit_data().to(dev)
    syn = init_synthetic(ds, SETTINGS["ipc"], generator=make_generator(0), device=dev)
    net = RandomPool.for_dataset(SETTINGS["model"], ds, device=dev).net.train()
    loop = DeviceIteration(syn, ds, dm_objective, net, DSA(ds.dsa_strategy), SETTINGS["batch_real"], 1.0, 0.5,
                           None, make_generator(0, dev), torch.zeros_like(syn.images))
    for _ in range(2):
        loop.step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            loop.step()
        sync()
    wall = (time.perf_counter() - t0) / steps
    kernels = [e for e in prof.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in kernels) / steps / 1e3
    return {"gpu_ms_per_iteration": total, "wall_ms_per_uncaptured_iteration": wall * 1e3, "steps": steps,
            "top": [{"name": e.key[:120], "ms_per_iteration": e.self_device_time_total / steps / 1e3,
                     "calls_per_iteration": e.count / steps} for e in kernels[:PROFILE_TOP]]}


def run(iterations: int, out: Path, levers=tuple(LEVERS)) -> dict:
    """Profile, then every lever in ``levers``; ``out`` holds the record so far after each piece (a piece
    that raises is recorded with its error and the next one runs)."""
    import torch

    from ddkit.core.utils import atomic_write_json

    from .public_dm import _ddkit_dm_graphs

    record = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "iterations": iterations,
              "levers": {}}
    pieces = [("profile", profile)] + [(name, lambda f=LEVERS[name]: _ddkit_dm_graphs(iterations, **f))
                                       for name in levers]
    for name, measure in pieces:
        t0 = time.perf_counter()
        try:
            result = measure()
        except Exception as e:  # one lever failing must not lose the others' numbers
            result = {"error": f"{type(e).__name__}: {e}"[:500]}
        result["seconds"] = time.perf_counter() - t0
        if name == "profile":
            record["profile"] = result
        else:
            record["levers"][name] = result
        atomic_write_json(out, record)
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.graph_levers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20, help="iterations of the first distill call (default 20)")
    ap.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    ap.add_argument("--out", default="results/bench/graph_levers.json")
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench.graph_levers: the graph loop runs on CUDA only; no CUDA device here", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = run(a.iterations, out, a.levers)
    for name, r in record["levers"].items():
        print(f"{name:<16}" + (f"steady {r['steady'] * 1e3:7.2f} ms  second run {r['second_run'] * 1e3:7.2f} ms  "
                               f"first run {r['first_run'] * 1e3:7.2f} ms" if "steady" in r else r.get("error", "?")))
    print(json.dumps(record.get("profile", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
