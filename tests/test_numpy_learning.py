"""benchmarks/numpy_learning.py: its helpers against hand-computed values, and a `--quick` run
in which every PPO minibatch step of the training is the NumPy step's (no rate asserts: tiny
budgets learn nothing)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_numpy_learning", REPO / "benchmarks" / "numpy_learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_t_interval_by_hand(bench):
    mean, low, high = bench.t_interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n), s = 0.1
    assert mean == pytest.approx(0.2) and low == pytest.approx(0.2 - half) and high == pytest.approx(0.2 + half)
    assert math.isnan(bench.t_interval([0.5])[1])


def test_zero_upper_is_clopper_pearson(bench):
    # 0 events in n: the upper bound solves (1 - p)^n = 0.025; 2500 episodes give 0.15 %, as the report
    assert bench.zero_upper(2500) == pytest.approx(0.001474, abs=1e-6)
    assert (1 - bench.zero_upper(40)) ** 40 == pytest.approx(0.025)


def test_test_rates_count_only_the_arm_on_the_test_split(bench, tmp_path):
    path = tmp_path / "episodes.csv"
    path.write_text("arm,split,outcome\nbaseline,test,capture\nbaseline,test,collision\nbaseline,test,timeout\n"
                    "baseline,test,capture\nbaseline,dev,collision\nbaseline_ct_filter,test,collision\n")
    assert bench.test_rates(path, "baseline") == (0.5, 0.25, 4)
    with pytest.raises(SystemExit, match="no test episodes of arm 'barriernet'"):
        bench.test_rates(path, "barriernet")


# BarrierNet and shielded PPO (NumPy update and rollout forwards), CBF-Beta (NumPy update, torch's
# rollout forward); tests/test_numpy_update.py and tests/test_numpy_rollout.py check the numbers
@pytest.mark.parametrize("algo", ["barriernet", "cbf_beta", "shielded"])
def test_quick_run_trains_with_the_learner_asked_for(bench, tmp_path, monkeypatch, algo):
    """Every update of the run is the NumPy learner's, its summary says so, the real state
    directory is left alone; and the default learner is the one params.yaml does not use."""
    from model.numpy_learner import NumpyLearner
    from tasks.params import load_params

    updates = []
    original = NumpyLearner.update
    monkeypatch.setattr(NumpyLearner, "update", lambda self, *a, **k: updates.append(1) or original(self, *a, **k))
    before = os.environ.get("BARRIERNET_STATE_DIR")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = bench.main(["--algo", algo, "--quick", "--seeds", "0", "--workdir", str(tmp_path), "--learner", "numpy"])
    tp = load_params(overrides=bench.QUICK).train
    (row,) = result["rows"]
    assert len(updates) == tp.num_updates and row["learner"] == "numpy"
    assert row["episodes"] == bench.QUICK["eval.test_episodes"] and 0 <= row["collision"] <= 1
    assert (tmp_path / algo / "state").is_dir()  # its checkpoints, not the real training's
    assert os.environ.get("BARRIERNET_STATE_DIR") == before
    assert "| seed | episodes |" in out.getvalue()


def test_quick_run_by_default_trains_with_the_other_learner(bench, tmp_path, monkeypatch):
    from model.numpy_learner import NumpyLearner
    from tasks.params import load_params

    monkeypatch.setattr(NumpyLearner, "update", lambda *a, **k: pytest.fail("the NumPy learner ran"))
    assert load_params().train.learner == "numpy"  # the committed cells' learner
    with contextlib.redirect_stdout(io.StringIO()):
        result = bench.main(["--algo", "baseline", "--quick", "--seeds", "0", "--workdir", str(tmp_path)])
    assert result["learner"] == "torch" and result["rows"][0]["learner"] == "torch"
