"""The `compare` stage: per-episode evaluation tables -> summary table, metrics and a decision.

Inputs (written by the evaluate stage), one per training algorithm and seed::

    results/eval/<algo>-s<seed>/episodes.csv      columns: EPISODE_COLUMNS, one row per (arm, episode)

Episode ``e`` is the same start / obstacles / evader randomness for every arm of a seed, so arms
are compared on *paired* episodes, stratified by training seed.

Outputs (each written atomically: temp file in the same folder, then ``os.replace``; all inputs
are validated before anything is written, so a bad input leaves earlier outputs intact)::

    results/compare/summary.csv    one row per (arm, seed) with aggregate "per_seed", plus rows
                                   seed="all" with aggregate "mean" and "iqm"; columns
                                   arm, seed, aggregate, seeds, episodes, steps, and for each metric
                                   in METRICS: <metric>, <metric>_low, <metric>_high
    results/compare/metrics.json   {"confidence", "seeds", "arms": {arm: headline numbers},
                                    "vs_baseline": {arm: paired differences, probability of
                                    improvement}, "decision": {"verdict", "verdict_code", "reasons"}}

Intervals (all at ``params.decision.confidence``):
* per-seed rows: Wilson for rates. Episode-level rates (capture, collision, timeout) are Wilson
  on episodes. Step-level rates (CBF violation, intervention, infeasibility) are Wilson on steps,
  which treats steps as independent; steps within an episode are correlated, so these intervals
  are too narrow - read them as descriptive. mean_return and decision_ms: percentile bootstrap
  over the seed's episodes.
* seed="all" rows: each seed's value (as in its per-seed row), then the mean or the IQM across
  seeds, with a stratified bootstrap interval (episodes resampled within each seed, rliable).
  scipy's IQM trims ``int(0.25 * seeds)`` seeds from each end: with fewer than 4 seeds it equals
  the mean.
* paired differences vs the ``baseline`` arm: mean per-episode difference over the episodes both
  arms ran, episode indices resampled jointly for both arms within each seed.

The decision rule is ``decide``; its docstring states it.
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
from tasks.params import ARMS, DecisionParams, Params
from tasks.stats import (
    Interval,
    across_seeds,
    paired_difference_ci,
    probability_of_improvement,
    stratified_bootstrap_ci,
    stratified_bootstrap_cis,
    wilson_interval,
)

__all__ = [
    "EPISODE_COLUMNS",
    "OUTCOMES",
    "METRICS",
    "SUMMARY_PATH",
    "METRICS_PATH",
    "StageInputError",
    "Comparison",
    "Decision",
    "episodes_path",
    "read_episode_table",
    "load_episodes",
    "summarise",
    "compare_arms",
    "decide",
    "run",
]

EPISODE_COLUMNS: tuple[str, ...] = (
    "arm",
    "algo",
    "seed",
    "episode",
    "env_seed",
    "outcome",
    "length",
    "return",
    "min_h",
    "cbf_violation_steps",
    "interventions",
    "infeasible_steps",
    "decision_ms",
)
OUTCOMES: tuple[str, ...] = ("capture", "collision", "timeout")
_INT_COLUMNS = ("seed", "episode", "env_seed", "length", "cbf_violation_steps", "interventions", "infeasible_steps")
_FLOAT_COLUMNS = ("return", "min_h", "decision_ms")
_STEP_COUNT_COLUMNS = ("cbf_violation_steps", "interventions", "infeasible_steps")

SUMMARY_PATH = Path("results/compare/summary.csv")
METRICS_PATH = Path("results/compare/metrics.json")
REFERENCE_ARM = "baseline"
CANDIDATE_ARM = "barriernet"


class StageInputError(ValueError):
    """A stage input file is missing or malformed; the message names the file and the problem."""


def episodes_path(workdir: Path, algo: str, seed: int) -> Path:
    """Where the evaluate stage writes the episode table of one (algo, training seed)."""
    return Path(workdir) / "results" / "eval" / f"{algo}-s{seed}" / "episodes.csv"


# ---------------------------------------------------------------------------------------------
# Reading and validating the episode tables


def read_episode_table(path: str | Path, algo: str | None = None, seed: int | None = None) -> pd.DataFrame:
    """Read one ``episodes.csv`` and check its columns, types and ranges.

    Returns a DataFrame with exactly EPISODE_COLUMNS (extra columns are dropped), integer
    columns as int64, float columns as float64, and arm/algo/outcome as str. When ``algo`` /
    ``seed`` are given, every row must carry them. Raises StageInputError naming the file and
    every bad column.
    """
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path}: episode table not found (written by the evaluate stage)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageInputError(f"{path}: not a readable CSV ({exc})") from None

    missing = [c for c in EPISODE_COLUMNS if c not in table.columns]
    if missing:
        raise StageInputError(
            f"{path}: missing columns {missing}; expected columns {list(EPISODE_COLUMNS)}, found {list(table.columns)}"
        )
    if table.empty:
        raise StageInputError(f"{path}: has no episode rows")

    problems: list[str] = []
    out = pd.DataFrame(index=table.index)
    for column in _INT_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            problems.append(f"column '{column}' must hold integers; bad values {_examples(table[column][bad])}")
            continue
        out[column] = values.astype("int64")
    for column in _FLOAT_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna()  # min_h may be +inf (no barrier ever active); NaN is never valid
        if column != "min_h":
            bad |= ~np.isfinite(values)
        if bad.any():
            problems.append(f"column '{column}' must hold numbers; bad values {_examples(table[column][bad])}")
            continue
        out[column] = values.astype("float64")
    for column, accepted in (("arm", ARMS), ("outcome", OUTCOMES), ("algo", None)):
        values = table[column].astype(str).str.strip()
        if accepted is not None:
            bad = ~values.isin(accepted)
            if bad.any():
                problems.append(f"column '{column}' has {_examples(table[column][bad])}; accepted: {list(accepted)}")
                continue
        out[column] = values.astype(object)

    # Ranges only once the types are right.
    if not problems:
        if (out["length"] < 1).any():
            problems.append(f"column 'length' must be >= 1; bad values {_examples(out['length'][out['length'] < 1])}")
        if (out["episode"] < 0).any():
            problems.append("column 'episode' must be >= 0")
        for column in _STEP_COUNT_COLUMNS:
            bad = (out[column] < 0) | (out[column] > out["length"])
            if bad.any():
                problems.append(f"column '{column}' must lie in [0, length]; {int(bad.sum())} rows do not")
        if (out["decision_ms"] < 0).any():
            problems.append("column 'decision_ms' must be >= 0")
        duplicated = out.duplicated(["arm", "episode"])
        if duplicated.any():
            pairs = list(out.loc[duplicated, ["arm", "episode"]].itertuples(index=False, name=None))[:3]
            problems.append(f"(arm, episode) pairs appear twice, e.g. {pairs}; accepted: one row per (arm, episode)")
        if algo is not None and (out["algo"] != algo).any():
            problems.append(f"column 'algo' has {_examples(out['algo'][out['algo'] != algo])}; expected '{algo}'")
        if seed is not None and (out["seed"] != seed).any():
            problems.append(f"column 'seed' has {_examples(out['seed'][out['seed'] != seed])}; expected {seed}")
    if problems:
        raise StageInputError(f"{path}: " + "; ".join(problems))
    return out[list(EPISODE_COLUMNS)].reset_index(drop=True)


def _examples(values: pd.Series, k: int = 3) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values.drop_duplicates().head(k)]


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
    twice = episodes.duplicated(["arm", "seed", "episode"])
    if twice.any():
        rows = list(episodes.loc[twice, ["arm", "seed", "episode"]].itertuples(index=False, name=None))[:3]
        raise StageInputError(
            f"compare: (arm, seed, episode) rows appear in more than one episode table, e.g. {rows}; "
            "accepted: each arm evaluated once per seed"
        )
    return episodes[episodes["arm"].isin(params.eval.arms)].reset_index(drop=True)


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
    "cbf_violation_rate": Metric(_col("cbf_violation_steps"), _col("length"), "wilson"),  # per step
    "intervention_rate": Metric(_col("interventions"), _col("length"), "wilson"),
    "infeasible_rate": Metric(_col("infeasible_steps"), _col("length"), "wilson"),
    "mean_return": Metric(_col("return"), _ones, "bootstrap"),  # per episode
    # decision_ms is a per-episode mean; weighting by length gives the mean over all decisions.
    "decision_ms": Metric(lambda df: df["decision_ms"].to_numpy(float) * df["length"].to_numpy(float),
                          _col("length"), "bootstrap"),
}
# Wall-clock numbers stay in summary.csv and the report but not in metrics.json: `dvc repro -f`
# must reproduce identical metrics, and no two runs take the same time.
TIMING_METRICS = ("decision_ms",)
HEADLINE_METRICS = (
    "capture_rate",
    "collision_rate",
    "cbf_violation_rate",
    "intervention_rate",
    "infeasible_rate",
    "decision_ms",
    "mean_return",
)


def _ratio(pairs: np.ndarray) -> np.ndarray:
    """(n_boot, n, [metrics,] 2) numerator/denominator pairs -> (n_boot[, metrics]) ratio of sums."""
    return pairs[..., 0].sum(axis=1) / pairs[..., 1].sum(axis=1)


def _pairs(df: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(episodes, len(names), 2): each metric's numerator and denominator per episode."""
    return np.stack(
        [np.stack([METRICS[n].numerator(df), METRICS[n].denominator(df)], axis=1) for n in names], axis=1
    )


def summarise(episodes: pd.DataFrame, decision: DecisionParams) -> pd.DataFrame:
    """The summary table (see the module docstring) of validated, arm-filtered episodes."""
    conf, n_boot, boot_seed = decision.confidence, decision.bootstrap_samples, decision.bootstrap_seed
    names = list(METRICS)
    bootstrapped = [n for n in names if METRICS[n].interval == "bootstrap"]
    rows = []
    for arm in [a for a in ARMS if a in set(episodes["arm"])]:
        arm_rows = episodes[episodes["arm"] == arm]
        seeds = sorted(arm_rows["seed"].unique())
        by_seed = {s: arm_rows[arm_rows["seed"] == s].sort_values("episode") for s in seeds}
        for s in seeds:
            df = by_seed[s]
            row: dict[str, Any] = {"arm": arm, "seed": str(s), "aggregate": "per_seed", "seeds": 1,
                                   "episodes": len(df), "steps": int(df["length"].sum())}
            sums = _pairs(df, names).sum(axis=0)  # (metrics, 2)
            for name, (numerator, denominator) in zip(names, sums):
                low, high = wilson_interval(numerator, denominator, conf) if METRICS[name].interval == "wilson" else (
                    np.nan, np.nan)
                row.update({name: numerator / denominator, f"{name}_low": low, f"{name}_high": high})
            # One stratum: a plain percentile bootstrap over this seed's episodes.
            intervals = stratified_bootstrap_cis([_pairs(df, bootstrapped)], across_seeds(_ratio), n_boot, conf,
                                                 boot_seed)
            for name, interval in zip(bootstrapped, intervals):
                row.update({f"{name}_low": interval.low, f"{name}_high": interval.high})
            rows.append(row)
        strata = [_pairs(by_seed[s], names) for s in seeds]
        for aggregate in ("mean", "iqm"):
            row = {"arm": arm, "seed": "all", "aggregate": aggregate, "seeds": len(seeds),
                   "episodes": len(arm_rows), "steps": int(arm_rows["length"].sum())}
            intervals = stratified_bootstrap_cis(strata, across_seeds(_ratio, aggregate), n_boot, conf, boot_seed)
            for name, interval in zip(names, intervals):
                row.update({name: interval.estimate, f"{name}_low": interval.low, f"{name}_high": interval.high})
            rows.append(row)
    columns = ["arm", "seed", "aggregate", "seeds", "episodes", "steps"]
    columns += [f"{m}{suffix}" for m in METRICS for suffix in ("", "_low", "_high")]
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------------------------------------
# Paired comparison against the baseline arm, and the decision


@dataclass(frozen=True)
class Comparison:
    """What the decision rule needs: one arm vs the baseline arm on paired episodes.

    Differences are arm - baseline; intervals at DecisionParams.confidence. ``missing`` lists
    why a comparison could not be made (then the intervals are None).
    """

    arm: str = CANDIDATE_ARM
    capture_diff: Interval | None = None  # per-episode 0/1 capture, paired
    collision_diff: Interval | None = None  # per-episode 0/1 collision, paired
    cbf_violation_diff: Interval | None = None  # step-level rate, pooled over paired episodes
    baseline_collision: Interval | None = None  # baseline collision rate (Wilson, pooled episodes)
    prob_improvement_return: Interval | None = None  # P(return arm > return baseline)
    paired_episodes: int = 0
    seeds: tuple[int, ...] = ()
    missing: tuple[str, ...] = field(default_factory=tuple)


class Decision(NamedTuple):
    verdict: Literal["ADOPT", "REJECT", "INCONCLUSIVE"]
    reasons: list[str]


VERDICT_CODES = {"ADOPT": 1, "INCONCLUSIVE": 0, "REJECT": -1}


def _violation_difference(strata: list[np.ndarray]) -> np.ndarray:
    """Columns (viol_arm, len_arm, viol_base, len_base), pooled over seeds -> (n_boot,)."""
    pooled = np.concatenate(strata, axis=1)
    sums = pooled.sum(axis=1)  # (n_boot, 4)
    return sums[:, 0] / sums[:, 1] - sums[:, 2] / sums[:, 3]


def compare_arms(episodes: pd.DataFrame, arm: str, decision: DecisionParams) -> Comparison:
    """Paired comparison of ``arm`` against the ``baseline`` arm on the episodes both ran."""
    present = set(episodes["arm"])
    missing = [f"arm '{a}' has no evaluated episodes" for a in (arm, REFERENCE_ARM) if a not in present]
    if missing:
        return Comparison(arm=arm, missing=tuple(missing))
    keys = ["seed", "episode"]
    paired = episodes[episodes["arm"] == arm].merge(
        episodes[episodes["arm"] == REFERENCE_ARM], on=keys, suffixes=("_arm", "_base"), validate="one_to_one"
    ).sort_values(keys)
    if paired.empty:
        return Comparison(arm=arm, missing=(f"arms '{arm}' and '{REFERENCE_ARM}' share no (seed, episode)",))

    seeds = tuple(int(s) for s in sorted(paired["seed"].unique()))
    per_seed = [paired[paired["seed"] == s] for s in seeds]
    conf, n_boot, boot_seed = decision.confidence, decision.bootstrap_samples, decision.bootstrap_seed

    def outcome(side: str, name: str) -> list[np.ndarray]:
        return [(df[f"outcome_{side}"] == name).to_numpy(float) for df in per_seed]

    capture = paired_difference_ci(outcome("arm", "capture"), outcome("base", "capture"), n_boot, conf, boot_seed)
    collision = paired_difference_ci(
        outcome("arm", "collision"), outcome("base", "collision"), n_boot, conf, boot_seed
    )
    violation_columns = ["cbf_violation_steps_arm", "length_arm", "cbf_violation_steps_base", "length_base"]
    violation = stratified_bootstrap_ci(
        [df[violation_columns].to_numpy(float) for df in per_seed], _violation_difference, n_boot, conf, boot_seed
    )
    base_collisions = int((paired["outcome_base"] == "collision").sum())
    low, high = wilson_interval(base_collisions, len(paired), conf)
    poi = probability_of_improvement(
        [df["return_arm"].to_numpy(float) for df in per_seed],
        [df["return_base"].to_numpy(float) for df in per_seed],
        n_boot,
        conf,
        boot_seed,
    )
    return Comparison(
        arm=arm,
        capture_diff=capture,
        collision_diff=collision,
        cbf_violation_diff=violation,
        baseline_collision=Interval(base_collisions / len(paired), low, high),
        prob_improvement_return=poi,
        paired_episodes=len(paired),
        seeds=seeds,
    )


def _pp(interval: Interval) -> str:
    """An interval of rates or rate differences in percentage points."""
    return f"{100 * interval.estimate:+.2f} pp, CI [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}] pp"


def decide(comparison: Comparison, decision: DecisionParams) -> Decision:
    """BarrierNet (``comparison.arm``) vs the plain ``baseline`` arm: ADOPT, REJECT or INCONCLUSIVE.

    Let L = max_capture_loss, R = min_collision_reduction; capture and collision differences are
    arm - baseline, per paired episode, with two-sided CIs at ``confidence`` (so "the CI lies
    above/below x" is a one-sided test at (1 + confidence) / 2).

    REJECT if any of:
      1. the capture-difference CI lies entirely below -L (the capture loss is surely too large);
      2. the collision-difference CI lies entirely above 0 (BarrierNet collides significantly more);
      3. no safety gain: the collision-reduction CI's upper end is below R (no reduction that
         matters) AND the CBF-violation-rate difference CI lies entirely above 0 (it violates
         significantly more).
    ADOPT, if not rejected, when the capture-difference CI lies above -L (the loss is surely
    acceptable) AND a safety gain is shown, either
      a. collisions: the collision-reduction CI's lower end is >= R and > 0; or
      b. when no collision reduction that matters can show in this data, because the baseline's
         own collision rate (the largest reduction possible) is below R: the CBF-violation-rate
         difference CI lies entirely below 0, and the collision-difference CI's upper end is
         below R (no collision increase that matters).
    INCONCLUSIVE otherwise (the intervals straddle a threshold: more episodes or seeds would
    narrow them), and whenever an arm is missing. Every branch explains itself with the numbers.
    """
    L, R, conf = decision.max_capture_loss, decision.min_collision_reduction, decision.confidence
    arm = comparison.arm
    needed = (comparison.capture_diff, comparison.collision_diff, comparison.cbf_violation_diff,
              comparison.baseline_collision)
    if comparison.missing or any(x is None for x in needed):
        reasons = list(comparison.missing) or ["the paired comparison is incomplete"]
        return Decision("INCONCLUSIVE", [f"cannot compare '{arm}' with '{REFERENCE_ARM}': {r}" for r in reasons])
    cap, col, viol, base_col = needed
    level = f"{100 * conf:g}%"
    cap_text = f"capture difference ({arm} - {REFERENCE_ARM}) = {_pp(cap)} ({level})"
    col_text = f"collision difference ({arm} - {REFERENCE_ARM}) = {_pp(col)}"
    viol_text = f"CBF-violation-rate difference = {_pp(viol)}"
    reduction_low, reduction_high = -col.high, -col.low

    rejections = []
    if cap.high < -L:
        rejections.append(f"capture loss too large: {cap_text} lies entirely below -max_capture_loss = {-100 * L:+.2f} pp")
    if col.low > 0:
        rejections.append(f"{arm} collides significantly more: {col_text} lies entirely above 0")
    if reduction_high < R and viol.low > 0:
        rejections.append(
            f"no safety gain: collision reduction at most {100 * reduction_high:.2f} pp < min_collision_reduction = "
            f"{100 * R:.2f} pp, and {arm} violates the CBF significantly more ({viol_text})"
        )
    if rejections:
        return Decision("REJECT", rejections)

    capture_ok = cap.low > -L
    collision_gain = reduction_low >= R and reduction_low > 0
    no_room = base_col.estimate < R
    violation_gain = viol.high < 0 and col.high < R
    if capture_ok and (collision_gain or (no_room and violation_gain)):
        reasons = [f"capture loss acceptable: {cap_text} lies above -max_capture_loss = {-100 * L:+.2f} pp"]
        if collision_gain:
            reasons.append(
                f"collisions cut: {col_text}; the reduction is at least {100 * reduction_low:.2f} pp >= "
                f"min_collision_reduction = {100 * R:.2f} pp"
            )
        else:
            reasons.append(
                f"the baseline's collision rate {100 * base_col.estimate:.2f} % is below min_collision_reduction = "
                f"{100 * R:.2f} pp, so no collision cut that matters is possible; judged on CBF violations instead: "
                f"{viol_text} lies entirely below 0, and {col_text} stays below {100 * R:.2f} pp"
            )
        return Decision("ADOPT", reasons)

    reasons = []
    if not capture_ok:
        reasons.append(
            f"capture loss not ruled out: {cap_text} reaches below -max_capture_loss = {-100 * L:+.2f} pp"
        )
    if no_room:
        if not violation_gain:
            reasons.append(
                f"the baseline's collision rate {100 * base_col.estimate:.2f} % leaves no collision cut of "
                f"{100 * R:.2f} pp to show, and no clear CBF-violation gain: {viol_text} (needs the CI below 0) "
                f"with {col_text} (needs the upper end below {100 * R:.2f} pp)"
            )
    elif not collision_gain:
        reasons.append(
            f"collision reduction not shown: {col_text}; the reduction's lower end {100 * reduction_low:.2f} pp "
            f"needs to reach min_collision_reduction = {100 * R:.2f} pp"
        )
    reasons.append(
        f"based on {comparison.paired_episodes} paired episodes over seeds {list(comparison.seeds)}; "
        "more episodes or seeds would narrow the intervals"
    )
    return Decision("INCONCLUSIVE", reasons)


# ---------------------------------------------------------------------------------------------
# The stage


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _finite(value.item())
    return value


def _interval_fields(prefix: str, interval: Interval | None) -> dict[str, Any]:
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: _finite(interval.estimate), f"{prefix}_low": _finite(interval.low),
            f"{prefix}_high": _finite(interval.high)}


def build_metrics(summary: pd.DataFrame, comparisons: dict[str, Comparison], verdict: Decision,
                  params: Params) -> dict[str, Any]:
    """metrics.json content: headline numbers per arm (seed="all", aggregate="mean" rows)."""
    arms = {}
    for _, row in summary[(summary["seed"] == "all") & (summary["aggregate"] == "mean")].iterrows():
        entry: dict[str, Any] = {"seeds": int(row["seeds"]), "episodes": int(row["episodes"])}
        for name in HEADLINE_METRICS:
            if name in TIMING_METRICS:
                continue
            entry.update(_interval_fields(name, Interval(row[name], row[f"{name}_low"], row[f"{name}_high"])))
        arms[row["arm"]] = entry
    vs_baseline = {}
    for arm, comparison in comparisons.items():
        entry = {"paired_episodes": comparison.paired_episodes}
        entry.update(_interval_fields("capture_diff", comparison.capture_diff))
        entry.update(_interval_fields("collision_diff", comparison.collision_diff))
        entry.update(_interval_fields("cbf_violation_diff", comparison.cbf_violation_diff))
        entry.update(_interval_fields("prob_improvement_return", comparison.prob_improvement_return))
        if comparison.missing:
            entry["missing"] = list(comparison.missing)
        vs_baseline[arm] = entry
    return {
        "confidence": params.decision.confidence,
        "seeds": [int(s) for s in params.train.seeds],
        "arms": arms,
        "vs_baseline": vs_baseline,
        "decision": {
            "verdict": verdict.verdict,
            "verdict_code": VERDICT_CODES[verdict.verdict],  # numeric, so `dvc metrics diff` shows a change
            "reasons": verdict.reasons,
            "max_capture_loss": params.decision.max_capture_loss,
            "min_collision_reduction": params.decision.min_collision_reduction,
        },
    }


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Compare the evaluated arms and decide; see the module docstring for inputs and outputs.

    Returns {"summary": path, "metrics": path, "verdict": str, "reasons": list[str]}.
    Raises StageInputError (nothing written) when an input table is missing or malformed.
    """
    workdir = Path(workdir)
    episodes = load_episodes(params, workdir)  # validates everything before anything is written
    summary = summarise(episodes, params.decision)
    comparisons = {
        arm: compare_arms(episodes, arm, params.decision)
        for arm in params.eval.arms
        if arm != REFERENCE_ARM
    }
    candidate = comparisons.get(CANDIDATE_ARM, Comparison())
    # Say why an arm is absent in the user's terms (a single-algorithm run, a narrowed eval.arms).
    why = [f"arm '{arm}' is not in eval.arms={list(params.eval.arms)}"
           for arm in (CANDIDATE_ARM, REFERENCE_ARM) if arm not in params.eval.arms]
    why += [f"train.algos={list(params.train.algos)} has no '{algo}' run (arm '{arm}' comes from it)"
            for arm, algo in ((CANDIDATE_ARM, "barriernet"), (REFERENCE_ARM, "baseline"))
            if algo not in params.train.algos and arm in params.eval.arms]
    if why:
        candidate = Comparison(missing=tuple(why))
    verdict = decide(candidate, params.decision)
    metrics = build_metrics(summary, comparisons, verdict, params)

    summary_path, metrics_path = workdir / SUMMARY_PATH, workdir / METRICS_PATH
    io.write_csv(summary_path, summary)  # atomic: temp file beside it, then os.replace
    io.write_text(metrics_path, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return {"summary": str(summary_path), "metrics": str(metrics_path), "verdict": verdict.verdict,
            "reasons": verdict.reasons}
