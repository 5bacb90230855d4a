"""The named scenarios of the `scenarios` stage and the measures its report section shares.

A library, not a stage: the scenarios stage (tasks/scenarios.py) plays these geometries, the
report (tasks/report_scenarios.py) captions and flags them; neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tasks.params import SCENARIOS, Params

NEAR_BARRIER = 0.5  # m: "a barrier within 0.5 m" of the steering-vs-braking measure
INFEASIBLE_RED_FLAG = 0.05  # the plan's red flag: the safety layer infeasible on more than 5 % of steps


@dataclass(frozen=True)
class Scenario:
    """A fixed geometry: poses (x, y, theta) in m and rad, obstacles (x, y, r) in m."""

    name: str
    pursuer: tuple[float, float, float]
    evader: tuple[float, float, float]
    obstacles: tuple[tuple[float, float, float], ...] = ()
    pursuer_speed: float = 0.0  # fraction of v_max the pursuer is observed moving at the start
    env_overrides: dict[str, Any] = field(default_factory=dict)
    evader_script: str | None = None  # "wall_follow": the evader's action is scripted
    disturbed: bool = False
    reading: str = ""  # what the scenario tests (the report's caption)


def scenario_geometry(name: str, params: Params) -> Scenario:
    """The fixed geometry of scenario `name` under `params` (corridor widths follow env and cbf)."""
    env, cbf = params.env, params.cbf
    if name == "open_field":
        return Scenario(name, (-5.0, 0.0, 0.0), (5.0, 0.0, 0.0), reading="plain pursuit, 10 m, no obstacles")
    if name == "obstacle_between":
        return Scenario(name, (-5.0, 0.0, 0.0), (5.0, 0.0, 0.0), ((0.0, 0.0, 1.0),),
                        reading="an obstacle of radius 1 m on the line of sight")  # fmt: skip
    if name == "near_boundary":
        return Scenario(name, (-5.0, 9.0, 0.0), (1.0, 9.0, 0.0), reading="chase along the top wall")
    if name == "cornered":
        return Scenario(name, (4.0, 4.0, math.pi / 4), (8.5, 8.5, math.pi / 4), reading="evader in a corner")
    if name == "high_speed_obstacle":
        return Scenario(name, (-6.0, 0.0, 0.0), (2.0, 0.5, 0.0), ((-3.2, 0.0, 0.8),), pursuer_speed=1.0,
                        reading="observed at full speed (first-order dynamics: it can stop at once), an obstacle "
                                "2 m ahead on the heading")  # fmt: skip
    if name == "head_on":
        return Scenario(name, (-1.0, 0.0, 0.0), (1.0, 0.0, math.pi), reading="2 m apart, facing")
    if name in ("corridor_tight", "corridor_passable"):
        if name == "corridor_tight":
            gap = 1.5 * 2 * env.robot_radius
            reading = ("1.5x the robot's width, narrower than the barrier's keep-out: an arm with a safety layer "
                       "cannot pass, so timeouts and no collisions are expected of it")
        else:
            # The enforced barrier keeps the look-ahead point r + robot_radius + safety_margin +
            # lookahead (+ robust_margin) from each centre (model/cbf.py): the gap must exceed twice that.
            gap = 2 * (env.robot_radius + env.safety_margin + cbf.lookahead + cbf.robust_margin) + 0.1
            reading = "just wide enough for the enforced (robust, look-ahead) barrier"
        # Two discs of radius R that reach past the walls: the only way across x = 0 is the gap.
        radius = env.arena_size / 4
        centre = radius + gap / 2
        return Scenario(name, (-6.0, 0.0, 0.0), (6.0, 0.0, 0.0), ((0.0, centre, radius), (0.0, -centre, radius)),
                        reading=f"gap {gap:.2f} m, {reading}")  # fmt: skip
    if name == "boundary_wrap":
        half = env.arena_size / 2
        return Scenario(name, (-4.0, -6.0, 0.0), (-2.0, -(half - 1.0), 0.0), evader_script="wall_follow",
                        reading="the evader runs along the walls")  # fmt: skip
    if name == "obstacle_shadow":
        return Scenario(name, (-6.0, 0.0, 0.0), (2.3, 0.0, 0.0), ((0.0, 0.0, 1.5),),
                        reading="the evader hides behind an obstacle of radius 1.5 m")  # fmt: skip
    if name == "multi_obstacle_4":
        obstacles = ((-3.0, 1.0, 0.7), (-1.0, -1.3, 0.8), (1.5, 0.9, 0.7), (4.0, -0.6, 0.8))
        return Scenario(name, (-7.0, 0.0, 0.0), (7.0, 0.0, math.pi), obstacles,
                        reading="4 obstacles in the way (more than the observation shows)")  # fmt: skip
    if name == "multi_obstacle_8":
        obstacles = ((-4.0, 1.2, 0.6), (-4.0, -1.4, 0.6), (-1.5, 0.0, 0.7), (0.5, 2.2, 0.6),
                     (0.5, -2.0, 0.6), (2.5, 0.3, 0.7), (4.5, 2.0, 0.6), (4.5, -1.6, 0.6))  # fmt: skip
        return Scenario(name, (-7.0, 0.0, 0.0), (7.0, 0.0, math.pi), obstacles,
                        reading="8 obstacles in the way (more than the observation shows)")  # fmt: skip
    if name == "speed_mismatch":
        return Scenario(name, (-5.0, 0.0, 0.0), (5.0, 0.0, 0.0),
                        env_overrides={"evader_v_max": 1.2 * env.pursuer_v_max},
                        reading="the evader's top speed is 20 % above the pursuer's (the random "
                                "evader draws its speed up to it)")  # fmt: skip
    if name == "fleeing_evader":
        return Scenario(name, (-5.0, 0.0, 0.0), (3.0, 0.0, 0.0), ((-1.0, 2.5, 0.8),),
                        env_overrides={"evader_policy": "flee"}, reading="a fleeing evader")  # fmt: skip
    if name == "disturbance":
        return Scenario(name, (-5.0, 0.0, 0.0), (5.0, 0.0, 0.0), ((0.0, 0.0, 1.0),), disturbed=True,
                        reading="actuation noise and a speed bias on the pursuer (model mismatch)")  # fmt: skip
    raise ValueError(f"scenario {name!r} is unknown; accepted: {', '.join(SCENARIOS)}")


def red_flags(table: pd.DataFrame) -> list[str]:
    """The plan's red flag per (arm, scenario): the safety layer infeasible on more than 5 % of steps."""
    flags = []
    sums = table.groupby(["arm", "scenario"])[["infeasible_steps", "length"]].sum()
    for (arm, scenario), row in sums.iterrows():
        rate = row["infeasible_steps"] / max(row["length"], 1)
        if rate > INFEASIBLE_RED_FLAG:
            flags.append(f"red flag: {arm} in {scenario}: safety layer infeasible on {rate:.1%} of steps (> {INFEASIBLE_RED_FLAG:.0%})")
    return flags
