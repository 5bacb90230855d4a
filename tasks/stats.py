"""Statistics for the comparison and decision stages. Pure numpy/scipy functions, no files, no pandas.

What to use (issue 16)
----------------------
The test split is a crossed design: every training seed of every arm plays the same E
scenarios (env seeds). Scores are (S, E) matrices, rows = seeds, columns = scenarios.

* One arm's mean (capture, collision, a real score):  ``crossed_mean_interval``.
* Two arms on the same scenarios:                    ``crossed_difference_interval`` (say
  whether they share checkpoints: ``paired_seeds``).
* A ratio of sums (per-step rates):                   ``crossed_ratio_interval``.
* Cross-check over seeds only:                        ``seed_t_interval``, ``seed_t_difference_interval``.
* A count with no structure (e.g. 0 collisions / n):  ``rate_interval`` (Wilson or Clopper-Pearson,
  never [0, 0]); two such counts: ``newcombe_difference_interval``.
* p-values: ``mcnemar_exact`` (paired 0/1 episodes, one seed), ``seed_permutation_test``.
* Power: ``power_analysis`` (minimum detectable difference), ``seeds_needed``, ``power_at``.
* rliable-style summaries: ``run_level_probability_of_improvement``, ``paired_win_rate``,
  ``iqm`` with ``iqm_trims``, ``performance_profile``.
Every crossed interval carries ``method``, a label saying what was estimated, for the report.

The within-seed stratified bootstrap below (the old comparison) treats seeds as fixed and
resamples episodes: it leaves out training-seed variance and under-counts the scenario
effect shared by all seeds (its 95 % interval covered ~65 % in the issue-16 simulation). Keep it
for descriptive per-seed intervals only.

Conventions of the stratified bootstrap
---------------------------------------
* A *stratum* is one training seed. Scores come as a 2-D array ``(seeds, episodes)``, or as a
  sequence of per-seed arrays (lengths may differ), each with episodes on axis 0 and optional
  trailing axes (e.g. ``(episodes, 2)`` for a numerator/denominator pair).
* The stratified bootstrap follows rliable (Agarwal et al. 2021, "Deep RL at the edge of the
  statistical precipice"): every replicate resamples episodes with replacement *within* each
  seed, keeping the number of episodes per seed, then recomputes the aggregate; the interval is
  the percentile interval of the replicates. Seeds are fixed strata, so the interval describes
  episode-level (evaluation) noise given these training runs, not a new draw of seeds.
* Random draws: ``rng = np.random.default_rng(seed)``; then, for each seed stratum in order,
  one call ``rng.integers(0, n_s, size=(n_boot, n_s))``. Fixing ``seed`` fixes the result.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Mapping, NamedTuple, Sequence, Union

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

__all__ = [
    "Interval",
    "wilson_interval",
    "iqm",
    "stratified_bootstrap_ci",
    "stratified_bootstrap_cis",
    "stratified_bootstrap_samples",
    "across_seeds",
    "probability_of_improvement",
    "paired_difference_ci",
    "CrossedInterval",
    "VarianceComponents",
    "CROSSED_MEAN_METHOD",
    "CROSSED_DIFFERENCE_METHOD",
    "PAIRED_SEED_DIFFERENCE_METHOD",
    "SEED_T_METHOD",
    "rate_interval",
    "newcombe_difference_interval",
    "variance_components",
    "crossed_mean_interval",
    "crossed_difference_interval",
    "CROSSED_RATIO_METHOD",
    "crossed_ratio_interval",
    "seed_t_interval",
    "seed_t_difference_interval",
    "power_at",
    "power_analysis",
    "seeds_needed",
    "crossed_difference_variance_at",
    "crossed_seeds_needed",
    "mcnemar_exact",
    "seed_permutation_test",
    "PairedWinRate",
    "paired_win_rate",
    "run_level_probability_of_improvement",
    "iqm_trimmed",
    "iqm_trims",
    "iqm_edge_bound",
    "separation_bound",
    "performance_profile",
]

Scores = Union[np.ndarray, Sequence[np.ndarray]]
# A bootstrap statistic maps the resampled per-seed arrays, each (n_boot, n_s, ...), to (n_boot,).
Statistic = Callable[[list[np.ndarray]], np.ndarray]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float


@functools.lru_cache(maxsize=64)  # scipy's ppf costs ~0.5 ms; coverage tests call this thousands of times
def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie strictly between 0 and 1 (e.g. 0.95)")
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes, n, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion (Wilson 1927; Newcombe 1998, method 3).

    ``successes`` and ``n`` are scalars or broadcastable arrays of counts. Returns ``(low, high)``
    as floats for scalar input, else arrays. ``n == 0`` gives ``(nan, nan)``: no information.
    """
    z = _z(confidence)
    k = np.asarray(successes, dtype=float)
    total = np.asarray(n, dtype=float)
    if np.any(total < 0) or np.any(k < 0) or np.any(k > total):
        raise ValueError(f"wilson_interval needs 0 <= successes <= n; got successes={successes!r}, n={n!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / total
        denom = 1.0 + z * z / total
        centre = (p + z * z / (2.0 * total)) / denom
        half = z / denom * np.sqrt(p * (1.0 - p) / total + z * z / (4.0 * total * total))
        # The closed form leaves round-off where a count pins an end exactly (k == 0 gave a low of
        # 4.3e-19 at n = 500, k == n a high of 1 + 1e-16): those ends are 0 and 1.
        low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k == total, 1.0, np.clip(centre + half, 0.0, 1.0))
    low = np.where(total > 0, low, np.nan)
    high = np.where(total > 0, high, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def iqm(scores, axis=None):
    """Interquartile mean: mean of the middle 50 % (``scipy.stats.trim_mean(x, 0.25)``).

    scipy trims ``int(0.25 * n)`` values from each end, so fewer than 4 values are not trimmed.
    """
    return sps.trim_mean(scores, 0.25, axis=axis)


def _as_strata(scores: Scores) -> list[np.ndarray]:
    if isinstance(scores, np.ndarray):
        if scores.ndim < 2:
            raise ValueError(
                f"scores array has shape {scores.shape}; accepted: (seeds, episodes[, ...]) "
                "or a list of per-seed arrays"
            )
        strata = [scores[i] for i in range(scores.shape[0])]
    else:
        strata = [np.asarray(s, dtype=float) for s in scores]
    if not strata:
        raise ValueError("scores has no seeds; accepted: at least one seed with at least one episode")
    for i, s in enumerate(strata):
        if s.ndim < 1 or s.shape[0] == 0:
            raise ValueError(f"seed stratum {i} has no episodes (shape {s.shape})")
    trailing = {s.shape[1:] for s in strata}
    if len(trailing) > 1:
        raise ValueError(f"per-seed arrays disagree on trailing shape: {sorted(trailing)}")
    return [np.asarray(s, dtype=float) for s in strata]


def _one_seed_if_flat(scores: Scores) -> Scores:
    """A flat 1-D array or list of numbers is one seed's scores."""
    if isinstance(scores, np.ndarray):
        return [scores] if scores.ndim == 1 else scores
    if all(np.ndim(v) == 0 for v in scores):
        return [np.asarray(scores, dtype=float)]
    return scores


def _pooled(name: str) -> Statistic:
    def statistic(strata: list[np.ndarray]) -> np.ndarray:
        pooled = np.concatenate(strata, axis=1)  # (n_boot, sum n_s)
        if pooled.ndim != 2:
            raise ValueError(f"statistic '{name}' needs 1-D episode scores per seed; got {pooled.shape[2:]} extra axes")
        return pooled.mean(axis=1) if name == "mean" else iqm(pooled, axis=1)

    return statistic


def _resolve(statistic: str | Statistic) -> Statistic:
    if callable(statistic):
        return statistic
    if statistic in ("mean", "iqm"):
        return _pooled(statistic)
    raise ValueError(f"statistic={statistic!r} is unknown; accepted: 'mean', 'iqm' or a callable")


def stratified_bootstrap_samples(strata: list[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Resample episodes within each seed: returns per-seed arrays of shape (n_boot, n_s, ...)."""
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    rng = np.random.default_rng(seed)
    resampled = []
    for s in strata:
        idx = rng.integers(0, s.shape[0], size=(n_boot, s.shape[0]))
        resampled.append(s[idx])
    return resampled


def _percentile_intervals(estimates: np.ndarray, replicates: np.ndarray, confidence: float) -> list[Interval]:
    """estimates (k,), replicates (n_boot, k) -> k percentile intervals (non-finite replicates dropped)."""
    _z(confidence)  # validates
    alpha = 1.0 - confidence
    finite = np.where(np.isfinite(replicates), replicates, np.nan)
    intervals = []
    for j in range(finite.shape[1]):
        column = finite[:, j][~np.isnan(finite[:, j])]
        if column.size == 0:
            intervals.append(Interval(float(estimates[j]), float("nan"), float("nan")))
            continue
        low, high = np.percentile(column, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
        intervals.append(Interval(float(estimates[j]), float(low), float(high)))
    return intervals


def _percentile_interval(estimate: float, replicates: np.ndarray, confidence: float) -> Interval:
    return _percentile_intervals(np.array([estimate]), replicates.reshape(-1, 1), confidence)[0]


def stratified_bootstrap_cis(
    scores: Scores,
    statistic: Statistic,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """Like ``stratified_bootstrap_ci`` for a statistic with k outputs, (n_boot, k), from one
    resample: several metrics of the same episodes share the same bootstrap draws (and cost)."""
    strata = _as_strata(scores)
    estimates = np.asarray(statistic([s[None] for s in strata]), dtype=float).reshape(1, -1)[0]
    replicates = np.asarray(statistic(stratified_bootstrap_samples(strata, n_boot, seed)), dtype=float)
    replicates = replicates.reshape(n_boot, -1)
    if replicates.shape[1] != estimates.shape[0]:
        raise ValueError(f"statistic gave {estimates.shape[0]} outputs on the data but {replicates.shape} on replicates")
    return _percentile_intervals(estimates, replicates, confidence)


def stratified_bootstrap_ci(
    scores: Scores | Mapping[str, Scores],
    statistic: str | Statistic = "mean",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval | dict[str, Interval]:
    """Point estimate and percentile interval of an aggregate under the stratified bootstrap.

    scores:    (seeds, episodes) array, a list of per-seed 1-D arrays (ragged ok), or a dict
               name -> either of those (then a dict name -> Interval is returned, each name
               bootstrapped with the same ``seed``).
    statistic: 'mean' (mean of the pooled episode scores), 'iqm' (interquartile mean of the
               pooled scores), or a callable taking the list of resampled per-seed arrays, each
               (n_boot, n_s, ...), and returning (n_boot,) (see ``across_seeds``). The point
               estimate applies the same callable to the original data (n_boot = 1).
    """
    if isinstance(scores, Mapping):
        return {
            name: stratified_bootstrap_ci(value, statistic, n_boot, confidence, seed) for name, value in scores.items()
        }
    fn = _resolve(statistic)
    probe = stratified_bootstrap_cis(scores, fn, n_boot, confidence, seed)
    if len(probe) != 1:
        raise ValueError(f"statistic returned {len(probe)} outputs; expected one (use stratified_bootstrap_cis)")
    return probe[0]


def across_seeds(per_seed: Callable[[np.ndarray], np.ndarray], aggregate: str = "mean") -> Statistic:
    """Build a two-level statistic: a value per seed, then the mean or IQM across seeds.

    per_seed maps one seed's resampled scores (n_boot, n_s, ...) to (n_boot,) or (n_boot, k)
    for k metrics at once, e.g. a rate
    ``x[..., 0].sum(1) / x[..., 1].sum(1)`` for (numerator, denominator) pairs. This is rliable's
    IQM over runs, with each run's score recomputed from its resampled episodes.
    """
    if aggregate not in ("mean", "iqm"):
        raise ValueError(f"aggregate={aggregate!r} is unknown; accepted: 'mean', 'iqm'")

    def statistic(strata: list[np.ndarray]) -> np.ndarray:
        values = np.stack([per_seed(s) for s in strata], axis=1)  # (n_boot, seeds[, k])
        return values.mean(axis=1) if aggregate == "mean" else iqm(values, axis=1)

    return statistic


def _win_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """W[i, j] = 1 if x_i > y_j, 0.5 if equal, else 0: (n, m)."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of n episodes is drawn in each replicate: (n_boot, n); the same draws as
    ``stratified_bootstrap_samples`` (one rng.integers call of shape (n_boot, n))."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = idx + n * np.arange(n_boot)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def probability_of_improvement(
    x: Scores,
    y: Scores,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """P(X > Y) + 0.5 P(X = Y) with a stratified bootstrap interval, as in rliable.

    x, y: 1-D arrays (one seed), (seeds, episodes) arrays or lists of per-seed 1-D arrays;
    the same seeds in the same order (lengths may differ). The estimate is the mean over seeds of
    the per-seed Mann-Whitney probability. Each replicate resamples x and y independently within
    each seed (this statistic is unpaired; random draws: all x strata, then all y strata).
    """
    xs, ys = _as_strata(_one_seed_if_flat(x)), _as_strata(_one_seed_if_flat(y))
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} seeds but y has {len(ys)}; accepted: the same seeds for both")
    if any(s.ndim != 1 for s in xs + ys):
        raise ValueError("probability_of_improvement needs 1-D episode scores per seed")
    wins = [_win_matrix(a, b) for a, b in zip(xs, ys)]
    estimate = float(np.mean([w.mean() for w in wins]))
    # A replicate's P is sum_ij cx_i W_ij cy_j / (n m) with cx, cy the resample counts: no re-ranking.
    rng = np.random.default_rng(seed)
    x_counts = [_resample_counts(len(a), n_boot, rng) for a in xs]
    y_counts = [_resample_counts(len(b), n_boot, rng) for b in ys]
    replicates = np.mean(
        [((cx @ w) * cy).sum(axis=1) / w.size for cx, cy, w in zip(x_counts, y_counts, wins)], axis=0
    )
    return _percentile_interval(estimate, replicates, confidence)


def paired_difference_ci(
    x: Scores,
    y: Scores,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean paired difference x - y (e.g. 0/1 capture of two arms on the same episodes).

    x, y: (seeds, episodes) arrays or lists of per-seed 1-D arrays where x[s][e] and y[s][e]
    come from the same episode. The estimate is the mean of the pooled per-episode differences;
    each replicate resamples episode indices within each seed and applies them to both arms.
    """
    xs, ys = _as_strata(x), _as_strata(y)
    if [s.shape for s in xs] != [s.shape for s in ys]:
        raise ValueError(
            f"paired arrays disagree on shape: x {[s.shape for s in xs]}, y {[s.shape for s in ys]}; "
            "accepted: the same episodes (same count per seed) for both arms"
        )
    differences = [a - b for a, b in zip(xs, ys)]
    return stratified_bootstrap_ci(differences, "mean", n_boot, confidence, seed)


# ============================================================================================
# Issue 16: intervals that include training-seed variance, rare-event bounds, power, p-values.
#
# The evaluation is a crossed design: every training seed s of an arm plays the same E scenarios
# (env seeds) e of the held-out test split. A per-episode score is modelled as
#     y[s, e] = mu + seed[s] + scenario[e] + residual[s, e]
# with independent zero-mean effects of variances var_seed, var_scenario, var_residual. The
# scenario effect is shared by every seed and every arm (a hard scenario is hard for all), so
# the grand mean of one arm has
#     Var(mean) = var_seed / S + var_scenario / E + var_residual / (S E).
# Resampling episodes within fixed seeds (the stratified bootstrap above) estimates roughly only
# (var_scenario + var_residual) / (S E): it leaves out the seed term and divides the shared
# scenario term by S E instead of E. The intervals below estimate each term from the two-way
# ANOVA mean squares; the default turns the estimate into an interval with a generalized pivotal
# quantity (Weerahandi 1993), the alternative with a t quantile at Satterthwaite's df.

_RATE_METHODS = ("wilson", "clopper_pearson")

CROSSED_MEAN_METHOD = (
    "variance of the grand mean estimated from a two-way random-effects ANOVA "
    "(training-seed + shared-scenario + residual components)"
)
CROSSED_DIFFERENCE_METHOD = (
    "variance of the difference estimated from each arm's training-seed component "
    "(independent seeds) and the shared-scenario + residual variance of the per-scenario "
    "differences"
)
PAIRED_SEED_DIFFERENCE_METHOD = (
    "per-episode differences (arms share seeds); variance from a two-way "
    "random-effects ANOVA (training-seed + shared-scenario + residual)"
)
SEED_T_METHOD = "t interval over per-seed means (training seeds only; scenarios held fixed)"
BINARY_FLOOR_NOTE = "; widened to the episode-level score interval of the pooled counts where that was wider"


class CrossedInterval(NamedTuple):
    """An interval with the variance estimate behind it and a label saying what was estimated.

    estimate, low, high: the point estimate and the two-sided interval (score units).
    se:      the estimated standard error of ``estimate``.
    df:      Satterthwaite degrees of freedom of the variance estimate (the t quantile's df
             for method 'satterthwaite'; for 'generalized' the interval comes from simulated
             pivots and df only describes the estimate; ``inf``: no variance left).
    method:  a short text for the report: what was estimated or resampled.
    """

    estimate: float
    low: float
    high: float
    se: float
    df: float
    method: str

    @property
    def interval(self) -> Interval:
        return Interval(self.estimate, self.low, self.high)


class VarianceComponents(NamedTuple):
    """Two-way ANOVA (seed x scenario, one episode per cell) of a (S, E) score matrix.

    ms_seed, ms_scenario, ms_residual: mean squares with df S-1, E-1, (S-1)(E-1).
    var_seed, var_scenario, var_residual: method-of-moments components (may be negative from
    noise; not truncated here): (ms_seed - ms_residual) / E, (ms_scenario - ms_residual) / S,
    ms_residual.
    """

    n_seeds: int
    n_scenarios: int
    ms_seed: float
    ms_scenario: float
    ms_residual: float

    @property
    def var_seed(self) -> float:
        return (self.ms_seed - self.ms_residual) / self.n_scenarios

    @property
    def var_scenario(self) -> float:
        return (self.ms_scenario - self.ms_residual) / self.n_seeds

    @property
    def var_residual(self) -> float:
        return self.ms_residual


def rate_interval(successes, n, confidence: float = 0.95, method: str = "wilson") -> Interval:
    """Interval for a binomial proportion k / n; never [0, 0] for n > 0.

    successes, n: integer counts (scalars), 0 <= successes <= n.
    method: 'wilson' (score interval, Newcombe 1998 method 3) or 'clopper_pearson' (exact,
            method 5: guaranteed coverage, wider). 0/600 at 95 %: upper 0.64 % (Wilson) or
            0.61 % (Clopper-Pearson, 1 - 0.025^(1/600)).
    Returns Interval(k / n, low, high); n == 0 gives (nan, nan, nan): no information.
    """
    if method not in _RATE_METHODS:
        raise ValueError(f"method={method!r} is unknown; accepted: {', '.join(map(repr, _RATE_METHODS))}")
    _z(confidence)
    k, total = float(successes), float(n)
    if k != int(k) or total != int(total) or not 0 <= k <= total:
        raise ValueError(
            f"rate_interval needs integer counts 0 <= successes <= n; got successes={successes!r}, n={n!r}"
        )
    if total == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    if method == "wilson":
        low, high = wilson_interval(k, total, confidence)
    else:
        alpha = 1.0 - confidence
        low = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2.0, k, total - k + 1.0))
        high = 1.0 if k == total else float(sps.beta.ppf(1.0 - alpha / 2.0, k + 1.0, total - k))
    return Interval(k / total, float(low), float(high))


def newcombe_difference_interval(k1, n1, k2, n2, confidence: float = 0.95) -> Interval:
    """Hybrid score interval for p1 - p2 of two independent proportions (Newcombe 1998b, method 10).

    Combines the Wilson limits (l_i, u_i) of each proportion:
    low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).
    Not degenerate when both counts are 0 (0/n1 - 0/n2 gives [-u2, u1]).
    """
    e1, l1, u1 = rate_interval(k1, n1, confidence)
    e2, l2, u2 = rate_interval(k2, n2, confidence)
    d = e1 - e2
    return Interval(d, d - math.hypot(e1 - l1, u2 - e2), d + math.hypot(u1 - e1, e2 - l2))


def _as_crossed(scores, name: str) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(
            f"{name} has shape {x.shape}; accepted: (seeds, scenarios) with at least 2 seeds and 2 scenarios "
            "(with one seed use rate_interval or a scenario-level interval; seed variance is not estimable)"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"{name} holds non-finite scores; accepted: a complete (seeds, scenarios) matrix. For a metric "
            "defined on some episodes only (e.g. capture time of captured episodes) use seed_t_interval "
            "on per-seed means"
        )
    return x


def variance_components(scores) -> VarianceComponents:
    """Two-way ANOVA without replication of scores (S, E): seeds on axis 0, scenarios on axis 1."""
    x = _as_crossed(scores, "scores")
    n_seeds, n_scenarios = x.shape
    grand = x.mean()
    seed_means = x.mean(axis=1)
    scenario_means = x.mean(axis=0)
    residual = x - seed_means[:, None] - scenario_means[None, :] + grand
    return VarianceComponents(
        n_seeds,
        n_scenarios,
        ms_seed=float(n_scenarios * np.sum((seed_means - grand) ** 2) / (n_seeds - 1)),
        ms_scenario=float(n_seeds * np.sum((scenario_means - grand) ** 2) / (n_scenarios - 1)),
        ms_residual=float(np.sum(residual**2) / ((n_seeds - 1) * (n_scenarios - 1))),
    )


# A variance estimate is a set of mean squares and candidate linear combinations of them:
# mean_squares {name: (value, df)}; candidates [[(coefficient, name), ...], ...]. The first
# candidate is the full components estimate; the others are floors (each estimates a part of
# the variance), and the larger one is used.
MeanSquares = dict[str, tuple[float, float]]
Candidate = list[tuple[float, str]]

_INTERVAL_METHODS = ("generalized", "satterthwaite")
DEFAULT_DRAWS = 20000


def _satterthwaite(mean_squares: MeanSquares, candidate: Candidate) -> tuple[float, float]:
    """V = sum c_i MS_i and its Satterthwaite df (V^2 / sum (c_i MS_i)^2 / df_i)."""
    parts = [(c * mean_squares[name][0], mean_squares[name][1]) for c, name in candidate]
    variance = float(sum(v for v, _ in parts))
    denominator = sum(v * v / d for v, d in parts)
    return variance, (float(variance**2 / denominator) if denominator > 0 else float("inf"))


def _variance_interval(
    estimate: float,
    mean_squares: MeanSquares,
    candidates: list[Candidate],
    confidence: float,
    method: str,
    n_draws: int,
    seed: int,
    label: str,
) -> CrossedInterval:
    """estimate +- half-width from the variance estimate (largest candidate).

    'satterthwaite': t quantile at the Satterthwaite df of the largest candidate.
    'generalized':   generalized confidence interval (Weerahandi 1993, the generalized pivotal
                     quantity): each mean square MS with df d is replaced by its pivot
                     MS d / chi2_d, the variance V* is recomputed per draw (largest candidate,
                     truncated at 0) and the half-width is the ``confidence`` quantile of
                     |Z| sqrt(V*), Z standard normal. With the seed term alone this is exactly
                     the t_{S-1} interval; unlike Satterthwaite it does not get narrower when a
                     noisy seed mean square happens to be small (which made a 95 % interval
                     cover 93.6 % in the issue-16 simulation, 4000 repetitions; the generalized one 95.6 %).
    se and df are always the point variance's square root and its Satterthwaite df.
    """
    if method not in _INTERVAL_METHODS:
        raise ValueError(f"method={method!r} is unknown; accepted: {', '.join(map(repr, _INTERVAL_METHODS))}")
    _z(confidence)
    variance, df = max((_satterthwaite(mean_squares, c) for c in candidates), key=lambda vd: vd[0])
    variance = max(variance, 0.0)
    se = math.sqrt(variance)
    if method == "satterthwaite":
        half = (float(sps.t.ppf(0.5 + confidence / 2.0, df)) if np.isfinite(df) else _z(confidence)) * se
        text = label + "; t quantile at Satterthwaite df"
    else:
        if n_draws < 1000:
            raise ValueError(f"n_draws={n_draws} is too few for a tail quantile; accepted: >= 1000")
        rng = np.random.default_rng(seed)
        pivots = {
            name: (value * df_ / rng.chisquare(df_, n_draws) if np.isfinite(df_) else np.full(n_draws, value))
            for name, (value, df_) in mean_squares.items()
        }
        normal = np.abs(rng.standard_normal(n_draws))
        drawn = np.max([sum(c * pivots[name] for c, name in candidate) for candidate in candidates], axis=0)
        half = float(np.quantile(normal * np.sqrt(np.maximum(drawn, 0.0)), confidence))
        text = label + f"; generalized pivotal interval ({n_draws} seeded chi-square draws)"
    return CrossedInterval(float(estimate), float(estimate - half), float(estimate + half), se, df, text)


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _widen(interval: CrossedInterval, floor: Interval, bounds: tuple[float, float]) -> CrossedInterval:
    """The union of a 0/1 outcome's interval and its episode-level score interval, clipped to
    the values a rate (bounds (0, 1)) or a difference of rates ((-1, 1)) can take: with few
    events the symmetric t-type interval can reach below 0, which no rate can."""
    low, high = max(interval.low, bounds[0]), min(interval.high, bounds[1])
    method = interval.method
    if floor.low < low or floor.high > high:
        low, high, method = min(low, floor.low), max(high, floor.high), method + BINARY_FLOOR_NOTE
    return interval._replace(low=low, high=high, method=method)


def _one_arm_variance(c: VarianceComponents, tag: str = "") -> tuple[MeanSquares, list[Candidate]]:
    """Mean squares and candidates for Var(grand mean) of one crossed (S, E) design."""
    s, e = c.n_seeds, c.n_scenarios
    n = s * e
    mean_squares = {
        f"seed{tag}": (c.ms_seed, s - 1.0),
        f"scenario{tag}": (c.ms_scenario, e - 1.0),
        f"residual{tag}": (c.ms_residual, (s - 1.0) * (e - 1.0)),
    }
    full = [(1 / n, f"seed{tag}"), (1 / n, f"scenario{tag}"), (-1 / n, f"residual{tag}")]
    return mean_squares, [full, [(1 / n, f"seed{tag}")], [(1 / n, f"scenario{tag}")]]


def crossed_mean_interval(
    scores,
    confidence: float = 0.95,
    binary_floor: bool = True,
    method: str = "generalized",
    n_draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> CrossedInterval:
    """Interval for one arm's mean score over training seeds and shared test scenarios.

    scores: (S, E) per-episode scores, row s = training seed, column e = scenario (env seed);
            every seed plays the same E scenarios in the same column order. 0/1 outcomes give a
            rate; real scores (capture time, correction) are in their own units.
    Variance of the grand mean: (MS_seed + MS_scenario - MS_residual) / (S E) (= var_seed / S +
    var_scenario / E + var_residual / (S E)), but never less than MS_seed / (S E) (the seed-level
    t variance) nor MS_scenario / (S E). method: 'generalized' (default; see
    ``_variance_interval``; n_draws and seed fix its Monte Carlo) or 'satterthwaite'.
    binary_floor: for 0/1 scores, widen to at least the Wilson interval of the pooled counts, so
            that 0 events still give an upper bound (e.g. 0 / 2250 -> [0, 0.17 %]), and clip to
            [0, 1].
    """
    x = _as_crossed(scores, "scores")
    mean_squares, candidates = _one_arm_variance(variance_components(x))
    result = _variance_interval(
        x.mean(), mean_squares, candidates, confidence, method, n_draws, seed, CROSSED_MEAN_METHOD
    )
    if binary_floor and _is_binary(x):
        result = _widen(result, rate_interval(int(x.sum()), x.size, confidence), (0.0, 1.0))
    return result


def crossed_difference_interval(
    a,
    b,
    paired_seeds: bool,
    confidence: float = 0.95,
    binary_floor: bool = True,
    method: str = "generalized",
    n_draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> CrossedInterval:
    """Interval for mean(a) - mean(b), two arms played on the same E test scenarios.

    a: (Sa, E), b: (Sb, E) per-episode scores, columns = the same scenarios in the same order.
    paired_seeds: True when the arms come from the same checkpoints (row s of a and of b is one
            training seed, e.g. a policy with and without a post-hoc filter; needs Sa == Sb):
            then the per-episode differences a - b form one crossed design. False for arms of
            different algorithms (independent seeds): the variance is
            var_seed_a / Sa + var_seed_b / Sb + Var_e(mean_s a[s, e] - mean_s b[s, e]) / E,
            with each seed component (MS_seed - MS_residual) / E from that arm's ANOVA, and never
            less than the Welch variance of the seed means nor the per-scenario term alone.
    method, n_draws, seed: as in ``crossed_mean_interval``.
    binary_floor: for 0/1 scores, widen to at least an episode-level score interval of the
            pooled counts (Newcombe's hybrid score interval; for paired seeds applied to the
            discordant proportions), so that two arms with 0 events still give [-u, u], not [0, 0];
            and clip to [-1, 1].
    """
    x, y = _as_crossed(a, "a"), _as_crossed(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"a has {x.shape[1]} scenarios but b has {y.shape[1]}; accepted: the same test scenarios for both arms"
        )
    estimate = x.mean() - y.mean()
    binary = binary_floor and _is_binary(x) and _is_binary(y)
    if paired_seeds:
        if x.shape != y.shape:
            raise ValueError(f"paired_seeds=True needs the same seeds for both arms; got a {x.shape}, b {y.shape}")
        difference = x - y
        mean_squares, candidates = _one_arm_variance(variance_components(difference))
        result = _variance_interval(
            estimate, mean_squares, candidates, confidence, method, n_draws, seed, PAIRED_SEED_DIFFERENCE_METHOD
        )
        if binary:
            n = difference.size
            a_only, b_only = int(np.sum(difference > 0)), int(np.sum(difference < 0))
            result = _widen(result, newcombe_difference_interval(a_only, n, b_only, n, confidence), (-1.0, 1.0))
        return result
    ca, cb = variance_components(x), variance_components(y)
    (sa, e), sb = x.shape, y.shape[0]
    per_scenario = x.mean(axis=0) - y.mean(axis=0)  # (E,)
    mean_squares = {
        "scenario_difference": (float(per_scenario.var(ddof=1)), e - 1.0),
        "seed_a": (ca.ms_seed, sa - 1.0),
        "residual_a": (ca.ms_residual, (sa - 1.0) * (e - 1.0)),
        "seed_b": (cb.ms_seed, sb - 1.0),
        "residual_b": (cb.ms_residual, (sb - 1.0) * (e - 1.0)),
    }
    na, nb = sa * e, sb * e
    scenario_term = (1 / e, "scenario_difference")
    full = [scenario_term, (1 / na, "seed_a"), (-1 / na, "residual_a"), (1 / nb, "seed_b"), (-1 / nb, "residual_b")]
    welch = [(1 / na, "seed_a"), (1 / nb, "seed_b")]
    result = _variance_interval(
        estimate, mean_squares, [full, welch, [scenario_term]], confidence, method, n_draws, seed,
        CROSSED_DIFFERENCE_METHOD,
    )
    if binary:
        floor = newcombe_difference_interval(int(x.sum()), x.size, int(y.sum()), y.size, confidence)
        result = _widen(result, floor, (-1.0, 1.0))
    return result


CROSSED_RATIO_METHOD = (
    "ratio of sums (e.g. steps with an event / steps); variance of its linearisation "
    "(num - R den) / mean den from a two-way random-effects ANOVA (training-seed + "
    "shared-scenario + residual)"
)


def crossed_ratio_interval(
    numerator,
    denominator,
    confidence: float = 0.95,
    count_floor: bool = True,
    method: str = "generalized",
    n_draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> CrossedInterval:
    """Interval for a ratio of sums over a crossed design, e.g. a per-step rate.

    numerator, denominator: (S, E) per-episode totals (e.g. steps with an infeasible QP, and
            episode length in steps), rows = training seeds, columns = the shared scenarios.
    The estimate is R = sum(numerator) / sum(denominator). Its variance is that of the mean of
    the linearised scores z = (numerator - R denominator) / mean(denominator) (the delta
    method), estimated as in ``crossed_mean_interval``; with equal denominators this is exactly
    ``crossed_mean_interval(numerator / denominator)``.
    count_floor: for integer counts with numerator <= denominator, widen to at least the Wilson
            interval of the pooled counts (so 0 events give an upper bound; steps within an
            episode are correlated, so that floor alone would be too narrow) and clip to [0, 1].
    """
    num, den = _as_crossed(numerator, "numerator"), _as_crossed(denominator, "denominator")
    if num.shape != den.shape:
        raise ValueError(f"numerator {num.shape} and denominator {den.shape} must be the same (seeds, scenarios)")
    if np.any(den < 0) or den.sum() <= 0:
        raise ValueError("denominator must be >= 0 with a positive total (e.g. episode lengths in steps)")
    ratio = num.sum() / den.sum()
    linearised = (num - ratio * den) / den.mean()
    mean_squares, candidates = _one_arm_variance(variance_components(linearised))
    result = _variance_interval(
        ratio, mean_squares, candidates, confidence, method, n_draws, seed, CROSSED_RATIO_METHOD
    )
    counts = np.all(num == np.round(num)) and np.all(den == np.round(den)) and np.all((num >= 0) & (num <= den))
    if count_floor and counts:
        result = _widen(result, rate_interval(int(num.sum()), int(den.sum()), confidence), (0.0, 1.0))
    return result


def _t_interval(estimate: float, variance: float, df: float, confidence: float, label: str) -> CrossedInterval:
    se = math.sqrt(variance)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df)) * se
    return CrossedInterval(float(estimate), float(estimate - half), float(estimate + half), se, float(df), label)


def seed_t_interval(seed_means, confidence: float = 0.95) -> CrossedInterval:
    """Student t interval over per-seed scores (S,): mean +- t_{S-1} sd / sqrt(S).

    The cross-check for ``crossed_mean_interval``: it sees seed variance but treats the
    scenarios as fixed (the shared-scenario component is left out).
    """
    values = np.asarray(seed_means, dtype=float)
    if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
        raise ValueError(f"seed_means has shape {values.shape}; accepted: (seeds,) finite values, at least 2 seeds")
    _z(confidence)
    return _t_interval(values.mean(), values.var(ddof=1) / values.size, values.size - 1, confidence, SEED_T_METHOD)


def seed_t_difference_interval(a_seed_means, b_seed_means, paired: bool, confidence: float = 0.95) -> CrossedInterval:
    """Seed-level t interval of mean(a) - mean(b): paired t over per-seed differences (same
    checkpoints) or Welch's t (independent seeds). a (Sa,), b (Sb,) per-seed scores."""
    x, y = np.asarray(a_seed_means, dtype=float), np.asarray(b_seed_means, dtype=float)
    if paired:
        if x.shape != y.shape:
            raise ValueError(f"paired=True needs the same seeds; got a {x.shape}, b {y.shape}")
        return seed_t_interval(x - y, confidence)._replace(method="paired " + SEED_T_METHOD)
    for name, v in (("a_seed_means", x), ("b_seed_means", y)):
        if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} has shape {v.shape}; accepted: (seeds,) finite values, at least 2 seeds")
    _z(confidence)
    mean_squares = {"a": (x.var(ddof=1), x.size - 1.0), "b": (y.var(ddof=1), y.size - 1.0)}
    variance, df = _satterthwaite(mean_squares, [(1 / x.size, "a"), (1 / y.size, "b")])
    return _t_interval(x.mean() - y.mean(), variance, df, confidence, "Welch " + SEED_T_METHOD)


# --------------------------------------------------------------------------------------------
# Power of a comparison of two arms with independent training seeds


def _check_power_inputs(seed_sd: float, alpha: float, power: float | None = None) -> None:
    if not (np.isfinite(seed_sd) and seed_sd > 0):
        raise ValueError(f"seed_sd={seed_sd!r} must be a positive finite standard deviation (score units)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r} must lie strictly between 0 and 1 (e.g. 0.05)")
    if power is not None and not alpha / 2.0 < power < 1.0:
        raise ValueError(f"power={power!r} must lie strictly between alpha/2 and 1 (e.g. 0.8)")


def _check_seed_count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 2:
        raise ValueError(f"{name}={value!r} must be an integer >= 2 (a seed SD needs two seeds per arm)")
    return int(value)


def _t_design(n_seeds, n_arms_seeds, paired: bool) -> tuple[float, int]:
    """(standard error of the difference per unit seed SD, df) of the seed-level t test."""
    na = _check_seed_count("n_seeds", n_seeds)
    if paired:
        if n_arms_seeds is not None and n_arms_seeds != na:
            raise ValueError(f"n_arms_seeds={n_arms_seeds!r} with paired=True; accepted: None or n_seeds={na}")
        return 1.0 / math.sqrt(na), na - 1
    nb = na if n_arms_seeds is None else _check_seed_count("n_arms_seeds", n_arms_seeds)
    return math.sqrt(1.0 / na + 1.0 / nb), na + nb - 2


def power_at(
    seed_sd: float,
    delta: float,
    n_seeds: int,
    alpha: float = 0.05,
    n_arms_seeds: int | None = None,
    paired: bool = False,
) -> float:
    """Power of the two-sided seed-level t test of a difference ``delta`` between two arms.

    seed_sd: SD of one seed's score (e.g. its capture rate on the test episodes used, so it
             includes that episode noise; the scenario effect all arms share cancels in the
             comparison), in score units. delta: true difference (same units).
    n_seeds, n_arms_seeds: seeds of arm a and of arm b (default: the same). Independent seeds:
    two-sample t with df = na + nb - 2, noncentrality delta / (seed_sd sqrt(1/na + 1/nb)).
    paired=True (arms from the same checkpoints): seed_sd is the SD of the per-seed
    differences, paired t with df = n - 1, noncentrality delta sqrt(n) / seed_sd.
    Exact, from the noncentral t.
    """
    _check_power_inputs(seed_sd, alpha)
    unit_se, df = _t_design(n_seeds, n_arms_seeds, paired)
    noncentrality = abs(delta) / (seed_sd * unit_se)
    critical = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    power = float(sps.nct.sf(critical, df, noncentrality) + sps.nct.cdf(-critical, df, noncentrality))
    if not np.isfinite(power):
        # scipy's noncentral t returns nan far in the tail (e.g. df 998, noncentrality 118),
        # where the normal approximation is exact to many digits.
        power = float(sps.norm.sf(critical - noncentrality) + sps.norm.cdf(-critical - noncentrality))
    return power


def power_analysis(
    seed_sd: float,
    n_seeds: int,
    alpha: float = 0.05,
    power: float = 0.8,
    n_arms_seeds: int | None = None,
    paired: bool = False,
) -> float:
    """Minimum detectable difference between two arms (score units).

    The smallest true difference that the two-sided seed-level t test at level ``alpha``
    detects with probability ``power``; see ``power_at`` for the inputs (independent seeds by
    default). For large df it tends to (z_{1-alpha/2} + z_power) seed_sd sqrt(1/na + 1/nb)
    (2.80 sigma sqrt(2/n) at 5 %, 80 %).
    """
    _check_power_inputs(seed_sd, alpha, power)
    unit_se, _ = _t_design(n_seeds, n_arms_seeds, paired)
    scale = seed_sd * unit_se
    # power_at rises monotonically in delta from ~alpha; at df >= 1 and power < 1 - 1e-6 the
    # root lies well below 1000 standard errors.
    return float(
        brentq(
            lambda d: power_at(seed_sd, d, n_seeds, alpha, n_arms_seeds, paired) - power,
            0.0,
            1e3 * scale,
            xtol=1e-12 * scale,
        )
    )


def _crossed_variance_terms(a, b, paired_seeds: bool) -> list[tuple[float, float]]:
    """The candidates of `crossed_difference_interval`'s variance as functions of the seeds per
    arm n, each (fixed, per_seed): fixed + per_seed / n (see `crossed_difference_variance_at`).
    The variance components are estimated once here, so a search over n reuses them."""
    x, y = _as_crossed(a, "a"), _as_crossed(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a has {x.shape[1]} scenarios but b has {y.shape[1]}; accepted: the same test scenarios")
    e = x.shape[1]
    if paired_seeds:
        if x.shape != y.shape:
            raise ValueError(f"paired_seeds=True needs the same seeds for both arms; got a {x.shape}, b {y.shape}")
        c = variance_components(x - y)
        seed, residual = (c.ms_seed - c.ms_residual) / e, c.ms_residual
        scenario = (c.ms_scenario - c.ms_residual) / c.n_seeds
        # full, then the floors: the seed-level variance, the per-scenario term
        return [(scenario / e, seed + residual / e), (0.0, seed + residual / e), (scenario / e, residual / e)]
    ca, cb = variance_components(x), variance_components(y)
    per_scenario = float((x.mean(axis=0) - y.mean(axis=0)).var(ddof=1))
    residual = ca.ms_residual + cb.ms_residual
    interaction = per_scenario - ca.ms_residual / ca.n_seeds - cb.ms_residual / cb.n_seeds
    seeds = (ca.ms_seed - ca.ms_residual + cb.ms_seed - cb.ms_residual) / e
    return [(interaction / e, seeds + residual / e), (0.0, (ca.ms_seed + cb.ms_seed) / e),
            (interaction / e, residual / e)]


def _variance_at(terms: list[tuple[float, float]], n: int) -> float:
    return max(*(fixed + per_seed / n for fixed, per_seed in terms), 0.0)


def crossed_difference_variance_at(a, b, paired_seeds: bool, n_seeds: int) -> float:
    """Var(mean(a) - mean(b)) of `crossed_difference_interval`'s design with `n_seeds` training
    seeds per arm and the same E test scenarios, from the variance components a (Sa, E) and b
    (Sb, E) show. At n_seeds = Sa = Sb it is that interval's point variance (se^2).

    Independent seeds: var_seed_a / n + var_seed_b / n + (var_interaction + (var_residual_a +
    var_residual_b) / n) / E, with var_seed = (MS_seed - MS_residual) / E per arm and the arm x
    scenario interaction var_interaction = Var_e(per-scenario difference) - MS_residual_a / Sa -
    MS_residual_b / Sb: a term more seeds do not shrink. Paired seeds (the same checkpoints):
    var_seed / n + var_scenario / E + var_residual / (n E) of the difference a - b. As the
    interval does, never less than its floors (the seed-level variance, the per-scenario term)
    scaled to n seeds, and never below 0."""
    n = _check_seed_count("n_seeds", n_seeds)
    return _variance_at(_crossed_variance_terms(a, b, paired_seeds), n)


def crossed_seeds_needed(a, b, paired_seeds: bool, delta: float, alpha: float = 0.05, power: float = 0.8,
                         max_seeds: int = 10_000) -> int | None:
    """Smallest number of training seeds per arm at which a two-sided test at level ``alpha`` of
    the crossed difference (a, b as in ``crossed_difference_interval``, the same E scenarios)
    detects a true difference ``delta`` with probability ``power``: noncentral t with
    noncentrality delta / sqrt(``crossed_difference_variance_at``(n)) and the seed-level df
    (2n - 2; n - 1 paired), an approximation of the Satterthwaite df the interval itself has
    (fewer than 2n - 2 when one arm's seed spread dominates, about E - 1 for paired arms whose
    scenario term dominates). None when no n up to ``max_seeds`` reaches it (the arm x scenario
    term, which more seeds do not shrink, is too large for ``delta`` at these E scenarios)."""
    _check_power_inputs(1.0, alpha, power)
    if not (np.isfinite(delta) and delta != 0):
        raise ValueError(f"delta={delta!r} must be a non-zero finite difference (score units)")

    terms = _crossed_variance_terms(a, b, paired_seeds)

    def reaches(n: int) -> bool:
        variance = _variance_at(terms, n)
        if variance <= 0:
            return True
        df = n - 1 if paired_seeds else 2 * n - 2
        critical, shift = float(sps.t.ppf(1.0 - alpha / 2.0, df)), abs(delta) / math.sqrt(variance)
        reached = float(sps.nct.sf(critical, df, shift) + sps.nct.cdf(-critical, df, shift))
        if not np.isfinite(reached):  # scipy's noncentral t far in the tail: the normal is exact there
            reached = float(sps.norm.sf(critical - shift) + sps.norm.cdf(-critical - shift))
        return reached >= power

    if not reaches(max_seeds):
        return None
    low, high = 1, 2  # power rises with n (the variance falls, the df grow): double, then bisect
    while not reaches(high):
        low, high = high, min(2 * high, max_seeds)
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    return high


def seeds_needed(
    seed_sd: float,
    delta: float,
    alpha: float = 0.05,
    power: float = 0.8,
    max_seeds: int = 100_000,
    paired: bool = False,
) -> int:
    """Smallest number of seeds per arm (both arms equal; or of shared checkpoints when
    ``paired``) at which ``power_at`` >= ``power`` for a true difference ``delta`` (score
    units, e.g. 0.01 for 1 pp of capture)."""
    _check_power_inputs(seed_sd, alpha, power)
    if not (np.isfinite(delta) and delta != 0):
        raise ValueError(f"delta={delta!r} must be a non-zero finite difference (score units)")
    low, high = 1, 2  # power_at rises with n: double until it reaches ``power``, then bisect
    while power_at(seed_sd, delta, high, alpha, paired=paired) < power:
        if high >= max_seeds:
            raise ValueError(
                f"delta={delta!r} needs more than max_seeds={max_seeds} seeds per arm at seed_sd={seed_sd!r}"
            )
        low, high = high, min(2 * high, max_seeds)
    if high == 2:
        return 2
    while high - low > 1:
        middle = (low + high) // 2
        if power_at(seed_sd, delta, middle, alpha, paired=paired) >= power:
            high = middle
        else:
            low = middle
    return high


# --------------------------------------------------------------------------------------------
# Exact tests


def mcnemar_exact(a, b) -> float:
    """Exact two-sided McNemar test of paired 0/1 outcomes of two arms on the same episodes.

    a, b: (E,) booleans (e.g. capture of arm a and of arm b in episode e of one seed). Under
    H0 the discordant pairs split 50/50: the p-value is the two-sided binomial test of
    #(a and not b) out of the discordant count (1.0 when there is no discordant pair).
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a {x.shape} and b {y.shape} must be the same (episodes,) shape: paired outcomes")
    for name, v in (("a", x), ("b", y)):
        if not np.all((v == 0) | (v == 1)):
            raise ValueError(f"{name} holds values other than 0/1 or True/False; accepted: binary outcomes")
    x, y = x.astype(bool), y.astype(bool)
    a_only, b_only = int(np.sum(x & ~y)), int(np.sum(~x & y))
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    # Symmetric null (p = 1/2): twice the smaller tail, capped at 1.
    tail = min(sps.binom.cdf(a_only, discordant, 0.5), sps.binom.sf(a_only - 1, discordant, 0.5))
    return float(min(1.0, 2.0 * tail))


# `seed_permutation_test` enumerates every relabelling up to this many, else draws this many
PERMUTATION_MAX_EXACT = 200_000
PERMUTATION_RESAMPLES = 100_000


def seed_permutation_test(
    a_seed_scores, b_seed_scores, paired: bool, max_exact: int = PERMUTATION_MAX_EXACT,
    n_resamples: int = PERMUTATION_RESAMPLES, seed: int = 0
) -> float:
    """Two-sided permutation test of the difference in mean per-seed score between two arms.

    a_seed_scores (Sa,), b_seed_scores (Sb,): one score per training seed.
    paired=False (independent seeds): the statistic is mean(a) - mean(b) over all C(Sa+Sb, Sa)
        relabellings of the pooled seeds. paired=True (the same checkpoints; Sa == Sb): the
        mean per-seed difference over all 2^S sign flips.
    p = fraction of relabellings with |statistic| >= |observed| (the observed one included).
    Exact when the count is <= max_exact, else ``n_resamples`` seeded random relabellings with
    p = (1 + hits) / (1 + n_resamples). The smallest exact p is 2 / C(Sa+Sb, Sa) (2/252 for
    5 vs 5) or 2 / 2^S paired (1/16 for 5 seeds: 5 paired seeds can never reach p < 0.05).
    """
    x, y = np.asarray(a_seed_scores, dtype=float), np.asarray(b_seed_scores, dtype=float)
    for name, v in (("a_seed_scores", x), ("b_seed_scores", y)):
        if v.ndim != 1 or v.size < 1 or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} has shape {v.shape}; accepted: (seeds,) finite per-seed scores")
    rng = np.random.default_rng(seed)
    if paired:
        if x.shape != y.shape:
            raise ValueError(f"paired=True needs the same seeds; got a {x.shape}, b {y.shape}")
        difference = x - y
        n = difference.size
        if 2**n <= max_exact:
            signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)  # (2^n, n)
            exact = True
        else:
            signs = rng.choice([-1.0, 1.0], size=(n_resamples, n))
            exact = False
        statistics = np.abs(signs @ difference) / n
        observed = abs(difference.mean())
    else:
        pooled = np.concatenate([x, y])
        na, n = x.size, pooled.size
        if math.comb(n, na) <= max_exact:
            groups = np.array(list(itertools.combinations(range(n), na)))  # (C(n, na), na)
            exact = True
        else:
            groups = np.argsort(rng.random((n_resamples, n)), axis=1)[:, :na]
            exact = False
        total = pooled.sum()
        in_a = pooled[groups].sum(axis=1)
        statistics = np.abs(in_a / na - (total - in_a) / (n - na))
        observed = abs(x.mean() - y.mean())
    # Relabellings that tie the observed statistic count as "as extreme" despite float round-off.
    hits = int(np.sum(statistics >= observed - 1e-12 * max(1.0, observed)))
    return hits / statistics.size if exact else (1 + hits) / (1 + statistics.size)


# --------------------------------------------------------------------------------------------
# Probability of improvement, win rate, IQM, performance profile


class PairedWinRate(NamedTuple):
    """Episode-level win rate of arm a over arm b on the same (seed, scenario) episodes.

    estimate, low, high: P(a > b) + 0.5 P(a = b) over episodes and its crossed interval.
    wins, ties, losses: fractions of episodes (sum to 1). method: the interval's label.
    """

    estimate: float
    low: float
    high: float
    wins: float
    ties: float
    losses: float
    method: str


def paired_win_rate(a, b, confidence: float = 0.95, n_draws: int = DEFAULT_DRAWS, seed: int = 0) -> PairedWinRate:
    """Win rate of a over b episode by episode: a (S, E), b (S, E) scores of two arms that share
    seeds and scenarios (row s, column e is one episode of both arms; e.g. capture, or -time).

    Each episode scores 1 (a better), 0.5 (tie), 0 (b better); the estimate is their mean and the
    interval is ``crossed_mean_interval`` of those scores (seed and scenario components). With
    one seed (S = 1) seed variance is not estimable: a t interval over the E scenarios, labelled so.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] < 2 or not np.all(np.isfinite(x) & np.isfinite(y)):
        raise ValueError(
            f"a {x.shape} and b {y.shape} must be the same finite (seeds, scenarios) episodes, at least 2 scenarios"
        )
    score = (x > y) + 0.5 * (x == y)
    if x.shape[0] == 1:
        interval = seed_t_interval(score[0], confidence)._replace(
            method="one training seed: t over scenarios (seed variance not estimable)"
        )
    else:
        interval = crossed_mean_interval(score, confidence, binary_floor=False, n_draws=n_draws, seed=seed)
    return PairedWinRate(
        interval.estimate,
        interval.low,
        interval.high,
        float(np.mean(x > y)),
        float(np.mean(x == y)),
        float(np.mean(x < y)),
        "episode-level win rate P(a > b) + 0.5 P(a = b); " + interval.method,
    )


def run_level_probability_of_improvement(
    a_seed_scores, b_seed_scores, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """rliable's probability of improvement on one task: P(X > Y) + 0.5 P(X = Y) with X, Y
    the scores of a random training run of arm a and of arm b.

    a_seed_scores (Sa,), b_seed_scores (Sb,): one score per seed (e.g. its test capture rate).
    The interval is the percentile bootstrap resampling the runs of each arm (rliable's
    stratified bootstrap with one task); with 5 runs per arm it is coarse. Where every seed of a
    beats every seed of b (estimate 1) no resample can differ, and the interval is the
    distribution-free one of `separation_bound` instead (mirrored for estimate 0).
    """
    x, y = np.asarray(a_seed_scores, dtype=float), np.asarray(b_seed_scores, dtype=float)
    for name, v in (("a_seed_scores", x), ("b_seed_scores", y)):
        if v.ndim != 1 or v.size < 1 or not np.all(np.isfinite(v)):
            raise ValueError(f"{name} has shape {v.shape}; accepted: (seeds,) finite per-seed scores")
    interval = probability_of_improvement(x, y, n_boot, confidence, seed)
    if interval.estimate in (0.0, 1.0):
        low = separation_bound(x.size, y.size, confidence)
        return Interval(1.0, low, 1.0) if interval.estimate == 1.0 else Interval(0.0, 0.0, 1.0 - low)
    return interval


def separation_bound(m: int, n: int, confidence: float = 0.95) -> float:
    """The lower confidence bound of P(X > Y) + 0.5 P(X = Y) when every one of the m x n pairs of
    m draws of X and n of Y had X > Y (complete separation), for any distributions:
    ((1 - confidence) / 2) ** (1 / min(m, n)).

    Why: min(m, n) disjoint pairs (X_1, Y_1), ... are independent and each has X_i > Y_i with
    probability at most P, so complete separation has probability at most P^min(m, n); a P below
    the bound makes it rarer than (1 - confidence) / 2. The bound is attained (Y constant at 0,
    X = 1 with probability P and -1 otherwise, m <= n), so no distribution-free bound is higher:
    with 5 seeds per arm, 0.025^(1/5) = 0.478 at 95 %: complete separation of five runs alone does
    not show P > 1/2 without assumptions on the runs' distributions."""
    if min(m, n) < 1:
        raise ValueError(f"m={m}, n={n}; accepted: at least one draw of each")
    _z(confidence)
    return ((1.0 - confidence) / 2.0) ** (1.0 / min(m, n))


def iqm_trimmed(n: int) -> int:
    """How many of n values ``iqm`` (scipy's trim_mean at 0.25) drops from each end: int(0.25 n)."""
    return int(0.25 * n)


def iqm_trims(n: int) -> bool:
    """Whether ``iqm`` of n values drops anything (n >= 4); else the IQM equals the mean and the
    report should say so."""
    return iqm_trimmed(n) >= 1


def iqm_edge_bound(denominators, confidence: float = 0.95, events: int = 0) -> float:
    """A one-sided upper bound on the IQM of the seeds' true rates, for where the IQM's percentile
    bootstrap gives [0, 0]: no seed saw an event (events = 0), or the seeds that did are trimmed in
    every resample (events = their pooled count). Read 1 minus it as the lower bound where every
    resample gives 1 (events = the pooled non-events).

    denominators (S,): each seed's trials (episodes, or steps for a step rate); with the seeds held
    fixed (evaluation noise only, as the IQM's bootstrap), seed s has rate p_s over n_s trials.

    Why it holds: scipy's IQM keeps the middle S - 2t sorted values, t = int(0.25 S); each of the t
    largest is at least every kept value, so sum_s p_s >= (S - t) IQM. And sum_s p_s <= N pbar / min_s
    n_s, pbar = sum_s n_s p_s / N the pooled rate, N = sum_s n_s. The pooled count is a sum of
    independent trials with mean pbar, and its chance of at most k events is at most the
    binomial's with rate pbar wherever k <= N pbar - 1 (Hoeffding 1956, Theorem 4; for k = 0 simply
    prod_s (1 - p_s)^n_s <= (1 - pbar)^N, the log being concave). So the exact Clopper-Pearson
    bound on k of N bounds pbar at this confidence (it lies where N pbar >= k + 1; where it does
    not, the bound returned is 1, the trivial one), and

        IQM <= N * CP_high(k, N) / ((S - t) * min_s n_s),   capped at 1.

    With five seeds of 500 episodes and no event: 5/4 * (1 - 0.025^(1/2500)) = 0.184 % at 95 %."""
    n = np.asarray(denominators, dtype=float)
    if n.ndim != 1 or n.size == 0 or not np.all(n >= 1) or not np.all(n == np.round(n)):
        raise ValueError(f"denominators={denominators!r}; accepted: a non-empty 1-D array of trial counts >= 1")
    total, seeds = float(n.sum()), n.size
    if not (0 <= events <= total and events == int(events)):
        raise ValueError(f"events={events!r}; accepted: an integer count from 0 to the pooled trials ({total:.0f})")
    pooled_high = rate_interval(int(events), int(total), confidence, "clopper_pearson").high
    if total * pooled_high < events + 1:  # outside Hoeffding's condition: nothing proven
        return 1.0
    return min(1.0, total * pooled_high / ((seeds - iqm_trimmed(seeds)) * float(n.min())))


def performance_profile(seed_scores, thresholds) -> np.ndarray:
    """Run-score distribution (rliable): fraction of runs with score > tau for each tau.

    seed_scores (S,) per-seed scores of one arm; thresholds (T,) -> (T,) fractions in [0, 1].
    """
    scores = np.asarray(seed_scores, dtype=float)
    taus = np.asarray(thresholds, dtype=float)
    if scores.ndim != 1 or scores.size == 0 or taus.ndim != 1:
        raise ValueError(f"seed_scores {scores.shape} and thresholds {taus.shape} must be 1-D, seed_scores non-empty")
    return np.mean(scores[None, :] > taus[:, None], axis=1)
