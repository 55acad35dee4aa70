"""One ``evaluate_synset`` network at IPC 10 (ConvNet-3, DSA, the standard protocol) for a fixed
number of epochs, test pass included: ddkit (in-memory batches, speed flags, test pass under
``inference_mode`` in large batches) against the reference-style loop
(``bench.reference.evaluate_reference``: DataLoader over a TensorDataset, batch 256). One
repeat per seed; both paths start from the same initial weights, so the accuracy distributions
over the seeds must agree within training noise."""
from __future__ import annotations

import statistics
import time

from bench import alternate, bench_dataset, flop_floor, ratio_summary, summary
from bench.reference import evaluate_reference
from ddkit.core.utils import make_generator
from ddkit.evaluate import evaluate_synset
from ddkit.fast.speed import forward_flops
from ddkit.methods.distill import init_synthetic
from ddkit.models import get_model

FLAGS = {"compile": True, "channels_last": False}


def run(quick: bool = False, epochs: int | None = None, seeds: int | None = None, flags=None) -> dict:
    flags = dict(FLAGS if flags is None else flags)
    epochs = epochs or (20 if quick else 60)
    seeds = seeds or (1 if quick else 3)
    ds = bench_dataset("28")
    x, y = init_synthetic(ds, 10, generator=make_generator(0)).detached()

    def ddkit_path(r):
        return evaluate_synset(x, y, ds, num_models=1, epochs=epochs, seed=r, progress=False, **flags).accs[0]

    def reference_path(r):
        return evaluate_reference(x, y, ds, epochs=epochs, seed=r)

    t0 = time.perf_counter()
    evaluate_synset(x, y, ds, num_models=1, epochs=1, seed=99, progress=False, **flags)  # compile / warm-up
    warm = time.perf_counter() - t0
    evaluate_reference(x, y, ds, epochs=1, seed=99)  # the reference path's one-time costs, untimed too
    res = alternate({"reference": reference_path, "ddkit": ddkit_path}, seeds)
    ref_acc, dd_acc = res["reference"]["outputs"], res["ddkit"]["outputs"]

    # FLOPs one model cannot avoid: per epoch a forward and backward of every synthetic image
    # (~3x forward) + one forward of every test image
    f1 = forward_flops(get_model("ConvNet", ds.channels, ds.num_classes, ds.im_size), (ds.channels, *ds.im_size))
    flops = f1 * (3 * epochs * len(y) + len(ds.x_test))
    ref_med, dd_med = summary(res["reference"]["times"])["median"], summary(res["ddkit"]["times"])["median"]

    def stats(a):
        return {"accs": a, "mean": statistics.mean(a), "std": statistics.pstdev(a) if len(a) > 1 else 0.0}

    return {"dataset": ds.name, "ipc": 10, "epochs": epochs, "seeds": seeds, "flags": flags,
            "seconds_per_model": {"reference": summary(res["reference"]["times"]),
                                  "ddkit": summary(res["ddkit"]["times"])},
            **ratio_summary(res["reference"]["times"], res["ddkit"]["times"]),
            "warmup_seconds": warm, "floor": flop_floor(flops, ref_med, dd_med),
            "accuracy": {"reference": stats(ref_acc), "ddkit": stats(dd_acc),
                         "mean_diff": statistics.mean(dd_acc) - statistics.mean(ref_acc)}}


def rows(r: dict):
    a = r["accuracy"]
    yield ("evaluate_synset", r["seconds_per_model"]["reference"]["median"], r["seconds_per_model"]["ddkit"]["median"],
           r["ratio"], f"acc ref {a['reference']['mean']:.1f}±{a['reference']['std']:.1f} "
                       f"ddkit {a['ddkit']['mean']:.1f}±{a['ddkit']['std']:.1f} ({r['epochs']} ep); "
                       f"ceiling ratio {r['floor']['ceiling_ratio']:.2f}, ddkit at "
                       f"{100 * r['floor']['ddkit_fraction_of_floor']:.0f}% of the FLOP floor")
