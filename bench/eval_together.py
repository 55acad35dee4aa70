"""The protocol's N evaluation networks trained together (``ddkit.fast.ensemble``, the default of
``evaluate_synset``) against one by one (``batched=False``), and mixed precision (``amp="bf16"``)
against float32, in one process, alternating. IPC 10, ConvNet-3, DSA, the standard protocol, test
pass included. Same seeds on every path: together and one by one give the same accuracies up to
float reassociation; bf16 must give the same accuracy distribution within noise (over the seeds)."""
from __future__ import annotations

import statistics

from bench import alternate, bench_dataset, ratio_summary, summary
from ddkit.core.utils import make_generator
from ddkit.evaluate import evaluate_synset
from ddkit.methods.distill import init_synthetic

PATHS = {"one_by_one": {"batched": False}, "together": {"batched": True},
         "together_bf16": {"batched": True, "amp": "bf16"}}


def run(quick: bool = False, networks: int = 5) -> dict:
    epochs, seeds = (10, 1) if quick else (100, 3)
    ds = bench_dataset("28")
    x, y = init_synthetic(ds, 10, generator=make_generator(0)).detached()

    def path(flags):
        return lambda r: evaluate_synset(x, y, ds, num_models=networks, epochs=epochs, seed=r, progress=False,
                                         **flags).accs

    res = alternate({name: path(flags) for name, flags in PATHS.items()}, seeds)
    accs = {n: [a for run in res[n]["outputs"] for a in run] for n in PATHS}
    diff = max(abs(a - b) for a, b in zip(accs["one_by_one"], accs["together"]))
    return {"dataset": ds.name, "ipc": 10, "epochs": epochs, "networks": networks, "seeds": seeds,
            "seconds": {n: summary(res[n]["times"]) for n in PATHS},
            "together_vs_one_by_one": ratio_summary(res["one_by_one"]["times"], res["together"]["times"]),
            "bf16_vs_float32": ratio_summary(res["together"]["times"], res["together_bf16"]["times"]),
            "accuracy": {n: {"accs": a, "mean": statistics.mean(a), "std": statistics.pstdev(a)}
                         for n, a in accs.items()},
            "together_max_acc_diff": diff}


def rows(r: dict):
    s, a = r["seconds"], r["accuracy"]
    yield (f"eval N={r['networks']} together", s["one_by_one"]["median"], s["together"]["median"],
           r["together_vs_one_by_one"]["ratio"],
           f"{r['epochs']} ep; max acc diff {r['together_max_acc_diff']:.2f} (one by one vs together)")
    yield (f"eval N={r['networks']} bf16", s["together"]["median"], s["together_bf16"]["median"],
           r["bf16_vs_float32"]["ratio"],
           f"acc fp32 {a['together']['mean']:.1f}±{a['together']['std']:.1f} "
           f"bf16 {a['together_bf16']['mean']:.1f}±{a['together_bf16']['std']:.1f} over {r['seeds']} seed(s)")
