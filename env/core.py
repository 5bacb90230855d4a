"""The one batched dynamics core of the pursuit-evasion game (torch, CPU or CUDA).

Every gymnasium class in this package is a view of `PursuitEvasionCore`, so the single env,
the native vector env and the zero-copy training path cannot drift apart.

State of N envs (all torch tensors, batch first):

- ``pose``      (N, 2, 3)  x, y, theta of the pursuer (row 0) and the evader (row 1)
- ``vel``       (N, 2, 2)  the (v, w) each robot executed in its last step (zeros at start)
- ``obstacle_centres`` (N, K, 2), ``obstacle_radii`` (N, K), ``obstacle_mask`` (N, K) bool
- counters: ``step_count``, ``episode_index``, the per-env seed, the running return

Randomness is counter-based: a uniform draw is a hash of (env seed, episode index, step index,
draw index), so env i of a vector env seeded s and a single env seeded s + i draw exactly the
same numbers, whatever else happens in the batch, and a saved state resumes bit-exactly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from env.evaders import evader_actions
from tasks.params import EnvParams

# ---------------------------------------------------------------------------------------------
# Counter-based random numbers.
#
# 32-bit values live in int64 tensors; every multiplier is below 2**31, so each product stays
# below 2**63 (no signed overflow on any device) before it is masked back to 32 bits.

_MASK32 = 0xFFFFFFFF
_MUL_A = 0x7FEB352D  # from Wellons' "lowbias32" hash (odd, < 2**31)
_MUL_B = 0x5BD1E995  # MurmurHash2's multiplier (odd, < 2**31)
_SEED_SALT = 0x243F6A88  # digits of pi: keeps seed 0 away from the all-zero fixed point
_DRAW_SALT = 0x3C6EF372
_UNIT_24 = 2.0**-24

# Where the draws of a reset live (all at step index 0); steps use step index 1..max_steps.
_DRAW_START_DISTANCE = 0
_DRAW_QUADRANT = 1
_DRAW_ANGLE = 2
_DRAW_PURSUER_X = 3
_DRAW_PURSUER_Y = 4
_DRAW_PURSUER_THETA = 5
_DRAW_EVADER_THETA = 6
_DRAW_OBSTACLES = 7  # then 3 per (obstacle, candidate): radius, centre x, centre y

PLACEMENT_CANDIDATES = 64
"""Candidate (radius, centre) draws per obstacle and reset; the first valid one is taken."""


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit avalanche hash (bijective) of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL_A) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL_B) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """`_mix32` on a Python int (for constants)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _MUL_A) & _MASK32
    x ^= x >> 15
    x = (x * _MUL_B) & _MASK32
    return x ^ (x >> 16)


def split_seed(seed: int) -> tuple[int, int]:
    """A Python int seed (any size, taken mod 2**64) as its (low, high) 32-bit halves."""
    seed = int(seed) % (1 << 64)
    return seed & _MASK32, seed >> 32


def episode_key(seed_lo: Tensor, seed_hi: Tensor, episode: Tensor) -> Tensor:
    """Key (N,) of the random stream of one episode of one env; inputs (N,) int64."""
    key = _mix32(seed_lo ^ _SEED_SALT)
    key = _mix32(key ^ seed_hi)
    return _mix32(key ^ (episode & _MASK32))


def draw_salts(count: int, device: torch.device | str = "cpu") -> Tensor:
    """Per-draw-index salts (count,) int64: hashed so neighbouring draws differ in many bits."""
    return torch.tensor([_mix32_int(d + _DRAW_SALT) for d in range(count)], dtype=torch.int64, device=device)


def uniforms(key: Tensor, step: Tensor | int, salts: Tensor, dtype: torch.dtype) -> Tensor:
    """Uniform draws in [0, 1) on a 2**-24 grid: (N, D) from key (N,), step (N,) or int, salts (D,)."""
    step_key = _mix32(key ^ step)
    bits = _mix32(step_key.unsqueeze(1) ^ salts)
    return (bits >> 8).to(dtype) * _UNIT_24


# ---------------------------------------------------------------------------------------------
# Geometry shared by the core, the evader policies and the tests.


def wrap_angle(theta: Tensor) -> Tensor:
    """Angles wrapped to (-pi, pi]."""
    return theta - (2 * math.pi) * torch.ceil((theta - math.pi) / (2 * math.pi))


def unicycle_step(pose: Tensor, v: Tensor, w: Tensor, dt: float) -> Tensor:
    """Exact unicycle flow over dt with constant (v, w): pose (..., 3), v and w (...) -> (..., 3).

    The arc x += (v/w)(sin(t + w dt) - sin t), y -= (v/w)(cos(t + w dt) - cos t) is written as
    v dt sinc(w dt / 2) (cos, sin)(t + w dt / 2), which is the same number, finite at w = 0
    and exactly the straight line there.
    """
    half_turn = w * (0.5 * dt)
    theta = pose[..., 2]
    mid = theta + half_turn
    length = v * dt * torch.sinc(half_turn / math.pi)  # torch.sinc(x) = sin(pi x) / (pi x)
    return torch.stack(
        (pose[..., 0] + length * torch.cos(mid), pose[..., 1] + length * torch.sin(mid), wrap_angle(theta + 2 * half_turn)),
        dim=-1,
    )


class SafetyState(NamedTuple):
    """What the CBF rows need, batched."""

    pursuer: Tensor  # (N, 3) x, y, theta
    obstacle_centres: Tensor  # (N, K, 2)
    obstacle_radii: Tensor  # (N, K)
    obstacle_mask: Tensor  # (N, K) bool, True where the obstacle exists


def barrier_values(pursuer: Tensor, centres: Tensor, radii: Tensor, mask: Tensor, params: EnvParams) -> Tensor:
    """h (N, K + 4): obstacles first (absent = +inf), then walls +x, -x, +y, -y; h < 0 violates.

    Obstacle i: ``|p - c_i| - (r_i + robot_radius + safety_margin)``;
    wall +x: ``(L/2 - robot_radius - safety_margin) - x`` (and -x, +y, -y likewise).
    """
    centre_distance = torch.linalg.vector_norm(pursuer[:, :2].unsqueeze(1) - centres, dim=-1)
    return _barrier_from_distances(pursuer, centre_distance, radii, mask, params)


def _barrier_from_distances(pursuer: Tensor, centre_distance: Tensor, radii: Tensor, mask: Tensor, params: EnvParams) -> Tensor:
    h_obstacles = torch.where(mask, centre_distance - (radii + (params.robot_radius + params.safety_margin)), math.inf)
    wall = params.arena_size / 2 - params.robot_radius - params.safety_margin
    x, y = pursuer[:, 0:1], pursuer[:, 1:2]
    return torch.cat((h_obstacles, wall - x, wall + x, wall - y, wall + y), dim=1)


# ---------------------------------------------------------------------------------------------


class PlacementError(RuntimeError):
    """A reset could not place the obstacles with the requested clearance."""


_STATE_KEYS = (
    "pose",
    "vel",
    "obstacle_centres",
    "obstacle_radii",
    "obstacle_mask",
    "step_count",
    "episode_index",
    "seed_lo",
    "seed_hi",
    "key",
    "distance",
    "episode_return",
    "placement_failed",
)


class PursuitEvasionCore:
    """N pursuit-evasion games stepped together on torch tensors.

    Args:
        params: the scenario (`tasks.params.EnvParams`).
        num_envs: N, the batch size.
        device, dtype: where and in which float type the state lives (float32 by default).
        autoreset: reset ended envs inside `step` (same-step autoreset, the vector env and
            training path); False leaves them ended until `reset` (the single-env view).
        sync_free_autoreset: True recomputes the reset draws of every env each step and selects
            with ``torch.where`` (no host sync; the CUDA default). False checks once per step
            whether any env ended and resets only those (the CPU default; cheaper there). Both
            give identical numbers.
        validate_actions: check actions for NaN (one host sync per step on CUDA).

    The core starts seeded with seeds 0..N-1 and reset, so it can be stepped at once.
    """

    def __init__(
        self,
        params: EnvParams | None = None,
        num_envs: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        autoreset: bool = True,
        sync_free_autoreset: bool | None = None,
        validate_actions: bool = True,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is invalid; accepted: an integer >= 1")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} is invalid; accepted: torch.float32 or torch.float64")
        self.params = params if params is not None else EnvParams()
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.dtype = dtype
        self.autoreset = autoreset
        self.sync_free_autoreset = self.device.type == "cuda" if sync_free_autoreset is None else sync_free_autoreset
        self.validate_actions = validate_actions

        p = self.params
        self.num_obstacles = p.num_obstacles
        self.observed_obstacles = p.observed_obstacles
        self.obs_dim = 19 + 3 * p.observed_obstacles
        self._half = p.arena_size / 2
        self._diagonal = p.arena_size * math.sqrt(2)
        self._reset_salts = draw_salts(_DRAW_OBSTACLES + 3 * PLACEMENT_CANDIDATES * p.num_obstacles, self.device)
        self._step_salts = draw_salts(2, self.device)
        # Velocity normalisers; an evader with limit 0 is observed as 0.
        self._vel_scale = torch.tensor(
            [
                [1 / p.pursuer_v_max, 1 / p.pursuer_w_max],
                [1 / p.evader_v_max if p.evader_v_max > 0 else 0.0, 1 / p.evader_w_max if p.evader_w_max > 0 else 0.0],
            ],
            dtype=dtype,
            device=self.device,
        )
        self._unit_x = torch.tensor([1.0, 0.0], dtype=dtype, device=self.device)
        self._far_obstacle = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=self.device)
        low, high = self.observation_bounds()
        self._obs_low = torch.tensor(low, dtype=dtype, device=self.device)
        self._obs_high = torch.tensor(high, dtype=dtype, device=self.device)
        self.seed(range(num_envs))
        self.reset()

    # -- observation layout ---------------------------------------------------------------------

    def observation_names(self) -> list[str]:
        """Names of the obs_dim observation entries, in order."""
        names = []
        for who in ("pursuer", "evader"):
            names += [f"{who}_x", f"{who}_y", f"{who}_cos", f"{who}_sin", f"{who}_v", f"{who}_w"]
        names += ["distance", "bearing_cos", "bearing_sin", "wall_px", "wall_nx", "wall_py", "wall_ny"]
        for k in range(self.observed_obstacles):
            names += [f"obstacle{k}_gap", f"obstacle{k}_cos", f"obstacle{k}_sin"]
        return names

    def observation_bounds(self) -> tuple[list[float], list[float]]:
        """(low, high) of every observation entry; observations are clipped to them.

        Unit-vector and velocity entries lie in [-1, 1]; positions and distances are scaled to
        about [-1, 1] and bounded by [-2, 2] (only a pursuer overshooting a wall on its
        collision step leaves [-1, 1]).
        """
        low, high = [], []
        for name in self.observation_names():
            unit = name.endswith(("_cos", "_sin", "_v", "_w"))
            low.append(-1.0 if unit else -2.0)
            high.append(1.0 if unit else 2.0)
        return low, high

    # -- seeding and reset ----------------------------------------------------------------------

    def seed(self, seeds: Sequence[int]) -> None:
        """One seed per env (env i of a vector env seeded s gets s + i); call `reset` next."""
        seeds = [int(s) for s in seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed() got {len(seeds)} seeds for num_envs={self.num_envs}; accepted: one per env")
        halves = torch.tensor([split_seed(s) for s in seeds], dtype=torch.int64, device=self.device)
        self.seed_lo = halves[:, 0].contiguous()
        self.seed_hi = halves[:, 1].contiguous()
        # The next reset starts episode 0.
        self.episode_index = torch.full((self.num_envs,), -1, dtype=torch.int64, device=self.device)

    def reset(self, mask: Tensor | None = None) -> Tensor:
        """Start a new episode in the envs where `mask` (N,) bool is True (all when None).

        Returns obs (N, obs_dim) of every env. Raises `PlacementError` if the obstacles could
        not be placed.
        """
        if mask is None:
            index = torch.arange(self.num_envs, device=self.device)
        else:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset mask has shape {tuple(mask.shape)}; accepted: ({self.num_envs},) bool")
            index = mask.nonzero().squeeze(1)
        if mask is None:
            # Fresh tensors of the right shape for a first reset or a full one.
            k = self.num_obstacles
            self.pose = torch.zeros(self.num_envs, 2, 3, dtype=self.dtype, device=self.device)
            self.vel = torch.zeros(self.num_envs, 2, 2, dtype=self.dtype, device=self.device)
            self.obstacle_centres = torch.zeros(self.num_envs, k, 2, dtype=self.dtype, device=self.device)
            self.obstacle_radii = torch.zeros(self.num_envs, k, dtype=self.dtype, device=self.device)
            self.obstacle_mask = torch.ones(self.num_envs, k, dtype=torch.bool, device=self.device)
            self.step_count = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
            self.key = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
            self.distance = torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
            self.episode_return = torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
            self.placement_failed = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self._reset_index(index)
        self.check_placement()
        return self._observe(self.pose, self.vel, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)

    def check_placement(self) -> None:
        """Raise `PlacementError` if any env's last reset failed to place its obstacles (a sync)."""
        if bool(self.placement_failed.any()):
            bad = self.placement_failed.nonzero().squeeze(1).tolist()
            p = self.params
            raise PlacementError(
                f"could not place env.num_obstacles={p.num_obstacles} obstacles with "
                f"env.obstacle_clearance={p.obstacle_clearance} (radius up to {p.obstacle_radius_max} m) in a "
                f"{p.arena_size} m arena after {PLACEMENT_CANDIDATES} candidates each, in envs {bad[:10]}; "
                "accepted: fewer or smaller obstacles, less clearance or a larger arena"
            )

    def _start_states(self, seed_lo: Tensor, seed_hi: Tensor, episode: Tensor) -> dict[str, Tensor]:
        """First states of the given episodes, (M, ...) for M envs given by (M,) int64 inputs."""
        p = self.params
        dtype = self.dtype
        key = episode_key(seed_lo, seed_hi, episode)
        draw = uniforms(key, 0, self._reset_salts, dtype)  # (M, D)
        usable = self._half - p.robot_radius - p.safety_margin  # robots start with h_wall >= 0

        # Pursuer-evader distance uniform; the direction uniform over the directions that fit
        # in the usable square (four arcs, exact: no rejection); the pursuer uniform over the
        # positions that keep both robots inside it.
        distance = p.start_distance_min + draw[:, _DRAW_START_DISTANCE] * (p.start_distance_max - p.start_distance_min)
        cut = torch.acos(torch.clamp(2 * usable / distance.clamp_min(1e-12), max=1.0))  # in [0, pi/4]
        quadrant = torch.floor(4 * draw[:, _DRAW_QUADRANT])
        direction = quadrant * (math.pi / 2) + cut + draw[:, _DRAW_ANGLE] * (math.pi / 2 - 2 * cut)
        offset = torch.stack((torch.cos(direction), torch.sin(direction)), dim=1) * distance.unsqueeze(1)
        low = torch.clamp(-usable - offset, min=-usable)
        high = torch.clamp(usable - offset, max=usable)
        pursuer_xy = low + draw[:, _DRAW_PURSUER_X : _DRAW_PURSUER_Y + 1] * (high - low)
        evader_xy = pursuer_xy + offset
        headings = (2 * draw[:, _DRAW_PURSUER_THETA : _DRAW_EVADER_THETA + 1] - 1) * math.pi
        pose = torch.cat((pursuer_xy, headings[:, :1], evader_xy, headings[:, 1:]), dim=1).reshape(-1, 2, 3)

        # Obstacles one after another, each the first valid of C candidates (vectorised).
        k_total, c = self.num_obstacles, PLACEMENT_CANDIDATES
        m = seed_lo.shape[0]
        centres = torch.zeros(m, k_total, 2, dtype=dtype, device=self.device)
        radii = torch.zeros(m, k_total, dtype=dtype, device=self.device)
        failed = torch.zeros(m, dtype=torch.bool, device=self.device)
        if k_total:
            cand = draw[:, _DRAW_OBSTACLES:].reshape(m, k_total, c, 3)
            robots = pose[:, :, :2]  # (M, 2, 2)
            for k in range(k_total):
                radius = p.obstacle_radius_min + cand[:, k, :, 0] * (p.obstacle_radius_max - p.obstacle_radius_min)
                span = self._half - radius  # centre keeps the whole circle inside the arena
                centre = torch.stack(((2 * cand[:, k, :, 1] - 1) * span, (2 * cand[:, k, :, 2] - 1) * span), dim=-1)
                to_robots = torch.linalg.vector_norm(centre.unsqueeze(2) - robots.unsqueeze(1), dim=-1)  # (M, C, 2)
                valid = (to_robots >= (radius + p.robot_radius + p.obstacle_clearance).unsqueeze(-1)).all(-1)
                if k:
                    to_placed = torch.linalg.vector_norm(centre.unsqueeze(2) - centres[:, :k].unsqueeze(1), dim=-1)
                    valid &= (to_placed >= radius.unsqueeze(-1) + radii[:, :k].unsqueeze(1)).all(-1)
                first = torch.argmax(valid.to(torch.uint8), dim=1, keepdim=True)  # first valid (or 0)
                failed |= ~valid.any(1)
                radii[:, k] = radius.gather(1, first).squeeze(1)
                centres[:, k] = centre.gather(1, first.unsqueeze(-1).expand(-1, 1, 2)).squeeze(1)
        return {
            "pose": pose,
            "obstacle_centres": centres,
            "obstacle_radii": radii,
            "key": key,
            "distance": distance,
            "placement_failed": failed,
        }

    def _reset_index(self, index: Tensor) -> None:
        """Start the next episode in the envs listed in `index` (M,) int64 (out of place)."""
        episode = self.episode_index[index] + 1
        start = self._start_states(self.seed_lo[index], self.seed_hi[index], episode)
        put = lambda t, v: t.index_put((index,), v)  # noqa: E731  (new tensor: info keeps the old)
        self.episode_index = put(self.episode_index, episode)
        self.pose = put(self.pose, start["pose"])
        self.vel = put(self.vel, torch.zeros_like(self.vel[index]))
        self.obstacle_centres = put(self.obstacle_centres, start["obstacle_centres"])
        self.obstacle_radii = put(self.obstacle_radii, start["obstacle_radii"])
        self.obstacle_mask = put(self.obstacle_mask, torch.ones_like(self.obstacle_mask[index]))
        self.key = put(self.key, start["key"])
        self.distance = put(self.distance, start["distance"])
        self.step_count = put(self.step_count, torch.zeros_like(self.step_count[index]))
        self.episode_return = put(self.episode_return, torch.zeros_like(self.episode_return[index]))
        self.placement_failed = put(self.placement_failed, start["placement_failed"])

    def _reset_where(self, done: Tensor) -> None:
        """Start the next episode where `done` (N,) is True, computing all and selecting (no sync)."""
        episode = self.episode_index + done
        start = self._start_states(self.seed_lo, self.seed_hi, episode)
        d1, d2, d3 = done.unsqueeze(1), done.view(-1, 1, 1), done.view(-1, 1, 1)
        self.episode_index = episode
        self.pose = torch.where(d3, start["pose"], self.pose)
        self.vel = torch.where(d3, 0.0, self.vel)
        self.obstacle_centres = torch.where(d2, start["obstacle_centres"], self.obstacle_centres)
        self.obstacle_radii = torch.where(d1, start["obstacle_radii"], self.obstacle_radii)
        self.obstacle_mask = self.obstacle_mask | done.unsqueeze(1)
        self.key = torch.where(done, start["key"], self.key)
        self.distance = torch.where(done, start["distance"], self.distance)
        self.step_count = torch.where(done, 0, self.step_count)
        self.episode_return = torch.where(done, 0.0, self.episode_return)
        self.placement_failed = torch.where(done, start["placement_failed"], self.placement_failed)

    # -- stepping -------------------------------------------------------------------------------

    def step(self, action: Tensor, evader_action: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Advance every env by dt.

        Args:
            action: (N, 2) pursuer (v, w) in physical units, clipped to [0, v_max] x [-w_max, w_max].
                NaN raises ValueError naming the env index.
            evader_action: optional (N, 2) evader (v, w) replacing the evader policy (tests,
                self-play); clipped to the evader's limits.

        Returns:
            obs (N, obs_dim), reward (N,), terminated (N,) bool, truncated (N,) bool, info.
            With autoreset, ended envs are already reset: `obs` is the new episode's first
            observation and ``info["final_obs"]`` the ended episode's last one. Every other
            info entry describes the state after the step, before the autoreset.
        """
        p = self.params
        action = torch.as_tensor(action, device=self.device).to(self.dtype)
        if action.shape != (self.num_envs, 2):
            raise ValueError(f"action has shape {tuple(action.shape)}; accepted: ({self.num_envs}, 2) pursuer (v, w)")
        if self.validate_actions:
            bad = torch.isnan(action).any(1)
            if bool(bad.any()):
                raise ValueError(
                    f"action is NaN in env(s) {bad.nonzero().squeeze(1).tolist()[:10]}: {action[bad][:3].tolist()}; "
                    f"accepted: finite (v, w), clipped to [0, {p.pursuer_v_max}] x [-{p.pursuer_w_max}, {p.pursuer_w_max}]"
                )
        step_count = self.step_count + 1
        if evader_action is None:
            draws = uniforms(self.key, step_count, self._step_salts, self.dtype) if p.evader_policy == "random" else None
            evader_action = evader_actions(
                p.evader_policy, self.pose, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask, draws, p
            )
        else:
            evader_action = torch.as_tensor(evader_action, device=self.device).to(self.dtype)
        pursuer_v = action[:, 0].clamp(0.0, p.pursuer_v_max)
        pursuer_w = action[:, 1].clamp(-p.pursuer_w_max, p.pursuer_w_max)
        evader_v = evader_action[:, 0].clamp(0.0, p.evader_v_max)
        evader_w = evader_action[:, 1].clamp(-p.evader_w_max, p.evader_w_max)
        v = torch.stack((pursuer_v, evader_v), dim=1)
        w = torch.stack((pursuer_w, evader_w), dim=1)
        vel = torch.stack((v, w), dim=2)  # (N, 2, 2)
        pose = unicycle_step(self.pose, v, w, p.dt)  # both robots at once, (N, 2, 3)
        pose = torch.cat((pose[:, :1], self._confine_evader(pose[:, 1:])), dim=1)

        # Events of the new state (the contract's inequalities, evaluated as written).
        pursuer = pose[:, 0]
        distance = torch.linalg.vector_norm(pose[:, 0, :2] - pose[:, 1, :2], dim=1)
        centre_distance = torch.linalg.vector_norm(pursuer[:, :2].unsqueeze(1) - self.obstacle_centres, dim=-1)
        h = _barrier_from_distances(pursuer, centre_distance, self.obstacle_radii, self.obstacle_mask, p)
        hit_obstacle = (self.obstacle_mask & (centre_distance <= self.obstacle_radii + p.robot_radius)).any(1)
        hit_wall = (pursuer[:, :2].abs() >= self._half - p.robot_radius).any(1)
        collided = hit_obstacle | hit_wall
        captured = (distance <= p.capture_radius) & ~collided  # collision wins: safety first
        terminated = captured | collided
        truncated = (step_count >= p.max_steps) & ~terminated
        reward = (
            p.distance_shaping * (self.distance - distance)
            + p.capture_reward * captured
            + p.collision_penalty * collided
            + p.timeout_penalty * truncated
        )
        episode_return = self.episode_return + reward
        obs = self._observe(pose, vel, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)
        info = {
            "pursuer": pursuer,
            "evader": pose[:, 1],
            "pursuer_vel": vel[:, 0],
            "evader_vel": vel[:, 1],
            "obstacle_centres": self.obstacle_centres,
            "obstacle_radii": self.obstacle_radii,
            "obstacle_mask": self.obstacle_mask,
            "h": h,
            "captured": captured,
            "collided": collided,
            "timeout": truncated,
            "final_obs": obs,
            "episode_return": episode_return,
            "episode_length": step_count,
        }
        self.pose, self.vel, self.distance = pose, vel, distance
        self.step_count, self.episode_return = step_count, episode_return
        if self.autoreset:
            done = terminated | truncated
            if self.sync_free_autoreset:
                self._reset_where(done)
                obs = self._observe(self.pose, self.vel, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)
            elif bool(done.any()):
                index = done.nonzero().squeeze(1)
                self._reset_index(index)
                self.check_placement()
                fresh = self._observe(
                    self.pose[index],
                    self.vel[index],
                    self.obstacle_centres[index],
                    self.obstacle_radii[index],
                    self.obstacle_mask[index],
                )
                obs = obs.index_put((index,), fresh)
        return obs, reward, terminated, truncated, info

    def _confine_evader(self, evader: Tensor) -> Tensor:
        """Keep the evader (N, 1, 3) inside the arena and out of obstacles: (N, 1, 3).

        Its centre is clamped to the square where its body fits; then, if its body overlaps an
        obstacle, it is pushed radially out to touch the most deeply penetrated obstacle. The
        evader never collides, it slides (only the learner, the pursuer, can collide).
        """
        p = self.params
        inner = self._half - p.robot_radius
        xy = evader[:, 0, :2].clamp(-inner, inner)
        if self.num_obstacles:
            away = xy.unsqueeze(1) - self.obstacle_centres  # (N, K, 2)
            gap = torch.linalg.vector_norm(away, dim=-1)
            contact = self.obstacle_radii + p.robot_radius
            depth = torch.where(self.obstacle_mask, contact - gap, -math.inf)
            deepest = depth.argmax(1, keepdim=True)  # (N, 1)
            inside = depth.gather(1, deepest) > 0  # (N, 1)
            away_k = away.gather(1, deepest.unsqueeze(-1).expand(-1, 1, 2)).squeeze(1)
            gap_k = gap.gather(1, deepest)
            centre_k = self.obstacle_centres.gather(1, deepest.unsqueeze(-1).expand(-1, 1, 2)).squeeze(1)
            # At the exact centre any direction is "out"; take +x.
            unit = torch.where(gap_k > 0, away_k / gap_k.clamp_min(1e-12), self._unit_x)
            pushed = centre_k + unit * contact.gather(1, deepest)
            xy = torch.where(inside, pushed, xy)
        return torch.cat((xy, evader[:, 0, 2:]), dim=1).unsqueeze(1)

    # -- observation ------------------------------------------------------------------------------

    def _observe(self, pose: Tensor, vel: Tensor, centres: Tensor, radii: Tensor, mask: Tensor) -> Tensor:
        """Normalised observation (M, obs_dim) of the pursuer; layout in `observation_names`."""
        p = self.params
        m = pose.shape[0]
        heading = torch.stack((torch.cos(pose[..., 2]), torch.sin(pose[..., 2])), dim=-1)  # (M, 2, 2)
        robots = torch.cat((pose[..., :2] / self._half, heading, vel * self._vel_scale), dim=-1).reshape(m, 12)
        position = pose[:, 0, :2]
        cos_t, sin_t = heading[:, 0, 0:1], heading[:, 0, 1:2]
        to_evader = pose[:, 1, :2] - position
        distance = torch.linalg.vector_norm(to_evader, dim=1, keepdim=True)
        inner = self._half - p.robot_radius  # body clearance to each wall: 0 = touching
        x, y = position[:, 0:1], position[:, 1:2]
        walls = torch.cat((inner - x, inner + x, inner - y, inner + y), dim=1) / p.arena_size
        parts = [robots, distance / self._diagonal, self._bearing(to_evader, distance, cos_t, sin_t), walls]
        k_obs, k_all = self.observed_obstacles, self.num_obstacles
        take = min(k_obs, k_all)
        if take:
            to_obstacles = centres - position.unsqueeze(1)  # (M, K, 2)
            centre_distance = torch.linalg.vector_norm(to_obstacles, dim=-1)
            gap = torch.where(mask, centre_distance - radii - p.robot_radius, math.inf)
            if k_all > 1:
                gap, order = torch.sort(gap, dim=1, stable=True)
                gap, order = gap[:, :take], order[:, :take]
                to_obstacles = to_obstacles.gather(1, order.unsqueeze(-1).expand(-1, -1, 2))
                centre_distance = centre_distance.gather(1, order)
            bearing = self._bearing(to_obstacles, centre_distance.unsqueeze(-1), cos_t.unsqueeze(1), sin_t.unsqueeze(1))
            entry = torch.cat((gap.unsqueeze(-1) / self._diagonal, bearing), dim=-1)  # (M, take, 3)
            entry = torch.where(torch.isfinite(gap).unsqueeze(-1), entry, self._far_obstacle)
            parts.append(entry.reshape(m, 3 * take))
        if k_obs > take:  # fewer obstacles than observed slots: "far away" padding
            parts.append(self._far_obstacle.repeat(m, k_obs - take))
        obs = torch.cat(parts, dim=1)
        return torch.clamp(obs, self._obs_low, self._obs_high)

    @staticmethod
    def _bearing(vector: Tensor, length: Tensor, cos_t: Tensor, sin_t: Tensor) -> Tensor:
        """(cos, sin) (..., 2) of the direction of `vector` (..., 2) relative to heading; (1, 0) at length 0."""
        unit = vector / length.clamp_min(1e-12)
        cos_rel = unit[..., 0:1] * cos_t + unit[..., 1:2] * sin_t
        sin_rel = unit[..., 1:2] * cos_t - unit[..., 0:1] * sin_t
        cos_rel = torch.where(length > 0, cos_rel, 1.0)
        return torch.cat((cos_rel, sin_rel), dim=-1)

    def observe(self) -> Tensor:
        """Observation (N, obs_dim) of the current state."""
        return self._observe(self.pose, self.vel, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)

    # -- views, state -----------------------------------------------------------------------------

    @property
    def pursuer(self) -> Tensor:
        """(N, 3) pursuer pose."""
        return self.pose[:, 0]

    @property
    def evader(self) -> Tensor:
        """(N, 3) evader pose."""
        return self.pose[:, 1]

    def safety_state(self) -> SafetyState:
        """What the CBF rows need, of the current (post-autoreset) state."""
        return SafetyState(self.pose[:, 0], self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)

    def barrier(self) -> Tensor:
        """h (N, K + 4) of the current state (see `barrier_values`)."""
        return barrier_values(self.pose[:, 0], self.obstacle_centres, self.obstacle_radii, self.obstacle_mask, self.params)

    def set_state(
        self,
        pursuer: Tensor | None = None,
        evader: Tensor | None = None,
        obstacle_centres: Tensor | None = None,
        obstacle_radii: Tensor | None = None,
        obstacle_mask: Tensor | None = None,
        pursuer_vel: Tensor | None = None,
        evader_vel: Tensor | None = None,
        step_count: Tensor | int | None = None,
    ) -> Tensor:
        """Overwrite parts of the state (tests, scripted scenarios); returns obs (N, obs_dim).

        Shapes: pursuer/evader (N, 3), obstacle_centres (N, K, 2), obstacle_radii and
        obstacle_mask (N, K), velocities (N, 2). The shaping reference distance is reset to the
        new pursuer-evader distance.
        """
        as_state = lambda t: torch.as_tensor(t, device=self.device).to(self.dtype)  # noqa: E731
        expected = {
            "pursuer": (self.num_envs, 3),
            "evader": (self.num_envs, 3),
            "obstacle_centres": (self.num_envs, self.num_obstacles, 2),
            "obstacle_radii": (self.num_envs, self.num_obstacles),
            "obstacle_mask": (self.num_envs, self.num_obstacles),
            "pursuer_vel": (self.num_envs, 2),
            "evader_vel": (self.num_envs, 2),
        }
        given = dict(pursuer=pursuer, evader=evader, obstacle_centres=obstacle_centres, obstacle_radii=obstacle_radii,
                     obstacle_mask=obstacle_mask, pursuer_vel=pursuer_vel, evader_vel=evader_vel)
        for name, value in given.items():
            if value is not None and tuple(torch.as_tensor(value).shape) != expected[name]:
                raise ValueError(f"set_state({name}=...) has shape {tuple(torch.as_tensor(value).shape)}; accepted: {expected[name]}")
        pose, vel = self.pose.clone(), self.vel.clone()
        if pursuer is not None:
            pose[:, 0] = as_state(pursuer)
        if evader is not None:
            pose[:, 1] = as_state(evader)
        if pursuer_vel is not None:
            vel[:, 0] = as_state(pursuer_vel)
        if evader_vel is not None:
            vel[:, 1] = as_state(evader_vel)
        self.pose, self.vel = pose, vel
        if obstacle_centres is not None:
            self.obstacle_centres = as_state(obstacle_centres).clone()
        if obstacle_radii is not None:
            self.obstacle_radii = as_state(obstacle_radii).clone()
        if obstacle_mask is not None:
            self.obstacle_mask = torch.as_tensor(obstacle_mask, dtype=torch.bool, device=self.device).clone()
        if step_count is not None:
            self.step_count = torch.as_tensor(step_count, dtype=torch.int64, device=self.device).expand(self.num_envs).clone()
        self.distance = torch.linalg.vector_norm(pose[:, 0, :2] - pose[:, 1, :2], dim=1)
        return self.observe()

    def state_dict(self) -> dict[str, Any]:
        """The full state and RNG counters (copies), for a bit-exact resume."""
        state = {name: getattr(self, name).clone() for name in _STATE_KEYS}
        state["params"] = self.params.model_dump(mode="json")
        state["num_envs"] = self.num_envs
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (of a core with the same params and num_envs)."""
        mine = self.params.model_dump(mode="json")
        if state.get("params") != mine:
            diff = {k: (state.get("params", {}).get(k), v) for k, v in mine.items() if state.get("params", {}).get(k) != v}
            raise ValueError(f"load_state_dict: saved env params differ from this core's (saved, here): {diff}")
        if state.get("num_envs") != self.num_envs:
            raise ValueError(f"load_state_dict: saved num_envs={state.get('num_envs')}, this core has {self.num_envs}")
        missing = [name for name in _STATE_KEYS if name not in state]
        if missing:
            raise ValueError(f"load_state_dict: missing keys {missing}")
        for name in _STATE_KEYS:
            value = state[name]
            dtype = value.dtype if not value.is_floating_point() else self.dtype
            setattr(self, name, value.to(device=self.device, dtype=dtype).clone())
