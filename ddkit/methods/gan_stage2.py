"""Stage 2 of the GAN family: fine-tune a copy of the stage-1 generator with the GAN loss plus a
matching objective computed by a network of DiM's model pool (:class:`GANModelPool`,
:func:`match_generator`), cached by :func:`stage2` under a key holding the objective's code
(:func:`objective_fingerprint`).
"""

from __future__ import annotations

import dis
import hashlib
import inspect
import json
import time
import types
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.utils import check_same_device, make_generator, on_device, resolve_device
from ..models import MODEL_NAMES, get_model, reinit_
from ..train import sgd
from .gan_checkpoint import GANState, load_checkpoint, plain, save_checkpoint
from .gan_losses import GeneratorBatch, check_gan_loss, generator_loss
from .gan_nets import as_hw
from .gan_train import _check_gan_schedule, _gan_step, _RealBatches, as_dsa, check_betas, siamese_augment


__all__ = ["DEFAULT_POOL", "GANModelPool", "stage2_schedule", "match_generator", "objective_fingerprint",
           "stage2_key", "stage2", "DISPLAY_ONLY"]


#: DiM / papers 01 and 02 model pool (docs/sources.md).
DEFAULT_POOL = ("ConvNet", "ResNet10", "ResNet18")


class GANModelPool:
    """DiM's model pool: :meth:`draw` picks one of ``names`` at random and re-initialises it
    in place (one instance per architecture, built once); :meth:`warm` trains the current
    model ``steps`` SGD steps on real batches (SGD 0.01, momentum 0.9, wd 5e-4, the
    optimizer kept across calls within a draw), then freezes it for the generator step;
    :meth:`batch` hands the current model with a real and a synthetic batch to the objective.
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
        self.args = (channels, num_classes, as_hw(im_size))
        self.device = resolve_device(device)
        self.mid_override, self.lr, self.batch_size, self.model_kw = mid_layer, lr, batch_size, model_kw
        self.dsa = as_dsa(dsa)
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

    def batch(self, x_real: torch.Tensor, y_real: torch.Tensor, x_syn: torch.Tensor, y_syn: torch.Tensor,
              iteration: int = 0, epoch: int = 0) -> GeneratorBatch:
        """What a stage-2 objective receives: the current model and its ``mid_layer`` with the real
        and the paired synthetic batch."""
        if self.current is None:
            raise RuntimeError("draw a model first")
        return GeneratorBatch(self.current, x_real, y_real, x_syn, y_syn, self.mid_layer, iteration, epoch)

    def warm(self, dataset, steps: int, generator: torch.Generator | None = None) -> nn.Module:
        if self.current is None:
            raise RuntimeError("draw a model first")
        if steps > 0:
            dataset = on_device(dataset, self.device)
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


def match_generator(state: GANState, dataset, objective: Callable[[GeneratorBatch], dict], *,
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
    ``objective(GeneratorBatch) -> {"loss": tensor, <term>: tensor, ...}``; every term is logged in
    ``history`` (``match_<term>``), with ``w_gan = gan_weight * g_loss``, the weighted GAN term.
    ``iterations``: total generator updates (:func:`stage2_schedule`; 0 = full passes). Runs on the
    generator's device (``dataset`` is moved there; ``pool`` must live there)."""
    gan_loss = gan_loss or state.meta["gan_loss"]
    check_gan_loss(gan_loss)
    _check_gan_schedule(step_order, d_labels)
    check_same_device(state.G.device, "match_generator", pool=pool)
    dataset = on_device(dataset, state.G.device)
    if gan_weight < 0:
        raise ValueError(f"gan_weight must be >= 0, got {gan_weight}")
    check_betas("match_betas", betas)
    aug = as_dsa(match_aug)
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
            pool.warm(dataset, pool_train_steps, g)
            xr, y = real.next()
            rec = {"stage": 2, "epoch": ep, "model": pool.current_name}
            if gan_weight > 0 and step_order == "d_first":
                rec.update(_gan_step(st, xr, y, gan_loss, gp_lambda, aux_weight, g, d_labels, fake_aux))
            xf_t = G(G.noise(len(y), g), y)
            xf = G.to_normalized(xf_t)
            xr_m, xf_m = (xr, xf) if aug is None else siamese_augment(aug, xr, xf, g)
            terms = objective(pool.batch(xr_m, y, xf_m, y, it, ep))
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


def _fingerprint_value(v, depth: int):
    """A JSON-able description of one value an objective uses (see :func:`objective_fingerprint`)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_fingerprint_value(x, depth) for x in v]
    if isinstance(v, dict):
        return {str(k): _fingerprint_value(x, depth) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, types.ModuleType):
        return f"module {v.__name__}"
    if inspect.isfunction(v):
        return objective_fingerprint(v, depth - 1) if depth > 0 else f"function {v.__module__}.{v.__qualname__}"
    if hasattr(v, "cache_identity"):
        return {"class": type(v).__qualname__, "identity": _fingerprint_value(v.cache_identity(), depth)}
    if isinstance(v, torch.Tensor):
        return {"tensor": list(v.shape), "sha1": hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()}
    if inspect.isclass(v) or callable(v):
        return f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', type(v).__qualname__)}"
    return f"{type(v).__qualname__} {v!r}"


def _source_of(fn) -> str:
    """The function's source text; without one (e.g. ``exec`` of a string), its code object's
    instructions, constants and names (never its file name or line numbers)."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        def code(c):
            return [c.co_code.hex(), [code(k) if isinstance(k, types.CodeType) else repr(k) for k in c.co_consts],
                    list(c.co_names)]
        return json.dumps(code(fn.__code__))


def objective_fingerprint(objective: Callable, depth: int = 2) -> dict:
    """What determines a stage-2 objective's value: its source (``inspect.getsource``, or its code
    object), the values it closes over (numbers, strings, lists; functions recursively, to
    ``depth`` levels; objects through their ``cache_identity()``) and the functions it calls by
    global name (their source, recursively). Editing the objective's code, a weight it closes over
    or a loss it calls changes the fingerprint; the cell it was defined in and its line do not."""
    if not inspect.isfunction(objective):
        if hasattr(objective, "cache_identity"):
            return {"class": type(objective).__qualname__,
                    "identity": _fingerprint_value(objective.cache_identity(), depth)}
        raise TypeError(f"the stage-2 objective must be a Python function (or define cache_identity()), "
                        f"got {type(objective).__name__}")
    code = objective.__code__
    cells = dict(zip(code.co_freevars, (c.cell_contents for c in objective.__closure__ or ())))
    found = {n: objective.__globals__[n] for n in sorted(_global_names(code)) if n in objective.__globals__}
    return {"source": _source_of(objective),
            "closure": {k: _fingerprint_value(v, depth) for k, v in sorted(cells.items())},
            "globals": {k: _fingerprint_value(v, depth) for k, v in found.items()}}


def _global_names(code: types.CodeType) -> set:
    """Names the code (and the functions nested in it) loads as globals; attribute names are not."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


#: stage-2 arguments that only change what is displayed, never the trained generator.
DISPLAY_ONLY = ("progress", "desc")


def stage2_key(state: GANState, objective: Callable, settings: dict) -> str:
    """Cache key of a stage-2 run: the stage-1 checkpoint it starts from, the objective's
    :func:`objective_fingerprint` and every setting (:data:`DISPLAY_ONLY` ones left out)."""
    blob = json.dumps(plain({"objective": objective_fingerprint(objective),
                             **{k: v for k, v in settings.items() if k not in DISPLAY_ONLY}}), sort_keys=True)
    return f"{Path(state.meta['cache']).stem}__s2_{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def stage2(state: GANState, dataset, objective, *, cache_dir=None, use_cache: bool = True, device=None,
           pool_models=DEFAULT_POOL, mid_layer=None, pool_batch_size: int = 256, pool_lr: float = 0.01,
           pool_dsa=None, **match_kw) -> GANState:
    """:func:`match_generator` with a model pool built from ``pool_models`` and, when the stage-1
    state came from the cache and ``use_cache``, a cache next to stage 1's
    (``<stage-1 key>__s2_<hash>.pt``, :func:`stage2_key`): the same objective code with the same
    settings is trained once (e.g. the DiM baseline shared by notebooks 01 and 02); an edited
    objective is a cache miss."""
    device = resolve_device(device)
    check_same_device(device, "stage2", generator=state.G)
    pool = GANModelPool(pool_models, dataset.channels, dataset.num_classes, dataset.im_size,
                        device=device, mid_layer=mid_layer, batch_size=pool_batch_size, lr=pool_lr,
                        dsa=pool_dsa)
    settings = {"pool": pool.names, "mid_layer": mid_layer, "pool_batch_size": pool_batch_size, "pool_lr": pool_lr,
                "pool_dsa": pool.dsa.strategy if pool.dsa else "", **match_kw}
    path = None
    if use_cache and state.meta.get("cache"):
        path = Path(cache_dir or Path(state.meta["cache"]).parent) / f"{stage2_key(state, objective, settings)}.pt"
        if path.is_file():
            st = load_checkpoint(path, dataset, device)
            st.meta["cache"], st.meta["cache_hit"] = str(path), True
            return st
    st = match_generator(state, dataset, objective, pool=pool, **match_kw)
    name = getattr(objective, "__qualname__", type(objective).__qualname__)
    st.params = {**state.params, "stage2": plain({"objective": name, **settings})}
    st.meta["cache"], st.meta["cache_hit"] = (str(path) if path else None), False
    if path is not None:
        save_checkpoint(st, path)
    return st
