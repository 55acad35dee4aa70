"""Does ``distill(amp="bf16")`` give the same accuracy as float32? (the accuracy check of
the mixed-precision flag.)

``python -m bench.amp_accuracy [--seeds 0 1 2] [--iterations 200] [--out results/bench/amp_accuracy.json]``

For each seed, DM (``dm_objective``, random ConvNet-3 per iteration, DSA, batch_real 256, IPC 10 on full
Fashion-MNIST) is distilled twice from the same real-image start with the same draws: ``amp="off"``
and ``amp="bf16"`` (the objective under ``torch.autocast``; backward and image step in float32). Both
sets are evaluated by the same float32 protocol (``num_eval`` fresh ConvNet-3, ``eval_epochs``, the
same seeds), and the report is the paired difference of the per-seed mean accuracies with its 95%
t interval (``ddkit.core.stats.paired_difference``), plus each arm's seconds per iteration. Settings are
fixed here before any result is seen. Each (seed, arm) is stored in the output file as it finishes,
so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddkit.core.stats import paired_difference
from ddkit.core.utils import atomic_write_json, environment_info, make_generator
from ddkit.data import load_dataset
from ddkit.evaluate import evaluate_synset
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool

ARMS = ("off", "bf16")


def one_arm(ds, seed: int, amp: str, iterations: int, eval_epochs: int, num_eval: int) -> dict:
    syn = init_synthetic(ds, 10, init="real", generator=make_generator(seed))
    pool = RandomPool.for_dataset("ConvNet", ds)
    stamps = [time.perf_counter()]
    distill(syn, ds, dm_objective, pool, iterations, batch_real=256, seed=seed, progress=False, compile="auto",
            amp=amp, after_step=lambda it, s, b: stamps.append(time.perf_counter()))
    per_it = sorted(b - a for a, b in zip(stamps[1:], stamps[2:]))  # the first iteration carries the compile
    res = evaluate_synset(*syn.detached(), ds, num_models=num_eval, epochs=eval_epochs, seed=seed, progress=False,
                          compile="auto")
    return {"accs": res.accs, "mean": res.mean, "median_seconds_per_iteration": per_it[len(per_it) // 2]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--eval-epochs", type=int, default=300)
    ap.add_argument("--num-eval", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="results/bench/amp_accuracy.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    settings = {"iterations": a.iterations, "eval_epochs": a.eval_epochs, "num_eval": a.num_eval,
                "dataset": "fashion_mnist", "ipc": 10, "batch_real": 256, "threads": torch.get_num_threads()}
    record = json.loads(out.read_text()) if out.exists() else {}
    if record.get("settings") != settings:
        record = {"settings": settings, "runs": {}}
    ds = load_dataset("fashion_mnist")
    for seed in a.seeds:
        for amp in ARMS:
            key = f"{seed}/{amp}"
            if key in record["runs"]:
                continue
            record["runs"][key] = one_arm(ds, seed, amp, a.iterations, a.eval_epochs, a.num_eval)
            atomic_write_json(out, record)
            print(key, record["runs"][key], flush=True)
    done = [s for s in a.seeds if all(f"{s}/{arm}" in record["runs"] for arm in ARMS)]
    means = {arm: [record["runs"][f"{s}/{arm}"]["mean"] for s in done] for arm in ARMS}
    record["bf16_minus_off"] = paired_difference(means["bf16"], means["off"]) if len(done) >= 2 else None
    secs = {arm: [record["runs"][f"{s}/{arm}"]["median_seconds_per_iteration"] for s in done] for arm in ARMS}
    record["speed_bf16_vs_off"] = [o / b for o, b in zip(secs["off"], secs["bf16"])]
    record["environment"] = environment_info()
    atomic_write_json(out, record)
    print(json.dumps({k: record[k] for k in ("bf16_minus_off", "speed_bf16_vs_off")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
