"""The compare stage: input validation, the decision rule's branches, and the stage end to end
with numbers recomputed independently in plain pandas."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tasks.compare import (
    EPISODE_COLUMNS,
    Comparison,
    StageInputError,
    compare_arms,
    decide,
    episodes_path,
    read_episode_table,
    run,
)
from tasks.params import DecisionParams, EvalParams, Params, TrainParams
from tasks.stats import Interval

Z95 = 1.959963984540054
DECISION = DecisionParams(max_capture_loss=0.05, min_collision_reduction=0.01, bootstrap_samples=300)

# --------------------------------------------------------------------------------------------
# A tiny fake of the evaluate stage's output


def fake_episodes(arm, algo, seed, outcomes, violation_rate=0.05, intervention_rate=0.0, rng=None, max_steps=600):
    """One row per episode with the given outcomes ('capture' | 'collision' | 'timeout')."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    rows = []
    for episode, outcome in enumerate(outcomes):
        length = max_steps if outcome == "timeout" else int(rng.integers(20, max_steps))
        interventions = int(rng.binomial(length, intervention_rate))
        rows.append({
            "arm": arm, "algo": algo, "seed": seed, "episode": episode, "env_seed": 1_000_000 + episode,
            "outcome": outcome, "length": length,
            "return": {"capture": 100.0, "collision": -50.0, "timeout": -50.0}[outcome] + float(rng.normal(0, 5)),
            "min_h": float(rng.normal(0.2, 0.3)),
            "cbf_violation_steps": int(rng.binomial(length, violation_rate)),
            "interventions": interventions, "infeasible_steps": int(rng.binomial(interventions, 0.1)),
            "decision_ms": float(rng.uniform(0.1, 6.0)),
        })
    return pd.DataFrame(rows, columns=list(EPISODE_COLUMNS))


def random_outcomes(rng, n, capture, collision):
    return rng.choice(["capture", "collision", "timeout"], size=n, p=[capture, collision, 1 - capture - collision])


# Arm -> (capture prob, collision prob, violation rate, intervention rate); the algo whose file holds it.
ARM_SPEC = {
    "barriernet": ("barriernet", 0.80, 0.02, 0.03, 0.6),
    "baseline": ("baseline", 0.85, 0.10, 0.06, 0.0),
    "baseline_ct_filter": ("baseline", 0.80, 0.05, 0.05, 0.4),
    "baseline_dcbf_filter": ("baseline", 0.85, 0.04, 0.04, 0.1),
}


def write_eval_tables(workdir, seeds, episodes, algos=("barriernet", "baseline")):
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        frames = {algo: [] for algo in algos}
        for arm, (algo, capture, collision, violation, intervention) in ARM_SPEC.items():
            if algo in algos:
                outcomes = random_outcomes(rng, episodes, capture, collision)
                frames[algo].append(fake_episodes(arm, algo, seed, outcomes, violation, intervention, rng))
        for algo, parts in frames.items():
            path = episodes_path(workdir, algo, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.concat(parts).to_csv(path, index=False)


def make_params(seeds=(0, 1), algos=("barriernet", "baseline"), episodes=60):
    return Params(
        train=TrainParams(seeds=list(seeds), algos=list(algos)),
        eval=EvalParams(episodes=episodes),
        decision=DecisionParams(bootstrap_samples=300),
    )


# --------------------------------------------------------------------------------------------
# Decision rule: each branch on small synthetic paired tables


def paired_table(arm_outcomes, base_outcomes, arm_violation=0.05, base_violation=0.05, seeds=(0, 1, 2)):
    """The same outcome lists for every seed; each arm's episode e is paired with the other's."""
    frames = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        frames.append(fake_episodes("barriernet", "barriernet", seed, arm_outcomes, arm_violation, 0.5, rng))
        frames.append(fake_episodes("baseline", "baseline", seed, base_outcomes, base_violation, 0.0, rng))
    return pd.concat(frames, ignore_index=True)


def verdict_of(table, decision=DECISION):
    return decide(compare_arms(table, "barriernet", decision), decision)


def test_reject_when_capture_loss_is_surely_too_large():
    base = ["capture"] * 100
    arm = ["capture", "timeout"] * 50  # capture 50 % vs 100 %
    verdict = verdict_of(paired_table(arm, base))
    assert verdict.verdict == "REJECT"
    assert any("capture loss too large" in r and "-50.00 pp" in r for r in verdict.reasons), verdict.reasons


def test_reject_when_barriernet_collides_significantly_more():
    base = ["capture"] * 70 + ["timeout"] * 30
    arm = ["capture"] * 70 + ["collision"] * 20 + ["timeout"] * 10  # same captures, +20 pp collisions
    verdict = verdict_of(paired_table(arm, base))
    assert verdict.verdict == "REJECT"
    assert any("collides significantly more" in r and "+20.00 pp" in r for r in verdict.reasons), verdict.reasons


def test_reject_when_no_collision_gain_and_more_cbf_violations():
    outcomes = ["capture"] * 90 + ["timeout"] * 10  # identical behaviour, no collisions either side
    verdict = verdict_of(paired_table(outcomes, outcomes, arm_violation=0.20, base_violation=0.02))
    assert verdict.verdict == "REJECT"
    assert any("no safety gain" in r for r in verdict.reasons), verdict.reasons


def test_adopt_when_collisions_are_cut_without_capture_loss():
    base = ["capture"] * 60 + ["collision"] * 30 + ["timeout"] * 10
    arm = ["capture"] * 60 + ["timeout"] * 40  # the 30 % collisions become timeouts
    verdict = verdict_of(paired_table(arm, base))
    assert verdict.verdict == "ADOPT"
    assert "capture loss acceptable" in verdict.reasons[0]
    assert "collisions cut" in verdict.reasons[1] and "-30.00 pp" in verdict.reasons[1]


def test_adopt_on_cbf_violations_when_the_baseline_never_collides():
    outcomes = ["capture"] * 90 + ["timeout"] * 10
    verdict = verdict_of(paired_table(outcomes, outcomes, arm_violation=0.01, base_violation=0.10))
    assert verdict.verdict == "ADOPT"
    assert "judged on CBF violations" in verdict.reasons[1], verdict.reasons


def test_inconclusive_when_intervals_straddle_the_thresholds():
    # One seed of 40 episodes: -5 pp capture and -5 pp collisions, both far too noisy to call.
    base = ["capture"] * 30 + ["collision"] * 4 + ["timeout"] * 6
    arm = ["capture"] * 28 + ["collision"] * 2 + ["timeout"] * 10
    verdict = verdict_of(paired_table(arm, base, seeds=(0,)))
    assert verdict.verdict == "INCONCLUSIVE"
    assert any("capture loss not ruled out" in r for r in verdict.reasons), verdict.reasons
    assert any("collision reduction not shown" in r for r in verdict.reasons), verdict.reasons
    assert "40 paired episodes" in verdict.reasons[-1]


def test_inconclusive_not_a_crash_when_an_arm_is_missing():
    table = paired_table(["capture"] * 10, ["capture"] * 10)
    verdict = verdict_of(table[table["arm"] == "baseline"])
    assert verdict.verdict == "INCONCLUSIVE"
    assert "arm 'barriernet' has no evaluated episodes" in verdict.reasons[0]


@pytest.mark.parametrize("max_capture_loss,expected", [(0.05, "ADOPT"), (0.03, "INCONCLUSIVE"), (0.0, "REJECT")])
def test_capture_threshold_comes_from_params(max_capture_loss, expected):
    # Capture difference CI [-4, -1] pp: acceptable under a 5 pp limit, straddles 3 pp, below 0.
    comparison = Comparison(
        capture_diff=Interval(-0.025, -0.04, -0.01),
        collision_diff=Interval(-0.10, -0.15, -0.05),  # a 5-15 pp reduction
        cbf_violation_diff=Interval(0.0, -0.01, 0.01),
        baseline_collision=Interval(0.2, 0.15, 0.25),
        paired_episodes=600,
        seeds=(0, 1, 2),
    )
    decision = DecisionParams(max_capture_loss=max_capture_loss, min_collision_reduction=0.01)
    assert decide(comparison, decision).verdict == expected


# --------------------------------------------------------------------------------------------
# The stage end to end


def wilson_by_hand(k, n, z=Z95):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_stage_end_to_end_numbers_recomputed_with_pandas(tmp_path):
    seeds, episodes = (0, 1), 60
    write_eval_tables(tmp_path, seeds, episodes)
    result = run(make_params(seeds, episodes=episodes), tmp_path)

    raw = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "results" / "eval").glob("*/episodes.csv"))])
    summary = pd.read_csv(result["summary"], dtype={"seed": str})
    metrics = json.loads((tmp_path / "results/compare/metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    # Per-seed rates, straight from the episodes.
    raw["captured"] = raw["outcome"] == "capture"
    per_seed = raw.groupby(["arm", "seed"]).agg(
        capture=("captured", "mean"), captures=("captured", "sum"), n=("captured", "size"),
        violations=("cbf_violation_steps", "sum"), steps=("length", "sum"),
    )
    per_seed["violation_rate"] = per_seed["violations"] / per_seed["steps"]
    raw["ms_steps"] = raw["decision_ms"] * raw["length"]
    per_seed["decision_ms"] = raw.groupby(["arm", "seed"])["ms_steps"].sum() / per_seed["steps"]
    for (arm, seed), want in per_seed.iterrows():
        row = summary[(summary["arm"] == arm) & (summary["seed"] == str(seed))].iloc[0]
        assert row["aggregate"] == "per_seed" and row["episodes"] == episodes
        assert row["capture_rate"] == pytest.approx(want["capture"])
        low, high = wilson_by_hand(want["captures"], want["n"])
        assert (row["capture_rate_low"], row["capture_rate_high"]) == pytest.approx((low, high))
        assert row["cbf_violation_rate"] == pytest.approx(want["violation_rate"])
        assert row["decision_ms"] == pytest.approx(want["decision_ms"])

    # seed="all": the mean across seeds of the per-seed values, inside its bootstrap interval.
    across = per_seed.groupby("arm").mean()
    for arm in ARM_SPEC:
        row = summary[(summary["arm"] == arm) & (summary["seed"] == "all") & (summary["aggregate"] == "mean")].iloc[0]
        assert row["capture_rate"] == pytest.approx(across.loc[arm, "capture"])
        assert row["capture_rate_low"] <= row["capture_rate"] <= row["capture_rate_high"]
        assert metrics["arms"][arm]["capture_rate"] == pytest.approx(across.loc[arm, "capture"])
        assert metrics["arms"][arm]["cbf_violation_rate"] == pytest.approx(across.loc[arm, "violation_rate"])
    assert set(summary.loc[summary["seed"] == "all", "aggregate"]) == {"mean", "iqm"}

    # Paired differences vs the baseline arm, by merging on (seed, episode).
    base = raw[raw["arm"] == "baseline"]
    for arm in ("barriernet", "baseline_ct_filter", "baseline_dcbf_filter"):
        paired = raw[raw["arm"] == arm].merge(base, on=["seed", "episode"], suffixes=("", "_b"))
        entry = metrics["vs_baseline"][arm]
        assert entry["paired_episodes"] == len(seeds) * episodes
        cap = (paired["outcome"] == "capture").astype(int) - (paired["outcome_b"] == "capture").astype(int)
        col = (paired["outcome"] == "collision").astype(int) - (paired["outcome_b"] == "collision").astype(int)
        assert entry["capture_diff"] == pytest.approx(cap.mean())
        assert entry["collision_diff"] == pytest.approx(col.mean())
        assert entry["collision_diff_low"] <= entry["collision_diff"] <= entry["collision_diff_high"]
        viol = paired["cbf_violation_steps"].sum() / paired["length"].sum()
        viol -= paired["cbf_violation_steps_b"].sum() / paired["length_b"].sum()
        assert entry["cbf_violation_diff"] == pytest.approx(viol)
        poi = [
            np.mean([(a > b) + 0.5 * (a == b) for a in g["return"] for b in g["return_b"]])
            for _, g in paired.groupby("seed")
        ]
        assert entry["prob_improvement_return"] == pytest.approx(np.mean(poi))

    decision = metrics["decision"]
    assert decision["verdict"] == result["verdict"] in ("ADOPT", "REJECT", "INCONCLUSIVE")
    assert decision["verdict_code"] == {"ADOPT": 1, "INCONCLUSIVE": 0, "REJECT": -1}[decision["verdict"]]
    assert decision["reasons"] and all(isinstance(r, str) for r in decision["reasons"])
    assert sorted(p.name for p in (tmp_path / "results" / "compare").iterdir()) == ["metrics.json", "summary.csv"]


def test_single_algorithm_run_is_inconclusive_not_a_crash(tmp_path):
    write_eval_tables(tmp_path, (0,), 30, algos=("baseline",))
    result = run(make_params((0,), algos=("baseline",), episodes=30), tmp_path)
    assert result["verdict"] == "INCONCLUSIVE"
    assert any("train.algos=['baseline'] has no 'barriernet' run" in r for r in result["reasons"]), result["reasons"]
    metrics = json.loads((tmp_path / "results/compare/metrics.json").read_text())
    assert set(metrics["arms"]) == {"baseline", "baseline_ct_filter", "baseline_dcbf_filter"}
    assert metrics["vs_baseline"]["barriernet"]["capture_diff"] is None


# --------------------------------------------------------------------------------------------
# Bad inputs: clear errors, earlier outputs untouched


def test_missing_columns_name_the_file_and_keep_earlier_outputs(tmp_path):
    write_eval_tables(tmp_path, (0, 1), 20)
    params = make_params((0, 1), episodes=20)
    run(params, tmp_path)
    metrics_path = tmp_path / "results/compare/metrics.json"
    summary_path = tmp_path / "results/compare/summary.csv"
    before = metrics_path.read_bytes(), summary_path.read_bytes()

    broken = episodes_path(tmp_path, "barriernet", 1)
    pd.read_csv(broken).drop(columns=["min_h", "decision_ms"]).to_csv(broken, index=False)
    with pytest.raises(StageInputError) as error:
        run(params, tmp_path)
    message = str(error.value)
    assert str(broken) in message and "missing columns ['min_h', 'decision_ms']" in message
    assert (metrics_path.read_bytes(), summary_path.read_bytes()) == before
    assert sorted(p.name for p in metrics_path.parent.iterdir()) == ["metrics.json", "summary.csv"]


def test_bad_values_and_missing_files_are_named(tmp_path):
    write_eval_tables(tmp_path, (0,), 10)
    path = episodes_path(tmp_path, "baseline", 0)
    table = pd.read_csv(path, dtype={"length": object})
    table.loc[3, "outcome"] = "crash"
    table.loc[4, "length"] = "long"
    table.loc[5, "seed"] = 7
    table.to_csv(path, index=False)
    with pytest.raises(StageInputError) as error:
        read_episode_table(path, "baseline", 0)
    message = str(error.value)
    assert str(path) in message
    assert "column 'outcome' has ['crash']; accepted: ['capture', 'collision', 'timeout']" in message
    assert "column 'length' must hold integers; bad values ['long']" in message

    table = pd.read_csv(path)
    table.loc[3, "outcome"] = "capture"
    table.loc[4, "length"] = "600"
    table.to_csv(path, index=False)
    with pytest.raises(StageInputError, match="column 'seed' has \\[7\\]; expected 0"):
        read_episode_table(path, "baseline", 0)

    with pytest.raises(StageInputError, match="barriernet-s3/episodes.csv: episode table not found"):
        run(make_params((0, 3), episodes=10), tmp_path)
    assert not (tmp_path / "results" / "compare").exists()


def test_counts_beyond_the_episode_length_are_rejected(tmp_path):
    table = fake_episodes("baseline", "baseline", 0, ["capture"] * 5)
    table.loc[2, "cbf_violation_steps"] = table.loc[2, "length"] + 1
    path = tmp_path / "episodes.csv"
    table.to_csv(path, index=False)
    with pytest.raises(StageInputError, match="'cbf_violation_steps' must lie in \\[0, length\\]; 1 rows"):
        read_episode_table(path)
