"""The report's filter-sweep section (Pareto view on dev episodes) and its cross-machine spread line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks import report_spread, report_sweep
from tasks.params import load_params


def test_pareto_mask_against_a_naive_loop():
    rng = np.random.default_rng(0)
    gain, cost = rng.random(60).round(1), rng.random(60).round(1)  # rounding makes ties
    expected = []
    for i in range(60):
        dominated = any(gain[j] >= gain[i] and cost[j] <= cost[i] and (gain[j] > gain[i] or cost[j] < cost[i])
                        for j in range(60))
        expected.append(not dominated)
    assert report_sweep.pareto_mask(gain, cost).tolist() == expected



def test_efficiency_is_judged_across_forms_within_a_checkpoint_family():
    """The committed sweep's case: on the baseline's checkpoints dcbf at gamma 0.2 (capture 0.929,
    collision 0) is the best dcbf configuration, but dcbf_exact at gamma 1 (0.932, 0) dominates it,
    so it is not efficient; a configuration of another family never counts against it."""
    means = pd.DataFrame({
        "algo": ["baseline", "baseline", "baseline", "cbf_beta"],
        "form": ["dcbf", "dcbf", "dcbf_exact", "dcbf"],
        "capture_rate": [0.929, 0.900, 0.932, 0.990],
        "collision_rate": [0.0, 0.0, 0.0, 0.0],
    })
    efficient = report_sweep.efficient_in_family(means, "collision_rate")
    assert efficient.tolist() == [False, False, True, True]
    assert report_sweep.pareto_mask(means["capture_rate"][:2], means["collision_rate"][:2]).tolist() == [True, False]

def _write_sweep(workdir, algo, seed, rows, choice=None):
    cell = workdir / "results" / "eval" / f"{algo}-s{seed}"
    cell.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(cell / report_sweep.SWEEP_FILE, index=False)
    if choice is not None:
        (cell / report_sweep.CHOICE_FILE).write_text(json.dumps(choice))


def _row(form, gamma, capture, collision, split="dev"):
    return {"form": form, "gamma": gamma, "robust_margin": 0.0, "split": split, "episodes": 100, "steps": 1000,
            "capture_rate": capture, "collision_rate": collision, "collision_upper": collision + 0.03,
            "intervention_rate": gamma / 10, "infeasible_rate": 0.0, "cbf_violation_rate": 0.0,
            "mean_capture_steps": 100.0}


def test_section_averages_seeds_marks_the_choice_and_refuses_test_rows(tmp_path):
    # eval.tuned_filter unset: each seed chose on its own dev sweep
    params = load_params(overrides={"train.seeds": [0, 1], "train.algos": ["baseline"], "eval.tuned_filter": None})
    choice = {**_row("dcbf", 0.2, 0.9, 0.0), "qualified": True}
    _write_sweep(tmp_path, "baseline", 0, [_row("dcbf", 0.2, 0.9, 0.0), _row("dcbf", 1.0, 0.8, 0.1)], choice)
    _write_sweep(tmp_path, "baseline", 1, [_row("dcbf", 0.2, 0.7, 0.0), _row("dcbf", 1.0, 0.6, 0.3)], choice)
    sweeps, choices = report_sweep.read_sweeps(params, tmp_path)
    means = report_sweep.configuration_means(sweeps)
    assert means.set_index("gamma")["capture_rate"].to_dict() == pytest.approx({0.2: 0.8, 1.0: 0.7})
    assert means.set_index("gamma")["collision_rate"].to_dict() == pytest.approx({0.2: 0.0, 1.0: 0.2})
    episodes = pd.DataFrame({"arm": ["baseline"] * 4, "split": ["dev", "dev", "test", "test"],
                             "outcome": ["capture", "collision", "capture", "capture"],
                             "interventions": [0, 0, 0, 0], "length": [10, 10, 10, 10]})
    md, figures = report_sweep.section(params, tmp_path, episodes, {"baseline": "tab:orange"})
    assert "| 0 | dcbf | 0.2 | 0 | 90.00 % |" in md and "| 1 | dcbf | 0.2 | 0 | 90.00 % |" in md
    assert set(figures) == {"filter_sweep_pareto"} and figures["filter_sweep_pareto"][:4] == b"\x89PNG"
    points = report_sweep.arm_dev_points(episodes)  # the trained arm is placed by its dev rows only
    assert points.iloc[0]["capture_rate"] == 0.5 and points.iloc[0]["collision_rate"] == 0.5

    _write_sweep(tmp_path, "baseline", 1, [_row("dcbf", 0.2, 0.7, 0.0, split="test")])
    with pytest.raises(ValueError, match="dev only"):
        report_sweep.read_sweeps(params, tmp_path)


def test_spread_flags_a_step_whose_bound_is_closer_to_its_threshold_than_the_spread():
    decision = load_params().decision
    spread = {"capture": 0.023, "difference": 0.022, "collision": 0.02, "source": "test"}
    robust = {"id": "H3", "kind": "vs_alternative", "arm": "barriernet", "against": "x",
              "capture_diff": {"estimate": 0.10, "low": 0.08, "high": 0.12}, "collision_diff": {}}
    close = {"id": "H3", "kind": "vs_alternative", "arm": "barriernet", "against": "x",
             "capture_diff": {"estimate": 0.03, "low": 0.01, "high": 0.05}, "collision_diff": {}}
    assert report_spread.fragile_steps([robust], decision, spread) == []
    flagged = report_spread.fragile_steps([close], decision, spread)
    assert any("better (capture > 0) bound +1.00 pp is 1.00 pp" in f for f in flagged)
    # H1-type: non-inferiority at -margin and the collision cut at -min_reduction
    m, r = decision.noninferiority_margin, decision.min_collision_reduction
    h1 = {"id": "H1", "kind": "vs_baseline", "arm": "barriernet", "against": "baseline",
          "capture_diff": {"low": -m + 0.01}, "collision_diff": {"high": -r - 0.05}}
    flagged = report_spread.fragile_steps([h1], decision, spread)
    assert len(flagged) == 1 and "capture non-inferiority" in flagged[0]


def test_the_stored_spread_is_read_from_the_data_file():
    spread = report_spread.load_spread()
    assert spread is not None
    assert spread["capture"] == pytest.approx(0.9567 - 0.9333)
    assert spread["difference"] == pytest.approx(0.0383 - 0.0167)
    assert spread["collision"] == pytest.approx(0.0633 - 0.0433)


def test_stage_table_reads_the_wall_times_the_registry_records(tmp_path):
    from tasks import report

    for stage, seconds in (("qp_benchmark", 12.5), ("compare", 3.0)):
        (tmp_path / "results" / stage).mkdir(parents=True)
        (tmp_path / "results" / stage / "timing.json").write_text(json.dumps({"wall_seconds": seconds}))
    inputs = report.Inputs(metrics={}, summary=pd.DataFrame(), train=[], evals=[], qp_table=pd.DataFrame(),
                           qp_metrics=None)
    table = report._stage_times(inputs, 1.0, tmp_path)
    assert f"| qp_benchmark | {report.fmt_seconds(12.5)} |" in table
    assert f"| compare | {report.fmt_seconds(3.0)} |" in table
    assert "not recorded" in report._stage_times(inputs, 1.0, tmp_path / "elsewhere").split("compare")[1]


def test_stage_table_says_train_and_evaluate_are_sums_of_cells(tmp_path):
    """Two 60 s cells that ran side by side: the table must not call 120 s the stage's wall time."""
    from types import SimpleNamespace

    from tasks import report

    train = [SimpleNamespace(algo="baseline", seed=s, summary={"wall_seconds": 60.0}) for s in (0, 1)]
    evals = [SimpleNamespace(algo="baseline", seed=s, wall_seconds=30.0) for s in (0, 1)]
    inputs = report.Inputs(metrics={}, summary=pd.DataFrame(), train=train, evals=evals, qp_table=None,
                           qp_metrics=None)
    played = tmp_path / "results" / "scenarios" / "baseline-s0"
    played.mkdir(parents=True)
    (played / "timing.json").write_text(json.dumps({"wall_seconds": 20.0}))
    (tmp_path / "results" / "scenarios" / "baseline-s1").mkdir()  # a skipped cell: no timing
    (tmp_path / "results" / "headline").mkdir()
    (tmp_path / "results" / "headline" / "timing.json").write_text(json.dumps({"wall_seconds": 0.5}))
    table = report._stage_times(inputs, 1.0, tmp_path)
    assert f"| scenarios | {report.fmt_seconds(20.0)} (sum of 1 cell) | baseline-s0: {report.fmt_seconds(20.0)} |" in table
    assert f"| headline | {report.fmt_seconds(0.5)} |" in table
    assert f"| train | {report.fmt_seconds(120.0)} (sum of 2 cells) |" in table
    assert f"| evaluate | {report.fmt_seconds(60.0)} (sum of 2 cells) |" in table
    assert "| stage | time | per cell |" in table


def test_section_names_the_one_committed_configuration(tmp_path):
    params = load_params(overrides={"train.seeds": [0, 1], "train.algos": ["baseline"],
                                    "eval.tuned_filter": {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0}})
    fixed = {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0, "source": "eval.tuned_filter"}
    _write_sweep(tmp_path, "baseline", 0, [_row("dcbf", 0.2, 0.9, 0.0), _row("dcbf", 1.0, 0.8, 0.1)], fixed)
    _write_sweep(tmp_path, "baseline", 1, [_row("dcbf", 0.2, 0.7, 0.0), _row("dcbf", 1.0, 0.6, 0.3)], fixed)
    episodes = pd.DataFrame(columns=["arm", "seed", "split", "outcome", "length", "interventions"])
    md, _ = report_sweep.section(params, tmp_path, episodes, {"baseline": "tab:orange"})
    assert "`eval.tuned_filter` = dcbf, gamma 0.2, margin 0 m" in md
    assert "Chosen configuration per baseline seed" not in md


def test_section_counts_configurations_once_and_families_apart(tmp_path):
    """Two configurations swept on two checkpoint families: "2 configurations ... on each of the
    baseline, cbf_beta checkpoints (4 in all)", not "4 configurations" (it once counted the grid
    once per family)."""
    params = load_params(overrides={"train.seeds": [0], "train.algos": ["baseline", "cbf_beta"],
                                    "eval.tuned_filter": {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0}})
    fixed = {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0, "source": "eval.tuned_filter"}
    for algo in ("baseline", "cbf_beta"):
        _write_sweep(tmp_path, algo, 0, [_row("dcbf", 0.2, 0.9, 0.0), _row("dcbf", 1.0, 0.8, 0.1)], fixed)
    episodes = pd.DataFrame(columns=["arm", "seed", "split", "outcome", "length", "interventions"])
    md, _ = report_sweep.section(params, tmp_path, episodes, {"baseline": "tab:orange"})
    assert "2 configurations (" in md and "on each of the baseline, cbf_beta checkpoints (4 in all)" in md
