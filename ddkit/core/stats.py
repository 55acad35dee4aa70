"""Small statistics for paired comparisons across seeds (evidence runs and the report)."""
from __future__ import annotations

import math


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(method, baseline, confidence: float = 0.95) -> dict:
    """Mean of ``method[i] - baseline[i]`` over paired runs (same seed) with a two-sided t interval.

    ``method`` and ``baseline``: one score per seed (e.g. each seed's mean test accuracy), same order.
    Returns ``{"n", "mean", "std", "lo", "hi", "diffs"}``; with one pair the interval is infinite."""
    a, b = [float(v) for v in method], [float(v) for v in baseline]
    if len(a) != len(b):
        raise ValueError(f"paired_difference: method has {len(a)} values, baseline {len(b)}; pair them by seed")
    if not a:
        raise ValueError("paired_difference: no pairs given")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1)")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": float("nan"), "lo": -math.inf, "hi": math.inf, "diffs": d}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "std": sd, "lo": mean - half, "hi": mean + half, "diffs": d}


def format_paired(r: dict) -> str:
    """``+1.23 [−0.40, +2.86] (n=3)``."""
    return f"{r['mean']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] (n={r['n']})"
