"""Evader policies, batched on torch tensors.

- ``random`` (the reference scenario): a uniformly random action in the evader's bounds each
  step, v ~ U[0, v_max], w ~ U[-w_max, w_max], from the env's counter-based draws.
- ``flee`` (a harder, scripted opponent): a potential-field heading. The evader is pushed away
  from the pursuer (unit vector) and repelled by obstacles and walls whose clearance to its body
  is below `FLEE_INFLUENCE` (strength ``gain * (1/s - 1/FLEE_INFLUENCE)``, s = clearance). It
  turns towards that heading as fast as its turn-rate limit allows (``w = clip(error / dt)``)
  and drives at ``v_max * max(cos(error), 0)``, so it slows down to turn round.

Both return (N, 2) actions within [0, v_max] x [-w_max, w_max] of the evader.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tasks.params import EnvParams

FLEE_INFLUENCE = 2.0
"""Clearance (m) below which obstacles and walls repel the fleeing evader."""
FLEE_OBSTACLE_GAIN = 1.0
FLEE_WALL_GAIN = 1.0
_MIN_CLEARANCE = 0.05  # caps the repulsion (1/s) when the evader touches something


def random_evader(draws: Tensor, params: EnvParams) -> Tensor:
    """Uniform actions (N, 2) from uniform draws (N, 2) in [0, 1)."""
    v = draws[:, 0] * params.evader_v_max
    w = (2 * draws[:, 1] - 1) * params.evader_w_max
    return torch.stack((v, w), dim=1)


def flee_evader(pose: Tensor, centres: Tensor, radii: Tensor, mask: Tensor, params: EnvParams) -> Tensor:
    """Scripted fleeing actions (N, 2).

    Args:
        pose: (N, 2, 3) pursuer (row 0) and evader (row 1) x, y, theta.
        centres: (N, K, 2) obstacle centres; radii, mask: (N, K).
    """
    evader = pose[:, 1]
    position = evader[:, :2]
    away = position - pose[:, 0, :2]
    push = away / torch.linalg.vector_norm(away, dim=1, keepdim=True).clamp_min(1e-9)

    def repulsion(clearance: Tensor, gain: float) -> Tensor:
        s = clearance.clamp_min(_MIN_CLEARANCE)
        return gain * torch.clamp(1 / s - 1 / FLEE_INFLUENCE, min=0.0)

    if centres.shape[1]:
        from_obstacles = position.unsqueeze(1) - centres  # (N, K, 2)
        centre_distance = torch.linalg.vector_norm(from_obstacles, dim=-1, keepdim=True).clamp_min(1e-9)
        clearance = centre_distance.squeeze(-1) - radii - params.robot_radius
        strength = torch.where(mask, repulsion(clearance, FLEE_OBSTACLE_GAIN), 0.0)
        push = push + (from_obstacles / centre_distance * strength.unsqueeze(-1)).sum(1)
    inner = params.arena_size / 2 - params.robot_radius
    x, y = position[:, 0], position[:, 1]
    push = push + torch.stack(
        (
            repulsion(inner + x, FLEE_WALL_GAIN) - repulsion(inner - x, FLEE_WALL_GAIN),
            repulsion(inner + y, FLEE_WALL_GAIN) - repulsion(inner - y, FLEE_WALL_GAIN),
        ),
        dim=1,
    )
    desired = torch.atan2(push[:, 1], push[:, 0])
    error = desired - evader[:, 2]
    error = error - (2 * math.pi) * torch.ceil((error - math.pi) / (2 * math.pi))  # to (-pi, pi]
    w = torch.clamp(error / params.dt, -params.evader_w_max, params.evader_w_max)
    v = params.evader_v_max * torch.clamp(torch.cos(error), min=0.0)
    return torch.stack((v, w), dim=1)


EVADER_POLICIES = ("random", "flee")


def evader_actions(
    policy: str,
    pose: Tensor,
    centres: Tensor,
    radii: Tensor,
    mask: Tensor,
    draws: Tensor | None,
    params: EnvParams,
) -> Tensor:
    """The evader's (v, w) (N, 2) under `policy`; `draws` (N, 2) uniforms are needed by ``random``."""
    if policy == "random":
        if draws is None:
            raise ValueError("evader policy 'random' needs draws (N, 2) of uniforms")
        return random_evader(draws, params)
    if policy == "flee":
        return flee_evader(pose, centres, radii, mask, params)
    raise ValueError(f"env.evader_policy={policy!r} is unknown; accepted: {list(EVADER_POLICIES)}")
