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

import torch
from torch import Tensor

from env.config import EnvParams
from env.geometry import wrap_angle

FLEE_INFLUENCE = 2.0
"""Clearance (m) below which obstacles and walls repel the fleeing evader."""
FLEE_OBSTACLE_GAIN = 1.0
FLEE_WALL_GAIN = 1.0
_MIN_CLEARANCE = 0.05  # caps the repulsion (1/s) when the evader touches something

# ATen's float32 atan2 computes the last (N mod 16) elements of a batch (pinned AVX2; 32 with
# AVX-512) on a scalar path with other round-off, so an env's heading would depend on how many
# envs share its batch and where it sits (evaluation and the scenarios drop ended envs). Padded
# to a multiple of this, every element takes the vector path, lane for lane alike.
_ATAN2_BLOCK = 64


def _atan2_per_env(y: Tensor, x: Tensor) -> Tensor:
    """torch.atan2(y, x) of (N,) tensors, each element's bits independent of N and its position."""
    n = y.shape[0]
    pad = -n % _ATAN2_BLOCK
    if pad:
        y, x = torch.cat((y, y.new_zeros(pad))), torch.cat((x, x.new_ones(pad)))
    return torch.atan2(y, x)[:n]


def random_evader(draw_v: Tensor, draw_w: Tensor, params: EnvParams) -> tuple[Tensor, Tensor]:
    """Uniform (v, w), each (N,), from uniform draws (N,) in [0, 1)."""
    return draw_v * params.evader_v_max, (2 * draw_w - 1) * params.evader_w_max


def flee_evader(robots: Tensor, obstacles: Tensor, present: Tensor, params: EnvParams) -> tuple[Tensor, Tensor]:
    """Scripted fleeing (v, w), each (N,).

    Args:
        robots: (5, 2, N) x, y, theta, v, w of the pursuer (row 0) and the evader (row 1).
        obstacles: (3, K, N) centre x, centre y, radius; present (K, N) bool (obstacle exists).
    """
    ex, ey, heading = robots[0, 1], robots[1, 1], robots[2, 1]
    away_x, away_y = ex - robots[0, 0], ey - robots[1, 0]
    scale = 1 / torch.hypot(away_x, away_y).clamp_min(1e-9)
    push_x, push_y = away_x * scale, away_y * scale

    def repulsion(clearance: Tensor, gain: float) -> Tensor:
        s = clearance.clamp_min(_MIN_CLEARANCE)
        return gain * torch.clamp(1 / s - 1 / FLEE_INFLUENCE, min=0.0)

    if obstacles.shape[1]:
        from_x, from_y = ex - obstacles[0], ey - obstacles[1]  # (K, N)
        centre_distance = torch.hypot(from_x, from_y).clamp_min(1e-9)
        clearance = centre_distance - obstacles[2] - params.robot_radius
        strength = torch.where(present, repulsion(clearance, FLEE_OBSTACLE_GAIN), 0.0) / centre_distance
        push_x = push_x + (from_x * strength).sum(0)
        push_y = push_y + (from_y * strength).sum(0)
    inner = params.arena_size / 2 - params.robot_radius
    push_x = push_x + repulsion(inner + ex, FLEE_WALL_GAIN) - repulsion(inner - ex, FLEE_WALL_GAIN)
    push_y = push_y + repulsion(inner + ey, FLEE_WALL_GAIN) - repulsion(inner - ey, FLEE_WALL_GAIN)
    error = wrap_angle(_atan2_per_env(push_y, push_x) - heading)
    w = torch.clamp(error / params.dt, -params.evader_w_max, params.evader_w_max)
    v = params.evader_v_max * torch.clamp(torch.cos(error), min=0.0)
    return v, w

