"""The parameters shared by the generative notebooks (01, 02): their constraints, :data:`GAN_CHECKS`
(``CHECKS = {**GAN_CHECKS, <the paper's keys>}``; the keys every notebook shares are checked by
``ddkit.runs.params.KNOWN``). Settings that need the dataset are checked where it is used: the image size
by the generator, a ``gan_checkpoint`` against the dataset by ``stage1``."""
from __future__ import annotations

from ..runs.params import Augment, ExistingFile, Model
from .gan_eval import FIXED_SETS, NOTEBOOK_PROTOCOLS
from .gan_losses import GAN_LOSSES, MATCH_FORMS
from .gan_nets import CONDITIONINGS, GEN_ARCHS
from .gan_train import D_LABELS, STEP_ORDERS

__all__ = ["GAN_CHECKS"]

#: Constraints of the keys notebooks 01 and 02 share (``ddkit.runs.params.as_constraint`` forms: an
#: interval or the allowed values; objects where a name must be looked up). A beta is checked per item;
#: that there are two of them is a rule of the notebook (``len(gan_betas) == 2``).
GAN_CHECKS = {
    "gan_loss": GAN_LOSSES, "gan_epochs": "[0, inf)", "gan_seed": "[-1, inf)", "gan_iters": "[0, inf)",
    "gan_batch_size": "[1, inf)", "gan_lr": "(0, inf)", "gan_betas": "[0, 1)", "d_steps": "[1, inf)",
    "step_order": STEP_ORDERS, "d_labels": D_LABELS, "gen_arch": GEN_ARCHS, "gen_conditioning": CONDITIONINGS,
    "gp_lambda": "[0, inf)", "aux_weight": "[0, inf)", "z_dim": "[1, inf)", "gen_width": "[1, inf)",
    "disc_width": "[1, inf)", "match_epochs": "[0, inf)", "batch_size": "[1, inf)", "match_lr": "(0, inf)",
    "match_betas": "[0, 1)", "match_aug": Augment(), "pool_dsa": Augment(), "pool_lr": "(0, inf)",
    "gan_weight": "[0, inf)", "pool_models": Model(ignore_case=True), "pool_train_steps": "[0, inf)",
    "pool_batch_size": "[1, inf)", "mid_layer": "[-1, inf)", "deploy_ipcs": "[1, inf)",
    "eval_protocol": NOTEBOOK_PROTOCOLS, "dim_batch": "[1, inf)", "dim_test_every": "[1, inf)",
    "fixed_sets": FIXED_SETS, "baselines": ["random", "cgan", "dim"], "dim_form": MATCH_FORMS,
    "gan_checkpoint": ExistingFile(),
}
