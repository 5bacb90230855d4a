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
from tasks.report_dcbf_exact import dcbf_exact_section

# The module-scoped fixtures below run once: every test of this module goes to one xdist worker.
pytestmark = pytest.mark.xdist_group("test_qp_benchmark")

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
        "dcbf_exact.csv", "metrics.json", "speed.png", "speedups.json", "table.csv"]


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


@pytest.mark.cuda
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


# ----------------------------------------------------------------------------------------------
# the dcbf_exact section

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(12)


def own_arc_step(pose, u, dt):
    """The unicycle flow over dt with constant (v, w), written here apart from the env: theta is
    linear in time and the position integral is 12-point Gauss-Legendre (exact to round-off for
    |w dt| <= 0.15 rad). pose (N, 3), u (N, 2), float64 NumPy."""
    x, y, t = pose.T
    v, w = u.T
    s = 0.5 * dt * (_GAUSS_NODES + 1.0)
    angle = t[:, None] + w[:, None] * s[None, :]
    weights = 0.5 * dt * _GAUSS_WEIGHTS
    return np.column_stack([x + v * (np.cos(angle) * weights).sum(1), y + v * (np.sin(angle) * weights).sum(1),
                            t + w * dt])


def own_barriers(pose, safety, env, d):
    """h (N, K + 4) of the look-ahead point from the obstacle and wall geometry (absent obstacles
    +inf), in NumPy."""
    q = pose[:, :2] + d * np.column_stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])])
    c = safety.obstacle_centres.double().numpy()
    rho = safety.obstacle_radii.double().numpy() + env.robot_radius + env.safety_margin + d
    h_obstacles = np.where(safety.obstacle_mask.numpy(), ((q[:, None, :] - c) ** 2).sum(-1) - rho**2, np.inf)
    wall = env.arena_size / 2 - env.robot_radius - env.safety_margin - d
    h_walls = np.column_stack([wall - q[:, 0], wall + q[:, 0], wall - q[:, 1], wall + q[:, 1]])
    return np.concatenate([h_obstacles, h_walls], 1)


def own_counts(u, feasible, safety, env, gamma, d, tol=1e-9):
    """The stage's float64 counts recomputed with this file's own dynamics and barriers."""
    pose = safety.pursuer.double().numpy()
    low, high = np.array([0.0, -env.pursuer_w_max]), np.array([env.pursuer_v_max, env.pursuer_w_max])
    u = np.clip(u, low, high)  # the env clips actions to the box
    h0 = own_barriers(pose, safety, env, d)
    h1 = own_barriers(own_arc_step(pose, u, env.dt), safety, env, d)
    finite = np.isfinite(h0)
    decay_bad = (np.where(finite, (1 - gamma) * h0 - h1, -np.inf) > tol).any(1)
    return {
        "decay_violations_feasible": int((decay_bad & feasible).sum()),
        "next_barrier_negative": int((np.where(finite, -h1, -np.inf) > tol).any(1).sum()),
        "infeasible": int((~feasible).sum()),
        "start_negative": int((h0 < 0).any(1).sum()),
    }


@pytest.fixture(scope="module")
def dcbf_run(tmp_path_factory):
    """One obstacle count; batch 32 holds states with no safe action (h(q) < 0 already), so the
    infeasible and h(q+) < 0 counts are not all zero."""
    workdir = tmp_path_factory.mktemp("qp_benchmark_dcbf")
    params = tiny_params(batch_sizes=[1, 32], obstacle_counts=[2], devices=["cpu"], qpth_max_batch=1)
    stage.run(params, workdir)
    return params, workdir


def test_dcbf_exact_rows_exist_for_every_cell(dcbf_run, tiny_run):
    for (params, workdir, *_), devices in ((dcbf_run, ["cpu"]), (tiny_run, ["cpu", "cuda"] if CUDA else ["cpu"])):
        table = pd.read_csv(workdir / stage.DCBF_EXACT_PATH)
        assert list(table.columns) == list(stage.DCBF_COLUMNS)
        bench = params.qp_benchmark
        cells = {(m, p, dv, dt, k, b) for m in stage.DCBF_METHODS for p in stage.PASSES for dv in devices
                 for dt in bench.dtypes for k in bench.obstacle_counts for b in bench.batch_sizes}
        keys = ["method", "pass", "device", "dtype", "obstacles", "batch_size"]
        assert set(map(tuple, table[keys].values.tolist())) == cells and len(table) == len(cells)
        assert (table["median_ms"] > 0).all() and (table["repeats"] >= 1).all()
        assert np.allclose(table["per_problem_us"], table["median_ms"] * 1e3 / table["batch_size"])
        first = table[table["method"] == "dcbf_first_order"].set_index(keys[1:])
        exact = table[table["method"] == "dcbf_exact"].set_index(keys[1:])
        assert first["cost_vs_first_order"].isna().all()
        assert np.allclose(exact["cost_vs_first_order"], exact["median_ms"] / first.loc[exact.index, "median_ms"])
        # the exact condition holds on every element dcbf_exact calls feasible, in both dtypes
        assert (exact["decay_violations_feasible"] == 0).all()
        assert (exact["mean_qp_rounds"] >= 1).all() and (first["mean_qp_rounds"] == 1).all()


def test_dcbf_counts_match_an_independent_recount(dcbf_run):
    from model.cbf import cbf_rows
    from model.dcbf_exact import exact_dcbf_action

    params, workdir = dcbf_run
    table = pd.read_csv(workdir / stage.DCBF_EXACT_PATH)
    env = stage._env_with_obstacles(params.env, 2)
    cbf = params.cbf.model_copy(update={"form": "dcbf", "qp_backend": "exact"})
    gamma, batch = cbf.filter_gamma, 32
    problems = stage.build_problems(params.env, params.cbf, num_obstacles=2, count=batch)
    safety, u_ref = problems.safety_head(batch), problems.u_ref[:batch]
    with torch.no_grad():
        exact = exact_dcbf_action(safety, env, cbf, gamma, u_ref)
        rows = cbf_rows(safety, env, cbf, gamma, form="dcbf")
        weights = u_ref.new_tensor(cbf.action_weights)
        first = solve_qp(torch.diag(weights).expand(batch, 2, 2), -u_ref * weights, rows.A, rows.b,
                         backend="exact", mask=rows.mask)
    answers = {"dcbf_exact": exact, "dcbf_first_order": first}
    for method, answer in answers.items():
        mine = own_counts(answer.u.numpy(), answer.feasible.numpy(), safety, env, gamma, cbf.lookahead)
        recorded = table[(table["method"] == method) & (table["dtype"] == "float64") & (table["batch_size"] == batch)]
        assert len(recorded) == 2  # forward and forward+backward: the same action
        for name, value in mine.items():
            assert (recorded[name] == value).all(), (method, name, recorded[name].tolist(), value)
        if method == "dcbf_exact":
            assert mine["decay_violations_feasible"] == 0
            # every infeasible flag comes from a state already outside the safe set
            assert mine["infeasible"] <= mine["start_negative"]
    # these states do exercise the counts (some start with h < 0 and have no safe action)
    assert mine["start_negative"] > 0 and mine["infeasible"] > 0 and mine["next_barrier_negative"] > 0


def test_dcbf_metrics_are_deterministic_and_hold_no_timings(dcbf_run, tmp_path):
    params, workdir = dcbf_run
    stage.run(params, tmp_path)
    first = (workdir / stage.METRICS_PATH).read_text()
    assert first == (tmp_path / stage.METRICS_PATH).read_text()
    section = json.loads(first)["dcbf_exact"]

    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)

    timing_words = {"ms", "us", "time", "seconds", "speed", "speedup", "median", "repeats", "threads", "cost"}
    assert not [k for k in keys(section) if timing_words & set(k.lower().split("_"))]
    table = pd.read_csv(workdir / stage.DCBF_EXACT_PATH)
    for _, row in table.iterrows():
        cell = section["counts"][row["method"]][row["device"]][row["dtype"]][f"obstacles_{row['obstacles']}"]
        counts = cell[f"batch_{row['batch_size']}"]
        assert counts["problems"] == row["batch_size"]
        assert all(counts[name] == pytest.approx(row[name]) for name in stage.DCBF_COUNTS)
    assert section["gamma"] == params.cbf.filter_gamma and section["tolerance_float64"] == 1e-9


def test_dcbf_report_section_shows_the_csv_numbers(dcbf_run, tmp_path):
    _, workdir = dcbf_run
    text = dcbf_exact_section(workdir)
    assert "results/qp_benchmark/dcbf_exact.csv" in text
    table = pd.read_csv(workdir / stage.DCBF_EXACT_PATH)
    shown = table[(table["pass"] == "forward+backward") & (table["device"] == "cpu")]
    lines = [line for line in text.splitlines() if line.startswith("| float")]
    assert len(lines) == len(shown) // 2  # one line per dtype x obstacles x batch
    for _, row in shown[shown["method"] == "dcbf_exact"].iterrows():
        fo = shown[(shown["method"] == "dcbf_first_order") & (shown["dtype"] == row["dtype"])
                   & (shown["batch_size"] == row["batch_size"])].iloc[0]
        line = next(x for x in lines if x.startswith(f"| {row['dtype']} | {row['obstacles']} | {row['batch_size']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[4]) == pytest.approx(row["per_problem_us"], rel=0.06, abs=0.06)
        assert float(cells[3]) == pytest.approx(fo["per_problem_us"], rel=0.06, abs=0.06)
        assert cells[5] == f"{row['cost_vs_first_order']:.2f}"
        assert cells[7] == f"{fo['next_barrier_negative']} / {row['next_barrier_negative']}"
        assert cells[8] == f"{fo['infeasible']} / {row['infeasible']}"
    with pytest.raises(FileNotFoundError, match=r"results/qp_benchmark/dcbf_exact\.csv"):
        dcbf_exact_section(tmp_path)


def test_dcbf_counter_catches_first_order_violations_near_an_obstacle():
    """States just outside one obstacle, driven toward it: the first-order rows let some exact
    steps break the decay condition; the stage's counter and this file's own recount agree."""
    from env.core import SafetyState
    from model.cbf import cbf_rows
    from model.dcbf_exact import exact_dcbf_action

    params = Params()
    env, cbf = stage._env_with_obstacles(params.env, 1), stage._dcbf_cbf(params.cbf)
    g = np.random.default_rng(0)
    n, d = 256, cbf.lookahead
    radius = g.uniform(env.obstacle_radius_min, env.obstacle_radius_max, n)
    rho = radius + env.robot_radius + env.safety_margin + d
    bearing = g.uniform(-math.pi, math.pi, n)
    q = np.sqrt(rho**2 + g.uniform(0.0, 0.05, n))[:, None] * np.column_stack([np.cos(bearing), np.sin(bearing)])
    theta = bearing + math.pi + g.uniform(-1.3, 1.3, n)  # roughly facing the obstacle at the origin
    pose = np.column_stack([q - d * np.column_stack([np.cos(theta), np.sin(theta)]), theta])
    safety = SafetyState(torch.tensor(pose), torch.zeros(n, 1, 2, dtype=torch.float64),
                         torch.tensor(radius[:, None]), torch.ones(n, 1, dtype=torch.bool))
    u_ref = torch.tensor(np.column_stack([g.uniform(0.5, 1.0, n) * env.pursuer_v_max,
                                          g.uniform(-1.0, 1.0, n) * env.pursuer_w_max]))
    gamma = cbf.filter_gamma
    rows = cbf_rows(safety, env, cbf, gamma, form="dcbf")
    weights = u_ref.new_tensor(cbf.action_weights)
    with torch.no_grad():
        first = solve_qp(torch.diag(weights).expand(n, 2, 2), -u_ref * weights, rows.A, rows.b, backend="exact",
                         mask=rows.mask)
        exact = exact_dcbf_action(safety, env, cbf, gamma, u_ref)
    for answer, method in ((first, "dcbf_first_order"), (exact, "dcbf_exact")):
        wrapped = stage.DCBFAnswer(answer.u, answer.feasible, None, None)
        counted = stage.dcbf_step_counts(wrapped, safety, env, cbf)
        mine = own_counts(answer.u.numpy(), answer.feasible.numpy(), safety, env, gamma, d)
        assert {k: counted[k] for k in mine} == mine, method
    assert own_counts(first.u.numpy(), first.feasible.numpy(), safety, env, gamma, d)["decay_violations_feasible"] > 0
    assert own_counts(exact.u.numpy(), exact.feasible.numpy(), safety, env, gamma, d)["decay_violations_feasible"] == 0
