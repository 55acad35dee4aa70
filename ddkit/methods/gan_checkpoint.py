"""A GAN's state on disk: :class:`GANState` (G + D + their Adam optimizers + params + history),
:func:`build_gan` (a fresh, seeded pair) and atomic checkpoints that refuse another dataset.

Checkpoints are written atomically (``ddkit.core.utils.atomic_torch_save``) and loaded with
``weights_only=True`` (``ddkit.core.utils.safe_torch_load``); a checkpoint made for another dataset,
image size, channel or class count is a ``ValueError`` naming the key.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.utils import atomic_torch_save, make_generator, resolve_device, safe_torch_load
from ..models import reinit_
from .gan_losses import check_gan_loss
from .gan_nets import ConditionalGenerator, Discriminator, as_hw

__all__ = ["CHECKPOINT_FORMAT", "GANState", "checkpoint_meta", "build_gan", "save_checkpoint", "check_checkpoint",
           "load_checkpoint", "plain"]

#: The format id stored in every generator checkpoint (unchanged since the first release, so
#: earlier checkpoints and caches still load).
CHECKPOINT_FORMAT = "ddkit.generative/1"


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

    def term_scales(self, keys, window: int = 5) -> dict:
        """Mean absolute value of each logged term of ``history`` over the first and the last ``window``
        generator steps: ``{key: (start, end)}`` (keys absent from the history are left out)."""
        out = {}
        for k in keys:
            v = [abs(float(h[k])) for h in self.history if k in h]
            if v:
                out[k] = (sum(v[:window]) / len(v[:window]), sum(v[-window:]) / len(v[-window:]))
        return out

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
            "im_size": list(as_hw(dataset.im_size)), "num_classes": int(dataset.num_classes)}


def build_gan(dataset, *, z_dim: int = 100, gen_width: int = 196, disc_width: int = 196,
              gan_loss: str = "wgan_gp", lr: float = 1e-4, betas=(0.0, 0.9), device=None,
              seed: int = 0, gen_arch: str = "dim", gen_conditioning: str = "concat") -> GANState:
    """Fresh G/D for ``dataset`` (deterministic per ``seed``) with Adam(lr, betas) each
    (DiM: lr 1e-4, betas (0, 0.9)); ``gen_arch`` / ``gen_conditioning``: see
    :class:`ConditionalGenerator`."""
    check_gan_loss(gan_loss)
    device = resolve_device(device)
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
    obj = {"meta": dict(state.meta), "params": plain(state.params), "G": state.G.state_dict(),
           "D": state.D.state_dict(), "opt_g": state.opt_g.state_dict(),
           "opt_d": state.opt_d.state_dict(), "history": plain(state.history),
           "epochs_done": int(state.epochs_done), "seconds": float(state.seconds)}
    if state.rng_state is not None:
        obj["rng_state"] = state.rng_state
    atomic_torch_save(obj, path)
    return path


def plain(obj):
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
