"""One EAD update with t_m = 2 (seed 5, notebooks/05): ``ddkit.methods.ead.distill_ead`` on IPC 10,
probe and real batches of 256, ConvNet-3, 28x28, a short SGD trajectory (trained once here on
2048 real images, plain SGD, one checkpoint per step).

There is no public reference code for EAD; the two paths compared are ddkit's own:
``streaming=False`` (build every checkpoint's double-backward graph, then one backward: the
gradient-matching structure) and ``streaming=True`` (the default: one checkpoint's graph at a
time). Their losses must agree to 1e-4 relative."""
from __future__ import annotations

import torch

from bench import alternate, bench_dataset, ratio_summary, summary


def run(quick: bool = False, iters: int = 1) -> dict:
    try:
        from ddkit.methods.ead import EADSynSet, distill_ead
        from ddkit.methods.trajectory import Trajectory
    except ImportError as e:
        return {"skipped": f"ddkit.methods.ead / ddkit.methods.trajectory not available ({e})"}
    from ddkit.core.utils import make_generator
    from ddkit.data import ImageDataset

    repeats = 1 if quick else 2
    ds = bench_dataset("28")
    idx = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(0))[:2048]
    small = ImageDataset(ds.name, ds.x_train[idx], ds.y_train[idx], ds.x_test[:1000], ds.y_test[:1000], ds.mean,
                         ds.std, ds.classes, ds.dsa_strategy)
    traj = Trajectory.train(small, "ConvNet", epochs=1, batch_size=256, save_every=1, seed=0, progress=False)
    teacher = traj.teacher()
    syn0 = EADSynSet.init_real(ds, 10, teacher, generator=make_generator(0))

    def path(streaming):
        def f(r):
            syn = EADSynSet.init_real(ds, 10, teacher, generator=make_generator(0))
            hist = distill_ead(syn, ds, traj, iterations=iters, t_m=2, lr_img=0.1, lr_label=0.1, seed=r,
                               streaming=streaming, progress=False)
            return [h["loss"] for h in hist]
        return f

    res = alternate({"plain": path(False), "streaming": path(True)}, repeats)
    rel = [abs(a - b) / max(abs(a), 1e-12) for p, s in zip(res["plain"]["outputs"], res["streaming"]["outputs"])
           for a, b in zip(p, s)]
    pt = [t / iters for t in res["plain"]["times"]]
    st = [t / iters for t in res["streaming"]["times"]]
    del syn0
    return {"dataset": ds.name, "ipc": 10, "t_m": 2, "batch_real": 256, "batch_probe": 256,
            "trajectory_checkpoints": len(traj), "seconds_per_update": {"plain": summary(pt), "streaming": summary(st)},
            **ratio_summary(pt, st), "loss_max_rel_diff": max(rel), "loss_equal_1e-4": max(rel) <= 1e-4,
            "note": "no public reference loop: 'reference' column = ddkit streaming=False"}


def rows(r: dict):
    yield ("ead update (t_m=2)", r["seconds_per_update"]["plain"]["median"],
           r["seconds_per_update"]["streaming"]["median"], r["ratio"],
           f"plain vs streaming; loss rel diff {r['loss_max_rel_diff']:.1e}")
