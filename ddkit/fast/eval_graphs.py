"""The evaluation protocol's N networks trained together, one CUDA graph per epoch.

On a GPU the protocol's networks are tiny (ConvNet-3 on 100 images at IPC 10): a training step is
a few hundred small kernels, so the time goes to launching them and to host synchronisation, not
to arithmetic. :class:`EpochProgram` therefore writes one epoch of all N networks as device-only
tensor code, with nothing read back to the host:

1. every network's sample order: ``argsort`` of uniform keys (a uniform random permutation);
2. per batch, DSA with one family per network and call and per-sample values (the reference
   ``DiffAugment`` of ``evaluate_synset``), computed for every family of the strategy and selected
   per sample (:meth:`ddkit.augment.DSA.apply_on_device`: no data-dependent branching);
3. the N networks' forwards over their stacked parameters (one after the other, which inside a
   graph costs no launches; or, with ``vectorize=True``, one ``torch.func.vmap``: a grouped
   convolution), the mean (soft) cross-entropy of each network
   summed over networks (each network's gradient is its own);
4. SGD with momentum and weight decay written out as PyTorch's ``torch.optim.SGD`` computes it,
   with the learning rate held in a device tensor so the schedule changes no captured code.

On CUDA the epoch is captured once in a :class:`torch.cuda.CUDAGraph` and replayed ``epochs``
times; on the CPU the same method runs eagerly (what the tests check). Random draws come from
torch's default generator of the device, seeded by the caller: the same seed gives the same
accuracies on the same device (with ``torch.use_deterministic_algorithms``), and the draws differ
from the one-by-one loop's per-network generators, so the two agree in distribution, not bitwise.
Initial weights are the caller's modules (the protocol's seed rule).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..augment import DSA

#: Module types whose train and eval forwards differ or that keep state vmap cannot update.
_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def can_capture(models: Sequence[nn.Module]) -> bool:
    """True when :class:`EpochProgram` applies: >= 1 network, one architecture, no buffers, no
    BatchNorm and no dropout (the same forward in training and testing)."""
    if not models or any(True for _ in models[0].buffers()):
        return False
    if any(isinstance(m, _STATEFUL) for m in models[0].modules()):
        return False
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
    return all(type(m) is type(models[0]) and s == shapes[0] for m, s in zip(models, shapes))


class EpochProgram:
    """One training epoch of N networks (module docstring), eager or captured.

    ``models``: the N networks with their initial weights (left untouched until
    :meth:`write_back`); ``x``, ``y``: the synthetic set on the compute device (hard (M,) or soft
    (M, K) labels). ``schedule``: "standard" (lr x0.1 and momentum reset from epoch
    ``epochs // 2 + 1``), "multistep" (x0.2 at 2/3 and 5/6) or "none", as
    :func:`ddkit.train.schedule_epoch`."""

    def __init__(self, models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *, lr: float,
                 batch_size: int, dsa: DSA | None = None, momentum: float = 0.9, weight_decay: float = 5e-4,
                 vectorize: bool = False):
        if not can_capture(models):
            raise ValueError("EpochProgram needs networks of one architecture without buffers, BatchNorm or "
                             "dropout; train them with ddkit.train.train_classifier")
        self.x, self.y = x, y
        self.batch_size, self.momentum, self.weight_decay = batch_size, momentum, weight_decay
        self.dsa = None if dsa is None or dsa.is_identity else dsa
        self.num_models = len(models)
        stacked, _ = stack_module_state([m.to(x.device) for m in models])
        self.names = list(stacked)
        self.params = [stacked[k].detach().clone().requires_grad_(True) for k in self.names]
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.tensor(float(lr), device=x.device)
        self._base = copy.deepcopy(models[0]).to("meta")
        self.vectorize = vectorize
        self._graph = None

    # ------------------------------------------------------------------ one epoch, device only
    def _forward(self, xb: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """(N, B, K) logits of network ``i`` on ``xb[i]`` (or on ``xb`` itself when ``shared``)."""
        params = dict(zip(self.names, self.params))
        call = lambda p, x: functional_call(self._base, p, (x,))  # noqa: E731
        if self.vectorize:
            return vmap(call, in_dims=(0, None if shared else 0))(params, xb)
        return torch.stack([call({k: v[i] for k, v in params.items()}, xb if shared else xb[i])
                            for i in range(self.num_models)])

    def _batches(self):
        n, bs = len(self.x), self.batch_size
        keys = torch.rand(self.num_models, n, device=self.x.device)
        order = keys.argsort(dim=1)
        return [order[:, b:b + bs] for b in range(0, n, bs)]

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        """DSA of a (N, B, C, H, W) batch: one family per network, per-sample values."""
        n_net, b = xb.shape[:2]
        flat = xb.flatten(0, 1)
        params = self.dsa.sample(n_net * b, device=xb.device)
        if not self.dsa.per_sample_op:
            family = torch.randint(0, len(self.dsa.ops), (n_net, 1), device=xb.device)
            params.op = family.expand(n_net, b).reshape(-1)
        return self.dsa.apply_on_device(flat, params).view_as(xb)

    def _loss(self, logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Sum over networks of each network's mean (soft) cross-entropy; ``logits`` (N, B, K)."""
        logp = F.log_softmax(logits.float(), dim=-1)
        if yb.dim() == 2:                                     # hard labels (N, B)
            return -logp.gather(-1, yb.unsqueeze(-1)).squeeze(-1).mean(1).sum()
        return -(yb * logp).sum(-1).mean(1).sum()

    def _sgd(self, grads) -> None:
        """``torch.optim.SGD(momentum, weight_decay)``: d = g + wd p; buf = m buf + d; p -= lr buf."""
        with torch.no_grad():
            d = torch._foreach_add(list(grads), self.params, alpha=self.weight_decay)
            torch._foreach_mul_(self.buffers, self.momentum)
            torch._foreach_add_(self.buffers, d)
            step = torch._foreach_mul(self.buffers, self.lr)
            torch._foreach_sub_(self.params, step)

    def run_epoch(self) -> None:
        """One epoch of every network, eagerly."""
        for idx in self._batches():
            xb, yb = self.x[idx], self.y[idx]
            if self.dsa is not None:
                with torch.no_grad():
                    xb = self._augment(xb)
            loss = self._loss(self._forward(xb), yb)
            self._sgd(torch.autograd.grad(loss, self.params))

    # ------------------------------------------------------------------ capture and replay
    def _state(self) -> list:
        return [t.detach().clone() for t in self.params + self.buffers]

    def _restore(self, saved: list) -> None:
        with torch.no_grad():
            for t, s in zip(self.params + self.buffers, saved):
                t.copy_(s)

    def capture(self, warmup: int = 3) -> None:
        """Record :meth:`run_epoch` in a CUDA graph. ``warmup`` eager epochs on a side stream come
        first (autograd and cuDNN set-up, as CUDA graphs require); their effect on the weights,
        momentum buffers and the generator is undone before recording."""
        dev = self.x.device
        saved, rng = self._state(), torch.cuda.get_rng_state(dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.run_epoch()
        torch.cuda.current_stream(dev).wait_stream(side)
        self._restore(saved)
        torch.cuda.set_rng_state(rng, dev)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self.run_epoch()

    def epoch(self) -> None:
        """One epoch: a graph replay when captured, else :meth:`run_epoch`."""
        if self._graph is not None:
            self._graph.replay()
        else:
            self.run_epoch()

    def set_lr(self, lr: float, reset_momentum: bool = False) -> None:
        """A new learning rate (and, as a fresh optimizer would, zero momentum) between epochs."""
        with torch.no_grad():
            self.lr.fill_(lr)
            if reset_momentum:
                torch._foreach_zero_(self.buffers)

    # ------------------------------------------------------------------ reading the networks
    @torch.no_grad()
    def accuracies(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> list:
        """Top-1 test accuracy (percent) of every network, one host read for all."""
        correct = torch.zeros(self.num_models, dtype=torch.long, device=x.device)
        for i in range(0, len(x), batch_size):
            logits = self._forward(x[i:i + batch_size], shared=True)
            correct += (logits.argmax(-1) == y[i:i + batch_size]).sum(1)
        return [100.0 * c / len(x) for c in correct.tolist()]

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each network's trained weights into its module."""
        for i, m in enumerate(models):
            named = dict(m.named_parameters())
            for k, p in zip(self.names, self.params):
                named[k].copy_(p[i])


def train_and_test(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                   batch_size: int, dsa: DSA | None, schedule: str, seed: int, test: tuple,
                   checkpoints: Sequence[int] = (), val: tuple | None = None, capture: bool | None = None,
                   momentum: float = 0.9, weight_decay: float = 5e-4, vectorize: bool = False) -> tuple:
    """Train ``models`` together for ``epochs`` (:class:`EpochProgram`; captured on CUDA unless
    ``capture`` is False) and test them.

    The draws come from the device's default generator seeded ``seed`` inside a forked RNG state
    (the caller's generators are untouched). Unless deterministic algorithms were asked for, cuDNN
    benchmarks its convolution algorithms for the captured shapes. Returns ``(accs, points)``: each network's test
    accuracy after the last epoch, and per network the checkpoint records ``{"epoch", "test"[,
    "val"]}`` after each epoch in ``checkpoints``."""
    dev = x.device
    capture = dev.type == "cuda" if capture is None else capture
    cudnn = torch.backends.cudnn
    fastest = not (torch.are_deterministic_algorithms_enabled() or cudnn.deterministic)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark or fastest, deterministic=cudnn.deterministic,
            allow_tf32=cudnn.allow_tf32):
        torch.manual_seed(seed)
        program = EpochProgram(models, x, y, lr=lr, batch_size=batch_size, dsa=dsa, momentum=momentum,
                               weight_decay=weight_decay, vectorize=vectorize)
        if capture:
            program.capture()
        points = [[] for _ in models]
        for ep in range(epochs):
            _apply_schedule(program, ep, epochs, schedule, lr)
            program.epoch()
            if ep + 1 in checkpoints:
                tests = program.accuracies(*test)
                vals = program.accuracies(*val) if val is not None else None
                for i in range(len(models)):
                    points[i].append({"epoch": ep + 1, "test": tests[i]} | ({"val": vals[i]} if vals else {}))
        accs = [p[-1]["test"] for p in points] if checkpoints else program.accuracies(*test)
        program.write_back(models)
    return accs, points


def _apply_schedule(program: EpochProgram, ep: int, epochs: int, schedule: str, lr: float) -> None:
    """The learning rate of epoch ``ep`` (0-based), as :func:`ddkit.train.schedule_epoch` sets it."""
    if schedule == "standard" and ep == epochs // 2 + 1:
        program.set_lr(lr * 0.1, reset_momentum=True)
    elif schedule == "multistep":
        steps = {int(epochs * 2 / 3), int(epochs * 5 / 6)}
        if ep in steps:
            program.set_lr(lr * 0.2 ** sum(t <= ep for t in steps))
