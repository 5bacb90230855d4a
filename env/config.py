"""The environment's own params model (the ``env:`` section of params.yaml) and its error type.

The env owns its config: `EnvParams` lives here, next to the code that reads it, and
`tasks.params` composes it into the pipeline's `Params` (re-exported there, so
``from tasks.params import EnvParams`` keeps working). Nothing here imports the pipeline.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

START_SLACK = 1e-3
"""Metres the start sampler keeps beyond every start bound, so float32 rounding of a pose on a
bound cannot turn a barrier that is >= 0 by construction into -1e-7."""

REMOVED_KEYS = {
    "timeout_penalty": (
        "a penalty paid on truncation is unpredictable for the critic, because time is not in the "
        "observation (Pardo et al. 2018, 'Time Limits in Reinforcement Learning'); truncation now pays "
        "nothing and PPO bootstraps V(final obs) there. Accepted: delete the key"
    ),
}
"""Keys an older params file may still name, with why they went (an unknown-key hint would mislead)."""


class EnvParamsError(ValueError):
    """Invalid env params; the message names the dotted key (``env.<field>``), the bad value and
    what is accepted."""


class EnvParams(BaseModel):
    """The pursuit-evasion scenario (DESIGN.md's scenario table, plus the choices documented in
    `env.pursuit_evasion`'s manual)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    arena_size: float = Field(20.0, gt=0, description="side of the square arena (m), centred at the origin")
    num_obstacles: int = Field(2, ge=0, le=8, description="circular obstacles per episode")
    observed_obstacles: int = Field(2, ge=0, le=8, description="K nearest obstacles in the observation")
    obstacle_radius_min: float = Field(0.3, gt=0, description="obstacle radius lower bound (m)")
    obstacle_radius_max: float = Field(1.0, gt=0, description="obstacle radius upper bound (m)")
    obstacle_clearance: float = Field(0.5, ge=0, description="min gap between obstacles and robots at start (m)")
    robot_radius: float = Field(0.15, gt=0, description="body radius of both robots (m)")
    safety_margin: float = Field(0.1, ge=0, description="barrier h = clearance - margin; h < 0 is a CBF violation")
    start_margin: float = Field(
        0.25, ge=0, description="extra clearance (m) of the start states: the pursuer's body and the segment "
        "start_margin ahead of it keep robot_radius + safety_margin + start_margin from every wall and obstacle "
        "edge, so a CBF look-ahead point up to start_margin ahead starts with every barrier >= 0 (0.25: covers the "
        "default cbf.lookahead 0.2 plus cbf.robust_margin 0.05)"
    )
    pursuer_v_max: float = Field(1.0, gt=0, description="pursuer speed limit, v in [0, v_max] (m/s)")
    pursuer_w_max: float = Field(2.84, gt=0, description="pursuer turn-rate limit, w in [-w_max, w_max] (rad/s)")
    evader_v_max: float = Field(1.0, ge=0, description="evader speed limit (m/s)")
    evader_w_max: float = Field(2.84, ge=0, description="evader turn-rate limit (rad/s)")
    evader_policy: Literal["random", "flee"] = Field("random", description="random: uniform action each step")
    dt: float = Field(0.05, gt=0, le=1.0, description="integration step (s)")
    max_steps: int = Field(600, ge=1, description="steps per episode before truncation (no penalty: time is not observed)")
    start_distance_min: float = Field(3.0, ge=0, description="pursuer-evader distance at start, lower (m)")
    start_distance_max: float = Field(15.0, gt=0, description="pursuer-evader distance at start, upper (m)")
    capture_radius: float = Field(0.5, gt=0, description="capture when distance <= this (m)")
    capture_reward: float = Field(100.0, description="reward on capture")
    collision_penalty: float = Field(-100.0, le=0, description="reward when the pursuer touches an obstacle or wall")
    distance_shaping: float = Field(
        10.0, ge=0, description="k of the potential-based distance shaping k (g Phi(s') - Phi(s)), Phi = -d (d in m)"
    )
    proximity_shaping: float = Field(
        30.0, ge=0, description="k of the potential-based proximity shaping k (g Phi(s') - Phi(s)), Phi = -sum over "
        "obstacles and walls of max(0, 1 - clearance / proximity_range): warns the critic as a course closes in "
        "on an obstacle (not in the reference scenario; 0 turns it off)"
    )
    proximity_range: float = Field(1.0, gt=0, description="body clearance (m) below which proximity_shaping acts")
    shaping_discount: float | None = Field(
        None, gt=0, le=1, description="g, the discount both shaping terms are shaped for (Ng et al. 1999: "
        "policy-invariant only at the learner's discount); None: 1.0 in the env, train.gamma in the pipeline"
    )

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        # An old params file must fail loudly and say why, not "unknown key, did you mean ...".
        if isinstance(data, Mapping):
            old = [key for key in REMOVED_KEYS if key in data]
            if old:
                raise ValueError("; ".join(f"env.{key}={data[key]!r} was removed: {REMOVED_KEYS[key]}" for key in old))
        return data

    @property
    def discount(self) -> float:
        """The shaping discount g actually used: `shaping_discount`, or 1.0 when None."""
        return 1.0 if self.shaping_discount is None else self.shaping_discount

    @property
    def start_half_width(self) -> float:
        """U (m): both robots start with |x|, |y| <= U; the pursuer's heading segment too."""
        return self.arena_size / 2 - self.robot_radius - self.safety_margin - self.start_margin - START_SLACK

    @model_validator(mode="after")
    def _consistent(self) -> "EnvParams":
        if self.obstacle_radius_max < self.obstacle_radius_min:
            raise ValueError(
                f"env.obstacle_radius_max={self.obstacle_radius_max} is below "
                f"env.obstacle_radius_min={self.obstacle_radius_min}; accepted: max >= min"
            )
        if self.start_distance_max < self.start_distance_min:
            raise ValueError(
                f"env.start_distance_max={self.start_distance_max} is below "
                f"env.start_distance_min={self.start_distance_min}; accepted: max >= min"
            )
        # Safe starts must exist: the pursuer's box (half-width U, less start_margin along its
        # heading) must be non-empty with room for the pursuer-evader offset (span 2U - s per axis).
        half, span = self.arena_size / 2, 2 * self.start_half_width - self.start_margin
        if span <= 0:
            need = 1.5 * self.start_margin + self.robot_radius + self.safety_margin + START_SLACK
            raise ValueError(
                f"env.arena_size={self.arena_size} leaves no room for safe starts with env.robot_radius="
                f"{self.robot_radius}, env.safety_margin={self.safety_margin} and env.start_margin={self.start_margin}; "
                f"accepted: arena_size / 2 > robot_radius + safety_margin + 1.5 start_margin (+ {START_SLACK} m), "
                f"here > {need:.4f} m against {half:g} m"
            )
        if self.start_distance_min > math.sqrt(2) * span:
            raise ValueError(
                f"env.start_distance_min={self.start_distance_min} cannot fit in an arena of size "
                f"{self.arena_size} with env.robot_radius, env.safety_margin and env.start_margin as given; "
                f"accepted: <= {math.sqrt(2) * span:.2f}"
            )
        if self.capture_radius >= self.start_distance_min and self.start_distance_min > 0:
            raise ValueError(
                f"env.capture_radius={self.capture_radius} >= env.start_distance_min="
                f"{self.start_distance_min}: episodes would start captured; accepted: smaller radius"
            )
        # Obstacles must be placeable: their area with the keep-out around the robots (the
        # clearance, or the pursuer's start margin ahead of it) may take at most a third of the
        # arena, else rejection sampling cannot succeed reliably.
        if self.num_obstacles:
            keep_out = max(self.obstacle_clearance, self.safety_margin + self.start_margin)
            r_eff = self.obstacle_radius_max + keep_out + self.robot_radius
            if 2 * r_eff >= self.arena_size:
                raise ValueError(
                    f"env.obstacle_radius_max={self.obstacle_radius_max} with clearance {keep_out:g} "
                    f"(env.obstacle_clearance, or env.safety_margin + env.start_margin) does not fit in "
                    f"env.arena_size={self.arena_size}; accepted: 2 (radius + clearance + robot_radius) < arena_size"
                )
            share = self.num_obstacles * math.pi * r_eff**2 / self.arena_size**2
            if share > 1 / 3:
                raise ValueError(
                    f"env.num_obstacles={self.num_obstacles} obstacles of radius up to "
                    f"{self.obstacle_radius_max} with clearance {keep_out:g} (env.obstacle_clearance, or "
                    f"env.safety_margin + env.start_margin) cannot be placed in a {self.arena_size} m arena "
                    f"(they would cover {share:.0%}; accepted: at most a third)"
                )
        return self


def make_params(params: EnvParams | None = None, **overrides: Any) -> EnvParams:
    """`params` (defaults when None) with keyword overrides of its fields, validated.

    Raises `EnvParamsError` naming the bad key (``env.<field>``), the value and what is accepted.
    """
    base = params if params is not None else EnvParams()
    if not isinstance(base, EnvParams):
        raise EnvParamsError(f"params={base!r} is not an EnvParams; accepted: env.config.EnvParams or None")
    if not overrides:
        return base
    fields = list(EnvParams.model_fields)
    unknown = [key for key in overrides if key not in fields]
    removed = [key for key in unknown if key in REMOVED_KEYS]
    if removed:
        raise EnvParamsError("; ".join(f"env.{key}={overrides[key]!r} was removed: {REMOVED_KEYS[key]}" for key in removed))
    if unknown:
        raise EnvParamsError(f"unknown env parameter(s) {unknown}; accepted: {fields}")
    try:
        return EnvParams.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"env.{key}={error.get('input')!r}: {message}" if key else message)
        raise EnvParamsError("invalid env parameters:\n  " + "\n  ".join(lines)) from None
