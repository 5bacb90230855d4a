"""Stage `scenarios`: every arm of one trained (algo, seed) cell in named, hand-built situations.

The plan's hand checks (../shared/PHASE2_5.md) made automatic: each scenario is a fixed geometry
(`scenario_geometry`) plus ``scenarios.episodes`` episodes that differ only in the evader's env
seed (``scenarios.seed_base + e``) and a start-pose jitter (uniform in +-``scenarios.jitter`` m
on x, y and rad on the heading, drawn from a generator keyed by (seed_base, scenario)). So a
scenario is rebuilt from params alone (`start_states`), and every arm plays the same episodes.

Scenarios (arena 20 m, centred; P pursuer, E evader; obstacles as (x, y, r) in m):

=====================  =========================================================================
open_field             P (-5, 0) -> E (5, 0), 10 m apart, no obstacles
obstacle_between       an obstacle of radius 1 m at the origin on the P-E line
near_boundary          P and E run along the top wall (y = 9)
cornered               E in the top-right corner, P 6 m away on the diagonal
high_speed_approach    P starts at full speed 2 m short of an obstacle on its heading (the
  (high_speed_obstacle)  observation shows v = v_max; the dynamics are first order, so braking is free)
head_on                P and E 2 m apart, facing each other
corridor_tight         two r = 5 m discs that meet the walls leave one gap of 1.5 x the robot's
                       width (2 robot_radius): narrower than the barrier's keep-out, so no CBF arm
                       can pass by construction. A feasibility test: timeouts, no collisions
corridor_passable      the same doorway, 2 (robot_radius + safety_margin + cbf.lookahead +
                       cbf.robust_margin) + 0.1 m wide: just wide enough for the enforced barrier
                       (the look-ahead point's keep-out, robust margin included)
boundary_wrap          E follows the walls counter-clockwise at full speed (scripted)
obstacle_shadow        E hides 0.8 m behind an obstacle of radius 1.5 m, P on the far side
multi_obstacle_4/8     4 / 8 obstacles between P and E: more than training saw; the observation
                       keeps the nearest env.observed_obstacles, the safety layer constrains all
speed_mismatch         open field, the evader's top speed 20 % above the pursuer's
fleeing_evader         env.evader_policy = flee (deterministic: the jitter makes episodes differ)
disturbance            obstacle_between with the pursuer's executed action disturbed: speed x
                       (1 + scenarios.speed_bias), plus Gaussian noise of std
                       scenarios.actuation_noise x (v_max, w_max) (model mismatch: what robust
                       margins are for)
=====================  =========================================================================

Actions are deterministic (the policy mean, then its safety layer), as in `tasks.evaluate`.

Outputs under ``<workdir>/results/scenarios/<algo>-s<seed>/``:
  episodes.csv      one row per (arm, scenario, episode): tasks.artifacts.SCENARIO_EPISODE_COLUMNS
  trajectories.npz  episode 0 of every (scenario, arm): ``<scenario>/<arm>/<field>`` with fields
                    pursuer (T, 3) x, y, theta; evader (T, 2); h (T,) min body barrier (m);
                    proposal, executed (T, 2) (v, w) the policy's and the executed action;
                    intervened (T,) bool; plus ``<scenario>/obstacles`` (K, 3) x, y, r
  heatmaps.npz      per arm over a HEATMAP_BINS^2 grid of the arena, summed over every step:
                    ``<arm>/steps``, ``<arm>/min_h`` (sum of the step's min body barrier),
                    ``<arm>/correction`` (sum of |executed - proposal|), ``<arm>/violations``;
                    and ``<arm>/actions`` the (v, w) histogram (ACTION_BINS^2)
  behaviour.csv     per (arm, scenario): smoothness (mean squared jerk, m^2/s^6), steering vs
                    braking near obstacles (see `behaviour_rows`)
  timing.json       wall time of this cell
A cell whose seed is not in ``scenarios.seeds`` only writes ``skipped.json`` (DVC's matrix is
algo x train.seeds, so overriding train.seeds alone keeps a valid pipeline).
"""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from env.config import EnvParams
from env.core import PursuitEvasionCore
from model.cbf import cbf_geometry
from tasks import io
from tasks.artifacts import (
    ARMS_OF_ALGO,
    BEHAVIOUR_FILE,
    CHOICE_FILE,
    EPISODES_FILE,
    HEATMAPS_FILE,
    SCENARIO_TRAJECTORIES_FILE,
    SKIPPED_FILE,
    TIMING_FILE,
    CheckpointError,
    StageInputError,
    eval_dir,
    model_path,
    scenarios_dir,
)
from tasks.artifacts import SCENARIO_EPISODE_COLUMNS as EPISODE_COLUMNS
from tasks.artifacts.policy import act_padded, build_policy, load_trained
from tasks.params import Params
from tasks.scenario_catalogue import INFEASIBLE_RED_FLAG, NEAR_BARRIER, Scenario, red_flags, scenario_geometry  # noqa: F401

HEATMAP_BINS = 40
ACTION_BINS = 21


class ScenarioError(ValueError):
    """A scenario's start is not inside the safe set (names the scenario and what to change)."""


def scenario_env(scenario: Scenario, params: Params) -> EnvParams:
    """The env of a scenario: params.env with room for its obstacles (K = max(env.num_obstacles,
    its count); unused slots masked) and its overrides. Obstacles are placed by hand, so the
    random placement's radius range is narrowed to keep the (overwritten) reset cheap."""
    base = params.env
    count = max(base.num_obstacles, len(scenario.obstacles))
    update: dict[str, Any] = dict(scenario.env_overrides)
    if count != base.num_obstacles:
        update.update(num_obstacles=count, obstacle_radius_max=base.obstacle_radius_min)
    return EnvParams.model_validate({**base.model_dump(), **update}) if update else base


def _jitter_rng(params: Params, name: str) -> np.random.Generator:
    # Keyed by (seed_base, scenario name): adding or dropping a scenario leaves the others' draws.
    return np.random.default_rng([params.scenarios.seed_base, zlib.crc32(name.encode())])


def start_states(scenario: Scenario, params: Params) -> dict[str, np.ndarray]:
    """The N = scenarios.episodes start states of a scenario, from params alone (float64).

    Returns pursuer, evader (N, 3); obstacle_centres (N, K, 2); obstacle_radii, obstacle_mask
    (N, K); pursuer_vel (N, 2) m/s, rad/s; env_seeds (N,) int64. Raises ScenarioError if a
    jittered start leaves the safe set (body or look-ahead barrier < 0, evader in an obstacle).
    """
    sp, env_s = params.scenarios, scenario_env(scenario, params)
    n, k = sp.episodes, env_s.num_obstacles
    jitter = _jitter_rng(params, scenario.name).uniform(-1.0, 1.0, size=(n, 6)) * sp.jitter
    pursuer = np.asarray(scenario.pursuer, dtype=np.float64) + jitter[:, :3]
    evader = np.asarray(scenario.evader, dtype=np.float64) + jitter[:, 3:]
    centres, radii, mask = np.zeros((n, k, 2)), np.full((n, k), env_s.obstacle_radius_min), np.zeros((n, k), bool)
    for i, (x, y, r) in enumerate(scenario.obstacles):
        centres[:, i] = (x, y)
        radii[:, i], mask[:, i] = r, True
    # Unused slots: far outside the arena (masked anyway; keeps any unmasked arithmetic finite).
    centres[:, len(scenario.obstacles):] = 10 * env_s.arena_size
    pursuer_vel = np.zeros((n, 2))
    pursuer_vel[:, 0] = scenario.pursuer_speed * env_s.pursuer_v_max
    states = {
        "pursuer": pursuer, "evader": evader, "obstacle_centres": centres, "obstacle_radii": radii,
        "obstacle_mask": mask, "pursuer_vel": pursuer_vel,
        "env_seeds": sp.seed_base + np.arange(n, dtype=np.int64),
    }  # fmt: skip
    _check_safe_start(scenario, states, env_s, params)
    return states


def _check_safe_start(scenario: Scenario, states: dict[str, np.ndarray], env_s: EnvParams, params: Params) -> None:
    from env.core import SafetyState

    t = {key: torch.as_tensor(value) for key, value in states.items()}
    safety = SafetyState(t["pursuer"], t["obstacle_centres"], t["obstacle_radii"], t["obstacle_mask"])
    lookahead_h = cbf_geometry(safety, env_s, params.cbf, params.cbf.robust_margin).h  # (N, K + 4)
    lookahead_h = torch.where(cbf_geometry(safety, env_s, params.cbf).barrier_mask, lookahead_h, math.inf)
    gap = torch.linalg.vector_norm(t["evader"][:, None, :2] - t["obstacle_centres"], dim=-1) - t["obstacle_radii"]
    evader_inside = (t["obstacle_mask"] & (gap <= env_s.robot_radius)).any(1)
    evader_inside |= (t["evader"][:, :2].abs() >= env_s.arena_size / 2 - env_s.robot_radius).any(1)
    bad = (lookahead_h.min(1).values < 0) | evader_inside
    if bool(bad.any()):
        raise ScenarioError(
            f"scenario {scenario.name!r}: {int(bad.sum())} of {len(bad)} starts with scenarios.jitter="
            f"{params.scenarios.jitter} leave the safe set (look-ahead barrier with cbf.robust_margin < 0, or the "
            f"evader inside an obstacle or wall); accepted: a smaller scenarios.jitter"
        )


def _wall_follow(core: PursuitEvasionCore) -> torch.Tensor:
    """Evader action (N, 2): full speed along the nearest wall, counter-clockwise."""
    p = core.params
    x, y, theta = core.evader.T
    half = p.arena_size / 2
    distances = torch.stack((half - x, half + y, half + x, half - y))  # right, bottom, left, top
    # Heading along each wall (counter-clockwise): right -> +y, bottom -> +x, left -> -y, top -> -x.
    headings = torch.tensor([math.pi / 2, 0.0, -math.pi / 2, math.pi], dtype=x.dtype)
    target = headings[distances.argmin(0)]
    # No look-ahead at a corner: the next wall's heading takes over once that wall is the nearer one,
    # and the turn toward it saturates at evader_w_max (so the evader cuts no corner short).
    error = torch.atan2(torch.sin(target - theta), torch.cos(target - theta))
    w = (4.0 * error).clamp(-p.evader_w_max, p.evader_w_max)
    return torch.stack((torch.full_like(x, p.evader_v_max), w), dim=1)


def group_key(scenario: Scenario) -> tuple:
    """Scenarios with equal keys share one env config and are batched in one core (speed only:
    every row of a core is computed on its own and each policy call is padded to CALL_ROWS, so a
    scenario's numbers do not depend on its group: tests/test_scenarios.py)."""
    return (tuple(sorted(scenario.env_overrides.items())), scenario.evader_script)


def play_scenario(
    policy: torch.nn.Module, obs_rms: torch.nn.Module, params: Params, scenario: Scenario
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Play all episodes of one scenario (`play_group` of one)."""
    return play_group(policy, obs_rms, params, [scenario])[scenario.name]


@torch.no_grad()
def play_group(
    policy: torch.nn.Module, obs_rms: torch.nn.Module, params: Params, scenarios: list[Scenario]
) -> dict[str, tuple[list[dict[str, Any]], dict[str, np.ndarray]]]:
    """Play all episodes of scenarios of one `group_key` side by side in one batched core
    (N = scenarios.episodes per scenario; obstacle slots padded to the largest count, masked).

    Returns, per scenario name, one row per episode (EPISODE_COLUMNS less arm/algo/seed) and
    the trace of every step (T = steps until the group's last episode ended): pursuer (T+1, N, 3)
    and evader (T+1, N, 2) (row 0: the start), h (T+1, N) min body barrier (m), proposal,
    executed (T, N, 2) (v, w: the policy's proposal and its safety layer's output, before any
    disturbance), correction (T, N) the actor's |executed - proposal|, intervened, infeasible,
    active (T, N) bool (active: the episode was still running at that step); obstacles (K, 3).
    """
    if len({group_key(s) for s in scenarios}) != 1:
        raise ValueError(f"play_group needs scenarios of one group_key; got {[s.name for s in scenarios]}")
    sp = params.scenarios
    n_each = sp.episodes
    envs = [scenario_env(s, params) for s in scenarios]
    k_max = max(e.num_obstacles for e in envs)
    env_s = envs[int(np.argmax([e.num_obstacles for e in envs]))]
    all_states = []
    for scenario in scenarios:
        states = start_states(scenario, params)
        pad = k_max - states["obstacle_radii"].shape[1]
        if pad:  # masked slots far outside the arena
            states["obstacle_centres"] = np.concatenate(
                (states["obstacle_centres"], np.full((n_each, pad, 2), 10 * env_s.arena_size)), axis=1)
            states["obstacle_radii"] = np.concatenate(
                (states["obstacle_radii"], np.full((n_each, pad), env_s.obstacle_radius_min)), axis=1)
            states["obstacle_mask"] = np.concatenate((states["obstacle_mask"], np.zeros((n_each, pad), bool)), axis=1)
        all_states.append(states)
    states = {key: np.concatenate([st[key] for st in all_states]) for key in all_states[0]}
    n = n_each * len(scenarios)
    core = PursuitEvasionCore(env_s, n, autoreset=False)
    core.seed(states["env_seeds"].tolist())
    core.reset()
    obs = core.set_state(
        pursuer=states["pursuer"], evader=states["evader"], obstacle_centres=states["obstacle_centres"],
        obstacle_radii=states["obstacle_radii"], obstacle_mask=states["obstacle_mask"],
        pursuer_vel=states["pursuer_vel"], evader_vel=np.zeros((n, 2)), step_count=0,
    )  # fmt: skip
    # Disturbed scenarios: own generator each, keyed like the jitter, so every arm meets the
    # same disturbance sequence whatever else shares the core.
    disturbed = [
        (slice(i * n_each, (i + 1) * n_each),
         torch.Generator().manual_seed(int(_jitter_rng(params, s.name + "/noise").integers(2**62))))
        for i, s in enumerate(scenarios) if s.disturbed
    ]  # fmt: skip
    limits = torch.tensor([env_s.pursuer_v_max, env_s.pursuer_w_max], dtype=torch.float64)
    scripted = scenarios[0].evader_script == "wall_follow"
    active = torch.ones(n, dtype=torch.bool)
    min_h = core.barrier().min(dim=1).values.double()
    outcome = np.array(["timeout"] * n, dtype=object)
    names = ("pursuer", "evader", "h", "proposal", "executed", "correction", "intervened", "infeasible", "active")
    trace: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    zero, no = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool)
    trace["pursuer"].append(core.pursuer.double().clone())
    trace["evader"].append(core.evader[:, :2].double().clone())
    trace["h"].append(min_h.clone())
    for _ in range(env_s.max_steps):
        out = act_padded(policy, obs_rms.normalize(obs), core.safety_state())
        action = out.action
        proposal = out.info.get("proposal", action)
        executed = action
        if disturbed:
            executed = action.double().clone()
            for rows, generator in disturbed:
                draw = torch.randn(n_each, 2, generator=generator, dtype=torch.float64)
                executed[rows] = executed[rows] * torch.tensor([1.0 + sp.speed_bias, 1.0], dtype=torch.float64) \
                    + sp.actuation_noise * limits * draw
            executed = executed.to(action.dtype)
        obs, _, terminated, truncated, info = core.step(executed, _wall_follow(core) if scripted else None)
        a = active
        step_h = info["h"].min(dim=1).values.double()
        min_h = torch.where(a, torch.minimum(min_h, step_h), min_h)
        trace["pursuer"].append(info["pursuer"].double().clone())
        trace["evader"].append(info["evader"][:, :2].double().clone())
        trace["h"].append(step_h)
        trace["proposal"].append(proposal.double())
        trace["executed"].append(action.double())
        trace["correction"].append(out.info["correction"].double() if "correction" in out.info else zero)
        trace["intervened"].append(out.info.get("intervened", no) & a)
        trace["infeasible"].append(out.info.get("infeasible", no) & a)
        trace["active"].append(a.clone())
        ended = a & (terminated | truncated)
        outcome[(ended & info["captured"]).numpy()] = "capture"
        outcome[(ended & info["collided"]).numpy()] = "collision"
        active = a & ~(terminated | truncated)
        if not bool(active.any()):
            break
    stacked = {key: torch.stack(value).numpy() for key, value in trace.items()}
    stacked["correction"] = np.where(stacked["active"], stacked["correction"], 0.0)
    results = {}
    for i, scenario in enumerate(scenarios):
        cols = slice(i * n_each, (i + 1) * n_each)
        arrays = {key: value[:, cols] for key, value in stacked.items()}
        act = arrays["active"]
        length = act.sum(0)
        violations = ((arrays["h"][1:] < 0) & act).sum(0)
        seeds, mins, ends = states["env_seeds"][cols], min_h[cols], outcome[cols]
        rows = [
            {
                "scenario": scenario.name, "episode": e, "env_seed": int(seeds[e]),
                "outcome": ends[e], "length": int(length[e]), "min_h": float(mins[e]),
                "cbf_violation_steps": int(violations[e]), "interventions": int(arrays["intervened"][:, e].sum()),
                "infeasible_steps": int(arrays["infeasible"][:, e].sum()),
                "correction": float(arrays["correction"][:, e].sum() / max(int(length[e]), 1)),
            }  # fmt: skip
            for e in range(n_each)
        ]
        first = all_states[i]
        arrays["obstacles"] = np.concatenate(
            (first["obstacle_centres"][0], first["obstacle_radii"][0][:, None]), axis=1
        )[first["obstacle_mask"][0]]
        results[scenario.name] = (rows, arrays)
    return results


def behaviour_rows(arrays: dict[str, np.ndarray], env: EnvParams) -> dict[str, float]:
    """Behaviour of one (arm, scenario) from `play_scenario`'s trace.

    jerk_ms: mean squared jerk of the pursuer's path (m^2/s^6): the third finite difference of
    positions / dt^3, over every window of 4 positions inside one episode. near_steps: steps
    that began with a barrier within NEAR_BARRIER m (any obstacle or wall, body barrier);
    dv_near, dw_near: mean |change of the commanded v| / v_max and |change of w| / w_max at those
    steps (from the step before; trace "executed" holds the safety layer's output, before the
    disturbance scenario's noise); steer_share = dw / (dv + dw): 1 = only steers, 0 = only changes speed.
    """
    dt = env.dt
    position, act = arrays["pursuer"][:, :, :2], arrays["active"]
    jerk = np.diff(position, n=3, axis=0) / dt**3  # (T - 2, N, 2): positions 0..T
    valid = act[2:]  # window j uses positions j..j+3; position t >= 1 exists while step t was live
    jerk_sq = (jerk**2).sum(-1)
    jerk_ms = float(jerk_sq[valid].mean()) if valid.any() else math.nan
    executed = arrays["executed"]
    change = np.abs(np.diff(executed, axis=0)) / np.array([env.pursuer_v_max, env.pursuer_w_max])  # (T - 1, N, 2)
    near = (arrays["h"][1:-1] < NEAR_BARRIER) & act[1:] & act[:-1]  # h before step t (t >= 1), both steps live
    dv = float(change[..., 0][near].mean()) if near.any() else math.nan
    dw = float(change[..., 1][near].mean()) if near.any() else math.nan
    share = dw / (dv + dw) if near.any() and (dv + dw) > 0 else math.nan
    return {"jerk_ms": jerk_ms, "near_steps": int(near.sum()), "dv_near": dv, "dw_near": dw, "steer_share": share}


def _heatmap_add(maps: dict[str, np.ndarray], arrays: dict[str, np.ndarray], env: EnvParams) -> None:
    act = arrays["active"]
    xy = arrays["pursuer"][1:, :, :2][act]  # positions after each live step
    half = env.arena_size / 2
    edges = np.linspace(-half, half, HEATMAP_BINS + 1)
    for key, weights in (("steps", None), ("min_h", arrays["h"][1:][act]), ("correction", arrays["correction"][act]),
                         ("violations", (arrays["h"][1:][act] < 0).astype(float))):  # fmt: skip
        grid, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=[edges, edges], weights=weights)
        maps[key] = maps.get(key, 0) + grid
    v_edges = np.linspace(0.0, env.pursuer_v_max, ACTION_BINS + 1)
    w_edges = np.linspace(-env.pursuer_w_max, env.pursuer_w_max, ACTION_BINS + 1)
    executed = arrays["executed"][act]
    grid, _, _ = np.histogram2d(executed[:, 0], executed[:, 1], bins=[v_edges, w_edges])
    maps["actions"] = maps.get("actions", 0) + grid


# What this stage writes in a cell folder (tasks/artifacts.py names every stage's outputs).
output_dir = scenarios_dir


def run(params: Params, workdir: str | Path = ".", algo: str = "barriernet", seed: int = 0) -> dict[str, Any]:
    """Play every scenario in scenarios.names with every arm of the (algo, seed) checkpoint."""
    workdir = Path(workdir)
    if seed not in params.scenarios.seeds:
        # DVC's matrix runs every (algo, training seed) cell, so an override of train.seeds alone
        # stays a valid pipeline; only the seeds in scenarios.seeds play (the budget).
        io.write_json(output_dir(workdir, algo, seed) / SKIPPED_FILE,
                      {"reason": f"seed {seed} is not in scenarios.seeds={params.scenarios.seeds}"})  # fmt: skip
        return {"skipped": True}
    model = model_path(workdir, algo, seed)
    arms = [arm for arm in ARMS_OF_ALGO[algo] if arm in params.eval.arms]
    scenarios = [scenario_geometry(name, params) for name in params.scenarios.names]
    for scenario in scenarios:  # refuse a bad geometry/jitter before any long work
        start_states(scenario, params)
    try:
        actor, _, obs_rms, record = load_trained(model, params)
    except CheckpointError as exc:
        raise StageInputError(str(exc)) from None
    if record["algo"] != algo:
        raise StageInputError(f"{model}: holds algo '{record['algo']}', expected '{algo}'")
    # The tuned filter is the configuration the evaluate stage's sweep chose on dev episodes.
    tuned = None
    choice = eval_dir(workdir, algo, seed) / CHOICE_FILE
    if "baseline_tuned_filter" in arms:
        if choice.is_file():
            tuned = json.loads(choice.read_text())
        else:  # no sweep in this run (eval.filter_sweep disabled): no tuned arm either
            arms.remove("baseline_tuned_filter")
    return play_cell(actor, obs_rms, params, workdir, algo, seed, arms, scenarios, tuned)


def play_cell(
    actor: torch.nn.Module, obs_rms: torch.nn.Module, params: Params, workdir: Path, algo: str, seed: int,
    arms: list[str], scenarios: list[Scenario], tuned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Play and write one cell's outputs (see the module docstring); `run` without the checkpoint."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    behaviour: list[dict[str, Any]] = []
    trajectories: dict[str, np.ndarray] = {}
    heatmaps: dict[str, np.ndarray] = {}
    for arm in arms:
        policy = build_policy(arm, actor, params, tuned)
        policy.eval()
        maps: dict[str, np.ndarray] = {}
        groups: dict[tuple, list[Scenario]] = {}
        for scenario in scenarios:
            groups.setdefault(group_key(scenario), []).append(scenario)
        played = {}
        for group in groups.values():
            played.update(play_group(policy, obs_rms, params, group))
        for scenario in scenarios:
            env_s = scenario_env(scenario, params)
            scenario_rows, arrays = played[scenario.name]
            rows += [{"arm": arm, "algo": algo, "seed": seed, **r} for r in scenario_rows]
            behaviour.append({"arm": arm, "scenario": scenario.name, **behaviour_rows(arrays, env_s)})
            _heatmap_add(maps, arrays, env_s)
            # Episode 0 only, to the step it ended: the figures' and the GIFs' material.
            steps = int(arrays["active"][:, 0].sum())
            prefix = f"{scenario.name}/{arm}"
            trajectories[f"{prefix}/pursuer"] = arrays["pursuer"][: steps + 1, 0].astype(np.float32)
            trajectories[f"{prefix}/evader"] = arrays["evader"][: steps + 1, 0].astype(np.float32)
            trajectories[f"{prefix}/h"] = arrays["h"][: steps + 1, 0].astype(np.float32)
            for key in ("proposal", "executed"):
                trajectories[f"{prefix}/{key}"] = arrays[key][:steps, 0].astype(np.float32)
            trajectories[f"{prefix}/intervened"] = arrays["intervened"][:steps, 0]
            trajectories[f"{scenario.name}/obstacles"] = arrays["obstacles"].astype(np.float32)
        heatmaps.update({f"{arm}/{key}": value for key, value in maps.items()})

    out_dir = output_dir(workdir, algo, seed)
    table = pd.DataFrame(rows)[list(EPISODE_COLUMNS)]
    io.write_csv(out_dir / EPISODES_FILE, table)
    io.write_csv(out_dir / BEHAVIOUR_FILE, pd.DataFrame(behaviour))
    for name, data in ((SCENARIO_TRAJECTORIES_FILE, trajectories), (HEATMAPS_FILE, heatmaps)):
        with io.atomic_path(out_dir / name) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **data)
    flags = red_flags(table)
    for flag in flags:
        warnings.warn(flag, stacklevel=2)
    io.write_json(out_dir / TIMING_FILE, {"wall_seconds": time.perf_counter() - started, "arms": arms,
                                            "scenarios": [s.name for s in scenarios], "red_flags": flags})  # fmt: skip
    rates = (
        table.assign(capture=table.outcome.eq("capture"), collision=table.outcome.eq("collision"))
        .groupby(["arm", "scenario"])[["capture", "collision"]].mean().round(4)
    )
    return {"arms": arms, "scenarios": [s.name for s in scenarios], "red_flags": flags,
            "rates": {f"{a}/{s}": v for (a, s), v in rates.to_dict(orient="index").items()}}  # fmt: skip
