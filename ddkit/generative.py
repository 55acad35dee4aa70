"""Generative dataset distillation: a conditional GAN whose generator *is* the distilled set.

Shared machinery of the DiM family (DiM, "Balancing Global Structure and Local Details"
(notebook 01) and "Self-Knowledge Distillation" (notebook 02)):

* :class:`ConditionalGenerator` - DiM's generator (``gen_arch="dim"``: Linear + BN + ReLU, then
  deconv, three 3x3 convs, deconv, a 3x3 conv, deconv, a 3x3 conv to the image, tanh; 8 conv
  layers, BN + ReLU after each but the last) or ddkit's compact one (``"compact"``: three
  transposed convs and a 3x3 conv). The label is *concatenated* to the noise (the papers'
  Eq. 5) or, as DiM's code does, written over z's first K entries (``conditioning``).
  ``forward(z, y)`` returns the tanh image in [-1, 1] (the GAN space);
  :meth:`ConditionalGenerator.generate` / :meth:`ConditionalGenerator.sample` return
  images in the dataset's *normalised* space, ready for any ddkit model.
* :class:`Discriminator` - 8 convolutions with layer norm + LeakyReLU and two heads:
  a real/fake score and class logits (AC-GAN). With ``projection=True`` the score is
  conditioned on the label (``s(x, y) = w.h + <e_y, h>``), so ``D(x|y)`` of Eq. 4 is literal.
* GAN losses selected by name (:data:`GAN_LOSSES`):
  ``"cgan"`` - the papers' log-likelihood conditional GAN (seed 1 Eq. 1-4, seed 2 Eq. 1):
  D maximises ``log D(x|y) + log(1 - D(G(z|y)|y))``; the generator uses the
  non-saturating form ``-log D(G(z|y)|y)`` (Goodfellow et al. 2014, Sec. 3) unless
  ``saturating=True`` (the literal ``log(1 - D(G(z|y)))``).
  ``"wgan_gp"`` - what DiM's public code trains with: WGAN critic loss + gradient penalty
  (lambda 10) + auxiliary class cross-entropy (AC-GAN) on real (D) and fake (G) images;
  ``fake_aux=True`` also trains D's class head on fakes, as DiM does. DiM's loop order
  (G step, then D on fakes with random labels) is ``step_order="g_first"``, ``d_labels="random"``.
* :class:`GANModelPool` - DiM's model pool: per epoch one architecture is drawn from
  ``names`` (default {ConvNet, ResNet10, ResNet18}), freshly initialised, and trained a few
  SGD steps on real batches (``pool_train_steps``, 16 in DiM; DSA on them with ``dsa``, DiM's
  ``color_crop``) before each generator step.
* :func:`train_gan` (stage 1) and :func:`match_generator` (stage 2: GAN loss + a matching
  objective callable, so each paper's objective lives in its own notebook cell; optional siamese
  DSA before matching, :func:`siamese_augment`); :class:`TermBalance` weights the matching terms
  (the papers' fixed weights or a normalised balance, an ablation).
* Checkpoints (G + D + optimizer states + params + history, atomic, ``weights_only=True``
  loads that refuse another dataset / image size / class count), a stage-1 cache keyed by
  the stage-1 params (:func:`stage1`) with resume, and :func:`evaluate_generator` with
  both deployment protocols (:data:`EVAL_PROTOCOLS`): ``"fixed"`` (IPC images per class drawn
  once; shared or one set per network, :data:`FIXED_SETS`) and ``"dim"`` (DiM's ``validate``:
  a fresh generated batch every step, last epoch and best-of-test-evaluations reported).
* :func:`dim_objective` - the DiM baseline shared by both notebooks; notebook helpers
  (:func:`gan_spec`, :func:`stage1_from_params`, :func:`compare_methods`, :func:`timed_redeploy`,
  :func:`show_class_grids`) so the notebooks hold no copied code.

Everything takes explicit ``torch.Generator`` objects (CPU generators for noise and
indices, so a seed gives the same images on any device).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import DSA
from .models import MODEL_NAMES, get_model, reinit_
from .evaluate import EvalResult, evaluate_synset
from .losses import logit_matching_loss
from .train import sgd
from .results import resolve_results_dir
from .utils import atomic_torch_save, make_generator, safe_torch_load

__all__ = [
    "GAN_LOSSES", "DEFAULT_POOL", "EVAL_PROTOCOLS", "NOTEBOOK_PROTOCOLS", "FIXED_SETS", "MATCH_FORMS",
    "GEN_ARCHS", "CONDITIONINGS", "STEP_ORDERS", "D_LABELS", "BALANCES", "SELECTIONS", "BEST_TEST_LABEL",
    "CHECKPOINT_FORMAT",
    "ConditionalGenerator", "Discriminator", "GANState", "GANModelPool", "MatchBatch", "TermBalance",
    "gradient_penalty", "discriminator_loss", "generator_loss", "default_aux_weight", "siamese_augment",
    "build_gan", "train_gan", "match_generator", "stage2_schedule", "stage1", "stage2",
    "save_checkpoint", "load_checkpoint", "checkpoint_meta", "check_checkpoint",
    "evaluate_generator", "GeneratorEval", "dim_steps_per_epoch", "dim_batch_source", "evaluation_entries",
    "comparison_entries", "dim_objective", "forward_logits_mid", "term_scales", "paired_over_seeds",
    "claim_verdict", "evidence_markdown",
    "validate_gan_config", "stage1_key", "default_cache_dir", "gan_spec", "check_notebook_params",
    "stage1_from_params", "stage2_from_params", "random_real_eval", "protocol_list", "compare_methods", "timed_redeploy",
    "show_class_grids",
]

#: GAN objectives: the papers' log-likelihood cGAN and DiM's WGAN-GP + auxiliary CE.
GAN_LOSSES = ("cgan", "wgan_gp")
#: DiM / seed 1 / seed 2 model pool (REFERENCE_NOTES).
DEFAULT_POOL = ("ConvNet", "ResNet10", "ResNet18")
#: Deployment evaluation protocols: a fixed set of IPC images per class (the standard
#: protocol, ``evaluate_synset``), or DiM's ``validate`` (fresh generated batch every step,
#: :func:`evaluate_generator`).
EVAL_PROTOCOLS = ("fixed", "dim")
#: What a notebook's ``eval_protocol`` may say: one protocol, or ``"both"`` (fixed first).
NOTEBOOK_PROTOCOLS = (*EVAL_PROTOCOLS, "both")
#: Fixed-protocol sets: ``"one"`` set (seed ``seed``) for every evaluation network, or
#: ``"per_model"``: network ``i`` trains on its own set (seed ``seed + i``), so the mean is over
#: draws from the generator as well as over networks.
FIXED_SETS = ("one", "per_model")
#: Generator bodies: DiM's 8-conv network (``gan_model.py``) or ddkit's compact 3-deconv one.
GEN_ARCHS = ("dim", "compact")
#: Label conditioning of G: the papers' concatenation (Eq. 5) or DiM's overwrite of z[:, :K].
CONDITIONINGS = ("concat", "overwrite")
#: Order of the two updates per GAN iteration: ddkit's D then G, or DiM's G then D.
STEP_ORDERS = ("d_first", "g_first")
#: Labels of the fakes in D's update: those of the real batch, or uniform random (DiM).
D_LABELS = ("real", "random")
#: Balance of the weighted matching terms (:class:`TermBalance`).
BALANCES = ("fixed", "equal_start", "running_mean")
#: Evaluation-selection labels written into a result's protocol (``"best_test"``: DiM's report).
SELECTIONS = ("last", "best_test", "best_val")
CHECKPOINT_FORMAT = "ddkit.generative/1"
SUPPORTED_SIZES = ((28, 28), (32, 32))
#: Forms of the matching terms: the papers' equations (sums) or DiM's code (REFERENCE_NOTES seed 1).
MATCH_FORMS = ("paper", "dim")


def _as_hw(im_size) -> tuple[int, int]:
    if isinstance(im_size, int):
        return (im_size, im_size)
    h, w = (int(s) for s in tuple(im_size)[-2:])
    return (h, w)


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {tuple(allowed)}")
    return value


def _check_labels(labels, num_classes, device) -> torch.Tensor:
    y = torch.as_tensor(labels, device=device)
    if y.dim() != 1 or y.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"labels must be a 1-D tensor/list of int class ids, got shape "
                         f"{tuple(y.shape)} dtype {y.dtype}")
    y = y.long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got min {int(y.min())} "
                         f"max {int(y.max())}")
    return y


# --------------------------------------------------------------------------- networks

def _compact_body(width: int, hw) -> list:
    """ddkit's compact generator body: three transposed convolutions (4 -> 7/8 -> 14/16 -> 28/32)."""
    first = (nn.ConvTranspose2d(width, width, 4, 1, 0) if hw == (28, 28)   # 4 -> 7
             else nn.ConvTranspose2d(width, width, 4, 2, 1))                # 4 -> 8
    return [first, nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ConvTranspose2d(width, width, 4, 2, 1)]


def _dim_body(width: int, hw) -> list:
    """DiM's generator body (``gan_model.py``): deconv, three 3x3 convs, deconv, a 3x3 conv, deconv
    (each followed by BN + ReLU in the caller); with the final 3x3 conv that makes 8 conv layers.
    28x28: the first deconv is kernel 3 (4 -> 7), otherwise kernel 4 (4 -> 8); then x2, x2."""
    first = (nn.ConvTranspose2d(width, width, 3, 2, 1) if hw == (28, 28)   # 4 -> 7
             else nn.ConvTranspose2d(width, width, 4, 2, 1))                # 4 -> 8

    def conv():
        return nn.Conv2d(width, width, 3, 1, 1)

    def up():
        return nn.ConvTranspose2d(width, width, 4, 2, 1)
    return [first, conv(), conv(), conv(), up(), conv(), up()]


class ConditionalGenerator(nn.Module):
    """DiM-style conditional generator, ``S = G([z (+) y]; W)`` (seed 1 Eq. 5, seed 2 Eq. 2).

    ``Linear -> width*4*4`` + BN1d + ReLU, then the body (``arch``, :data:`GEN_ARCHS`):
    ``"dim"`` - DiM's 8 conv layers (deconv, 3 x conv3x3, deconv, conv3x3, deconv, conv3x3 to the
    image, each but the last with BN + ReLU); ``"compact"`` - ddkit's 3 transposed convs + conv3x3.
    ``conditioning`` (:data:`CONDITIONINGS`): ``"concat"`` feeds ``[z (+) onehot(y)]`` (the papers'
    Eq. 5); ``"overwrite"`` writes the one-hot over the first K entries of z (DiM's code).
    ``width`` is DiM's 196 channels; smaller widths (e.g. 32) keep CPU runs short.
    ``mean``/``std`` are the dataset's normalisation: ``generate``/``sample`` map the tanh
    output ``t`` to pixels ``(t + 1) / 2`` and then to ``(pixels - mean) / std``.
    """

    def __init__(self, num_classes: int, channels: int, im_size=(32, 32), z_dim: int = 100,
                 width: int = 196, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, arch: str = "dim", conditioning: str = "concat"):
        super().__init__()
        _check_choice("gen_arch", arch, GEN_ARCHS)
        _check_choice("gen_conditioning", conditioning, CONDITIONINGS)
        if conditioning == "overwrite" and z_dim < num_classes:
            raise ValueError(f"gen_conditioning='overwrite' writes the {num_classes}-class one-hot over the first "
                             f"entries of z, so z_dim must be >= {num_classes}; got z_dim={z_dim}")
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _positive_int("z_dim", z_dim)
        _positive_int("width", width)
        hw = _as_hw(im_size)
        if hw not in SUPPORTED_SIZES:
            raise ValueError(f"ConditionalGenerator supports image sizes {SUPPORTED_SIZES}, got {hw}")
        self.num_classes, self.channels, self.im_size = num_classes, channels, hw
        self.z_dim, self.width, self.arch, self.conditioning = z_dim, width, arch, conditioning
        mean = [0.5] * channels if mean is None else [float(m) for m in mean]
        std = [0.5] * channels if std is None else [float(s) for s in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean/std need {channels} entries (std > 0), got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        in_dim = z_dim + num_classes if conditioning == "concat" else z_dim
        self.fc = nn.Linear(in_dim, width * 4 * 4)
        self.bn0 = nn.BatchNorm1d(width * 4 * 4)
        body = _dim_body(width, hw) if arch == "dim" else _compact_body(width, hw)
        layers: list[nn.Module] = []
        for m in body:
            layers += [m, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    # -- core -------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Tanh image in [-1, 1] for noise ``z`` (N, z_dim) and int labels ``y`` (N,)."""
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (N, {self.z_dim}), got {tuple(z.shape)}")
        y = _check_labels(y, self.num_classes, z.device)
        if len(y) != len(z):
            raise ValueError(f"z has {len(z)} rows but labels has {len(y)}")
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        if self.conditioning == "concat":        # [z (+) y], seed 1 Eq. 5
            h_in = torch.cat([z, onehot], dim=1)
        else:                                    # DiM's code: the one-hot replaces z's first K entries
            h_in = torch.cat([onehot, z[:, self.num_classes:]], dim=1)
        h = F.relu(self.bn0(self.fc(h_in)))
        return self.net(h.view(-1, self.width, 4, 4))

    def to_normalized(self, t: torch.Tensor) -> torch.Tensor:
        """[-1, 1] GAN space -> the dataset's normalised space."""
        return ((t + 1) / 2 - self.mean) / self.std

    def from_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The dataset's normalised space -> [-1, 1] GAN space (real images for D)."""
        return (x * self.std + self.mean) * 2 - 1

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` standard-normal latents, drawn on the generator's device (CPU by default)
        and moved to the model: a seed gives the same latents on any device."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(n, self.z_dim, generator=generator, device=gdev).to(self.device)

    def generate(self, labels, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for ``labels`` in the dataset's normalised space (grad flows; the module's
        current train/eval mode is used - :meth:`sample` switches to eval)."""
        y = _check_labels(labels, self.num_classes, self.device)
        if z is None:
            z = self.noise(len(y), generator)
        return self.to_normalized(self(z.to(self.device), y))

    @torch.no_grad()
    def sample(self, ipc: int, seed: int = 0, classes=None, batch_size: int = 1000):
        """Deployment (seed 1 Eq. 10): ``ipc`` images per class from seed-``seed`` noise,
        class-major, in eval mode, without gradients -> ``(x, y)`` (normalised space)."""
        _positive_int("ipc", ipc)
        classes = list(range(self.num_classes)) if classes is None else list(classes)
        y = _check_labels(torch.tensor(classes).repeat_interleave(ipc), self.num_classes, self.device)
        g = make_generator(seed)
        z = self.noise(len(y), g)
        was = self.training
        self.eval()
        try:
            x = torch.cat([self.generate(y[i:i + batch_size], z[i:i + batch_size])
                           for i in range(0, len(y), batch_size)])
        finally:
            self.train(was)
        return x, y


class Discriminator(nn.Module):
    """DiM-style discriminator: 8 conv 3x3 layers at ``width`` channels (strides
    1,2,1,2,1,1,1,2), layer norm over (C, H, W) (``GroupNorm(1, C)``) + LeakyReLU(0.2),
    global max pooling, then a real/fake ``score`` head and a ``classifier`` head (AC-GAN).
    Input: images in the [-1, 1] GAN space. ``forward(x, y=None) -> (score (N,), logits)``;
    with ``projection=True`` the score is conditioned on ``y`` (needed by ``"cgan"``)."""

    STRIDES = (1, 2, 1, 2, 1, 1, 1, 2)

    def __init__(self, num_classes: int, channels: int, im_size=(32, 32), width: int = 196,
                 projection: bool = False):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _positive_int("width", width)
        self.num_classes, self.channels, self.im_size = num_classes, channels, _as_hw(im_size)
        self.width, self.projection = width, bool(projection)
        layers: list[nn.Module] = []
        c_in = channels
        for s in self.STRIDES:
            layers += [nn.Conv2d(c_in, width, 3, s, 1), nn.GroupNorm(1, width), nn.LeakyReLU(0.2)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(width, 1)
        self.classifier = nn.Linear(width, num_classes)
        self.embed = nn.Embedding(num_classes, width) if self.projection else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        h = torch.amax(self.features(x), dim=(2, 3))
        s = self.score(h).squeeze(1)
        if self.projection:
            if y is None:
                raise ValueError("this Discriminator is label-conditioned (projection=True): pass y")
            s = s + (self.embed(y) * h).sum(1)
        return s, self.classifier(h)


# --------------------------------------------------------------------------- GAN losses

def default_aux_weight(gan_loss: str) -> float:
    """Auxiliary class-CE weight: 1 for DiM's AC-WGAN-GP, 0 for the papers' cGAN (Eq. 4 has
    no class head term; its conditioning is D(x|y))."""
    _check_gan_loss(gan_loss)
    return 1.0 if gan_loss == "wgan_gp" else 0.0


def _check_gan_loss(gan_loss):
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
    _check_gan_loss(gan_loss)
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
    _check_gan_loss(gan_loss)
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


# --------------------------------------------------------------------------- state, checkpoints

@dataclass
class GANState:
    """A generator/discriminator pair with their Adam optimizers, the params they were
    trained with, their training history and the stage bookkeeping."""
    G: ConditionalGenerator
    D: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    meta: dict
    params: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    epochs_done: int = 0
    seconds: float = 0.0
    rng_state: torch.Tensor | None = None

    def copy(self, lr: float | None = None, betas=None) -> "GANState":
        """Deep copy (networks + optimizer states); ``lr``/``betas`` re-set the optimizers."""
        new = GANState(copy.deepcopy(self.G), copy.deepcopy(self.D), None, None, dict(self.meta),
                       copy.deepcopy(self.params), list(self.history), self.epochs_done, self.seconds)
        new.opt_g = torch.optim.Adam(new.G.parameters())
        new.opt_d = torch.optim.Adam(new.D.parameters())
        # deep copies: Optimizer.load_state_dict keeps the given state tensors (shared otherwise)
        new.opt_g.load_state_dict(copy.deepcopy(self.opt_g.state_dict()))
        new.opt_d.load_state_dict(copy.deepcopy(self.opt_d.state_dict()))
        for opt in (new.opt_g, new.opt_d):
            for group in opt.param_groups:
                if lr is not None:
                    group["lr"] = float(lr)
                if betas is not None:
                    group["betas"] = tuple(float(b) for b in betas)
        return new


def checkpoint_meta(dataset) -> dict:
    """The meta keys a checkpoint must match to be used with ``dataset``."""
    return {"dataset": str(dataset.name), "channels": int(dataset.channels),
            "im_size": list(_as_hw(dataset.im_size)), "num_classes": int(dataset.num_classes)}


def build_gan(dataset, *, z_dim: int = 100, gen_width: int = 196, disc_width: int = 196,
              gan_loss: str = "wgan_gp", lr: float = 1e-4, betas=(0.0, 0.9), device=None,
              seed: int = 0, gen_arch: str = "dim", gen_conditioning: str = "concat") -> GANState:
    """Fresh G/D for ``dataset`` (deterministic per ``seed``) with Adam(lr, betas) each
    (DiM: lr 1e-4, betas (0, 0.9)); ``gen_arch`` / ``gen_conditioning``: see
    :class:`ConditionalGenerator`."""
    _check_gan_loss(gan_loss)
    device = torch.device(device) if device is not None else dataset.device
    G = ConditionalGenerator(dataset.num_classes, dataset.channels, dataset.im_size, z_dim,
                             gen_width, dataset.mean, dataset.std, arch=gen_arch, conditioning=gen_conditioning)
    D = Discriminator(dataset.num_classes, dataset.channels, dataset.im_size, disc_width,
                      projection=(gan_loss == "cgan"))
    g = make_generator(seed)
    reinit_(G, g)
    reinit_(D, g)
    G, D = G.to(device), D.to(device)
    meta = {**checkpoint_meta(dataset), "format": CHECKPOINT_FORMAT, "z_dim": int(z_dim),
            "gen_width": int(gen_width), "disc_width": int(disc_width), "gan_loss": gan_loss,
            "gen_arch": gen_arch, "gen_conditioning": gen_conditioning,
            "mean": [float(m) for m in dataset.mean], "std": [float(s) for s in dataset.std]}
    return GANState(G, D, torch.optim.Adam(G.parameters(), lr=lr, betas=tuple(betas)),
                    torch.optim.Adam(D.parameters(), lr=lr, betas=tuple(betas)), meta)


def save_checkpoint(state: GANState, path) -> Path:
    """Atomic save of G + D + optimizer states + params + history (+ RNG state)."""
    path = Path(path)
    obj = {"meta": dict(state.meta), "params": _plain(state.params), "G": state.G.state_dict(),
           "D": state.D.state_dict(), "opt_g": state.opt_g.state_dict(),
           "opt_d": state.opt_d.state_dict(), "history": _plain(state.history),
           "epochs_done": int(state.epochs_done), "seconds": float(state.seconds)}
    if state.rng_state is not None:
        obj["rng_state"] = state.rng_state
    atomic_torch_save(obj, path)
    return path


def _plain(obj):
    """JSON-like copy (weights_only-loadable): tuples -> lists, numbers kept."""
    return json.loads(json.dumps(obj, default=str))


def check_checkpoint(path, dataset) -> dict:
    """Load (weights_only) and verify a generator checkpoint is for ``dataset``; ValueError
    names the mismatching key (another dataset, image size, channel or class count)."""
    obj = safe_torch_load(path, expect={"format": CHECKPOINT_FORMAT})
    want = checkpoint_meta(dataset)
    for key, val in want.items():
        have = obj["meta"].get(key)
        if (list(have) if isinstance(have, (list, tuple)) else have) != val:
            raise ValueError(f"generator checkpoint {path} was trained for {key}={have!r}, but this "
                             f"run uses {key}={val!r} (dataset {dataset.name!r}); train a new "
                             f"generator or pass a checkpoint made for this dataset")
    return obj


def load_checkpoint(path, dataset, device=None) -> GANState:
    """Rebuild a :class:`GANState` from :func:`save_checkpoint`'s file, refusing a checkpoint
    made for another dataset / image size / class count (``ValueError``)."""
    obj = check_checkpoint(path, dataset)
    m = obj["meta"]
    params = obj.get("params") or {}
    state = build_gan(dataset, z_dim=m["z_dim"], gen_width=m["gen_width"], disc_width=m["disc_width"],
                      gan_loss=m["gan_loss"], lr=params.get("lr", 1e-4),
                      betas=params.get("betas", (0.0, 0.9)), device=device,
                      gen_arch=m.get("gen_arch", "compact"), gen_conditioning=m.get("gen_conditioning", "concat"))
    try:
        state.G.load_state_dict(obj["G"])
        state.D.load_state_dict(obj["D"])
        state.opt_g.load_state_dict(obj["opt_g"])
        state.opt_d.load_state_dict(obj["opt_d"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: generator checkpoint does not fit its own meta ({e})") from e
    state.meta, state.params = dict(m), params
    state.history = list(obj.get("history") or [])
    state.epochs_done = int(obj.get("epochs_done", 0))
    state.seconds = float(obj.get("seconds", 0.0))
    state.rng_state = obj.get("rng_state")
    return state


# --------------------------------------------------------------------------- batches, pool

class _RealBatches:
    """Shuffled real batches (without replacement within a pass), indices from a CPU generator."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator):
        self.ds, self.bs, self.g = dataset, int(batch_size), generator
        self.n = len(dataset.x_train)
        self.perm, self.pos = None, self.n

    def new_epoch(self):
        """Start a fresh permutation (stage 1 reshuffles every epoch, so a resumed run that
        restores the RNG state continues exactly)."""
        self.pos = self.n

    def next(self):
        if self.pos + self.bs > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.perm[self.pos:self.pos + self.bs].to(self.ds.device)
        self.pos += self.bs
        return self.ds.x_train[idx], self.ds.y_train[idx]


class GANModelPool:
    """DiM's model pool: :meth:`draw` picks one of ``names`` at random and re-initialises it
    in place (one instance per architecture, built once); :meth:`warm` trains the current
    model ``steps`` SGD steps on real batches (SGD 0.01, momentum 0.9, wd 5e-4, the
    optimizer kept across calls within a draw), then freezes it for the generator step.
    ``mid_layer=None`` uses each model's own ``mid_layer`` (ResNet layer2, ConvNet block 2);
    an int overrides it (index into ``feature_maps``). ``dsa``: a DSA strategy (or
    :class:`ddkit.augment.DSA`) applied per sample to every warm-up batch (DiM warms its pool
    models on ``color_crop``-augmented batches); ``None``/``""`` warms on plain batches."""

    def __init__(self, names: Sequence[str], channels: int, num_classes: int, im_size,
                 device=None, mid_layer: int | None = None, lr: float = 0.01, batch_size: int = 256,
                 dsa=None, **model_kw):
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("the model pool needs at least one model name")
        lookup = {n.lower(): n for n in MODEL_NAMES}
        bad = [n for n in names if str(n).lower() not in lookup]
        if bad:
            raise ValueError(f"unknown pool model(s) {bad}; expected names from {MODEL_NAMES}")
        self.names = [lookup[str(n).lower()] for n in names]
        self.args = (channels, num_classes, _as_hw(im_size))
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mid_override, self.lr, self.batch_size, self.model_kw = mid_layer, lr, batch_size, model_kw
        self.dsa = _as_dsa(dsa)
        self._models: dict[str, nn.Module] = {}
        self._maps: dict[str, int] = {}
        self.current: nn.Module | None = None
        self.current_name: str | None = None
        self.optimizer = None

    def _get(self, name):
        if name not in self._models:
            self._models[name] = get_model(name, *self.args, **self.model_kw).to(self.device)
        return self._models[name]

    def _n_maps(self, name) -> int:
        if name not in self._maps:
            model = self._get(name)
            was = model.training
            model.eval()
            with torch.no_grad():
                x = torch.zeros(2, self.args[0], *self.args[2], device=self.device)
                self._maps[name] = len(model.feature_maps(x))
            model.train(was)
        return self._maps[name]

    @property
    def mid_layer(self) -> int:
        if self.current is None:
            raise RuntimeError("draw a model first")
        return self.current.mid_layer if self.mid_override is None else int(self.mid_override)

    def draw(self, generator: torch.Generator | None = None) -> nn.Module:
        gdev = generator.device if generator is not None else torch.device("cpu")
        i = int(torch.randint(len(self.names), (1,), generator=generator, device=gdev))
        model = reinit_(self._get(self.names[i]), generator)
        n_maps = self._n_maps(self.names[i])
        mid = model.mid_layer if self.mid_override is None else int(self.mid_override)
        if not -n_maps <= mid < n_maps:
            raise ValueError(f"mid_layer={mid} but {self.names[i]} has {n_maps} feature maps")
        self.current, self.current_name, self.optimizer = model, self.names[i], None
        self._freeze(True)
        return model

    def _freeze(self, frozen: bool):
        for p in self.current.parameters():
            p.requires_grad_(not frozen)
        self.current.train()

    def warm(self, dataset, steps: int, generator: torch.Generator | None = None) -> nn.Module:
        if self.current is None:
            raise RuntimeError("draw a model first")
        if steps > 0:
            self._freeze(False)
            self.optimizer = self.optimizer or sgd(self.current, self.lr)
            n = len(dataset.x_train)
            gdev = generator.device if generator is not None else torch.device("cpu")
            for _ in range(steps):
                idx = torch.randint(n, (self.batch_size,), generator=generator, device=gdev).to(dataset.device)
                xb = dataset.x_train[idx]
                if self.dsa is not None:
                    xb = self.dsa(xb, generator=generator)
                loss = F.cross_entropy(self.current(xb), dataset.y_train[idx])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            self._freeze(True)
        return self.current


def _as_dsa(dsa) -> DSA | None:
    """A DSA strategy string / DSA object / None or "" (no augmentation) -> ``DSA`` or None
    (an unknown op is a ValueError naming the allowed ones)."""
    if dsa is None or isinstance(dsa, DSA):
        return dsa if (dsa is None or not dsa.is_identity) else None
    aug = DSA(dsa)
    return None if aug.is_identity else aug


def siamese_augment(aug: DSA, x_real: torch.Tensor, x_syn: torch.Tensor,
                    generator: torch.Generator | None = None):
    """Siamese DSA before matching (DiM's ``--match-aug``): ONE parameter draw shared by every
    real and every synthetic image of the batch (DiM augments ``cat([x_real, x_syn])`` with a
    batch-wide draw). Differentiable w.r.t. ``x_syn``. Returns ``(x_real_aug, x_syn_aug)``."""
    params = aug.sample(1, generator=generator, device=x_real.device)
    zero_r = torch.zeros(len(x_real), dtype=torch.long, device=x_real.device)
    zero_s = torch.zeros(len(x_syn), dtype=torch.long, device=x_syn.device)
    return aug.apply(x_real, params, zero_r), aug.apply(x_syn, params, zero_s)


@dataclass
class MatchBatch:
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


def forward_logits_mid(net: nn.Module, x: torch.Tensor, mid_layer: int):
    """``(logits, feature_maps(x)[mid_layer])`` from one pass through ``net`` (any ddkit zoo
    model: ``forward == classifier(embed_from_last(feature_maps(x)[-1]))``)."""
    maps = net.feature_maps(x)
    logits = net.classifier(net.embed_from_last(maps[-1]))
    return logits, maps[mid_layer]


# --------------------------------------------------------------------------- stage 1

def _fake_labels(y: torch.Tensor, d_labels: str, num_classes: int, g: torch.Generator) -> torch.Tensor:
    """Labels of the fakes in D's update: the real batch's (``"real"``) or uniform random (DiM)."""
    if d_labels == "real":
        return y
    gdev = g.device if g is not None else torch.device("cpu")
    return torch.randint(num_classes, (len(y),), generator=g, device=gdev).to(y.device)


def _gan_step(state: GANState, x_real_n, y, gan_loss, gp_lambda, aux_weight, g, d_labels="real",
              fake_aux=False):
    """One discriminator update on a real batch (normalised) + fresh fakes (labels: see
    :func:`_fake_labels`); returns the terms."""
    G, D = state.G, state.D
    xr = G.from_normalized(x_real_n)
    yf = _fake_labels(y, d_labels, G.num_classes, g)
    with torch.no_grad():
        xf = G(G.noise(len(yf), g), yf)
    d = discriminator_loss(D, xr, y, xf, yf, gan_loss, gp_lambda, aux_weight, generator=g, fake_aux=fake_aux)
    state.opt_d.zero_grad(set_to_none=True)
    d["loss"].backward()
    state.opt_d.step()
    return {f"d_{k}": float(v.detach()) for k, v in d.items()}


def _check_gan_schedule(step_order, d_labels):
    _check_choice("step_order", step_order, STEP_ORDERS)
    _check_choice("d_labels", d_labels, D_LABELS)


def train_gan(state: GANState, dataset, *, epochs: int, batch_size: int = 128, iters_per_epoch: int = 0,
              d_steps: int = 1, gan_loss: str | None = None, gp_lambda: float = 10.0,
              aux_weight: float | None = None, seed: int = 0, progress: bool = True,
              step_order: str = "d_first", d_labels: str = "real", fake_aux: bool = False,
              on_epoch_end: Callable[[GANState], None] | None = None) -> GANState:
    """Stage 1 (Algorithm 1, lines 1-8): train the conditional GAN on real data, continuing
    from ``state.epochs_done`` (resume) up to ``epochs``. Each iteration: ``d_steps``
    discriminator updates (the first on the iteration's real batch, the others on new ones) and
    one generator update on fakes with the real batch's labels. ``step_order="d_first"``: D then G;
    ``"g_first"``: G then D (DiM's loop). ``d_labels``/``fake_aux``: see :func:`_gan_step` and
    :func:`discriminator_loss`. ``iters_per_epoch=0`` = one pass over the training set."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    _check_gan_loss(gan_loss)
    _check_gan_schedule(step_order, d_labels)
    G, D = state.G, state.D
    g = make_generator(seed)
    if state.rng_state is not None:
        g.set_state(state.rng_state)
    real = _RealBatches(dataset, batch_size, g)
    steps = iters_per_epoch or math.ceil(len(dataset.x_train) / batch_size)
    G.train(), D.train()

    def d_updates(first):
        rec = {}
        for k in range(d_steps):
            xr, y = first if k == 0 else real.next()
            rec = _gan_step(state, xr, y, gan_loss, gp_lambda, aux_weight, g, d_labels, fake_aux)
        return rec

    def g_update(y):
        xf = G(G.noise(len(y), g), y)
        gl = generator_loss(D, xf, y, gan_loss, aux_weight)
        state.opt_g.zero_grad(set_to_none=True)
        gl["loss"].backward()
        state.opt_g.step()
        return {f"g_{k}": float(v.detach()) for k, v in gl.items()}

    bar = tqdm(range(state.epochs_done, epochs), desc="stage 1: cGAN", disable=not progress, leave=False)
    for ep in bar:
        t0 = time.perf_counter()
        rec = {}
        real.new_epoch()
        for _ in range(steps):
            batch = real.next()
            if step_order == "d_first":
                rec = {**d_updates(batch), **g_update(batch[1])}
            else:
                g_rec = g_update(batch[1])
                rec = {**d_updates(batch), **g_rec}
            state.history.append({"stage": 1, "epoch": ep, **rec})
        state.epochs_done = ep + 1
        state.seconds += time.perf_counter() - t0
        state.rng_state = g.get_state()
        bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state


STAGE1_KEYS = ("z_dim", "gen_width", "disc_width", "gen_arch", "gen_conditioning", "gan_loss", "gan_lr",
               "gan_betas", "gan_batch_size", "gan_epochs", "gan_iters", "d_steps", "gp_lambda", "aux_weight",
               "fake_aux", "step_order", "d_labels", "seed")


def stage1_key(dataset, cfg: dict) -> str:
    """Cache key of a stage-1 run: the dataset identity + every stage-1 parameter."""
    ident = {**checkpoint_meta(dataset), "n_train": int(len(dataset.x_train)),
             **{k: cfg[k] for k in STAGE1_KEYS}}
    blob = json.dumps(_plain(ident), sort_keys=True)
    return f"{dataset.name}_{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def default_cache_dir(results_dir: str | Path | None = None) -> Path:
    base = resolve_results_dir(results_dir)
    return base / "gan_cache"


def stage1(dataset, *, z_dim=100, gen_width=196, disc_width=196, gan_loss="wgan_gp", gan_lr=1e-4,
           gan_betas=(0.0, 0.9), gan_batch_size=128, gan_epochs=150, gan_iters=0, d_steps=1,
           gp_lambda=10.0, aux_weight=None, seed=0, device=None, cache_dir=None, use_cache=True,
           progress=True, checkpoint: str | Path | None = None, gen_arch="dim", gen_conditioning="concat",
           fake_aux=False, step_order="d_first", d_labels="real") -> GANState:
    """Stage 1 with a cache: ``<cache_dir>/<dataset>_<hash of the stage-1 params>.pt``.

    A finished checkpoint is loaded (no training); an unfinished one (a killed run) is resumed
    from its last epoch; otherwise training starts fresh, saving atomically after each epoch.
    ``checkpoint`` loads a given generator checkpoint instead (checked against ``dataset``)."""
    if checkpoint:
        return load_checkpoint(checkpoint, dataset, device)
    cfg = dict(z_dim=z_dim, gen_width=gen_width, disc_width=disc_width, gan_loss=gan_loss, gan_lr=gan_lr,
               gan_betas=list(gan_betas), gan_batch_size=gan_batch_size, gan_epochs=gan_epochs,
               gan_iters=gan_iters, d_steps=d_steps, gp_lambda=gp_lambda, aux_weight=aux_weight, seed=seed,
               gen_arch=gen_arch, gen_conditioning=gen_conditioning, fake_aux=bool(fake_aux),
               step_order=step_order, d_labels=d_labels)
    validate_gan_config(gan_loss=gan_loss, gen_width=gen_width, disc_width=disc_width, z_dim=z_dim,
                        gan_betas=gan_betas)
    _check_choice("gen_arch", gen_arch, GEN_ARCHS)
    _check_choice("gen_conditioning", gen_conditioning, CONDITIONINGS)
    _check_gan_schedule(step_order, d_labels)
    path = Path(cache_dir or default_cache_dir()) / f"{stage1_key(dataset, cfg)}.pt"
    state = None
    if use_cache and path.is_file():
        state = load_checkpoint(path, dataset, device)
        if state.epochs_done >= gan_epochs:
            state.meta["cache"] = str(path)
            state.meta["cache_hit"] = True
            return state
    if state is None:
        state = build_gan(dataset, z_dim=z_dim, gen_width=gen_width, disc_width=disc_width,
                          gan_loss=gan_loss, lr=gan_lr, betas=gan_betas, device=device, seed=seed,
                          gen_arch=gen_arch, gen_conditioning=gen_conditioning)
        state.params = {**cfg, "lr": gan_lr, "betas": list(gan_betas)}
    save = (lambda s: save_checkpoint(s, path)) if use_cache else None
    train_gan(state, dataset, epochs=gan_epochs, batch_size=gan_batch_size, iters_per_epoch=gan_iters,
              d_steps=d_steps, gan_loss=gan_loss, gp_lambda=gp_lambda, aux_weight=aux_weight, seed=seed,
              progress=progress, step_order=step_order, d_labels=d_labels, fake_aux=fake_aux,
              on_epoch_end=save)
    state.meta["cache"] = str(path) if use_cache else None
    state.meta["cache_hit"] = False
    return state


# --------------------------------------------------------------------------- stage 2

def stage2_schedule(epochs: int, iterations: int, n_train: int, batch_size: int) -> list:
    """Generator updates per stage-2 epoch (one pool draw per epoch).

    ``iterations > 0``: exactly ``iterations`` updates in all (the contract's meaning), split as
    evenly as possible over ``epochs`` (the first ``iterations % epochs`` epochs take one more);
    ``iterations = 0``: DiM's ``epochs`` passes over the training set, ``n_train // batch_size``
    updates each (its loader drops the last partial batch)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"match_epochs={epochs!r} must be an int >= 0")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations={iterations!r} must be an int >= 0 (0 = match_epochs passes over the data)")
    if iterations == 0:
        return [max(1, n_train // batch_size)] * epochs
    if iterations < epochs:
        raise ValueError(f"iterations={iterations} < match_epochs={epochs}: every epoch (one pool model) needs "
                         f"at least one generator update; use iterations >= {epochs} or 0 (full passes)")
    base, extra = divmod(iterations, epochs) if epochs else (0, 0)
    return [base + (1 if e < extra else 0) for e in range(epochs)]


def match_generator(state: GANState, dataset, objective: Callable[[MatchBatch], dict], *,
                    pool: GANModelPool, epochs: int, iterations: int = 0, batch_size: int = 64,
                    lr: float = 5e-6, betas=(0.0, 0.9), pool_train_steps: int = 16,
                    gan_weight: float = 1.0, gan_loss: str | None = None, gp_lambda: float = 10.0,
                    aux_weight: float | None = None, seed: int = 0, progress: bool = True,
                    step_order: str = "d_first", d_labels: str = "real", fake_aux: bool = False,
                    match_aug=None, desc: str = "stage 2: matching") -> GANState:
    """Stage 2 (Algorithm 1, lines 9-17): fine-tune a *copy* of ``state`` with
    ``gan_weight * L_GAN + objective(batch)["loss"]``; G and D both use Adam(``lr``, ``betas``)
    (DiM: 5e-6, (0, 0.9)), their stage-1 moments kept.

    Per epoch a fresh model is drawn from ``pool``; per iteration the model takes
    ``pool_train_steps`` SGD steps on real batches (with the pool's DSA), a real batch ``(x, y)`` is
    drawn, and the discriminator (GAN loss still on, as in DiM) and the generator take one step
    each, in ``step_order`` (``"g_first"``: DiM). The generator's fakes ``G(z, y)`` are paired with
    the real batch; ``match_aug`` (a DSA strategy, DiM ``--match-aug``: ``color_crop_cutout``)
    augments both with one shared draw (:func:`siamese_augment`) before the objective.
    ``objective(MatchBatch) -> {"loss": tensor, <term>: tensor, ...}``; every term is logged in
    ``history`` (``match_<term>``), with ``w_gan = gan_weight * g_loss``, the weighted GAN term.
    ``iterations``: total generator updates (:func:`stage2_schedule`; 0 = full passes)."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    _check_gan_loss(gan_loss)
    _check_gan_schedule(step_order, d_labels)
    if gan_weight < 0:
        raise ValueError(f"gan_weight must be >= 0, got {gan_weight}")
    if len(tuple(betas)) != 2 or any(_beta_check(b) for b in betas):
        raise ValueError(f"match_betas={list(betas)!r}: Adam takes two betas (beta1, beta2) in [0, 1)")
    aug = _as_dsa(match_aug)
    schedule = stage2_schedule(epochs, iterations, len(dataset.x_train), batch_size)
    st = state.copy(lr=lr, betas=betas)
    st.history, st.seconds = [], 0.0
    G, D = st.G, st.D
    g = make_generator(seed + 1)
    real = _RealBatches(dataset, batch_size, g)
    G.train(), D.train()
    t0 = time.perf_counter()
    it = 0
    bar = tqdm(total=sum(schedule), desc=desc, disable=not progress, leave=False)
    for ep, steps in enumerate(schedule):
        pool.draw(g)
        for _ in range(steps):
            net = pool.warm(dataset, pool_train_steps, g)
            xr, y = real.next()
            rec = {"stage": 2, "epoch": ep, "model": pool.current_name}
            if gan_weight > 0 and step_order == "d_first":
                rec.update(_gan_step(st, xr, y, gan_loss, gp_lambda, aux_weight, g, d_labels, fake_aux))
            xf_t = G(G.noise(len(y), g), y)
            xf = G.to_normalized(xf_t)
            xr_m, xf_m = (xr, xf) if aug is None else siamese_augment(aug, xr, xf, g)
            terms = objective(MatchBatch(net, xr_m, y, xf_m, y, pool.mid_layer, it, ep))
            if not isinstance(terms, dict) or "loss" not in terms:
                raise ValueError("the matching objective must return a dict with a 'loss' entry")
            total = terms["loss"]
            if gan_weight > 0:
                gl = generator_loss(D, xf_t, y, gan_loss, aux_weight)
                total = total + gan_weight * gl["loss"]
                rec.update({f"g_{k}": float(v.detach()) for k, v in gl.items()})
                rec["w_gan"] = gan_weight * rec["g_loss"]
            st.opt_g.zero_grad(set_to_none=True)
            total.backward()
            st.opt_g.step()
            if gan_weight > 0 and step_order == "g_first":
                rec.update(_gan_step(st, xr, y, gan_loss, gp_lambda, aux_weight, g, d_labels, fake_aux))
            rec.update({f"match_{k}": float(torch.as_tensor(v).detach()) for k, v in terms.items()})
            rec["total"] = float(total.detach())
            st.history.append(rec)
            it += 1
            bar.update(1)
            bar.set_postfix(match=f"{rec['match_loss']:.4g}")
    bar.close()
    st.seconds = time.perf_counter() - t0
    st.epochs_done = state.epochs_done
    return st


def stage2(state: GANState, dataset, objective, *, objective_key: str | None = None, cache_dir=None,
           use_cache: bool = True, device=None, pool_models=DEFAULT_POOL, mid_layer=None,
           pool_batch_size: int = 256, pool_lr: float = 0.01, pool_dsa=None, **match_kw) -> GANState:
    """:func:`match_generator` with a model pool built from ``pool_models`` and, when
    ``objective_key`` names the objective and its weights, a cache next to stage 1's
    (``<stage-1 key>__<objective_key>_<hash>.pt``), so baselines shared by notebooks
    (e.g. DiM) are trained once."""
    device = torch.device(device) if device is not None else dataset.device
    pool = GANModelPool(pool_models, dataset.channels, dataset.num_classes, dataset.im_size,
                        device=device, mid_layer=mid_layer, batch_size=pool_batch_size, lr=pool_lr,
                        dsa=pool_dsa)
    path = None
    if objective_key and use_cache and state.meta.get("cache"):
        blob = json.dumps(_plain({"objective": objective_key, "pool": pool.names, "mid": mid_layer,
                                  "pool_batch_size": pool_batch_size, "pool_lr": pool_lr,
                                  "pool_dsa": pool.dsa.strategy if pool.dsa else "",
                                  **{k: v for k, v in match_kw.items() if k not in ("progress", "desc")}}),
                          sort_keys=True)
        stem = Path(state.meta["cache"]).stem
        path = Path(cache_dir or Path(state.meta["cache"]).parent) / \
            f"{stem}__{objective_key}_{hashlib.sha1(blob.encode()).hexdigest()[:10]}.pt"
        if path.is_file():
            st = load_checkpoint(path, dataset, device)
            st.meta["cache"], st.meta["cache_hit"] = str(path), True
            return st
    st = match_generator(state, dataset, objective, pool=pool, **match_kw)
    st.params = {**state.params, "stage2": _plain({"objective": objective_key, "pool": pool.names,
                                                   "mid_layer": mid_layer, "pool_lr": pool_lr,
                                                   "pool_dsa": pool.dsa.strategy if pool.dsa else "",
                                                   **match_kw})}
    st.meta["cache"], st.meta["cache_hit"] = (str(path) if path else None), False
    if path is not None:
        save_checkpoint(st, path)
    return st


def dim_objective(w_global: float = 0.01, form: str = "dim") -> Callable[[MatchBatch], dict]:
    """The DiM baseline: logit matching only, real side detached. Shared by notebooks 01 and 02.

    ``form="dim"`` (DiM's public code, REFERENCE_NOTES seed 1):
    ``w_global * mean((log_softmax(f(x_real)) - log_softmax(f(x_syn)))^2)``;
    ``form="paper"``: the logit matching as seed 1 Eq. 6 writes it (sum of squared logit
    differences over the paired batch), i.e. the global/local objective without its local term."""
    if w_global < 0:
        raise ValueError(f"w_global must be >= 0, got {w_global}")
    if form not in MATCH_FORMS:
        raise ValueError(f"form must be one of {MATCH_FORMS}, got {form!r}")

    def objective(b: MatchBatch) -> dict:
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

    * ``"fixed"``: ``L = sum_t w_t L_t`` (seed 1 Eq. 8, the papers' weights).
    * ``"equal_start"``: weights chosen on the first batch so the weighted terms are equal there and
      their sum is the paper's: ``w'_t = S_0 / (n L_t^(0))`` with ``S_0 = sum_s w_s L_s^(0)``, then kept.
    * ``"running_mean"``: ``L = sum_t (S_0 / n) L_t / m_t`` with ``m_t`` the running mean of ``L_t``
      over the batches so far (this one included, no gradient): each term keeps an equal share,
      ``S_0 / n`` on average, whatever its scale.

    ``__call__(terms) -> {"loss", "w_<t>": weighted term}`` (``terms``: name -> scalar tensor)."""

    def __init__(self, weights: dict, mode: str = "fixed"):
        _check_choice("balance", mode, BALANCES)
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"weight of {k!r} must be a finite number >= 0, got {v!r}")
        self.weights, self.mode = {k: float(v) for k, v in weights.items()}, mode
        self.scale: dict | None = None          # per-term multiplier after the first batch
        self.sums = {k: 0.0 for k in weights}
        self.count = 0

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


# --------------------------------------------------------------------------- evaluation

@dataclass
class GeneratorEval:
    """Accuracy of networks trained on generator output (percent), with the protocol used.

    ``accs``: after the last epoch. ``selection``: name (:data:`SELECTIONS`) -> one accuracy per
    network (the ``dim`` protocol records ``"best_test"``, DiM's reported number, and with a
    validation split ``"best_val"``); ``settings``: the protocol's settings (``name`` included);
    ``curve``: ``[{"epoch", "test": [per network]}, ...]`` at the test evaluations."""
    mean: float
    std: float
    accs: list
    protocol: str
    ipc: int
    model: str
    seconds: float
    sample_seconds: float
    fixed_sets: str = "one"
    selected: str = "last"
    selection: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mean", "std", "accs", "protocol", "ipc", "model", "seconds",
                                               "sample_seconds", "fixed_sets", "selected", "selection",
                                               "settings", "curve")}

    def select(self, name: str) -> "GeneratorEval":
        """The same evaluation reporting selection ``name`` (e.g. ``"best_test"``)."""
        if name == "last":
            accs = self.selection.get("last", self.accs)
        elif name in self.selection:
            accs = self.selection[name]
        else:
            raise ValueError(f"selection {name!r} not recorded; this evaluation has "
                             f"{sorted(['last', *self.selection])}")
        t = torch.tensor(accs, dtype=torch.float64)
        return GeneratorEval(float(t.mean()), float(t.std(unbiased=False)), list(accs), self.protocol, self.ipc,
                             self.model, self.seconds, self.sample_seconds, self.fixed_sets, name,
                             self.selection, self.settings, self.curve)

    def protocol_record(self) -> dict:
        """``{"name": protocol, <settings>, "selection": ...}`` for ``ddkit.results.evaluation_entry``."""
        return {**self.settings, "name": self.protocol, "selection": self.selected}


def _check_fixed_sets(fixed_sets):
    if fixed_sets not in FIXED_SETS:
        raise ValueError(f"unknown fixed_sets {fixed_sets!r}; expected one of {FIXED_SETS}")


def _evaluate_fixed_sets(draw, dataset, fixed_sets, num_models, seed, **kw):
    """Standard protocol on sets from ``draw(seed) -> (x, y)``: one set for all ``num_models``
    networks, or (``"per_model"``) network ``i`` on the set of seed ``seed + i``, itself
    evaluated as ``evaluate_synset(..., num_models=1, seed=seed + i)``. Returns an ``EvalResult``."""
    if fixed_sets == "one":
        return evaluate_synset(*draw(seed), dataset, num_models=num_models, seed=seed, **kw)
    runs = [evaluate_synset(*draw(seed + i), dataset, num_models=1, seed=seed + i, **kw) for i in range(num_models)]
    return EvalResult([a for r in runs for a in r.accs], runs[0].model)


def dim_steps_per_epoch(num_classes: int, ipc: int, batch_size: int) -> int:
    """Training steps per epoch of DiM's generator evaluation: ``K * ipc // batch + 1`` (DiM's
    ``pool_match.py`` writes ``10 * ipc // batch_size + 1`` for its 10-class datasets), so an epoch
    sees about as many generated images as an IPC-sized set would hold."""
    for name, v in (("num_classes", num_classes), ("ipc", ipc), ("dim_batch", batch_size)):
        _positive_int(name, v)
    return num_classes * ipc // batch_size + 1


def dim_batch_source(G: ConditionalGenerator, batch_size: int):
    """``batch_source(step, generator) -> (x, y)`` for ``train_classifier``: at EVERY step a fresh
    batch of ``batch_size`` generated images with uniformly random labels (new noise, no gradient,
    the generator's current mode), as DiM's ``validate`` draws them."""
    _positive_int("dim_batch", batch_size)

    def source(step, generator):
        gdev = generator.device if generator is not None else torch.device("cpu")
        y = torch.randint(G.num_classes, (batch_size,), generator=generator, device=gdev).to(G.device)
        with torch.no_grad():
            return G.generate(y, G.noise(batch_size, generator)), y

    return source


def evaluate_generator(G: ConditionalGenerator, dataset, ipc: int, *, protocol: str = "fixed",
                       model: str = "ConvNet", num_models: int = 5, epochs: int = 1000,
                       lr: float = 0.01, batch_size: int = 256, dsa=True, seed: int = 0,
                       device=None, progress: bool = True, fixed_sets: str = "one",
                       dim_batch: int = 64, dim_test_every: int = 200, dim_dsa: str = "color_crop",
                       val_per_class: int = 0) -> GeneratorEval:
    """Deploy the generator at ``ipc`` images per class and evaluate it (test accuracy, %).

    * ``"fixed"``: a fixed set (:meth:`ConditionalGenerator.sample` with ``seed``), then the
      standard protocol (:func:`ddkit.evaluate.evaluate_synset`: ``lr``, ``batch_size``, ``dsa``,
      step decay); ``fixed_sets="per_model"`` gives network ``i`` its own set (seed ``seed + i``).
    * ``"dim"``: DiM's ``validate``: every step a fresh batch of ``dim_batch`` generated images with
      random labels (:func:`dim_batch_source`), :func:`dim_steps_per_epoch` steps per epoch, SGD at
      a constant ``lr`` (0.01), ``dim_dsa`` per sample (DiM: ``color_crop``), a test evaluation every
      ``dim_test_every`` epochs (and after the last). ``accs`` is the last epoch's; ``selection``
      holds ``"best_test"`` (best of the test evaluations: DiM's reported number, selection on the
      test set) and, with ``val_per_class`` held-out real images per class, ``"best_val"``.
    The returned :class:`GeneratorEval` records the protocol and its settings.
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {EVAL_PROTOCOLS}")
    _check_fixed_sets(fixed_sets)
    _positive_int("ipc", ipc)
    _positive_int("num_models", num_models)
    t0 = time.perf_counter()
    x, y = G.sample(ipc, seed=seed) if protocol == "fixed" else (None, None)
    sample_seconds = time.perf_counter() - t0
    was = G.training
    G.eval()
    try:
        if protocol == "fixed":
            r = _evaluate_fixed_sets(lambda s: (x, y) if s == seed else G.sample(ipc, seed=s), dataset,
                                     fixed_sets, num_models, seed, model=model, epochs=epochs, lr=lr,
                                     batch_size=batch_size, dsa=dsa, device=device, progress=progress)
            settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "schedule": "step",
                        "dsa": "dataset" if dsa is True else str(dsa), "fixed_sets": fixed_sets,
                        "num_models": num_models}
            selection, curve = {}, []
        else:
            _positive_int("dim_test_every", dim_test_every)
            steps = dim_steps_per_epoch(G.num_classes, ipc, dim_batch)
            r = evaluate_synset(None, None, dataset, model=model, num_models=num_models, epochs=epochs, lr=lr,
                                batch_size=dim_batch, dsa=dim_dsa, seed=seed, device=device, schedule="none",
                                batch_source=dim_batch_source(G, dim_batch), steps_per_epoch=steps,
                                progress=progress, eval_every_epochs=dim_test_every, val_per_class=val_per_class)
            settings = {"epochs": epochs, "lr": lr, "batch_size": dim_batch, "steps_per_epoch": steps,
                        "schedule": "constant", "dsa": dim_dsa, "test_every": dim_test_every,
                        "labels": "random", "num_models": num_models, "val_per_class": val_per_class}
            sel = getattr(r, "selection", {}) or {}
            selection = {"last": list(r.accs), "best_test": list(sel.get("test_best", r.accs))}
            if "val_best" in sel:
                selection["best_val"] = list(sel["val_best"])
            curve = [{"epoch": int(p["epoch"]), "test": list(p["test"])} for p in getattr(r, "epoch_curve", [])]
    finally:
        G.train(was)
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], protocol, ipc, model,
                         time.perf_counter() - t0, sample_seconds,
                         fixed_sets if protocol == "fixed" else "-", "last", selection, settings, curve)


def comparison_entries(results: dict, eval_model: str | None = None, names: dict | None = None) -> list:
    """:func:`evaluation_entries` of every method of :func:`compare_methods`' ``results`` (rows
    ``"<name> · <protocol>"``; the derived best-test rows are covered by their ``dim`` row).
    ``names``: ``{name: (method, variant)}`` for the recorded method names (default: the name)."""
    out = []
    for row, per in results.items():
        if next(iter(per.values())).selected == "last":
            name = row.split(" · ")[0]
            method, variant = (names or {}).get(name, (name, ""))
            out += evaluation_entries(method, per, eval_model, variant)
    return out


def evaluation_entries(method: str, per_ipc: dict, eval_model: str | None = None, variant: str = "") -> list:
    """``ddkit.results.evaluation_entry`` records of one method: one per IPC and selection
    (``"fixed"``: the last epoch; ``"dim"``: the last epoch and the best test evaluation)."""
    from .results import evaluation_entry

    out = []
    for ipc, r in per_ipc.items():
        for name in (s for s in SELECTIONS if s == "last" or s in r.selection):
            e = r.select(name)
            out.append(evaluation_entry(method, e.accs, ipc=int(ipc), eval_model=eval_model or r.model,
                                        variant=variant, protocol=e.protocol_record()))
    return out


# --------------------------------------------------------------------------- configuration

def validate_gan_config(*, gan_loss=None, pool_models=None, weights: dict | None = None,
                        eval_protocol=None, deploy_ipcs=None, gen_width=None, disc_width=None,
                        z_dim=None, mid_layer=None, gan_betas=None) -> None:
    """Fail early (ValueError) on settings that cannot run: an unknown GAN loss, pool model or
    protocol, a negative loss weight, non-positive widths/IPCs, Adam betas that are not two
    numbers in [0, 1)."""
    if gan_loss is not None:
        _check_gan_loss(gan_loss)
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
            _positive_int(name, v)
    if mid_layer is not None and (isinstance(mid_layer, bool) or not isinstance(mid_layer, int)):
        raise ValueError(f"mid_layer must be an int, got {mid_layer!r}")
    if gan_betas is not None and (len(gan_betas) != 2 or any(_beta_check(b) for b in gan_betas)):
        raise ValueError(f"gan_betas={list(gan_betas)!r}: Adam takes two betas (beta1, beta2) in [0, 1), "
                         "e.g. [0.0, 0.9]")


def _beta_check(v) -> str | None:
    """One Adam beta: in [0, 1) (the pair: :func:`validate_gan_config`)."""
    return None if 0 <= v < 1 else "an Adam beta is in [0, 1)"


def gan_spec() -> dict:
    """Parameter spec of the keys shared by the generative notebooks (01, 02), to merge with
    ``ddkit.params.COMMON``: ``SPEC = {**COMMON, **gan_spec(), <paper keys>}``.
    (``ddkit.params`` is imported here, lazily: it only depends on data/models.)"""
    from .params import Param

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


# --------------------------------------------------------------------------- notebook helpers

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
        if _as_hw(dataset.im_size) not in SUPPORTED_SIZES:
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


def stage1_from_params(P, dataset, device=None, progress=True) -> GANState:
    """:func:`stage1` with a notebook's parameters (cache under ``<results_dir>/gan_cache``; seed
    ``gan_seed``, or ``seed`` when it is -1)."""
    return stage1(dataset, z_dim=P.z_dim, gen_width=P.gen_width, disc_width=P.disc_width, gan_loss=P.gan_loss,
                  gan_lr=P.gan_lr, gan_betas=tuple(P.gan_betas), gan_batch_size=P.gan_batch_size,
                  gan_epochs=P.gan_epochs, gan_iters=P.gan_iters, d_steps=P.d_steps, gp_lambda=P.gp_lambda,
                  aux_weight=P.aux_weight, seed=P.seed if P.gan_seed < 0 else P.gan_seed, device=device,
                  cache_dir=default_cache_dir(P.results_dir or None), use_cache=P.use_cache, progress=progress,
                  checkpoint=P.gan_checkpoint or None, gen_arch=P.gen_arch, gen_conditioning=P.gen_conditioning,
                  fake_aux=P.fake_aux, step_order=P.step_order, d_labels=P.d_labels)


def stage2_from_params(P, state, dataset, objective, objective_key=None, device=None, progress=True,
                       desc="stage 2") -> GANState:
    """:func:`stage2` with a notebook's parameters (``iterations`` = total stage-2 generator updates,
    0 = ``match_epochs`` passes over the training set; ``mid_layer = -1`` = each model's own). Every
    optimiser setting comes from the parameters: ``match_lr`` / ``match_betas`` (G and D),
    ``pool_lr`` (pool warm-up SGD); so do the GAN schedule (``step_order``, ``d_labels``,
    ``fake_aux``) and the augmentations (``pool_dsa``, ``match_aug``)."""
    return stage2(state, dataset, objective, objective_key=objective_key if P.use_cache else None,
                  device=device, pool_models=P.pool_models or [P.model],
                  mid_layer=None if P.mid_layer < 0 else P.mid_layer, pool_batch_size=P.pool_batch_size,
                  pool_lr=P.pool_lr, pool_dsa=P.pool_dsa, epochs=P.match_epochs, iterations=P.iterations,
                  batch_size=P.batch_size, lr=P.match_lr, betas=tuple(P.match_betas),
                  pool_train_steps=P.pool_train_steps, gan_weight=P.gan_weight, gp_lambda=P.gp_lambda,
                  aux_weight=P.aux_weight, step_order=P.step_order, d_labels=P.d_labels, fake_aux=P.fake_aux,
                  match_aug=P.match_aug, seed=P.seed, progress=progress, desc=desc)


def random_real_eval(dataset, ipc, *, model="ConvNet", num_models=5, epochs=1000, seed=0, device=None,
                     progress=True, fixed_sets: str = "one") -> GeneratorEval:
    """Random real images (``ipc`` per class, seeded) under the standard protocol: the floor a
    distilled generator has to beat. ``fixed_sets="per_model"``: a new random subset per network
    (as DC/DM's random baseline draws one per experiment)."""
    _check_fixed_sets(fixed_sets)
    t0 = time.perf_counter()
    r = _evaluate_fixed_sets(lambda s: dataset.sample_classes(ipc, generator=make_generator(s + 17)), dataset,
                             fixed_sets, num_models, seed, model=model, epochs=epochs, device=device,
                             progress=progress)
    settings = {"epochs": epochs, "lr": 0.01, "batch_size": 256, "schedule": "step", "dsa": "dataset",
                "fixed_sets": fixed_sets, "num_models": num_models}
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], "fixed", ipc, model,
                         time.perf_counter() - t0, 0.0, fixed_sets, settings=settings)


def protocol_list(protocol: str) -> list:
    """``"both"`` -> ``["fixed", "dim"]`` (the fixed set first); a single protocol -> ``[protocol]``."""
    if protocol not in NOTEBOOK_PROTOCOLS:
        raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {NOTEBOOK_PROTOCOLS}")
    return list(EVAL_PROTOCOLS) if protocol == "both" else [protocol]


#: Row suffix of DiM's reported number (best of the test evaluations) in :func:`compare_methods`.
BEST_TEST_LABEL = "best test eval (test-set selection)"


def compare_methods(generators: dict, dataset, ipcs, *, protocol="fixed", random_real=True, model="ConvNet",
                    num_models=5, epochs=1000, seed=0, device=None, progress=True, fixed_sets="one",
                    dim_batch=64, dim_test_every=200):
    """Evaluate every generator (and random real images) at every IPC; returns
    ``(table, results)``: a pandas DataFrame (rows = methods x protocols, columns = IPCs,
    "mean ± std") and ``results[row][ipc] -> GeneratorEval``.

    Rows: ``"<name> · fixed"`` and ``"<name> · dim"`` (the last epoch) and
    ``"<name> · dim · best test eval (test-set selection)"`` (DiM's reported number). Random real
    images are a fixed set: only ``"Random real · fixed"``. ``fixed_sets`` (:data:`FIXED_SETS`)
    applies to every fixed-protocol row."""
    import pandas as pd

    protocols = protocol_list(protocol)
    results: dict = {}
    jobs = ([("Random real", None, "fixed")] if random_real and "fixed" in protocols else []) + [
        (name, G, p) for p in protocols for name, G in generators.items()]
    for name, G, p in jobs:
        per = {}
        for ipc in ipcs:
            if G is None:
                per[ipc] = random_real_eval(dataset, ipc, model=model, num_models=num_models, epochs=epochs,
                                            seed=seed, device=device, progress=progress, fixed_sets=fixed_sets)
            else:
                per[ipc] = evaluate_generator(G, dataset, ipc, protocol=p, model=model, num_models=num_models,
                                              epochs=epochs, seed=seed, device=device, progress=progress,
                                              fixed_sets=fixed_sets, dim_batch=dim_batch,
                                              dim_test_every=dim_test_every)
        results[f"{name} · {p}"] = per
        if p == "dim":
            results[f"{name} · dim · {BEST_TEST_LABEL}"] = {k: r.select("best_test") for k, r in per.items()}
    table = pd.DataFrame({f"IPC {ipc}": {n: f"{results[n][ipc].mean:.2f} ± {results[n][ipc].std:.2f}"
                                         for n in results} for ipc in ipcs})
    table.insert(0, "selection", [results[n][ipcs[0]].selected for n in results])
    table.insert(0, "protocol", [results[n][ipcs[0]].protocol for n in results])
    table.index.name = f"{model}"
    return table, results


def term_scales(history: list, keys, window: int = 5) -> dict:
    """Mean absolute value of each logged term over the first and the last ``window`` generator
    steps: ``{key: (start, end)}`` (keys absent from the history are left out)."""
    out = {}
    for k in keys:
        v = [abs(float(h[k])) for h in history if k in h]
        if v:
            out[k] = (sum(v[:window]) / len(v[:window]), sum(v[-window:]) / len(v[-window:]))
    return out


def paired_over_seeds(results_root, params: dict, method: str, baseline: str, *, ipc: int, protocol: str,
                      selection: str = "last", variant: str = "", baseline_variant: str = "") -> dict:
    """Paired difference (method - baseline) of per-seed mean accuracies over the runs under
    ``results_root`` whose parameters equal ``params`` except ``seed`` / ``run_name`` /
    ``results_dir`` (the seeds of one sweep), from their ``evaluations`` entries
    (``ddkit.stats.paired_difference``: mean and 95% t interval). Adds ``"seeds"``."""
    from .results import read_result
    from .stats import paired_difference

    free = {"seed", "run_name", "results_dir"}
    same = {k: v for k, v in params.items() if k not in free}
    by_seed: dict = {}
    for path in sorted(Path(results_root).glob("*/result.json")):
        try:
            rec = read_result(path)
        except ValueError:
            continue
        if {k: v for k, v in (rec.get("params") or {}).items() if k not in free} != same:
            continue
        found = {}
        for e in rec.get("evaluations", []):
            pr = e.get("protocol") or {}
            if e.get("ipc") == ipc and pr.get("name") == protocol and pr.get("selection", "last") == selection:
                for role, (m, var) in (("m", (method, variant)), ("b", (baseline, baseline_variant))):
                    if e.get("method") == m and (e.get("variant") or "") == var:
                        found[role] = e["mean"]
        if len(found) == 2:
            by_seed[rec["params"]["seed"]] = found
    seeds = sorted(by_seed)
    if not seeds:
        raise ValueError(f"no run under {results_root} has both {method!r} and {baseline!r} at IPC {ipc} "
                         f"({protocol}, {selection})")
    out = paired_difference([by_seed[s]["m"] for s in seeds], [by_seed[s]["b"] for s in seeds])
    return {**out, "seeds": seeds}


def evidence_markdown(results_root, run_prefix: str, baseline: str = "DiM") -> str:
    """A Markdown table of the runs ``<results_root>/<run_prefix>*/result.json`` (the seeds of one
    evidence sweep): per (method, variant, protocol, selection, IPC) the mean ± std over every
    evaluated network of every seed, and the paired difference against ``baseline`` (per-seed
    means, 95% t interval, :func:`claim_verdict`)."""
    from .results import read_result
    from .stats import format_paired, paired_difference

    cells: dict = {}
    for path in sorted(Path(results_root).glob(f"{run_prefix}*/result.json")):
        rec = read_result(path)
        seed = rec["params"]["seed"]
        for e in rec.get("evaluations", []):
            pr = e.get("protocol") or {}
            key = (e["method"], e.get("variant") or "", pr.get("name"), pr.get("selection", "last"), e["ipc"])
            cells.setdefault(key, {})[seed] = e["accs"]
    lines = ["| method | protocol · selection | IPC | mean ± std (all networks) | seeds | "
             f"paired vs {baseline} (95% CI) | method > {baseline}? |", "|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: (k[2], k[3], k[4], k[0] != baseline, k[0], k[1])):
        method, variant, proto, sel, ipc = key
        by_seed = cells[key]
        accs = torch.tensor([a for s in sorted(by_seed) for a in by_seed[s]], dtype=torch.float64)
        base = cells.get((baseline, "", proto, sel, ipc), {})
        pair, verdict = "", ""
        common = sorted(set(by_seed) & set(base))
        if (method, variant) != (baseline, "") and common:
            d = paired_difference([sum(by_seed[s]) / len(by_seed[s]) for s in common],
                                  [sum(base[s]) / len(base[s]) for s in common])
            pair, verdict = format_paired(d), claim_verdict(d).split(" (")[0]
        label = f"{method} ({variant})" if variant else method
        sel_label = "best test eval (test-set selection)" if sel == "best_test" else sel
        lines.append(f"| {label} | {proto} · {sel_label} | {ipc} | {float(accs.mean()):.2f} ± "
                     f"{float(accs.std(unbiased=False)):.2f} | {len(by_seed)} | {pair} | {verdict} |")
    return "\n".join(lines)


def claim_verdict(diff: dict) -> str:
    """Words for a paired difference: held (interval above 0), reversed (below 0), not shown."""
    if diff["n"] < 2:
        return f"{diff['mean']:+.2f} points on one seed: no interval, so not shown either way"
    span = f"{diff['mean']:+.2f} points, 95% interval [{diff['lo']:+.2f}, {diff['hi']:+.2f}] over {diff['n']} seeds"
    if diff["lo"] > 0:
        return f"held ({span})"
    if diff["hi"] < 0:
        return f"reversed ({span})"
    return f"not shown ({span}: the interval contains 0)"


def timed_redeploy(path, dataset, ipc, seed=0, device=None):
    """Redeployment: load a saved generator checkpoint and sample ``ipc`` images per class,
    no training. Returns ``(x, y, seconds)`` (loading + sampling)."""
    t0 = time.perf_counter()
    st = load_checkpoint(path, dataset, device)
    x, y = st.G.sample(ipc, seed=seed)
    if x.is_cuda:
        torch.cuda.synchronize()
    return x, y, time.perf_counter() - t0


def show_class_grids(generators: dict, dataset, ipc: int = 1, seed: int = 0, max_ipc: int = 10):
    """One panel per generator: columns = classes, rows = samples (same noise for every
    generator, so the panels differ only by the training). Returns the figure."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    n = min(ipc, max_ipc)
    fig, axes = plt.subplots(1, len(generators), figsize=(3.6 * len(generators), 0.45 * n + 1.3), squeeze=False)
    for ax, (name, G) in zip(axes[0], generators.items()):
        x, _ = G.sample(n, seed=seed)
        k = G.num_classes
        x = x.reshape(k, n, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])
        grid = make_grid(dataset.denormalize(x.cpu()), nrow=k, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy() if grid.shape[0] == 3 else grid[0].numpy(), cmap="gray",
                  vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    return fig
