"""End to end on a tiny budget through the command line: train -> evaluate -> compare -> report,
then recompute several of the report's numbers from the per-episode tables. Also the evaluate
stage's bad-input handling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.artifacts import StageInputError
from tasks.evaluate import run as evaluate
from tasks.params import load_params
from tasks.report import arm_label
from tasks.stats import wilson_interval
from tests.test_report import table_row

# The module-scoped fixtures below run once: every test of this module goes to one xdist worker.
pytestmark = pytest.mark.xdist_group("test_pipeline_e2e")

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "train.num_envs": 8, "train.rollout_steps": 32, "train.num_minibatches": 2, "train.update_epochs": 2,
    "train.total_steps": 512, "train.seeds": [0, 1], "env.max_steps": 80,
    # every split in one batch of envs; one post-hoc filter configuration per form and algorithm
    "eval.dev_episodes": 6, "eval.test_episodes": 12, "eval.num_envs": 12,
    "eval.filter_sweep.gammas": [0.2], "eval.filter_sweep.robust_margins": [0.0],
    "qp_benchmark.batch_sizes": [1, 4], "qp_benchmark.repeats": 1, "qp_benchmark.warmup": 0,
    "qp_benchmark.dtypes": ["float64"], "qp_benchmark.devices": ["cpu"],
    # the QP benchmark's and the bootstrap's own tests cover the rest; here they only have to feed the report
    "qp_benchmark.obstacle_counts": [2], "decision.bootstrap_samples": 200,
}


def _cli(stage: str, workdir: Path, state: Path) -> None:
    sets = []
    for key, value in TINY.items():
        sets += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "BARRIERNET_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-m", "tasks", stage, "--workdir", str(workdir), *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{stage} failed:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    workdir, state = root / "work", root / "state"
    for stage in ("qp_benchmark", "train", "evaluate", "compare", "report"):
        _cli(stage, workdir, state)
    return workdir


@pytest.mark.slow
def test_report_numbers_recomputed_from_episode_tables(tiny_run):
    report = (tiny_run / "reports/decision_report.md").read_text()
    params = load_params(overrides=TINY)
    both = pd.concat(pd.read_csv(p) for p in sorted((tiny_run / "results/eval").glob("*/episodes.csv")))
    assert {"barriernet", "baseline", "baseline_ct_filter", "baseline_dcbf_filter"} <= set(both.arm)
    arms = both.arm.nunique()
    assert both.groupby("split").size().to_dict() == {"dev": arms * 2 * 6, "test": arms * 2 * 12}  # arms x seeds x eps
    # dev and test scenarios are disjoint env seeds
    assert not set(both[both.split == "dev"].env_seed) & set(both[both.split == "test"].env_seed)
    episodes = both[both.split == "test"]  # the report's numbers come from the test split only
    # paired: the same episode index met the same env seed in every arm
    assert episodes.groupby("episode").env_seed.nunique().eq(1).all()

    summary = pd.read_csv(tiny_run / "results/compare/summary.csv")
    for arm, group in episodes.groupby("arm"):
        for seed, cell in group.groupby("seed"):
            captures, n = int((cell.outcome == "capture").sum()), len(cell)
            row = summary[(summary.arm == arm) & (summary.seed.astype(str) == str(seed))].iloc[0]
            assert row["capture_rate"] == pytest.approx(captures / n)
            low, high = wilson_interval(captures, n, 0.95)
            assert row["capture_rate_low"] == pytest.approx(low) and row["capture_rate_high"] == pytest.approx(high)
            violation_rate = cell.cbf_violation_steps.sum() / cell.length.sum()
            assert row["cbf_violation_rate"] == pytest.approx(violation_rate)
        # across seeds: the mean of the per-seed capture rates, in the arm's row of the results table
        per_seed = group.groupby("seed").outcome.apply(lambda o: (o == "capture").mean())
        row = table_row(report, arm_label(arm, params), str(group.seed.nunique()), str(len(group)))
        assert row.split(" | ")[3].startswith(f"{100 * per_seed.mean():.2f} %"), (arm, per_seed.mean(), row)

    metrics = json.loads((tiny_run / "results/compare/metrics.json").read_text())
    assert metrics["decision"]["verdict"] in report
    for figure in ("learning_curves", "outcome_rates", "qp_speed", "trajectories", "min_safety_margin"):
        path = tiny_run / "reports/figures" / f"{figure}.png"
        assert path.exists() and path.stat().st_size > 5000, figure
        assert f"figures/{figure}.png" in report


@pytest.mark.slow
def test_evaluate_bad_checkpoint_named_and_outputs_intact(tiny_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(tiny_run, workdir)
    params = load_params(overrides=TINY)
    episodes = workdir / "results/eval/baseline-s0/episodes.csv"
    before = episodes.read_bytes()

    model = workdir / "results/train/baseline-s0/model.pt"
    model.write_bytes(model.read_bytes()[:100])  # corrupt
    with pytest.raises(StageInputError, match=str(model)):
        evaluate(params, workdir, "baseline", 0)
    assert episodes.read_bytes() == before

    model.unlink()  # missing
    with pytest.raises(StageInputError, match=r"does not exist"):
        evaluate(params, workdir, "baseline", 0)
    assert episodes.read_bytes() == before


@pytest.mark.slow
def test_evaluation_is_deterministic_and_paired(tiny_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(tiny_run, workdir)
    params = load_params(overrides=TINY)
    evaluate(params, workdir, "barriernet", 1)
    again = pd.read_csv(workdir / "results/eval/barriernet-s1/episodes.csv").drop(columns="decision_ms")
    first = pd.read_csv(tiny_run / "results/eval/barriernet-s1/episodes.csv").drop(columns="decision_ms")
    pd.testing.assert_frame_equal(first, again)
    # every arm's episode e starts from the same state: the trajectories begin at one point
    traj = np.load(workdir / "results/eval/baseline-s1/trajectory.npz")
    starts = {k: traj[k][0].tolist() for k in traj.files if k.endswith("/pursuer")}
    assert len({tuple(v) for v in starts.values()}) == 1, starts
