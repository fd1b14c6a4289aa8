"""Paired statistics against hand-computed answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pairing import (
    PairingError,
    bootstrap_ci,
    check_same_test_set,
    paired_comparison,
    paired_differences,
    wilcoxon_p,
    win_counts,
)
from reporting.paired import improvement, oriented
from reporting.stats import claim_verdict, direction, holm, mean_std

FP = "f" * 64


def test_paired_difference_known_answer():
    a, b = [1.0, 0.8, 0.6, 1.0], [0.8, 0.8, 1.0, 0.4]
    np.testing.assert_allclose(paired_differences(a, b), [0.2, 0.0, -0.4, 0.6], atol=1e-15)
    p = paired_comparison(a, b, FP, FP, higher_is_better=True)
    assert p.n == 4
    assert p.mean_diff == pytest.approx(0.1)  # (0.2 + 0 - 0.4 + 0.6) / 4
    assert (p.a_better, p.b_better, p.ties) == (2, 1, 1)
    assert p.ci_low <= p.mean_diff <= p.ci_high


def test_identical_runs_give_zero_difference_and_ci_containing_zero():
    a = np.random.default_rng(0).uniform(size=600).tolist()
    p = paired_comparison(a, list(a), FP, FP, higher_is_better=True)
    assert p.mean_diff == 0.0 and p.ci_low == 0.0 and p.ci_high == 0.0
    assert p.ci_low <= 0.0 <= p.ci_high
    assert p.p_value == 1.0
    assert (p.a_better, p.b_better, p.ties) == (0, 0, 600)


def test_mismatched_test_sets_are_refused():
    with pytest.raises(PairingError, match="fingerprints differ"):
        paired_comparison([1.0, 0.0], [1.0, 0.0], "a" * 64, "b" * 64, True)
    with pytest.raises(PairingError, match="no test-task fingerprint"):
        check_same_test_set(None, FP)
    with pytest.raises(PairingError, match="differ in length"):
        paired_comparison([1.0, 0.0, 1.0], [1.0, 0.0], FP, FP, True)
    with pytest.raises(PairingError, match="non-finite"):
        paired_differences([1.0, math.nan], [1.0, 0.0])


def test_bootstrap_two_point_distribution():
    # diff = [0, 1]: a resampled mean is 0 (p=1/4), 0.5 (p=1/2) or 1 (p=1/4), so the 2.5% and
    # 97.5% quantiles of 10,000 resamples are 0 and 1.
    assert bootstrap_ci(np.array([0.0, 1.0])) == (0.0, 1.0)


def test_bootstrap_constant_difference_and_determinism():
    lo, hi = bootstrap_ci(np.full(50, 0.25))
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    d = np.random.default_rng(1).normal(size=600)
    assert bootstrap_ci(d) == bootstrap_ci(d)          # fixed resampling seed
    assert bootstrap_ci(d, seed=1) != bootstrap_ci(d)  # the seed is what fixes it


def test_bootstrap_matches_normal_approximation_on_600_tasks():
    d = np.random.default_rng(2).normal(0.1, 1.0, size=600)
    lo, hi = bootstrap_ci(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.06)
    assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.2 * half)


def test_wilcoxon_exact_small_sample():
    # All five differences positive: the exact two-sided p is 2 · (1/2)^5 = 0.0625.
    assert wilcoxon_p(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(0.0625)
    # Ranks 1..5 with the largest negative: W+ = 10, P(W+ >= 10) = 10/32, two-sided 0.625.
    assert wilcoxon_p(np.array([1.0, 2.0, 3.0, 4.0, -5.0])) == pytest.approx(0.625)
    assert wilcoxon_p(np.zeros(7)) == 1.0


def test_win_counts_honour_the_metric_direction():
    a, b = [0.1, 0.5, 0.3], [0.2, 0.4, 0.3]  # MSE: lower is better
    assert win_counts(a, b, higher_is_better=False) == (1, 1, 1)
    assert win_counts([0.1, 0.1], [0.2, 0.3], higher_is_better=False) == (2, 0, 0)
    assert win_counts([0.1, 0.1], [0.2, 0.3], higher_is_better=True) == (0, 2, 0)


def test_improvement_flips_for_mse():
    a, b = [0.1, 0.2, 0.1, 0.2], [0.3, 0.4, 0.3, 0.5]
    p = paired_comparison(a, b, FP, FP, higher_is_better=False)
    assert p.mean_diff == pytest.approx(-0.225)
    d = improvement(*({"metric": "mse", "per_task": x, "fingerprint": FP} for x in (a, b)))
    assert d["imp"] == pytest.approx(0.225) and d["low"] == pytest.approx(-p.ci_high)
    assert d["high"] == pytest.approx(-p.ci_low)
    assert direction(d["low"], d["high"]) == "better"


def test_a_comparison_read_from_b_side_swaps_every_side():
    d = {"a": "A", "b": "B", "a_run": "ra", "b_run": "rb", "a_better": 3, "b_better": 1, "a_iters": "5/9",
         "b_iters": "7/9", "imp": 0.1, "low": 0.05, "high": 0.2}
    (f,) = oriented([d], "B", "A")
    assert (f["a"], f["a_run"], f["a_better"], f["a_iters"]) == ("B", "rb", 1, "7/9")
    assert (f["b"], f["b_run"], f["b_better"], f["b_iters"]) == ("A", "ra", 3, "5/9")
    assert (f["imp"], f["low"], f["high"]) == (-0.1, -0.2, -0.05)


def test_mean_std_across_seeds():
    mean, std, n = mean_std([0.9, 0.8, 0.7])
    assert (mean, n) == (pytest.approx(0.8), 3) and std == pytest.approx(0.1)  # sample std, ddof 1
    mean, std, n = mean_std([0.9])
    assert mean == 0.9 and math.isnan(std) and n == 1


def test_claim_verdicts():
    assert claim_verdict(["better", "better"], ">") == "supported"
    assert claim_verdict(["better", "tie"], ">") == "not supported"
    assert claim_verdict(["tie", "worse"], ">") == "contradicted"
    assert claim_verdict(["tie", "tie"], ">=") == "supported"
    assert claim_verdict(["better", "worse"], ">=") == "not supported"
    assert claim_verdict(["worse"], ">=") == "contradicted"
    assert claim_verdict([], ">") == "no runs"
    with pytest.raises(ValueError):
        claim_verdict(["better"], "<")


def test_holm_known_answer():
    # sorted 0.01, 0.02, 0.04, 0.3 → ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.08, 0.3 (monotone), back in input order
    np.testing.assert_allclose(holm([0.3, 0.01, 0.04, 0.02]), [0.3, 0.04, 0.08, 0.06])
    assert holm([0.5, 0.5]) == [1.0, 1.0] and holm([]) == []
    assert holm([0.04, 0.03]) == [0.06, 0.06]  # step-down: never smaller than an earlier adjusted value
