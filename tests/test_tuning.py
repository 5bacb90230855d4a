"""The equal-effort tuning study (tasks/tuning.py): its rule, pooling, params and a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from tasks import tuning
from tasks.params import ParamsError, load_params, params_hash, training_config
from tests.helpers import REPO_ROOT, TINY_PIPELINE


def _cells(scores: dict[tuple[str, int], list[tuple[float, float]]]) -> pd.DataFrame:
    rows = []
    for (algo, config), seeds in scores.items():
        for seed, (capture, collision) in enumerate(seeds):
            rows.append({"algo": algo, "config": config, "learning_rate": 1e-3, "knob": "k", "value": str(config),
                         "seed": seed, "dev_episodes": 100, "capture_rate": capture, "collision_rate": collision,
                         "score": capture - collision, "train_wall_seconds": 1.0, "env_steps": 10})
    return pd.DataFrame(rows)


def test_rule_picks_the_highest_mean_score_and_ties_keep_the_earlier_configuration():
    cells = _cells({
        # a: config 1 has mean score (0.9-0.1 + 0.7-0.1)/2 = 0.70 > config 0's 0.65
        ("a", 0): [(0.70, 0.05), (0.70, 0.05)], ("a", 1): [(0.90, 0.10), (0.70, 0.10)],
        # b: a tie at 0.5 (0.6-0.1 vs 0.5-0.0): the earlier configuration wins
        ("b", 0): [(0.60, 0.10), (0.60, 0.10)], ("b", 1): [(0.50, 0.00), (0.50, 0.00)],
    })
    means = tuning.choose(cells)
    chosen = means[means["chosen"]].set_index("algo")["config"].to_dict()
    assert chosen == {"a": 1, "b": 0}
    a1 = means[(means["algo"] == "a") & (means["config"] == 1)].iloc[0]
    assert a1["score"] == pytest.approx(0.70) and a1["score_min"] == pytest.approx(0.60)


def test_rule_refuses_unequal_budgets():
    cells = _cells({("a", 0): [(0.5, 0.0), (0.5, 0.0)], ("b", 0): [(0.5, 0.0)]})
    with pytest.raises(ValueError, match="unequal tuning budgets"):
        tuning.choose(cells)


def _wilson_upper(k: int, n: int, z: float = 1.959963984540054) -> float:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre + half


def test_filter_choice_pools_the_seeds_dev_episodes():
    params = load_params()
    base = {"split": "dev", "intervention_rate": 0.1, "infeasible_rate": 0.0, "cbf_violation_rate": 0.0,
            "mean_capture_steps": 100.0, "collision_upper": 0.0}
    rows = [
        # (form, gamma, margin): seed 0 / seed 1 with 200 / 100 episodes
        {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0, "episodes": 200, "steps": 1000, "capture_rate": 0.9,
         "collision_rate": 0.02, **base},
        {"form": "dcbf", "gamma": 0.2, "robust_margin": 0.0, "episodes": 100, "steps": 500, "capture_rate": 0.6,
         "collision_rate": 0.05, **base},
        {"form": "dcbf", "gamma": 0.05, "robust_margin": 0.0, "episodes": 200, "steps": 1000, "capture_rate": 0.8,
         "collision_rate": 0.0, **base},
        {"form": "dcbf", "gamma": 0.05, "robust_margin": 0.0, "episodes": 100, "steps": 500, "capture_rate": 0.8,
         "collision_rate": 0.0, **base},
    ]
    pooled = tuning.pooled_filter_choice(pd.DataFrame(rows), params)
    table = pooled["table"].set_index("gamma")
    # by hand: gamma 0.2 captures (180 + 60) / 300, collides (4 + 5) / 300
    assert table.loc[0.2, "capture_rate"] == pytest.approx(240 / 300)
    assert table.loc[0.2, "collision_rate"] == pytest.approx(9 / 300)
    assert table.loc[0.2, "collision_upper"] == pytest.approx(_wilson_upper(9, 300), abs=1e-9)
    assert table.loc[0.05, "collision_upper"] == pytest.approx(_wilson_upper(0, 300), abs=1e-9)
    # 0.2's upper bound 5.6 % is above the 5 % rule, so the rule takes gamma 0.05 despite its lower capture
    assert _wilson_upper(9, 300) > params.eval.filter_sweep.max_collision_upper
    assert pooled["choice"]["gamma"] == 0.05 and pooled["choice"]["qualified"]


def test_every_algorithm_gets_the_same_budget_and_the_defaults_come_first():
    params = load_params()
    grids = {algo: tuning.configurations(params, algo) for algo in params.tuning.algos}
    assert len({len(g) for g in grids.values()}) == 1
    shared = {"learning_rate": params.train.learning_rate, "exploration_std": params.barriernet.exploration_std,
              "init_log_std": params.train.init_log_std, "ent_coef": params.train.ent_coef}
    for algo, grid in grids.items():
        assert all(grid[0][k] == shared[k] for k in grid[0]), (algo, grid[0])


def test_per_algo_settings_change_only_that_algorithms_training_key():
    params = load_params()
    changed = load_params(overrides={"train.per_algo.baseline.learning_rate": 0.00123})
    key = lambda p, algo: params_hash(training_config(p, algo, 0))  # noqa: E731
    assert key(changed, "baseline") != key(params, "baseline")
    for algo in ("barriernet", "cbf_beta", "shielded"):
        assert key(changed, algo) == key(params, algo)
    assert changed.for_algo("baseline").train.learning_rate == 0.00123
    assert changed.for_algo("shielded").train.learning_rate == params.for_algo("shielded").train.learning_rate


@pytest.mark.parametrize("override, words", [
    ({"train.per_algo.cbf_beta.init_log_std": -0.5}, ["train.per_algo.cbf_beta.init_log_std", "learning_rate, ent_coef"]),
    ({"train.per_algo.baseline.exploration_std": [0.3, 0.6]}, ["train.per_algo.baseline.exploration_std"]),
    ({"train.per_algo.baseline.learning_rate": 2.0}, ["train.per_algo.baseline.learning_rate"]),
    ({"tuning.exploration.cbf_beta": [0.0]}, ["tuning.exploration", "same number"]),
    ({"tuning.learning_rates": [0.001, 0.001]}, ["tuning.learning_rates", "distinct"]),
    ({"eval.tuned_filter": {"form": "dcbf", "gamma": 1.5, "robust_margin": 0.0}}, ["eval.tuned_filter.gamma", "(0, 1]"]),
    ({"eval.tuned_filter": {"form": "qp", "gamma": 0.2, "robust_margin": 0.0}}, ["eval.tuned_filter.form"]),
])
def test_bad_tuning_keys_are_refused_by_name(override, words):
    with pytest.raises(ParamsError) as info:
        load_params(overrides=override)
    for word in words:
        assert word in str(info.value)


def test_unknown_per_algo_key_names_the_nearest():
    with pytest.raises(ParamsError, match="train.per_algo.baseline.learning_rate"):
        load_params(overrides={"train.per_algo.baseline.learning_rte": 0.001})


def test_committed_params_equal_the_studys_choice():
    """params.yaml carries what results/tuning/choice.json chose (the study is run once, by hand)."""
    choice_path = REPO_ROOT / tuning.CHOICE_PATH
    assert choice_path.is_file(), "results/tuning/choice.json is missing: run `python -m tasks tune` and commit it"
    choice = json.loads(choice_path.read_text())
    params = load_params()
    assert tuning.committed_matches(params, choice) == []
    budget = choice["budget"]
    assert budget["env_steps_per_algorithm"] == (budget["configurations_per_algorithm"] * len(budget["seeds"])
                                                 * budget["steps_per_cell"])
    cells = pd.read_csv(REPO_ROOT / tuning.CELLS_PATH)
    # the committed choice is what the rule picks from the committed cells
    means = tuning.choose(cells)
    for row in means[means["chosen"]].itertuples():
        assert tuning.configurations(params, row.algo)[row.config] == choice["per_algo"][row.algo]
    assert set(cells.groupby("algo").size()) == {budget["configurations_per_algorithm"] * len(budget["seeds"])}


def test_committed_tuning_report_is_what_the_code_renders_from_the_committed_results(tmp_path: Path):
    """reports/tuning/tuning_report.md is written by `python -m tasks tune`, outside DVC, so nothing
    else would notice its words drifting from the code: re-rendering it from the committed results
    must give the committed file. It states the evaluated runs' steps (whole updates) and which
    learner the study trained with: a study recorded before `train.learner` existed (as the first
    committed one, at 8fe2edd) trained with torch's, and both reports say so."""
    import shutil

    shutil.copytree(REPO_ROOT / tuning.RESULTS_DIR, tmp_path / tuning.RESULTS_DIR)
    params = load_params()
    written = tuning.render_report(params, tmp_path).read_text()
    assert written == (REPO_ROOT / tuning.REPORT_PATH).read_text(), \
        "reports/tuning/tuning_report.md is stale: run `python -m tasks tune --report-only` and commit it"
    steps = math.ceil(params.train.total_steps / params.train.batch_size) * params.train.batch_size
    assert f"({steps:,} env steps run:" in written
    choice = json.loads((REPO_ROOT / tuning.CHOICE_PATH).read_text())
    assert f"({choice['budget']['steps_per_cell'] / steps:.0%} of their env steps)" in written
    from tasks.report_tuning import budget_line

    same = choice["provenance"].get("learner", "torch") == params.train.learner
    assert ("trained with the same learner" in written) == same
    assert ("The study trained with the" in budget_line(REPO_ROOT, params)) == (not same)
    # a study recorded before `train.learner` existed trained with torch's learner: both reports say so
    choice["provenance"].pop("learner", None)
    (tmp_path / tuning.CHOICE_PATH).write_text(json.dumps(choice))
    numpy_params = load_params(overrides={"train.learner": "numpy"})
    assert "the study trained with the torch learner, the evaluated models with the numpy learner" in \
        tuning.render_report(numpy_params, tmp_path).read_text()
    assert "The study trained with the torch learner, these models with the numpy learner" in \
        budget_line(tmp_path, numpy_params)


def test_committed_matches_names_a_difference():
    params = load_params(overrides={"train.per_algo.baseline.learning_rate": 0.00123})
    choice = {"per_algo": {}, "tuned_filter": None}
    problems = tuning.committed_matches(params, choice)
    assert any("train.per_algo.baseline" in p and "0.00123" in p for p in problems)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path: Path):
    overrides = {k: v for k, v in TINY_PIPELINE.items() if k.startswith(("env.", "train.", "eval."))}
    overrides.update({
        "tuning.algos": ["baseline"], "tuning.seeds": [100, 101], "tuning.total_steps": 256,
        "tuning.learning_rates": [0.001],
        "tuning.exploration.barriernet": [[0.3, 0.6]], "tuning.exploration.baseline": [-1.0],
        "tuning.exploration.cbf_beta": [0.0], "tuning.exploration.shielded": [-1.0],
    })
    params = load_params(overrides=overrides)
    choice = tuning.run(params, tmp_path)
    cells = pd.read_csv(tmp_path / tuning.CELLS_PATH)
    assert list(cells["seed"]) == [100, 101] and set(cells["algo"]) == {"baseline"}
    assert (cells["dev_episodes"] == params.eval.dev_episodes).all()
    assert (cells["env_steps"] == 256).all()
    assert choice["per_algo"] == {"baseline": {"learning_rate": 0.001, "init_log_std": -1.0}}
    sweep = pd.read_csv(tmp_path / tuning.SWEEP_PATH)
    # pooled over both seeds' dev episodes, one row per filter configuration of the grid
    assert (sweep["episodes"] == 2 * params.eval.dev_episodes).all()
    assert len(sweep) == len(params.eval.filter_sweep.forms) * len(params.eval.filter_sweep.gammas) * len(
        params.eval.filter_sweep.robust_margins)
    assert choice["tuned_filter"]["form"] in set(sweep["form"])
    report = (tmp_path / tuning.REPORT_PATH).read_text()
    assert "256 env steps" in report and "tuned_filter" in report
    assert (tmp_path / tuning.FIGURE_PATH).stat().st_size > 1000
    # a rerun finds every cell done (dev.json keyed by the training config) and chooses the same:
    # no cell trains or plays again, so no file of a cell is rewritten
    cell_files = {path: path.stat().st_mtime_ns for path in (tmp_path / tuning.RUNS_DIR).rglob("*") if path.is_file()}
    assert len([p for p in cell_files if p.name == "dev.json"]) == 2 and any(p.suffix == ".pt" for p in cell_files)
    again = tuning.run(params, tmp_path)
    assert {path: path.stat().st_mtime_ns for path in cell_files} == cell_files
    assert again["per_algo"] == choice["per_algo"] and again["tuned_filter"] == choice["tuned_filter"]
    assert pd.read_csv(tmp_path / tuning.CELLS_PATH).equals(cells)
