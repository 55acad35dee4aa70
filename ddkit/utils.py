"""Small shared helpers: devices, seeds, atomic files, safe checkpoint loading."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it (``mallopt``:
    ``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` = 2 GiB); returns whether it was applied.

    PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above 32 MiB with a
    fresh ``mmap`` and unmaps it on ``free``, so each large activation (a ConvNet-3 forward of
    640 images has several of 335 MB) is page-faulted in again on every call: on the 2-core
    machines here ~470k minor faults and 1.4 s of kernel time per DM iteration at batch_real 64,
    half the iteration (bench/README.md). Kept memory is reused by the next iteration, at the
    price of a process that does not shrink back. Called once on ``import ddkit``; set
    ``DDKIT_KEEP_FREED_MEMORY=0`` to leave malloc alone (no effect off glibc)."""
    if os.environ.get("DDKIT_KEEP_FREED_MEMORY", "1") == "0" or platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None/'') picks CUDA when present, else CPU; other strings are checked."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}' or 'auto'")
    return dev


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed` on `device` (all ddkit randomness flows through these)."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global RNGs (for code that does not take a generator)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def current_umask() -> int:
    """The process's file-creation mask (read from ``/proc`` where it can be, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write through a temp file beside ``path`` and rename it into place; the file gets the mode a
    plain ``open(path, "w")`` would (0o666 less the umask: ``mkstemp`` alone makes it 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, then rename: readers never see half a file."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path, obj) -> None:
    """Atomic JSON write (indent 2, non-finite floats rejected)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_torch_save(obj, path) -> None:
    """torch.save through a temp file + rename (an interrupted save leaves the old file)."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def safe_torch_load(path, expect: dict | None = None, map_location="cpu") -> dict:
    """Load a ddkit checkpoint with ``weights_only=True``.

    Checkpoints are dicts with a ``meta`` dict. ``expect`` maps meta keys to required
    values (dataset, image size, class count, ...): a mismatch, a missing file, a corrupt
    or foreign file raises ``ValueError`` naming the file and the offending key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, foreign objects
        raise ValueError(f"{path} is not a readable ddkit checkpoint ({type(e).__name__}: {e}); "
                         "delete it to rebuild") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("meta"), dict):
        raise ValueError(f"{path} is not a ddkit checkpoint (no 'meta' dict); delete it to rebuild")
    for key, want in (expect or {}).items():
        have = obj["meta"].get(key)
        if _normalise(have) != _normalise(want):
            raise ValueError(f"{path} was made for {key}={have!r}, but this run needs {key}={want!r}")
    return obj


def _normalise(v):
    if isinstance(v, (tuple, list)):
        return [_normalise(x) for x in v]
    return v


def git_commit() -> str:
    """The repository's HEAD commit (with '+dirty' when the tree has changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_info(device=None) -> dict:
    """Versions, commit and device for result records."""
    from . import __version__
    import torchvision

    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    return {
        "ddkit_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "num_threads": torch.get_num_threads(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
