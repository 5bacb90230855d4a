"""The pursuit-evasion env against closed forms, a numpy re-computation and its own single-env view."""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import env  # noqa: F401  (registers PursuitEvasion-v0)
import env.core as core_module
from env import PlacementError, PursuitEvasionCore, PursuitEvasionEnv, PursuitEvasionVectorEnv
from env.render import draw_arena
from env.config import EnvParams, EnvParamsError
from tests.helpers import same_bits

# Binary-exact numbers (dt = 1/16, robot radius 1/4) so contact and capture land exactly.
# Proximity shaping off here (its own tests below), so the reward tests see the other terms alone.
EXACT = EnvParams(dt=0.0625, robot_radius=0.25, safety_margin=0.125, capture_radius=0.5, proximity_shaping=0.0)
FAR_OBSTACLES = torch.tensor([[[-6.0, -6.0], [-6.0, 6.0]]], dtype=torch.float64)
RADII = torch.tensor([[0.5, 0.5]], dtype=torch.float64)


def exact_core(params: EnvParams = EXACT, n: int = 1) -> PursuitEvasionCore:
    return PursuitEvasionCore(params, num_envs=n, dtype=torch.float64)


def place(core: PursuitEvasionCore, pursuer, evader, centres=FAR_OBSTACLES, radii=RADII) -> None:
    core.set_state(
        pursuer=torch.tensor([pursuer], dtype=torch.float64),
        evader=torch.tensor([evader], dtype=torch.float64),
        obstacle_centres=centres,
        obstacle_radii=radii,
        step_count=0,
    )


def step(core: PursuitEvasionCore, v: float, w: float, evader=(0.0, 0.0)):
    action = torch.tensor([[v, w]], dtype=torch.float64)
    return core.step(action, evader_action=torch.tensor([evader], dtype=torch.float64))


def arc(pose: np.ndarray, v: float, w: float, dt: float) -> np.ndarray:
    """The unicycle closed form, written the textbook way (w != 0)."""
    x, y, t = pose
    return np.array(
        [x + v / w * (math.sin(t + w * dt) - math.sin(t)), y - v / w * (math.cos(t + w * dt) - math.cos(t)), t + w * dt]
    )


# ---------------------------------------------------------------------------------------------
# gymnasium API


def test_check_env_passes_with_only_the_documented_warning():
    single = gymnasium.make("PursuitEvasion-v0").unwrapped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(single)
    messages = [str(w.message) for w in caught]
    # Documented: the action box is in physical units (v, w), not normalised.
    unexpected = [m for m in messages if "symmetric and normalized space" not in m]
    assert unexpected == []


def test_make_and_make_vec_build_our_classes_with_overrides():
    single = gymnasium.make("PursuitEvasion-v0", num_obstacles=3, evader_policy="flee")
    assert isinstance(single.unwrapped, PursuitEvasionEnv)
    assert single.unwrapped.params.num_obstacles == 3 and single.unwrapped.params.evader_policy == "flee"
    obs, _ = single.reset(seed=0)
    assert obs.shape == (25,) and obs.dtype == np.float32

    vec = gymnasium.make_vec("PursuitEvasion-v0", num_envs=5, arena_size=12.0)
    assert isinstance(vec, PursuitEvasionVectorEnv)
    assert vec.params.arena_size == 12.0
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (5, 25)
    obs, reward, terminated, truncated, info = vec.step(vec.action_space.sample())
    assert reward.shape == (5,) and info["h"].shape == (5, 6) and info["final_obs"].shape == (5, 25)

    sync = gymnasium.make_vec("PursuitEvasion-v0", num_envs=2, vectorization_mode="sync", max_steps=7)
    obs, _ = sync.reset(seed=0)
    assert obs.shape == (2, 25)
    for step in range(1, 8):  # a standing pursuer: no capture, no collision; the override's time limit ends both
        obs, reward, terminated, truncated, info = sync.step(np.zeros((2, 2), np.float32))
        assert not terminated.any() and truncated.all() == (step == 7), step


def test_bad_override_names_the_key():
    with pytest.raises(EnvParamsError, match="num_obstacle"):
        PursuitEvasionEnv(num_obstacle=3)
    with pytest.raises(EnvParamsError, match="env.num_obstacles=9"):
        PursuitEvasionVectorEnv(num_envs=2, num_obstacles=9)
    assert issubclass(EnvParamsError, ValueError)


def test_vector_env_equals_single_envs_step_by_step():
    """Env i of a vector env seeded s == a single env seeded s + i, through many autoresets."""
    overrides = dict(arena_size=10.0, max_steps=60, start_distance_min=1.0, start_distance_max=5.0, num_obstacles=3)
    n, seed = 3, 11
    vec = PursuitEvasionVectorEnv(num_envs=n, **overrides)
    singles = [PursuitEvasionEnv(**overrides) for _ in range(n)]
    obs, _ = vec.reset(seed=seed)
    for i, single in enumerate(singles):
        single_obs, _ = single.reset(seed=seed + i)
        np.testing.assert_array_equal(single_obs, obs[i])
    rng = np.random.default_rng(0)
    ends = {"captured": 0, "collided": 0, "timeout": 0}
    for _ in range(1000):
        actions = rng.uniform(vec.single_action_space.low, vec.single_action_space.high, (n, 2)).astype(np.float32)
        obs, reward, terminated, truncated, info = vec.step(actions)
        for key in ends:
            ends[key] += int(info[key].sum())
        for i, single in enumerate(singles):
            s_obs, s_reward, s_terminated, s_truncated, s_info = single.step(actions[i])
            assert (s_reward, s_terminated, s_truncated) == (reward[i], terminated[i], truncated[i])
            np.testing.assert_array_equal(s_obs, info["final_obs"][i])
            np.testing.assert_array_equal(s_info["h"], info["h"][i])
            if s_terminated or s_truncated:
                assert info["_final_obs"][i]
                s_obs, _ = single.reset()  # continues the seeded sequence of episodes
            np.testing.assert_array_equal(s_obs, obs[i])
    assert all(count > 0 for count in ends.values()), ends  # every kind of ending was exercised


def test_same_seed_same_episode_different_seed_different_episode():
    a, b, c = (PursuitEvasionVectorEnv(num_envs=3) for _ in range(3))
    obs_a, _ = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    obs_c, _ = c.reset(seed=6)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert torch.equal(a.core.obstacle_centres, b.core.obstacle_centres)
    # Seed 6 gives env 0 what seed 5 gave env 1, and nothing shared otherwise.
    np.testing.assert_array_equal(obs_c[0], obs_a[1])
    assert not torch.equal(a.core.obstacle_centres[0], c.core.obstacle_centres[0])
    assert not torch.equal(a.core.pursuer[0], c.core.pursuer[0])
    # Later episodes differ from the first, and reset() without a seed continues.
    obs_next, _ = a.reset()
    assert not np.array_equal(obs_next, obs_a)
    b.reset()
    np.testing.assert_array_equal(b.reset()[0], a.reset()[0])


def test_state_dict_resumes_bit_exactly():
    params = EnvParams(arena_size=8.0, max_steps=40, start_distance_min=1.0, start_distance_max=4.0)
    core = PursuitEvasionCore(params, num_envs=6)
    g = torch.Generator().manual_seed(1)
    actions = [torch.rand(6, 2, generator=g) * torch.tensor([1.0, 5.0]) - torch.tensor([0.0, 2.5]) for _ in range(120)]
    for a in actions[:30]:
        core.step(a)
    saved = core.state_dict()
    first = [core.step(a) for a in actions[30:]]
    resumed = PursuitEvasionCore(params, num_envs=6)
    resumed.load_state_dict(saved)
    for a, (obs, reward, terminated, truncated, info) in zip(actions[30:], first):
        obs2, reward2, terminated2, truncated2, info2 = resumed.step(a)
        assert same_bits(obs, obs2) and same_bits(reward, reward2)
        assert same_bits(terminated, terminated2) and same_bits(truncated, truncated2)
    assert sum(int(r[2].sum() + r[3].sum()) for r in first) > 0  # autoresets happened after the save


@pytest.mark.parametrize("evader_policy", ["random", "flee"])
def test_kept_envs_go_on_exactly_as_in_the_full_batch(evader_policy):
    # 40 envs (several SIMD widths and a tail), the random evader drawing every step or the
    # fleeing one steering by atan2 (ATen's float32 atan2 gives the batch's tail other round-off):
    # after keep_envs the kept envs step (and draw) bit for bit as the same rows of the full batch
    params = EnvParams(arena_size=8.0, max_steps=60, start_distance_min=1.0, start_distance_max=4.0,
                       evader_policy=evader_policy)
    full = PursuitEvasionCore(params, num_envs=40, autoreset=False)
    part = PursuitEvasionCore(params, num_envs=40, autoreset=False)
    g = torch.Generator().manual_seed(4)
    actions = [torch.rand(40, 2, generator=g) * torch.tensor([1.0, 5.0]) - torch.tensor([0.0, 2.5]) for _ in range(50)]
    for a in actions[:10]:
        full.step(a), part.step(a)
    keep = torch.tensor([1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 30, 38])
    part.keep_envs(keep)
    assert part.num_envs == len(keep)
    assert same_bits(part.obstacle_centres, full.obstacle_centres[keep])
    for a in actions[10:]:
        obs, reward, terminated, truncated, info = full.step(a)
        obs2, reward2, terminated2, truncated2, info2 = part.step(a[keep])
        for x, y in ((obs, obs2), (reward, reward2), (terminated, terminated2), (truncated, truncated2),
                     (info["h"], info2["h"]), (info["evader"], info2["evader"])):
            assert same_bits(x[keep], y)
    # the evader moved (its draws were used) and the arithmetic did not run on identical rows
    assert not torch.equal(part.evader[0], part.evader[1])
    with pytest.raises(ValueError, match=r"keep_envs: index has shape \(0,\)"):
        part.keep_envs(torch.zeros(0, dtype=torch.int64))


def test_sync_free_autoreset_equals_indexed_autoreset():
    params = EnvParams(arena_size=8.0, max_steps=25, start_distance_min=1.0, start_distance_max=4.0)
    indexed = PursuitEvasionCore(params, num_envs=8, sync_free_autoreset=False)
    sync_free = PursuitEvasionCore(params, num_envs=8, sync_free_autoreset=True)
    g = torch.Generator().manual_seed(2)
    ended = 0
    for _ in range(200):
        a = torch.rand(8, 2, generator=g) * torch.tensor([1.0, 5.0]) - torch.tensor([0.0, 2.5])
        out_i, out_s = indexed.step(a), sync_free.step(a)
        for x, y in zip(out_i[:4], out_s[:4]):
            assert same_bits(x, y)
        assert same_bits(out_i[4]["final_obs"], out_s[4]["final_obs"])
        assert same_bits(indexed.obstacle_centres, sync_free.obstacle_centres)
        ended += int((out_i[2] | out_i[3]).sum())
    assert ended > 8


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the same code runs on CPU in the other tests)")
def test_cuda_core_matches_cpu_core():
    params = EnvParams(arena_size=8.0, max_steps=25, start_distance_min=1.0, start_distance_max=4.0)
    cpu = PursuitEvasionCore(params, num_envs=64, dtype=torch.float64)
    gpu = PursuitEvasionCore(params, num_envs=64, device="cuda", dtype=torch.float64)
    assert gpu.sync_free_autoreset
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        a = torch.rand(64, 2, generator=g, dtype=torch.float64) * 2
        out_c, out_g = cpu.step(a), gpu.step(a.cuda())
        torch.testing.assert_close(out_g[0].cpu(), out_c[0], rtol=0, atol=1e-9)
        assert torch.equal(out_g[2].cpu(), out_c[2])


# ---------------------------------------------------------------------------------------------
# Dynamics against closed forms (float64 core, states set directly)


def test_straight_line():
    core = exact_core()
    place(core, (-3.0, -2.0, 0.3), (8.0, 8.0, 0.0))
    for _ in range(40):
        step(core, 0.8, 0.0)
    expected = [-3.0 + 40 * 0.0625 * 0.8 * math.cos(0.3), -2.0 + 40 * 0.0625 * 0.8 * math.sin(0.3), 0.3]
    np.testing.assert_allclose(core.pursuer[0].numpy(), expected, rtol=0, atol=1e-12)


def test_full_circle_returns_to_start_along_the_arc():
    params = EnvParams(dt=0.05)
    core = exact_core(params)
    start = np.array([1.0, -2.0, 0.7])
    place(core, tuple(start), (8.0, 8.0, 0.0))
    v, w = 0.5, 2 * math.pi / (100 * 0.05)  # one turn in 100 steps, radius v / w
    radius = v / w
    pose = start.copy()
    for k in range(1, 101):
        step(core, v, w)
        pose = arc(pose, v, w, params.dt)
        got = core.pursuer[0].numpy()
        np.testing.assert_allclose(got[:2], pose[:2], rtol=0, atol=1e-12)
        assert -math.pi < got[2] <= math.pi
        assert abs(math.remainder(got[2] - pose[2], 2 * math.pi)) < 1e-12
        if k == 50:  # half a turn: the point opposite on the circle
            opposite = start[:2] + 2 * radius * np.array([-math.sin(start[2]), math.cos(start[2])])
            np.testing.assert_allclose(got[:2], opposite, rtol=0, atol=1e-12)
    np.testing.assert_allclose(core.pursuer[0].numpy(), start, rtol=0, atol=1e-12)


def test_tiny_turn_rate_is_continuous_with_the_straight_line():
    core = exact_core()
    place(core, (0.0, 0.0, 0.4), (8.0, 8.0, 0.0))
    step(core, 1.0, 1e-12)
    straight = np.array([0.0625 * math.cos(0.4), 0.0625 * math.sin(0.4)])
    np.testing.assert_allclose(core.pursuer[0, :2].numpy(), straight, rtol=0, atol=1e-14)


def test_heading_wraps_to_minus_pi_plus_pi():
    core = exact_core()
    place(core, (0.0, 0.0, math.pi - 0.01), (8.0, 8.0, 0.0))
    step(core, 0.0, 1.0)  # turns by 0.0625 rad past +pi
    np.testing.assert_allclose(core.pursuer[0, 2].item(), -math.pi + 0.0525, rtol=0, atol=1e-12)


@pytest.mark.parametrize("offset, expected", [(0.0, True), (2.0**-10, False)])
def test_wall_collision_exactly_at_contact(offset, expected):
    core = exact_core()
    contact = EXACT.arena_size / 2 - EXACT.robot_radius  # 9.75
    place(core, (contact - 0.0625 - offset, 1.0, 0.0), (-8.0, -8.0, 0.0))
    obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
    assert bool(info["collided"][0]) is expected and bool(terminated[0]) is expected
    # Shaping k (Phi(s') - Phi(s)) with Phi = -d, and Phi(s') = 0 when s' is terminal (g = 1 here).
    d_before, d_after = math.hypot(contact - 0.0625 - offset + 8, 9), math.hypot(contact - offset + 8, 9)
    shaping = EXACT.distance_shaping * (d_before if expected else d_before - d_after)
    assert reward[0].item() == pytest.approx(shaping + (EXACT.collision_penalty if expected else 0.0), abs=1e-12)


@pytest.mark.parametrize("offset, expected", [(0.0, True), (2.0**-10, False)])
def test_capture_exactly_at_the_radius(offset, expected):
    core = exact_core()
    place(core, (2.0 - 0.5 - 0.0625 - offset, 0.0, 0.0), (2.0, 0.0, 0.0))
    obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
    assert bool(info["captured"][0]) is expected and bool(terminated[0]) is expected
    assert not bool(info["collided"][0])
    d_before = 0.5 + 0.0625 + offset  # Phi(s') = 0 at the capture: the step pays k d_before
    shaping = EXACT.distance_shaping * (d_before if expected else 0.0625)
    assert reward[0].item() == pytest.approx(shaping + (EXACT.capture_reward if expected else 0.0), abs=1e-12)


@pytest.mark.parametrize("offset, expected", [(0.0, True), (2.0**-10, False)])
def test_obstacle_collision_exactly_at_contact(offset, expected):
    core = exact_core()
    centres = torch.tensor([[[3.0, 0.0], [-6.0, 6.0]]], dtype=torch.float64)
    # Contact at |p - c| = 0.5 + 0.25: x = 2.25.
    place(core, (2.25 - 0.0625 - offset, 0.0, 0.0), (-8.0, 8.0, 0.0), centres=centres)
    obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
    assert bool(info["collided"][0]) is expected
    # Barrier: h = |p - c| - (r + robot_radius + margin), exactly -margin at contact.
    assert info["h"][0, 0].item() == pytest.approx(0.75 + offset - 0.875, abs=1e-12)


def test_collision_wins_over_capture_in_the_same_step():
    core = exact_core()
    centres = torch.tensor([[[3.0, 0.0], [-6.0, 6.0]]], dtype=torch.float64)
    place(core, (2.1875, 0.0, 0.0), (2.25, 0.5, 0.0), centres=centres)
    obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
    assert bool(info["collided"][0]) and not bool(info["captured"][0]) and bool(terminated[0])
    shaping = EXACT.distance_shaping * math.hypot(0.0625, 0.5)  # terminal: -Phi(s) = k d_before
    assert reward[0].item() == pytest.approx(shaping + EXACT.collision_penalty, abs=1e-12)


def test_proximity_shaping_against_hand_computed_potential():
    params = EXACT.model_copy(update={"proximity_shaping": 30.0, "proximity_range": 1.0})
    core = exact_core(params)
    centres = torch.tensor([[[1.5, 0.0], [-6.0, 6.0]]], dtype=torch.float64)
    place(core, (0.0, 0.0, 0.0), (-8.0, 8.0, 0.0), centres=centres)
    obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
    # Body clearance to the obstacle 1.5 - 0.5 - 0.25 = 0.75 -> 0.6875 (walls are >= 8 m away):
    # Phi goes from -(1 - 0.75) to -(1 - 0.6875), so the shaping term is 30 * -0.0625.
    distance_term = EXACT.distance_shaping * (math.hypot(8.0, 8.0) - math.hypot(8.0625, 8.0))
    assert reward[0].item() == pytest.approx(distance_term - 30.0 * 0.0625, abs=1e-12)


def test_proximity_shaping_telescopes_over_a_pass_by():
    """Driving past an obstacle and away again: the proximity terms sum to zero, each step not."""
    centres = torch.tensor([[[2.0, 0.8], [-6.0, 6.0]]], dtype=torch.float64)
    rewards = {}
    for k in (0.0, 30.0):
        core = exact_core(EXACT.model_copy(update={"proximity_shaping": k}))
        place(core, (-1.0, 0.0, 0.0), (-8.0, 8.0, 0.0), centres=centres)
        rewards[k] = torch.stack([step(core, 1.0, 0.0)[1][0] for _ in range(96)])  # x: -1 -> 5
        assert not bool(core.step_count.eq(0).any())  # no collision or capture reset on the way
    proximity = rewards[30.0] - rewards[0.0]
    assert proximity.abs().max().item() > 0.1  # it acts near the obstacle (min clearance 0.05 m)...
    assert proximity.sum().item() == pytest.approx(0.0, abs=1e-9)  # ...and nets zero once away


def potential(pursuer, evader, centres, radii, params: EnvParams) -> float:
    """Phi(s) of both shaping terms, written out from the poses: -k_d d - k_p sum max(0, 1 - c / range)."""
    half, rr = params.arena_size / 2, params.robot_radius
    x, y = float(pursuer[0]), float(pursuer[1])
    clearances = [half - rr - x, half - rr + x, half - rr - y, half - rr + y]
    clearances += [math.hypot(x - cx, y - cy) - r - rr for (cx, cy), r in zip(np.asarray(centres), np.asarray(radii))]
    cost = sum(max(0.0, 1.0 - c / params.proximity_range) for c in clearances)
    return -params.distance_shaping * math.hypot(x - float(evader[0]), y - float(evader[1])) - params.proximity_shaping * cost


@pytest.mark.parametrize("discount", [None, 0.9])
def test_truncation_pays_only_the_shaping(discount):
    """Time is not in the observation, so the timeout step pays nothing of its own (Pardo et al.
    2018): its reward is exactly the shaping g Phi(s') - Phi(s), with Phi(s') kept (not zeroed),
    and the same step without the time limit pays the same."""
    centres = torch.tensor([[[1.5, 0.0], [-6.0, 6.0]]], dtype=torch.float64)
    rewards = {}
    for max_steps in (5, 6):
        params = EXACT.model_copy(update={"max_steps": max_steps, "proximity_shaping": 30.0, "shaping_discount": discount})
        core = exact_core(params)
        place(core, (-0.25, 0.0, 0.0), (5.0, 5.0, 0.0), centres=centres)
        for _ in range(4):
            step(core, 1.0, 0.0)
        before = potential(core.pursuer[0], core.evader[0], centres[0], RADII[0], params)
        obs, reward, terminated, truncated, info = step(core, 1.0, 0.0)
        after = potential(info["pursuer"][0], info["evader"][0], centres[0], RADII[0], params)
        assert bool(truncated[0]) is (max_steps == 5) and bool(info["timeout"][0]) is (max_steps == 5)
        assert not bool(terminated[0])
        g = 1.0 if discount is None else discount
        assert reward[0].item() == pytest.approx(g * after - before, abs=1e-12)
        assert abs(after - before) > 1.0  # both terms moved: the check is not 0 == 0
        rewards[max_steps] = reward[0].item()
    assert rewards[5] == rewards[6]
    assert int(info["episode_length"][0]) == 5


def test_evader_is_clamped_inside_the_arena_and_pushed_out_of_obstacles():
    core = exact_core()
    inner = EXACT.arena_size / 2 - EXACT.robot_radius
    place(core, (0.0, 0.0, 0.0), (inner - 0.01, 3.0, 0.0))
    step(core, 0.0, 0.0, evader=(1.0, 0.0))
    assert core.evader[0, 0].item() == inner and core.evader[0, 1].item() == 3.0
    # Inside an obstacle: moved radially onto the surface of its body.
    centres = torch.tensor([[[-3.0, 2.0], [-6.0, 6.0]]], dtype=torch.float64)
    place(core, (0.0, 0.0, 0.0), (-3.0 + 0.3, 2.0 + 0.4, 0.0), centres=centres)
    step(core, 0.0, 0.0)
    gap = np.hypot(core.evader[0, 0].item() + 3.0, core.evader[0, 1].item() - 2.0)
    assert gap == pytest.approx(0.5 + EXACT.robot_radius, abs=1e-12)
    np.testing.assert_allclose(core.evader[0, :2].numpy(), [-3.0 + 0.45, 2.0 + 0.6], rtol=0, atol=1e-12)


def test_evader_actions_stay_within_its_limits():
    params = EnvParams(evader_v_max=0.6, evader_w_max=1.5)
    for policy in ("random", "flee"):
        core = PursuitEvasionCore(params.model_copy(update={"evader_policy": policy}), num_envs=256)
        velocities = []
        for _ in range(30):
            velocities.append(core.step(torch.zeros(256, 2))[4]["evader_vel"])
        velocities = torch.cat(velocities)
        assert velocities[:, 0].min() >= 0 and velocities[:, 0].max() <= 0.6
        assert velocities[:, 1].abs().max() <= 1.5
        if policy == "random":  # uniform over the whole box
            assert velocities[:, 0].max() > 0.59 and velocities[:, 1].min() < -1.45 and velocities[:, 1].max() > 1.45
            assert velocities[:, 0].mean().item() == pytest.approx(0.3, abs=0.01)


def test_flee_evader_runs_away_from_a_standing_pursuer():
    params = EnvParams(evader_policy="flee", num_obstacles=0)
    core = PursuitEvasionCore(params, num_envs=1, dtype=torch.float64)
    place(core, (0.0, 0.0, 0.0), (1.0, 0.5, math.pi), centres=torch.zeros(1, 0, 2), radii=torch.zeros(1, 0))
    for _ in range(100):
        core.step(torch.zeros(1, 2, dtype=torch.float64))
    evader = core.evader[0].numpy()
    assert math.hypot(evader[0], evader[1]) > 1.1 + 0.5 * 100 * params.dt * params.evader_v_max
    direction = evader[:2] / np.linalg.norm(evader[:2])
    assert direction @ (np.array([1.0, 0.5]) / math.hypot(1.0, 0.5)) > 0.9


# ---------------------------------------------------------------------------------------------
# Actions


def test_nan_action_raises_naming_the_env():
    vec = PursuitEvasionVectorEnv(num_envs=3)
    vec.reset(seed=0)
    actions = np.array([[0.5, 0.0], [np.nan, 0.0], [0.5, 0.1]], dtype=np.float32)
    with pytest.raises(ValueError, match=r"NaN in env index \[1\]"):
        vec.step(actions)
    single = PursuitEvasionEnv()
    single.reset(seed=0)
    with pytest.raises(ValueError, match=r"NaN in env index \[0\]"):
        single.step(np.array([0.1, np.nan]))


def test_out_of_bounds_action_is_clipped_to_the_box():
    params = EnvParams()
    core = PursuitEvasionCore(params, num_envs=3, dtype=torch.float64)
    raw = torch.tensor([[5.0, 10.0], [-1.0, -10.0], [0.5, 1.0]], dtype=torch.float64)
    info = core.step(raw)[4]
    expected = torch.tensor([[1.0, 2.84], [0.0, -2.84], [0.5, 1.0]], dtype=torch.float64)
    assert torch.equal(info["pursuer_vel"], expected)
    # Clipped and in-bounds actions move the pursuer identically.
    twin = PursuitEvasionCore(params, num_envs=3, dtype=torch.float64)
    assert torch.equal(twin.step(expected)[4]["pursuer"], info["pursuer"])


# ---------------------------------------------------------------------------------------------
# Barrier values, observation, start states


def test_info_h_and_observation_match_a_direct_computation():
    params = EnvParams(num_obstacles=3, observed_obstacles=4)
    vec = PursuitEvasionVectorEnv(num_envs=32, params=params)
    vec.reset(seed=3)
    rng = np.random.default_rng(1)
    half, rr, margin = params.arena_size / 2, params.robot_radius, params.safety_margin
    diag = params.arena_size * math.sqrt(2)
    for _ in range(20):
        actions = rng.uniform(vec.single_action_space.low, vec.single_action_space.high, (32, 2)).astype(np.float32)
        obs, reward, terminated, truncated, info = vec.step(actions)
        p, c, r = info["pursuer"].astype(np.float64), info["obstacle_centres"], info["obstacle_radii"]
        gaps = np.linalg.norm(p[:, None, :2] - c, axis=-1)
        h = np.concatenate(
            [gaps - (r + rr + margin), np.stack([half - rr - margin - p[:, 0], half - rr - margin + p[:, 0],
                                                 half - rr - margin - p[:, 1], half - rr - margin + p[:, 1]], axis=1)],
            axis=1,
        )  # fmt: skip
        np.testing.assert_allclose(info["h"], h, rtol=0, atol=2e-5)
        final = info["final_obs"]
        e = info["evader"]
        d = np.linalg.norm(e[:, :2] - p[:, :2], axis=1)
        np.testing.assert_allclose(final[:, 0], p[:, 0] / half, atol=1e-6)
        np.testing.assert_allclose(final[:, 12], d / diag, atol=1e-6)
        relative = np.arctan2(e[:, 1] - p[:, 1], e[:, 0] - p[:, 0]) - p[:, 2]
        np.testing.assert_allclose(final[:, 13], np.cos(relative), atol=1e-5)
        np.testing.assert_allclose(final[:, 14], np.sin(relative), atol=1e-5)
        np.testing.assert_allclose(final[:, 15], (half - rr - p[:, 0]) / params.arena_size, atol=1e-6)
        nearest = np.sort(gaps - r - rr, axis=1) / diag
        np.testing.assert_allclose(final[:, 19:28:3], nearest, atol=1e-6)
        np.testing.assert_array_equal(final[:, 28:31], np.tile([1.0, 0.0, 0.0], (32, 1)))  # padding
        assert vec.single_observation_space.contains(obs[0]) and vec.observation_space.contains(obs)


def test_start_states_respect_the_scenario():
    params = EnvParams(num_obstacles=8, obstacle_clearance=0.5)
    core = PursuitEvasionCore(params, num_envs=2000, dtype=torch.float64)
    half, rr = params.arena_size / 2, params.robot_radius
    usable = half - rr - params.safety_margin - params.start_margin  # (less 1 mm of slack)
    pursuer, evader = core.pursuer.numpy(), core.evader.numpy()
    distance = np.linalg.norm(pursuer[:, :2] - evader[:, :2], axis=1)
    assert distance.min() >= params.start_distance_min - 1e-9 and distance.max() <= params.start_distance_max + 1e-9
    # The distance is uniform: its quartiles sit at a quarter, half and three quarters of the range.
    quartiles = np.quantile(distance, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(quartiles, [6.0, 9.0, 12.0], atol=0.4)
    assert np.abs(pursuer[:, :2]).max() <= usable + 1e-9 and np.abs(evader[:, :2]).max() <= usable + 1e-9
    # The pursuer's heading segment stays in that square too, and the bound is reached (tight).
    tip = pursuer[:, :2] + params.start_margin * np.stack((np.cos(pursuer[:, 2]), np.sin(pursuer[:, 2])), axis=1)
    assert np.abs(tip).max() <= usable + 1e-9 and np.abs(tip).max() > usable - 0.01
    c, r = core.obstacle_centres.numpy(), core.obstacle_radii.numpy()
    assert r.min() >= params.obstacle_radius_min and r.max() <= params.obstacle_radius_max
    assert (np.abs(c) + r[..., None]).max() <= half + 1e-9  # wholly inside the arena
    for robot in (pursuer, evader):
        gap = np.linalg.norm(c - robot[:, None, :2], axis=-1) - r - rr
        assert gap.min() >= params.obstacle_clearance - 1e-9
    # Every point of the heading segment keeps safety_margin + start_margin from every obstacle.
    for fraction in np.linspace(0.0, 1.0, 11):
        point = pursuer[:, :2] + fraction * (tip - pursuer[:, :2])
        gap = np.linalg.norm(c - point[:, None], axis=-1) - r - rr
        assert gap.min() >= params.safety_margin + params.start_margin - 1e-9
    between = np.linalg.norm(c[:, :, None] - c[:, None], axis=-1) - r[:, :, None] - r[:, None]
    between[:, np.arange(8), np.arange(8)] = np.inf
    assert between.min() >= -1e-9
    assert not core.placement_failed.any()


def test_impossible_placement_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(core_module, "PLACEMENT_CANDIDATES", 1)
    params = EnvParams(num_obstacles=8, arena_size=15.0)  # valid, but one candidate per obstacle is too few
    with pytest.raises(PlacementError, match="env.num_obstacles=8.*env.obstacle_clearance=0.5"):
        PursuitEvasionCore(params, num_envs=256)


def test_uniform_draws_are_uniform_and_keyed_only_by_their_counters():
    key = core_module.episode_key(torch.arange(4096), torch.zeros(4096, dtype=torch.int64), torch.zeros(4096, dtype=torch.int64))
    draws = core_module.uniforms(key, 0, core_module.draw_salts(16), torch.float64)
    assert draws.min() >= 0 and draws.max() < 1
    histogram = torch.histc(draws, bins=10, min=0, max=1) / draws.numel()
    assert (histogram - 0.1).abs().max() < 0.01
    # The same (key, step, draw) gives the same number in any batch.
    alone = core_module.uniforms(key[7:8], 0, core_module.draw_salts(16), torch.float64)
    assert torch.equal(alone[:, 0], draws[:, 7])


# ---------------------------------------------------------------------------------------------
# Rendering


def test_render_rgb_array_and_the_arena():
    single = PursuitEvasionEnv(render_mode="rgb_array")
    single.reset(seed=0)
    frame = single.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0
    vec = PursuitEvasionVectorEnv(num_envs=2, render_mode="rgb_array")
    assert len(vec.render()) == 2
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # the report's arena: one disc and one dotted ring at radius + keep_out per obstacle, the walls'
    # keep-out square, and the limits the caller asked for
    draw_arena(ax, np.array([[1.0, 2.0], [-3.0, 0.0]]), np.array([0.5, 1.0]), 20.0, keep_out=0.25,
               wall_keep_out=True, margin=0.0)
    from matplotlib.patches import Circle, Rectangle

    radii = sorted(round(patch.get_radius(), 6) for patch in ax.patches if isinstance(patch, Circle))
    assert radii == [0.5, 0.75, 1.0, 1.25]
    squares = sorted(round(patch.get_width(), 6) for patch in ax.patches if isinstance(patch, Rectangle))
    assert squares == [19.5, 20.0]
    assert ax.get_xlim() == (-10.0, 10.0) and ax.get_ylim() == (-10.0, 10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("obstacles, observed, overrides", [
    (2, 2, {"shaping_discount": 0.99}), (2, 2, {}), (0, 2, {}), (1, 2, {"shaping_discount": 0.9}),
    (3, 2, {"proximity_shaping": 0.0}), (4, 5, {}), (2, 0, {}), (2, 2, {"evader_policy": "flee"}),
])  # fmt: skip
def test_compiled_step_equals_the_torch_code_bit_for_bit(dtype, obstacles, observed, overrides):
    """`env/compiled.py` (dynamics, events, observation, shaping reward, resets) against the torch
    code: two cores, the same seeds and actions (random, fleeing and given evaders), stepped in
    lockstep through resets, every output compared bitwise; then
    hand-set states with absent obstacles, a pursuer on top of the evader and of an obstacle
    centre, ties between obstacle gaps and positions past the walls (the [-2, 2] clip)."""
    params = EnvParams(num_obstacles=obstacles, observed_obstacles=observed, **overrides)
    n = 40  # above and below ATen's 16-element vector blocks: both of its rounding paths
    compiled, reference = (PursuitEvasionCore(params, num_envs=n, dtype=dtype) for _ in range(2))
    assert compiled.compiled
    reference.compiled = False
    generator = torch.Generator().manual_seed(obstacles * 10 + observed)
    low, span = torch.tensor([-0.5, -3.0], dtype=dtype), torch.tensor([2.0, 6.0], dtype=dtype)
    resets = 0
    for step in range(60):
        action = low + span * torch.rand(n, 2, generator=generator, dtype=dtype)
        # every fifth step a given evader action (clipped to the evader's limits), as tests and self-play give
        evader = low + span * torch.rand(n, 2, generator=generator, dtype=dtype) if step % 5 == 4 else None
        ours, theirs = compiled.step(action, evader), reference.step(action, evader)
        for a, b in zip(ours[:4], theirs[:4]):  # obs, reward, terminated, truncated
            assert same_bits(a, b)
        assert ours[4].keys() == theirs[4].keys()
        for key in ours[4]:
            assert same_bits(ours[4][key], theirs[4][key]), key
        resets += int((ours[2] | ours[3]).sum())
    assert resets > 0 and bool((ours[1] != 0).any())

    core = compiled

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        core.compiled = False
        torch_obs = core.observe()
        core.compiled = True
        return torch_obs, core.observe()

    pursuer = torch.rand(n, 3, generator=generator, dtype=dtype) * 60 - 30  # some far beyond the walls
    evader = torch.rand(n, 3, generator=generator, dtype=dtype) * 20 - 10
    evader[:4] = pursuer[:4]  # zero distance: the bearing's floor
    centres = torch.rand(n, obstacles, 2, generator=generator, dtype=dtype) * 16 - 8
    radii = torch.rand(n, obstacles, generator=generator, dtype=dtype) + 0.3
    mask = torch.rand(n, obstacles, generator=generator) < 0.7
    if obstacles:
        centres[4:8, 0] = pursuer[4:8, :2]  # the pursuer on an obstacle centre
        if obstacles > 1:
            centres[8:12, 1], radii[8:12, 1] = centres[8:12, 0], radii[8:12, 0]  # tied gaps
            mask[12:16] = False  # no obstacle at all
    core.set_state(pursuer=pursuer, evader=evader, obstacle_centres=centres, obstacle_radii=radii, obstacle_mask=mask,
                   pursuer_vel=torch.rand(n, 2, generator=generator, dtype=dtype),
                   evader_vel=torch.rand(n, 2, generator=generator, dtype=dtype))
    torch_obs, compiled_obs = both()
    assert same_bits(torch_obs, compiled_obs)
    assert compiled_obs.abs().max() == 2.0  # some entries were clipped


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("overrides", [
    {}, {"arena_size": 10.0, "start_distance_max": 12.0, "num_obstacles": 3, "observed_obstacles": 3},
    {"num_obstacles": 0}, {"num_obstacles": 8, "obstacle_clearance": 0.5},
])  # fmt: skip
def test_compiled_start_states_equal_the_torch_code_bit_for_bit(dtype, overrides):
    """`env/compiled.py`'s reset (keys, draws, robots, obstacle placement) against the torch code
    on 1,500 episodes at once and on 1 and 7 (ATen's scalar path); the small arena's long start
    distances reach the direction's cut (acos < 1), eight obstacles test many overlaps."""
    params = EnvParams(**overrides)
    core = PursuitEvasionCore(params, num_envs=1, dtype=dtype)
    generator = torch.Generator().manual_seed(len(overrides))
    for m in (1500, 1, 7):
        counters = torch.zeros(5, m, dtype=torch.int64)
        counters[core_module._SEED_LO] = torch.randint(0, 2**32, (m,), generator=generator)
        counters[core_module._SEED_HI] = torch.randint(0, 2**32, (m,), generator=generator)
        counters[core_module._EPISODE] = torch.randint(0, 2**40, (m,), generator=generator)
        core.compiled = False
        reference = core._start_states(counters)
        core.compiled = True
        ours = core._start_states(counters)
        for a, b in zip(ours, reference):  # robots, obstacles, key, distance, failed
            assert same_bits(a, b)
    if "arena_size" in overrides:
        assert bool((reference[3] > 2 * params.start_half_width - params.start_margin).any())  # the cut is > 0
