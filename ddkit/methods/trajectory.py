"""EAD training trajectories: checkpoints ``{(theta_t, eta_t)}`` of an SGD run on real data.

EAD (papers/05_ead.md, Algorithm 1) needs "a training trajectory of a network trained on D":
the parameters ``theta_t`` and learning rates ``eta_t`` of SGD at (a subset of) its steps. The
final parameters ``theta_T`` are the teacher that gives the initial soft labels.

    traj = Trajectory.get(dataset, "ConvNet", epochs=2, seed=0)   # trains once, then cached
    picks = traj.sample(t_m, generator)                            # t_m checkpoints
    teacher = traj.teacher()                                       # nn.Module with theta_T

Trajectories are cached in ``<results_dir>/trajectories/`` under a file name that hashes the key
(dataset, architecture, schedule, seed, ...); a cached file is reused only when its stored key
matches, and a foreign, mismatching or corrupted file is a ``ValueError`` (never silently retrained
over). Files are written atomically and read with ``weights_only=True``.

What is stored: per checkpoint the model's ``state_dict`` (parameters and buffers, CPU), the
learning rate used for the step taken from it and the global step; plus the final state
(``theta_T``) and the per-step training loss. Checkpoint ``k`` is the state *before* step
``steps[k]``, i.e. the ``theta_t`` at which the SGD step ``t`` evaluates its gradient, which is
what the replacement-effect expansion (EAD Eq. 4) sums over.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.utils import atomic_torch_save, make_generator, resolve_device, safe_torch_load
from ..models import get_model
from ..runs.results import resolve_results_dir

FORMAT = "ddkit.trajectory/1"
SCHEDULES = ("constant", "step", "cosine")


def lr_at(step: int, total_steps: int, lr: float, schedule: str) -> float:
    """Learning rate of SGD step ``step`` (0-based) out of ``total_steps``.

    ``constant``: ``lr``; ``step``: x0.1 from the middle on (the evaluation protocol's single
    decay); ``cosine``: ``lr * (1 + cos(pi * step / total)) / 2``.
    """
    if schedule == "constant":
        return float(lr)
    if schedule == "step":
        return float(lr) * (0.1 if step >= total_steps // 2 else 1.0)
    if schedule == "cosine":
        return float(lr) * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")


def trajectory_key(dataset, model: str, *, epochs: int, batch_size: int, lr: float, momentum: float,
                   weight_decay: float, schedule: str, save_every: int, seed: int,
                   model_kw: dict | None = None) -> dict:
    """The cache key of a trajectory: every setting that changes the checkpoints (flat, JSON-able)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}; expected one of {SCHEDULES}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("save_every", save_every)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return {
        "format": FORMAT,
        "dataset": str(dataset.name),
        "num_train": int(len(dataset.x_train)),
        "num_classes": int(dataset.num_classes),
        "image_shape": [int(dataset.channels), *[int(s) for s in dataset.im_size]],
        "model": str(model),
        "model_kw": json.dumps(model_kw or {}, sort_keys=True),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "schedule": str(schedule),
        "save_every": int(save_every),
        "seed": int(seed),
    }


def trajectory_path(cache_dir, key: dict) -> Path:
    """``<cache_dir>/<dataset>_<model>_<hash of the key>.pt``."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    ds = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(key["dataset"]).stem)[:40]
    return Path(cache_dir) / f"{ds}_{key['model']}_{digest}.pt"


@dataclass
class Checkpoint:
    """One sampled point of the trajectory: ``state`` (theta_t as a state_dict), ``lr`` (eta_t),
    the global SGD ``step`` and its ``index`` in the trajectory."""

    index: int
    step: int
    lr: float
    state: dict


@dataclass
class Trajectory:
    """Checkpoints ``{(theta_t, eta_t)}`` of one SGD run on real data (see module docstring)."""

    meta: dict
    states: list            # list of state_dicts (CPU tensors), theta_t before step steps[k]
    lrs: torch.Tensor       # (n,) eta_t of the step taken from each checkpoint
    steps: torch.Tensor     # (n,) global step index of each checkpoint
    final: dict             # theta_T (the teacher)
    losses: torch.Tensor    # (total_steps,) training loss of every step
    path: Path | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self):
        m = self.meta
        return (f"Trajectory({m['dataset']}, {m['model']}, {len(self)} checkpoints over "
                f"{int(self.losses.numel())} steps, lr={m['lr']} {m['schedule']}, seed={m['seed']})")

    # -------------------------------------------------------------- making one
    @classmethod
    def get(cls, dataset, model: str = "ConvNet", *, epochs: int = 2, batch_size: int = 256, lr: float = 0.01,
            momentum: float = 0.0, weight_decay: float = 0.0, schedule: str = "constant", save_every: int = 1,
            seed: int = 0, model_kw: dict | None = None, results_dir="", cache: bool = True, device=None,
            progress: bool = True, checkpoint_every: int = 100) -> Trajectory:
        """The cached trajectory for this key, training (and caching) it when absent.

        The file lives in ``<results_dir>/trajectories/`` (``ddkit.runs.results.resolve_results_dir(results_dir)``).
        A file whose stored key differs from the requested one, or that is corrupt, raises ``ValueError``.
        Training checkpoints to ``<file>.partial.pt`` every ``checkpoint_every`` steps and resumes from it
        (removed once the trajectory is cached).
        """
        key = trajectory_key(dataset, model, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, schedule=schedule, save_every=save_every, seed=seed,
                             model_kw=model_kw)
        root = resolve_results_dir(results_dir)
        path = trajectory_path(root / "trajectories", key)
        if cache and path.exists():
            return cls.load(path, expect=key)
        partial = path.with_name(path.stem + ".partial.pt") if cache else None
        traj = cls.train(dataset, model, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, save_every=save_every, seed=seed,
                         model_kw=model_kw, device=device, progress=progress, checkpoint=partial,
                         checkpoint_every=checkpoint_every)
        if cache:
            traj.save(path)
            partial.unlink(missing_ok=True)
        return traj

    @classmethod
    def train(cls, dataset, model: str = "ConvNet", *, epochs: int = 2, batch_size: int = 256, lr: float = 0.01,
              momentum: float = 0.0, weight_decay: float = 0.0, schedule: str = "constant", save_every: int = 1,
              seed: int = 0, model_kw: dict | None = None, device=None, progress: bool = True, checkpoint=None,
              checkpoint_every: int = 100) -> Trajectory:
        """Train ``model`` on ``dataset.x_train`` with minibatch SGD and keep every ``save_every``-th state.

        Plain SGD (``momentum=0``) is the setting of EAD's Proposition 3.2 (the update is
        ``theta_{t+1} = theta_t - eta_t grad``); with momentum the TracIn weights ``eta_t`` are only
        proportional to the true step sizes. Data order and initialisation come from ``seed``.

        ``checkpoint``: a path; every ``checkpoint_every`` SGD steps the training state (network, optimiser,
        generator, this epoch's order, the states kept so far) is saved there atomically, and a call that
        finds the file (made for the same key) resumes from it: the same trajectory as an uninterrupted run.
        """
        key = trajectory_key(dataset, model, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, schedule=schedule, save_every=save_every, seed=seed,
                             model_kw=model_kw)
        dev = resolve_device(device)
        data = dataset.to(dev)
        gen = make_generator(seed)  # CPU generator: init seed and batch order
        net = get_model(model, dataset.channels, dataset.num_classes, dataset.im_size, generator=gen,
                        **(model_kw or {})).to(dev)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        n = len(data.x_train)
        per_epoch = math.ceil(n / batch_size)
        total = epochs * per_epoch
        run = {"states": [], "lrs": [], "steps": [], "losses": [], "perm": None, "step": 0}
        if checkpoint is not None and Path(checkpoint).is_file():
            run = _resume_training(checkpoint, key, net, opt, gen)
        bar = tqdm(total=total, initial=run["step"], desc=f"trajectory {model}", disable=not progress, leave=False)
        for step in range(run["step"], total):
            b = step % per_epoch
            if b == 0:
                run["perm"] = torch.randperm(n, generator=gen)
            eta = lr_at(step, total, lr, schedule)
            for group in opt.param_groups:
                group["lr"] = eta
            if step % save_every == 0:
                run["states"].append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
                run["lrs"].append(eta)
                run["steps"].append(step)
            idx = run["perm"][b * batch_size:(b + 1) * batch_size].to(dev)
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run["losses"].append(float(loss.detach()))
            if not math.isfinite(run["losses"][-1]):
                raise ValueError(f"trajectory training diverged at step {step} (loss {run['losses'][-1]}); "
                                 f"lower lr={lr}")
            run["step"] = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{run['losses'][-1]:.3f}")
            if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                atomic_torch_save({"meta": {**key, "kind": "trajectory-training"}, "run": run,
                                   "net": net.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()},
                                  checkpoint)
        bar.close()
        final = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return cls(key, run["states"], torch.tensor(run["lrs"], dtype=torch.float64), torch.tensor(run["steps"]),
                   final, torch.tensor(run["losses"]))

    @classmethod
    def load(cls, path, dataset=None, model: str | None = None, expect: dict | None = None) -> Trajectory:
        """Load a trajectory file (``weights_only=True``). ``ValueError`` for corrupt or foreign files, and
        (when given) for another ``dataset``/``model`` than the stored one or any ``expect`` key mismatch."""
        obj = safe_torch_load(path, expect=expect)
        _validate(obj, path)
        traj = cls(obj["meta"], obj["states"], obj["lrs"], obj["steps"], obj["final"], obj["losses"], Path(path))
        traj.check_compatible(dataset, model)
        return traj

    def lr(self, step: int) -> float:
        """eta of SGD step ``step`` of this run (:func:`lr_at` with its schedule over all its steps), also for
        the steps between kept checkpoints."""
        return lr_at(step, int(self.losses.numel()), self.meta["lr"], self.meta["schedule"])

    # -------------------------------------------------------------- compatibility
    def check_compatible(self, dataset=None, model: str | None = None, model_kw: dict | None = None) -> None:
        """``ValueError`` when this trajectory was trained on another dataset or architecture."""
        where = f" ({self.path})" if self.path else ""
        if dataset is not None:
            want = {"dataset": str(dataset.name), "num_classes": int(dataset.num_classes),
                    "image_shape": [int(dataset.channels), *[int(s) for s in dataset.im_size]]}
            for k, v in want.items():
                if self.meta.get(k) != v:
                    raise ValueError(f"trajectory{where} was trained with {k}={self.meta.get(k)!r}, but this run "
                                     f"uses {k}={v!r}; train a trajectory for this dataset (Trajectory.get)")
        if model is not None and str(self.meta.get("model")).lower() != str(model).lower():
            raise ValueError(f"trajectory{where} is for architecture {self.meta.get('model')!r}, but this run "
                             f"uses model={model!r}; train a trajectory for this architecture")
        if model_kw is not None and self.meta.get("model_kw") != json.dumps(model_kw, sort_keys=True):
            raise ValueError(f"trajectory{where} has model_kw={self.meta.get('model_kw')}, but this run uses "
                             f"{json.dumps(model_kw, sort_keys=True)}")

    # -------------------------------------------------------------- models
    def build_model(self, state: dict | None = None, device=None) -> nn.Module:
        """A fresh model of the trajectory's architecture holding ``state`` (default theta_T)."""
        m = self.meta
        c, h, w = m["image_shape"]
        net = get_model(m["model"], c, m["num_classes"], (h, w), **json.loads(m["model_kw"]))
        net.load_state_dict(self.final if state is None else state)
        return net.to(resolve_device(device))

    def teacher(self, device=None) -> nn.Module:
        """The final model theta_T (eval mode, frozen): the soft-label teacher."""
        net = self.build_model(None, device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    # -------------------------------------------------------------- sampling
    def checkpoint(self, index: int) -> Checkpoint:
        return Checkpoint(int(index), int(self.steps[index]), float(self.lrs[index]), self.states[index])

    def sample(self, t_m: int, generator: torch.Generator | None = None) -> list:
        """``t_m`` distinct checkpoints drawn uniformly (Algorithm 1: "randomly sample t_m time steps"),
        in trajectory order. ``ValueError`` when ``t_m`` exceeds the number of checkpoints."""
        if int(t_m) != t_m or t_m < 1:
            raise ValueError(f"t_m must be a positive integer, got {t_m!r}")
        if t_m > len(self):
            raise ValueError(f"t_m={t_m} is larger than the trajectory ({len(self)} checkpoints); lower t_m or "
                             f"keep more checkpoints (smaller save_every / more epochs)")
        gdev = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randperm(len(self), generator=generator, device=gdev)[:t_m].sort().values.tolist()
        return [self.checkpoint(i) for i in idx]

    # -------------------------------------------------------------- disk
    def to_dict(self) -> dict:
        return {"meta": dict(self.meta), "states": self.states, "lrs": self.lrs, "steps": self.steps,
                "final": self.final, "losses": self.losses}

    def save(self, path) -> Path:
        path = Path(path)
        atomic_torch_save(self.to_dict(), path)
        self.path = path
        return path


def _validate(obj: dict, path) -> None:
    meta = obj["meta"]
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ddkit trajectory (format={meta.get('format')!r}, expected {FORMAT!r})")
    states, lrs, steps = obj.get("states"), obj.get("lrs"), obj.get("steps")
    ok = (isinstance(states, list) and len(states) > 0 and all(isinstance(s, dict) for s in states)
          and isinstance(obj.get("final"), dict) and isinstance(lrs, torch.Tensor) and isinstance(steps, torch.Tensor)
          and lrs.numel() == len(states) == steps.numel() and isinstance(obj.get("losses"), torch.Tensor))
    if not ok:
        raise ValueError(f"{path} is a damaged ddkit trajectory (inconsistent states/lrs/steps); delete it to rebuild")


def _resume_training(path, key: dict, net, opt, gen) -> dict:
    """Restore :meth:`Trajectory.train`'s state from ``path`` (made for ``key``) in place; returns the run dict."""
    state = safe_torch_load(path, expect={**key, "kind": "trajectory-training"})
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    return state["run"]
