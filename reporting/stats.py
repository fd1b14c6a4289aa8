"""Paired statistics on identical test tasks.

Every algorithm is evaluated on the same seeded test tasks, so two runs can be compared
task by task: the per-task difference removes the task-difficulty variance that makes
two overlapping "mean ± 95% CI" intervals uninformative. Pure functions over numpy
arrays; nothing here reads files.

- :func:`paired_differences` — a − b per task, after checking the two runs can be paired.
- :func:`bootstrap_ci` — percentile bootstrap CI of the mean paired difference
  (resampling tasks with replacement, fixed seed, vectorised).
- :func:`wilcoxon_p` — two-sided Wilcoxon signed-rank p-value (SciPy; zero differences
  dropped, the "wilcox" convention).
- :func:`win_counts` — tasks where a is better / worse / tied, honouring the metric's sense
  (accuracy: higher is better; MSE: lower is better).
- :func:`mean_std` — mean ± sample std (ddof 1) across seeds.
- :func:`paired_comparison` — all of the above for one pair of runs.
- :func:`holm` — Holm step-down adjusted p-values of one family of comparisons.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sps

N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK = 1_000  # resamples drawn per block: bounds memory at ~CHUNK·n indices


class PairingError(ValueError):
    """Two runs cannot be paired (different test tasks, lengths or missing values)."""


def check_same_test_set(fingerprint_a: str | None, fingerprint_b: str | None) -> None:
    """Refuse to pair runs whose test-task fingerprints are missing or differ."""
    if not fingerprint_a or not fingerprint_b:
        raise PairingError("a run has no test-task fingerprint")
    if fingerprint_a != fingerprint_b:
        raise PairingError(f"test-task fingerprints differ ({fingerprint_a[:12]} vs {fingerprint_b[:12]})")


def paired_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per-task difference ``a - b``; both must list the same number of finite values."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.ndim != 1:
        raise PairingError("per-task metrics must be flat lists")
    if a_arr.size != b_arr.size:
        raise PairingError(f"per-task lists differ in length ({a_arr.size} vs {b_arr.size})")
    if a_arr.size == 0:
        raise PairingError("no per-task values")
    if not (np.isfinite(a_arr).all() and np.isfinite(b_arr).all()):
        raise PairingError("non-finite per-task values")
    return a_arr - b_arr


def bootstrap_ci(diff: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of ``diff`` (Efron & Tibshirani 1993, §13.3).

    Tasks are resampled with replacement ``n_resamples`` times from a generator seeded with
    ``seed``, so the same differences always give the same interval.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D array")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: must be >= 1")
    rng = np.random.default_rng(seed)
    n = diff.size
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value (Wilcoxon 1945) of ``diff`` against zero.

    Zero differences carry no sign and are dropped; with no non-zero difference there is
    no evidence of a difference at all, so the p-value is 1.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if not np.any(diff != 0):
        return 1.0
    return float(_sps.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def win_counts(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> tuple[int, int, int]:
    """(tasks where a is better, tasks where b is better, ties)."""
    diff = paired_differences(a, b)
    if not higher_is_better:
        diff = -diff
    return int((diff > 0).sum()), int((diff < 0).sum()), int((diff == 0).sum())


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; NaN for a single value) and count."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std, int(arr.size)


@dataclass(frozen=True)
class Paired:
    """Paired comparison of run a against run b on the same test tasks (differences a − b)."""
    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    a_better: int
    b_better: int
    ties: int


def paired_comparison(a: Sequence[float], b: Sequence[float], fingerprint_a: str | None,
                      fingerprint_b: str | None, higher_is_better: bool,
                      n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Paired:
    """Compare two runs task by task; raises :class:`PairingError` when they cannot be paired."""
    check_same_test_set(fingerprint_a, fingerprint_b)
    diff = paired_differences(a, b)
    lo, hi = bootstrap_ci(diff, n_resamples=n_resamples, seed=seed)
    wins, losses, ties = win_counts(a, b, higher_is_better)
    return Paired(n=int(diff.size), mean_diff=float(diff.mean()), ci_low=lo, ci_high=hi,
                  p_value=wilcoxon_p(diff), a_better=wins, b_better=losses, ties=ties)


def improvement_interval(p: Paired, higher_is_better: bool) -> tuple[float, float, float]:
    """(mean, low, high) of a's improvement over b in the metric's good direction."""
    if higher_is_better:
        return p.mean_diff, p.ci_low, p.ci_high
    return -p.mean_diff, -p.ci_high, -p.ci_low


def direction(low: float, high: float) -> str:
    """'better' / 'worse' when a 95% improvement interval excludes 0, else 'tie'."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "tie"


def claim_verdict(directions: Sequence[str], relation: str) -> str:
    """Verdict on "a > b" or "a >= b" from one significance direction per seed.

    '>' is supported only when every seed shows a significantly better; '>=' when no seed
    shows a significantly worse. A claim is contradicted when some seed shows a
    significantly worse and none shows it better; mixed seeds are "not supported".
    """
    if relation not in (">", ">="):
        raise ValueError(f"relation={relation!r}: expected '>' or '>='")
    if not directions:
        return "no runs"
    better, worse = directions.count("better"), directions.count("worse")
    if worse and not better:
        return "contradicted"
    if relation == ">":
        return "supported" if better == len(directions) else "not supported"
    return "supported" if not worse else "not supported"


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values of one family of tests, in the input order:
    the i-th smallest p is multiplied by (m − i), and adjusted values never decrease."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    out, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * float(pvalues[i])))
        out[i] = running
    return out
