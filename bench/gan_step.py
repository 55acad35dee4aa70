"""One generator step of the global/local objective (seed 1, notebooks/01): ``ddkit.generative.
match_generator`` with DiM's settings (DiM's 8-conv generator, batch 64, 16 SGD steps of the pool
model on ``color_crop``-augmented real batches before each generator step, siamese
``color_crop_cutout`` DSA before matching, G step then a WGAN-GP discriminator step with the
fake-class cross-entropy and random labels), ConvNet-3 pool, 28x28.

Timing only: there is no public reference loop for this paper and ``ddkit/generative.py`` has no
speed flags in issue 7, so the table shows ddkit's seconds per step (median over repeats) and
the share spent in the pool's warm-up steps."""
from __future__ import annotations

import time

import torch

from bench import bench_dataset, summary


def run(quick: bool = False, iters: int = 1) -> dict:
    try:
        from ddkit.generative import GANModelPool, build_gan, forward_logits_mid, match_generator
        from ddkit.losses import feature_matching_loss, logit_matching_loss
    except ImportError as e:  # the module is another helper's; absent -> skip with a note
        return {"skipped": f"ddkit.generative does not expose the stage-2 step ({e})"}
    repeats = 1 if quick else 2
    ds = bench_dataset("28")
    state = build_gan(ds, seed=0, gen_arch="dim")

    def objective(b):
        with torch.no_grad():
            l_real, m_real = forward_logits_mid(b.net, b.x_real, b.mid_layer)
        l_syn, m_syn = forward_logits_mid(b.net, b.x_syn, b.mid_layer)
        glob = logit_matching_loss(l_syn, l_real, reduction="mean", space="log_softmax")
        loc = feature_matching_loss(m_syn, m_real, reduction="mean")
        return {"loss": 0.01 * glob + 0.001 * loc, "global": glob, "local": loc}

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
            "note": "timing only (no reference-style path, no speed flags in ddkit.generative)"}


def rows(r: dict):
    yield ("gan generator step", None, r["seconds_per_step"]["median"], None,
           f"pool warm-up {100 * r['pool_warmup_share']:.0f}% of the step; timing only")
