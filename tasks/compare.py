"""The `compare` stage: per-episode evaluation tables -> summary table, metrics and the verdict.

Inputs (written by the evaluate stage), one per training algorithm and seed::

    results/eval/<algo>-s<seed>/episodes.csv      columns: tasks.artifacts.EPISODE_COLUMNS, one row per (arm, split, episode)

Episode ``e`` of a split is the same start / obstacles / evader randomness for every arm and every
training seed: a crossed design seeds x scenarios. Dev rows feed only the choice of the best
alternative (tasks.decision.choose_alternative, which refuses test rows); the summary, the
headline and the verdict read test rows only ("choices cite dev numbers only").

Outputs (each written atomically: temp file in the same folder, then ``os.replace``; all inputs
are validated before anything is written, so a bad input leaves earlier outputs intact)::

    results/compare/summary.csv    TEST split: one row per (arm, seed) with aggregate "per_seed",
                                   plus rows seed="all" with aggregate "mean" and "iqm"; columns
                                   arm, seed, aggregate, seeds, episodes, steps, and for each metric
                                   in METRICS: <metric>, <metric>_low, <metric>_high
    results/compare/metrics.json   {"confidence", "seeds", "test_split", "dev_split",
                                    "interval_methods" (what each interval resampled or estimated),
                                    "arms": {arm: headline numbers}, "alternative_choice" (dev numbers),
                                    "sequence" (the fixed sequence H1.. with intervals and p-values),
                                    "safety" (unsafe test episodes and upper bounds), "gap", "hybrid",
                                    "power", "run_level", "decision": {"verdict", "verdict_code",
                                    "reasons", margins}}. No wall-clock number: the file must be
                                   byte-identical across machines (the report adds timings).

Intervals (all at ``params.decision.confidence``; ``interval_methods`` labels each):
* per-seed rows: Wilson for rates (on episodes; step rates on steps, descriptive: steps within an
  episode are correlated), percentile bootstrap over the seed's episodes for return and decision ms.
* seed="all" mean rows: capture / collision / timeout and return from the crossed seed x scenario
  design (tasks.stats.crossed_mean_interval, never [0, 0] for a rate); step rates pooled over steps
  with tasks.stats.crossed_ratio_interval (delta method, Wilson floor); decision ms: t over the
  per-seed values. IQM rows: stratified bootstrap within seeds (evaluation noise only); IQM trims
  only with >= 4 seeds; a count whose every resample is 0 (no event in any seed, or only in
  trimmed seeds) gets the one-sided bound of tasks.stats.iqm_edge_bound instead of [0, 0].

The verdict is ``verdict_of`` over tasks.decision.fixed_sequence; its module docstring states the rules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import pandas as pd

from tasks import io
from tasks import decision as protocol
from tasks.artifacts import (
    CANDIDATE_ARM,
    KNOWN_ARMS,
    METRICS_PATH,
    REFERENCE_ARM,
    SUMMARY_PATH,
    StageInputError,
    episodes_path,
    read_episode_table,
)
from tasks.params import DecisionParams, Params
from tasks.stats import (
    DEFAULT_DRAWS,
    Interval,
    across_seeds,
    crossed_mean_interval,
    crossed_ratio_interval,
    iqm_edge_bound,
    rate_interval,
    run_level_probability_of_improvement,
    seed_t_interval,
    stratified_bootstrap_cis,
    wilson_interval,
)

# The episode table's columns, its reader, the paths and StageInputError are the stages'
# contract: tasks/artifacts.py.
__all__ = [
    "METRICS",
    "load_episodes",
    "split_rows",
    "summarise",
    "verdict_of",
    "run",
]

# ---------------------------------------------------------------------------------------------
# Reading and validating the episode tables


def load_episodes(params: Params, workdir: Path) -> pd.DataFrame:
    """Read every ``episodes.csv`` of params.train.algos x params.train.seeds; keep params.eval.arms.

    Every problem in every file is collected into one StageInputError before it is raised.
    """
    frames, problems = [], []
    for algo in params.train.algos:
        for seed in params.train.seeds:
            try:
                frames.append(read_episode_table(episodes_path(workdir, algo, seed), algo, seed))
            except StageInputError as exc:
                problems.append(str(exc))
    if problems:
        raise StageInputError("compare: bad inputs:\n  " + "\n  ".join(problems))
    episodes = pd.concat(frames, ignore_index=True)
    twice = episodes.duplicated(["arm", "seed", "split", "episode"])
    if twice.any():
        rows = list(episodes.loc[twice, ["arm", "seed", "split", "episode"]].itertuples(index=False, name=None))[:3]
        raise StageInputError(
            f"compare: (arm, seed, episode) rows appear in more than one episode table, e.g. {rows}; "
            "accepted: each arm evaluated once per seed"
        )
    return episodes[episodes["arm"].isin(params.eval.arms)].reset_index(drop=True)


def split_rows(episodes: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split ('dev' or 'test'); choices get dev rows, the verdict test rows."""
    return episodes[episodes["split"] == split].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Metrics: each is a ratio sum(numerator) / sum(denominator) over a seed's episodes


class Metric(NamedTuple):
    numerator: Callable[[pd.DataFrame], np.ndarray]
    denominator: Callable[[pd.DataFrame], np.ndarray]
    interval: Literal["wilson", "bootstrap"]  # interval of a per-seed row


def _ones(df: pd.DataFrame) -> np.ndarray:
    return np.ones(len(df))


def _is(outcome: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda df: (df["outcome"] == outcome).to_numpy(float)


def _col(name: str) -> Callable[[pd.DataFrame], np.ndarray]:
    return lambda df: df[name].to_numpy(float)


METRICS: dict[str, Metric] = {
    "capture_rate": Metric(_is("capture"), _ones, "wilson"),  # per episode
    "collision_rate": Metric(_is("collision"), _ones, "wilson"),
    "timeout_rate": Metric(_is("timeout"), _ones, "wilson"),
    "cbf_violation_rate": Metric(_col("cbf_violation_steps"), _col("length"), "wilson"),  # per step, body barrier
    # per step, the look-ahead-point barrier the QP enforces (conservative by design: not a gate)
    "enforced_violation_rate": Metric(_col("enforced_violation_steps"), _col("length"), "wilson"),
    # per episode: any body-barrier violation in it
    "episode_violation_rate": Metric(lambda df: (df["cbf_violation_steps"].to_numpy() > 0).astype(float), _ones,
                                     "wilson"),
    "intervention_rate": Metric(_col("interventions"), _col("length"), "wilson"),
    "infeasible_rate": Metric(_col("infeasible_steps"), _col("length"), "wilson"),
    "mean_return": Metric(_col("return"), _ones, "bootstrap"),  # per episode
    # mean QP correction per step, in normalised action units |(dv / v_max, dw / w_max)|
    "mean_correction": Metric(_col("correction_sum"), _col("length"), "bootstrap"),
    # mean steps to capture over captured episodes (times env.dt: seconds)
    "capture_steps": Metric(lambda df: np.where(df["outcome"].to_numpy() == "capture", df["length"].to_numpy(float), 0.0),
                            _is("capture"), "bootstrap"),
    # decision_ms is a per-episode mean; weighting by length gives the mean over all decisions.
    "decision_ms": Metric(lambda df: df["decision_ms"].to_numpy(float) * df["length"].to_numpy(float),
                          _col("length"), "bootstrap"),
}
# Wall-clock numbers stay in summary.csv and the report but not in metrics.json: `dvc repro -f`
# must reproduce identical metrics, and no two runs take the same time.
WALL_CLOCK_METRICS = ("decision_ms",)
HEADLINE_METRICS = (
    "capture_rate",
    "collision_rate",
    "cbf_violation_rate",
    "enforced_violation_rate",
    "episode_violation_rate",
    "intervention_rate",
    "infeasible_rate",
    "mean_correction",
    "capture_steps",
    "decision_ms",
    "mean_return",
)


def ratio_of_sums(numerator, denominator) -> np.ndarray:
    """numerator / denominator elementwise, NaN where the denominator is 0: steps to capture of a
    seed (or a resample) with no capture, whose numerator is 0 too. Undefined, not an error, so no
    "invalid value" warning."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)[()]


def _ratio(pairs: np.ndarray) -> np.ndarray:
    """(n_boot, n, [metrics,] 2) numerator/denominator pairs -> (n_boot[, metrics]) ratio of sums."""
    return ratio_of_sums(pairs[..., 0].sum(axis=1), pairs[..., 1].sum(axis=1))


def _pairs(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(episodes, len(names), 2): each metric's numerator and denominator per episode."""
    return np.stack(
        [np.stack([METRICS[n].numerator(df), METRICS[n].denominator(df)], axis=1) for n in names], axis=1
    )


EPISODE_RATES = {"capture_rate": "capture", "collision_rate": "collision", "timeout_rate": "timeout"}
STEP_RATES = ("cbf_violation_rate", "enforced_violation_rate", "episode_violation_rate", "intervention_rate",
              "infeasible_rate")
# Ratios of sums that are not counts of events (no Wilson floor): correction per step, steps per capture.
RATIO_MEANS = ("mean_correction", "capture_steps")
# crossed_mean_interval / crossed_ratio_interval at their default method (tasks/stats.py)
GENERALIZED = f"generalized pivotal interval ({DEFAULT_DRAWS} seeded chi-square draws)"
STEP_RATE_METHOD = ("crossed seed x scenario design for a ratio of sums pooled over seeds (steps with the event / "
                    "steps): delta-method linearisation, two-way random-effects variance, " + GENERALIZED
                    + ", widened to at least the pooled Wilson interval on steps; with no event in any step the "
                    "variance estimate is 0 and the interval is that Wilson bound alone, which counts correlated "
                    "steps as independent (too narrow: descriptive; the episode share's bound, on episodes, holds)")
RETURN_METHOD = ("crossed seed x scenario design: two-way random-effects variance of the per-episode returns, "
                 + GENERALIZED)
SEED_MEAN_METHOD = "t interval over the per-seed means (training seeds; scenarios held fixed)"
IQM_METHOD = ("percentile bootstrap resampling episodes within each seed (seeds held fixed: evaluation noise "
              "only, training-seed variance not included); a rate whose every resample gave 0 (no event in any seed, "
              "or only in trimmed seeds): the one-sided bound N CP(k of N) / ((seeds - int(seeds / 4)) x the smallest "
              "seed's N), k of N the pooled events and episodes (steps for step rates, counted as independent: "
              "descriptive), which the IQM of the seeds' rates cannot exceed (tasks.stats.iqm_edge_bound)")
PER_SEED_METHOD = ("one seed: Wilson on episodes (capture, collision, timeout, episodes with a body-barrier "
                   "violation) or on steps (step rates, correlated within an episode: descriptive); return, QP "
                   "correction per step, steps to capture and decision ms: percentile bootstrap over the seed's "
                   "episodes")
# A share of episodes, computed by the step rates' ratio-of-sums interval with one per episode below
EPISODE_SHARE_METHOD = ("crossed seed x scenario design for the share of episodes (a ratio of sums, one per "
                        "episode): delta-method linearisation, two-way random-effects variance, " + GENERALIZED
                        + ", widened to at least the pooled Wilson interval on episodes")


def interval_methods(n_seeds: int) -> dict[str, str]:
    """What each seed="all", aggregate="mean" interval estimated or resampled (the report prints it)."""
    methods = {}
    for name in METRICS:
        if name in EPISODE_RATES:
            methods[name] = protocol.ONE_SEED_MEAN if n_seeds < 2 else (
                "crossed seed x scenario design: two-way random-effects variance (training seeds + shared test "
                "scenarios + residual), " + GENERALIZED + ", widened to at least the pooled Wilson interval")
        elif name == "episode_violation_rate":
            methods[name] = EPISODE_SHARE_METHOD if n_seeds >= 2 else "one seed: Wilson on the pooled episodes"
        elif name in STEP_RATES:
            methods[name] = STEP_RATE_METHOD if n_seeds >= 2 else "one seed: Wilson on the pooled steps"
        elif name in RATIO_MEANS:
            methods[name] = ("crossed seed x scenario design for a ratio of sums pooled over seeds: delta-method "
                             "linearisation, two-way random-effects variance, " + GENERALIZED if n_seeds >= 2 else
                             "one seed: percentile bootstrap over episodes")
        elif name == "mean_return":
            methods[name] = RETURN_METHOD if n_seeds >= 2 else "one seed: percentile bootstrap over episodes"
        else:
            methods[name] = SEED_MEAN_METHOD if n_seeds >= 2 else "one seed: percentile bootstrap over episodes"
    methods["iqm"] = IQM_METHOD
    methods["per_seed"] = PER_SEED_METHOD
    return methods


def _across_seed_interval(name: str, arm: str, test: pd.DataFrame, per_seed: np.ndarray, sums: np.ndarray,
                          conf: float, one_seed: Interval | None) -> Interval:
    """The seed="all" mean row's interval of one metric (see interval_methods)."""
    if name in EPISODE_RATES:
        ci = protocol.mean_interval(protocol.score_matrix(test, arm, EPISODE_RATES[name])[1], conf)
        return Interval(ci.estimate, ci.low, ci.high)
    estimate = float(per_seed.mean())
    if len(per_seed) < 2:
        if name in STEP_RATES:  # pooled steps, as the seed's own row
            return Interval(sums[0] / sums[1], *rate_interval(int(round(sums[0])), int(round(sums[1])), conf)[1:])
        return one_seed if one_seed is not None else Interval(estimate, np.nan, np.nan)
    if name in STEP_RATES or name in RATIO_MEANS or name == "mean_return":
        rows = test[test["arm"] == arm]
        numerator, denominator = METRICS[name].numerator(rows), METRICS[name].denominator(rows)
        frame = rows[["seed", "episode"]].assign(n=numerator, d=denominator)
        n_matrix = frame.pivot(index="seed", columns="episode", values="n").to_numpy(float)
        d_matrix = frame.pivot(index="seed", columns="episode", values="d").to_numpy(float)
        if n_matrix.shape[1] >= 2:
            if name in STEP_RATES:
                ci = crossed_ratio_interval(n_matrix, d_matrix, conf)
            elif name in RATIO_MEANS:
                if d_matrix.sum() <= 0:  # e.g. no capture at all: no mean capture time
                    return Interval(np.nan, np.nan, np.nan)
                ci = crossed_ratio_interval(n_matrix, d_matrix, conf, count_floor=False)
            else:
                ci = crossed_mean_interval(n_matrix, conf, binary_floor=False)
            return Interval(ci.estimate, ci.low, ci.high)
    ci = seed_t_interval(per_seed, conf)
    return Interval(estimate, ci.low, ci.high)


def summarise(episodes: pd.DataFrame, decision: DecisionParams) -> pd.DataFrame:
    """The summary table (module docstring) of validated, arm-filtered TEST episodes."""
    protocol.require_split(episodes, "test", "summarise")
    conf, n_boot, boot_seed = decision.confidence, decision.bootstrap_samples, decision.bootstrap_seed
    names = list(METRICS)
    bootstrapped = [n for n in names if METRICS[n].interval == "bootstrap"]
    rows = []
    for arm in [a for a in KNOWN_ARMS if a in set(episodes["arm"])]:
        arm_rows = episodes[episodes["arm"] == arm]
        seeds = sorted(arm_rows["seed"].unique())
        by_seed = {s: arm_rows[arm_rows["seed"] == s].sort_values("episode") for s in seeds}
        per_seed_values, one_seed_boot = [], {}
        for s in seeds:
            df = by_seed[s]
            row: dict[str, Any] = {"arm": arm, "seed": str(s), "aggregate": "per_seed", "seeds": 1,
                                   "episodes": len(df), "steps": int(df["length"].sum())}
            sums = _pairs(df, names).sum(axis=0)  # (metrics, 2)
            for name, (numerator, denominator) in zip(names, sums):
                low, high = wilson_interval(numerator, denominator, conf) if METRICS[name].interval == "wilson" else (
                    np.nan, np.nan)
                row.update({name: ratio_of_sums(numerator, denominator), f"{name}_low": low, f"{name}_high": high})
            # One stratum: a plain percentile bootstrap over this seed's episodes.
            intervals = stratified_bootstrap_cis([_pairs(df, bootstrapped)], across_seeds(_ratio), n_boot, conf,
                                                 boot_seed)
            for name, interval in zip(bootstrapped, intervals):
                row.update({f"{name}_low": interval.low, f"{name}_high": interval.high})
                one_seed_boot[name] = interval
            per_seed_values.append([row[n] for n in names])
            rows.append(row)
        values = np.asarray(per_seed_values, float)  # (seeds, metrics)
        pooled = _pairs(arm_rows, names).sum(axis=0)  # (metrics, 2)
        mean_row: dict[str, Any] = {"arm": arm, "seed": "all", "aggregate": "mean", "seeds": len(seeds),
                                    "episodes": len(arm_rows), "steps": int(arm_rows["length"].sum())}
        for j, name in enumerate(names):
            interval = _across_seed_interval(name, arm, episodes, values[:, j], pooled[j], conf,
                                             one_seed_boot.get(name) if len(seeds) == 1 else None)
            mean_row.update({name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high})
        rows.append(mean_row)
        strata = [_pairs(by_seed[s], names) for s in seeds]
        iqm_row = {"arm": arm, "seed": "all", "aggregate": "iqm", "seeds": len(seeds),
                   "episodes": len(arm_rows), "steps": int(arm_rows["length"].sum())}
        intervals = stratified_bootstrap_cis(strata, across_seeds(_ratio, "iqm"), n_boot, conf, boot_seed)
        seed_sums = np.stack([pairs.sum(axis=0) for pairs in strata])  # (seeds, metrics, 2)
        for j, (name, interval) in enumerate(zip(names, intervals)):
            low, high = interval.low, interval.high
            # a count whose every resample gave 0 (or 1): no seed, or only trimmed seeds, saw an
            # event (a non-event); the bootstrap says nothing there, the pooled bound does
            if (name in EPISODE_RATES or name in STEP_RATES) and low == high and low in (0.0, 1.0):
                events, trials = seed_sums[:, j, 0], seed_sums[:, j, 1]
                if np.all(trials >= 1):
                    counted = events.sum() if low == 0.0 else (trials - events).sum()
                    bound = iqm_edge_bound(trials, conf, int(round(counted)))
                    low, high = (0.0, bound) if low == 0.0 else (1.0 - bound, 1.0)
            iqm_row.update({name: interval.estimate, f"{name}_low": low, f"{name}_high": high})
        rows.append(iqm_row)
    columns = ["arm", "seed", "aggregate", "seeds", "episodes", "steps"]
    columns += [f"{m}{suffix}" for m in METRICS for suffix in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# The verdict: the fixed sequence of tasks.decision on test rows, the alternative chosen on dev

# Numeric, so `dvc metrics diff` shows a change.
VERDICT_CODES = {"BETTER": 2, "EQUIVALENT": 1, "NO_ALTERNATIVE": 0, "INCONCLUSIVE": 0, "NOT_COMPARABLE": 0,
                 "WORSE": -1, "FAILS_STEP_1": -2}


def verdict_of(steps: list[dict[str, Any]], choice: dict[str, Any], why_missing: list[str]) -> tuple[str, list[str]]:
    """The headline verdict of BarrierNet from the fixed sequence, with its reasons."""
    if why_missing:
        return "NOT_COMPARABLE", why_missing
    by_id = {s["id"]: s for s in steps}
    h1 = by_id.get("H1")
    if h1 is None:
        return "NOT_COMPARABLE", ["BarrierNet or the baseline has no test episodes"]
    reasons = [_step_text(h1)]
    if not h1["rejected"]:
        return "FAILS_STEP_1", reasons
    if choice["chosen"] is None:
        reasons.append("no alternative qualified on dev (" + (", ".join(
            f"{c['arm']}: dev collision upper bound {100 * c['dev_collision_upper']:.2f} %" for c in choice["candidates"])
            or "none of decision.alternatives was evaluated") + f"; threshold {100 * choice['max_collision_upper']:g} %)")
        return "NO_ALTERNATIVE", reasons
    h2, h3 = by_id["H2"], by_id.get("H3")
    reasons.append(_step_text(h2))
    if h3 is None:
        return "NOT_COMPARABLE", reasons
    reasons.append(_step_text(h3))
    if not h3["confirmatory"]:
        reasons.append("the sequence stopped before H3: its answer is exploratory")
        return "INCONCLUSIVE", reasons
    answer = h3["answer"]
    code = ("BETTER" if answer == "better" else "WORSE" if answer == "worse" else
            "EQUIVALENT" if answer.startswith("equivalent") else "INCONCLUSIVE")
    return code, reasons


def _pp(ci: dict[str, Any]) -> str:
    return f"{100 * ci['estimate']:+.2f} pp [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}]"


def _seeds_to_settle(step: dict[str, Any]) -> str:
    """Where non-inferiority was not shown: the seeds per arm a study would need to show it (80 %
    power, true difference 0, the variance components of this comparison's crossed design; see
    `tasks.decision.crossed_seeds_for`); else ""."""
    needed = step.get("seeds_for_noninferiority")
    if step["capture_noninferior_shown"] or "seeds_for_noninferiority" not in step:
        return ""
    if not needed:
        return f"; {step['seeds_for_noninferiority_note']}"
    return (f"; about {needed} seeds per arm would give 80 % power to show it if the true difference were 0, "
            "on these test scenarios")


def _step_text(step: dict[str, Any]) -> str:
    tag = f"{step['id']} ({'confirmatory' if step.get('confirmatory') else 'exploratory'})"
    if step["kind"] == "vs_baseline":
        return (f"{tag} {step['arm']} vs {step['against']}: collision difference {_pp(step['collision_diff'])} "
                f"(cut >= min_collision_reduction {'shown' if step['collision_reduction_shown'] else 'NOT shown'}, "
                f"p = {step['p_collision_reduction']:.3g}); capture difference {_pp(step['capture_diff'])} "
                f"(non-inferior {'shown' if step['capture_noninferior_shown'] else 'NOT shown'}, "
                f"p = {step['p_capture_noninferior']:.3g}{_seeds_to_settle(step)}) -> "
                f"{'rejected' if step['rejected'] else 'not rejected'}")
    return (f"{tag} {step['arm']} vs {step['against']}: capture difference {_pp(step['capture_diff'])}; "
            f"p(better) = {step['p_better']:.3g}, p(worse) = {step['p_worse']:.3g}, p(equivalent) = "
            f"{step['p_equivalent']:.3g} -> {step['answer']}")


def _json_safe(value: Any) -> Any:
    """`value` with every NaN/inf replaced by None, recursively (JSON has no NaN/inf: null instead);
    numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _interval_fields(prefix: str, interval: Interval | None) -> dict[str, Any]:
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: _json_safe(interval.estimate), f"{prefix}_low": _json_safe(interval.low),
            f"{prefix}_high": _json_safe(interval.high)}


def _run_level(test: pd.DataFrame, arm: str, other: str, decision: DecisionParams) -> dict[str, Any]:
    """Run-level probability of improvement (per-seed capture rates, rliable) and the paired-episode win rate."""
    _, a = protocol.score_matrix(test, arm, "capture")
    _, b = protocol.score_matrix(test, other, "capture")
    poi = run_level_probability_of_improvement(a.mean(axis=1), b.mean(axis=1), decision.bootstrap_samples,
                                               decision.confidence, decision.bootstrap_seed)
    rows = min(a.shape[0], b.shape[0])
    win = protocol.win_rate(a[:rows], b[:rows], decision.confidence)
    return {"arm": arm, "against": other,
            **_interval_fields("probability_of_improvement", poi),
            "probability_of_improvement_method": "P(seed score of arm > seed score of other) over all seed pairs "
                                                 "(rliable, run level), percentile bootstrap over seeds; where every "
                                                 "seed pair is won (or lost) no resample differs, and the bound is the "
                                                 "distribution-free one of complete separation, ((1 - confidence) / "
                                                 "2)^(1 / fewer seeds) (tasks.stats.separation_bound)",
            **_interval_fields("paired_win_rate", Interval(*win[:3])),
            "paired_win_rate_method": "(seed i, scenario) cells of both arms: wins + ties / 2; " + win.method}


def build_metrics(summary: pd.DataFrame, test: pd.DataFrame, dev: pd.DataFrame, params: Params,
                  why_missing: list[str]) -> dict[str, Any]:
    """metrics.json: everything machine-independent the report and `dvc metrics` read (no wall clock)."""
    decision = params.decision
    arms_present = [a for a in KNOWN_ARMS if a in set(test["arm"])]
    n_seeds = len(params.train.seeds)
    arms = {}
    for _, row in summary[(summary["seed"] == "all") & (summary["aggregate"] == "mean")].iterrows():
        entry: dict[str, Any] = {"seeds": int(row["seeds"]), "episodes": int(row["episodes"])}
        for name in HEADLINE_METRICS:
            if name in WALL_CLOCK_METRICS:
                continue
            entry.update(_interval_fields(name, Interval(row[name], row[f"{name}_low"], row[f"{name}_high"])))
        arms[row["arm"]] = entry
    choice = protocol.choose_alternative(dev[dev["arm"].isin(params.eval.arms)], decision)
    steps = protocol.fixed_sequence(test, choice["chosen"], decision, arms_present)
    verdict, reasons = verdict_of(steps, choice, why_missing)
    safety = {arm: protocol.unsafe_counts(test, arm, decision.confidence) for arm in arms_present}
    gap = protocol.train_deploy_gap(test, "cbf_beta", "cbf_beta_rcbf", decision.confidence)
    hybrid = None
    if {"barriernet", "barriernet_rcbf"} <= set(arms_present):
        _, a = protocol.score_matrix(test, "barriernet_rcbf", "capture")
        _, b = protocol.score_matrix(test, "barriernet", "capture")
        capture = protocol.difference_interval(a, b, True, decision.confidence)
        _, ua = protocol.score_matrix(test, "barriernet_rcbf", "unsafe")
        _, ub = protocol.score_matrix(test, "barriernet", "unsafe")
        unsafe = protocol.difference_interval(ua, ub, True, decision.confidence)
        hybrid = {"capture_diff": protocol.interval_dict(capture), "unsafe_diff": protocol.interval_dict(unsafe),
                  "capture_noninferior": bool(capture.low > -decision.noninferiority_margin),
                  "gap": protocol.train_deploy_gap(test, "barriernet", "barriernet_rcbf", decision.confidence)}
    sd = protocol.seed_sd(test, arms_present)
    power = {"seed_sd_capture": sd, "seeds": n_seeds, "test_episodes": params.eval.test_episodes,
             "mdd_80": protocol.minimum_detectable(sd, n_seeds, decision.confidence) if sd else None,
             "seeds_for_1pp": protocol.seeds_for(sd, 0.01, decision.confidence) if sd else None,
             "method": "pooled within-arm SD of the per-seed test capture rates; two independent-seed arms, "
                       "two-sided t at 1 - confidence, 80 % power"}
    run_level = []
    if n_seeds >= 2 and protocol.REFERENCE_ARM in arms_present:
        run_level = [_run_level(test, arm, protocol.REFERENCE_ARM, decision)
                     for arm in arms_present if arm != protocol.REFERENCE_ARM]
        if choice["chosen"] in arms_present and protocol.CANDIDATE_ARM in arms_present:
            run_level.append(_run_level(test, protocol.CANDIDATE_ARM, choice["chosen"], decision))
    return _json_safe({
        "confidence": decision.confidence,
        "seeds": [int(s) for s in params.train.seeds],
        "test_split": {"seed_base": params.eval.test_seed_base, "episodes": params.eval.test_episodes},
        "dev_split": {"seed_base": params.eval.dev_seed_base, "episodes": params.eval.dev_episodes},
        "interval_methods": interval_methods(n_seeds),
        "arms": arms,
        "alternative_choice": choice,
        "sequence": steps,
        "safety": safety,
        "gap": gap,
        "hybrid": hybrid,
        "power": power,
        "run_level": run_level,
        "decision": {
            "verdict": verdict,
            "verdict_code": VERDICT_CODES[verdict],
            "reasons": reasons,
            "noninferiority_margin": decision.noninferiority_margin,
            "min_collision_reduction": decision.min_collision_reduction,
            "equivalence_margin": decision.equivalence_margin,
        },
    })


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Summarise the test split, choose the best alternative on dev, run the fixed sequence.

    Returns {"summary": path, "metrics": path, "verdict": str, "reasons": list[str]}.
    Raises StageInputError (nothing written) when an input table is missing or malformed.
    """
    workdir = Path(workdir)
    episodes = load_episodes(params, workdir)  # validates everything before anything is written
    test, dev = split_rows(episodes, "test"), split_rows(episodes, "dev")
    if test.empty:
        raise StageInputError("compare: the episode tables hold no test rows (rerun the evaluate stage)")
    summary = summarise(test, params.decision)
    # Say why an arm is absent in the user's terms (a single-algorithm run, a narrowed eval.arms).
    why = [f"arm '{arm}' is not in eval.arms={list(params.eval.arms)}"
           for arm in (CANDIDATE_ARM, REFERENCE_ARM) if arm not in params.eval.arms]
    why += [f"train.algos={list(params.train.algos)} has no '{algo}' run (arm '{arm}' comes from it)"
            for arm, algo in ((CANDIDATE_ARM, "barriernet"), (REFERENCE_ARM, "baseline"))
            if algo not in params.train.algos and arm in params.eval.arms]
    metrics = build_metrics(summary, test, dev, params, why)

    summary_path, metrics_path = workdir / SUMMARY_PATH, workdir / METRICS_PATH
    io.write_csv(summary_path, summary)  # atomic: temp file beside it, then os.replace
    io.write_text(metrics_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    verdict = metrics["decision"]
    return {"summary": str(summary_path), "metrics": str(metrics_path), "verdict": verdict["verdict"],
            "reasons": verdict["reasons"]}
