"""Generative dataset distillation: a conditional GAN whose generator *is* the distilled set.

Shared machinery of the DiM family (DiM, "Balancing Global Structure and Local Details"
(notebook 01) and "Self-Knowledge Distillation" (notebook 02)):

* :class:`ConditionalGenerator` - DiM-style generator (REFERENCE_NOTES, seed 1):
  ``Linear([z (+) onehot(y)] -> width*4*4) + BN + ReLU``, three transposed convolutions
  at ``width`` channels (4 -> 7 -> 14 -> 28 for 28x28, 4 -> 8 -> 16 -> 32 for 32x32), a
  3x3 conv to the image channels and ``tanh``. The label is *concatenated* to the noise
  (the papers' Eq. 5); DiM's code overwrote the first entries of z instead.
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
  (lambda 10) + auxiliary class cross-entropy (AC-GAN) on real (D) and fake (G) images.
* :class:`GANModelPool` - DiM's model pool: per epoch one architecture is drawn from
  ``names`` (default {ConvNet, ResNet10, ResNet18}), freshly initialised, and trained a few
  SGD steps on real batches (``pool_train_steps``, 16 in DiM) before each generator step.
* :func:`train_gan` (stage 1) and :func:`match_generator` (stage 2: GAN loss + a matching
  objective callable, so each paper's objective lives in its own notebook cell).
* Checkpoints (G + D + optimizer states + params + history, atomic, ``weights_only=True``
  loads that refuse another dataset / image size / class count), a stage-1 cache keyed by
  the stage-1 params (:func:`stage1`) with resume, and :func:`evaluate_generator` with
  both deployment protocols (:data:`EVAL_PROTOCOLS`; fixed sets shared or one per network,
  :data:`FIXED_SETS`).
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

from .models import MODEL_NAMES, get_model, reinit_
from .evaluate import EvalResult, evaluate_synset
from .losses import logit_matching_loss
from .train import train_steps
from .utils import REPO_ROOT, atomic_torch_save, make_generator, safe_torch_load

__all__ = [
    "GAN_LOSSES", "DEFAULT_POOL", "EVAL_PROTOCOLS", "NOTEBOOK_PROTOCOLS", "FIXED_SETS", "MATCH_FORMS",
    "CHECKPOINT_FORMAT",
    "ConditionalGenerator", "Discriminator", "GANState", "GANModelPool", "MatchBatch",
    "gradient_penalty", "discriminator_loss", "generator_loss", "default_aux_weight",
    "build_gan", "train_gan", "match_generator", "stage1", "stage2",
    "save_checkpoint", "load_checkpoint", "checkpoint_meta", "check_checkpoint",
    "evaluate_generator", "GeneratorEval", "dim_objective", "forward_logits_mid",
    "validate_gan_config", "stage1_key", "default_cache_dir", "gan_spec", "check_notebook_params",
    "stage1_from_params", "stage2_from_params", "random_real_eval", "protocol_list", "compare_methods", "timed_redeploy",
    "show_class_grids",
]

#: GAN objectives: the papers' log-likelihood cGAN and DiM's WGAN-GP + auxiliary CE.
GAN_LOSSES = ("cgan", "wgan_gp")
#: DiM / seed 1 / seed 2 model pool (REFERENCE_NOTES).
DEFAULT_POOL = ("ConvNet", "ResNet10", "ResNet18")
#: Deployment evaluation protocols: a fixed set of IPC images per class (the standard
#: protocol, ``evaluate_synset``), or DiM's fresh samples every training step.
EVAL_PROTOCOLS = ("fixed", "resample")
#: What a notebook's ``eval_protocol`` may say: one protocol, or ``"both"`` (fixed first).
NOTEBOOK_PROTOCOLS = (*EVAL_PROTOCOLS, "both")
#: Fixed-protocol sets: ``"one"`` set (seed ``seed``) for every evaluation network, or
#: ``"per_model"``: network ``i`` trains on its own set (seed ``seed + i``), so the mean is over
#: draws from the generator as well as over networks.
FIXED_SETS = ("one", "per_model")
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

class ConditionalGenerator(nn.Module):
    """DiM-style conditional generator, ``S = G([z (+) y]; W)`` (seed 1 Eq. 5, seed 2 Eq. 2).

    ``width`` is DiM's 196 channels; smaller widths (e.g. 32) keep CPU runs short.
    ``mean``/``std`` are the dataset's normalisation: ``generate``/``sample`` map the tanh
    output ``t`` to pixels ``(t + 1) / 2`` and then to ``(pixels - mean) / std``.
    """

    def __init__(self, num_classes: int, channels: int, im_size=(32, 32), z_dim: int = 100,
                 width: int = 196, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        _positive_int("num_classes", num_classes)
        _positive_int("channels", channels)
        _positive_int("z_dim", z_dim)
        _positive_int("width", width)
        hw = _as_hw(im_size)
        if hw not in SUPPORTED_SIZES:
            raise ValueError(f"ConditionalGenerator supports image sizes {SUPPORTED_SIZES}, got {hw}")
        self.num_classes, self.channels, self.im_size = num_classes, channels, hw
        self.z_dim, self.width = z_dim, width
        mean = [0.5] * channels if mean is None else [float(m) for m in mean]
        std = [0.5] * channels if std is None else [float(s) for s in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean/std need {channels} entries (std > 0), got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.fc = nn.Linear(z_dim + num_classes, width * 4 * 4)
        self.bn0 = nn.BatchNorm1d(width * 4 * 4)
        first = (nn.ConvTranspose2d(width, width, 4, 1, 0) if hw == (28, 28)   # 4 -> 7
                 else nn.ConvTranspose2d(width, width, 4, 2, 1))                # 4 -> 8
        ups = [first, nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ConvTranspose2d(width, width, 4, 2, 1)]
        layers: list[nn.Module] = []
        for up in ups:
            layers += [up, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
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
        h = F.relu(self.bn0(self.fc(torch.cat([z, onehot], dim=1))))   # [z (+) y]
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
                       generator: torch.Generator | None = None) -> dict:
    """The discriminator's loss (to minimise) on [-1, 1] images; returns named terms, ``loss``
    the total. ``x_fake`` is detached here."""
    _check_gan_loss(gan_loss)
    aux_weight = default_aux_weight(gan_loss) if aux_weight is None else float(aux_weight)
    x_fake = x_fake.detach()
    s_real, c_real = D(x_real, y_real)
    s_fake, _ = D(x_fake, y_fake)
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
              seed: int = 0) -> GANState:
    """Fresh G/D for ``dataset`` (deterministic per ``seed``) with Adam(lr, betas) each
    (DiM: lr 1e-4, betas (0, 0.9))."""
    _check_gan_loss(gan_loss)
    device = torch.device(device) if device is not None else dataset.device
    G = ConditionalGenerator(dataset.num_classes, dataset.channels, dataset.im_size, z_dim,
                             gen_width, dataset.mean, dataset.std)
    D = Discriminator(dataset.num_classes, dataset.channels, dataset.im_size, disc_width,
                      projection=(gan_loss == "cgan"))
    g = make_generator(seed)
    reinit_(G, g)
    reinit_(D, g)
    G, D = G.to(device), D.to(device)
    meta = {**checkpoint_meta(dataset), "format": CHECKPOINT_FORMAT, "z_dim": int(z_dim),
            "gen_width": int(gen_width), "disc_width": int(disc_width), "gan_loss": gan_loss,
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
                      betas=params.get("betas", (0.0, 0.9)), device=device)
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
    an int overrides it (index into ``feature_maps``)."""

    def __init__(self, names: Sequence[str], channels: int, num_classes: int, im_size,
                 device=None, mid_layer: int | None = None, lr: float = 0.01, batch_size: int = 256,
                 **model_kw):
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
            self.optimizer = train_steps(self.current, dataset, steps, batch_size=self.batch_size,
                                         lr=self.lr, generator=generator, optimizer=self.optimizer)
            self._freeze(True)
        return self.current


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

def _gan_step(state: GANState, x_real_n, y, gan_loss, gp_lambda, aux_weight, g):
    """One discriminator update on a real batch (normalised) + paired fakes; returns terms."""
    G, D = state.G, state.D
    xr = G.from_normalized(x_real_n)
    with torch.no_grad():
        xf = G(G.noise(len(y), g), y)
    d = discriminator_loss(D, xr, y, xf, y, gan_loss, gp_lambda, aux_weight, generator=g)
    state.opt_d.zero_grad(set_to_none=True)
    d["loss"].backward()
    state.opt_d.step()
    return {f"d_{k}": float(v.detach()) for k, v in d.items()}


def train_gan(state: GANState, dataset, *, epochs: int, batch_size: int = 128, iters_per_epoch: int = 0,
              d_steps: int = 1, gan_loss: str | None = None, gp_lambda: float = 10.0,
              aux_weight: float | None = None, seed: int = 0, progress: bool = True,
              on_epoch_end: Callable[[GANState], None] | None = None) -> GANState:
    """Stage 1 (Algorithm 1, lines 1-8): train the conditional GAN on real data, continuing
    from ``state.epochs_done`` (resume) up to ``epochs``. Each iteration: ``d_steps``
    discriminator updates (each on a new real batch and fakes with the same labels), then one
    generator update. ``iters_per_epoch=0`` = one pass over the training set."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    _check_gan_loss(gan_loss)
    G, D = state.G, state.D
    g = make_generator(seed)
    if state.rng_state is not None:
        g.set_state(state.rng_state)
    real = _RealBatches(dataset, batch_size, g)
    steps = iters_per_epoch or math.ceil(len(dataset.x_train) / batch_size)
    G.train(), D.train()
    bar = tqdm(range(state.epochs_done, epochs), desc="stage 1: cGAN", disable=not progress, leave=False)
    for ep in bar:
        t0 = time.perf_counter()
        rec = {}
        real.new_epoch()
        for _ in range(steps):
            for _ in range(d_steps):
                xr, y = real.next()
                rec = _gan_step(state, xr, y, gan_loss, gp_lambda, aux_weight, g)
            xf = G(G.noise(len(y), g), y)
            gl = generator_loss(D, xf, y, gan_loss, aux_weight)
            state.opt_g.zero_grad(set_to_none=True)
            gl["loss"].backward()
            state.opt_g.step()
            rec.update({f"g_{k}": float(v.detach()) for k, v in gl.items()})
            state.history.append({"stage": 1, "epoch": ep, **rec})
        state.epochs_done = ep + 1
        state.seconds += time.perf_counter() - t0
        state.rng_state = g.get_state()
        bar.set_postfix(d=f"{rec['d_loss']:.3f}", g=f"{rec['g_loss']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state


STAGE1_KEYS = ("z_dim", "gen_width", "disc_width", "gan_loss", "gan_lr", "gan_betas", "gan_batch_size",
               "gan_epochs", "gan_iters", "d_steps", "gp_lambda", "aux_weight", "seed")


def stage1_key(dataset, cfg: dict) -> str:
    """Cache key of a stage-1 run: the dataset identity + every stage-1 parameter."""
    ident = {**checkpoint_meta(dataset), "n_train": int(len(dataset.x_train)),
             **{k: cfg[k] for k in STAGE1_KEYS}}
    blob = json.dumps(_plain(ident), sort_keys=True)
    return f"{dataset.name}_{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def default_cache_dir(results_dir: str | Path | None = None) -> Path:
    base = Path(results_dir) if results_dir else REPO_ROOT / "results"
    return base / "gan_cache"


def stage1(dataset, *, z_dim=100, gen_width=196, disc_width=196, gan_loss="wgan_gp", gan_lr=1e-4,
           gan_betas=(0.0, 0.9), gan_batch_size=128, gan_epochs=150, gan_iters=0, d_steps=1,
           gp_lambda=10.0, aux_weight=None, seed=0, device=None, cache_dir=None, use_cache=True,
           progress=True, checkpoint: str | Path | None = None) -> GANState:
    """Stage 1 with a cache: ``<cache_dir>/<dataset>_<hash of the stage-1 params>.pt``.

    A finished checkpoint is loaded (no training); an unfinished one (a killed run) is resumed
    from its last epoch; otherwise training starts fresh, saving atomically after each epoch.
    ``checkpoint`` loads a given generator checkpoint instead (checked against ``dataset``)."""
    if checkpoint:
        return load_checkpoint(checkpoint, dataset, device)
    cfg = dict(z_dim=z_dim, gen_width=gen_width, disc_width=disc_width, gan_loss=gan_loss, gan_lr=gan_lr,
               gan_betas=list(gan_betas), gan_batch_size=gan_batch_size, gan_epochs=gan_epochs,
               gan_iters=gan_iters, d_steps=d_steps, gp_lambda=gp_lambda, aux_weight=aux_weight, seed=seed)
    validate_gan_config(gan_loss=gan_loss, gen_width=gen_width, disc_width=disc_width, z_dim=z_dim,
                        gan_betas=gan_betas)
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
                          gan_loss=gan_loss, lr=gan_lr, betas=gan_betas, device=device, seed=seed)
        state.params = {**cfg, "lr": gan_lr, "betas": list(gan_betas)}
    save = (lambda s: save_checkpoint(s, path)) if use_cache else None
    train_gan(state, dataset, epochs=gan_epochs, batch_size=gan_batch_size, iters_per_epoch=gan_iters,
              d_steps=d_steps, gan_loss=gan_loss, gp_lambda=gp_lambda, aux_weight=aux_weight, seed=seed,
              progress=progress, on_epoch_end=save)
    state.meta["cache"] = str(path) if use_cache else None
    state.meta["cache_hit"] = False
    return state


# --------------------------------------------------------------------------- stage 2

def match_generator(state: GANState, dataset, objective: Callable[[MatchBatch], dict], *,
                    pool: GANModelPool, epochs: int, iters_per_epoch: int = 0, batch_size: int = 64,
                    lr: float = 5e-6, betas=(0.0, 0.9), pool_train_steps: int = 16,
                    gan_weight: float = 1.0, gan_loss: str | None = None, gp_lambda: float = 10.0,
                    aux_weight: float | None = None, seed: int = 0, progress: bool = True,
                    desc: str = "stage 2: matching") -> GANState:
    """Stage 2 (Algorithm 1, lines 9-17): fine-tune a *copy* of ``state`` with
    ``gan_weight * L_GAN + objective(batch)["loss"]``.

    Per epoch a fresh model is drawn from ``pool``; per iteration the model takes
    ``pool_train_steps`` SGD steps on real batches, a real batch ``(x, y)`` is drawn, the
    discriminator takes one step (GAN loss still on, as in DiM), and the generator takes one
    Adam step (DiM: lr 5e-6 for G and D) on fakes ``G(z, y)`` paired with the real batch.
    ``objective(MatchBatch) -> {"loss": tensor, <term>: tensor, ...}``; every term is logged
    in ``history``. ``iters_per_epoch=0`` = one pass over the training set."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    _check_gan_loss(gan_loss)
    if gan_weight < 0:
        raise ValueError(f"gan_weight must be >= 0, got {gan_weight}")
    st = state.copy(lr=lr, betas=betas)
    st.history, st.seconds = [], 0.0
    G, D = st.G, st.D
    g = make_generator(seed + 1)
    real = _RealBatches(dataset, batch_size, g)
    steps = iters_per_epoch or math.ceil(len(dataset.x_train) / batch_size)
    G.train(), D.train()
    t0 = time.perf_counter()
    it = 0
    bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False)
    for ep in range(epochs):
        pool.draw(g)
        for _ in range(steps):
            net = pool.warm(dataset, pool_train_steps, g)
            xr, y = real.next()
            rec = {"stage": 2, "epoch": ep, "model": pool.current_name}
            if gan_weight > 0:
                rec.update(_gan_step(st, xr, y, gan_loss, gp_lambda, aux_weight, g))
            xf_t = G(G.noise(len(y), g), y)
            xf = G.to_normalized(xf_t)
            terms = objective(MatchBatch(net, xr, y, xf, y, pool.mid_layer, it, ep))
            if not isinstance(terms, dict) or "loss" not in terms:
                raise ValueError("the matching objective must return a dict with a 'loss' entry")
            total = terms["loss"]
            if gan_weight > 0:
                gl = generator_loss(D, xf_t, y, gan_loss, aux_weight)
                total = total + gan_weight * gl["loss"]
                rec.update({f"g_{k}": float(v.detach()) for k, v in gl.items()})
            st.opt_g.zero_grad(set_to_none=True)
            total.backward()
            st.opt_g.step()
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
           pool_batch_size: int = 256, **match_kw) -> GANState:
    """:func:`match_generator` with a model pool built from ``pool_models`` and, when
    ``objective_key`` names the objective and its weights, a cache next to stage 1's
    (``<stage-1 key>__<objective_key>_<hash>.pt``), so baselines shared by notebooks
    (e.g. DiM) are trained once."""
    device = torch.device(device) if device is not None else dataset.device
    pool = GANModelPool(pool_models, dataset.channels, dataset.num_classes, dataset.im_size,
                        device=device, mid_layer=mid_layer, batch_size=pool_batch_size)
    path = None
    if objective_key and use_cache and state.meta.get("cache"):
        blob = json.dumps(_plain({"objective": objective_key, "pool": pool.names, "mid": mid_layer,
                                  "pool_batch_size": pool_batch_size, **match_kw}), sort_keys=True)
        stem = Path(state.meta["cache"]).stem
        path = Path(cache_dir or Path(state.meta["cache"]).parent) / \
            f"{stem}__{objective_key}_{hashlib.sha1(blob.encode()).hexdigest()[:10]}.pt"
        if path.is_file():
            st = load_checkpoint(path, dataset, device)
            st.meta["cache"], st.meta["cache_hit"] = str(path), True
            return st
    st = match_generator(state, dataset, objective, pool=pool, **match_kw)
    st.params = {**state.params, "stage2": _plain({"objective": objective_key, "pool": pool.names,
                                                   "mid_layer": mid_layer, **match_kw})}
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
        return {"loss": w_global * glob, "global": glob}

    return objective


# --------------------------------------------------------------------------- evaluation

@dataclass
class GeneratorEval:
    """Accuracy of networks trained on generator output (percent), with the protocol used."""
    mean: float
    std: float
    accs: list
    protocol: str
    ipc: int
    model: str
    seconds: float
    sample_seconds: float
    fixed_sets: str = "one"

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mean", "std", "accs", "protocol", "ipc", "model",
                                               "seconds", "sample_seconds", "fixed_sets")}


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


def evaluate_generator(G: ConditionalGenerator, dataset, ipc: int, *, protocol: str = "fixed",
                       model: str = "ConvNet", num_models: int = 5, epochs: int = 1000,
                       lr: float = 0.01, batch_size: int = 256, dsa=True, seed: int = 0,
                       device=None, progress: bool = True, fixed_sets: str = "one") -> GeneratorEval:
    """Deploy the generator at ``ipc`` images per class and evaluate it (test accuracy, %).

    * ``"fixed"``: a fixed set (:meth:`ConditionalGenerator.sample` with ``seed``), then the
      standard protocol (:func:`ddkit.evaluate.evaluate_synset`); ``fixed_sets="per_model"``
      gives network ``i`` its own set (seed ``seed + i``, see :data:`FIXED_SETS`).
    * ``"resample"``: DiM's protocol - the same trainer, schedule and number of steps (forward
      passes) as ``"fixed"``, but every training step uses freshly generated images (new noise
      each step, eval-mode generator, the ``ipc`` x classes labels reshuffled every epoch).
    The returned :class:`GeneratorEval` records the protocol.
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {EVAL_PROTOCOLS}")
    _check_fixed_sets(fixed_sets)
    _positive_int("ipc", ipc)
    _positive_int("num_models", num_models)
    t0 = time.perf_counter()
    x, y = G.sample(ipc, seed=seed)
    sample_seconds = time.perf_counter() - t0
    kw = dict(model=model, epochs=epochs, lr=lr, batch_size=batch_size, dsa=dsa, device=device,
              progress=progress)
    was = G.training
    G.eval()
    try:
        if protocol == "fixed":
            r = _evaluate_fixed_sets(lambda s: (x, y) if s == seed else G.sample(ipc, seed=s), dataset,
                                     fixed_sets, num_models, seed, **kw)
        else:
            steps = math.ceil(len(y) / batch_size)
            labels = y.to(G.device)
            order = {}

            def batch_source(step, generator):
                b = step % steps
                if b == 0:
                    gdev = generator.device if generator is not None else torch.device("cpu")
                    order["perm"] = torch.randperm(len(labels), generator=generator, device=gdev).to(G.device)
                yb = labels[order["perm"][b * batch_size:(b + 1) * batch_size]]
                with torch.no_grad():
                    xb = G.generate(yb, G.noise(len(yb), generator))
                return xb, yb

            r = evaluate_synset(None, None, dataset, batch_source=batch_source, steps_per_epoch=steps,
                                num_models=num_models, seed=seed, **kw)
    finally:
        G.train(was)
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], protocol, ipc, model,
                         time.perf_counter() - t0, sample_seconds,
                         fixed_sets if protocol == "fixed" else "-")


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

    return {
        "gan_loss": Param(str, choices=GAN_LOSSES, help="'cgan' = papers' Eq. 1-4; 'wgan_gp' = DiM code"),
        "gan_epochs": Param(int, min=0, help="stage-1 epochs"),
        "gan_iters": Param(int, min=0, help="stage-1 iterations per epoch (0 = one pass over the data)"),
        "gan_batch_size": Param(int, min=1),
        "gan_lr": Param(float, min=0, min_exclusive=True),
        "gan_betas": Param(list, item=float, check=_beta_check,
                           help="stage-1 Adam (beta1, beta2); DiM: [0.0, 0.9]"),
        "d_steps": Param(int, min=1, help="discriminator updates per generator update (stage 1)"),
        "gp_lambda": Param(float, min=0),
        "aux_weight": Param(float, min=0, help="auxiliary class CE (AC-GAN); 0 = pure Eq. 4 cGAN"),
        "z_dim": Param(int, min=1),
        "gen_width": Param(int, min=1, help="DiM: 196"),
        "disc_width": Param(int, min=1, help="DiM: 196"),
        "match_epochs": Param(int, min=0, help="stage-2 epochs (a new pool model each epoch)"),
        "batch_size": Param(int, min=1, help="stage-2 real/synthetic batch"),
        "match_lr": Param(float, min=0, min_exclusive=True, help="stage-2 lr of G and D (DiM 5e-6)"),
        "gan_weight": Param(float, min=0, help="weight of L_CGAN in stage 2 (Eq. 7/8: 1)"),
        "pool_models": Param(list, item=str, check=pool_check, help="[] = [model]"),
        "pool_train_steps": Param(int, min=0, help="SGD steps of the pool model before each G step"),
        "pool_batch_size": Param(int, min=1),
        "mid_layer": Param(int, min=-1, help="-1 = each model's own mid layer"),
        "deploy_ipcs": Param(list, item=int, min=1, help="IPCs sampled from the saved generator"),
        "eval_protocol": Param(str, choices=NOTEBOOK_PROTOCOLS,
                               help="'both': the fixed set (headline) and DiM's resampling"),
        "fixed_sets": Param(str, choices=FIXED_SETS, help="fixed protocol: one set, or one per network"),
        "baselines": Param(list, item=str, choices=("random", "cgan", "dim")),
        "dim_form": Param(str, choices=MATCH_FORMS, help="DiM baseline's logit term: DiM code or Eq. 6 sum"),
        "gan_checkpoint": Param(str, check=exists, help="'' = train stage 1 (cached)"),
        "use_cache": Param(bool),
    }


# --------------------------------------------------------------------------- notebook helpers

def _p(P, key, default=None):
    return getattr(P, key, default)


def check_notebook_params(P, dataset=None) -> None:
    """Impossible-setting checks shared by the generative notebooks (ValueError before compute):
    GAN loss, pool models, protocol, image size, IPCs larger than the classes (random-real
    baseline), and a ``gan_checkpoint`` made for another dataset / image size / class count.
    (``deploy_ipcs`` may be empty: then only ``ipc`` is evaluated.)"""
    validate_gan_config(gan_loss=P.gan_loss, pool_models=P.pool_models or [P.model],
                        eval_protocol=P.eval_protocol, deploy_ipcs=list(P.deploy_ipcs) or None,
                        gan_betas=P.gan_betas)
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
    """:func:`stage1` with a notebook's parameters (cache under ``<results_dir>/gan_cache``)."""
    return stage1(dataset, z_dim=P.z_dim, gen_width=P.gen_width, disc_width=P.disc_width, gan_loss=P.gan_loss,
                  gan_lr=P.gan_lr, gan_betas=tuple(P.gan_betas), gan_batch_size=P.gan_batch_size,
                  gan_epochs=P.gan_epochs, gan_iters=P.gan_iters, d_steps=P.d_steps, gp_lambda=P.gp_lambda,
                  aux_weight=P.aux_weight, seed=P.seed, device=device,
                  cache_dir=default_cache_dir(P.results_dir or None), use_cache=P.use_cache, progress=progress,
                  checkpoint=P.gan_checkpoint or None)


def stage2_from_params(P, state, dataset, objective, objective_key=None, device=None, progress=True,
                       desc="stage 2") -> GANState:
    """:func:`stage2` with a notebook's parameters (``iterations`` = generator steps per epoch,
    0 = one pass over the training set; ``mid_layer = -1`` = each model's own)."""
    return stage2(state, dataset, objective, objective_key=objective_key if P.use_cache else None,
                  device=device, pool_models=P.pool_models or [P.model],
                  mid_layer=None if P.mid_layer < 0 else P.mid_layer, pool_batch_size=P.pool_batch_size,
                  epochs=P.match_epochs, iters_per_epoch=P.iterations, batch_size=P.batch_size, lr=P.match_lr,
                  pool_train_steps=P.pool_train_steps, gan_weight=P.gan_weight, gp_lambda=P.gp_lambda,
                  aux_weight=P.aux_weight, seed=P.seed, progress=progress, desc=desc)


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
    return GeneratorEval(r.mean, r.std, [float(a) for a in r.accs], "fixed", ipc, model,
                         time.perf_counter() - t0, 0.0, fixed_sets)


def protocol_list(protocol: str) -> list:
    """``"both"`` -> ``["fixed", "resample"]`` (the fixed set first: it is the headline);
    a single protocol -> ``[protocol]``."""
    if protocol not in NOTEBOOK_PROTOCOLS:
        raise ValueError(f"unknown eval protocol {protocol!r}; expected one of {NOTEBOOK_PROTOCOLS}")
    return list(EVAL_PROTOCOLS) if protocol == "both" else [protocol]


def compare_methods(generators: dict, dataset, ipcs, *, protocol="fixed", random_real=True, model="ConvNet",
                    num_models=5, epochs=1000, seed=0, device=None, progress=True, fixed_sets="one"):
    """Evaluate every generator (and random real images) at every IPC; returns
    ``(table, results)``: a pandas DataFrame (rows = methods, columns = IPCs, "mean ± std")
    and ``results[method][ipc] -> GeneratorEval``.

    ``protocol="both"`` evaluates each generator with the fixed set (rows named as in
    ``generators``) *and* with DiM's resampling (rows ``"<name> · resample"``); random real
    images always use the fixed protocol. ``fixed_sets`` (:data:`FIXED_SETS`) applies to every
    fixed-protocol row, random real included."""
    import pandas as pd

    protocols = protocol_list(protocol)
    results: dict = {}
    jobs = ([("Random real", None, "fixed")] if random_real else []) + [
        (name if (p == protocols[0]) else f"{name} · {p}", G, p) for p in protocols for name, G in generators.items()]
    for name, G, p in jobs:
        results[name] = {}
        for ipc in ipcs:
            if G is None:
                r = random_real_eval(dataset, ipc, model=model, num_models=num_models, epochs=epochs, seed=seed,
                                     device=device, progress=progress, fixed_sets=fixed_sets)
            else:
                r = evaluate_generator(G, dataset, ipc, protocol=p, model=model, num_models=num_models,
                                       epochs=epochs, seed=seed, device=device, progress=progress,
                                       fixed_sets=fixed_sets)
            results[name][ipc] = r
    table = pd.DataFrame({f"IPC {ipc}": {n: f"{results[n][ipc].mean:.2f} ± {results[n][ipc].std:.2f}"
                                         for n in results} for ipc in ipcs})
    table.insert(0, "protocol", [results[n][ipcs[0]].protocol for n in results])
    table.index.name = f"{model}"
    return table, results


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
