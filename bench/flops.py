"""Achieved FLOP/s of a ConvNet-3 forward+backward (batch 256, 28x28, one SGD step of
``ddkit.train.train_classifier``) against the fp32 matrix-product FLOP/s measured in the same
run (the physical ceiling of this CPU). Paths: eager, ``compile=True``,
``compile=True, channels_last=True``. FLOPs are counted by ``torch.utils.flop_counter`` on one
eager step (convolutions and matmuls; memory-bound ops count zero)."""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import summary
from ddkit.models import get_model
from ddkit.train import train_classifier

PATHS = {"eager": {}, "compile": {"compile": True}, "compile_cl": {"compile": True, "channels_last": True}}


def matmul_flops(n: int = 2048, reps: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def run(quick: bool = False, batch: int = 256, steps: int = 2) -> dict:
    repeats = 3 if quick else 5
    net = get_model("ConvNet", 1, 10, (28, 28))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * steps, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch * steps,), generator=g)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(net(x[:batch]), y[:batch]).backward()
    step_flops = float(counter.get_total_flops())
    net.zero_grad(set_to_none=True)

    def one(flags):
        gen = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        train_classifier(net, x, y, epochs=1, batch_size=batch, generator=gen, **flags)
        return steps * step_flops / (time.perf_counter() - t0)

    warm = {}
    for name, flags in PATHS.items():
        t0 = time.perf_counter()
        one(flags)
        warm[name] = time.perf_counter() - t0
    # every path measurement is paired with a matmul measured right before it (shared machines:
    # the load changes within seconds), and the order of the paths alternates every repeat
    mm, achieved, paired = [], {n: [] for n in PATHS}, {n: [] for n in PATHS}
    for r in range(repeats):
        for name, flags in (PATHS.items() if r % 2 == 0 else list(PATHS.items())[::-1]):
            m = matmul_flops()
            v = one(flags)
            mm.append(m)
            achieved[name].append(v)
            paired[name].append(v / m)
    mm_med = statistics.median(mm)
    out = {"batch": batch, "steps": steps, "step_gflop": step_flops / 1e9,
           "matmul_gflops": summary([m / 1e9 for m in mm]), "warmup_seconds": warm, "paths": {}}
    for name, vals in achieved.items():
        out["paths"][name] = {"gflops": summary([v / 1e9 for v in vals]),
                              "fraction_of_matmul": statistics.median(vals) / mm_med,
                              "paired_fraction_median": statistics.median(paired[name]),
                              "paired_fractions": paired[name]}
    return out


def rows(r: dict):
    for name, p in r["paths"].items():
        yield (f"flops convnet3 {name}", r["matmul_gflops"]["median"], p["gflops"]["median"],
               p["paired_fraction_median"], "GFLOP/s: matmul | path | paired fraction of matmul")
