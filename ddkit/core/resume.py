"""Resuming long loops: content digests (what determines a result) and a per-key result store.

A loop whose units are independent (the networks of an evaluation) stores each finished unit's
result under a key made of everything that determines it; a re-run with the same key skips the
stored units, any other key starts afresh. The store is one JSON file written atomically after
each unit (temp file + rename), so a kill loses at most the unit in progress.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .utils import atomic_write_json

STORE_FORMAT = "ddkit-unit-store-1"


def tensor_digest(*tensors) -> str:
    """SHA-1 of the shapes, dtypes and values of ``tensors`` (``None`` entries allowed)."""
    h = hashlib.sha1()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset) -> str:
    """A short hash of a dataset's training labels, sizes and a strided sample of its images
    (cheap; tells two datasets with the same name apart)."""
    h = hashlib.sha1()
    h.update(repr((tuple(dataset.x_train.shape), tuple(dataset.x_test.shape))).encode())
    h.update(dataset.y_train.detach().cpu().numpy().tobytes())
    step = max(1, len(dataset.x_train) // 64)
    h.update(dataset.x_train[::step].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def settings_key(**settings) -> str:
    """A stable key of JSON-able settings (sorted, repr of anything else)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest()


class UnitStore:
    """Finished units' results of one key in a JSON file shared by many keys.

    ``store.get(i)`` is unit ``i``'s stored result (or None); ``store.put(i, value)`` records it and
    rewrites the file atomically. A file that is not a ddkit unit store raises ``ValueError`` naming it."""

    def __init__(self, path, key: str):
        self.path, self.key = Path(path), key
        self.entries = self._read()

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            obj = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"checkpoint {self.path} is not a readable ddkit checkpoint ({type(e).__name__}: {e}); "
                             "delete it to start over") from e
        if not isinstance(obj, dict) or obj.get("format") != STORE_FORMAT or not isinstance(obj.get("keys"), dict):
            raise ValueError(f"checkpoint {self.path} is not a ddkit checkpoint (expected format {STORE_FORMAT!r}); "
                             "delete it or pass another path")
        return obj["keys"]

    def get(self, unit: int):
        return self.entries.get(self.key, {}).get(str(unit))

    def put(self, unit: int, value) -> None:
        self.entries.setdefault(self.key, {})[str(unit)] = value
        atomic_write_json(self.path, {"format": STORE_FORMAT, "keys": self.entries})
