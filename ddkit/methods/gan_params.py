"""The parameters shared by the generative notebooks (01, 02): their constraints
(:func:`gan_spec`; the keys every notebook shares are checked by
``ddkit.runs.params.KNOWN``) and the impossible-setting checks that run
before any compute (:func:`validate_gan_config`, :func:`check_notebook_params`)."""
from __future__ import annotations


from ..models import MODEL_NAMES
from ..runs.params import Augment, Choice, ExistingFile, Model, Range
from .gan_checkpoint import check_checkpoint
from .gan_eval import FIXED_SETS, NOTEBOOK_PROTOCOLS
from .gan_losses import GAN_LOSSES, MATCH_FORMS, check_gan_loss
from .gan_nets import CONDITIONINGS, GEN_ARCHS, SUPPORTED_SIZES, as_hw, positive_int
from .gan_train import D_LABELS, STEP_ORDERS, check_betas
from .gan_stage2 import stage2_schedule

__all__ = ["gan_spec", "validate_gan_config", "check_notebook_params"]


def validate_gan_config(*, gan_loss=None, pool_models=None,
                        eval_protocol=None, deploy_ipcs=None, gen_width=None, disc_width=None,
                        z_dim=None, mid_layer=None, gan_betas=None) -> None:
    """Fail early (ValueError) on settings that cannot run: an unknown GAN loss, pool model or
    protocol, non-positive widths/IPCs, Adam betas that are not two
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


def gan_spec() -> dict:
    """Constraints of the parameters shared by the generative notebooks (01, 02):
    ``CHECKS = {**gan_spec(), <paper keys>}``; the types come from the parameters cell and the keys
    every notebook shares (``ipc``, ``model``, ``device``, ...) from ``ddkit.runs.params.KNOWN``."""
    beta = Range(0, 1, hi_open=True)  # one Adam beta; the pair: :func:`validate_gan_config`
    return {
        "gan_loss": Choice(*GAN_LOSSES), "gan_epochs": Range(0), "gan_seed": Range(-1), "gan_iters": Range(0),
        "gan_batch_size": Range(1), "gan_lr": Range(0, lo_open=True), "gan_betas": beta, "d_steps": Range(1),
        "step_order": Choice(*STEP_ORDERS), "d_labels": Choice(*D_LABELS), "gen_arch": Choice(*GEN_ARCHS),
        "gen_conditioning": Choice(*CONDITIONINGS), "gp_lambda": Range(0), "aux_weight": Range(0),
        "z_dim": Range(1), "gen_width": Range(1), "disc_width": Range(1), "match_epochs": Range(0),
        "batch_size": Range(1), "match_lr": Range(0, lo_open=True), "match_betas": beta,
        "match_aug": Augment(), "pool_dsa": Augment(), "pool_lr": Range(0, lo_open=True), "gan_weight": Range(0),
        "pool_models": Model(ignore_case=True), "pool_train_steps": Range(0), "pool_batch_size": Range(1),
        "mid_layer": Range(-1), "deploy_ipcs": Range(1), "eval_protocol": Choice(*NOTEBOOK_PROTOCOLS),
        "dim_batch": Range(1), "dim_test_every": Range(1), "fixed_sets": Choice(*FIXED_SETS),
        "baselines": Choice("random", "cgan", "dim"), "dim_form": Choice(*MATCH_FORMS),
        "gan_checkpoint": ExistingFile(),
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
