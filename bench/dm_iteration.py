"""One DM iteration (IPC 10, batch_real 256, DSA on, ConvNet-3) at 28x28 and 32x32:
``ddkit.methods.distill.distill`` + ``dm_objective`` (all classes in one forward per side, the pool's
module re-initialised in place, speed flags) against the reference-style loop
(``bench.reference.dm_reference``). Both paths replay the same generators: the per-iteration
losses must agree to 1e-4 relative."""
from __future__ import annotations

import time

from bench import alternate_per_iteration, bench_dataset, flop_floor, ratio_summary, summary
from bench.reference import dm_reference
from ddkit.core.utils import make_generator
from ddkit.fast.speed import forward_flops
from ddkit.methods.distill import distill, dm_objective, init_synthetic
from ddkit.methods.pools import RandomPool

FLAGS = {"compile": True, "channels_last": False}


def run_one(kind: str, repeats: int, iters: int, ipc: int = 10, batch_real: int = 256, flags=None) -> dict:
    flags = dict(FLAGS if flags is None else flags)
    ds = bench_dataset(kind)
    syn0 = init_synthetic(ds, ipc, generator=make_generator(0))
    images0, labels = syn0.images.detach().clone(), syn0.labels.clone()
    pool = RandomPool.for_dataset("ConvNet", ds)

    def ddkit_path(r):
        syn = init_synthetic(ds, ipc, generator=make_generator(0))
        hist = distill(syn, ds, dm_objective, pool, iters, batch_real=batch_real, seed=100 + r, progress=False,
                       **flags)
        return [h["loss"] for h in hist], syn.images.detach().clone()

    def reference_path(r):
        imgs, losses = dm_reference(images0, labels, ds, iters, seed=100 + r, batch_real=batch_real)
        return losses, imgs

    # warm-up (compilation, allocator); its cost is reported, not timed
    t0 = time.perf_counter()
    ddkit_path(-1)
    warm_ddkit = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference_path(-1)
    warm_ref = time.perf_counter() - t0
    res, ref_t, dd_t = alternate_per_iteration(reference_path, ddkit_path, repeats, iters)
    rel = []
    for (lr_, _), (ld, _) in zip(res["reference"]["outputs"], res["ddkit"]["outputs"]):
        rel += [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(lr_, ld)]
    # FLOPs one iteration cannot avoid: real forward (k * batch_real) + synthetic forward and
    # backward (~3x forward, the images need their gradient)
    f1 = forward_flops(pool.draw(make_generator(0)), (ds.channels, *ds.im_size))
    flops = f1 * (ds.num_classes * batch_real + 3 * len(labels))
    img_diff = max(float((a[1] - b[1]).abs().max()) for a, b in zip(res["reference"]["outputs"],
                                                                      res["ddkit"]["outputs"]))
    return {
        "dataset": ds.name, "im_size": list(ds.im_size), "ipc": ipc, "batch_real": batch_real, "iterations": iters,
        "flags": flags, "seconds_per_iteration": {"reference": summary(ref_t), "ddkit": summary(dd_t)},
        **ratio_summary(ref_t, dd_t),
        "warmup_seconds": {"ddkit_first_call": warm_ddkit, "reference_first_call": warm_ref,
                           "compile_estimate": max(0.0, warm_ddkit - iters * summary(dd_t)["median"])},
        "floor": flop_floor(flops, summary(ref_t)["median"], summary(dd_t)["median"]),
        "loss_max_rel_diff": max(rel), "loss_equal_1e-4": max(rel) <= 1e-4, "images_max_abs_diff": img_diff,
        "losses_first_repeat": {"reference": res["reference"]["outputs"][0][0], "ddkit": res["ddkit"]["outputs"][0][0]},
    }


def run(quick: bool = False) -> dict:
    repeats, iters = (2, 1) if quick else (3, 2)
    return {f"{k}x{k}": run_one(str(k), repeats, iters) for k in (28, 32)}


def rows(result: dict):
    for key, r in result.items():
        if not isinstance(r, dict) or "seconds_per_iteration" not in r:
            continue
        yield (f"dm_iteration {key}", r["seconds_per_iteration"]["reference"]["median"],
               r["seconds_per_iteration"]["ddkit"]["median"], r["ratio"],
               f"loss rel diff {r['loss_max_rel_diff']:.1e}; ceiling ratio {r['floor']['ceiling_ratio']:.2f}, "
               f"ddkit at {100 * r['floor']['ddkit_fraction_of_floor']:.0f}% of the FLOP floor")
