"""Time boxes for long loops: a deadline that the distillation loop and the evaluation honour.

``ddkit reproduce --minutes N`` sets ``$DDKIT_DEADLINE`` (Unix time, seconds) for the notebook it
executes; a loop that can resume (``ddkit.methods.distill.distill`` with a ``checkpoint``, ``evaluate_synset``
with its finished-network store) checks :func:`expired` at its checkpoint points, saves its state and
raises :class:`TimeBoxReached`. Re-running the same notebook in the same run folder resumes it.
"""
from __future__ import annotations

import os
import re
import time

DEADLINE_ENV = "DDKIT_DEADLINE"
_DONE = re.compile(r"at iteration (\d+) of (\d+)")


class TimeBoxReached(RuntimeError):
    """The deadline of ``$DDKIT_DEADLINE`` passed; the loop saved its state and stopped cleanly."""


def deadline() -> float | None:
    """``$DDKIT_DEADLINE`` as a float, None when unset or empty; ``ValueError`` naming a bad value."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${DEADLINE_ENV}={raw!r} must be a Unix time in seconds (or unset)") from None


def expired() -> bool:
    """True once the deadline has passed (never without one)."""
    end = deadline()
    return end is not None and time.time() >= end


def stop_loop(done: int, total: int, where: str, unit: str = "iteration") -> TimeBoxReached:
    """The exception a loop raises after saving its state at ``done`` of ``total`` units
    (``unit``: "iteration" for distillation, which :func:`progress_of` reads; "network" for evaluation)."""
    return TimeBoxReached(f"time box reached at {unit} {done} of {total} ({where}); "
                          "re-run the same command to resume")


def progress_of(message: str) -> tuple[int, int] | None:
    """``(done, total)`` distillation iterations parsed from a :class:`TimeBoxReached` message, None when
    it carries none (an evaluation's stop: the distillation is complete)."""
    m = _DONE.search(message or "")
    return (int(m.group(1)), int(m.group(2))) if m else None
