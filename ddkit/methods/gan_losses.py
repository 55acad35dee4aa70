"""What the DiM family minimises: the GAN losses of both stages and the stage-2 matching pieces
shared by notebooks 01 and 02 (each paper's own objective lives in its notebook's tagged cell).

* GAN losses selected by name (:data:`GAN_LOSSES`): ``"cgan"`` - the papers' log-likelihood
  conditional GAN (paper 01 Eq. 1-4, paper 02 Eq. 1): D maximises ``log D(x|y) + log(1 - D(G(z|y)|y))``;
  the generator uses the non-saturating ``-log D(G(z|y)|y)`` (Goodfellow et al. 2014, Sec. 3) unless
  ``saturating=True``. ``"wgan_gp"`` - DiM's code: WGAN critic loss + gradient penalty (Gulrajani et
  al. 2017, lambda 10) + auxiliary class cross-entropy (AC-GAN); ``fake_aux=True`` also trains D's
  class head on fakes, as DiM does.
* :class:`GeneratorBatch` (what a stage-2 objective receives; :meth:`GeneratorBatch.logits_and_mid`),
  :func:`dim_objective` (the DiM baseline of both notebooks) and :class:`TermBalance` (fixed or
  normalised weights of the matching terms).

Pure tensor code on top of ``ddkit.losses`` and the networks (``ddkit.methods.gan_nets``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import logit_matching_loss
from .gan_nets import Discriminator, check_choice

__all__ = ["GAN_LOSSES", "BALANCES", "MATCH_FORMS", "default_aux_weight", "check_gan_loss", "gradient_penalty",
           "discriminator_loss", "generator_loss", "GeneratorBatch", "dim_objective",
           "TermBalance"]

#: GAN objectives: the papers' log-likelihood cGAN and DiM's WGAN-GP + auxiliary CE.
GAN_LOSSES = ("cgan", "wgan_gp")
#: Balance of the weighted matching terms (:class:`TermBalance`).
BALANCES = ("fixed", "equal_start", "running_mean")
#: Forms of the matching terms: the papers' equations (sums) or DiM's code (docs/sources.md, paper 01).
MATCH_FORMS = ("paper", "dim")


def default_aux_weight(gan_loss: str) -> float:
    """Auxiliary class-CE weight: 1 for DiM's AC-WGAN-GP, 0 for the papers' cGAN (Eq. 4 has
    no class head term; its conditioning is D(x|y))."""
    check_gan_loss(gan_loss)
    return 1.0 if gan_loss == "wgan_gp" else 0.0


def check_gan_loss(gan_loss):
    if gan_loss not in GAN_LOSSES:
        raise ValueError(f"unknown gan_loss {gan_loss!r}; expected one of {GAN_LOSSES}")


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], x_real: torch.Tensor,
                     x_fake: torch.Tensor, eps: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): ``mean_i (||grad_x critic(x_hat_i)||_2 - 1)^2``
    with ``x_hat = eps * x_real + (1 - eps) * x_fake``, ``eps ~ U(0, 1)`` per sample (or given,
    shape (N,) / (N, 1, 1, 1)). Differentiable (``create_graph``). No lambda inside."""
    if x_real.shape != x_fake.shape:
        raise ValueError(f"x_real {tuple(x_real.shape)} and x_fake {tuple(x_fake.shape)} differ")
    n = len(x_real)
    if eps is None:
        gdev = generator.device if generator is not None else torch.device("cpu")
        eps = torch.rand(n, generator=generator, device=gdev)
    eps = eps.to(x_real.device, x_real.dtype).reshape(n, *([1] * (x_real.dim() - 1)))
    x_hat = (eps * x_real.detach() + (1 - eps) * x_fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def discriminator_loss(D: Discriminator, x_real: torch.Tensor, y_real: torch.Tensor,
                       x_fake: torch.Tensor, y_fake: torch.Tensor, gan_loss: str = "wgan_gp",
                       gp_lambda: float = 10.0, aux_weight: float | None = None,
                       generator: torch.Generator | None = None, fake_aux: bool = False) -> dict:
    """The discriminator's loss (to minimise) on [-1, 1] images; returns named terms, ``loss``
    the total. ``x_fake`` is detached here.

    The auxiliary class head (AC-GAN) is trained with ``aux_weight * CE(c(x_real), y_real)``;
    ``fake_aux=True`` adds ``aux_weight * CE(c(x_fake), y_fake)`` (DiM's code trains the class head
    on generated images too: ``D_loss = s_fake - s_real + CE_fake + CE_real + lambda * GP``)."""
    check_gan_loss(gan_loss)
    aux_weight = default_aux_weight(gan_loss) if aux_weight is None else float(aux_weight)
    x_fake = x_fake.detach()
    s_real, c_real = D(x_real, y_real)
    s_fake, c_fake = D(x_fake, y_fake)
    out = {}
    if gan_loss == "cgan":
        # -[log D(x|y) + log(1 - D(G(z|y)|y))], D = sigmoid(score)  (Eq. 2 / Eq. 4)
        out["adv"] = (F.binary_cross_entropy_with_logits(s_real, torch.ones_like(s_real))
                      + F.binary_cross_entropy_with_logits(s_fake, torch.zeros_like(s_fake)))
    else:
        out["adv"] = s_fake.mean() - s_real.mean()
        out["gp"] = gradient_penalty(lambda x: D(x, y_real)[0], x_real, x_fake, generator=generator)
    loss = out["adv"] + (gp_lambda * out["gp"] if "gp" in out else 0)
    if aux_weight:
        out["aux"] = F.cross_entropy(c_real, y_real)
        loss = loss + aux_weight * out["aux"]
        if fake_aux:
            out["aux_fake"] = F.cross_entropy(c_fake, y_fake)
            loss = loss + aux_weight * out["aux_fake"]
    out["loss"] = loss
    return out


def generator_loss(D: Discriminator, x_fake: torch.Tensor, y_fake: torch.Tensor,
                   gan_loss: str = "wgan_gp", aux_weight: float | None = None,
                   saturating: bool = False) -> dict:
    """The generator's GAN loss (to minimise) on [-1, 1] fakes; ``loss`` is the total."""
    check_gan_loss(gan_loss)
    aux_weight = default_aux_weight(gan_loss) if aux_weight is None else float(aux_weight)
    s_fake, c_fake = D(x_fake, y_fake)
    out = {}
    if gan_loss == "cgan":
        if saturating:   # literal Eq. 2: min_G log(1 - D(G(z))) = -softplus(score)
            out["adv"] = -F.softplus(s_fake).mean()
        else:            # non-saturating: min_G -log D(G(z))
            out["adv"] = F.binary_cross_entropy_with_logits(s_fake, torch.ones_like(s_fake))
    else:
        out["adv"] = -s_fake.mean()
    loss = out["adv"]
    if aux_weight:
        out["aux"] = F.cross_entropy(c_fake, y_fake)
        loss = loss + aux_weight * out["aux"]
    out["loss"] = loss
    return out


@dataclass
class GeneratorBatch:
    """What a stage-2 objective receives: the pool ``net`` (frozen, train mode), a real batch
    and the paired synthetic batch (``x_syn[i]`` has label ``y_real[i]``; both normalised
    space, ``x_syn`` carries the generator's graph), the index of the ``mid`` feature map."""
    net: nn.Module
    x_real: torch.Tensor
    y_real: torch.Tensor
    x_syn: torch.Tensor
    y_syn: torch.Tensor
    mid_layer: int
    iteration: int
    epoch: int

    def logits_and_mid(self, x: torch.Tensor):
        """``(logits, feature_maps(x)[mid_layer])`` of ``net`` from one pass (any ddkit zoo model:
        ``forward == classifier(embed_from_last(feature_maps(x)[-1]))``)."""
        maps = self.net.feature_maps(x)
        logits = self.net.classifier(self.net.embed_from_last(maps[-1]))
        return logits, maps[self.mid_layer]


def dim_objective(w_global: float = 0.01, form: str = "dim") -> Callable[[GeneratorBatch], dict]:
    """The DiM baseline: logit matching only, real side detached. Shared by notebooks 01 and 02.

    ``form="dim"`` (DiM's public code, docs/sources.md, paper 01):
    ``w_global * mean((log_softmax(f(x_real)) - log_softmax(f(x_syn)))^2)``;
    ``form="paper"``: the logit matching as paper 01 Eq. 6 writes it (sum of squared logit
    differences over the paired batch), i.e. the global/local objective without its local term."""
    if w_global < 0:
        raise ValueError(f"w_global must be >= 0, got {w_global}")
    if form not in MATCH_FORMS:
        raise ValueError(f"form must be one of {MATCH_FORMS}, got {form!r}")

    def objective(b: GeneratorBatch) -> dict:
        with torch.no_grad():
            l_real = b.net(b.x_real)
        l_syn = b.net(b.x_syn)
        if form == "dim":
            glob = logit_matching_loss(l_syn, l_real, reduction="mean", space="log_softmax")
        else:
            glob = logit_matching_loss(l_syn, l_real, reduction="sum")
        return {"loss": w_global * glob, "global": glob, "w_global": w_global * glob}

    return objective


class TermBalance:
    """How the matching terms ``L_t`` (unweighted, e.g. global and local) are weighted into one loss.

    * ``"fixed"``: ``L = sum_t w_t L_t`` (paper 01 Eq. 8, the papers' weights).
    * ``"equal_start"``: weights chosen on the first batch so the weighted terms are equal there and
      their sum is the paper's: ``w'_t = S_0 / (n L_t^(0))`` with ``S_0 = sum_s w_s L_s^(0)``, then kept.
    * ``"running_mean"``: ``L = sum_t (S_0 / n) L_t / m_t`` with ``m_t`` the running mean of ``L_t``
      over the batches so far (this one included, no gradient): each term keeps an equal share,
      ``S_0 / n`` on average, whatever its scale.

    ``__call__(terms) -> {"loss", "w_<t>": weighted term}`` (``terms``: name -> scalar tensor)."""

    def __init__(self, weights: dict, mode: str = "fixed"):
        check_choice("balance", mode, BALANCES)
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"weight of {k!r} must be a finite number >= 0, got {v!r}")
        self.weights, self.mode = {k: float(v) for k, v in weights.items()}, mode
        self.scale: dict | None = None          # per-term multiplier after the first batch
        self.sums = {k: 0.0 for k in weights}
        self.count = 0

    def cache_identity(self) -> dict:
        """What determines the weighting (for a stage-2 cache key): the weights and the mode."""
        return {"weights": self.weights, "mode": self.mode}

    def __call__(self, terms: dict) -> dict:
        missing = set(self.weights) - set(terms)
        if missing:
            raise ValueError(f"TermBalance needs the terms {sorted(self.weights)}; missing {sorted(missing)}")
        vals = {k: float(terms[k].detach()) for k in self.weights}
        self.count += 1
        for k in self.weights:
            self.sums[k] += vals[k]
        if self.mode == "fixed":
            scale = self.weights
        else:
            if self.scale is None:            # the first batch fixes S_0 / n
                share = sum(self.weights[k] * vals[k] for k in self.weights) / len(self.weights)
                self.scale = {k: share for k in self.weights}
                if self.mode == "equal_start":
                    self.scale = {k: share / max(vals[k], 1e-12) for k in self.weights}
            if self.mode == "equal_start":
                scale = self.scale
            else:
                scale = {k: self.scale[k] / max(self.sums[k] / self.count, 1e-12) for k in self.weights}
        out = {f"w_{k}": scale[k] * terms[k] for k in self.weights}
        out["loss"] = sum(out.values())
        return out
