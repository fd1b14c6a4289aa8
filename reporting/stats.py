"""The report's statistics across seeds, over a family of comparisons, and a claim's verdict (the paired
statistics themselves are :mod:`pairing`'s, which the studies share)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; NaN for a single value) and count."""
    arr = np.asarray(values, dtype=np.float64)
    return (float(arr.mean()) if arr.size else math.nan, float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            int(arr.size))


def direction(low: float, high: float) -> str:
    """'better' / 'worse' when a 95% improvement interval excludes 0, else 'tie'."""
    return "better" if low > 0 else "worse" if high < 0 else "tie"


def claim_verdict(directions: Sequence[str], relation: str) -> str:
    """Verdict on "a > b" (supported when every seed is significantly better) or "a >= b" (when none is
    significantly worse); contradicted when some seed is worse and none better; otherwise not supported."""
    if relation not in (">", ">="):
        raise ValueError(f"relation={relation!r}: expected '>' or '>='")
    if not directions:
        return "no runs"
    better, worse = directions.count("better"), directions.count("worse")
    if worse and not better:
        return "contradicted"
    supported = better == len(directions) if relation == ">" else not worse
    return "supported" if supported else "not supported"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values of one family of tests, in the input order:
    the i-th smallest p is multiplied by (m − i), and adjusted values never decrease."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * float(pvalues[i])))
        out[i] = running
    return out
