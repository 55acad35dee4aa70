"""Model pools: where the matching networks of each distillation iteration come from.

Every pool has ``draw(generator) -> nn.Module`` (frozen parameters, train mode) and
``after_iteration(dataset, generator)`` (a hook the distillation loop calls after each image step).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.utils import on_device, resolve_device
from ..models import get_model, reinit_


def freeze_(model: nn.Module) -> nn.Module:
    """Parameters stop requiring grad (the images are what is optimised); returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class RandomPool:
    """DM's pool: a freshly initialised network per iteration (docs/sources.md, DM).

    One module is built once and re-initialised in place (``reinit_``) at every draw, so the
    same object (and a compiled graph of it) is reused instead of constructing a new network.
    ``fresh_init_per_draw``: ``draw`` only re-initialises ``net`` (``distill``'s CUDA-graph loop re-draws it on the device).
    """

    fresh_init_per_draw = True

    def __init__(self, model_name: str, channels: int, num_classes: int, im_size, device=None, **model_kw):
        self.model_name = model_name
        self.device = resolve_device(device)
        self.net = freeze_(get_model(model_name, channels, num_classes, im_size, **model_kw)).to(self.device)

    @classmethod
    def for_dataset(cls, model_name: str, dataset, device=None, **model_kw) -> "RandomPool":
        return cls(model_name, dataset.channels, dataset.num_classes, dataset.im_size, device, **model_kw)

    def draw(self, generator: torch.Generator | None = None) -> nn.Module:
        reinit_(self.net, generator)
        return self.net.train()

    def after_iteration(self, dataset, generator=None) -> None:
        """Random networks are not trained."""


# =========================================================================== IDM queue, pretrained pool
# IDMQueue and PretrainedPool (IDM / IID / DSDM). Imports for this section only.
import copy  # noqa: E402
import hashlib  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

from ..augment import DSA  # noqa: E402
from ..core.resume import dataset_fingerprint  # noqa: E402
from ..core.utils import atomic_torch_save, make_generator, safe_torch_load  # noqa: E402
from ..runs.results import resolve_results_dir
from ..train import accuracy, sgd, train_classifier, train_steps  # noqa: E402


# --------------------------------------------------------------------------- IDM queue
# Facts from the IDM / IID reference code (docs/sources.md, "IDM"): 3 nets at the
# start, a new randomly initialised net pushed every 30 iterations (the oldest dropped beyond
# 100), 1-2 nets used per iteration, afterwards 2 random nets of the queue take 10 SGD steps
# (lr 0.01, momentum 0.9, wd 5e-4, each net keeps its own optimizer) on random real batches of
# 256 drawn from all classes.


def _pick(n: int, k: int, generator) -> list:
    """``k`` distinct random indices out of ``n`` (all of them, shuffled, when ``k >= n``)."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=dev)[:k].tolist()


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _unfreeze(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(True)
    return net


class IDMQueue:
    """IDM's queue of partly trained networks (Zhao et al., CVPR 2023, "model queue").

    ``draw(generator)`` returns one net of the queue (frozen, train mode): embeddings come
    from nets that have seen a few real batches, not from fresh initialisations.
    ``draw_many(generator)`` returns the ``nets_per_iteration`` nets of the current
    iteration (IDM's ``train_net_num``, 1 in the reference CIFAR commands, 2 by default in
    its argument parser). ``after_iteration(dataset, generator)`` ends an iteration:
    ``train_nets`` random nets take ``train_steps`` SGD steps on real batches of all classes.
    Every ``interval`` iterations (at iteration 0, 30, 60, ...) a fresh net is pushed; beyond
    ``max_nets`` the oldest one is dropped.

    ``accuracy_of(net)`` is the accuracy (percent) the net reached on its last training
    steps' real batches, for IDM's optional class-aware term (CE on synthetic logits
    weighted by the net's accuracy; the reference weights by its running train accuracy in
    percent). Measured only when ``track_accuracy`` is on: on a fresh real batch of
    ``batch_size`` right after the net's steps (one extra forward pass).
    """

    def __init__(self, model_name: str, channels: int, num_classes: int, im_size, *, device=None,
                 max_nets: int = 100, interval: int = 30, initial_nets: int = 3,
                 nets_per_iteration: int = 1, train_nets: int = 2, train_steps: int = 10,
                 batch_size: int = 256, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, track_accuracy: bool = False,
                 generator: torch.Generator | None = None, **model_kw):
        self.max_nets = _positive_int("max_nets", max_nets)
        self.interval = _positive_int("interval", interval)
        self.nets_per_iteration = _positive_int("nets_per_iteration", nets_per_iteration)
        self.train_nets = _positive_int("train_nets", train_nets, 0)
        self.train_steps = _positive_int("train_steps", train_steps, 0)
        self.batch_size = _positive_int("batch_size", batch_size)
        _positive_int("initial_nets", initial_nets, 0)
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.model_name, self.channels, self.num_classes = model_name, channels, num_classes
        self.im_size, self.model_kw = tuple(im_size), dict(model_kw)
        get_model(model_name, channels, num_classes, im_size, **model_kw)  # fail early on a bad name
        self.device = resolve_device(device)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.track_accuracy = bool(track_accuracy)
        self.nets: list[nn.Module] = []
        self.optimizers: list = []
        self.accs: list = []
        self.iteration = 0
        self.pushed = 0
        self._pushed_at = None
        self.current: list[nn.Module] = []
        for _ in range(initial_nets):
            self._push(generator)

    def __len__(self) -> int:
        return len(self.nets)

    def __repr__(self):
        return (f"IDMQueue({self.model_name!r}, nets={len(self.nets)}/{self.max_nets}, "
                f"interval={self.interval}, iteration={self.iteration})")

    def _push(self, generator) -> None:
        net = get_model(self.model_name, self.channels, self.num_classes, self.im_size,
                        **self.model_kw).to(self.device)
        reinit_(net, generator)
        self.nets.append(freeze_(net.train()))
        self.optimizers.append(None)  # created by the first train_steps call, then kept
        self.accs.append(None)
        self.pushed += 1
        if len(self.nets) > self.max_nets:
            self.nets.pop(0)
            self.optimizers.pop(0)
            self.accs.pop(0)

    def _maybe_push(self, generator) -> None:
        if self.iteration % self.interval == 0 and self._pushed_at != self.iteration:
            self._push(generator)
            self._pushed_at = self.iteration

    def draw_many(self, generator: torch.Generator | None = None) -> list:
        """The ``nets_per_iteration`` nets of this iteration (frozen, train mode)."""
        self._maybe_push(generator)
        self.current = [self.nets[i] for i in _pick(len(self.nets), self.nets_per_iteration, generator)]
        for net in self.current:
            freeze_(net).train()
        return self.current

    def draw(self, generator: torch.Generator | None = None) -> nn.Module:
        """One random net of the queue for this iteration (frozen, train mode)."""
        self._maybe_push(generator)
        net = self.nets[_pick(len(self.nets), 1, generator)[0]]
        self.current = [net]
        return freeze_(net).train()

    def accuracy_of(self, net: nn.Module) -> float:
        """Last measured real-batch accuracy (percent) of ``net``; 0 before it was trained.
        ``net`` may be a ``ddkit.fast.speed.FastView`` of a queue net (distill's speed flags)."""
        if not isinstance(net, nn.Module):
            net = net.__dict__.get("module", net)
        for n, a in zip(self.nets, self.accs):
            if n is net:
                return 0.0 if a is None else a
        return 0.0

    def after_iteration(self, dataset, generator: torch.Generator | None = None) -> None:
        """Train ``train_nets`` random nets ``train_steps`` SGD steps on real batches, then advance."""
        if self.train_steps > 0 and self.nets:
            dataset = on_device(dataset, self.device)
            for i in _pick(len(self.nets), self.train_nets, generator):
                net = _unfreeze(self.nets[i])
                self.optimizers[i] = train_steps(
                    net, dataset, self.train_steps, batch_size=self.batch_size, lr=self.lr,
                    momentum=self.momentum, weight_decay=self.weight_decay, generator=generator,
                    optimizer=self.optimizers[i])
                if self.track_accuracy:
                    dev = generator.device if generator is not None else torch.device("cpu")
                    idx = torch.randint(len(dataset.x_train), (self.batch_size,), generator=generator,
                                        device=dev).to(dataset.device)
                    self.accs[i] = accuracy(net, dataset.x_train[idx], dataset.y_train[idx])
                freeze_(net).train()
        self.iteration += 1

    # -- resume support (``ddkit.methods.distill.distill`` saves ``pool.state_dict()`` in its checkpoint)
    def state_dict(self) -> dict:
        return {
            "nets": [{k: v.detach().cpu().clone() for k, v in n.state_dict().items()} for n in self.nets],
            "optimizers": [None if o is None else copy.deepcopy(o.state_dict()) for o in self.optimizers],
            "accs": [None if a is None else float(a) for a in self.accs],
            "iteration": self.iteration, "pushed": self.pushed,
            "pushed_at": -1 if self._pushed_at is None else self._pushed_at,
        }

    def load_state_dict(self, state: dict) -> "IDMQueue":
        self.nets, self.optimizers = [], []
        for sd, osd in zip(state["nets"], state["optimizers"]):
            net = get_model(self.model_name, self.channels, self.num_classes, self.im_size,
                            **self.model_kw).to(self.device)
            net.load_state_dict(sd)
            self.nets.append(freeze_(net.train()))
            if osd is None:
                self.optimizers.append(None)
            else:
                opt = sgd(_unfreeze(net), self.lr, self.momentum, self.weight_decay)
                opt.load_state_dict(osd)
                freeze_(net)
                self.optimizers.append(opt)
        self.accs = list(state["accs"])
        self.iteration, self.pushed = int(state["iteration"]), int(state["pushed"])
        self._pushed_at = None if state["pushed_at"] < 0 else int(state["pushed_at"])
        return self


# --------------------------------------------------------------------------- pretrained pool
# IID: ResNet18 (instance norm) trained 40 epochs in the reference code (30 in the
# paper), SGD 0.01 / 0.9 / 5e-4, batch 256, no augmentation, constant lr; a random one per
# iteration. DSDM: M = 10 ConvNet-3 trained E = 20 epochs, one drawn per iteration.

POOL_FORMAT = 1
POOL_KIND = "ddkit.PretrainedPool"
POOL_AUGMENT = ("none", "dsa")


def _slug(text: str) -> str:
    text = Path(str(text)).stem if str(text).endswith(".npz") else str(text)
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "dataset"


class PretrainedPool:
    """``num_models`` networks of ``model_name`` trained ``epochs`` epochs on the real data,
    cached on disk; ``draw(generator)`` loads a random one (frozen, train mode).

    Training: :func:`ddkit.train.train_classifier` with SGD ``lr`` 0.01, momentum 0.9, weight
    decay 5e-4, batch 256, constant learning rate (the reference pre-training scripts), DSA on
    every batch when ``augment="dsa"``. ``train_per_class`` > 0 trains on that many images
    per class (a fixed subset; tiny configurations), 0 on the whole training set. Each
    model's test accuracy (on ``test_samples`` evenly strided test images, 0 = skip; stored
    in ``.accs``, NaN when skipped) is shown on the progress bar.

    Cache: ``<cache_dir>/<dataset>_<model>_M<M>_E<E>_seed<seed>[_n<k>][_dsa][_<hash>].pt`` (default
    ``cache_dir`` = ``ddkit.runs.results.resolve_results_dir() / "pools"``; the hash only when lr, momentum, weight decay, batch size
    or model arguments differ from the defaults), holding a ``meta`` dict (dataset name and
    fingerprint, shapes, model, M, E, seed, training settings) and the state dicts. A file
    whose key matches is reused (a partial file, from an interrupted build, is completed);
    another key is another file, built on first use. A corrupt or foreign file, or one made
    for another dataset / settings, raises ``ValueError`` naming the file before any training.
    Saved atomically after each model.
    """

    def __init__(self, model_name: str, dataset, num_models: int = 10, epochs: int = 20, seed: int = 0,
                 *, device=None, cache_dir=None, path=None, augment: str = "none",
                 train_per_class: int = 0, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, batch_size: int = 256, progress: bool = True,
                 build: bool = True, test_samples: int = 1000, **model_kw):
        _positive_int("num_models", num_models)
        _positive_int("epochs", epochs, 0)
        _positive_int("train_per_class", train_per_class, 0)
        _positive_int("batch_size", batch_size)
        if augment not in POOL_AUGMENT:
            raise ValueError(f"augment={augment!r}; expected one of {POOL_AUGMENT}")
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        self.dataset = dataset
        self.device = resolve_device(device)
        self.model_name, self.model_kw = model_name, dict(model_kw)
        self._net = get_model(model_name, dataset.channels, dataset.num_classes, dataset.im_size,
                              **model_kw).to(self.device)  # also rejects unknown model names
        self.meta = {
            "kind": POOL_KIND, "format": POOL_FORMAT,
            "dataset": str(dataset.name), "fingerprint": dataset_fingerprint(dataset),
            "channels": int(dataset.channels), "num_classes": int(dataset.num_classes),
            "im_size": list(dataset.im_size),
            "model": str(getattr(self._net, "model_name", model_name)), "model_kw": repr(sorted(model_kw.items())),
            "num_models": int(num_models), "epochs": int(epochs), "seed": int(seed),
            "train_per_class": int(train_per_class), "augment": augment, "lr": float(lr),
            "momentum": float(momentum), "weight_decay": float(weight_decay), "batch_size": int(batch_size),
        }
        if path is None:
            cache_dir = Path(cache_dir) if cache_dir else resolve_results_dir() / "pools"
            extra = {k: self.meta[k] for k in ("lr", "momentum", "weight_decay", "batch_size")}
            extra["model_kw"] = self.meta["model_kw"]
            default = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
                       "model_kw": repr([])}
            tag = "" if extra == default else "_" + hashlib.sha1(repr(sorted(extra.items())).encode()).hexdigest()[:8]
            name = (f"{_slug(dataset.name)}_{self.meta['model']}_M{num_models}_E{epochs}_seed{seed}"
                    + (f"_n{train_per_class}" if train_per_class else "")
                    + (f"_{augment}" if augment != "none" else "") + tag + ".pt")
            path = cache_dir / name
        self.path = Path(path)
        self.progress = progress
        self.test_samples = _positive_int("test_samples", test_samples, 0)
        self.states: list = []
        self.accs: list = []
        self.reused = False
        self.current: nn.Module | None = None
        self.last_index: int | None = None
        if self.path.exists():
            obj = safe_torch_load(self.path, expect={k: v for k, v in self.meta.items()})
            states, accs = obj.get("states"), obj.get("accs", [])
            if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
                raise ValueError(f"{self.path} has no list of state dicts under 'states'; delete it to rebuild")
            try:  # a file of the right key but other shapes is foreign too
                for s in states[:1]:
                    self._net.load_state_dict(s)
            except RuntimeError as e:
                raise ValueError(f"{self.path}: stored weights do not fit {model_name} ({e}); "
                                 "delete it to rebuild") from e
            self.states, self.accs = states[:num_models], list(accs)[:num_models]
            self.reused = len(self.states) == num_models
        if build and len(self.states) < num_models:
            self.build()

    # -- building
    def _train_subset(self, generator, ds):
        n = self.meta["train_per_class"]
        if not n:
            return ds.x_train, ds.y_train
        idx = torch.cat([ds.sample_indices(c, n, generator) for c in range(ds.num_classes)])
        return ds.x_train[idx], ds.y_train[idx]

    def build(self) -> "PretrainedPool":
        """Train the missing models (progress bar), saving the file after each one."""
        from tqdm.auto import tqdm
        m, total = len(self.states), self.meta["num_models"]
        ds = self.dataset.to(self.device)
        dsa = DSA(ds.dsa_strategy) if self.meta["augment"] == "dsa" else None
        bar = tqdm(range(m, total), desc=f"pretraining {self.meta['model']} pool", initial=m, total=total,
                   disable=not self.progress)
        for i in bar:
            g = make_generator(self.meta["seed"] * 100003 + i)
            x, y = self._train_subset(g, ds)
            net = get_model(self.model_name, ds.channels, ds.num_classes, ds.im_size,
                            **self.model_kw).to(self.device)
            reinit_(net, g)
            train_classifier(net, x, y, epochs=self.meta["epochs"], lr=self.meta["lr"],
                             momentum=self.meta["momentum"], weight_decay=self.meta["weight_decay"],
                             batch_size=self.meta["batch_size"], dsa=dsa, schedule="none", generator=g)
            acc = float("nan")
            if self.test_samples:
                step = max(1, len(ds.x_test) // self.test_samples)
                acc = accuracy(net, ds.x_test[::step][:self.test_samples], ds.y_test[::step][:self.test_samples])
            self.states.append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            self.accs.append(float(acc))
            bar.set_postfix(test_acc=f"{acc:.1f}%")
            atomic_torch_save({"meta": self.meta, "states": self.states, "accs": self.accs}, self.path)
        return self

    # -- use
    @property
    def net(self) -> nn.Module:
        """The one module every drawn network's weights are loaded into (its architecture and device)."""
        return self._net

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self):
        return (f"PretrainedPool({self.meta['model']!r}, {self.meta['dataset']!r}, M={self.meta['num_models']}, "
                f"E={self.meta['epochs']}, seed={self.meta['seed']}, built={len(self.states)}, "
                f"path={str(self.path)!r})")

    def load(self, index: int) -> nn.Module:
        """Model ``index`` of the pool (the pool's single module, reloaded; frozen, train mode)."""
        self._net.load_state_dict(self.states[index])
        self.current, self.last_index = freeze_(self._net).train(), index
        return self.current

    def draw(self, generator: torch.Generator | None = None) -> nn.Module:
        """A random model of the pool (frozen, train mode). The module object is reused."""
        if len(self.states) < self.meta["num_models"]:
            raise RuntimeError(f"pool {self.path} is incomplete ({len(self.states)}/{self.meta['num_models']}); "
                               "call .build()")
        return self.load(_pick(len(self.states), 1, generator)[0])

    def after_iteration(self, dataset=None, generator=None) -> None:
        """Pretrained pools stay fixed."""
