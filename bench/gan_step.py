"""One generator step of the global/local objective (paper 01: the ``objective`` cell of
notebooks/01_gan_global_local.ipynb, run as it is, DiM's forms) in ``ddkit.methods.gan_stage2.match_generator``
with DiM's settings (DiM's 8-conv generator, batch 64, 16 SGD steps of the pool model on
``color_crop``-augmented real batches before each generator step, siamese
``color_crop_cutout`` DSA before matching, G step then a WGAN-GP discriminator step with the
fake-class cross-entropy and random labels), ConvNet-3 pool, 28x28.

Timing only: there is no public reference loop for this paper and the GAN stages have no speed
flags, so the table shows ddkit's seconds per step (median over repeats) and the share spent in
the pool's warm-up steps."""
from __future__ import annotations

import time

from bench import REPO, bench_dataset, summary
from ddkit.methods.gan_checkpoint import build_gan
from ddkit.methods.gan_stage2 import GANModelPool, match_generator
from ddkit.runs.notebook_cells import run_tagged


def run(quick: bool = False, iters: int = 1) -> dict:
    repeats = 1 if quick else 2
    ds = bench_dataset("28")
    state = build_gan(ds, seed=0, gen_arch="dim")
    make_objective = run_tagged(REPO / "notebooks" / "01_gan_global_local.ipynb", "objective")[
        "make_global_local_objective"]
    objective = make_objective(w_global=0.01, w_local=0.001, form="dim", balance="fixed")

    def one(steps_warm):
        pool = GANModelPool(["ConvNet"], ds.channels, ds.num_classes, ds.im_size, dsa="color_crop")
        t0 = time.perf_counter()
        match_generator(state, ds, objective, pool=pool, epochs=1, iterations=iters, batch_size=64,
                        pool_train_steps=steps_warm, progress=False, step_order="g_first", d_labels="random",
                        fake_aux=True, match_aug="color_crop_cutout")
        return (time.perf_counter() - t0) / iters

    full, nowarm = [], []
    for _ in range(repeats):
        full.append(one(16))
        nowarm.append(one(0))
    s_full, s_now = summary(full), summary(nowarm)
    return {"dataset": ds.name, "batch_size": 64, "pool_train_steps": 16, "pool": ["ConvNet"], "gen_arch": "dim",
            "seconds_per_step": s_full, "seconds_per_step_without_pool_warmup": s_now,
            "pool_warmup_share": 1 - s_now["median"] / s_full["median"],
            "note": "timing only (no reference-style path, no speed flags in the GAN stages)"}


def rows(r: dict):
    yield ("gan generator step", None, r["seconds_per_step"]["median"], None,
           f"pool warm-up {100 * r['pool_warmup_share']:.0f}% of the step; timing only")
