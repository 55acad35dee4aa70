"""Whole-iteration CUDA graphs: the pieces that let one distillation iteration run without the host.

The networks of dataset distillation are small: on a GPU an iteration of DM is bound by kernel
launches and host synchronisation, not by arithmetic. Capturing the whole iteration (network
re-initialisation, real-batch draw, DSA, both forwards, the backward to the images and the image
update) as one ``torch.cuda.CUDAGraph`` replaces hundreds of launches by one replay.

A graph replays fixed kernels on fixed tensors, so everything the iteration draws must be drawn by
device kernels from one ``torch.Generator`` on the device, never on the host:

- :func:`reinit_on_device_`: the network's parameters re-drawn in place (``uniform_`` with each
  layer's default bound), instead of :func:`ddkit.models.reinit_`, which seeds through the host;
- :func:`class_table` + :func:`sample_class_batches`: ``n`` indices per class without replacement
  (uniform keys, ``topk`` per class) from a padded (classes, max count) index table on the device;
- DSA parameters: :meth:`ddkit.augment.DSA.sample` with the device generator, applied by
  :meth:`ddkit.augment.DSA.apply_on_device` (no host-side branch on the drawn families).

:func:`capture` records a step as a graph with the generator registered
(``CUDAGraph.register_generator_state``): each replay advances the generator's Philox offset as the
same calls run eagerly would, so ``generator.get_state()`` after ``n`` replays is the state after
``n`` eager steps (checkpoints save it; ``set_state`` before a replay resumes from it).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

#: Module types :func:`reinit_on_device_` knows the default initialisation of (parameter-free
#: modules such as ReLU or pooling need none).
UNIFORM_INIT = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONSTANT_INIT = (nn.GroupNorm, nn.LayerNorm)

#: Eager calls of the step before capture (on a side stream, as ``torch.cuda.graphs`` asks: they
#: initialise cuDNN / cuBLAS handles and autograd's buffers); their effects are undone.
WARMUP = 3


def reinit_unsupported(net: nn.Module) -> str | None:
    """Why :func:`reinit_on_device_` cannot re-draw ``net`` (a module with parameters whose default
    init it does not know), or None."""
    for name, m in net.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not isinstance(m, UNIFORM_INIT + CONSTANT_INIT):
            return (f"module {name or '(root)'!r} ({type(m).__name__}) has parameters and is not one of "
                    f"{[t.__name__ for t in UNIFORM_INIT + CONSTANT_INIT]}")
    return None


@torch.no_grad()
def reinit_on_device_(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw ``net``'s parameters in place from ``generator`` (on the parameters' device), with the
    distribution of PyTorch's default ``reset_parameters``: convolution and linear weights and biases
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_(a=sqrt(5))``), normalisation affine
    weights 1 and biases 0. Device kernels only (no host sync), so a CUDA graph can capture it. Same
    distribution as :func:`ddkit.models.reinit_`, not the same numbers. Returns ``net``."""
    reason = reinit_unsupported(net)
    if reason:
        raise ValueError(f"reinit_on_device_: {reason}")
    for m in net.modules():
        if isinstance(m, UNIFORM_INIT):
            fan_in = m.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            m.weight.uniform_(-bound, bound, generator=generator)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, CONSTANT_INIT):
            for p, value in ((getattr(m, "weight", None), 1.0), (getattr(m, "bias", None), 0.0)):
                if p is not None:
                    p.fill_(value)
    return net


def class_table(class_indices: Sequence[torch.Tensor], device=None) -> tuple:
    """``(table, valid)``: the per-class index lists as one (classes, max count) long tensor (padded
    with 0) and the bool mask of its real entries, on ``device``."""
    width = max(len(i) for i in class_indices)
    table = torch.zeros(len(class_indices), width, dtype=torch.long)
    valid = torch.zeros(len(class_indices), width, dtype=torch.bool)
    for c, idx in enumerate(class_indices):
        table[c, :len(idx)] = idx.cpu()
        valid[c, :len(idx)] = True
    return table.to(device), valid.to(device)


def sample_class_batches(table: torch.Tensor, valid: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct indices of every class (class-major, (classes * n,)), drawn on the device: each
    entry gets a uniform key (padding gets 2, above every key), the ``n`` smallest keys of a row are a
    uniform sample without replacement of that class. Needs ``n <= `` every class's count."""
    check_class_batch(valid, n)
    return draw_class_batches(table, valid, n, generator)


def check_class_batch(valid: torch.Tensor, n: int) -> None:
    """``ValueError`` unless every class of the table has at least ``n`` indices (reads the counts on the
    host: call it before capture, not inside the captured step)."""
    smallest = int(valid.sum(1).min())
    if n > smallest:
        raise ValueError(f"n={n} exceeds the smallest class ({smallest} indices): "
                         "a draw without replacement needs n <= every class's count")


def draw_class_batches(table: torch.Tensor, valid: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """:func:`sample_class_batches` without its check (no host sync: the form a captured step calls)."""
    keys = torch.rand(table.shape, generator=generator, device=table.device).masked_fill_(~valid, 2.0)
    return table.gather(1, keys.topk(n, dim=1, largest=False).indices).reshape(-1)


def capture(step: Callable[[], None], generator: torch.Generator, state: Sequence[torch.Tensor],
            warmup: int = WARMUP) -> "torch.cuda.CUDAGraph":
    """Record ``step()`` (reading and writing only tensors that outlive it) as a CUDA graph whose
    random calls draw from ``generator`` (registered with the graph). The warm-up calls run for real:
    ``state`` (e.g. the images and their momentum buffer) and the generator are restored after them,
    so the first ``replay()`` is the first iteration."""
    saved = [t.detach().clone() for t in state]
    rng = generator.get_state()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        step()
    with torch.no_grad():
        for t, v in zip(state, saved):
            t.copy_(v)
    generator.set_state(rng)
    return graph
