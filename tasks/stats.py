"""Statistics for the comparison stage: Wilson intervals, stratified bootstrap, probability of
improvement and paired differences. Pure numpy/scipy functions, no files, no pandas.

Conventions
-----------
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

from typing import Callable, Mapping, NamedTuple, Sequence, Union

import numpy as np
from scipy import stats as sps

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
]

Scores = Union[np.ndarray, Sequence[np.ndarray]]
# A bootstrap statistic maps the resampled per-seed arrays, each (n_boot, n_s, ...), to (n_boot,).
Statistic = Callable[[list[np.ndarray]], np.ndarray]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float


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
        # Clip float round-off (e.g. k == n gives high = 1 + 1e-16).
        low = np.clip(centre - half, 0.0, 1.0)
        high = np.clip(centre + half, 0.0, 1.0)
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
