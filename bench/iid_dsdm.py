"""One IID and one DSDM iteration (IPC 10, batch_real 256, DSA, ConvNet-3, 28x28).

The objectives are the notebooks' own: the ``objective`` cells of notebooks/03_iid.ipynb and
04_dsdm.ipynb, loaded and run as they are (``ddkit.runs.notebook_cells.run_tagged``; the rest of the
notebook is not executed). Pools are stand-ins with the same compute: IID's L_CC pool (pretrained
ResNet18s) is a ``RandomPool("ResNet18")``, DSDM's pretrained ConvNet pool a
``RandomPool("ConvNet")`` (a draw costs a re-initialisation instead of a state-dict load; the
iteration's arithmetic is the same). DSDM uses factor 2 (4 decoded images per stored image),
the pixel clamp and the memory-bank update after each step. The reference-style path is
``bench.reference.dm_family_reference`` (per class, two forwards, new network objects); the
per-iteration losses must agree to 1e-4 relative."""
from __future__ import annotations

import time

import torch

from bench import REPO, alternate_per_iteration, bench_dataset, ratio_summary, summary
from bench.reference import dm_family_reference, new_network
from ddkit.core.utils import make_generator, resolve_device
from ddkit.losses import PrototypeBank, class_centralization_loss, local_covariance_loss, semantic_diversity_loss
from ddkit.methods.distill import distill, init_synthetic
from ddkit.methods.pools import RandomPool
from ddkit.runs.notebook_cells import run_tagged

FLAGS = {"compile": True, "channels_last": False}
LAMBDA_CC, LAMBDA_CM, LAMBDA_SD, LAMBDA_H = 0.05, 0.01, 50.0, 0.2
NOTEBOOKS = REPO / "notebooks"


# ----------------------------------------------------------------------------------- IID
def iid_objective(cc_pool, generator):
    """Notebook 03's objective (IID Eq. 8, DM base) at the benchmark's weights."""
    make = run_tagged(NOTEBOOKS / "03_iid.ipynb", "objective")["make_iid_objective"]
    return make(cc_pool=cc_pool, lambda_cc=LAMBDA_CC, lambda_cm=LAMBDA_CM, cc_form="squared", alpha=0.02, beta=0.0,
                generator=generator)


def iid_class_terms(_net, extra, f_real, m_real, f_syn, m_syn, x_syn, _it):
    zr = torch.zeros(len(f_real), dtype=torch.long)
    zs = torch.zeros(len(f_syn), dtype=torch.long)
    dm = torch.sum((f_real.mean(0) - f_syn.mean(0)) ** 2)
    cm = LAMBDA_CM * local_covariance_loss(m_real, zr, m_syn, zs, 1)
    for p in extra.parameters():
        p.requires_grad = False
    cc = LAMBDA_CC * class_centralization_loss(extra.embed(x_syn), zs, 1, 0.02, 0.0, form="squared")
    return dm + cm + cc


# ---------------------------------------------------------------------------------- DSDM
def dsdm_objective(bank):
    """Notebook 04's objective (DSDM Eq. 9) at the benchmark's weights."""
    make = run_tagged(NOTEBOOKS / "04_dsdm.ipynb", "objective")["make_dsdm_objective"]
    return make(bank, lambda_sd=LAMBDA_SD, sd_unbiased=True, lambda_h=LAMBDA_H, h_scale="1/d")


def dsdm_class_terms(bank, c):
    def terms(_net, _extra, f_real, _m_real, f_syn, _m_syn, _x_syn, _it):
        zr = torch.zeros(len(f_real), dtype=torch.long)
        zs = torch.zeros(len(f_syn), dtype=torch.long)
        out = torch.sum((f_real.mean(0) - f_syn.mean(0)) ** 2)
        out = out + LAMBDA_SD * semantic_diversity_loss(f_real, zr, f_syn, zs, 1, unbiased=True)
        if bank.initialized:
            out = out + LAMBDA_H * torch.sum((f_syn.mean(0) - bank.value[c[0]]) ** 2) / f_syn.shape[1]
        c[0] = (c[0] + 1) % bank.value.shape[0]
        return out
    return terms


def run_one(method: str, repeats: int, iters: int, flags: dict, ipc: int = 10, batch_real: int = 256) -> dict:
    ds = bench_dataset("28")
    factor = 2 if method == "dsdm" else 1
    syn0 = init_synthetic(ds, ipc, factor=factor, generator=make_generator(0))
    images0, labels = syn0.images.detach().clone(), syn0.labels.clone()
    pool = RandomPool.for_dataset("ConvNet", ds)
    cc_pool = RandomPool.for_dataset("ResNet18", ds)
    mean, std = (torch.tensor(v, device=resolve_device(None)).view(1, -1, 1, 1) for v in (ds.mean, ds.std))
    clamp = ((0 - mean) / std, (1 - mean) / std) if method == "dsdm" else None  # [0, 1] pixels, as notebook 04
    dim = pool.net.embed_dim

    def ddkit_path(r):
        syn = init_synthetic(ds, ipc, factor=factor, generator=make_generator(0))
        if method == "iid":
            obj, after = iid_objective(cc_pool, make_generator(7 + r)), None
        else:
            bank = PrototypeBank(ds.num_classes, dim)
            obj = dsdm_objective(bank)

            def after(it, s, batch):
                x, y = s.detached()
                bank.update_from(batch.net.embed, x, y)
        hist = distill(syn, ds, obj, pool, iters, batch_real=batch_real, seed=100 + r, progress=False,
                       after_step=after, clamp=clamp, **flags)
        return [h["loss"] for h in hist]

    def reference_path(r):
        if method == "iid":
            g = make_generator(7 + r)
            extra = (lambda: new_network("ResNet18", ds, int(torch.randint(0, 2**62, (1,), generator=g))))
            terms, after = iid_class_terms, None
        else:
            bank = PrototypeBank(ds.num_classes, dim)
            terms, extra = dsdm_class_terms(bank, [0]), None

            def after(net, imgs, labs, f):
                from ddkit.augment import decode
                x, y = decode(imgs, labs, f)
                bank.update_from(net.embed, x, y)
        _, losses = dm_family_reference(images0, labels, ds, iters, terms, seed=100 + r, factor=factor,
                                        batch_real=batch_real, clamp=clamp, after_step=after, extra_net=extra)
        return losses

    t0 = time.perf_counter()
    ddkit_path(-1)
    warm = time.perf_counter() - t0
    res, ref_t, dd_t = alternate_per_iteration(reference_path, ddkit_path, repeats, iters)
    rel = [abs(a - b) / max(abs(a), 1e-12) for lr_, ld in zip(res["reference"]["outputs"], res["ddkit"]["outputs"])
           for a, b in zip(lr_, ld)]
    return {"method": method, "dataset": ds.name, "ipc": ipc, "factor": factor, "batch_real": batch_real,
            "iterations": iters, "flags": flags,
            "seconds_per_iteration": {"reference": summary(ref_t), "ddkit": summary(dd_t)},
            **ratio_summary(ref_t, dd_t), "warmup_seconds": warm,
            "loss_max_rel_diff": max(rel), "loss_equal_1e-4": max(rel) <= 1e-4,
            "losses_first_repeat": {"reference": res["reference"]["outputs"][0], "ddkit": res["ddkit"]["outputs"][0]}}


def run(quick: bool = False, flags=None) -> dict:
    """Both methods on the float32 path (losses equal to the reference-style loop's to 1e-4) and with
    ``amp="bf16"`` (the notebooks' ``amp`` parameter; its losses are compared with the float32 reference
    for information, not equality)."""
    flags = dict(FLAGS if flags is None else flags)
    repeats, iters = (1, 2) if quick else (2, 2)
    out = {m: run_one(m, repeats, iters, flags) for m in ("iid", "dsdm")}
    out.update({f"{m}_bf16": run_one(m, repeats, iters, {**flags, "amp": "bf16"}) for m in ("iid", "dsdm")})
    return out


def rows(result: dict):
    for key, r in result.items():
        if not isinstance(r, dict) or "seconds_per_iteration" not in r:
            continue
        yield (f"{key} iteration", r["seconds_per_iteration"]["reference"]["median"],
               r["seconds_per_iteration"]["ddkit"]["median"], r["ratio"],
               f"loss rel diff {r['loss_max_rel_diff']:.1e}" + (" (bf16 against the float32 reference)"
                                                                if r["flags"].get("amp") == "bf16" else ""))
