"""Small shared helpers: devices, seeds, atomic files, safe checkpoint loading."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def available_devices() -> list:
    """The devices this machine has, as strings: ``cpu``, then ``cuda:0`` ... ``cuda:N-1``, then ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


#: Environment variable naming the device that ``None`` / ``"auto"`` stand for (e.g. ``cpu`` to keep a
#: session off the GPU, ``cuda:1``); unset: CUDA when present, else the CPU.
DEVICE_ENV = "DDKIT_DEVICE"


def _auto_device() -> torch.device:
    chosen = os.environ.get(DEVICE_ENV, "").strip()
    if chosen and chosen != "auto":
        return resolve_device(chosen)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device rule of every ddkit function that takes ``device``.

    ``None``, ``""`` and ``"auto"`` mean the device named by ``$DDKIT_DEVICE`` when it is set, else
    CUDA when present, else the CPU (never MPS: it must be asked for). Anything else must name a device this machine has (``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"`` or a ``torch.device``); a string that is not a device, a GPU the
    machine lacks (``"cuda:7"`` on a one-GPU machine, ``"cuda"`` without CUDA) or an absent
    ``"mps"`` is refused here, before any compute, with a ``ValueError`` listing the devices the
    machine has. Functions resolve their ``device`` argument with this and build on, or move
    their datasets to, the result; objects they are handed (a pool, a synthetic set, a teacher)
    must already live there (:func:`check_same_device`).
    """
    if device in (None, "", "auto"):
        return _auto_device()
    have = ", ".join(available_devices())
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N' "
                         f"(this machine has: {have})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here; use 'auto' or 'cpu' "
                         f"(this machine has: {have})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}' or 'auto' (this machine has: {have})")
    if dev.type == "mps" and "mps" not in available_devices():
        raise ValueError(f"device={device!r}: MPS is not available here (this machine has: {have})")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: ddkit runs on 'cpu', 'cuda' or 'mps' (this machine has: {have})")
    return dev


def _canonical(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)
    return dev


def same_device(a, b) -> bool:
    """Whether two devices are one (``cuda`` is the current CUDA device, e.g. ``cuda:0``)."""
    return _canonical(a) == _canonical(b)


def on_device(dataset, device):
    """``dataset`` itself when it already lives on ``device`` (``cuda`` and ``cuda:0`` are one), else
    ``dataset.to(device)``: a pool handed data on another device trains on its own device."""
    return dataset if same_device(dataset.device, device) else dataset.to(device)


def check_same_device(device, where: str, **objects) -> None:
    """``ValueError`` naming each object (a tensor, a module, or anything with a ``device``
    attribute) that does not live on ``device``, before ``where`` computes anything."""
    for name, obj in objects.items():
        have = _device_of(obj)
        if have is not None and not same_device(have, device):
            raise ValueError(f"{where} runs on {device} but {name} is on {have}: build {name} with "
                             f"device={str(device)!r}, or pass device={str(have)!r} to {where}")


def _device_of(obj):
    if torch.is_tensor(obj):
        return obj.device
    if isinstance(obj, torch.nn.Module):
        first = next(iter(obj.parameters()), None)
        return None if first is None else first.device
    dev = getattr(obj, "device", None)
    return dev if isinstance(dev, torch.device) else None


#: The settings :func:`set_deterministic` changes, with PyTorch's defaults (``deterministic=False``).
_DETERMINISM_DEFAULTS = {"use_deterministic_algorithms": False, "warn_only": False, "cudnn_deterministic": False,
                         "cudnn_benchmark": False, "tf32_matmul": False, "tf32_cudnn": True,
                         "cublas_workspace_config": None}


def determinism_settings() -> dict:
    """The process's settings that decide whether CUDA results repeat bitwise (for result records)."""
    return {"use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def is_deterministic() -> bool:
    """Whether every setting of :func:`set_deterministic` is on (TF32 off included)."""
    s = determinism_settings()
    return (s["use_deterministic_algorithms"] and s["cudnn_deterministic"] and not s["cudnn_benchmark"]
            and not s["tf32_matmul"] and not s["tf32_cudnn"] and s["cublas_workspace_config"] in (":4096:8", ":16:8"))


def _apply_determinism(s: dict) -> None:
    torch.use_deterministic_algorithms(s["use_deterministic_algorithms"], warn_only=s["warn_only"])
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = s["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = s["tf32_cudnn"]
    if s["cublas_workspace_config"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = s["cublas_workspace_config"]


def set_deterministic(flag: bool = True) -> dict:
    """Same seed, same numbers on CUDA too (``flag=True``), or PyTorch's defaults back (``False``).

    On: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic with
    autotuning off, TF32 off for matmuls and convolutions (PyTorch's default
    runs CUDA convolutions in TF32: ~1e-3 relative error), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
    (cuBLAS needs it for repeatable matmuls; set it before the first CUDA matmul of the process).
    The few CUDA ops without a deterministic kernel warn instead of raising: the backward of
    ``grid_sample`` (DSA's scale and rotate, when the images take a gradient) accumulates with atomic
    adds, so a distillation with those transforms repeats up to float rounding, not bit for bit.
    Slower on CUDA; changes nothing on the CPU, whose kernels already repeat. Returns the settings
    that were in force before (for :func:`deterministic`, which restores them)."""
    if not isinstance(flag, bool):
        raise ValueError(f"deterministic={flag!r}; expected True or False")
    before = determinism_settings()
    _apply_determinism({"use_deterministic_algorithms": True, "warn_only": True, "cudnn_deterministic": True,
                        "cudnn_benchmark": False, "tf32_matmul": False, "tf32_cudnn": False,
                        "cublas_workspace_config": ":4096:8"} if flag else _DETERMINISM_DEFAULTS)
    return before


@contextmanager
def deterministic(flag: bool = True):
    """``with deterministic():`` :func:`set_deterministic` for a block, the previous settings restored after."""
    before = set_deterministic(flag)
    try:
        yield
    finally:
        _apply_determinism(before)


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
    """Versions, commit, device and the determinism / TF32 settings for result records."""
    from .. import __version__
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
        "deterministic": is_deterministic(),
        "determinism": determinism_settings(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
