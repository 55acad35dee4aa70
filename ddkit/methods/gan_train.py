"""The DiM family's GAN and stage 1 (Algorithm 1 of paper 01): train the conditional GAN on real data
(:func:`train_gan`), cached with resume by :func:`stage1` under a key of the dataset identity and
every stage-1 parameter. The GAN steps and the siamese augmentation are shared with stage 2
(:mod:`ddkit.methods.gan_stage2`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..augment import DSA
from ..core.utils import make_generator, on_device
from ..runs.results import resolve_results_dir
from .gan_checkpoint import GANState, build_gan, checkpoint_meta, load_checkpoint, plain, save_checkpoint
from .gan_losses import check_gan_loss, discriminator_loss, generator_loss
from .gan_nets import CONDITIONINGS, GEN_ARCHS, check_choice, positive_int


__all__ = ["STEP_ORDERS", "D_LABELS", "STAGE1_KEYS", "siamese_augment", "train_gan", "stage1_key",
           "default_cache_dir", "stage1", "check_betas", "as_dsa"]


#: Order of the two updates per GAN iteration: ddkit's D then G, or DiM's G then D.
STEP_ORDERS = ("d_first", "g_first")

#: Labels of the fakes in D's update: those of the real batch, or uniform random (DiM).
D_LABELS = ("real", "random")


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


def as_dsa(dsa) -> DSA | None:
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
    check_choice("step_order", step_order, STEP_ORDERS)
    check_choice("d_labels", d_labels, D_LABELS)


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
    :func:`discriminator_loss`. ``iters_per_epoch=0`` = one pass over the training set. Runs on the
    generator's device (``dataset`` is moved there)."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    check_gan_loss(gan_loss)
    _check_gan_schedule(step_order, d_labels)
    dataset = on_device(dataset, state.G.device)
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
    blob = json.dumps(plain(ident), sort_keys=True)
    return f"{dataset.name}_{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def default_cache_dir(results_dir: str | Path | None = None) -> Path:
    """``<results folder>/gan_cache`` (``ddkit.runs.results.resolve_results_dir``), shared by both stages."""
    return resolve_results_dir(results_dir) / "gan_cache"


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
    check_gan_loss(gan_loss)
    for name, v in (("gen_width", gen_width), ("disc_width", disc_width), ("z_dim", z_dim)):
        positive_int(name, v)
    check_betas("gan_betas", gan_betas)
    check_choice("gen_arch", gen_arch, GEN_ARCHS)
    check_choice("gen_conditioning", gen_conditioning, CONDITIONINGS)
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


def check_betas(name: str, betas) -> tuple:
    """Adam's (beta1, beta2): two numbers in [0, 1); ValueError naming ``name`` otherwise."""
    betas = list(betas)
    if len(betas) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1
                              for b in betas):
        raise ValueError(f"{name}={betas!r}: Adam takes two betas (beta1, beta2) in [0, 1), e.g. [0.0, 0.9]")
    return tuple(float(b) for b in betas)
