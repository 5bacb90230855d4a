"""Stage `scenarios` (tasks/scenarios.py), its report section and BarrierNet's gamma beyond K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from env.core import PursuitEvasionCore, SafetyState
from model.actors import ActorOutput, make_actor
from model.cbf import cbf_rows
from model.ppo import RunningMeanStd
from tasks import scenarios as S
from tasks.artifacts import SCENARIO_EPISODE_COLUMNS
from tasks.params import SCENARIOS, ParamsError, load_params


def _params(**overrides):
    return load_params(overrides={"scenarios.episodes": 6, **overrides})


class ConstantPolicy(nn.Module):
    """Always the same (v, w): a policy whose path is known in closed form."""

    def __init__(self, v: float, w: float):
        super().__init__()
        self.u = torch.tensor([v, w])

    def forward(self, obs, safety, deterministic=False):
        action = self.u.expand(obs.shape[0], 2).to(obs.dtype)
        return ActorOutput(action, action, torch.zeros(obs.shape[0]), {})


def _identity_rms(obs_dim: int) -> RunningMeanStd:
    return RunningMeanStd((obs_dim,))


def test_start_states_rebuilt_from_params_are_identical_and_jittered_within_bounds():
    params = _params()
    for name in ("fleeing_evader", "multi_obstacle_8", "corridor_tight"):
        scenario = S.scenario_geometry(name, params)
        first, second = S.start_states(scenario, params), S.start_states(S.scenario_geometry(name, _params()), _params())
        for key in first:
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{name}/{key}")
        offset = first["pursuer"] - np.asarray(scenario.pursuer)
        assert np.abs(offset).max() <= params.scenarios.jitter
        assert np.abs(offset).max() > 0.1 * params.scenarios.jitter  # the jitter is there
        assert len(np.unique(first["pursuer"][:, 0])) == params.scenarios.episodes  # episodes differ
        np.testing.assert_array_equal(first["env_seeds"], params.scenarios.seed_base + np.arange(6))
    # Another seed_base gives other draws (the jitter is keyed by params, not by a global RNG).
    other = S.start_states(S.scenario_geometry("head_on", params), _params(**{"scenarios.seed_base": 3_000_100}))
    assert not np.array_equal(other["pursuer"], S.start_states(S.scenario_geometry("head_on", params), params)["pursuer"])


def test_every_scenario_starts_inside_the_safe_set_and_too_much_jitter_is_refused():
    from tests.test_env_scenario import body_barriers, lookahead_barriers

    params = _params(**{"scenarios.jitter": 0.5})
    env, cbf = params.env, params.cbf
    for name in SCENARIOS:
        states = S.start_states(S.scenario_geometry(name, params), params)  # raises ScenarioError if not
        # and, checked another way (the barriers written out in NumPy, not the module's own check):
        args = (states["pursuer"], states["obstacle_centres"], states["obstacle_radii"], states["obstacle_mask"])
        assert (body_barriers(*args, env) >= 0).all(), name
        assert (lookahead_barriers(*args, env, cbf.lookahead, cbf.robust_margin) >= 0).all(), name
        gap = np.linalg.norm(states["evader"][:, None, :2] - states["obstacle_centres"], axis=-1) - states["obstacle_radii"]
        assert not (states["obstacle_mask"] & (gap <= env.robot_radius)).any(), name
    params = _params()
    far = S.Scenario("touching", (-6.0, 0.0, 0.0), (5.0, 0.0, 0.0), ((-5.6, 0.0, 0.3),))
    with pytest.raises(S.ScenarioError, match="scenarios.jitter"):
        S.start_states(far, params)


def test_corridor_gaps_against_the_hand_computed_widths():
    params = _params()
    env, cbf = params.env, params.cbf
    for name, gap in (("corridor_tight", 1.5 * 2 * 0.15), ("corridor_passable", 2 * (0.15 + 0.1 + 0.2 + 0.05) + 0.1)):
        (x0, y0, r0), (x1, y1, r1) = S.scenario_geometry(name, params).obstacles
        assert math.hypot(x1 - x0, y1 - y0) - r0 - r1 == pytest.approx(gap)
        # The discs reach past the walls: the gap is the only way across x = 0.
        assert y0 + r0 >= env.arena_size / 2 and y1 - r1 <= -env.arena_size / 2
    keep_out = 2 * (env.robot_radius + env.safety_margin)
    assert 1.5 * 2 * env.robot_radius < keep_out  # tight: no barrier-respecting body fits
    assert 2 * (env.robot_radius + env.safety_margin + cbf.lookahead + cbf.robust_margin) < 1.1  # passable: fits


def test_standing_still_in_the_tight_corridor_times_out_with_the_hand_computed_barrier():
    params = _params(**{"env.max_steps": 20})
    scenario = S.scenario_geometry("corridor_tight", params)
    obs_dim = PursuitEvasionCore(params.env, 1).obs_dim
    rows, trace = S.play_scenario(ConstantPolicy(0.0, 0.0), _identity_rms(obs_dim), params, scenario)
    starts = S.start_states(scenario, params)
    env = params.env
    for row, (x, y, _) in zip(rows, starts["pursuer"]):
        walls = env.arena_size / 2 - env.robot_radius - env.safety_margin - np.array([x, -x, y, -y])
        discs = [math.hypot(x - cx, y - cy) - (r + env.robot_radius + env.safety_margin) for cx, cy, r in scenario.obstacles]
        assert row["outcome"] == "timeout" and row["length"] == 20
        assert row["min_h"] == pytest.approx(min(walls.min(), *discs), abs=1e-5)
        assert row["cbf_violation_steps"] == 0 and row["interventions"] == 0
    # Every step of every episode recorded: the pursuer never moved.
    np.testing.assert_allclose(trace["pursuer"][-1], starts["pursuer"], atol=1e-5)


def test_disturbance_speed_bias_is_applied_to_the_executed_action():
    params = _params(**{"env.max_steps": 10, "scenarios.actuation_noise": 0.0, "scenarios.speed_bias": 0.2,
                        "scenarios.jitter": 0.0})  # fmt: skip
    obs_dim = PursuitEvasionCore(params.env, 1).obs_dim
    _, trace = S.play_scenario(ConstantPolicy(0.5, 0.0), _identity_rms(obs_dim), params,
                               S.scenario_geometry("disturbance", params))  # fmt: skip
    step = np.diff(trace["pursuer"][:, :, 0], axis=0)  # heading 0: all motion along x
    np.testing.assert_allclose(step, 0.5 * 1.2 * params.env.dt, rtol=1e-5)
    # The same policy undisturbed (obstacle_between: the same geometry) moves 0.5 m/s.
    _, plain = S.play_scenario(ConstantPolicy(0.5, 0.0), _identity_rms(obs_dim), params,
                               S.scenario_geometry("obstacle_between", params))  # fmt: skip
    np.testing.assert_allclose(np.diff(plain["pursuer"][:, :, 0], axis=0), 0.5 * params.env.dt, rtol=1e-5)


def test_boundary_wrap_evader_runs_counter_clockwise_along_the_walls():
    """The scripted evader (`_wall_follow`) heads along the nearest wall at full speed, counter-
    clockwise. From (-2, -9) heading +x (1 m from the bottom wall) that is, by hand: y = -9 and
    x = -2 + v t until the right wall is the nearer one (x > 9), then a left turn onto the right
    wall, and straight up it at a constant x. The pursuer stands still far away."""
    params = _params(**{"scenarios.jitter": 0.0, "scenarios.episodes": 2})
    env = params.env
    obs_dim = PursuitEvasionCore(env, 1).obs_dim
    rows, trace = S.play_scenario(ConstantPolicy(0.0, 0.0), _identity_rms(obs_dim), params,
                                  S.scenario_geometry("boundary_wrap", params))  # fmt: skip
    assert [row["outcome"] for row in rows] == ["timeout", "timeout"]
    path = trace["evader"][:, 0].astype(float)  # (T + 1, 2)
    step = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert step == pytest.approx(env.evader_v_max * env.dt, rel=2e-3)  # full speed throughout (arcs a hair shorter)
    turn = int(np.argmax(path[:, 1] != -9.0))  # the first step off the bottom wall's line
    bottom = path[:turn]
    np.testing.assert_allclose(bottom[:, 0], -2.0 + env.evader_v_max * env.dt * np.arange(turn), atol=1e-4)
    # the turn starts on the first step at which the right wall (10 - x) is nearer than the bottom one (1 m)
    assert bottom[-2, 0] < 9.0 + 1e-4 and bottom[-1, 0] > 9.0 - 1e-4 and turn == 221  # 11 m at 0.05 m a step, + 1
    right = path[(path[:, 1] > -5.0) & (path[:, 1] < 5.0)]  # the right wall's leg, well past the corner
    assert len(right) == pytest.approx(10.0 / (env.evader_v_max * env.dt), abs=1)  # 10 m straight up at full speed
    assert np.ptp(right[:, 0]) < 1e-6 and 9.0 < right[0, 0] < env.arena_size / 2 - env.robot_radius
    assert np.all(np.diff(right[:, 1]) > 0)  # up: counter-clockwise
    assert (env.arena_size / 2 - np.abs(path)).min() > env.robot_radius  # its body never reaches a wall


def test_behaviour_measures_against_closed_forms():
    env = _params().env
    dt, a = env.dt, 2.0
    t = np.arange(12) * dt
    x = a * t**3 / 6  # constant jerk a along x
    pursuer = np.zeros((12, 1, 3))
    pursuer[:, 0, 0] = x
    executed = np.zeros((11, 1, 2))
    executed[:, 0, 0] = np.where(np.arange(11) % 2, 0.5, 0.3)  # |dv| = 0.2 every step
    executed[:, 0, 1] = np.where(np.arange(11) % 2, 0.6, 0.0)  # |dw| = 0.6 every step
    h = np.full((12, 1), 0.3)  # always within NEAR_BARRIER
    arrays = {"pursuer": pursuer, "executed": executed, "h": h, "active": np.ones((11, 1), bool)}
    out = S.behaviour_rows(arrays, env)
    assert out["jerk_ms"] == pytest.approx(a**2, rel=1e-6)
    assert out["dv_near"] == pytest.approx(0.2 / env.pursuer_v_max)
    assert out["dw_near"] == pytest.approx(0.6 / env.pursuer_w_max)
    assert out["steer_share"] == pytest.approx(out["dw_near"] / (out["dw_near"] + out["dv_near"]))
    assert out["near_steps"] == 10


def test_red_flag_above_five_percent_infeasible_steps():
    table = pd.DataFrame({"arm": ["a", "a", "b"], "scenario": ["s", "s", "s"], "infeasible_steps": [3, 3, 5],
                          "length": [50, 50, 100]})  # fmt: skip
    flags = S.red_flags(table)
    assert len(flags) == 1 and "a in s" in flags[0] and "6.0%" in flags[0]


def test_barriernet_constrains_obstacles_beyond_its_gamma_head():
    params = _params()
    obs_dim = PursuitEvasionCore(params.env, 1).obs_dim
    torch.manual_seed(0)
    actor = make_actor("barriernet", obs_dim, params)  # K = 2 gamma outputs for obstacles
    pursuer = torch.tensor([[0.0, 0.0, 0.0]])
    centres = torch.tensor([[[2.0, 0.0], [6.0, 0.0], [0.0, 1.5]]])  # nearest by body gap: 2, 0; 1 is unobserved
    radii = torch.tensor([[0.5, 0.5, 0.5]])
    safety = SafetyState(pursuer, centres, radii, torch.ones(1, 3, dtype=torch.bool))
    head = torch.tensor([[0.31, 0.32, 0.41, 0.42, 0.43, 0.44]])
    full = actor.full_gamma(head, safety)
    expected = [0.31, params.cbf.filter_gamma, 0.32, 0.41, 0.42, 0.43, 0.44]  # storage order, walls last
    torch.testing.assert_close(full, torch.tensor([expected]))
    two = SafetyState(pursuer, centres[:, :2], radii[:, :2], torch.ones(1, 2, dtype=torch.bool))
    assert actor.full_gamma(head, two) is head  # K' = K: untouched
    # A batch of 8-obstacle states: rows for all 8 obstacles, and the executed action satisfies them.
    p8 = params.model_copy(update={"env": params.env.model_copy(update={"num_obstacles": 8})})
    core = PursuitEvasionCore(p8.env, 16)
    out = actor(torch.zeros(16, obs_dim), core.safety_state(), deterministic=True)
    assert out.info["lookahead_h"].shape == (16, 12) and out.info["gamma"].shape == (16, 12)
    rows = cbf_rows(core.safety_state(), p8.env, p8.cbf, out.info["gamma"])
    slack = (rows.A @ out.action.unsqueeze(-1)).squeeze(-1) - rows.b
    feasible = ~out.info["infeasible"]
    assert feasible.any()
    assert (slack[feasible][rows.mask[feasible]] <= 1e-4).all()


@pytest.mark.parametrize("override, key", [
    ({"scenarios.episodes": 0}, "scenarios.episodes"),
    ({"scenarios.names": ["nowhere"]}, "scenarios.names"),
    ({"scenarios.names": ["head_on", "head_on"]}, "scenarios.names"),
    ({"scenarios.seeds": [0, 0]}, "scenarios.seeds"),
    ({"scenarios.seed_base": 2_000_000}, "scenarios.seed_base"),
    ({"scenarios.jitter": 0.9}, "scenarios.jitter"),
    ({"scenarios.actuation_noise": -0.1}, "scenarios.actuation_noise"),
    ({"scenarios.speed_bias": 0.9}, "scenarios.speed_bias"),
    ({"scenarios.gif_frames": 151}, "scenarios.gif_frames"),
])  # fmt: skip
def test_bad_scenario_params_are_refused_naming_the_key(override, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(overrides=override)


def test_cell_outputs_and_report_section(tmp_path: Path, monkeypatch):
    """Every arm plays the same episodes; the section writes its figures and GIFs within limits,
    drawn in parallel processes, the same bytes as drawn in this process."""
    from tasks import report_scenarios as R

    names = ["head_on", "multi_obstacle_8", "corridor_tight"]
    params = _params(**{"scenarios.episodes": 3, "env.max_steps": 25, "scenarios.names": names,
                        "scenarios.gif_frames": 10, "train.algos": ["baseline"]})  # fmt: skip
    obs_dim = PursuitEvasionCore(params.env, 1).obs_dim
    torch.manual_seed(0)
    actor = make_actor("baseline", obs_dim, params)
    arms = ["baseline", "baseline_ct_filter"]
    scenarios = [S.scenario_geometry(n, params) for n in names]
    S.play_cell(actor, _identity_rms(obs_dim), params, tmp_path, "baseline", 0, arms, scenarios)
    cell = S.output_dir(tmp_path, "baseline", 0)
    table = pd.read_csv(cell / "episodes.csv")
    assert list(table.columns) == list(SCENARIO_EPISODE_COLUMNS)
    assert len(table) == len(arms) * len(names) * 3
    by_arm = [g.sort_values(["scenario", "episode"]).env_seed.to_numpy() for _, g in table.groupby("arm")]
    np.testing.assert_array_equal(by_arm[0], by_arm[1])
    with np.load(cell / "trajectories.npz") as data:  # the same start for both arms
        for name in names:
            np.testing.assert_array_equal(data[f"{name}/baseline/pursuer"][0], data[f"{name}/baseline_ct_filter/pursuer"][0])
    monkeypatch.setattr(R.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # 3 processes
    md = R.section(params, tmp_path)
    monkeypatch.setattr(R.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # this process
    _, _, trajectories, _ = R.read_results(params, tmp_path)
    alone = R.render_scenarios(names, arms, trajectories, params, tmp_path / "alone")
    for name in names:
        assert alone[name] == (tmp_path / f"reports/figures/scenarios/trajectories_{name}.png").read_bytes()
        assert (tmp_path / f"alone/{name}.gif").read_bytes() == (tmp_path / f"reports/animations/{name}.gif").read_bytes()
    for name in names:
        assert f"### {name}" in md
        assert (tmp_path / f"reports/figures/scenarios/trajectories_{name}.png").stat().st_size > 1000
        gif = tmp_path / f"reports/animations/{name}.gif"
        assert gif.stat().st_size <= R.GIF_LIMIT_BYTES
        from PIL import Image

        with Image.open(gif) as image:
            assert 2 <= image.n_frames <= 10
    assert (tmp_path / "reports/figures/scenarios/heatmaps.png").exists()
    assert "steer share" in md and "Red flags" in md
    # the scenario tables' rows (7 cells; the behaviour table has 6): the QP columns of the arm without a QP
    rows = [line for line in md.splitlines() if line.startswith("| baseline") and line.count(" | ") == 6]
    assert len(rows) == len(names) * len(arms) and all(line.count("n/a (no QP)") == (2 if line.startswith("| baseline |") else 0) for line in rows)


def test_a_zero_count_prints_its_upper_bound_not_zero_zero():
    """0 of n: the Wilson upper bound is z^2 / (n + z^2) (the score equation at p_hat = 0); one
    decimal would print it as 0.0 for n = 10,000 (0.038 %), so it keeps two significant digits."""
    from tasks import report_scenarios as R

    z2 = 1.959963984540054 ** 2
    assert R._ci(0, 10_000) == f"0.0 % [0.0, {100 * z2 / (10_000 + z2):.2g}]" == "0.0 % [0.0, 0.038]"
    assert R._ci(0, 50) == f"0.0 % [0.0, {100 * z2 / (50 + z2):.1f}]"  # 7.1: one decimal suffices
    assert R._qp_ci("baseline", 0, 10_000) == "n/a (no QP)" and R._qp_ci("shielded", 0, 10_000) == R._ci(0, 10_000)


def test_a_rare_event_prints_its_rate_inside_its_own_interval():
    """6 infeasible steps of 20,131 (the disturbance scenario once printed "0.0 % [0.014, 0.1]"):
    the rate keeps two significant digits as its bounds do, 0.030 %, inside the Wilson interval
    written out from Wilson (1927); the main tables' formatter does the same at two decimals."""
    from tasks import report_scenarios as R
    from tasks.report.formatting import fmt_rate, fmt_rate_ci

    z, k, n = 1.959963984540054, 6, 20_131
    p = k / n
    centre, half = p + z * z / (2 * n), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5)
    low, high = (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)
    assert R._ci(k, n) == f"{100 * p:.3f} % [{100 * low:.3f}, {100 * high:.3f}]" == "0.030 % [0.014, 0.065]"
    assert fmt_rate_ci(1 / 200_000, 0.0, 4e-5) == "0.0005 % [0.00, 0.0040]"  # 2 decimals: 0.00 % [0.00, 0.00]
    assert fmt_rate_ci(1 / 20_000, 0.0, 2e-4) == "0.01 % [0.00, 0.02]"  # a bound of 0.02 % needs no more digits
    assert fmt_rate_ci(1.9e-5, 0.0, 1e-4) == "0.0019 % [0.00, 0.0100]"  # not 0.00 %: one event is not none
    assert fmt_rate_ci(0.0, 0.0, 6.9e-6) == "0.00 % [0.00, 0.00069]"  # a zero count: its bound, zeros as they were
    # a zero count's bound far beyond this study's size: 3.7 in a million steps, in fixed notation
    assert fmt_rate(3.7e-7) == "0.000037 %" and fmt_rate(3.7e-5) == "0.0037 %" and fmt_rate(0.0) == "0.00 %"


def test_batching_scenarios_in_one_core_does_not_change_their_episodes():
    """play_group runs the scenarios of one env config side by side (padded obstacle slots): the
    same rows as playing each alone, BarrierNet's extra (masked) gamma slots included."""
    params = _params(**{"env.max_steps": 30, "scenarios.episodes": 3})
    obs_dim = PursuitEvasionCore(params.env, 1).obs_dim
    torch.manual_seed(1)
    actor = make_actor("barriernet", obs_dim, params)
    group = [S.scenario_geometry(n, params) for n in ("obstacle_between", "multi_obstacle_8", "disturbance")]
    together = S.play_group(actor, _identity_rms(obs_dim), params, group)
    for scenario in group:
        alone_rows, alone = S.play_scenario(actor, _identity_rms(obs_dim), params, scenario)
        rows, arrays = together[scenario.name]
        assert rows == alone_rows  # bit for bit: every call is padded to CALL_ROWS
        steps = alone["pursuer"].shape[0]
        np.testing.assert_array_equal(arrays["pursuer"][:steps], alone["pursuer"])


def test_cells_outside_scenarios_seeds_only_write_a_skip_marker(tmp_path: Path):
    """DVC's matrix is algo x train.seeds; a seed outside scenarios.seeds needs no checkpoint."""
    params = _params(**{"train.seeds": [0, 1]})
    out = S.run(params, tmp_path, algo="barriernet", seed=1)
    assert out == {"skipped": True}
    cell = S.output_dir(tmp_path, "barriernet", 1)
    assert sorted(p.name for p in cell.iterdir()) == ["skipped.json"]
    with pytest.raises(S.StageInputError, match="model.pt"):
        S.run(params, tmp_path, algo="barriernet", seed=0)  # in scenarios.seeds: the checkpoint is required


def test_scenario_table_and_reading_from_hand_counted_episodes():
    from tasks import report_scenarios as R

    episodes = pd.DataFrame({
        "arm": ["a"] * 4 + ["b"] * 4, "scenario": ["corridor_tight"] * 8, "episode": [0, 1, 2, 3] * 2,
        "outcome": ["capture", "capture", "timeout", "collision", "timeout", "timeout", "timeout", "timeout"],
        "length": [20, 40, 600, 10, 600, 600, 600, 600], "cbf_violation_steps": [0, 0, 0, 3, 0, 0, 0, 0],
        "interventions": [0] * 8, "infeasible_steps": [0, 0, 60, 0, 0, 0, 0, 0], "min_h": [0.1] * 8,
        "correction": [0.0] * 8,
    })  # fmt: skip
    table = R.scenario_table(episodes, dt=0.05)
    a = table[table.arm == "a"].iloc[0]
    assert (a.capture, a.collision, a.violation, a.steps, a.infeasible) == (2, 1, 1, 670, 60)
    assert a.capture_time == pytest.approx((20 + 40) / 2 * 0.05)  # captured episodes only
    text = R.reading("corridor_tight", table)
    # 2 of 4 against 0 of 4: Wilson [15.0, 85.0] % and [0, 49.0] %: they overlap
    assert "highest capture a (50 %), lowest b (0 %) (their 95 % intervals overlap)" in text
    assert "collisions: a 1/4" in text and "barrier violated by a (1 ep.)" in text
    assert "QP infeasible > 5 % of steps: a" in text  # 60 / 670 = 9 %


def test_reading_names_every_tied_arm_and_says_when_intervals_overlap():
    from tasks import report_scenarios as R

    def rows(captures, episodes=50):
        return pd.DataFrame({"arm": list(captures), "capture": list(captures.values()),
                             "episodes": episodes, "collision": 0, "violation": 0, "infeasible": 0, "steps": 1000})

    # Three arms share 100 %: all three are named, none reads as the winner.
    text = R.reading("open_field", rows({"x": 50, "y": 37, "z": 50, "w": 50}))
    assert "highest capture x, z, w (100 %), lowest y (74 %)" in text
    # 50/50 (Wilson low 92.9 %) against 37/50 (high 84.1 %): no overlap, nothing added
    assert "overlap" not in text
    # 50/50 against 45/50 (Wilson high 95.7 %): they overlap
    assert "lowest y (90 %) (their 95 % intervals overlap)" in R.reading("open_field", rows({"x": 50, "y": 45}))
    assert R.reading("open_field", rows({"x": 20, "y": 20})).startswith("every arm captured 40 %")


class AimThroughTheGap(nn.Module):
    """Full speed toward the doorway's axis (y = 0) a little ahead, then on to x = 6: a nominal
    policy that knows the way, so whether it gets through is the safety layer's doing."""

    def forward(self, obs, safety, deterministic=False):
        p = safety.pursuer
        target_x = torch.where(p[:, 0] < 0.5, p[:, 0] + 1.5, torch.full_like(p[:, 0], 6.0))
        bearing = torch.atan2(-p[:, 1], target_x - p[:, 0])
        error = torch.atan2(torch.sin(bearing - p[:, 2]), torch.cos(bearing - p[:, 2]))
        action = torch.stack((torch.ones_like(error), (4 * error).clamp(-2.84, 2.84)), 1)
        return ActorOutput(action, action, torch.zeros(len(action)), {})


def test_the_robust_filter_passes_the_passable_doorway_and_never_the_tight_one():
    from model.actors import make_filter

    params = _params(**{"scenarios.episodes": 3, "env.max_steps": 200})
    rms = _identity_rms(PursuitEvasionCore(params.env, 1).obs_dim)
    robust = make_filter(AimThroughTheGap(), params, "dcbf", robust_margin=params.cbf.robust_margin)
    crossed = {}
    for name in ("corridor_passable", "corridor_tight"):
        rows, trace = S.play_scenario(robust, rms, params, S.scenario_geometry(name, params))
        crossed[name] = (trace["pursuer"][:, :, 0].max(0) > 0.5).sum()
        assert all(r["outcome"] != "collision" and r["cbf_violation_steps"] == 0 for r in rows)
    assert crossed == {"corridor_passable": 3, "corridor_tight": 0}
    # Without the filter the same nominal squeezes through the tight gap, violating the barrier.
    rows, _ = S.play_scenario(AimThroughTheGap(), rms, params, S.scenario_geometry("corridor_tight", params))
    assert all(r["cbf_violation_steps"] > 0 for r in rows)


def test_heatmap_cells_no_step_reached_are_grey_and_visited_zeros_are_not():
    """Two arms over a 4 x 4 grid: one visited every cell with no violation and no correction (the
    colour scales' near-white low end), the other only one half. Grey (matplotlib's 'lightgrey',
    211/255) fills the half the second arm never reached, as many pixels whichever half it is, and
    a figure whose every cell was visited has next to none."""
    import io

    from matplotlib import image

    from tasks import report_scenarios as R

    params = _params()

    def maps(steps):
        zeros = np.zeros_like(steps)
        return {"min_h": steps * 0.3, "steps": steps, "violations": zeros, "correction": zeros}

    def grey_pixels(right_visited: bool) -> int:
        everywhere, half = np.ones((4, 4)), np.zeros((4, 4))
        half[(slice(2, 4) if right_visited else slice(0, 2)), :] = 1.0
        heatmaps = {f"{arm}/{k}": v for arm, steps in (("barriernet", everywhere), ("shielded", half))
                    for k, v in maps(steps).items()}
        pixels = image.imread(io.BytesIO(R.figure_heatmaps(["barriernet", "shielded"], heatmaps, params)))
        return int(np.all(np.abs(pixels[..., :3] - 211 / 255) < 1 / 255, axis=-1).sum())

    left, right = grey_pixels(False), grey_pixels(True)
    assert abs(left - right) < 0.05 * left  # three half panels of grey, whichever half
    everywhere = {f"barriernet/{k}": v for k, v in maps(np.ones((4, 4))).items()}
    pixels = image.imread(io.BytesIO(R.figure_heatmaps(["barriernet"], everywhere, params)))
    # every cell visited: grey only in a few antialiased edge pixels, not in zero-valued cells
    assert np.all(np.abs(pixels[..., :3] - 211 / 255) < 1 / 255, axis=-1).sum() < 0.01 * left
