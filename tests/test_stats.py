"""Statistics against values computed another way: published tables, closed forms, naive loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tasks.stats import (
    across_seeds,
    iqm,
    paired_difference_ci,
    probability_of_improvement,
    stratified_bootstrap_ci,
    wilson_interval,
)

Z95 = 1.959963984540054  # Phi^-1(0.975)


# --------------------------------------------------------------------------------------------
# Wilson interval

# Newcombe R.G. (1998), "Two-sided confidence intervals for the single proportion: comparison of
# seven methods", Statistics in Medicine 17:857-872, Table II, method 3 (Wilson score, no
# continuity correction), 95 %, printed to 4 decimals.
NEWCOMBE_1998 = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize("k,n,low,high", NEWCOMBE_1998)
def test_wilson_matches_newcombe_1998(k, n, low, high):
    got = wilson_interval(k, n, 0.95)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_closed_forms_at_the_edges():
    # k = 0: the upper end solves p = z^2 (1 - p) / n  ->  z^2 / (n + z^2); k = n mirrors it.
    for n in (1, 7, 50, 600):
        assert wilson_interval(0, n) == pytest.approx((0.0, Z95**2 / (n + Z95**2)), abs=1e-12)
        assert wilson_interval(n, n) == pytest.approx((n / (n + Z95**2), 1.0), abs=1e-12)


@pytest.mark.parametrize("k,n,confidence", [(3, 10, 0.95), (81, 263, 0.9), (599, 600, 0.99), (40, 41, 0.8)])
def test_wilson_endpoints_solve_the_score_equation(k, n, confidence):
    # The Wilson interval is {p0 : |p_hat - p0| <= z sqrt(p0 (1 - p0) / n)}: its ends are the roots.
    z = sps.norm.ppf(0.5 + confidence / 2)
    p_hat = k / n
    low, high = wilson_interval(k, n, confidence)
    for p0 in (low, high):
        assert abs(p_hat - p0) == pytest.approx(z * math.sqrt(p0 * (1 - p0) / n), abs=1e-12)
    assert low < p_hat < high


def test_wilson_vectorised_equals_scalar_and_rejects_bad_counts():
    k, n = np.array([0, 5, 81, 20]), np.array([20, 10, 263, 20])
    low, high = wilson_interval(k, n)
    for i in range(len(k)):
        assert (low[i], high[i]) == pytest.approx(wilson_interval(int(k[i]), int(n[i])), abs=1e-15)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 3, confidence=95)


# --------------------------------------------------------------------------------------------
# IQM and the stratified bootstrap


def test_iqm_hand_made():
    # 8 values: drop 2 from each end -> mean(2, 3, 4, 5); the outlier 100 does not count.
    assert iqm(np.array([0, 1, 2, 3, 4, 5, 6, 100.0])) == pytest.approx(3.5)
    # 4 values: drop 1 from each end -> mean(2, 5).
    assert iqm(np.array([5, 1, 100, 2.0])) == pytest.approx(3.5)
    # 3 values: int(0.75) = 0 trimmed -> the plain mean.
    assert iqm(np.array([1, 2, 9.0])) == pytest.approx(4.0)


def _naive_percentile(sorted_values, q):
    """Linear interpolation between order statistics (numpy's default), written out."""
    position = q / 100 * (len(sorted_values) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (position - lo) * (sorted_values[hi] - sorted_values[lo])


def _naive_iqm(values):
    ordered = sorted(values)
    cut = int(0.25 * len(ordered))
    middle = ordered[cut : len(ordered) - cut]
    return sum(middle) / len(middle)


def _naive_bootstrap(strata, aggregate, n_boot, confidence, seed):
    """One replicate at a time, plain Python lists; same random draws (documented convention)."""
    rng = np.random.default_rng(seed)
    indices = [rng.integers(0, len(s), size=(n_boot, len(s))) for s in strata]
    replicates = []
    for b in range(n_boot):
        pooled = []
        for s, idx in zip(strata, indices):
            pooled.extend(float(s[i]) for i in idx[b])
        replicates.append(sum(pooled) / len(pooled) if aggregate == "mean" else _naive_iqm(pooled))
    replicates.sort()
    alpha = 1 - confidence
    everything = [float(v) for s in strata for v in s]
    estimate = sum(everything) / len(everything) if aggregate == "mean" else _naive_iqm(everything)
    return estimate, _naive_percentile(replicates, 100 * alpha / 2), _naive_percentile(replicates, 100 * (1 - alpha / 2))


@pytest.mark.parametrize("aggregate", ["mean", "iqm"])
def test_stratified_bootstrap_matches_naive_loop(aggregate):
    rng = np.random.default_rng(7)
    strata = [rng.normal(0, 1, 30), rng.exponential(2.0, 17), rng.integers(0, 2, 23).astype(float)]  # ragged
    got = stratified_bootstrap_ci(strata, aggregate, n_boot=300, confidence=0.9, seed=11)
    want = _naive_bootstrap(strata, aggregate, 300, 0.9, 11)
    assert tuple(got) == pytest.approx(want, abs=1e-12)


def test_stratified_bootstrap_array_and_dict_inputs_agree():
    scores = np.random.default_rng(3).normal(size=(3, 40))
    as_array = stratified_bootstrap_ci(scores, "mean", n_boot=200, seed=5)
    as_list = stratified_bootstrap_ci(list(scores), "mean", n_boot=200, seed=5)
    as_dict = stratified_bootstrap_ci({"arm": scores}, "mean", n_boot=200, seed=5)
    assert tuple(as_array) == tuple(as_list) == tuple(as_dict["arm"])
    assert as_array.estimate == pytest.approx(scores.mean())


def test_stratified_bootstrap_mean_matches_normal_theory():
    # Stratified sampling: Var(pooled mean) = sum_s n_s^2 (var_s / n_s) / N^2. With large strata
    # the percentile interval approaches estimate +- z * sd (Monte Carlo tolerance ~ 5 %).
    rng = np.random.default_rng(0)
    strata = [rng.normal(0, 1, 400), rng.normal(3, 2, 400), rng.normal(-1, 0.5, 200)]
    total = sum(len(s) for s in strata)
    sd = math.sqrt(sum(len(s) * s.var() for s in strata)) / total
    estimate, low, high = stratified_bootstrap_ci(strata, "mean", n_boot=4000, seed=1)
    assert (high - low) / (2 * Z95 * sd) == pytest.approx(1.0, abs=0.06)
    assert (low + high) / 2 == pytest.approx(estimate, abs=0.1 * sd)


def test_across_seeds_iqm_of_per_seed_ratios_by_hand():
    # Per-seed ratios sum(num)/sum(den): 1/4, 3/4, 2/2, 0/3, 9/10 -> sorted 0, .25, .75, .9, 1;
    # 5 seeds: scipy trims int(1.25) = 1 from each end -> IQM = mean(.25, .75, .9).

    def pairs(num, den):
        return np.array([[n, d] for n, d in zip(num, den)], dtype=float)

    def ratio(x):
        return x[..., 0].sum(1) / x[..., 1].sum(1)

    strata = [pairs([1, 0], [2, 2]), pairs([2, 1], [2, 2]), pairs([1, 1], [1, 1]), pairs([0], [3]),
              pairs([9], [10])]
    assert stratified_bootstrap_ci(strata, across_seeds(ratio, "iqm"), n_boot=50).estimate == pytest.approx(
        (0.25 + 0.75 + 0.9) / 3
    )
    assert stratified_bootstrap_ci(strata, across_seeds(ratio, "mean"), n_boot=50).estimate == pytest.approx(
        (0.25 + 0.75 + 1 + 0 + 0.9) / 5
    )


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="statistic"):
        stratified_bootstrap_ci(np.ones((2, 3)), "median")
    with pytest.raises(ValueError, match="no episodes"):
        stratified_bootstrap_ci([np.ones(3), np.ones(0)], "mean")
    with pytest.raises(ValueError, match="shape"):
        stratified_bootstrap_ci(np.ones(3), "mean")


# --------------------------------------------------------------------------------------------
# Probability of improvement and paired differences


def _brute_force_poi(x, y):
    wins = sum((a > b) + 0.5 * (a == b) for a in x for b in y)
    return wins / (len(x) * len(y))


def test_probability_of_improvement_hand_made():
    # Pairs: (1,2)x2 -> 0, (2,2)x2 -> 0.5 each, (3,2)x2 -> 1 each: (0 + 1 + 2) / 6 = 0.5.
    assert probability_of_improvement([1, 2, 3], [2, 2], n_boot=100).estimate == pytest.approx(0.5)
    assert probability_of_improvement([3, 4], [1, 2], n_boot=100).estimate == pytest.approx(1.0)
    assert probability_of_improvement([1, 1], [1, 1], n_boot=100) == pytest.approx((0.5, 0.5, 0.5))


def test_probability_of_improvement_matches_brute_force_per_seed_mean():
    rng = np.random.default_rng(2)
    xs = [rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 9).astype(float)]  # ties on purpose
    ys = [rng.integers(0, 5, 10).astype(float), rng.integers(1, 6, 9).astype(float)]
    want = np.mean([_brute_force_poi(x, y) for x, y in zip(xs, ys)])
    got = probability_of_improvement(xs, ys, n_boot=500, seed=4)
    assert got.estimate == pytest.approx(want, abs=1e-12)
    assert got.low <= got.estimate <= got.high


def test_probability_of_improvement_bootstrap_matches_naive_loop():
    rng = np.random.default_rng(5)
    xs = [rng.normal(0.3, 1, 15), rng.normal(0.3, 1, 11)]
    ys = [rng.normal(0, 1, 13), rng.normal(0, 1, 11)]
    n_boot = 200
    # Draws: all x strata, then all y strata (documented), each (n_boot, n_s).
    draw = np.random.default_rng(9)
    idx = [draw.integers(0, len(s), size=(n_boot, len(s))) for s in xs + ys]
    replicates = sorted(
        np.mean([_brute_force_poi(xs[s][idx[s][b]], ys[s][idx[2 + s][b]]) for s in range(2)]) for b in range(n_boot)
    )
    got = probability_of_improvement(xs, ys, n_boot=n_boot, confidence=0.95, seed=9)
    assert got.low == pytest.approx(_naive_percentile(replicates, 2.5), abs=1e-12)
    assert got.high == pytest.approx(_naive_percentile(replicates, 97.5), abs=1e-12)


def test_paired_difference_matches_naive_joint_resampling():
    rng = np.random.default_rng(8)
    x = [rng.integers(0, 2, 25).astype(float), rng.integers(0, 2, 40).astype(float)]
    y = [rng.integers(0, 2, 25).astype(float), rng.integers(0, 2, 40).astype(float)]
    n_boot = 250
    draw = np.random.default_rng(13)
    idx = [draw.integers(0, len(s), size=(n_boot, len(s))) for s in x]
    replicates = []
    for b in range(n_boot):
        diffs = [x[s][i] - y[s][i] for s in range(2) for i in idx[s][b]]  # one index for both arms
        replicates.append(sum(diffs) / len(diffs))
    replicates.sort()
    got = paired_difference_ci(x, y, n_boot=n_boot, confidence=0.9, seed=13)
    want_estimate = (np.concatenate(x).sum() - np.concatenate(y).sum()) / 65
    assert tuple(got) == pytest.approx(
        (want_estimate, _naive_percentile(replicates, 5), _naive_percentile(replicates, 95)), abs=1e-12
    )


def test_paired_difference_of_identical_arms_has_zero_width():
    # Joint resampling: arms that agree on every episode differ by exactly 0 in every replicate;
    # resampling them independently would give a wide interval around 0.
    outcome = [np.random.default_rng(1).integers(0, 2, 100).astype(float)] * 3
    assert tuple(paired_difference_ci(outcome, outcome, n_boot=300)) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference_ci([np.ones(3)], [np.ones(4)])
