"""The parameters shared by the generative notebooks (01, 02): their ``SPEC`` entries
(:func:`gan_spec`, merged with ``ddkit.runs.params.COMMON``) and the impossible-setting checks that run
before any compute (:func:`validate_gan_config`, :func:`check_notebook_params`)."""
from __future__ import annotations

import math
from pathlib import Path

from ..augment import DSA
from ..models import MODEL_NAMES
from ..runs.params import Param
from .gan_checkpoint import check_checkpoint
from .gan_eval import FIXED_SETS, NOTEBOOK_PROTOCOLS
from .gan_losses import GAN_LOSSES, MATCH_FORMS, check_gan_loss
from .gan_nets import CONDITIONINGS, GEN_ARCHS, SUPPORTED_SIZES, as_hw, positive_int
from .gan_train import D_LABELS, STEP_ORDERS, check_betas
from .gan_stage2 import stage2_schedule

__all__ = ["gan_spec", "validate_gan_config", "check_notebook_params"]


def validate_gan_config(*, gan_loss=None, pool_models=None, weights: dict | None = None,
                        eval_protocol=None, deploy_ipcs=None, gen_width=None, disc_width=None,
                        z_dim=None, mid_layer=None, gan_betas=None) -> None:
    """Fail early (ValueError) on settings that cannot run: an unknown GAN loss, pool model or
    protocol, a negative loss weight, non-positive widths/IPCs, Adam betas that are not two
    numbers in [0, 1)."""
    if gan_loss is not None:
        check_gan_loss(gan_loss)
    if pool_models is not None:
        names = [pool_models] if isinstance(pool_models, str) else list(pool_models)
        if not names:
            raise ValueError("pool_models is empty; give at least one of " + ", ".join(MODEL_NAMES))
        lookup = {n.lower() for n in MODEL_NAMES}
        bad = [n for n in names if str(n).lower() not in lookup]
        if bad:
            raise ValueError(f"unknown pool model(s) {bad}; expected names from {MODEL_NAMES}")
    for k, v in (weights or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
    if eval_protocol is not None and eval_protocol not in NOTEBOOK_PROTOCOLS:
        raise ValueError(f"unknown eval_protocol {eval_protocol!r}; expected one of {NOTEBOOK_PROTOCOLS}")
    if deploy_ipcs is not None:
        ipcs = [deploy_ipcs] if isinstance(deploy_ipcs, int) else list(deploy_ipcs)
        if not ipcs or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ipcs):
            raise ValueError(f"deploy_ipcs must be a non-empty list of positive ints, got {deploy_ipcs!r}")
    for name, v in (("gen_width", gen_width), ("disc_width", disc_width), ("z_dim", z_dim)):
        if v is not None:
            positive_int(name, v)
    if mid_layer is not None and (isinstance(mid_layer, bool) or not isinstance(mid_layer, int)):
        raise ValueError(f"mid_layer must be an int, got {mid_layer!r}")
    if gan_betas is not None:
        check_betas("gan_betas", gan_betas)


def _beta_check(v) -> str | None:
    """One Adam beta: in [0, 1) (the pair: :func:`validate_gan_config`)."""
    return None if 0 <= v < 1 else "an Adam beta is in [0, 1)"


def gan_spec() -> dict:
    """Parameter spec of the keys shared by the generative notebooks (01, 02), to merge with
    ``ddkit.runs.params.COMMON``: ``SPEC = {**COMMON, **gan_spec(), <paper keys>}``."""

    def pool_check(v):
        return None if str(v).lower() in {n.lower() for n in MODEL_NAMES} else \
            f"unknown pool model; expected names from {list(MODEL_NAMES)}"

    def exists(v):
        return None if (not v or Path(v).is_file()) else "no such checkpoint file"

    def strategy(v):
        try:
            DSA(v)
        except ValueError as e:
            return str(e)
        return None

    return {
        "gan_loss": Param(str, choices=GAN_LOSSES, help="'cgan' = papers' Eq. 1-4; 'wgan_gp' = DiM code"),
        "gan_epochs": Param(int, min=0, help="stage-1 epochs"),
        "gan_seed": Param(int, min=-1, help="stage-1 seed (-1 = seed): a fixed one shares stage 1 across seeds"),
        "gan_iters": Param(int, min=0, help="stage-1 iterations per epoch (0 = one pass over the data)"),
        "gan_batch_size": Param(int, min=1),
        "gan_lr": Param(float, min=0, min_exclusive=True),
        "gan_betas": Param(list, item=float, check=_beta_check,
                           help="stage-1 Adam (beta1, beta2); DiM: [0.0, 0.9]"),
        "d_steps": Param(int, min=1, help="discriminator updates per generator update (stage 1)"),
        "fake_aux": Param(bool, help="D's class head also trained on fakes (DiM code: True)"),
        "step_order": Param(str, choices=STEP_ORDERS, help="per GAN iteration: 'd_first' or DiM's 'g_first'"),
        "d_labels": Param(str, choices=D_LABELS, help="labels of D's fakes: the real batch's or DiM's 'random'"),
        "gen_arch": Param(str, choices=GEN_ARCHS, help="'dim': DiM's 8-conv generator; 'compact': 3 deconvs"),
        "gen_conditioning": Param(str, choices=CONDITIONINGS,
                                  help="'concat' [z (+) y] (Eq. 5) or DiM's 'overwrite' of z[:, :K]"),
        "gp_lambda": Param(float, min=0),
        "aux_weight": Param(float, min=0, help="auxiliary class CE (AC-GAN); 0 = pure Eq. 4 cGAN"),
        "z_dim": Param(int, min=1),
        "gen_width": Param(int, min=1, help="DiM: 196"),
        "disc_width": Param(int, min=1, help="DiM: 196"),
        "match_epochs": Param(int, min=0, help="stage-2 epochs (a new pool model each epoch)"),
        "batch_size": Param(int, min=1, help="stage-2 real/synthetic batch"),
        "match_lr": Param(float, min=0, min_exclusive=True, help="stage-2 lr of G and D (DiM 5e-6)"),
        "match_betas": Param(list, item=float, check=_beta_check, help="stage-2 Adam betas of G and D (DiM [0, 0.9])"),
        "match_aug": Param(str, check=strategy, help="siamese DSA before matching ('' = off; DiM color_crop_cutout)"),
        "pool_dsa": Param(str, check=strategy, help="DSA of the pool warm-up batches ('' = off; DiM color_crop)"),
        "pool_lr": Param(float, min=0, min_exclusive=True, help="SGD lr of the pool warm-up (DiM 0.01)"),
        "gan_weight": Param(float, min=0, help="weight of L_CGAN in stage 2 (Eq. 7/8: 1)"),
        "pool_models": Param(list, item=str, check=pool_check, help="[] = [model]"),
        "pool_train_steps": Param(int, min=0, help="SGD steps of the pool model before each G step"),
        "pool_batch_size": Param(int, min=1),
        "mid_layer": Param(int, min=-1, help="-1 = each model's own mid layer"),
        "deploy_ipcs": Param(list, item=int, min=1, help="IPCs sampled from the saved generator"),
        "eval_protocol": Param(str, choices=NOTEBOOK_PROTOCOLS,
                               help="'fixed' set, DiM's 'dim' validate, or 'both'"),
        "dim_batch": Param(int, min=1, help="dim protocol: generated images per step (DiM 64; validate.py 128)"),
        "dim_test_every": Param(int, min=1, help="dim protocol: test evaluation every that many epochs (DiM 200)"),
        "fixed_sets": Param(str, choices=FIXED_SETS, help="fixed protocol: one set, or one per network"),
        "baselines": Param(list, item=str, choices=("random", "cgan", "dim")),
        "dim_form": Param(str, choices=MATCH_FORMS, help="DiM baseline's logit term: DiM code or Eq. 6 sum"),
        "gan_checkpoint": Param(str, check=exists, help="'' = train stage 1 (cached)"),
        "use_cache": Param(bool),
    }


# --------------------------------------------------------------------------- notebook checks

def check_notebook_params(P, dataset=None) -> None:
    """Impossible-setting checks shared by the generative notebooks (ValueError before compute):
    GAN loss, pool models, protocol, image size, IPCs larger than the classes (random-real
    baseline), and a ``gan_checkpoint`` made for another dataset / image size / class count.
    (``deploy_ipcs`` may be empty: then only ``ipc`` is evaluated.)"""
    validate_gan_config(gan_loss=P.gan_loss, pool_models=P.pool_models or [P.model],
                        eval_protocol=P.eval_protocol, deploy_ipcs=list(P.deploy_ipcs) or None,
                        gan_betas=P.gan_betas)
    if hasattr(P, "match_betas"):
        validate_gan_config(gan_betas=P.match_betas)
    if getattr(P, "iterations", 0) and hasattr(P, "match_epochs"):
        stage2_schedule(P.match_epochs, P.iterations, 1, 1)       # iterations >= match_epochs
    if dataset is not None:
        if as_hw(dataset.im_size) not in SUPPORTED_SIZES:
            raise ValueError(f"the DiM generator makes {SUPPORTED_SIZES} images; dataset {dataset.name} "
                             f"has {dataset.im_size}")
        need = max([P.ipc, *P.deploy_ipcs])
        if "random" in P.baselines:
            small = min(len(dataset.class_indices(c)) for c in range(dataset.num_classes))
            if need > small:
                raise ValueError(f"the random-real baseline needs {need} images per class, the smallest "
                                 f"class of {dataset.name} has {small}")
        if P.gan_checkpoint:
            check_checkpoint(P.gan_checkpoint, dataset)
