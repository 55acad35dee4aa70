"""Data-parallel runs under ``torchrun``: classes sharded over ranks, networks spread over ranks.

Users write no distributed code: ``ddkit run --nproc N <notebook | script>`` (``ddkit.cli``) starts
``torchrun --standalone --nproc_per_node N``; inside, :func:`current` initialises ``torch.distributed``
from torchrun's environment on first use (``WORLD_SIZE`` > 1), and ``ddkit.methods.distill.distill`` /
``ddkit.evaluate.evaluate_synset`` split their work:

- ``distill``: every rank draws the same network, real batch indices and DSA parameters from the
  same seeds (so all ranks follow the one-process run's random stream), and evaluates the objective
  on its own block of classes (:class:`ClassShard`). The DM-family objectives are sums of per-class
  terms whose gradient reaches only that class's synthetic rows, so no gradient traffic is needed;
  after each iteration every rank broadcasts its rows (:meth:`ClassShard.sync`), so every rank holds
  the whole current set (hooks and checkpoints see it), and the logged terms are summed over ranks
  (:meth:`ClassShard.reduce_terms`: the reduction the logged objective needs). An objective with a
  term that couples classes (``objective.couples_classes = True``) is evaluated whole on every rank
  (exact, no speed-up).
- ``evaluate_synset``: network ``i`` runs on rank ``i % world_size`` (:func:`my_items`); the
  accuracies are gathered in network order (:func:`gather_in_order`).

Backends: gloo for CPU tensors; with CUDA, ``"cpu:gloo,cuda:nccl"`` (NCCL for the GPU tensors) and
each process's current CUDA device is ``LOCAL_RANK``. A rank that raises ends the run: torchrun
stops the other ranks and exits non-zero with that rank's error. The group is destroyed when the
process exits (``atexit``), so a finished rank exits cleanly.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place in the run (``rank`` 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Group:
    """The run's process group, initialised from torchrun's environment the first time it is asked
    for (module docstring); ``Group(0, 1)`` in a plain process."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    prefix = os.environ.get("DDKIT_DIST_PREFIX")
    if prefix and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # one process group per notebook run (ddkit.batch.launch): each run's kernel joins torchrun's store
        # under its own prefix, so a later run does not meet the keys an earlier kernel left there
        store = dist.PrefixStore(prefix, dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                                       world, False))
        dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]), world_size=world)
    else:
        dist.init_process_group(backend)
    _watch_uncaught()
    atexit.register(_close)
    return Group(dist.get_rank(), dist.get_world_size())


_STATE = {"failed": False}


def _watch_uncaught() -> None:
    """Note an uncaught exception (then chain to the previous hook), so :func:`_close` leaves a failing
    rank's group alone: destroying it would wake the other ranks' pending collectives first, and
    torchrun would report their connection error instead of this rank's."""
    previous = sys.excepthook

    def hook(*exc):
        _STATE["failed"] = True
        previous(*exc)

    sys.excepthook = hook


def _close() -> None:
    """Destroy the process group when a rank exits normally: a process that leaves gloo's threads running
    dies at exit with ``terminate called without an active exception`` (SIGABRT), failing a finished run.
    A rank ending in an uncaught exception keeps it (see :func:`_watch_uncaught`)."""
    if dist.is_initialized() and not _STATE["failed"]:
        dist.destroy_process_group()


def class_block(num_classes: int, group: Group) -> range:
    """Rank ``r``'s contiguous block of classes: ``[r K / W, (r + 1) K / W)`` (sizes differ by at most 1)."""
    if group.world_size > num_classes:
        raise ValueError(f"world_size={group.world_size} exceeds the {num_classes} classes: each rank needs at "
                         f"least one class; use at most {num_classes} processes")
    return range(group.rank * num_classes // group.world_size, (group.rank + 1) * num_classes // group.world_size)


class ClassShard:
    """Which classes (and stored synthetic rows, class-major, ``ipc`` per class) this rank optimises.

    ``replicate=True`` (an objective that couples classes) or one process: every class, and
    :meth:`sync` / :meth:`reduce_terms` do nothing."""

    def __init__(self, num_classes: int, ipc: int, group: Group | None = None, replicate: bool = False):
        self.group = group or current()
        self.active = self.group.world_size > 1 and not replicate
        solo = Group()
        self.blocks = [class_block(num_classes, Group(r, self.group.world_size))
                       for r in range(self.group.world_size)] if self.active else [class_block(num_classes, solo)]
        self.classes = self.blocks[self.group.rank] if self.active else self.blocks[0]
        self.ipc = ipc

    @property
    def keep(self):
        """Classes whose real images this rank gathers (None: all)."""
        return self.classes if self.active else None

    def rows(self, block: range | None = None) -> slice:
        block = self.classes if block is None else block
        return slice(block.start * self.ipc, block.stop * self.ipc)

    def sync(self, t: torch.Tensor) -> None:
        """Every rank's rows of ``t`` (images or their momentum buffer) broadcast from their owner."""
        if not self.active:
            return
        with torch.no_grad():
            for owner, block in enumerate(self.blocks):
                part = t[self.rows(block)].contiguous()
                dist.broadcast(part, src=owner)
                t[self.rows(block)] = part

    def reduce_terms(self, terms: dict) -> dict:
        """Logged terms summed over ranks (each rank's terms are sums over its own classes)."""
        if not self.active:
            return terms
        names = list(terms)
        ref = next((v for v in terms.values() if torch.is_tensor(v)), None)
        dev = ref.device if ref is not None else torch.device("cpu")
        vals = torch.stack([torch.as_tensor(terms[n], dtype=torch.float64, device=dev).detach().reshape(())
                            for n in names])
        dist.all_reduce(vals)
        return dict(zip(names, vals.unbind()))


def my_items(n: int, group: Group | None = None) -> list:
    """Items ``i`` of ``range(n)`` this rank runs: ``i % world_size == rank``."""
    group = group or current()
    return list(range(group.rank, n, group.world_size))


def gather_in_order(n: int, mine: dict, group: Group | None = None) -> list:
    """``[value of item 0, ..., item n - 1]`` from every rank's ``mine`` (``{item: picklable value}``)."""
    group = group or current()
    if group.world_size == 1:
        return [mine[i] for i in range(n)]
    parts = [None] * group.world_size
    dist.all_gather_object(parts, mine)
    merged = {i: v for part in parts for i, v in part.items()}
    return [merged[i] for i in range(n)]
