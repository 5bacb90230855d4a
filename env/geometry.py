"""Geometry shared by the env core, the evader policies, the CBF layer and the tests (one copy).

- `wrap_angle`: angles to (-pi, pi].
- `unicycle_arc` / `unicycle_step`: the exact unicycle flow over one step.
- `body_barriers` / `barrier_values`: the body barriers h (metres) the metrics use.

Units: metres, seconds, radians. Depends on torch only (and `EnvParams` for the sizes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from env.config import EnvParams


def wrap_angle(theta: Tensor) -> Tensor:
    """Angles wrapped to (-pi, pi], elementwise (any shape)."""
    return math.pi - torch.remainder(math.pi - theta, 2 * math.pi)


def _arc_length_factor(half_turn: Tensor) -> Tensor:
    """sin(h) / h, 1 at h = 0 (no cancellation: accurate for tiny h too)."""
    straight = half_turn == 0
    return torch.where(straight, 1.0, torch.sin(half_turn) / torch.where(straight, 1.0, half_turn))


def unicycle_arc(x: Tensor, y: Tensor, theta: Tensor, v: Tensor, w: Tensor, dt: float) -> tuple[Tensor, Tensor, Tensor]:
    """Exact unicycle flow over dt (s) with constant v (m/s), w (rad/s), elementwise on same-shaped tensors.

    The arc x += (v/w)(sin(t + w dt) - sin t), y -= (v/w)(cos(t + w dt) - cos t) is evaluated as
    v dt (sin(h)/h) (cos, sin)(t + h) with h = w dt / 2: the same numbers, finite at w = 0 and
    exactly the straight line there. Theta is wrapped to (-pi, pi].
    """
    half_turn = w * (0.5 * dt)
    mid = theta + half_turn
    length = (v * dt) * _arc_length_factor(half_turn)
    return x + length * torch.cos(mid), y + length * torch.sin(mid), wrap_angle(mid + half_turn)


def unicycle_step(pose: Tensor, v: Tensor, w: Tensor, dt: float) -> Tensor:
    """`unicycle_arc` on poses (..., 3) (x, y, theta) with v, w (...) -> (..., 3)."""
    x, y, theta = unicycle_arc(pose[..., 0], pose[..., 1], pose[..., 2], v, w, dt)
    return torch.stack((x, y, theta), dim=-1)


def body_barriers(x: Tensor, y: Tensor, centre_distance: Tensor, radii: Tensor, present: Tensor, params: "EnvParams") -> Tensor:
    """Body barriers, batch-last: h (K + 4, N) in metres, h < 0 violates the safety margin.

    Rows: obstacle k ``|p - c_k| - (r_k + robot_radius + safety_margin)`` (absent: +inf), then
    walls +x, -x, +y, -y ``(L/2 - robot_radius - safety_margin) -/+ x`` (and y).
    x, y (N,) the pursuer's position; centre_distance, radii, present (K, N): |p - c_k|, r_k and
    whether obstacle k exists.
    """
    obstacles = torch.where(present, centre_distance - (radii + (params.robot_radius + params.safety_margin)), math.inf)
    wall = params.arena_size / 2 - params.robot_radius - params.safety_margin
    return torch.cat((obstacles, torch.stack((wall - x, wall + x, wall - y, wall + y))))


def barrier_values(pursuer: Tensor, centres: Tensor, radii: Tensor, mask: Tensor, params: "EnvParams") -> Tensor:
    """`body_barriers` batch-first: h (N, K + 4), obstacles first (absent = +inf), then walls
    +x, -x, +y, -y; pursuer (N, 3), centres (N, K, 2), radii and mask (N, K)."""
    x, y = pursuer[:, 0], pursuer[:, 1]
    centre_distance = torch.hypot(x.unsqueeze(1) - centres[..., 0], y.unsqueeze(1) - centres[..., 1])
    return body_barriers(x, y, centre_distance.T, radii.T, mask.T, params).T
