"""The qp_benchmark stage on tiny budgets: outputs, accuracy against quadprog, deterministic metrics."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import quadprog
import torch

from model.qp import solve_qp
from tasks import qp_benchmark as stage
from tasks.params import Params, QPBenchmarkParams

CUDA = torch.cuda.is_available()


def tiny_params(**bench) -> Params:
    """The CI budget: batch sizes [1, 4], one timed call, no warm-up."""
    values = {"batch_sizes": [1, 4], "repeats": 1, "warmup": 0, **bench}
    return Params(qp_benchmark=QPBenchmarkParams(**values))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("qp_benchmark")
    params = tiny_params()  # obstacles [2, 8], float64 and float32, devices [cpu, cuda]
    result = stage.run(params, workdir)
    return params, workdir, result


def read_table(workdir):
    return pd.read_csv(workdir / stage.TABLE_PATH)


def own_quadprog(H, f, A, b, mask):
    """quadprog on one problem at a time (real rows only), written here apart from the stage."""
    u, ok = [], []
    for i in range(f.shape[0]):
        rows = mask[i].numpy()
        G = H[i].numpy()
        C = -A[i].numpy()[rows].T.copy()
        c = -b[i].numpy()[rows].copy()
        try:
            u.append(quadprog.solve_qp(G, -f[i].numpy(), C, c, 0)[0])
            ok.append(True)
        except ValueError:
            u.append(np.full(f.shape[1], np.nan))
            ok.append(False)
    return np.array(u), np.array(ok)


def test_writes_every_output_with_the_right_columns(tiny_run):
    params, workdir, result = tiny_run
    table = read_table(workdir)
    assert list(table.columns) == list(stage.TABLE_COLUMNS)
    assert (table["cpu_ms"] > 0).all()
    devices = ["cpu", "cuda"] if CUDA else ["cpu"]
    # backend x pass x device x dtype x obstacles x batch
    assert len(table) == 2 * 2 * len(devices) * 2 * 2 * 2
    assert set(table["backend"]) == {"exact", "qpth"}
    assert set(table["pass"]) == {"forward", "forward+backward"}
    assert set(table["device"]) == set(devices)
    assert set(table["dtype"]) == {"float64", "float32"}
    assert set(table["obstacles"]) == {2, 8}
    assert set(table["batch_size"]) == {1, 4}
    assert (table["median_ms"] > 0).all()
    assert np.allclose(table["per_problem_us"], table["median_ms"] * 1e3 / table["batch_size"])
    assert (table["reference"] == "quadprog").all()
    # speed-ups sit on exact rows only, and are qpth's median over exact's in the same cell
    exact = table[table["backend"] == "exact"].set_index(["pass", "device", "dtype", "obstacles", "batch_size"])
    qpth = table[table["backend"] == "qpth"].set_index(["pass", "device", "dtype", "obstacles", "batch_size"])
    assert table.loc[table["backend"] == "qpth", "speedup_vs_qpth"].isna().all()
    assert np.allclose(exact["speedup_vs_qpth"], qpth.loc[exact.index, "median_ms"] / exact["median_ms"])

    png = (workdir / stage.PLOT_PATH).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    speedups = json.loads((workdir / stage.SPEEDUPS_PATH).read_text())
    assert speedups["pass"] == "forward+backward" and speedups["device"] == "cpu" and speedups["dtype"] == "float64"
    headline = speedups["speedup_vs_qpth"]["obstacles_2"]
    assert headline["batch_256"] is None  # not run at this budget: said, not invented
    row = exact.loc[("forward+backward", "cpu", "float64", 2, 1)]
    assert headline["batch_1"] == pytest.approx(row["speedup_vs_qpth"])
    assert result["speedups_headline"] == speedups["speedup_vs_qpth"]
    # no temp files left behind by the atomic writes
    assert sorted(p.name for p in (workdir / stage.OUT_DIR).iterdir()) == [
        "metrics.json", "speed.png", "speedups.json", "table.csv"]


def test_exact_deviation_matches_an_independent_recomputation(tiny_run):
    params, workdir, _ = tiny_run
    table = read_table(workdir)
    problems = stage.build_problems(params.env, params.cbf, num_obstacles=2, count=4)
    H, f, A, b, mask = problems.head(4)
    u_ref, ok = own_quadprog(H, f, A, b, mask)
    assert ok.any()
    with torch.no_grad():
        u = solve_qp(H, f, A, b, backend="exact", mask=mask).u.numpy()
    recomputed = np.abs(u[ok] - u_ref[ok]).max()
    recorded = table[(table["backend"] == "exact") & (table["device"] == "cpu") & (table["dtype"] == "float64")
                     & (table["obstacles"] == 2) & (table["batch_size"] == 4)]
    assert len(recorded) == 2  # forward and forward+backward: the same solution
    assert np.allclose(recorded["max_deviation"], recomputed, rtol=0, atol=1e-13)
    assert recorded["max_deviation"].max() <= 1e-8
    # every float64 exact row, both obstacle counts, is that accurate; float32 to its precision
    float64 = table[(table["backend"] == "exact") & (table["dtype"] == "float64")]
    assert (float64["max_deviation"] <= 1e-8).all()
    float32 = table[(table["backend"] == "exact") & (table["dtype"] == "float32")]
    assert (float32["max_deviation"] <= 1e-4).all()
    # solved: exactly the problems quadprog can solve (some real states have no safe action)
    assert np.allclose(recorded["solved_fraction"], ok.mean())


def test_problems_come_from_env_states_and_build_the_cost_from_u_ref(tiny_run):
    params, _, _ = tiny_run
    problems = stage.build_problems(params.env, params.cbf, num_obstacles=8, count=300)
    # m = 8 obstacle rows + 4 walls + 4 control bounds
    assert problems.A.shape == (300, 16, 2)
    weights = torch.tensor(params.cbf.action_weights, dtype=torch.float64)
    assert torch.equal(problems.H, torch.diag_embed(weights.expand(300, 2)))
    assert torch.allclose(problems.f, -weights * problems.u_ref)
    # the look-ahead point's barrier of a random-action rollout: mostly safe, all finite
    assert torch.isfinite(problems.h).all()
    assert (problems.h > 0).all(-1).float().mean() > 0.9
    # distinct states (snapshots of different envs and times), not one state repeated
    assert len({tuple(row) for row in problems.b.round(decimals=9).tolist()}) == 300


def test_metrics_are_deterministic_and_hold_no_timings(tmp_path):
    params = tiny_params(obstacle_counts=[2], dtypes=["float64"], devices=["cpu"])
    stage.run(params, tmp_path / "a")
    stage.run(params, tmp_path / "b")
    first = (tmp_path / "a" / stage.METRICS_PATH).read_text()
    assert first == (tmp_path / "b" / stage.METRICS_PATH).read_text()
    metrics = json.loads(first)

    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)

    timing_words = {"ms", "us", "time", "seconds", "speed", "speedup", "median", "repeats", "threads"}
    assert not [k for k in keys(metrics) if timing_words & set(k.lower().split("_"))]
    cell = metrics["accuracy"]["exact"]["cpu"]["float64"]["obstacles_2"]
    assert cell["problems"] == 4 and 1 <= cell["compared"] <= 4
    assert cell["solved_fraction"] == cell["compared"] / 4  # solved exactly where quadprog solves
    assert metrics["exact_max_deviation_float64"] <= 1e-8
    assert metrics["problems"]["obstacles_2"]["problems"] == 4
    assert metrics["devices_run"] == ["cpu"] and metrics["devices_skipped"] == {}
    # the table's timings differ run to run; its accuracy columns do not
    columns = ["max_deviation", "solved_fraction", "solver_ok_fraction"]
    a, b = (pd.read_csv(tmp_path / d / stage.TABLE_PATH) for d in "ab")
    assert a[columns].equals(b[columns])


@pytest.mark.skipif(CUDA, reason="checks how a missing GPU is recorded; this machine has CUDA")
def test_missing_cuda_is_skipped_and_recorded(tiny_run):
    _, workdir, result = tiny_run
    metrics = json.loads((workdir / stage.METRICS_PATH).read_text())
    assert metrics["devices_run"] == ["cpu"]
    assert "cuda" in metrics["devices_skipped"] and "not available" in metrics["devices_skipped"]["cuda"]
    assert result["devices_skipped"] == metrics["devices_skipped"]
    assert "cuda" not in set(read_table(workdir)["device"])
    with pytest.raises(ValueError, match=r"qp_benchmark\.devices=\['cuda'\].*accepted"):
        stage.run(tiny_params(devices=["cuda"]), workdir / "cuda_only")
    assert not (workdir / "cuda_only").exists()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_cuda_rows_match_the_reference(tmp_path):
    params = tiny_params(obstacle_counts=[2], devices=["cuda"])
    result = stage.run(params, tmp_path)
    assert result["devices_run"] == ["cuda"]
    table = read_table(tmp_path)
    assert set(table["device"]) == {"cuda"}
    float64 = table[(table["backend"] == "exact") & (table["dtype"] == "float64")]
    assert (float64["max_deviation"] <= 1e-8).all()
    assert (table["solved_fraction"] > 0).all()


def test_qpth_is_capped_at_qpth_max_batch(tmp_path):
    params = tiny_params(obstacle_counts=[2], dtypes=["float64"], devices=["cpu"], qpth_max_batch=1)
    stage.run(params, tmp_path)
    table = read_table(tmp_path)
    assert set(table.loc[table["backend"] == "qpth", "batch_size"]) == {1}
    big = table[(table["backend"] == "exact") & (table["batch_size"] == 4)]
    assert len(big) == 2 and big["speedup_vs_qpth"].isna().all()
    assert (big["max_deviation"] <= 1e-8).all()


def test_without_quadprog_each_backend_is_checked_against_the_other(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "quadprog", None)  # `import quadprog` now raises ImportError
    params = tiny_params(obstacle_counts=[2], dtypes=["float64"], devices=["cpu"])
    stage.run(params, tmp_path)
    table = read_table(tmp_path)
    assert set(table.loc[table["backend"] == "exact", "reference"]) == {"qpth"}
    assert set(table.loc[table["backend"] == "qpth", "reference"]) == {"exact"}
    assert (table["max_deviation"] <= 1e-6).all()  # qpth's own accuracy bounds the comparison
    metrics = json.loads((tmp_path / stage.METRICS_PATH).read_text())
    assert "quadprog not installed" in metrics["reference_solver"]


def test_quadprog_reference_flags_an_infeasible_problem():
    # rows v <= -1 and -v <= 0 cannot both hold; the second problem is the box 0 <= v <= 1
    H = torch.eye(2, dtype=torch.float64).expand(2, 2, 2)
    f = torch.tensor([[-2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    A = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]] * 2, dtype=torch.float64)
    b = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    u, feasible = stage.quadprog_solve(H, f, A, b, mask)
    assert feasible.tolist() == [False, True]
    assert math.isnan(u[0, 0]) and np.allclose(u[1], [1.0, 0.0])  # unconstrained (2, 0) clipped to v = 1


def test_bad_batch_size_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"qp_benchmark\.batch_sizes=\[0, 4\].*accepted: integers >= 1"):
        stage.run(tiny_params(batch_sizes=[0, 4]), tmp_path)
    with pytest.raises(ValueError, match=r"qp_benchmark\.obstacle_counts has 9"):
        stage.build_problems(Params().env, Params().cbf, num_obstacles=9, count=2)
