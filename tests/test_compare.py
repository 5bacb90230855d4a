"""The compare stage: input validation, the split discipline, the verdict's branches, and the
stage end to end with numbers recomputed independently in plain pandas."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tasks import decision as protocol
from tasks.artifacts import EPISODE_COLUMNS, StageInputError, episodes_path, read_episode_table
from tasks.compare import (
    VERDICT_CODES,
    run,
    summarise,
    verdict_of,
)
from tasks.params import DecisionParams, EvalParams, Params, TrainParams
from tasks.stats import crossed_mean_interval

Z95 = 1.959963984540054

# --------------------------------------------------------------------------------------------
# A tiny fake of the evaluate stage's output


def fake_episodes(arm, algo, seed, outcomes, violation_rate=0.05, intervention_rate=0.0, rng=None, max_steps=600,
                  split="test"):
    """One row per episode of `split` with the given outcomes ('capture' | 'collision' | 'timeout')."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    rows = []
    for episode, outcome in enumerate(outcomes):
        length = max_steps if outcome == "timeout" else int(rng.integers(20, max_steps))
        interventions = int(rng.binomial(length, intervention_rate))
        rows.append({
            "arm": arm, "algo": algo, "seed": seed, "split": split, "episode": episode,
            "env_seed": (1_000_000 if split == "dev" else 2_000_000) + episode,
            "outcome": outcome, "length": length,
            "return": {"capture": 100.0, "collision": -50.0, "timeout": -50.0}[outcome] + float(rng.normal(0, 5)),
            "min_h": float(rng.normal(0.2, 0.3)),
            "cbf_violation_steps": int(rng.binomial(length, violation_rate)),
            "enforced_violation_steps": int(rng.binomial(length, 2 * violation_rate)),
            "correction_sum": float(interventions * rng.uniform(0.01, 0.3)),
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


def write_eval_tables(workdir, seeds, episodes, algos=("barriernet", "baseline"), dev_episodes=None, dev_spec=None):
    """Both splits; `dev_spec` (arm -> (capture, collision)) makes the dev split differ from the test split."""
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        frames = {algo: [] for algo in algos}
        for arm, (algo, capture, collision, violation, intervention) in ARM_SPEC.items():
            if algo in algos:
                outcomes = random_outcomes(rng, episodes, capture, collision)
                frames[algo].append(fake_episodes(arm, algo, seed, outcomes, violation, intervention, rng))
                dev_capture, dev_collision = (dev_spec or {}).get(arm, (capture, collision))
                outcomes = random_outcomes(rng, dev_episodes or episodes, dev_capture, dev_collision)
                frames[algo].append(fake_episodes(arm, algo, seed, outcomes, violation, intervention, rng, split="dev"))
        for algo, parts in frames.items():
            path = episodes_path(workdir, algo, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.concat(parts).to_csv(path, index=False)


def make_params(seeds=(0, 1), algos=("barriernet", "baseline"), episodes=60, dev_episodes=None, **decision):
    return Params(
        train=TrainParams(seeds=list(seeds), algos=list(algos)),
        eval=EvalParams(test_episodes=episodes, dev_episodes=dev_episodes or episodes),
        decision=DecisionParams(bootstrap_samples=300, **decision),
    )


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
    raw = raw[raw["split"] == "test"]  # the summary and the verdict read test rows only
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

    # seed="all": the mean across seeds of the per-seed values; capture's interval is the crossed
    # design's on the (seed, episode) matrix built here with pandas.
    across = per_seed.groupby("arm").mean()
    for arm in ARM_SPEC:
        row = summary[(summary["arm"] == arm) & (summary["seed"] == "all") & (summary["aggregate"] == "mean")].iloc[0]
        assert row["capture_rate"] == pytest.approx(across.loc[arm, "capture"])
        matrix = raw[raw["arm"] == arm].pivot(index="seed", columns="episode", values="captured").to_numpy(float)
        want = crossed_mean_interval(matrix, 0.95)
        assert (row["capture_rate_low"], row["capture_rate_high"]) == pytest.approx((want.low, want.high))
        assert row["capture_rate_low"] <= row["capture_rate"] <= row["capture_rate_high"]
        assert metrics["arms"][arm]["capture_rate"] == pytest.approx(across.loc[arm, "capture"])
        # Step rates pool the steps of every seed (a ratio of sums, crossed_ratio_interval).
        pooled = raw[raw["arm"] == arm]
        pooled_rate = pooled["cbf_violation_steps"].sum() / pooled["length"].sum()
        assert metrics["arms"][arm]["cbf_violation_rate"] == pytest.approx(pooled_rate)
        assert metrics["arms"][arm]["cbf_violation_rate_low"] <= pooled_rate <= metrics["arms"][arm][
            "cbf_violation_rate_high"]
        # The metrics added for the Phase 2.5 plan, recomputed from the episodes.
        arm_metrics = metrics["arms"][arm]
        assert arm_metrics["enforced_violation_rate"] == pytest.approx(
            pooled["enforced_violation_steps"].sum() / pooled["length"].sum())
        assert arm_metrics["episode_violation_rate"] == pytest.approx((pooled["cbf_violation_steps"] > 0).mean())
        assert arm_metrics["mean_correction"] == pytest.approx(pooled["correction_sum"].sum() / pooled["length"].sum())
        captured = pooled[pooled["outcome"] == "capture"]
        assert arm_metrics["capture_steps"] == pytest.approx(captured["length"].mean())
        for name in ("enforced_violation_rate", "episode_violation_rate", "mean_correction", "capture_steps"):
            assert arm_metrics[f"{name}_low"] <= arm_metrics[name] <= arm_metrics[f"{name}_high"]
    assert set(summary.loc[summary["seed"] == "all", "aggregate"]) == {"mean", "iqm"}

    # The fixed sequence's differences vs the baseline, by merging on (seed, episode).
    base = raw[raw["arm"] == "baseline"]
    steps = {(step["arm"], step["against"]): step for step in metrics["sequence"]}
    for arm in ("barriernet", "baseline_ct_filter", "baseline_dcbf_filter"):
        paired = raw[raw["arm"] == arm].merge(base, on=["seed", "episode"], suffixes=("", "_b"))
        step = steps[(arm, "baseline")]
        cap = (paired["outcome"] == "capture").astype(int) - (paired["outcome_b"] == "capture").astype(int)
        col = (paired["outcome"] == "collision").astype(int) - (paired["outcome_b"] == "collision").astype(int)
        assert step["capture_diff"]["estimate"] == pytest.approx(cap.mean())
        assert step["collision_diff"]["estimate"] == pytest.approx(col.mean())
        assert step["collision_diff"]["low"] <= step["collision_diff"]["estimate"] <= step["collision_diff"]["high"]
        assert step["paired_seeds"] == (arm != "barriernet")
        # McNemar within each seed, from the discordant pairs counted here.
        for i, (_, g) in enumerate(paired.groupby("seed")):
            a_only = int(((g["outcome"] == "capture") & (g["outcome_b"] != "capture")).sum())
            b_only = int(((g["outcome"] != "capture") & (g["outcome_b"] == "capture")).sum())
            want = 1.0 if a_only + b_only == 0 else sps.binomtest(a_only, a_only + b_only, 0.5).pvalue
            assert step["capture"]["mcnemar_per_seed"][i] == pytest.approx(want)

    # Run-level probability of improvement: all pairs of per-seed capture rates, for every arm
    # against the baseline (and BarrierNet against the chosen alternative, when there is one).
    pairs = {(entry["arm"], entry["against"]) for entry in metrics["run_level"]}
    assert pairs >= {(arm, "baseline") for arm in set(raw["arm"]) - {"baseline"}}, pairs
    for entry in metrics["run_level"]:
        a = per_seed.loc[entry["arm"], "capture"].to_numpy()
        b = per_seed.loc[entry["against"], "capture"].to_numpy()
        want = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
        assert entry["probability_of_improvement"] == pytest.approx(want)

    decision = metrics["decision"]
    assert decision["verdict"] == result["verdict"] and decision["verdict"] in VERDICT_CODES
    # Step 1 against its own intervals: rejected only where the collision cut and capture's
    # non-inferiority both clear their margins; a step 1 not rejected ends the sequence.
    h1, margins = steps[("barriernet", "baseline")], make_params(seeds, episodes=episodes).decision
    clears = (h1["collision_diff"]["high"] < -margins.min_collision_reduction
              and h1["capture_diff"]["low"] > -margins.noninferiority_margin)
    assert h1["rejected"] == clears, h1
    assert (decision["verdict"] == "FAILS_STEP_1") == (not h1["rejected"])
    assert decision["verdict_code"] == VERDICT_CODES[decision["verdict"]]
    assert decision["reasons"] and all(isinstance(r, str) for r in decision["reasons"])
    assert metrics["test_split"] == {"seed_base": 2_000_000, "episodes": episodes}
    assert "decision_ms" not in json.dumps(metrics["arms"])  # wall clock stays out of metrics.json
    assert sorted(p.name for p in (tmp_path / "results" / "compare").iterdir()) == ["metrics.json", "summary.csv"]


def test_single_algorithm_run_is_not_comparable_not_a_crash(tmp_path):
    write_eval_tables(tmp_path, (0,), 30, algos=("baseline",))
    result = run(make_params((0,), algos=("baseline",), episodes=30), tmp_path)
    assert result["verdict"] == "NOT_COMPARABLE"
    assert any("train.algos=['baseline'] has no 'barriernet' run" in r for r in result["reasons"]), result["reasons"]
    metrics = json.loads((tmp_path / "results/compare/metrics.json").read_text())
    assert set(metrics["arms"]) == {"baseline", "baseline_ct_filter", "baseline_dcbf_filter"}
    assert all(step["arm"] != "barriernet" for step in metrics["sequence"])
    # One seed: the intervals say the seed variance was not estimable.
    assert "one training seed" in metrics["interval_methods"]["capture_rate"]



def test_steps_to_capture_of_a_seed_without_captures_is_undefined_without_a_warning():
    """A seed that never captures has no steps to capture (0 / 0): NaN, which the report prints as
    n/a, and no numpy "invalid value" warning; the other seed's is its captures' mean length,
    recomputed with pandas, and so is the pooled mean (the empty seed adds nothing to either sum)."""
    rng = np.random.default_rng(7)
    never = fake_episodes("baseline", "baseline", 0, ["timeout", "collision"] * 10, rng=rng)
    some = fake_episodes("baseline", "baseline", 1, ["capture", "timeout"] * 10, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        summary = summarise(pd.concat([never, some]), DecisionParams(bootstrap_samples=200))
    rows = summary.set_index(["seed", "aggregate"])["capture_steps"]
    assert math.isnan(rows["0", "per_seed"])
    captured = some.loc[some["outcome"] == "capture", "length"]
    assert rows["1", "per_seed"] == pytest.approx(captured.mean())
    assert rows["all", "mean"] == pytest.approx(captured.mean())


# --------------------------------------------------------------------------------------------
# Splits: the summary reads test rows, the choice dev rows


def test_summary_refuses_dev_rows():
    table = fake_episodes("baseline", "baseline", 0, ["capture"] * 4, split="dev")
    with pytest.raises(protocol.SplitLeakError, match="summarise may read test rows only"):
        summarise(table, DecisionParams(bootstrap_samples=100))


def test_alternative_is_chosen_on_dev_and_the_headline_is_test(tmp_path):
    # On dev the DCBF filter captures most (and never collides); on test the CT filter does.
    # The choice must follow dev; every headline number must follow test.
    spec = {"baseline_dcbf_filter": (0.97, 0.0), "baseline_ct_filter": (0.60, 0.0), "baseline": (0.2, 0.5),
            "barriernet": (0.1, 0.0)}
    write_eval_tables(tmp_path, (0, 1, 2), 40, dev_episodes=60, dev_spec=spec)
    run(make_params((0, 1, 2), episodes=40, dev_episodes=60, alternative_max_collision=0.2), tmp_path)
    metrics = json.loads((tmp_path / "results/compare/metrics.json").read_text())
    choice = metrics["alternative_choice"]
    assert choice["chosen"] == "baseline_dcbf_filter"
    raw = pd.concat([pd.read_csv(p) for p in sorted((tmp_path / "results" / "eval").glob("*/episodes.csv"))])
    dev = raw[(raw["split"] == "dev") & (raw["arm"] == "baseline_dcbf_filter")]
    by_arm = {c["arm"]: c for c in choice["candidates"]}
    assert by_arm["baseline_dcbf_filter"]["dev_capture"] == pytest.approx((dev["outcome"] == "capture").mean())
    test = raw[raw["split"] == "test"]
    for arm in ARM_SPEC:
        want = (test.loc[test["arm"] == arm, "outcome"] == "capture").mean()
        assert metrics["arms"][arm]["capture_rate"] == pytest.approx(want)
        assert metrics["arms"][arm]["episodes"] == 3 * 40
    assert [s["id"] for s in metrics["sequence"]][:3] == ["H1", "H2", "H3"]
    assert metrics["sequence"][1]["arm"] == "baseline_dcbf_filter"


def test_zero_event_rates_never_read_zero_zero(tmp_path):
    write_eval_tables(tmp_path, (0, 1), 50)
    path = episodes_path(tmp_path, "barriernet", 0)
    for seed in (0, 1):  # barriernet never collides
        path = episodes_path(tmp_path, "barriernet", seed)
        table = pd.read_csv(path)
        table.loc[table["outcome"] == "collision", "outcome"] = "timeout"
        table["cbf_violation_steps"] = 0
        table.to_csv(path, index=False)
    run(make_params((0, 1), episodes=50), tmp_path)
    metrics = json.loads((tmp_path / "results/compare/metrics.json").read_text())
    entry = metrics["arms"]["barriernet"]
    assert entry["collision_rate"] == 0 and entry["collision_rate_high"] > 0
    assert entry["cbf_violation_rate"] == 0 and entry["cbf_violation_rate_high"] > 0
    safety = metrics["safety"]["barriernet"]
    assert safety["unsafe"] == 0 and safety["upper"] == pytest.approx(1 - 0.025 ** (1 / 100))


def test_iqm_rows_bound_a_count_no_seed_saw(tmp_path):
    # Five seeds (the IQM keeps three): barriernet never collides, so every bootstrap resample of
    # its collision IQM is 0; the row must carry the edge bound from the seeds' episode counts,
    # not [0, 0].
    seeds = (0, 1, 2, 3, 4)
    write_eval_tables(tmp_path, seeds, 40)
    for seed in seeds:
        path = episodes_path(tmp_path, "barriernet", seed)
        table = pd.read_csv(path)
        table.loc[table["outcome"] == "collision", "outcome"] = "timeout"
        table.to_csv(path, index=False)
    run(make_params(seeds, episodes=40), tmp_path)
    summary = pd.read_csv(tmp_path / "results/compare/summary.csv", dtype={"seed": str})
    iqm_rows = summary[summary["aggregate"] == "iqm"].set_index("arm")
    row = iqm_rows.loc["barriernet"]
    # 200 pooled episodes, 40 in the smallest seed, 5 - int(5 / 4) = 4 seeds at least as large as the IQM
    want = 200 * (1 - 0.025 ** (1 / 200)) / (4 * 40)
    assert (row["collision_rate"], row["collision_rate_low"]) == (0, 0)
    assert row["collision_rate_high"] == pytest.approx(want, rel=1e-9)
    # the baseline's QP never intervenes (intervention rate 0 in the fake): a step rate, bounded on steps
    raw = pd.concat([pd.read_csv(episodes_path(tmp_path, "baseline", s)) for s in seeds])
    steps = raw[(raw["arm"] == "baseline") & (raw["split"] == "test")].groupby("seed")["length"].sum()
    want = steps.sum() * (1 - 0.025 ** (1 / steps.sum())) / (4 * steps.min())
    assert iqm_rows.loc["baseline", "intervention_rate_high"] == pytest.approx(want, rel=1e-9)
    # a count with events in the kept seeds keeps its bootstrap interval, away from 0 at both ends
    baseline = iqm_rows.loc["baseline"]
    assert 0 < baseline["collision_rate_low"] <= baseline["collision_rate"] <= baseline["collision_rate_high"]
    # events only in a seed the IQM trims in every resample: the bound counts them (k = 2 of 200)
    path = episodes_path(tmp_path, "barriernet", 0)
    table = pd.read_csv(path)
    test_rows = table.index[(table["arm"] == "barriernet") & (table["split"] == "test")]
    table.loc[test_rows[:2], "outcome"] = "collision"
    table.to_csv(path, index=False)
    run(make_params(seeds, episodes=40), tmp_path)
    summary = pd.read_csv(tmp_path / "results/compare/summary.csv", dtype={"seed": str})
    row = summary[(summary["aggregate"] == "iqm") & (summary["arm"] == "barriernet")].iloc[0]
    assert (row["collision_rate"], row["collision_rate_low"]) == (0, 0)
    assert row["collision_rate_high"] == pytest.approx(200 * sps.beta.ppf(0.975, 3, 198) / (4 * 40), rel=1e-9)


def _step(id_, kind="vs_baseline", rejected=True, confirmatory=True, answer=None):
    ci = {"estimate": 0.0, "low": -0.01, "high": 0.01}
    step = {"id": id_, "kind": kind, "arm": "barriernet", "against": "baseline", "rejected": rejected,
            "confirmatory": confirmatory, "collision_diff": ci, "capture_diff": ci, "collision_reduction_shown": True,
            "capture_noninferior_shown": rejected, "p_collision_reduction": 0.001, "p_capture_noninferior": 0.001}
    if kind == "vs_alternative":
        step.update({"answer": answer, "p_better": 0.5, "p_worse": 0.5, "p_equivalent": 0.01})
    return step


@pytest.mark.parametrize("steps, chosen, expected", [
    ([_step("H1", rejected=False)], "x", "FAILS_STEP_1"),
    ([_step("H1")], None, "NO_ALTERNATIVE"),
    ([_step("H1"), _step("H2"), _step("H3", "vs_alternative", answer="better")], "x", "BETTER"),
    ([_step("H1"), _step("H2"), _step("H3", "vs_alternative", answer="worse")], "x", "WORSE"),
    ([_step("H1"), _step("H2"), _step("H3", "vs_alternative", answer="equivalent within +/- 2 pp: prefer the "
                                                                      "cheaper")], "x", "EQUIVALENT"),
    ([_step("H1"), _step("H2"), _step("H3", "vs_alternative", answer="inconclusive: needs about 12 seeds per arm")],
     "x", "INCONCLUSIVE"),
    ([_step("H1"), _step("H2", rejected=False),
      _step("H3", "vs_alternative", confirmatory=False, answer="better")], "x", "INCONCLUSIVE"),
])
def test_verdict_branches(steps, chosen, expected):
    verdict, reasons = verdict_of(steps, {"chosen": chosen, "candidates": [], "max_collision_upper": 0.01}, [])
    assert verdict == expected and verdict in VERDICT_CODES
    assert reasons and reasons[0].startswith("H1 (confirmatory) barriernet vs baseline")
    if expected == "INCONCLUSIVE" and not steps[-1]["confirmatory"]:
        assert "exploratory" in reasons[-1]


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
