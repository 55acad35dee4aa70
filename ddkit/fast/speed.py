"""Speed levers: torch.compile caches, channels-last views, FLOP estimates, the
``compile="auto"`` decision and mixed precision. :mod:`ddkit.models` keeps the networks.

Process-wide settings, all of them (nothing else in ddkit touches torch's or the process's global
configuration):

* on ``import ddkit``: glibc keeps freed memory (``ddkit.core.utils.keep_freed_memory``, documented there
  and in bench/README.md; ``DDKIT_KEEP_FREED_MEMORY=0`` opts out; ``ddkit.MALLOC_TUNED`` says
  whether it applied). Torch's settings (threads, dynamo, autocast, ...) are left alone on import.
* the first time a module is compiled (``compile=True`` or an "auto" that decides to compile):
  :func:`allow_recompiles` raises ``torch._dynamo.config.recompile_limit`` to
  :data:`RECOMPILE_LIMIT` (the zoo's ``forward`` / ``embed`` / ``feature_maps`` code objects are
  shared by every instance, shape, grad mode and train/eval state, more than dynamo's default of 8).
"""
from __future__ import annotations

import contextlib
import shutil
import weakref
from typing import Callable

import torch
import torch.nn as nn

__all__ = [
    "COMPILE_AUTO_SECONDS", "EAGER_FLOPS_ESTIMATE", "RECOMPILE_LIMIT", "AMP_MODES",
    "compile_available", "resolve_compile", "resolve_channels_last", "forward_flops", "compiled", "allow_recompiles",
    "FastView", "fast_view", "check_amp", "autocast", "grad_scaler",
]

#: Expected eager seconds above which ``compile="auto"`` compiles: a cold compile costs tens of seconds
#: and saves a fraction of the eager time, so it pays only for long runs (the measurements behind the
#: threshold: bench/README.md); the notebooks' tiny CI configurations stay eager.
COMPILE_AUTO_SECONDS = 180.0
#: Rough eager throughput used by :func:`resolve_compile` to estimate a workload's seconds (FLOP/s).
EAGER_FLOPS_ESTIMATE = 80e9
#: dynamo's per-code-object graph limit once ddkit compiles (see the module docstring).
RECOMPILE_LIMIT = 64

# per-module caches outside the module (state_dict, deepcopy and pickling stay untouched)
_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_FLOPS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_VIEWS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
#: labels whose "auto" decision was already printed in this process (one line per run and label)
_ANNOUNCED: set = set()


# --------------------------------------------------------------------------- torch.compile

def compile_available() -> bool:
    """True when ``torch.compile`` can generate code here (CUDA, or a C++ compiler for CPU)."""
    if not hasattr(torch, "compile"):
        return False
    return torch.cuda.is_available() or any(shutil.which(c) for c in ("g++", "c++", "clang++"))


def resolve_compile(compile, work_flops: float | None = None, label: str | None = None) -> bool:
    """``compile``: True / False / "auto". "auto" compiles only when the expected eager work
    (``work_flops`` / :data:`EAGER_FLOPS_ESTIMATE` seconds) exceeds :data:`COMPILE_AUTO_SECONDS`
    and a compiler is available. With a ``label`` the "auto" decision, its estimate and the
    threshold are printed once per process and label (e.g. ``"distill"``, ``"evaluate"``)."""
    if compile in (False, None, "off", "none", "false"):
        return False
    if compile in (True, "on", "true"):
        return True
    if compile != "auto":
        raise ValueError(f"compile={compile!r}; expected True, False or 'auto'")
    seconds = None if work_flops is None else work_flops / EAGER_FLOPS_ESTIMATE
    decision = seconds is not None and seconds > COMPILE_AUTO_SECONDS and compile_available()
    if label is not None and label not in _ANNOUNCED:
        _ANNOUNCED.add(label)
        estimate = "unknown" if seconds is None else f"~{seconds:.0f} s"
        print(f"ddkit {label}: compile='auto' -> {'compiled' if decision else 'eager'} (expected eager work "
              f"{estimate}; compiles above {COMPILE_AUTO_SECONDS:.0f} s at {EAGER_FLOPS_ESTIMATE / 1e9:.0f} "
              f"GFLOP/s{'' if compile_available() else '; no compiler here'})", flush=True)
    return decision


def resolve_channels_last(channels_last, compiled: bool) -> bool:
    """``channels_last``: True / False / "auto". "auto" follows the compile decision: channels-last inputs
    pay with compiled graphs (bench/README.md), so the fast path a long run takes has both, and eager runs
    stay NCHW."""
    if channels_last == "auto":
        return bool(compiled)
    if isinstance(channels_last, bool):
        return channels_last
    raise ValueError(f"channels_last={channels_last!r}; expected True, False or 'auto'")


def forward_flops(model: nn.Module, input_shape) -> float:
    """FLOPs of one forward pass of ``model`` on one input of ``input_shape`` (C, H, W), counted
    by ``torch.utils.flop_counter`` (matmuls and convolutions; cached per module and shape)."""
    from torch.utils.flop_counter import FlopCounterMode

    cache = _FLOPS.setdefault(model, {})
    key = tuple(int(s) for s in input_shape)
    if key not in cache:
        p = next(iter(model.parameters()), None)
        x = torch.zeros((1,) + key, device=p.device if p is not None else "cpu")
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        cache[key] = float(counter.get_total_flops())
    return cache[key]


def allow_recompiles() -> None:
    """Raise dynamo's recompile limit to :data:`RECOMPILE_LIMIT` (never lowers it). The one
    process-wide setting ddkit changes, and only once something is compiled."""
    cfg = torch._dynamo.config
    if getattr(cfg, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        cfg.recompile_limit = RECOMPILE_LIMIT


def compiled(model: nn.Module, method: str = "forward", dynamic: bool | None = False, **compile_kw) -> Callable:
    """``torch.compile(model.<method>)``, built once per module and method and cached outside the
    module (``state_dict`` and ``modules()`` are unchanged). The compiled callable reads the
    module's parameters at call time, so re-initialising them in place (``reinit_``,
    ``load_state_dict``) reuses the graph. ``dynamic=False`` (default): one static graph per input
    shape (recompiled per new batch shape, grad mode, train/eval)."""
    cache = _COMPILED.setdefault(model, {})
    key = (method, dynamic, tuple(sorted(compile_kw.items())))
    fn = cache.get(key)
    if fn is None:
        allow_recompiles()
        target = model if method == "forward" else getattr(model, method)
        fn = torch.compile(target, dynamic=dynamic, **compile_kw)
        cache[key] = fn
    return fn


# --------------------------------------------------------------------------- views

def _to_cl(x):
    return x.contiguous(memory_format=torch.channels_last) if torch.is_tensor(x) and x.dim() == 4 else x


class FastView:
    """A zoo model with faster ``__call__`` / ``embed`` / ``feature_maps`` (speed flags): compiled
    once per module (``compile=True``) and/or inputs in channels-last layout (``channels_last``).
    Every other attribute (``classifier``, ``modules()``, ``mid_layer``, ``train()``...) is the
    model's own. Outputs equal the plain module's up to floating-point reassociation."""

    def __init__(self, model: nn.Module, compile: bool = False, channels_last: bool = False):
        self.__dict__["module"] = model
        self.__dict__["_flags"] = (bool(compile), bool(channels_last))

    def __getattr__(self, name):
        return getattr(self.__dict__["module"], name)

    def _fn(self, method):
        model = self.__dict__["module"]
        comp, cl = self.__dict__["_flags"]
        fn = compiled(model, method) if comp else (model if method == "forward" else getattr(model, method))
        if not cl:
            return fn
        return lambda x, *a, **k: fn(_to_cl(x), *a, **k)

    def __call__(self, x, *a, **k):
        return self._fn("forward")(x, *a, **k)

    def embed(self, x):
        return self._fn("embed")(x)

    def feature_maps(self, x):
        return self._fn("feature_maps")(x)

    def __repr__(self):
        comp, cl = self.__dict__["_flags"]
        return f"FastView(compile={comp}, channels_last={cl}, {self.__dict__['module'].__class__.__name__})"


def fast_view(model: nn.Module, compile: bool = False, channels_last: bool = False):
    """``model`` itself when no flag is on, else a (cached) :class:`FastView` of it."""
    if not compile and not channels_last:
        return model
    cache = _VIEWS.setdefault(model, {})
    key = (bool(compile), bool(channels_last))
    if key not in cache:
        cache[key] = FastView(model, compile, channels_last)
    return cache[key]


# --------------------------------------------------------------------------- mixed precision

#: ``amp`` values: the autocast dtype of each ("off" = full float32, the exact previous path).
AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp) -> str:
    """``amp`` itself when it is one of :data:`AMP_MODES`, else a ``ValueError`` naming it."""
    if not isinstance(amp, str) or amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}; expected one of {list(AMP_MODES)}")
    return amp


def autocast(amp: str, device, cache: bool = True):
    """``torch.autocast`` on ``device``'s type (CPU or CUDA) with the dtype of ``amp``; a no-op
    context for ``"off"`` (the float32 path, bit for bit). ``cache=False`` turns off autocast's cache
    of cast weights (needed inside a captured CUDA graph)."""
    dtype = AMP_MODES[check_amp(amp)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype, cache_enabled=cache)


def grad_scaler(amp: str, device) -> "torch.amp.GradScaler":
    """A loss scaler: enabled for ``"fp16"`` only (float16 gradients underflow without it; bfloat16
    has float32's exponent range). Disabled, ``scale(loss)`` is ``loss`` and ``step(opt)`` is
    ``opt.step()``."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=check_amp(amp) == "fp16")
