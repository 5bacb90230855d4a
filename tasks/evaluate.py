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
  timing.json      wall time of this cell (the report's setup table) and each arm's median time of
                   one decision on one state (`single_decision_ms`: the reference's "inference per
                   step"); wall clock, so never in episodes.csv
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
from typing import Any, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from env.core import PursuitEvasionCore, SafetyState
from model.actors import ActorOutput, SafetyFilter, make_filter
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
from tasks.artifacts.policy import act_padded, build_policy, first_rows, load_trained, padded_call_rows
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


class EpisodeGroup(NamedTuple):
    """One policy on a list of episodes of one split; `record`: the episode whose trajectory is kept
    (None: none)."""

    policy: torch.nn.Module
    split: str  # "dev" or "test"
    episodes: list[int]
    record: int | None = None


class _Run(NamedTuple):
    """Rows [start, stop) of a chunk: episodes of group `group`."""

    group: int
    start: int
    stop: int


@torch.no_grad()
def play_groups(
    groups: Sequence[EpisodeGroup], obs_rms: torch.nn.Module, params: Params
) -> list[tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]]:
    """Play every group's episodes side by side: the rows of all groups, laid out group after
    group, are cut into chunks of at most eval.num_envs envs; each chunk is one batched env, and
    each group's policy acts on its own rows of it.

    Batching many short per-step ops over more envs is what makes evaluation fast, and a chunk
    drops its ended episodes as it goes (COMPACT_FRACTION); neither changes a result: the env,
    the MLPs and the per-row QP solvers compute every row independently of the other rows once
    each policy call is padded to CALL_ROWS (tasks/artifacts/policy.py), so `eval.num_envs`, the grouping and the
    dropping move no number (tests/test_evaluate.py compares with one env at a time, and with a
    chunk that never drops a row).

    Returns, per group in order: its rows (one per episode, in its order: outcome, length,
    return, min_h, counts, decision_ms) and the trajectory of its `record` episode {pursuer (T,2),
    evader (T,2), obstacle_centres (K,2), obstacle_radii (K,)} or None.
    """
    layout = [(g, e) for g, group in enumerate(groups) for e in group.episodes]
    chunk = params.eval.num_envs
    rows: list[list[dict[str, Any]]] = [[] for _ in groups]
    trajectories: list[dict[str, np.ndarray] | None] = [None] * len(groups)
    for begin in range(0, len(layout), chunk):
        part = layout[begin : begin + chunk]
        runs, start = [], 0
        for i in range(1, len(part) + 1):
            if i == len(part) or part[i][0] != part[start][0]:
                runs.append(_Run(part[start][0], start, i))
                start = i
        chunk_rows, chunk_trajectories = _play_chunk(groups, runs, [e for _, e in part], obs_rms, params)
        for run in runs:
            rows[run.group] += chunk_rows[run.start : run.stop]
        for g, trajectory in chunk_trajectories.items():
            trajectories[g] = trajectory
    return list(zip(rows, trajectories))


# A chunk drops its ended episodes from the batched env (`PursuitEvasionCore.keep_envs`) once at
# least this fraction of its rows has ended. Without autoreset an ended env would be stepped until
# the chunk's longest episode ends, and evaluation episodes average 230-280 of at most 600 steps;
# the fraction keeps the dozen index_selects of a compaction rare. Which rows share a step (and a
# policy call, padded to CALL_ROWS) moves no number, so neither does this.
COMPACT_FRACTION = 1 / 16


def _play_chunk(
    groups: Sequence[EpisodeGroup], runs: list[_Run], episodes: list[int], obs_rms: torch.nn.Module, params: Params
) -> tuple[list[dict[str, Any]], dict[int, dict[str, np.ndarray]]]:
    """One batched env of len(episodes) rows, `runs` saying which group plays which rows: play the
    first episode of env row i, seeded (the split's seed base) + episodes[i], to its end."""
    env_p = params.env
    n = len(episodes)
    splits = [groups[run.group].split for run in runs for _ in range(run.start, run.stop)]
    seed_bases = {split: params.eval.split_range(split).start for split in set(splits)}
    env_seeds = [seed_bases[split] + e for split, e in zip(splits, episodes)]
    core = PursuitEvasionCore(env_p, n, autoreset=False)
    core.seed(env_seeds)
    obs = core.reset()
    # `core` row i plays chunk row live[i]; `sums` hold the live rows' per-episode tallies and
    # `final` those of the rows already dropped (by chunk row).
    live = torch.arange(n)
    active = torch.ones(n, dtype=torch.bool)
    sums = {
        "length": torch.zeros(n, dtype=torch.int64),
        "return": torch.zeros(n, dtype=torch.float64),
        "min_h": core.barrier().min(dim=1).values.double(),
        "cbf_violation_steps": torch.zeros(n, dtype=torch.int64),
        "enforced_violation_steps": torch.zeros(n, dtype=torch.int64),
        "correction_sum": torch.zeros(n, dtype=torch.float64),
        "interventions": torch.zeros(n, dtype=torch.int64),
        "infeasible_steps": torch.zeros(n, dtype=torch.int64),
        "decision_seconds": torch.zeros(n, dtype=torch.float64),
    }
    final = {name: torch.empty_like(tally) for name, tally in sums.items()}
    outcome = np.array(["timeout"] * n, dtype=object)
    tracks = {}  # group -> its recorded chunk row
    for run in runs:
        record = groups[run.group].record
        if record is not None and record in episodes[run.start : run.stop]:
            tracks[run.group] = run.start + episodes[run.start : run.stop].index(record)
    paths = {g: ([core.pursuer[row, :2].clone()], [core.evader[row, :2].clone()]) for g, row in tracks.items()}
    obstacles = {g: (core.obstacle_centres[row].clone(), core.obstacle_radii[row].clone()) for g, row in tracks.items()}
    tracked = dict(tracks)  # group -> its recorded row's position in `core`, while it plays
    chunk_runs, calls = runs, _calls(groups, runs)

    for _ in range(env_p.max_steps):
        obs_n, safety, a = obs_rms.normalize(obs), core.safety_state(), active
        actions = []
        for call in calls:
            rows = slice(call[0].start, call[-1].stop)
            started = time.perf_counter()
            out = _act(groups, call, obs_n[rows], type(safety)(*(x[rows] for x in safety)))
            per_decision = (time.perf_counter() - started) / (rows.stop - rows.start)  # batched: amortised per env
            actions.append(out.action)
            sums["decision_seconds"][rows] += torch.where(a[rows], per_decision, 0.0)
            if "intervened" in out.info:
                sums["interventions"][rows] += a[rows] & out.info["intervened"]
                sums["infeasible_steps"][rows] += a[rows] & out.info["infeasible"]
                sums["correction_sum"][rows] += torch.where(a[rows], out.info["correction"].double(), 0.0)
        obs, reward, terminated, truncated, info = core.step(actions[0] if len(actions) == 1 else torch.cat(actions))
        sums["length"] += a
        sums["return"] += torch.where(a, reward.double(), 0.0)
        sums["min_h"] = torch.where(a, torch.minimum(sums["min_h"], info["h"].min(dim=1).values.double()), sums["min_h"])
        sums["cbf_violation_steps"] += a & (info["h"] < 0).any(dim=1)
        sums["enforced_violation_steps"] += a & enforced_barrier_violated(core, params)
        for g, position in tracked.items():
            if bool(a[position]):
                paths[g][0].append(info["pursuer"][position, :2].clone())
                paths[g][1].append(info["evader"][position, :2].clone())
        ended = a & (terminated | truncated)
        outcome[live[ended & info["captured"]].numpy()] = "capture"
        outcome[live[ended & info["collided"]].numpy()] = "collision"
        active = a & ~(terminated | truncated)
        playing = int(active.sum())
        if playing == 0:
            break
        if len(active) - playing >= COMPACT_FRACTION * len(active):
            keep, drop = active.nonzero().squeeze(1), (~active).nonzero().squeeze(1)
            for name, tally in sums.items():
                final[name][live[drop]] = tally[drop]
                sums[name] = tally[keep]
            live = live[keep]
            core.keep_envs(keep)
            obs, active = obs[keep], active[keep]
            runs = _live_runs(chunk_runs, live)
            calls = _calls(groups, runs)
            tracked = {g: position for g, row in tracks.items()
                       if (position := int(torch.searchsorted(live, row))) < len(live) and int(live[position]) == row}
    for name, tally in sums.items():
        final[name][live] = tally

    rows = [
        {
            "split": split,
            "episode": e,
            "env_seed": env_seed,
            "outcome": outcome[i],
            "length": int(final["length"][i]),
            "return": float(final["return"][i]),
            "min_h": float(final["min_h"][i]),
            "cbf_violation_steps": int(final["cbf_violation_steps"][i]),
            "enforced_violation_steps": int(final["enforced_violation_steps"][i]),
            "correction_sum": float(final["correction_sum"][i]),
            "interventions": int(final["interventions"][i]),
            "infeasible_steps": int(final["infeasible_steps"][i]),
            "decision_ms": 1000.0 * float(final["decision_seconds"][i]) / max(int(final["length"][i]), 1),
        }
        for i, (split, e, env_seed) in enumerate(zip(splits, episodes, env_seeds))
    ]
    trajectories = {
        g: {
            "pursuer": torch.stack(paths[g][0]).numpy(),
            "evader": torch.stack(paths[g][1]).numpy(),
            "obstacle_centres": obstacles[g][0].numpy(),
            "obstacle_radii": obstacles[g][1].numpy(),
        }
        for g in tracks
    }
    return rows, trajectories


def _live_runs(chunk_runs: list[_Run], live: Tensor) -> list[_Run]:
    """The runs of a chunk after its ended rows were dropped: `live` (M,) ascending chunk rows
    still playing -> each run's rows as positions in them (runs without a row left out)."""
    bounds = torch.searchsorted(live, torch.tensor([[run.start, run.stop] for run in chunk_runs]))
    return [_Run(run.group, start, stop) for run, (start, stop) in zip(chunk_runs, bounds.tolist()) if stop > start]


def _calls(groups: Sequence[EpisodeGroup], runs: list[_Run]) -> list[list[_Run]]:
    """Neighbouring runs that one policy call can serve: the same policy (an arm's dev and test
    episodes), or post-hoc filters that differ only in gamma (`SafetyFilter.forward_stacked`)."""
    calls: list[list[_Run]] = []
    for run in runs:
        if calls and _one_call_serves(groups[calls[-1][-1].group].policy, groups[run.group].policy):
            calls[-1].append(run)
            continue
        calls.append([run])
    return calls


def _one_call_serves(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether one policy call can act for both policies: the same one, or filters that stack."""
    return a is b or (isinstance(a, SafetyFilter) and a.stacks_with(b))


def play_stacked(groups: Sequence[EpisodeGroup], obs_rms: torch.nn.Module, params: Params):
    """`play_groups` with the groups laid out so that the ones one policy call can serve are
    neighbours (`_calls`: the same policy, or filters that stack), in the order each such set first
    appears: fewer calls per step, the same rows (the layout moves no number). Returns per group
    in the order given, as `play_groups`."""
    # each group goes after the first group one call can serve with it (stable within a set)
    rank = [next(j for j in range(i + 1) if _one_call_serves(groups[j].policy, group.policy))
            for i, group in enumerate(groups)]
    order = sorted(range(len(groups)), key=lambda i: rank[i])
    played = dict(zip(order, play_groups([groups[i] for i in order], obs_rms, params)))
    return [played[i] for i in range(len(groups))]


def _act(groups: Sequence[EpisodeGroup], call: list[_Run], obs: Tensor, safety: SafetyState) -> ActorOutput:
    """The deterministic actions of one call's rows: obs (B, obs_dim) -> ActorOutput of B rows.

    The batch is padded with copies of its last row to a multiple of CALL_ROWS (tasks/artifacts/policy.py)."""
    batch = obs.shape[0]
    policies = [groups[run.group].policy for run in call]
    if all(policy is policies[0] for policy in policies):
        return act_padded(policies[0], obs, safety)
    obs, safety = padded_call_rows(obs, safety)
    sizes = [run.stop - run.start for run in call]
    sizes[-1] += obs.shape[0] - batch
    return first_rows(SafetyFilter.forward_stacked(policies, sizes, obs, safety, deterministic=True), batch)


# dev start states timed one at a time per arm (`single_decision_ms`)
SINGLE_DECISION_STATES = 64


@torch.no_grad()
def single_decision_ms(policies: dict[str, torch.nn.Module], obs_rms: torch.nn.Module, params: Params,
                       states: int = SINGLE_DECISION_STATES) -> dict[str, float]:
    """{arm: median wall time (ms) of one deterministic decision}, one state per call.

    The episode table's decision_ms divides a batched call's time by its rows (hundreds to
    thousands): an amortised cost that depends on how many rows share the call. The reference
    project's "inference per step" is one decision on one state, so this times that: each policy
    acts on the first `states` dev start states one at a time (`act_padded`, the call padded to
    CALL_ROWS as every evaluation call is), the arms taking turns state by state so that the
    machine's drift reaches all alike, after one untimed call each."""
    states = max(1, min(states, params.eval.dev_episodes))  # dev starts only
    core = PursuitEvasionCore(params.env, states, autoreset=False)
    core.seed([params.eval.split_range("dev").start + i for i in range(states)])
    obs = obs_rms.normalize(core.reset())
    safety = core.safety_state()
    one = [(obs[i : i + 1], type(safety)(*(x[i : i + 1] for x in safety))) for i in range(states)]
    for policy in policies.values():
        act_padded(policy, *one[0])
    seconds: dict[str, list[float]] = {arm: [] for arm in policies}
    for state in one:
        for arm, policy in policies.items():
            started = time.perf_counter()
            act_padded(policy, *state)
            seconds[arm].append(time.perf_counter() - started)
    return {arm: 1e3 * float(np.median(values)) for arm, values in seconds.items()}


def play_episodes(
    policy: torch.nn.Module,
    obs_rms: torch.nn.Module,
    params: Params,
    episodes: list[int],
    record_episode: int | None = None,
    split: str = "test",
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """One policy on `episodes` of `split` ('dev' or 'test'): `play_groups` with one group.

    Returns one row per episode and, if `record_episode` is among them, its trajectory."""
    return play_groups([EpisodeGroup(policy, split, list(episodes), record_episode)], obs_rms, params)[0]


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
    configs, groups = sweep_groups(actor, params)
    return sweep_table(configs, play_stacked(groups, obs_rms, params), params)


def sweep_groups(actor: torch.nn.Module, params: Params) -> tuple[list[dict[str, Any]], list[EpisodeGroup]]:
    """The sweep's configurations (`sweep_configurations` order) and one group each: its filter
    on the DEV episodes (the only split a sweep plays)."""
    episodes = list(range(params.eval.dev_episodes))
    configs = sweep_configurations(params)
    groups = [EpisodeGroup(make_filter(actor, params, c["form"], c["gamma"], robust_margin=c["robust_margin"]).eval(),
                           "dev", episodes) for c in configs]
    return configs, groups


def sweep_table(configs: list[dict[str, Any]], played: Sequence[tuple[list[dict[str, Any]], Any]],
                params: Params) -> pd.DataFrame:
    """The sweep's table (see `sweep_filters`) from each configuration's played dev rows
    (`played[i]` = `play_groups`' result for configs[i])."""
    from tasks.stats import wilson_interval

    fs = params.eval.filter_sweep
    table = []
    for i, config in enumerate(configs):
        rows = played[i][0]
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
    sweeping = fs.enabled and algo in fs.algos
    chosen_here = sweeping and algo == "baseline" and params.eval.tuned_filter is None
    sweep = None
    if chosen_here:  # the tuned arm plays what this sweep chooses: the sweep first, alone
        sweep = sweep_filters(actor, obs_rms, params)
        tuned = select_filter(sweep, fs.max_collision_upper)
    if algo == "baseline" and params.eval.tuned_filter is not None:
        # one configuration for every seed, chosen once by the tuning study on its own dev sweep
        tuned = {**params.eval.tuned_filter.model_dump(), "source": "eval.tuned_filter"}
    if tuned is None:
        arms = [arm for arm in arms if arm != "baseline_tuned_filter"]
    # every arm on both splits, dev rows first as before; the sweep's filters beside them unless
    # it was played above: one batched pass, its filters stacked with the arms' filters of the same
    # form and margin (play_stacked; neither moves a number)
    groups, group_arms, policies = [], [], {}
    for arm in arms:
        policy = policies[arm] = build_policy(arm, actor, params, tuned).eval()
        for split, count in (("dev", params.eval.dev_episodes), ("test", params.eval.test_episodes)):
            drawn = params.eval.trajectory_episode if split == "test" else None
            groups.append(EpisodeGroup(policy, split, list(range(count)), drawn))
            group_arms.append(arm)
    if sweeping and not chosen_here:
        sweep_configs, sweep_group_list = sweep_groups(actor, params)
        played = play_stacked(sweep_group_list + groups, obs_rms, params)
        sweep = sweep_table(sweep_configs, played[: len(sweep_group_list)], params)
        played = played[len(sweep_group_list):]
    else:
        played = play_stacked(groups, obs_rms, params)
    if sweep is not None:
        io.write_csv(output_dir(workdir, algo, seed) / SWEEP_FILE, sweep)
    if tuned is not None:
        io.write_json(output_dir(workdir, algo, seed) / CHOICE_FILE, tuned)
    rows: list[dict[str, Any]] = []
    trajectories: dict[str, np.ndarray] = {}
    for arm, (arm_rows, trajectory) in zip(group_arms, played):
        rows += [{"arm": arm, "algo": algo, "seed": seed, **r} for r in arm_rows]
        for name, value in (trajectory or {}).items():
            key = name if name.startswith("obstacle") else f"{arm}/{name}"
            trajectories[key] = value

    out_dir = output_dir(workdir, algo, seed)
    table = pd.DataFrame(rows)[list(EPISODE_COLUMNS)]
    io.write_csv(out_dir / EPISODES_FILE, table)
    with io.atomic_path(out_dir / TRAJECTORY_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **trajectories)
    wall_seconds = time.perf_counter() - started  # the cell's episodes; the latency probe below is apart
    io.write_json(out_dir / TIMING_FILE, {"wall_seconds": wall_seconds, "arms": arms,
                                          "single_decision_ms": single_decision_ms(policies, obs_rms, params)})
    summary = (
        table[table["split"] == "test"]
        .assign(capture=table.outcome.eq("capture"), collision=table.outcome.eq("collision"))
        .groupby("arm")[["capture", "collision"]]
        .mean()
        .round(4)
        .to_dict(orient="index")
    )
    return {"episodes": {"dev": params.eval.dev_episodes, "test": params.eval.test_episodes}, "arms": arms, "test_rates": summary}
