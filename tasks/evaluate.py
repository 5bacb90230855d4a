"""Stage `evaluate`: every arm of one trained (algo, seed) cell on the same paired episodes.

Arms: a BarrierNet checkpoint gives the arm ``barriernet``; a baseline checkpoint gives
``baseline``, ``baseline_ct_filter`` and ``baseline_dcbf_filter`` (the baseline projected by a
CT-CBF / DCBF QP at ``cbf.filter_gamma``), restricted to ``eval.arms``.

Two splits of scenarios: dev episode e (0 <= e < eval.dev_episodes) is the first episode of an
env seeded ``eval.dev_seed_base + e``, test episode e (0 <= e < eval.test_episodes) of one seeded
``eval.test_seed_base + e`` (the ranges are disjoint from each other and from training env seeds,
checked in params). Every arm and every training seed meets the same starts, obstacles and evader
randomness of both splits: comparisons are paired. Dev rows serve choices (the filter sweep, the
best-alternative rule); test rows serve the headline and the verdict.
Actions are deterministic (the policy mean, then its safety layer).

Outputs under ``<workdir>/results/eval/<algo>-s<seed>/``:
  episodes.csv     one row per (arm, split, episode), columns tasks.artifacts.EPISODE_COLUMNS
  trajectory.npz   the positions of test episode eval.trajectory_episode for every arm (report figure)
  timing.json      wall time of this cell (the report's setup table)
  filter_sweep.csv the post-hoc filter sweep on DEV episodes (eval.filter_sweep.algos only), one row
                   per (form, gamma, robust_margin), columns SWEEP_COLUMNS
  filter_choice.json  the tuned filter's configuration (baseline only): ``eval.tuned_filter`` (one
                   configuration for every seed, chosen by the tuning study) or, when that is
                   null, what this seed's sweep rule chose; arm ``baseline_tuned_filter`` plays it
                   on both splits
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from env.core import PursuitEvasionCore
from model.actors import make_filter
from model.cbf import cbf_geometry
from tasks import io
from tasks.artifacts import (
    ARMS_OF_ALGO,
    CHOICE_FILE,
    EPISODE_COLUMNS,
    EPISODES_FILE,
    SWEEP_FILE,
    TIMING_FILE,
    TRAJECTORY_FILE,
    CheckpointError,
    StageInputError,
    eval_dir,
    model_path,
)
from tasks.artifacts.policy import build_policy, load_trained
from tasks.params import Params

# What this stage writes in a cell folder (tasks/artifacts.py names every stage's outputs).
output_dir = eval_dir


def enforced_barrier_violated(core: PursuitEvasionCore, params: Params) -> torch.Tensor:
    """(N,) bool: any barrier the QP enforces is negative in the core's current state.

    That is the barrier of the look-ahead point (``cbf.lookahead`` ahead of the body, walls in m,
    obstacles in m^2, no robust margin), which the body barrier (``info["h"]``, metres) does not
    see: the look-ahead point can cross its bound while the body stays clear, and vice versa. It
    is evaluated for every arm, also those without a QP, so the numbers compare.
    """
    geometry = cbf_geometry(core.safety_state(), params.env, params.cbf)
    return ((geometry.h < 0) & geometry.barrier_mask).any(dim=1)


@torch.no_grad()
def play_episodes(
    policy: torch.nn.Module,
    obs_rms: torch.nn.Module,
    params: Params,
    episodes: list[int],
    record_episode: int | None = None,
    split: str = "test",
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """Play the first episode of envs seeded ``base + e`` for each e in `episodes`, where base
    is eval.dev_seed_base or eval.test_seed_base for `split` ('dev' or 'test').

    Returns one row per episode (outcome, length, return, min_h, counts, decision_ms) and, if
    `record_episode` is among them, that episode's trajectory {pursuer (T,2), evader (T,2),
    obstacle_centres (K,2), obstacle_radii (K,)}.
    """
    env_p = params.env
    n = len(episodes)
    core = PursuitEvasionCore(env_p, n, autoreset=False)
    seed_base = params.eval.split_range(split).start
    core.seed([seed_base + e for e in episodes])
    obs = core.reset()
    active = torch.ones(n, dtype=torch.bool)
    length = torch.zeros(n, dtype=torch.int64)
    ret = torch.zeros(n, dtype=torch.float64)
    min_h = core.barrier().min(dim=1).values.double()
    violations = torch.zeros(n, dtype=torch.int64)
    enforced_violations = torch.zeros(n, dtype=torch.int64)
    correction = torch.zeros(n, dtype=torch.float64)
    interventions = torch.zeros(n, dtype=torch.int64)
    infeasible = torch.zeros(n, dtype=torch.int64)
    decision_seconds = torch.zeros(n, dtype=torch.float64)
    outcome = np.array(["timeout"] * n, dtype=object)
    track = episodes.index(record_episode) if record_episode in episodes else None
    path_p = [core.pursuer[track, :2].clone()] if track is not None else []
    path_e = [core.evader[track, :2].clone()] if track is not None else []

    for _ in range(env_p.max_steps):
        started = time.perf_counter()
        out = policy(obs_rms.normalize(obs), core.safety_state(), deterministic=True)
        per_decision = (time.perf_counter() - started) / n  # batched: amortised per env
        obs, reward, terminated, truncated, info = core.step(out.action)
        a = active
        length += a
        ret += torch.where(a, reward.double(), 0.0)
        min_h = torch.where(a, torch.minimum(min_h, info["h"].min(dim=1).values.double()), min_h)
        violations += a & (info["h"] < 0).any(dim=1)
        enforced_violations += a & enforced_barrier_violated(core, params)
        if "intervened" in out.info:
            interventions += a & out.info["intervened"]
            infeasible += a & out.info["infeasible"]
            correction += torch.where(a, out.info["correction"].double(), 0.0)
        decision_seconds += torch.where(a, per_decision, 0.0)
        if track is not None and bool(a[track]):
            path_p.append(info["pursuer"][track, :2].clone())
            path_e.append(info["evader"][track, :2].clone())
        ended = a & (terminated | truncated)
        outcome[(ended & info["captured"]).numpy()] = "capture"
        outcome[(ended & info["collided"]).numpy()] = "collision"
        active = a & ~(terminated | truncated)
        if not bool(active.any()):
            break

    rows = [
        {
            "split": split,
            "episode": e,
            "env_seed": seed_base + e,
            "outcome": outcome[i],
            "length": int(length[i]),
            "return": float(ret[i]),
            "min_h": float(min_h[i]),
            "cbf_violation_steps": int(violations[i]),
            "enforced_violation_steps": int(enforced_violations[i]),
            "correction_sum": float(correction[i]),
            "interventions": int(interventions[i]),
            "infeasible_steps": int(infeasible[i]),
            "decision_ms": 1000.0 * float(decision_seconds[i]) / max(int(length[i]), 1),
        }
        for i, e in enumerate(episodes)
    ]
    trajectory = None
    if track is not None:
        trajectory = {
            "pursuer": torch.stack(path_p).numpy(),
            "evader": torch.stack(path_e).numpy(),
            "obstacle_centres": core.obstacle_centres[track].numpy(),
            "obstacle_radii": core.obstacle_radii[track].numpy(),
        }
    return rows, trajectory


# ---------------------------------------------------------------------------------------------
# The post-hoc filter sweep (issue 15 item 5): dev episodes only

SWEEP_COLUMNS = ("form", "gamma", "robust_margin", "split", "episodes", "steps", "capture_rate", "collision_rate",
                 "collision_upper", "intervention_rate", "infeasible_rate", "cbf_violation_rate", "mean_capture_steps")


def sweep_configurations(params: Params) -> list[dict[str, Any]]:
    """The grid of eval.filter_sweep in order: forms x gammas x robust_margins."""
    fs = params.eval.filter_sweep
    return [{"form": form, "gamma": float(gamma), "robust_margin": float(margin)}
            for form in fs.forms for gamma in fs.gammas for margin in fs.robust_margins]


@torch.no_grad()
def sweep_filters(actor: torch.nn.Module, obs_rms: torch.nn.Module, params: Params) -> pd.DataFrame:
    """Every configuration of eval.filter_sweep on `actor`, played on the DEV episodes only.

    The split is fixed here (no argument can reach the test episodes), so the configuration chosen
    from this table never looked at a test episode. Returns one row per configuration, columns
    SWEEP_COLUMNS: rates over the dev episodes, collision_upper the Wilson upper bound
    (eval.filter_sweep.confidence) of the collision rate, step rates over the episodes' steps.
    """
    from tasks.stats import wilson_interval

    fs = params.eval.filter_sweep
    episodes = list(range(params.eval.dev_episodes))
    chunk = params.eval.num_envs
    table = []
    for config in sweep_configurations(params):
        policy = make_filter(actor, params, config["form"], config["gamma"], robust_margin=config["robust_margin"])
        policy.eval()
        rows: list[dict[str, Any]] = []
        for start in range(0, len(episodes), chunk):
            rows += play_episodes(policy, obs_rms, params, episodes[start : start + chunk], None, "dev")[0]
        frame = pd.DataFrame(rows)
        n, steps = len(frame), int(frame["length"].sum())
        captured = frame["outcome"].eq("capture")
        collisions = int(frame["outcome"].eq("collision").sum())
        table.append({
            **config, "split": "dev", "episodes": n, "steps": steps,
            "capture_rate": float(captured.mean()), "collision_rate": collisions / n,
            "collision_upper": float(wilson_interval(collisions, n, fs.confidence)[1]),
            "intervention_rate": float(frame["interventions"].sum()) / max(steps, 1),
            "infeasible_rate": float(frame["infeasible_steps"].sum()) / max(steps, 1),
            "cbf_violation_rate": float(frame["cbf_violation_steps"].sum()) / max(steps, 1),
            "mean_capture_steps": float(frame.loc[captured, "length"].mean()) if captured.any() else float("nan"),
        })
    return pd.DataFrame(table, columns=list(SWEEP_COLUMNS))


def select_filter(sweep: pd.DataFrame, max_collision_upper: float) -> dict[str, Any]:
    """The rule of eval.filter_sweep: among configurations whose dev collision upper bound is at most
    `max_collision_upper`, the highest dev capture rate (ties: lower intervention rate, then grid
    order); if none qualifies, the lowest upper bound (ties: higher capture). Refuses a table with
    any row not from the dev split. Returns the row as a dict plus ``qualified`` (bool)."""
    splits = set(sweep["split"])
    if splits != {"dev"}:
        raise ValueError(f"select_filter: the sweep table has splits {sorted(splits)}; accepted: dev rows only")
    order = sweep.reset_index(drop=True).assign(order=lambda t: range(len(t)))
    qualified = order[order["collision_upper"] <= max_collision_upper]
    if len(qualified):
        best = qualified.sort_values(["capture_rate", "intervention_rate", "order"], ascending=[False, True, True])
    else:
        best = order.sort_values(["collision_upper", "capture_rate", "order"], ascending=[True, False, True])
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in best.iloc[0].drop("order").items()}
    row["qualified"] = bool(len(qualified))
    return row


def run(params: Params, workdir: str | Path = ".", algo: str = "barriernet", seed: int = 0) -> dict[str, Any]:
    """Evaluate every arm of the (algo, seed) checkpoint; write episodes.csv and trajectory.npz."""
    workdir = Path(workdir)
    model = model_path(workdir, algo, seed)
    arms = [arm for arm in ARMS_OF_ALGO[algo] if arm in params.eval.arms]
    # Check the input before any long work; a bad checkpoint leaves earlier outputs intact.
    try:
        actor, _, obs_rms, record = load_trained(model, params)
    except CheckpointError as exc:
        raise StageInputError(str(exc)) from None
    if record["algo"] != algo:
        raise StageInputError(f"{model}: holds algo '{record['algo']}', expected '{algo}'")
    if record["obs_dim"] != PursuitEvasionCore(params.env, 1).obs_dim:
        raise StageInputError(
            f"{model}: trained with obs_dim={record['obs_dim']}, the env in params has a different one "
            "(env params changed since training?)"
        )

    started = time.perf_counter()
    # The filter sweep (dev episodes only) and, for the baseline, the configuration it chooses.
    fs, tuned = params.eval.filter_sweep, None
    if fs.enabled and algo in fs.algos:
        sweep = sweep_filters(actor, obs_rms, params)
        io.write_csv(output_dir(workdir, algo, seed) / SWEEP_FILE, sweep)
        if algo == "baseline" and params.eval.tuned_filter is None:
            tuned = select_filter(sweep, fs.max_collision_upper)
    if algo == "baseline" and params.eval.tuned_filter is not None:
        # one configuration for every seed, chosen once by the tuning study on its own dev sweep
        tuned = {**params.eval.tuned_filter.model_dump(), "source": "eval.tuned_filter"}
    if tuned is not None:
        io.write_json(output_dir(workdir, algo, seed) / CHOICE_FILE, tuned)
    if tuned is None:
        arms = [arm for arm in arms if arm != "baseline_tuned_filter"]
    rows: list[dict[str, Any]] = []
    trajectories: dict[str, np.ndarray] = {}
    splits = {"dev": list(range(params.eval.dev_episodes)), "test": list(range(params.eval.test_episodes))}
    chunk = params.eval.num_envs
    for arm in arms:
        policy = build_policy(arm, actor, params, tuned)
        policy.eval()
        for split, all_episodes in splits.items():
            for start in range(0, len(all_episodes), chunk):
                episodes = all_episodes[start : start + chunk]
                drawn = params.eval.trajectory_episode if split == "test" else None
                arm_rows, trajectory = play_episodes(policy, obs_rms, params, episodes, drawn, split)
                rows += [{"arm": arm, "algo": algo, "seed": seed, **r} for r in arm_rows]
                if trajectory is None:
                    continue
                for name, value in trajectory.items():
                    key = name if name.startswith("obstacle") else f"{arm}/{name}"
                    trajectories[key] = value

    out_dir = output_dir(workdir, algo, seed)
    table = pd.DataFrame(rows)[list(EPISODE_COLUMNS)]
    io.write_csv(out_dir / EPISODES_FILE, table)
    with io.atomic_path(out_dir / TRAJECTORY_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **trajectories)
    io.write_json(out_dir / TIMING_FILE, {"wall_seconds": time.perf_counter() - started, "arms": arms})
    summary = (
        table[table["split"] == "test"]
        .assign(capture=table.outcome.eq("capture"), collision=table.outcome.eq("collision"))
        .groupby("arm")[["capture", "collision"]]
        .mean()
        .round(4)
        .to_dict(orient="index")
    )
    return {"episodes": {split: len(e) for split, e in splits.items()}, "arms": arms, "test_rates": summary}
