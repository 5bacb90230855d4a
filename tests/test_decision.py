"""The decision protocol (tasks/decision.py) on synthetic episode frames with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tasks import decision as dec
from tasks.params import DecisionParams
from tasks.stats import CrossedInterval

D = DecisionParams()
ALGO = {"barriernet": "barriernet", "barriernet_rcbf": "barriernet", "baseline": "baseline",
        "baseline_dcbf_filter": "baseline", "baseline_ct_filter": "baseline", "shielded": "shielded",
        "cbf_beta": "cbf_beta", "cbf_beta_rcbf": "cbf_beta"}


def frame(spec: dict[str, tuple[float, float]], seeds=5, episodes=400, split="test", rng=0,
          violations: dict[str, int] | None = None) -> pd.DataFrame:
    """Episodes of each arm: outcome capture with probability p_capture, collision p_collision,
    else timeout; `violations[arm]` episodes get one body-barrier violation step."""
    gen = np.random.default_rng(rng)
    rows = []
    for arm, (p_capture, p_collision) in spec.items():
        for s in range(seeds):
            u = gen.random(episodes)
            for e in range(episodes):
                outcome = "capture" if u[e] < p_capture else "collision" if u[e] < p_capture + p_collision else "timeout"
                rows.append({"arm": arm, "algo": ALGO[arm], "seed": s, "split": split, "episode": e,
                             "env_seed": (1 if split == "dev" else 2) * 1_000_000 + e, "outcome": outcome,
                             "length": 100, "return": 0.0, "min_h": 0.5, "cbf_violation_steps": 0, "enforced_violation_steps": 0, "correction_sum": 0.0,
                             "interventions": 0, "infeasible_steps": 0, "decision_ms": 0.1})
    table = pd.DataFrame(rows)
    for arm, count in (violations or {}).items():
        index = table.index[(table["arm"] == arm)][:count]
        table.loc[index, "cbf_violation_steps"] = 1
    return table


def exact(spec: dict[str, tuple[list[int], list[int]]], split="test") -> pd.DataFrame:
    """A frame with exact per-seed capture counts: arm -> (captures per seed, episodes per seed)."""
    rows = []
    for arm, (captures, n) in spec.items():
        for s, k in enumerate(captures):
            for e in range(n[s]):
                rows.append({"arm": arm, "algo": ALGO[arm], "seed": s, "split": split, "episode": e, "env_seed": e,
                             "outcome": "capture" if e < k else "timeout", "length": 10, "return": 0.0, "min_h": 1.0,
                             "cbf_violation_steps": 0, "enforced_violation_steps": 0, "correction_sum": 0.0, "interventions": 0, "infeasible_steps": 0, "decision_ms": 0.0})
    return pd.DataFrame(rows)


# --- splits -------------------------------------------------------------------------------------


def test_choice_refuses_test_rows():
    dev = frame({"baseline_dcbf_filter": (0.9, 0.0)}, seeds=2, episodes=50, split="dev")
    test = frame({"baseline_dcbf_filter": (0.9, 0.0)}, seeds=2, episodes=50, split="test")
    with pytest.raises(dec.SplitLeakError, match="choose_alternative may read dev rows only"):
        dec.choose_alternative(pd.concat([dev, test]), D)
    with pytest.raises(dec.SplitLeakError, match="no 'split' column"):
        dec.choose_alternative(dev.drop(columns="split"), D)
    with pytest.raises(dec.SplitLeakError, match="test rows only"):
        dec.fixed_sequence(dev, None, D, ["baseline"])


def test_alternative_rule_highest_dev_capture_among_safe():
    # shielded captures most but collides: its upper bound exceeds 1 %; dcbf and ct never collide.
    dev = frame({"shielded": (0.99, 0.02), "baseline_dcbf_filter": (0.95, 0.0), "baseline_ct_filter": (0.90, 0.0)},
                seeds=5, episodes=200, split="dev")
    choice = dec.choose_alternative(dev, D)
    assert choice["chosen"] == "baseline_dcbf_filter"
    by_arm = {c["arm"]: c for c in choice["candidates"]}
    assert not by_arm["shielded"]["qualifies"]
    # 0 collisions in 1000 episodes: Clopper-Pearson upper = 1 - 0.025^(1/1000).
    assert by_arm["baseline_ct_filter"]["dev_collision_upper"] == pytest.approx(1 - 0.025 ** (1 / 1000), rel=1e-9)
    # Absent arms are skipped; nothing qualifying gives None.
    strict = DecisionParams(alternative_max_collision=0.001)
    assert dec.choose_alternative(dev, strict)["chosen"] is None


# --- intervals and p-values ---------------------------------------------------------------------


@pytest.mark.parametrize("theta0", [-0.05, -0.02, 0.0, 0.01])
def test_one_sided_p_agrees_with_the_interval(theta0):
    test = frame({"barriernet": (0.95, 0.0), "baseline": (0.96, 0.04)}, rng=3)
    a, b = dec.score_matrix(test, "barriernet", "capture")[1], dec.score_matrix(test, "baseline", "capture")[1]
    ci = dec.difference_interval(a, b, False, 0.95)
    assert (dec.p_above(ci, theta0, 0.95) < 0.025) == (ci.low > theta0)
    assert (dec.p_below(ci, theta0, 0.95) < 0.025) == (ci.high < theta0)
    # At theta0 = the interval's end the p-value is exactly alpha / 2.
    assert dec.p_above(ci, ci.low, 0.95) == pytest.approx(0.025, abs=1e-9)


def test_a_zero_width_interval_gives_p_0_or_1_and_never_rejects_at_its_own_value():
    """No variance left (se 0): the estimate alone decides; at theta0 = the estimate nothing is shown."""
    ci = CrossedInterval(0.02, 0.02, 0.02, 0.0, math.inf, "no variance")
    assert [dec.p_above(ci, theta0, 0.95) for theta0 in (0.0, 0.02, 0.03)] == [0.0, 1.0, 1.0]
    assert [dec.p_below(ci, theta0, 0.95) for theta0 in (0.03, 0.02, 0.0)] == [0.0, 1.0, 1.0]


def test_one_seed_falls_back_to_a_score_interval_never_zero_width():
    test = frame({"barriernet": (0.9, 0.0)}, seeds=1, episodes=600)
    ci = dec.mean_interval(dec.score_matrix(test, "barriernet", "collision")[1], 0.95)
    z2 = sps.norm.ppf(0.975) ** 2
    assert ci.low == 0.0 and ci.high == pytest.approx(z2 / (600 + z2), rel=1e-9)  # Wilson 0/n: z^2 / (n + z^2)
    assert "one training seed" in ci.method


def test_p_values_beside_the_intervals_match_independent_computations():
    test = exact({"barriernet": ([480, 470], [500, 500]), "shielded": ([450, 460], [500, 500])})
    step = dec.versus_alternative(test, "shielded", D)
    # Per-seed McNemar: barriernet captures episodes 0..k-1, shielded 0..j-1, so the discordant
    # pairs are k - j episodes, all won by barriernet: the two-sided binomial test of (k-j)/(k-j).
    for i, (k, j) in enumerate(((480, 450), (470, 460))):
        assert step["capture"]["mcnemar_per_seed"][i] == pytest.approx(sps.binomtest(k - j, k - j, 0.5).pvalue)
    # Seed-level permutation (independent seeds, 2 vs 2): 2 of the C(4, 2) = 6 relabellings are as extreme.
    assert step["capture"]["permutation"] == pytest.approx(2 / 6)


def test_seeds_needed_reaches_the_power_and_one_fewer_does_not():
    n = dec.seeds_for(0.016, 0.01, 0.95)
    def power(k, difference=0.01):
        df, shift = 2 * k - 2, difference / (0.016 * math.sqrt(2 / k))
        q = sps.t.ppf(0.975, df)
        return 1 - sps.nct.cdf(q, df, shift) + sps.nct.cdf(-q, df, shift)
    assert power(n) >= 0.8 > power(n - 1)
    # the minimum detectable difference at 5 seeds is the one this power function puts at 80 %
    mdd = dec.minimum_detectable(0.016, 5, 0.95)
    assert power(5, mdd) == pytest.approx(0.8, abs=1e-6)
    # and near the central-t approximation (t_.975,8 + t_.8,8) * 0.016 * sqrt(2/5) = 0.0336
    assert mdd == pytest.approx((sps.t.ppf(0.975, 8) + sps.t.ppf(0.8, 8)) * 0.016 * math.sqrt(0.4), rel=0.05)


# --- the fixed sequence -------------------------------------------------------------------------


def test_safe_arm_passes_step_one_when_it_cuts_collisions_and_keeps_capture():
    test = frame({"barriernet": (0.96, 0.0), "baseline": (0.95, 0.05)}, rng=1)
    step = dec.safe_vs_baseline(test, "barriernet", D)
    assert step["collision_reduction_shown"] and step["capture_noninferior_shown"] and step["rejected"]
    assert step["collision_diff"]["high"] < -D.min_collision_reduction
    assert len(step["capture"]["mcnemar_per_seed"]) == 5 and step["capture"]["permutation"] is not None


def test_capture_loss_beyond_the_margin_fails_step_one():
    test = frame({"barriernet": (0.85, 0.0), "baseline": (0.95, 0.05)}, rng=2)
    step = dec.safe_vs_baseline(test, "barriernet", D)
    assert step["collision_reduction_shown"] and not step["capture_noninferior_shown"] and not step["rejected"]
    assert step["p"] == step["p_capture_noninferior"] >= 0.025


def test_sequence_stops_at_the_first_failure():
    test = frame({"barriernet": (0.85, 0.0), "baseline": (0.95, 0.05), "baseline_dcbf_filter": (0.95, 0.0)}, rng=4)
    steps = dec.fixed_sequence(test, "baseline_dcbf_filter", D, ["barriernet", "baseline", "baseline_dcbf_filter"])
    assert [s["id"] for s in steps] == ["H1", "H2", "H3"]
    assert steps[0]["confirmatory"] and not steps[0]["rejected"]
    assert not steps[1]["confirmatory"] and not steps[2]["confirmatory"]


def _crossed_variance_by_hand(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Var(mean a - mean b) of two independent-seed arms on the same E scenarios at n seeds each,
    written out from the two-way ANOVA: seed variance (MS_seed - MS_res) / E per arm, residual
    MS_res, arm x scenario interaction Var_e(per-scenario difference) - MS_res_a / S - MS_res_b / S;
    then seeds / n + (interaction + residuals / n) / E, at least (MS_seed_a + MS_seed_b) / (n E)."""
    def anova(x):
        s, e = x.shape
        seed_means, scenario_means, grand = x.mean(1), x.mean(0), x.mean()
        residual = x - seed_means[:, None] - scenario_means[None, :] + grand
        return e * ((seed_means - grand) ** 2).sum() / (s - 1), (residual ** 2).sum() / ((s - 1) * (e - 1))
    (seed_a, res_a), (seed_b, res_b) = anova(a), anova(b)
    s, e = a.shape
    interaction = (a.mean(0) - b.mean(0)).var(ddof=1) - res_a / s - res_b / s
    full = ((seed_a - res_a) + (seed_b - res_b)) / e / n + (interaction + (res_a + res_b) / n) / e
    return max(full, (seed_a + seed_b) / (n * e), (interaction + (res_a + res_b) / n) / e)


def _seeds_by_hand(a: np.ndarray, b: np.ndarray, margin: float, power: float = 0.8) -> int:
    """The fewest seeds per arm (counting up from 2) at which scipy's noncentral t with 2n - 2 df
    gives a two-sided 5 % test `power` for a true difference `margin`, at the hand-written
    crossed variance."""
    for k in range(2, 10_000):
        df, shift = 2 * k - 2, margin / math.sqrt(_crossed_variance_by_hand(a, b, k))
        q = sps.t.ppf(0.975, df)
        if 1 - sps.nct.cdf(q, df, shift) + sps.nct.cdf(-q, df, shift) >= power:
            return k
    raise AssertionError("no seed count reaches the power")


def _matrix_frame(matrices: dict[str, np.ndarray]) -> pd.DataFrame:
    """Test episodes from 0/1 capture matrices (S, E) per arm (column e: the scenario e)."""
    rows = []
    for arm, m in matrices.items():
        for s, row in enumerate(m):
            for e, captured in enumerate(row):
                rows.append({"arm": arm, "algo": ALGO[arm], "seed": s, "split": "test", "episode": e,
                             "env_seed": e, "outcome": "capture" if captured else "timeout", "length": 10,
                             "return": 0.0, "min_h": 1.0, "cbf_violation_steps": 0, "enforced_violation_steps": 0,
                             "correction_sum": 0.0, "interventions": 0, "infeasible_steps": 0, "decision_ms": 0.0})
    return pd.DataFrame(rows)


def test_planning_number_counts_the_arm_by_scenario_term():
    """Two arms that fail on different scenarios (each arm's own hard scenarios, fixed across its
    seeds): the arm x scenario term is positive and the full variance binds, so the crossed
    design asks for more seeds than the seed-level t model, whose variance leaves that term out.
    The number equals a count-up search written here by hand."""
    rng = np.random.default_rng(7)
    hard_a, hard_b = rng.random(600) < 0.02, rng.random(600) < 0.02
    a = ((rng.random((5, 600)) < 0.97) & ~hard_a).astype(float)
    b = ((rng.random((5, 600)) < 0.97) & ~hard_b).astype(float)
    step = dec.safe_vs_baseline(_matrix_frame({"shielded": a, "baseline": b}), "shielded", D)
    n = step["seeds_for_noninferiority"]
    assert n == _seeds_by_hand(a, b, D.noninferiority_margin)
    interaction = (a.mean(0) - b.mean(0)).var(ddof=1)  # includes the residuals / S, which are small here
    assert interaction / 600 > 0.5 * _crossed_variance_by_hand(a, b, 5)  # the term carries the variance
    sd = math.sqrt((a.mean(1).var(ddof=1) + b.mean(1).var(ddof=1)) / 2)
    assert n > dec.seeds_for(sd, D.noninferiority_margin, D.confidence)
    # an arm shown worse than the margin: no number, and the note says why
    worse = dec.safe_vs_baseline(_matrix_frame({"shielded": a * (rng.random((5, 600)) < 0.8), "baseline": b}),
                                 "shielded", D)
    assert worse["seeds_for_noninferiority"] is None
    assert worse["seeds_for_noninferiority_note"].startswith("capture is shown lower by more than the margin")


def test_non_inferiority_not_shown_names_the_seeds_that_would_settle_it():
    """Shielded 0.2 pp below the baseline with a wide seed spread: non-inferiority (margin 3 pp)
    is not shown. The planning number: the fewest seeds per arm at which the crossed design (these
    E scenarios, n seeds per arm) gives a two-sided test at 5 % (the step's one-sided 2.5 %) 80 %
    power for a true difference of 3 pp. Checked with the variance written out by hand, which at
    5 seeds is the step's own interval's variance, and scipy's noncentral t; it is never below
    the seed-level t model's number, whose variance is the crossed one's floor."""
    from tasks.compare import _step_text

    shielded, baseline = [440, 480, 455, 470, 430], [450, 470, 440, 475, 446]
    test = exact({"shielded": (shielded, [500] * 5), "baseline": (baseline, [500] * 5)})
    step = dec.safe_vs_baseline(test, "shielded", D)
    assert not step["capture_noninferior_shown"] and step["seeds_for_noninferiority_note"] is None
    (_, a), (_, b) = dec.score_matrix(test, "shielded", "capture"), dec.score_matrix(test, "baseline", "capture")
    assert _crossed_variance_by_hand(a, b, 5) == pytest.approx(step["capture_diff"]["se"] ** 2, rel=1e-9)
    n = step["seeds_for_noninferiority"]

    def power(k):
        df, shift = 2 * k - 2, D.noninferiority_margin / math.sqrt(_crossed_variance_by_hand(a, b, k))
        q = sps.t.ppf(0.975, df)
        return 1 - sps.nct.cdf(q, df, shift) + sps.nct.cdf(-q, df, shift)
    assert power(n) >= 0.8 > power(n - 1)
    sd = math.sqrt((np.var(np.array(shielded) / 500, ddof=1) + np.var(np.array(baseline) / 500, ddof=1)) / 2)
    assert n >= dec.seeds_for(sd, D.noninferiority_margin, D.confidence)
    assert f"about {n} seeds per arm would give 80 % power to show it" in _step_text({**step, "id": "H2"})
    # shown: no planning number in the text
    shown = dec.safe_vs_baseline(exact({"shielded": ([475] * 5, [500] * 5), "baseline": ([475] * 5, [500] * 5)}),
                                 "shielded", D)
    assert shown["capture_noninferior_shown"] and "seeds per arm" not in _step_text({**shown, "id": "H2"})
    # one seed per arm: no variance to plan from, and the text says so instead of a number
    single = dec.safe_vs_baseline(exact({"shielded": ([440], [500]), "baseline": ([450], [500])}), "shielded", D)
    assert single["seeds_for_noninferiority"] is None and not single["capture_noninferior_shown"]
    assert "fewer than 2 seeds or scenarios per arm" in _step_text({**single, "id": "H2"})


@pytest.mark.parametrize("bn, alt, expected", [
    ([490] * 5, [450] * 5, "better"),
    ([450] * 5, [490] * 5, "worse"),
    ([475, 476, 474, 475, 475], [475, 474, 476, 475, 475], "equivalent"),
    ([470, 490, 450, 480, 460], [480, 460, 470, 455, 490], "inconclusive: needs about"),
])
def test_versus_alternative_branches(bn, alt, expected):
    # Exact counts per seed out of 500 episodes: the capture difference is known.
    test = exact({"barriernet": (bn, [500] * 5), "shielded": (alt, [500] * 5)})
    step = dec.versus_alternative(test, "shielded", D)
    assert step["answer"].startswith(expected), step["answer"]
    assert step["capture_diff"]["estimate"] == pytest.approx((sum(bn) - sum(alt)) / 2500)
    if expected.startswith("inconclusive"):
        sd = np.sqrt((np.var(np.array(bn) / 500, ddof=1) + np.var(np.array(alt) / 500, ddof=1)) / 2)
        assert step["seed_sd"] == pytest.approx(sd)
        # the crossed design's number: 90 % power for each one-sided test of the TOST, by hand;
        # at least the seed-level t model's (its variance is the crossed one's floor)
        (_, a), (_, b) = dec.score_matrix(test, "barriernet", "capture"), dec.score_matrix(test, "shielded", "capture")
        assert step["seeds_needed"] == _seeds_by_hand(a, b, D.equivalence_margin, power=0.9)
        assert step["seeds_needed"] >= dec.seeds_for(sd, D.equivalence_margin, D.confidence, power=0.9) > 5
        assert step["answer"] == (f"inconclusive: needs about {step['seeds_needed']} seeds per arm (80 % power to show "
                                  "equivalence within +/- 2 pp if the true difference were 0, on these test scenarios)")


# --- gap, unsafe counts, curves -----------------------------------------------------------------


def test_train_deploy_gap_by_hand():
    test = exact({"cbf_beta": ([400, 410], [500, 500]), "cbf_beta_rcbf": ([380, 390], [500, 500])})
    gap = dec.train_deploy_gap(test, "cbf_beta", "cbf_beta_rcbf", 0.95)
    assert gap["gap"] == pytest.approx((0.81 - 0.77) / 0.81)
    # the interval: the paired difference's (tested on its own above) over capture_train, 0.81;
    # both seeds lost 20 captures, so it lies above 0 and is not folded
    def difference(train_arm, deploy_arm, table):
        (_, a), (_, b) = dec.score_matrix(table, train_arm, "capture"), dec.score_matrix(table, deploy_arm, "capture")
        return dec.difference_interval(a, b, dec.shared_seeds(table, train_arm, deploy_arm), 0.95)
    diff = difference("cbf_beta", "cbf_beta_rcbf", test)
    assert diff.low > 0 and (gap["low"], gap["high"]) == pytest.approx((diff.low / 0.81, diff.high / 0.81))
    # a difference whose interval straddles 0: the gap |difference| / 0.81 runs from 0 to the larger end
    mixed = exact({"cbf_beta": ([400, 410], [500, 500]), "cbf_beta_rcbf": ([410, 400], [500, 500])})
    straddle = dec.train_deploy_gap(mixed, "cbf_beta", "cbf_beta_rcbf", 0.95)
    diff = difference("cbf_beta", "cbf_beta_rcbf", mixed)
    assert diff.low < 0 < diff.high and straddle["gap"] == pytest.approx(0.0, abs=1e-12)
    assert (straddle["low"], straddle["high"]) == pytest.approx((0.0, max(-diff.low, diff.high) / 0.81))
    assert dec.train_deploy_gap(test, "cbf_beta", "absent", 0.95) is None


def test_train_deploy_gap_when_the_filter_adds_captures():
    """Both seeds capture 20 more with the filter: the difference's interval lies below 0, and
    |difference| runs from -high to -low (mirrored, not folded to 0). The same interval, up to the
    base, as the arms' captures exchanged (a paired difference only changes sign)."""
    test = exact({"cbf_beta": ([380, 390], [500, 500]), "cbf_beta_rcbf": ([400, 410], [500, 500])})
    swapped = exact({"cbf_beta": ([400, 410], [500, 500]), "cbf_beta_rcbf": ([380, 390], [500, 500])})
    gap = dec.train_deploy_gap(test, "cbf_beta", "cbf_beta_rcbf", 0.95)
    mirror = dec.train_deploy_gap(swapped, "cbf_beta", "cbf_beta_rcbf", 0.95)
    (_, a), (_, b) = dec.score_matrix(test, "cbf_beta", "capture"), dec.score_matrix(test, "cbf_beta_rcbf", "capture")
    diff = dec.difference_interval(a, b, dec.shared_seeds(test, "cbf_beta", "cbf_beta_rcbf"), 0.95)
    assert diff.high < 0 and gap["gap"] == pytest.approx(0.04 / 0.77)
    assert (gap["low"], gap["high"]) == pytest.approx((-diff.high / 0.77, -diff.low / 0.77))
    assert mirror["low"] > 0 and (gap["low"] * 0.77, gap["high"] * 0.77) == pytest.approx(
        (mirror["low"] * 0.81, mirror["high"] * 0.81))


def test_score_matrix_names_what_the_crossed_design_lacks():
    test = exact({"barriernet": ([5, 5], [10, 10])})
    with pytest.raises(ValueError, match="arm 'baseline' has no episodes"):
        dec.score_matrix(test, "baseline", "capture")
    with pytest.raises(ValueError, match="not every seed played the same episodes"):
        dec.score_matrix(exact({"barriernet": ([5, 5], [10, 9])}), "barriernet", "capture")
    with pytest.raises(ValueError, match=r"score='return'; accepted"):
        dec.episode_scores(test, "return")


def test_unsafe_counts_include_body_barrier_violations():
    test = frame({"barriernet": (0.9, 0.0)}, seeds=2, episodes=250, violations={"barriernet": 3})
    counts = dec.unsafe_counts(test, "barriernet", 0.95)
    assert (counts["unsafe"], counts["collisions"], counts["episodes"]) == (3, 0, 500)
    assert counts["upper"] == pytest.approx(sps.beta.ppf(0.975, 4, 497))


def test_plateau_and_training_collisions():
    steps = np.arange(1, 11) * 100.0
    flat = [pd.DataFrame({"step": steps, "value": np.r_[np.linspace(0, 0.9, 6), [0.95] * 4]})]
    rising = [pd.DataFrame({"step": steps, "value": np.linspace(0, 0.9, 10)})]
    assert dec.plateau_test(flat, D)["converged"] is True
    result = dec.plateau_test(rising, D)
    assert result["converged"] is False and result["change"] == pytest.approx(0.2)  # means 0.85 vs 0.65
    collision = pd.DataFrame({"step": [100.0, 200.0, 300.0], "value": [0.5, 0.2, 0.0]})
    episodes = pd.DataFrame({"step": [100.0, 200.0, 300.0], "value": [10.0, 20.0, 30.0]})
    out = dec.training_collisions(collision, episodes)
    assert out["collisions"] == pytest.approx(0.5 * 10 + 0.2 * 20)
    assert out["mean_rate"] == pytest.approx(((0.5 + 0.2) / 2 * 100 + (0.2 + 0.0) / 2 * 100) / 200)


def test_plateau_says_when_it_cannot_test():
    few = [pd.DataFrame({"step": [100.0, 200.0, 300.0], "value": [0.1, 0.5, 0.9]})]
    assert dec.plateau_test(few, D)["converged"] is None
    assert dec.plateau_test([pd.DataFrame({"step": [], "value": []})], D)["converged"] is None
    # the last 20 % of 10,000 steps holds a point, the 20 % before it none
    gap_in_logging = [pd.DataFrame({"step": [100.0, 200.0, 300.0, 10_000.0], "value": [0.1, 0.5, 0.9, 0.9]})]
    result = dec.plateau_test(gap_in_logging, D)
    assert result["converged"] is None and "window holds no logged point" in result["note"]


# --- matrix, outcome A-D, gates ------------------------------------------------------------------


def test_matrix_scores_by_the_documented_mapping():
    scores = dec.matrix_scores({"A": {"gap": 0.03, "safety": 0.004, "task": 0.06, "training_speed": 1.0,
                                      "complexity": 2},
                                "B": {"gap": 0.0, "safety": 0.03, "task": 0.0, "training_speed": 6.0,
                                      "complexity": 2}}, D.weights)
    assert [scores["A"][c] for c in ("gap", "safety", "task", "training_speed", "complexity")] == [4, 5, 3, 5, 5]
    assert [scores["B"][c] for c in ("gap", "safety", "task", "training_speed", "complexity")] == [5, 3, 5, 2, 5]
    assert scores["A"]["total"] == pytest.approx((30 * 4 + 25 * 5 + 20 * 3 + 15 * 5 + 10 * 5) / 100)
    assert dec.matrix_scores({"A": {"gap": None}}, D.weights)["A"]["total"] is None


def gap(value, low, high):
    return {"gap": value, "low": low, "high": high}


ALL_SAFE = {"A": True, "B": True, "C": True}


@pytest.mark.parametrize("facts, letter", [
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=8.0), "A"),                  # plan rule A
    (dec.OutcomeFacts(ALL_SAFE, gap(0.12, 0.08, 0.16), overhead=2.0), "B"),                 # plan rule B
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=2.0, totals={"A": 3.1, "B": 4.0}), "B"),  # open
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=2.0, totals={"A": 4.0, "B": 4.0}), "A"),  # tie
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=2.0, totals={"A": None, "B": 4.0}), "B"),  # open,
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=2.0, totals={"A": 4.0, "B": None}), "A"),  # a total
    (dec.OutcomeFacts(ALL_SAFE, gap(0.01, 0.0, 0.03), overhead=2.0, totals={}), "B"),                     # missing
    (dec.OutcomeFacts({"A": True, "B": False, "C": True}, gap(0.12, 0.08, 0.16), overhead=2.0,
                      hybrid_noninferior=True), "C"),                                         # hybrid rule
    (dec.OutcomeFacts({"A": True, "B": False, "C": True}, gap(0.12, 0.08, 0.16), overhead=2.0,
                      hybrid_noninferior=False), "A"),                                        # hybrid loses capture
    (dec.OutcomeFacts({"A": False, "B": False, "C": False}, gap(0.01, 0.0, 0.03), overhead=8.0), "D"),
    (dec.OutcomeFacts({"A": None, "B": False, "C": None}), "D"),
    (dec.OutcomeFacts({"A": None, "B": True, "C": None}), "B"),                               # no CBF-Beta
    (dec.OutcomeFacts({"A": False, "B": True, "C": True}, gap(0.01, 0.0, 0.03), overhead=8.0), "B"),  # A unsafe
])
def test_outcome_branches(facts, letter):
    outcome = dec.choose_outcome(facts, D)
    assert outcome.letter == letter, outcome.reasons
    assert outcome.arm == dec.APPROACH_ARMS.get(letter)
    assert outcome.reasons


def test_gates_statuses():
    outcome = dec.Outcome("B", "barriernet", ["r"])
    unsafe = {"arm": "barriernet", "unsafe": 0, "episodes": 2500, "upper": 0.00147}
    rows = dec.gates(gap_a=None, barriernet_present=True, chosen_unsafe=unsafe, outcome=outcome,
                     matrix_complete=True, p_values_complete=True,
                     plateau={"converged": False, "change": 0.1, "window": 0.2, "tolerance": 0.02}, decision=D)
    status = {r["gate"]: r["status"] for r in rows}
    assert status == {"PG-01": "FAIL", "PG-02": "PASS", "PG-03": "PASS", "PG-04": "PASS", "PG-05": "DOCUMENTED"}
    assert "arms cbf_beta / cbf_beta_rcbf absent" in rows[0]["evidence"]
    never = {"gap": None, "low": None, "high": None, "note": "cbf_beta never captured: the relative gap is undefined"}
    rows = dec.gates(gap_a=never, barriernet_present=True, chosen_unsafe=unsafe, outcome=outcome,
                     matrix_complete=True, p_values_complete=True, plateau=None, decision=D)
    assert rows[0]["status"] == "FAIL" and "never captured" in rows[0]["evidence"]
    assert rows[4]["status"] == "FAIL"  # no learning curve: neither converged nor documented
    rows = dec.gates(gap_a=gap(0.01, 0, 0.03), barriernet_present=True, chosen_unsafe={**unsafe, "unsafe": 1},
                     outcome=dec.Outcome("D", None, []), matrix_complete=False, p_values_complete=True,
                     plateau={"converged": True, "previous_mean": 0.9, "last_mean": 0.91, "window": 0.2,
                              "tolerance": 0.02}, decision=D)
    status = {r["gate"]: r["status"] for r in rows}
    assert status == {"PG-01": "PASS", "PG-02": "FAIL", "PG-03": "FAIL", "PG-04": "FAIL", "PG-05": "PASS"}
