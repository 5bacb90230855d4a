"""The scenario's contracts (issue 14, env side): safe starts, policy-invariant shaping, reset's
info, evader confinement, and the env importing nothing from the pipeline.

Every check recomputes its number another way: barriers and potentials from the poses with
numpy, the exact identity of potential-based shaping, a fresh interpreter's module table.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from env import PursuitEvasionCore, PursuitEvasionEnv, PursuitEvasionVectorEnv
from env.config import START_SLACK, EnvParams, EnvParamsError

REPO = Path(__file__).resolve().parent.parent
STATE_KEYS = ("pursuer", "evader", "pursuer_vel", "evader_vel", "obstacle_centres", "obstacle_radii", "obstacle_mask", "h")
FLAGS = ("captured", "collided", "timeout")


def _pipeline_cbf():
    """The default pipeline's look-ahead distance and robust margin (0 if the key does not exist)."""
    from tasks.params import Params

    cbf = Params().cbf
    return cbf.lookahead, float(getattr(cbf, "robust_margin", 0.0))


# ---------------------------------------------------------------------------------------------
# Layering


def test_import_env_loads_nothing_from_the_pipeline():
    code = (
        "import sys, env, env.config, env.core, env.evaders, env.geometry, env.pursuit_evasion, env.render\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('tasks', 'flows'))\n"
        "import tasks.params\n"  # the control: the same check sees the pipeline once it is imported
        "after = sorted(m for m in sys.modules if m.split('.')[0] in ('tasks', 'flows'))\n"
        "print(before, 'tasks.params' in after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True"


def test_pipeline_reexports_the_env_config():
    import tasks.params

    assert tasks.params.EnvParams is EnvParams


# ---------------------------------------------------------------------------------------------
# Starts inside the safe set


def lookahead_barriers(pursuer, centres, radii, mask, params: EnvParams, lookahead: float, robust: float) -> np.ndarray:
    """The CBF's barriers on the look-ahead point q = p + d (cos t, sin t), written out (numpy,
    float64): obstacles |q - c|^2 - (r + R + margin + d + robust)^2 (m^2), walls
    (L/2 - R - margin - d - robust) -/+ q_x, q_y (m). Absent obstacles: +inf. (B, K + 4)."""
    p = np.asarray(pursuer, dtype=np.float64)
    q = p[:, :2] + lookahead * np.stack((np.cos(p[:, 2]), np.sin(p[:, 2])), axis=1)
    rho = np.asarray(radii, dtype=np.float64) + params.robot_radius + params.safety_margin + lookahead + robust
    offset = q[:, None, :] - np.asarray(centres, dtype=np.float64)
    h_obstacles = np.where(np.asarray(mask), (offset**2).sum(-1) - rho**2, np.inf)
    wall = params.arena_size / 2 - params.robot_radius - params.safety_margin - lookahead - robust
    h_walls = np.stack((wall - q[:, 0], wall + q[:, 0], wall - q[:, 1], wall + q[:, 1]), axis=1)
    return np.concatenate((h_obstacles, h_walls), axis=1)


def body_barriers(pursuer, centres, radii, mask, params: EnvParams) -> np.ndarray:
    """The env's body barriers written out (numpy, float64), (B, K + 4) in metres."""
    p = np.asarray(pursuer, dtype=np.float64)
    gap = np.linalg.norm(p[:, None, :2] - np.asarray(centres, dtype=np.float64), axis=-1)
    h_obstacles = np.where(np.asarray(mask), gap - (np.asarray(radii) + params.robot_radius + params.safety_margin), np.inf)
    wall = params.arena_size / 2 - params.robot_radius - params.safety_margin
    return np.concatenate((h_obstacles, np.stack((wall - p[:, 0], wall + p[:, 0], wall - p[:, 1], wall + p[:, 1]), 1)), 1)


def assert_safe_starts(info: dict, params: EnvParams, lookahead: float, robust: float) -> None:
    args = (info["pursuer"], info["obstacle_centres"], info["obstacle_radii"], info["obstacle_mask"])
    body = body_barriers(*args, params)
    np.testing.assert_allclose(np.asarray(info["h"], dtype=np.float64), body, rtol=0, atol=2e-5)
    ahead = lookahead_barriers(*args, params, lookahead, robust)
    assert (body >= 0).all() and (np.asarray(info["h"]) >= 0).all(), body.min()
    assert (ahead >= 0).all(), (ahead.min(), np.argwhere(ahead < 0)[:5])


def test_lookahead_formula_matches_model_cbf():
    """The test's own look-ahead barriers equal model.cbf's (so the start checks test what the QP enforces)."""
    from model.cbf import cbf_geometry
    from tasks.params import Params

    params = Params()
    core = PursuitEvasionCore(params.env, num_envs=512, dtype=torch.float64)
    safety = core.safety_state()
    robust = float(getattr(params.cbf, "robust_margin", 0.0))
    for margin in (0.0, robust):
        kwargs = {"robust_margin": margin} if margin else {}
        theirs = cbf_geometry(safety, params.env, params.cbf, **kwargs).h.numpy()
        ours = lookahead_barriers(
            safety.pursuer, safety.obstacle_centres, safety.obstacle_radii, safety.obstacle_mask,
            params.env, params.cbf.lookahead, margin,
        )  # fmt: skip
        np.testing.assert_allclose(theirs, ours, rtol=1e-12, atol=1e-12)


def test_ten_thousand_starts_and_autoresets_satisfy_every_enforced_barrier():
    """0 of 10,000 resets (a vector env seeded 0 = single envs seeded 0..9,999) and of >= 10,000
    autoresets start with a look-ahead (m, m^2) or body barrier < 0, at the default params."""
    lookahead, robust = _pipeline_cbf()
    params = EnvParams()
    vec = PursuitEvasionVectorEnv(num_envs=10_000)
    obs, info = vec.reset(seed=0)
    assert_safe_starts(info, params, lookahead, robust)
    # Env i of the vector env is the single env seeded i: check a spread of them.
    single = PursuitEvasionEnv()
    for seed in range(0, 10_000, 97):
        single_obs, single_info = single.reset(seed=seed)
        np.testing.assert_array_equal(single_obs, obs[seed])
        np.testing.assert_array_equal(single_info["pursuer"], info["pursuer"][seed])
    # Autoresets use the same sampler: short episodes, the state right after each autoreset.
    small = PursuitEvasionVectorEnv(num_envs=1000, max_steps=5)
    small.reset(seed=123)
    rng = np.random.default_rng(0)
    restarted = 0
    for _ in range(50):
        actions = rng.uniform(small.single_action_space.low, small.single_action_space.high, (1000, 2))
        _, _, terminated, truncated, _ = small.step(actions.astype(np.float32))
        done = terminated | truncated
        state = {k: v.numpy()[done] for k, v in small.core.state_info().items()}
        assert_safe_starts(state, params, lookahead, robust)
        restarted += int(done.sum())
    assert restarted >= 10_000


@pytest.mark.slow
def test_single_env_seeds_0_to_9999_start_safe():
    lookahead, robust = _pipeline_cbf()
    single = PursuitEvasionEnv()
    infos = [single.reset(seed=seed)[1] for seed in range(10_000)]
    stacked = {key: np.stack([info[key] for info in infos]) for key in STATE_KEYS}
    assert_safe_starts(stacked, EnvParams(), lookahead, robust)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(start_margin=0.6, arena_size=8.0, num_obstacles=2, start_distance_min=1.0, start_distance_max=8.0,
             obstacle_radius_max=0.6),
        dict(start_margin=0.05, obstacle_clearance=0.0, num_obstacles=6, arena_size=12.0, robot_radius=0.3),
        dict(start_margin=1.0, safety_margin=0.0, arena_size=6.0, num_obstacles=1, start_distance_min=0.6,
             start_distance_max=20.0, capture_radius=0.5, obstacle_radius_max=0.5),
    ],
)  # fmt: skip
def test_safe_starts_hold_for_other_valid_params(overrides):
    """Any valid params: every look-ahead point up to start_margin ahead starts with barriers >= 0."""
    params = EnvParams(**overrides)
    core = PursuitEvasionCore(params, num_envs=4000, dtype=torch.float32)
    info = {k: v.numpy() for k, v in core.state_info().items()}
    for lookahead in (params.start_margin, params.start_margin / 2):
        assert_safe_starts(info, params, lookahead, params.start_margin - lookahead)
    # And the bound is tight, not slack: some start sits within a few cm of it.
    ahead = lookahead_barriers(info["pursuer"], info["obstacle_centres"], info["obstacle_radii"],
                               info["obstacle_mask"], params, params.start_margin, 0.0)  # fmt: skip
    assert ahead[:, -4:].min() < 0.05


def test_params_that_make_safe_starts_impossible_are_refused():
    with pytest.raises(EnvParamsError, match=r"env.arena_size=1.0.*env.start_margin=0.5"):
        PursuitEvasionEnv(arena_size=1.0, start_margin=0.5, start_distance_min=0.0, capture_radius=0.1)
    with pytest.raises(EnvParamsError, match=r"env.start_distance_min=12.5.*accepted: <= 12.37"):
        PursuitEvasionEnv(arena_size=10.0, start_distance_min=12.5, start_distance_max=12.5)
    PursuitEvasionEnv(arena_size=10.0, start_distance_min=12.3, start_distance_max=12.3)  # just fits
    with pytest.raises(EnvParamsError, match="env.start_margin=-0.1"):
        PursuitEvasionEnv(start_margin=-0.1)
    # The boundary itself is accepted: half = R + margin + 1.5 s + slack + a little.
    half = 0.15 + 0.1 + 1.5 * 1.0 + START_SLACK + 0.01
    vec = PursuitEvasionVectorEnv(num_envs=8, arena_size=2 * half, start_margin=1.0, start_distance_min=0.0,
                                  start_distance_max=0.01, num_obstacles=0, capture_radius=0.001)  # fmt: skip
    _, info = vec.reset(seed=0)
    assert_safe_starts(info, vec.params, 1.0, 0.0)


def test_pipeline_refuses_a_lookahead_the_starts_do_not_cover():
    from tasks.params import ParamsError, load_params

    lookahead, robust = _pipeline_cbf()
    with pytest.raises(ParamsError, match=r"cbf.lookahead=0.4.*env.start_margin=0.25.*accepted"):
        load_params(overrides={"cbf.lookahead": 0.4})
    ok = load_params(overrides={"cbf.lookahead": 0.4, "env.start_margin": 0.4 + robust})
    assert ok.env.start_margin == pytest.approx(ok.cbf.lookahead + robust)


# ---------------------------------------------------------------------------------------------
# reset() info


def test_reset_info_has_the_step_state_fields():
    vec = PursuitEvasionVectorEnv(num_envs=6, num_obstacles=3, observed_obstacles=3)
    obs, info = vec.reset(seed=4)
    _, _, _, _, step_info = vec.step(np.zeros((6, 2), dtype=np.float32))
    for key in STATE_KEYS + FLAGS:
        assert info[key].shape == step_info[key].shape and info[key].dtype == step_info[key].dtype, key
    for key in FLAGS:
        assert not info[key].any()
    # A standing pursuer (v = w = 0) stays where reset put it (theta re-wrapped: rounding only).
    np.testing.assert_allclose(info["pursuer"], step_info["pursuer"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(info["obstacle_centres"], step_info["obstacle_centres"])
    np.testing.assert_allclose(info["h"], body_barriers(info["pursuer"], info["obstacle_centres"], info["obstacle_radii"],
                                                        info["obstacle_mask"], vec.params), atol=2e-5)  # fmt: skip
    np.testing.assert_allclose(obs[:, 0], info["pursuer"][:, 0] / (vec.params.arena_size / 2), atol=1e-7)
    np.testing.assert_array_equal(info["pursuer_vel"], 0.0)
    # The single env gives the same fields for its one env.
    single = PursuitEvasionEnv(num_obstacles=3, observed_obstacles=3)
    single_obs, single_info = single.reset(seed=5)
    for key in STATE_KEYS + FLAGS:
        np.testing.assert_array_equal(single_info[key], info[key][1])
    np.testing.assert_array_equal(single_obs, obs[1])


# ---------------------------------------------------------------------------------------------
# Policy-invariant shaping


def potentials(state: dict, params: EnvParams) -> np.ndarray:
    """Phi (B,) of both shaping terms from the poses (numpy, float64): -k_d d - k_p sum_i
    max(0, 1 - c_i / range) over the body clearances c_i to every obstacle and wall."""
    p = np.asarray(state["pursuer"], dtype=np.float64)
    e = np.asarray(state["evader"], dtype=np.float64)
    half, rr = params.arena_size / 2, params.robot_radius
    walls = np.stack((half - rr - p[:, 0], half - rr + p[:, 0], half - rr - p[:, 1], half - rr + p[:, 1]), axis=1)
    gaps = np.linalg.norm(p[:, None, :2] - state["obstacle_centres"], axis=-1) - state["obstacle_radii"] - rr
    gaps = np.where(state["obstacle_mask"], gaps, np.inf)
    cost = np.clip(1 - np.concatenate((walls, gaps), axis=1) / params.proximity_range, 0, None).sum(1)
    return -params.distance_shaping * np.linalg.norm(p[:, :2] - e[:, :2], axis=1) - params.proximity_shaping * cost


def test_discounted_shaping_return_is_the_potential_difference():
    """With every other reward term zero, the g-discounted return of an episode is
    g^T Phi(s_T) - Phi(s_0) (truncated) or -Phi(s_0) (terminated), to 1e-4 in float32,
    on >= 500 random episodes (>= 50 of each kind)."""
    discount, n = 0.9, 500
    params = EnvParams(arena_size=8.0, num_obstacles=2, start_distance_min=1.0, start_distance_max=6.0, max_steps=30,
                       capture_reward=0.0, collision_penalty=0.0, shaping_discount=discount)  # fmt: skip
    vec = PursuitEvasionVectorEnv(num_envs=n, params=params)
    _, info = vec.reset(seed=7)
    phi_start = potentials(info, params)
    ret, t = np.zeros(n), np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(1)
    errors = {"terminated": [], "truncated": []}
    while sum(len(v) for v in errors.values()) < n or min(len(v) for v in errors.values()) < 50:
        actions = rng.uniform(vec.single_action_space.low, vec.single_action_space.high, (n, 2)).astype(np.float32)
        _, reward, terminated, truncated, info = vec.step(actions)
        ret += discount**t * reward.astype(np.float64)
        t += 1
        phi_end = potentials(info, params)
        for i in np.flatnonzero(terminated):
            errors["terminated"].append(ret[i] - (-phi_start[i]))
        for i in np.flatnonzero(truncated):
            errors["truncated"].append(ret[i] - (discount ** t[i] * phi_end[i] - phi_start[i]))
        done = terminated | truncated
        if done.any():  # the next episode starts from the autoreset state
            fresh = {k: v.numpy() for k, v in vec.core.state_info().items()}
            phi_start = np.where(done, potentials(fresh, params), phi_start)
            ret[done], t[done] = 0.0, 0
    for kind, err in errors.items():
        err = np.abs(err)
        assert err.max() < 1e-4, (kind, err.max())
    # Not a vacuous identity: the returns themselves are far from zero.
    assert np.abs(phi_start).mean() > 1.0


def test_shaping_discount_none_means_one_and_the_pipeline_sets_train_gamma():
    assert EnvParams().shaping_discount is None and EnvParams().discount == 1.0
    assert PursuitEvasionEnv(shaping_discount=0.97).params.discount == 0.97
    from tasks.params import ParamsError, load_params

    params = load_params()
    assert params.env.shaping_discount == params.train.gamma
    assert load_params(overrides={"train.gamma": 0.9}).env.shaping_discount == 0.9
    assert load_params(overrides={"train.gamma": 0.9, "env.shaping_discount": 0.9}).env.shaping_discount == 0.9
    with pytest.raises(ParamsError, match=r"env.shaping_discount=0.9 differs from train.gamma=0.995"):
        load_params(overrides={"env.shaping_discount": 0.9})


def test_removed_timeout_penalty_is_refused_with_the_reason(tmp_path):
    import yaml

    from tasks.params import DEFAULT_PARAMS_PATH, ParamsError, load_params

    raw = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    raw["env"]["timeout_penalty"] = -50.0
    old = tmp_path / "params.yaml"
    old.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"env.timeout_penalty=-50.0 was removed: .*time is not in the observation"):
        load_params(old)
    with pytest.raises(ParamsError, match=r"env.timeout_penalty' was removed"):
        load_params(overrides=["env.timeout_penalty=-50"])
    with pytest.raises(EnvParamsError, match=r"env.timeout_penalty=-50.0 was removed"):
        PursuitEvasionEnv(timeout_penalty=-50.0)


# ---------------------------------------------------------------------------------------------
# Evader confinement


def assert_evader_confined(evader, centres, radii, mask, params: EnvParams, tol: float) -> None:
    e = np.asarray(evader, dtype=np.float64)
    inner = params.arena_size / 2 - params.robot_radius
    assert np.abs(e[:, :2]).max() <= inner + tol, np.abs(e[:, :2]).max()
    gap = np.linalg.norm(e[:, None, :2] - np.asarray(centres, dtype=np.float64), axis=-1) - np.asarray(radii) - params.robot_radius
    gap = np.where(np.asarray(mask), gap, np.inf)
    assert gap.min() >= -tol, gap.min()


def test_wedged_evader_stays_inside_the_walls_and_outside_the_obstacle():
    """Between an obstacle and the +x wall: the radial push would cross the wall bound (the
    reported x = 9.926 > 9.85); the move is rejected instead, and the evader can slide out."""
    params = EnvParams()
    core = PursuitEvasionCore(params, num_envs=3, dtype=torch.float64)
    inner = params.arena_size / 2 - params.robot_radius  # 9.85
    centres = torch.tensor([[[9.5, 0.0], [-5.0, -5.0]]] * 3, dtype=torch.float64)
    radii = torch.tensor([[0.6, 0.5]] * 3, dtype=torch.float64)  # contact |e - c| = 0.75: a wedge at x = 9.85
    start = torch.tensor([[inner, 0.7, -math.pi / 2], [inner, 0.7, 0.0], [inner - 0.05, 0.8, -1.2]], dtype=torch.float64)
    assert math.hypot(inner - 9.5, 0.7) > 0.75  # the start is legal
    core.set_state(pursuer=torch.tensor([[-5.0, 5.0, 0.0]] * 3, dtype=torch.float64), evader=start,
                   obstacle_centres=centres, obstacle_radii=radii, step_count=0)  # fmt: skip
    # Drive each into the wedge: -y along the wall, +x into the wall, and diagonally.
    for _ in range(20):
        info = core.step(torch.zeros(3, 2, dtype=torch.float64), evader_action=torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64))[4]
        assert_evader_confined(info["evader"], centres, radii, torch.ones(3, 2, dtype=torch.bool), params, tol=1e-12)
    # The first one was held at its last legal place against the wall, not pushed through it.
    assert info["evader"][0, 0].item() == inner
    # And random moves from the wedge stay legal too.
    for _ in range(300):
        info = core.step(torch.zeros(3, 2, dtype=torch.float64))[4]
        assert_evader_confined(info["evader"], centres, radii, torch.ones(3, 2, dtype=torch.bool), params, tol=1e-12)


def test_evader_between_two_obstacles_is_not_pushed_into_either():
    params = EnvParams(num_obstacles=2)
    core = PursuitEvasionCore(params, num_envs=1, dtype=torch.float64)
    # Obstacle edges 0.2 m apart: the inflated discs (r + 0.15) overlap by 0.1 m around (0, 0).
    centres = torch.tensor([[[-0.6, 0.0], [0.6, 0.0]]], dtype=torch.float64)
    radii = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    core.set_state(pursuer=torch.tensor([[5.0, 5.0, 0.0]], dtype=torch.float64),
                   evader=torch.tensor([[0.0, 0.9, -math.pi / 2]], dtype=torch.float64),
                   obstacle_centres=centres, obstacle_radii=radii, step_count=0)  # fmt: skip
    for _ in range(40):  # straight down into the gap, where it does not fit
        info = core.step(torch.zeros(1, 2, dtype=torch.float64), evader_action=torch.tensor([[1.0, 0.0]], dtype=torch.float64))[4]
        assert_evader_confined(info["evader"], centres, radii, torch.ones(1, 2, dtype=torch.bool), params, tol=1e-12)
    # it drove down to where its body touches both discs, |(x, y) - (+/-0.6, 0)| = 0.5 + 0.15, so
    # x = 0 and y = sqrt(0.65^2 - 0.6^2) = 0.25 (by hand), and stays there
    contact = math.sqrt((0.5 + params.robot_radius) ** 2 - 0.6**2)
    assert contact == pytest.approx(0.25)
    assert abs(info["evader"][0, 0].item()) < 1e-12 and info["evader"][0, 1].item() == pytest.approx(contact, abs=1e-6)


@pytest.mark.parametrize("policy", ["random", "flee"])
def test_evader_confined_over_many_random_episodes(policy):
    """Crowded small arenas (many wedges), float32: the evader's body is inside the walls and
    outside every obstacle after every step."""
    params = EnvParams(arena_size=10.0, num_obstacles=6, obstacle_radius_max=0.6, obstacle_clearance=0.2, start_distance_min=1.0,
                       start_distance_max=5.0, max_steps=100, evader_policy=policy)  # fmt: skip
    vec = PursuitEvasionVectorEnv(num_envs=256, params=params)
    _, info = vec.reset(seed=3)
    assert_evader_confined(info["evader"], info["obstacle_centres"], info["obstacle_radii"], info["obstacle_mask"], params, 0.0)
    rng = np.random.default_rng(2)
    tol = 8 * float(np.finfo(np.float32).eps) * params.arena_size  # the core's contact allowance (~6 um)
    near = 0
    for _ in range(300):
        actions = rng.uniform(vec.single_action_space.low, vec.single_action_space.high, (256, 2)).astype(np.float32)
        _, _, _, _, info = vec.step(actions)
        assert_evader_confined(info["evader"], info["obstacle_centres"], info["obstacle_radii"], info["obstacle_mask"], params, tol)
        gap = np.linalg.norm(info["evader"][:, None, :2] - info["obstacle_centres"], axis=-1) - info["obstacle_radii"]
        at_wall = np.abs(info["evader"][:, :2]).max(1) > params.arena_size / 2 - params.robot_radius - 1e-3
        near += int(((gap - params.robot_radius < 1e-3).any(1) | at_wall).sum())
    if policy == "random":  # (the fleeing evader's potential field keeps it off obstacles and walls)
        assert near > 50  # the evaders did press against obstacles or walls
