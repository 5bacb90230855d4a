"""The decision protocol (issue 16; the Phase 2.5 plan, ../shared/PHASE2_5.md): pure functions
on validated episode tables, no files.

Rules written down before the run (their thresholds are params ``decision.*``; docs/DECISION.md
says the same in prose):

* **Splits.** A choice (the best-alternative rule here, the filter sweep elsewhere) reads dev
  rows only: ``require_split`` refuses any other frame. The verdict, the gates and the headline
  read test rows only.
* **Fixed sequence** (family-wise error <= (1 - confidence) / 2 one-sided, so <= 5 %): each
  hypothesis is tested at the full level only if every one before it was rejected; later ones
  are labelled exploratory once the sequence stops.
    H1  BarrierNet vs the unconstrained baseline: collision reduction >= min_collision_reduction
        AND capture non-inferior (difference > -noninferiority_margin); both one-sided at
        (1 - confidence) / 2, an intersection-union test, so its p-value is the larger one.
    H2  the best alternative (chosen on dev) vs the baseline: the same test.
    H3  BarrierNet vs the best alternative on capture: "better" (interval above 0), "worse"
        (below 0), "equivalent within +/- equivalence_margin: prefer the cheaper" (interval
        inside), else "inconclusive: needs about N seeds".
    H4+ every other safe arm vs the baseline (H1's test), in arm order.
* **Outcome A-D** (``choose_outcome``), gates PG-01..PG-05 (``gates``) and the decision matrix
  (``matrix_scores``) follow the plan, with its open cases closed by ``decision.open_case`` and
  ``decision.hybrid_rule``.

Intervals come from tasks.stats (crossed seed x scenario design); with one training seed the
seed variance is not estimable and the episode-level score interval is used, labelled so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from tasks import stats
from tasks.artifacts import CANDIDATE_ARM, REFERENCE_ARM  # noqa: F401  (protocol.REFERENCE_ARM: the arms it compares)
from tasks.params import DecisionParams
from tasks.stats import CrossedInterval, rate_interval

# The Phase 2.5 approaches and the arm that deploys each: A = CBF-Beta trained, RCBF-QP at
# deployment; B = BarrierNet end to end; C = BarrierNet trained, RCBF-QP at deployment.
APPROACH_ARMS = {"A": "cbf_beta_rcbf", "B": "barriernet", "C": "barriernet_rcbf"}
APPROACH_NAMES = {
    "A": "CBF-Beta in training -> RCBF-QP at deployment",
    "B": "BarrierNet end to end",
    "C": "hybrid: BarrierNet in training + RCBF-QP filter at deployment",
    "D": "both fail on safety: find the root cause, do not proceed",
}
# What each approach needs, counted from its definition (the complexity score's inputs):
# safety mechanisms across training and deployment, and whether it differentiates through a QP.
APPROACH_STRUCTURE = {"A": (2, False), "B": (1, True), "C": (2, True)}
SCORES = ("capture", "collision", "unsafe", "timeout")


class SplitLeakError(ValueError):
    """A function that makes a choice was handed rows of the held-out test split."""


# ---------------------------------------------------------------------------------------------
# Episode frames -> score matrices


def require_split(episodes: pd.DataFrame, split: str, who: str) -> None:
    """Refuse a frame holding any row whose ``split`` is not `split` (e.g. test rows in a choice)."""
    if "split" not in episodes.columns:
        raise SplitLeakError(f"{who}: the episode frame has no 'split' column; it may read {split} rows only")
    other = episodes["split"] != split
    if other.any():
        found = sorted(set(episodes.loc[other, "split"].astype(str)))
        raise SplitLeakError(
            f"{who} may read {split} rows only; got {int(other.sum())} rows of split {found} "
            f"(choices cite dev numbers only, the test split stays held out)"
        )


def episode_scores(frame: pd.DataFrame, score: str) -> np.ndarray:
    """Per-episode 0/1 score: capture, collision, timeout, or unsafe (a collision or any step
    with the env's body barrier h < 0, i.e. cbf_violation_steps > 0)."""
    if score == "unsafe":
        return ((frame["outcome"] == "collision") | (frame["cbf_violation_steps"] > 0)).to_numpy(float)
    if score in ("capture", "collision", "timeout"):
        return (frame["outcome"] == score).to_numpy(float)
    raise ValueError(f"score={score!r}; accepted: {list(SCORES)}")


def score_matrix(episodes: pd.DataFrame, arm: str, score: str) -> tuple[tuple[int, ...], np.ndarray]:
    """(seeds, scores (S, E)) of one arm: row = training seed, column = scenario (episode index).

    Every seed must have played the same episodes (a crossed design); raises ValueError naming
    the arm otherwise.
    """
    rows = episodes[episodes["arm"] == arm]
    if rows.empty:
        raise ValueError(f"arm '{arm}' has no episodes")
    values = rows.assign(_score=episode_scores(rows, score))
    table = values.pivot_table(index="seed", columns="episode", values="_score", aggfunc="first")
    if table.isna().any().any():
        raise ValueError(f"arm '{arm}': not every seed played the same episodes (the crossed design needs them)")
    return tuple(int(s) for s in table.index), table.to_numpy(float)


def shared_seeds(episodes: pd.DataFrame, a: str, b: str) -> bool:
    """Two arms share seeds when they come from the same training algorithm (one checkpoint each)."""
    algo_a = set(episodes.loc[episodes["arm"] == a, "algo"])
    algo_b = set(episodes.loc[episodes["arm"] == b, "algo"])
    return len(algo_a) == 1 and algo_a == algo_b


# ---------------------------------------------------------------------------------------------
# Intervals and one-sided p-values

ONE_SEED_MEAN = "one training seed: Wilson score interval of the pooled episodes (seed variance not estimable)"
ONE_SEED_DIFFERENCE = ("one training seed: Newcombe hybrid score interval of the pooled episodes "
                       "(seed variance not estimable)")


def _one_seed_interval(interval: stats.Interval, confidence: float, method: str) -> CrossedInterval:
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    se = (interval.high - interval.low) / (2 * z)
    return CrossedInterval(float(interval.estimate), float(interval.low), float(interval.high), se, math.inf, method)


def mean_interval(scores: np.ndarray, confidence: float) -> CrossedInterval:
    """Interval of one arm's rate from its (S, E) 0/1 scores; never [0, 0]."""
    if scores.shape[0] >= 2 and scores.shape[1] >= 2:
        return stats.crossed_mean_interval(scores, confidence)
    k, n = int(scores.sum()), scores.size
    return _one_seed_interval(rate_interval(k, n, confidence), confidence, ONE_SEED_MEAN)


def difference_interval(a: np.ndarray, b: np.ndarray, paired_seeds: bool, confidence: float) -> CrossedInterval:
    """Interval of mean(a) - mean(b) for two arms' (S, E) scores on the same scenarios."""
    if min(a.shape[0], b.shape[0]) >= 2 and a.shape[1] >= 2:
        return stats.crossed_difference_interval(a, b, paired_seeds and a.shape == b.shape, confidence)
    interval = stats.newcombe_difference_interval(int(a.sum()), a.size, int(b.sum()), b.size, confidence)
    return _one_seed_interval(interval, confidence, ONE_SEED_DIFFERENCE)


def _quantile(df: float, confidence: float) -> float:
    level = 0.5 + confidence / 2
    return float(sps.t.ppf(level, df)) if math.isfinite(df) else float(sps.norm.ppf(level))


def _cdf(x: float, df: float) -> float:
    return float(sps.t.cdf(x, df)) if math.isfinite(df) else float(sps.norm.cdf(x))


def p_above(ci: CrossedInterval, theta0: float, confidence: float) -> float:
    """One-sided p of H0: theta <= theta0, on the interval's lower half (so p < (1 - confidence) / 2
    exactly when ci.low > theta0, also where the interval was widened to a score interval)."""
    se = (ci.estimate - ci.low) / _quantile(ci.df, confidence)
    if not se > 0:
        return 0.0 if ci.estimate > theta0 else 1.0
    return 1.0 - _cdf((ci.estimate - theta0) / se, ci.df)


def p_below(ci: CrossedInterval, theta0: float, confidence: float) -> float:
    """One-sided p of H0: theta >= theta0, on the interval's upper half."""
    se = (ci.high - ci.estimate) / _quantile(ci.df, confidence)
    if not se > 0:
        return 0.0 if ci.estimate < theta0 else 1.0
    return _cdf((ci.estimate - theta0) / se, ci.df)


def interval_dict(ci: CrossedInterval | None) -> dict[str, Any] | None:
    if ci is None:
        return None
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "se": ci.se,
            "df": ci.df if math.isfinite(ci.df) else None, "method": ci.method}


# ---------------------------------------------------------------------------------------------
# Exact tests, win rate, power (tasks.stats), with the protocol's conventions


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p of paired 0/1 outcomes (E,) of two arms on the same episodes."""
    return float(stats.mcnemar_exact(np.asarray(a, bool), np.asarray(b, bool)))


def permutation_p(a: np.ndarray, b: np.ndarray, paired: bool) -> float:
    """Exact seed-level permutation p of per-seed scores a (Sa,), b (Sb,) (sign flips if paired)."""
    return float(stats.seed_permutation_test(a, b, paired=paired))


def win_rate(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> stats.PairedWinRate:
    """Paired-episode win rate of a over b, (S, E) each: wins + ties / 2, with its crossed interval."""
    return stats.paired_win_rate(a, b, confidence)


# per one-sided test of the equivalence step (TOST), for about 80 % power of the pair
EQUIVALENCE_SIDE_POWER = 0.9


def crossed_seeds_for(a: np.ndarray, b: np.ndarray, paired_seeds: bool, delta: float, confidence: float,
                      power: float = 0.8) -> int | None:
    """Seeds per arm at which the crossed difference of a (Sa, E) and b (Sb, E), on these E test
    scenarios, shows a margin `delta` with `power` when the true difference is 0: the planning
    number of a non-inferiority (or, per side, equivalence) step. A two-sided test at 1 -
    confidence has the one-sided alpha of the step, so `stats.crossed_seeds_needed` is that
    design's search. It uses the variance components the step's interval uses (seed, scenario
    and their interaction), so it is the number for the analysis the step runs, not for the
    seed-level t model of `seeds_for`. None with fewer than 2 seeds or scenarios per arm, or when
    no number of seeds reaches it (the arm x scenario term alone is too wide at E scenarios)."""
    if not _plannable(a, b):
        return None
    return stats.crossed_seeds_needed(a, b, paired_seeds and a.shape == b.shape, delta, alpha=1 - confidence,
                                      power=power)


def _plannable(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether arms a (Sa, E) and b (Sb, E) show a variance to plan from: 2 seeds each, 2 scenarios."""
    return min(a.shape[0], b.shape[0]) >= 2 and a.shape[1] >= 2


def _unplanned(a: np.ndarray, b: np.ndarray, power: float = 0.8) -> str:
    """Why `crossed_seeds_for` gives no number for these arms, if it gives none."""
    if not _plannable(a, b):
        return "fewer than 2 seeds or scenarios per arm: no variance to plan from"
    return (f"no number of seeds reaches {100 * power:g} % power on these test scenarios: the arms' "
            "scenario-by-scenario disagreement alone is too wide; more test scenarios would narrow it")


def seeds_for(seed_sd: float, delta: float, confidence: float, power: float = 0.8) -> int | None:
    """Seeds per arm to detect `delta` between two independent-seed arms at `power` (two-sided t)."""
    if not (seed_sd and seed_sd > 0 and delta > 0):
        return None
    return int(stats.seeds_needed(seed_sd, delta, alpha=1 - confidence, power=power))


def minimum_detectable(seed_sd: float, n_seeds: int, confidence: float, power: float = 0.8) -> float | None:
    """The difference two independent-seed arms of n_seeds each detect at `power` (two-sided t)."""
    if not (seed_sd and seed_sd > 0) or n_seeds < 2:
        return None
    return float(stats.power_analysis(seed_sd, n_seeds, alpha=1 - confidence, power=power))


def seed_sd(episodes: pd.DataFrame, arms: Iterable[str], score: str = "capture") -> float | None:
    """Pooled within-arm SD of the per-seed rates (the seed-level SD of the power analysis)."""
    squares, dof = 0.0, 0
    for arm in arms:
        if arm not in set(episodes["arm"]):
            continue
        _, x = score_matrix(episodes, arm, score)
        if x.shape[0] >= 2:
            means = x.mean(axis=1)
            squares += float(np.sum((means - means.mean()) ** 2))
            dof += x.shape[0] - 1
    return math.sqrt(squares / dof) if dof else None


# ---------------------------------------------------------------------------------------------
# The best alternative, chosen on dev


def choose_alternative(dev: pd.DataFrame, decision: DecisionParams) -> dict[str, Any]:
    """decision.alternative_rule on DEV rows only (a frame with any test row raises SplitLeakError).

    highest_dev_capture: among decision.alternatives present, those whose dev collision rate's
    Clopper-Pearson upper bound (pooled over seeds and episodes) is at most
    decision.alternative_max_collision qualify; the one with the highest dev capture rate is
    chosen (ties: the earlier in decision.alternatives). Returns {"chosen": arm or None,
    "candidates": [{arm, dev_episodes, dev_capture, dev_collision, dev_collision_upper, qualifies}]}.
    """
    require_split(dev, "dev", "choose_alternative")
    present = set(dev["arm"])
    candidates = []
    for arm in decision.alternatives:
        if arm not in present:
            continue
        rows = dev[dev["arm"] == arm]
        n = len(rows)
        captures, collisions = int(episode_scores(rows, "capture").sum()), int(episode_scores(rows, "collision").sum())
        upper = rate_interval(collisions, n, decision.confidence, "clopper_pearson").high
        candidates.append({"arm": arm, "dev_episodes": n, "dev_capture": captures / n, "dev_collision": collisions / n,
                           "dev_collision_upper": upper, "qualifies": bool(upper <= decision.alternative_max_collision)})
    qualified = [c for c in candidates if c["qualifies"]]
    chosen = max(qualified, key=lambda c: c["dev_capture"])["arm"] if qualified else None  # max keeps the first tie
    return {"rule": decision.alternative_rule, "chosen": chosen, "candidates": candidates,
            "max_collision_upper": decision.alternative_max_collision}


# ---------------------------------------------------------------------------------------------
# The fixed sequence


def _p_values(test: pd.DataFrame, arm: str, other: str, score: str, paired: bool) -> dict[str, Any]:
    """McNemar per seed (paired binary outcomes on the same scenarios) and the seed-level permutation test."""
    seeds_a, a = score_matrix(test, arm, score)
    seeds_b, b = score_matrix(test, other, score)
    rows = min(a.shape[0], b.shape[0])
    mcnemar = [mcnemar_p(a[i] > 0, b[i] > 0) for i in range(rows)]
    permutation = None
    if a.shape[0] >= 2 and b.shape[0] >= 2 and (not paired or a.shape == b.shape):
        permutation = permutation_p(a.mean(axis=1), b.mean(axis=1), paired)
    return {
        "mcnemar_per_seed": mcnemar,
        "mcnemar_family": f"the {rows} per-seed tests of this comparison (seed i of each arm, same scenarios); "
                          "Bonferroni: compare the smallest with 0.05 / seeds",
        "mcnemar_bonferroni_min": min(1.0, min(mcnemar) * rows) if mcnemar else None,
        "permutation": permutation,
        "permutation_family": ("the hypotheses of the fixed sequence (exact over all sign flips of per-seed "
                               "differences)" if paired else
                               "the hypotheses of the fixed sequence (exact over all relabellings of per-seed rates)"),
    }


def safe_vs_baseline(test: pd.DataFrame, arm: str, decision: DecisionParams) -> dict[str, Any]:
    """H1-type test of one safe arm against the baseline on test rows (see the module docstring)."""
    require_split(test, "test", "safe_vs_baseline")
    conf, R, M = decision.confidence, decision.min_collision_reduction, decision.noninferiority_margin
    paired = shared_seeds(test, arm, REFERENCE_ARM)
    _, col_a = score_matrix(test, arm, "collision")
    _, col_b = score_matrix(test, REFERENCE_ARM, "collision")
    _, cap_a = score_matrix(test, arm, "capture")
    _, cap_b = score_matrix(test, REFERENCE_ARM, "capture")
    collision = difference_interval(col_a, col_b, paired, conf)
    capture = difference_interval(cap_a, cap_b, paired, conf)
    p_collision = p_below(collision, -R, conf)  # H0: the cut is smaller than R
    p_capture = p_above(capture, -M, conf)  # H0: capture drops by M or more
    alpha = (1 - conf) / 2
    # the planning number of a study that would settle non-inferiority (see crossed_seeds_for);
    # none where the capture loss is shown to exceed the margin: more seeds would only confirm it
    inferior = p_below(capture, -M, conf) < alpha
    needed = None if inferior else crossed_seeds_for(cap_a, cap_b, paired, M, conf)
    note = None
    if inferior:
        note = "capture is shown lower by more than the margin: more seeds would not show non-inferiority"
    elif needed is None:
        note = _unplanned(cap_a, cap_b)
    return {
        "kind": "vs_baseline", "arm": arm, "against": REFERENCE_ARM, "paired_seeds": paired,
        "collision_diff": interval_dict(collision), "capture_diff": interval_dict(capture),
        "p_collision_reduction": p_collision, "p_capture_noninferior": p_capture,
        "seeds_for_noninferiority": needed, "seeds_for_noninferiority_note": note,
        "p": max(p_collision, p_capture),  # intersection-union: both must be rejected
        "collision_reduction_shown": bool(p_collision < alpha),
        "capture_noninferior_shown": bool(p_capture < alpha),
        "rejected": bool(max(p_collision, p_capture) < alpha),
        "capture": _p_values(test, arm, REFERENCE_ARM, "capture", paired),
        "collision": _p_values(test, arm, REFERENCE_ARM, "collision", paired),
    }


def versus_alternative(test: pd.DataFrame, alternative: str, decision: DecisionParams,
                       candidate: str = CANDIDATE_ARM) -> dict[str, Any]:
    """H3: BarrierNet vs the chosen alternative on test capture: better / equivalent / worse / inconclusive."""
    require_split(test, "test", "versus_alternative")
    conf, m = decision.confidence, decision.equivalence_margin
    alpha = (1 - conf) / 2
    paired = shared_seeds(test, candidate, alternative)
    _, a = score_matrix(test, candidate, "capture")
    _, b = score_matrix(test, alternative, "capture")
    diff = difference_interval(a, b, paired, conf)
    p_better, p_worse = p_above(diff, 0.0, conf), p_below(diff, 0.0, conf)
    p_equivalent = max(p_above(diff, -m, conf), p_below(diff, m, conf))  # TOST
    sd = seed_sd(test, [candidate, alternative])
    # equivalence needs both one-sided tests: 90 % power each gives about 80 % for the pair at a
    # true difference of 0 (their failures barely overlap)
    needed = crossed_seeds_for(a, b, paired, m, conf, power=EQUIVALENCE_SIDE_POWER)
    if p_better < alpha:
        answer = "better"
    elif p_worse < alpha:
        answer = "worse"
    elif p_equivalent < alpha:
        answer = f"equivalent within +/- {100 * m:g} pp: prefer the cheaper"
    else:
        answer = (f"inconclusive: needs about {needed} seeds per arm (80 % power to show equivalence within "
                  f"+/- {100 * m:g} pp if the true difference were 0, on these test scenarios)" if needed else
                  f"inconclusive: {_unplanned(a, b)}")
    collision = difference_interval(score_matrix(test, candidate, "collision")[1],
                                    score_matrix(test, alternative, "collision")[1], paired, conf)
    return {
        "kind": "vs_alternative", "arm": candidate, "against": alternative, "paired_seeds": paired,
        "capture_diff": interval_dict(diff), "collision_diff": interval_dict(collision),
        "p_better": p_better, "p_worse": p_worse, "p_equivalent": p_equivalent,
        "p": min(p_better, p_worse, p_equivalent), "answer": answer, "rejected": bool(not answer.startswith("incon")),
        "seeds_needed": needed, "seed_sd": sd,
        "capture": _p_values(test, candidate, alternative, "capture", paired),
    }


def fixed_sequence(test: pd.DataFrame, chosen: str | None, decision: DecisionParams,
                   arms: Sequence[str]) -> list[dict[str, Any]]:
    """The verdict's hypotheses in their fixed order, each marked confirmatory or exploratory."""
    require_split(test, "test", "fixed_sequence")
    present = [a for a in arms if a in set(test["arm"])]
    steps: list[dict[str, Any]] = []
    if REFERENCE_ARM not in present:
        return steps
    if CANDIDATE_ARM in present:
        steps.append({"id": "H1", **safe_vs_baseline(test, CANDIDATE_ARM, decision)})
    if chosen is not None and chosen in present:
        steps.append({"id": "H2", **safe_vs_baseline(test, chosen, decision)})
        if CANDIDATE_ARM in present:
            steps.append({"id": "H3", **versus_alternative(test, chosen, decision)})
    others = [a for a in present if a not in (REFERENCE_ARM, CANDIDATE_ARM, chosen)]
    for i, arm in enumerate(others, start=4):
        steps.append({"id": f"H{i}", **safe_vs_baseline(test, arm, decision)})
    going = True
    for step in steps:
        step["confirmatory"] = going
        going = going and step["rejected"]
    return steps


# ---------------------------------------------------------------------------------------------
# Gap, hybrid, safety counts


def train_deploy_gap(test: pd.DataFrame, train_arm: str, deploy_arm: str, confidence: float) -> dict[str, Any] | None:
    """|capture_train - capture_deploy| / capture_train for the same checkpoints on the same test
    episodes, with an interval from the paired crossed difference divided by capture_train's
    estimate (its own uncertainty is left out: second order next to the difference's)."""
    present = set(test["arm"])
    if train_arm not in present or deploy_arm not in present:
        return None
    _, a = score_matrix(test, train_arm, "capture")
    _, b = score_matrix(test, deploy_arm, "capture")
    diff = difference_interval(a, b, shared_seeds(test, train_arm, deploy_arm), confidence)
    base = float(a.mean())
    if base <= 0:
        return {"train_arm": train_arm, "deploy_arm": deploy_arm, "gap": None, "low": None, "high": None,
                "note": f"{train_arm} never captured: the relative gap is undefined"}
    if diff.low > 0:
        low, high = diff.low, diff.high
    elif diff.high < 0:
        low, high = -diff.high, -diff.low
    else:
        low, high = 0.0, max(abs(diff.low), abs(diff.high))
    return {"train_arm": train_arm, "deploy_arm": deploy_arm, "gap": abs(diff.estimate) / base,
            "low": low / base, "high": high / base, "capture_train": base, "capture_deploy": float(b.mean()),
            "method": "paired crossed difference / capture_train; " + diff.method}


def unsafe_counts(test: pd.DataFrame, arm: str, confidence: float) -> dict[str, Any]:
    """Test episodes with a collision or a body-barrier violation, with the Clopper-Pearson upper bound."""
    rows = test[test["arm"] == arm]
    k, n = int(episode_scores(rows, "unsafe").sum()), len(rows)
    collisions = int(episode_scores(rows, "collision").sum())
    interval = rate_interval(k, n, confidence, "clopper_pearson")
    return {"arm": arm, "unsafe": k, "collisions": collisions, "episodes": n, "rate": interval.estimate,
            "upper": interval.high, "method": "Clopper-Pearson on pooled test episodes"}


# ---------------------------------------------------------------------------------------------
# Learning curves: plateau (PG-05) and training-time safety


def mean_curve(curves: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Seeds' (step, value) curves -> the mean at each logged step (seeds that logged there)."""
    curves = [c for c in curves if len(c)]
    if not curves:
        return pd.DataFrame({"step": [], "value": []})
    table = pd.concat(curves)
    return table.groupby("step", as_index=False)["value"].mean().sort_values("step")


def plateau_test(curves: Sequence[pd.DataFrame], decision: DecisionParams) -> dict[str, Any]:
    """PG-05: the seeds' mean training capture in the last `plateau_window` of steps against the
    window before it; converged when they differ by at most `plateau_tolerance`."""
    curve = mean_curve(curves)
    if len(curve) < 4:
        return {"converged": None, "note": "fewer than 4 logged points: no plateau test possible"}
    top, w = float(curve["step"].max()), decision.plateau_window
    last = curve[curve["step"] > top * (1 - w)]["value"]
    before = curve[(curve["step"] > top * (1 - 2 * w)) & (curve["step"] <= top * (1 - w))]["value"]
    if last.empty or before.empty:
        return {"converged": None, "note": "a window holds no logged point: no plateau test possible"}
    change = float(last.mean() - before.mean())
    return {"converged": bool(abs(change) <= decision.plateau_tolerance), "last_mean": float(last.mean()),
            "previous_mean": float(before.mean()), "change": change, "window": w,
            "tolerance": decision.plateau_tolerance}


def training_collisions(collision_curve: pd.DataFrame, episode_curve: pd.DataFrame | None) -> dict[str, float]:
    """Cumulative training collisions of one run from its DVCLive curves: sum over logged windows of
    collision_rate x episodes ended in the window (exact when every window is logged), and the
    area under the collision-rate curve per env step (trapezoid / steps: the mean rate)."""
    steps = collision_curve["step"].to_numpy(float)
    rate = collision_curve["value"].to_numpy(float)
    out: dict[str, float] = {}
    if len(steps) >= 2:
        trapezoid = float(np.sum((rate[1:] + rate[:-1]) / 2 * np.diff(steps)))
        out["mean_rate"] = trapezoid / float(steps[-1] - steps[0])
    elif len(steps) == 1:
        out["mean_rate"] = float(rate[0])
    if episode_curve is not None and len(episode_curve):
        merged = collision_curve.merge(episode_curve, on="step", suffixes=("_rate", "_episodes"))
        out["collisions"] = float(np.sum(merged["value_rate"] * merged["value_episodes"]))
        out["episodes"] = float(np.sum(merged["value_episodes"]))
    return out


# ---------------------------------------------------------------------------------------------
# Outcome A-D, decision matrix, gates

# Score 5..1 by thresholds on a measured number (lower is better for each): the first bound the
# number does not exceed gives 5, the next 4, ...; above all bounds gives 1.
SCORE_BOUNDS = {
    "gap": (0.02, 0.05, 0.10, 0.20),  # train-deploy gap: stretch, goal, 2x, 4x goal
    "safety": (0.01, 0.02, 0.05, 0.10),  # upper bound of the unsafe-episode rate on test
    "task": (0.01, 0.05, 0.10, 0.20),  # relative capture loss vs the baseline: -, stretch, goal, 2x
    "training_speed": (1.5, 3.0, 5.0, 10.0),  # training wall clock / CBF-Beta's: -, stretch, goal, 2x
}


def score(criterion: str, value: float | None) -> int | None:
    if value is None or not math.isfinite(value):
        return None
    if criterion == "complexity":  # value = mechanisms + (1 if a differentiable QP); 2 -> 5, 3 -> 4, ...
        return int(max(1, min(5, 7 - value)))
    for points, bound in zip((5, 4, 3, 2), SCORE_BOUNDS[criterion]):
        if value <= bound:
            return points
    return 1


def matrix_scores(measures: dict[str, dict[str, float | None]], weights: dict[str, float]) -> dict[str, dict[str, Any]]:
    """measures: approach -> {gap, safety, task, training_speed, complexity} measured numbers
    (see SCORE_BOUNDS); returns approach -> {criterion: score, "total": weighted mean 1-5 or None}."""
    out = {}
    total_weight = sum(weights.values())
    for approach, values in measures.items():
        row: dict[str, Any] = {c: score(c, values.get(c)) for c in weights}
        complete = all(row[c] is not None for c in weights)
        row["total"] = sum(weights[c] * row[c] for c in weights) / total_weight if complete else None
        out[approach] = row
    return out


@dataclass
class OutcomeFacts:
    """What the outcome rule reads (all from test episodes, except the wall-clock overhead)."""

    safe: dict[str, bool | None]  # approach -> passes PG-02 (None: its arm was not evaluated)
    gap_a: dict[str, Any] | None = None  # train_deploy_gap(cbf_beta, cbf_beta_rcbf)
    overhead: float | None = None  # BarrierNet training wall clock / CBF-Beta's
    totals: dict[str, float | None] = field(default_factory=dict)  # decision-matrix totals
    hybrid_noninferior: bool | None = None  # barriernet_rcbf capture non-inferior to barriernet


class Outcome(NamedTuple):
    letter: str  # "A", "B", "C" or "D"
    arm: str | None  # the arm that deploys the chosen approach
    reasons: list[str]


def choose_outcome(facts: OutcomeFacts, decision: DecisionParams) -> Outcome:
    """The plan's outcome rules, with its open cases closed by params (docs/DECISION.md).

    1. D when no evaluated approach passes PG-02 (safety).
    2. The plan: A when the CBF-Beta gap is below gap_goal (its interval's upper end) and
       BarrierNet trains more than overhead_goal x slower; B when the gap is above gap_goal (the
       interval's lower end) and the overhead is below overhead_goal. Otherwise (an open case:
       both small, both large, or the gap interval straddles the goal) decision.open_case =
       "matrix": the approach with the higher decision-matrix total (ties: A, the cheaper to
       train; a total missing: the approach that has one, B when neither has). Without
       CBF-Beta's arms (no gap) or without a measured overhead: B.
    3. Safety overrides: a chosen approach that fails PG-02 gives way. decision.hybrid_rule =
       "fixes_safety": B that fails PG-02 becomes C when BarrierNet + RCBF passes it with capture
       non-inferior; else the other of A/B that passes; else C if it passes; else D.
    """
    safe = facts.safe
    reasons: list[str] = []
    if not any(safe.get(x) for x in "ABC"):
        evaluated = [f"{x} ({APPROACH_ARMS[x]})" for x in "ABC" if safe.get(x) is not None]
        return Outcome("D", None, [f"no evaluated approach passes PG-02: {', '.join(evaluated) or 'none evaluated'}"])
    gap, overhead, g = facts.gap_a, facts.overhead, decision.overhead_goal
    if gap is None or gap.get("gap") is None or overhead is None:
        letter = "B"
        reasons.append("the plan's A-vs-B rule needs CBF-Beta's gap and the training overhead; "
                       f"{'the gap is not measured' if gap is None or gap.get('gap') is None else 'no overhead'}: "
                       "B, the only approach measured end to end")
    else:
        small, large, slow = gap["high"] < decision.gap_goal, gap["low"] > decision.gap_goal, overhead > g
        text = (f"CBF-Beta gap {100 * gap['gap']:.2f} % [{100 * gap['low']:.2f}, {100 * gap['high']:.2f}], "
                f"overhead {overhead:.2f}x (goal {100 * decision.gap_goal:g} %, {g:g}x)")
        if small and slow:
            letter = "A"
            reasons.append(f"plan rule A: gap below the goal and BarrierNet > {g:g}x slower: {text}")
        elif large and not slow:
            letter = "B"
            reasons.append(f"plan rule B: gap above the goal and overhead below {g:g}x: {text}")
        else:
            ta, tb = facts.totals.get("A"), facts.totals.get("B")
            if ta is None or tb is None:
                letter = "B" if (tb is not None or ta is None) else "A"
            else:
                letter = "A" if ta >= tb else "B"
            reasons.append(f"open case ({text}); decision.open_case = matrix: totals A {ta}, B {tb} -> {letter}")
    if not safe.get(letter):
        if letter == "B" and decision.hybrid_rule == "fixes_safety" and safe.get("C") and facts.hybrid_noninferior:
            reasons.append("BarrierNet fails PG-02 while BarrierNet + RCBF filter passes it with capture "
                           "non-inferior: decision.hybrid_rule = fixes_safety -> C")
            letter = "C"
        else:
            other = "A" if letter == "B" else "B"
            fallback = other if safe.get(other) else ("C" if safe.get("C") else None)
            reasons.append(f"{letter} fails PG-02 (or was not evaluated): "
                           + (f"{fallback} passes it -> {fallback}" if fallback else "nothing else passes -> D"))
            letter = fallback or "D"
    return Outcome(letter, APPROACH_ARMS.get(letter), reasons)


def two_digit_places(value: float) -> int:
    """Decimals that print |value| (> 0) with two significant digits: 3 for 0.0123, 5 for 0.000037."""
    return 1 - math.floor(math.log10(abs(value)))


def percent(x: float) -> str:
    """A rate in percent with 2 decimals, or 2 significant digits in fixed notation where that would
    print a positive rate as zero (a zero count's upper bound must read as a bound, not as 0; a rare
    event's rate must not read as none): "0.15 %", "0.0037 %", never "3.7e-05 %"."""
    value, decimals = 100 * float(x), 2
    if 0 < abs(value) < 0.005:
        decimals = two_digit_places(value)
    return f"{value:.{decimals}f} %"


def gates(*, gap_a: dict[str, Any] | None, barriernet_present: bool, chosen_unsafe: dict[str, Any] | None,
          outcome: Outcome, matrix_complete: bool, p_values_complete: bool, plateau: dict[str, Any] | None,
          decision: DecisionParams) -> list[dict[str, str]]:
    """PG-01..PG-05: [{"gate", "status" (PASS / FAIL / DOCUMENTED), "evidence"}]."""
    rows = []
    gap_ok = gap_a is not None and gap_a.get("gap") is not None
    if gap_ok:
        gap_text = f"{100 * gap_a['gap']:.2f} % [{100 * gap_a['low']:.2f}, {100 * gap_a['high']:.2f}]"
    elif gap_a is not None:
        gap_text = "not measurable: " + gap_a.get("note", "undefined")
    else:
        gap_text = "not measured (arms cbf_beta / cbf_beta_rcbf absent)"
    rows.append({"gate": "PG-01", "status": "PASS" if gap_ok and barriernet_present else "FAIL",
                 "evidence": f"CBF-Beta gap {gap_text}; BarrierNet 0 by construction"
                             + ("" if barriernet_present else " (not evaluated)")})
    if chosen_unsafe is None:
        rows.append({"gate": "PG-02", "status": "FAIL", "evidence": "no approach chosen (outcome D)"})
    else:
        ok = chosen_unsafe["unsafe"] <= decision.max_unsafe_episodes
        rows.append({"gate": "PG-02", "status": "PASS" if ok else "FAIL",
                     "evidence": f"{chosen_unsafe['arm']}: {chosen_unsafe['unsafe']} of {chosen_unsafe['episodes']} "
                                 f"test episodes with a collision or body-barrier violation (allowed "
                                 f"{decision.max_unsafe_episodes}); 95 % upper bound {percent(chosen_unsafe['upper'])}"})
    rows.append({"gate": "PG-03", "status": "PASS" if outcome.letter in "ABC" else "FAIL",
                 "evidence": f"outcome {outcome.letter}: {APPROACH_NAMES[outcome.letter]}"})
    rows.append({"gate": "PG-04", "status": "PASS" if matrix_complete and p_values_complete else "FAIL",
                 "evidence": f"decision matrix {'complete' if matrix_complete else 'incomplete'}; p-values "
                             f"{'computed for every step' if p_values_complete else 'missing'}"})
    if plateau is None or plateau.get("converged") is None:
        rows.append({"gate": "PG-05", "status": "FAIL",
                     "evidence": (plateau or {}).get("note", "no BarrierNet learning curve")})
    elif plateau["converged"]:
        rows.append({"gate": "PG-05", "status": "PASS",
                     "evidence": f"plateau: training capture {plateau['previous_mean']:.3f} -> {plateau['last_mean']:.3f} "
                                 f"over the last two {100 * plateau['window']:g} % windows (|change| <= "
                                 f"{plateau['tolerance']:g})"})
    else:
        rows.append({"gate": "PG-05", "status": "DOCUMENTED",
                     "evidence": f"not converged: training capture changed by {plateau['change']:+.3f} between the "
                                 f"last two {100 * plateau['window']:g} % windows (> {plateau['tolerance']:g}); "
                                 "documented as a failure to plateau at this budget"})
    return rows
