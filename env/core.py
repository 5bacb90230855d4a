"""The one batched dynamics core of the pursuit-evasion game (torch, CPU or CUDA).

Every gymnasium class in this package is a view of `PursuitEvasionCore`, so the single env,
the native vector env and the zero-copy training path cannot drift apart.

State of N envs, stored "structure of arrays" (the batch is the last, contiguous axis, so
every per-step operation runs on contiguous rows; views in the contract's batch-first shapes are
properties):

- ``robots``    (5, 2, N)  x, y, theta, v, w of the pursuer (row 0) and the evader (row 1);
  (v, w) is what each robot executed in its last step (zeros at the start of an episode)
- ``obstacles`` (3, K, N)  centre x, centre y, radius; ``present`` (K, N) bool (obstacle exists)
- ``counters``  (5, N) int64: step in episode, episode index, seed low/high 32 bits, episode key
- ``tracking``  (2, N)  pursuer-evader distance (for the shaping reward), running return

Randomness is counter-based: a uniform draw is a hash of (env seed, episode index, step index,
draw index), so env i of a vector env seeded s and a single env seeded s + i draw exactly the
same numbers, whatever else happens in the batch, and a saved state resumes bit-exactly.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from env.config import START_SLACK, EnvParams
from env.evaders import flee_evader, random_evader
from env.geometry import barrier_values, body_barriers, unicycle_arc, unicycle_step, wrap_angle

__all__ = [  # the geometry is re-exported: `from env.core import unicycle_arc` keeps working
    "PLACEMENT_CANDIDATES", "PlacementError", "PursuitEvasionCore", "SafetyState", "barrier_values",
    "body_barriers", "unicycle_arc", "unicycle_step", "wrap_angle",
]  # fmt: skip

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
_STEP_MUL = 0x2C1B3C6D  # odd, < 2**31
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
    """Uniform draws in [0, 1) on a 2**-24 grid, draw-major: (D, N) from key (N,), step (N,) or
    int, salts (D,). Draw d of env i depends only on (key_i, step_i, d).

    The step enters through an odd multiplier (a bijection mod 2**32), so every step of an
    episode reads a different part of the hash; the key is already a hash of (seed, episode).
    """
    counter = key ^ ((step * _STEP_MUL) & _MASK32)
    bits = _mix32(counter ^ salts.unsqueeze(1))
    return (bits >> 8).to(dtype) * _UNIT_24


def _torch_hypot(dx: "np.ndarray", dy: "np.ndarray") -> "np.ndarray":
    """torch.hypot of two same-shaped arrays (views, no copy), for the compiled step's loops: ATen's
    rounding, which libm's (and numba's) does not reproduce."""
    return torch.hypot(torch.from_numpy(dx), torch.from_numpy(dy)).numpy()


class SafetyState(NamedTuple):
    """What the CBF rows need, batched."""

    pursuer: Tensor  # (N, 3) x, y, theta
    obstacle_centres: Tensor  # (N, K, 2)
    obstacle_radii: Tensor  # (N, K)
    obstacle_mask: Tensor  # (N, K) bool, True where the obstacle exists


# ---------------------------------------------------------------------------------------------


class PlacementError(RuntimeError):
    """A reset could not place the obstacles with the requested clearance."""


_STATE_KEYS = ("robots", "obstacles", "present", "counters", "tracking", "placement_failed")
_STEP, _EPISODE, _SEED_LO, _SEED_HI, _KEY = range(5)  # rows of `counters`
_DISTANCE, _RETURN = range(2)  # rows of `tracking`
_X, _Y, _THETA, _V, _W = range(5)  # rows of `robots`
_PURSUER, _EVADER = range(2)


class PursuitEvasionCore:
    """N pursuit-evasion games stepped together on torch tensors.

    Args:
        params: the scenario (`env.config.EnvParams`; defaults when None).
        num_envs: N, the batch size.
        device, dtype: where and in which float type the state lives (float32 by default).
        autoreset: reset ended envs inside `step` (same-step autoreset: the vector env and the
            training path); False leaves them ended until `reset` (the single-env view).
        sync_free_autoreset: True recomputes the reset draws of every env each step and selects
            with ``torch.where`` (no host sync; the CUDA default). False checks once per step
            whether any env ended and resets only those (the CPU default; much cheaper there).
            Both give identical numbers. In the sync-free mode a failed obstacle placement is
            only raised at the next `reset` or `check_placement`.
        validate_actions: check actions for NaN (one host sync per step on CUDA).

    The core starts seeded with seeds 0..N-1 and reset, so it can be stepped at once.
    Tensors handed out (obs, info, properties) are never modified later: every step builds new
    state tensors. Pose and velocity entries of `info` and of `safety_state` are strided views
    of the structure-of-arrays state (call ``.contiguous()`` before ``.view``).
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
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
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
        # Velocity normalisers shaped like robots[3:5] without the batch; a limit of 0 (an evader
        # that cannot move) divides 0 by a tiny number and is observed as 0. Division, not
        # multiplication by the inverse, keeps v_max / v_max exactly 1.
        self._velocity_scale = torch.tensor(
            [[[p.pursuer_v_max], [max(p.evader_v_max, 1e-30)]], [[p.pursuer_w_max], [max(p.evader_w_max, 1e-30)]]],
            dtype=dtype,
            device=self.device,
        )
        self._zero = torch.zeros((), dtype=dtype, device=self.device)
        # Rounding allowance (m) of "the evader's body touches an obstacle": the radial push lands
        # on the surface to a few ulps of the coordinates (~1e-6 m in float32 in a 20 m arena).
        self._contact_tol = 8 * torch.finfo(dtype).eps * p.arena_size
        self._one = torch.ones((), dtype=dtype, device=self.device)
        self._far_obstacle = torch.tensor([1.0, 0.0, 0.0], dtype=dtype, device=self.device).view(1, 3, 1)
        # The step's arithmetic (dynamics, events, shaping, observation, resets) as compiled loops
        # (env/compiled.py) on the CPU; the torch code elsewhere, and where a test forces the
        # accelerators' sync-free path on the CPU.
        self.compiled = self.device.type == "cpu" and not self.sync_free_autoreset
        self._velocity_scale_np = self._velocity_scale[..., 0].cpu().numpy().copy()  # (2, 2) [v or w, robot]
        float_type = np.float32 if dtype == torch.float32 else np.float64
        self._proximity_consts = np.array([self._half - p.robot_radius, p.robot_radius, p.proximity_range, 1.0, 0.0],
                                          float_type)
        self._shaping_consts = np.array([p.distance_shaping, -p.distance_shaping, p.proximity_shaping, 1.0 - p.discount,
                                         1.0 if p.proximity_shaping else 0.0, 1.0 if p.discount != 1.0 else 0.0],
                                        float_type)
        usable = p.start_half_width
        span = 2 * usable - p.start_margin
        self._start_consts = [np.array(c, float_type) for c in (
            [p.start_distance_min, p.start_distance_max - p.start_distance_min, math.sqrt(2) * span, 1e-12, span, 1.0],
            [math.pi / 2, math.pi, 1.0, 2.0, 4.0],
            [usable, -usable, p.start_margin, 0.0],
            [p.obstacle_radius_min, p.obstacle_radius_max - p.obstacle_radius_min, self._half,
             max(p.start_margin**2, 1e-30), 1.0, 2.0, 0.0],
            [p.robot_radius + p.obstacle_clearance, p.robot_radius + p.safety_margin + p.start_margin + START_SLACK],
        )]  # fmt: skip
        self._hashing = np.array([_MASK32, _MUL_A, _MUL_B, _SEED_SALT, _STEP_MUL], np.int64)
        self._step_consts = [np.array(c, float_type) for c in (
            [p.pursuer_v_max, p.pursuer_w_max, p.evader_v_max, p.evader_w_max, 0.5 * p.dt, 0.0, 1.0, 2.0],
            [p.dt, 1.0, math.pi],
            [self._half - p.robot_radius],
            [p.robot_radius, 1e-12, 1.0, 0.0],
            [self._contact_tol, math.pi],
            [p.robot_radius + p.safety_margin, p.arena_size / 2 - p.robot_radius - p.safety_margin,
             self._half - p.robot_radius, p.robot_radius, p.capture_radius, p.collision_penalty, p.capture_reward, 0.0,
             math.inf],
        )]  # fmt: skip
        self._observe_consts = np.array(  # as ATen casts each Python scalar to the tensors' dtype
            [self._half, self._diagonal, self._half - p.robot_radius, p.arena_size, p.robot_radius, 1e-30, 1.0, 2.0, 0.0,
             math.inf], float_type)
        self._allocate()
        self.seed(range(num_envs))
        self.reset()

    def _allocate(self) -> None:
        n, k = self.num_envs, self.num_obstacles
        self.robots = torch.zeros(5, 2, n, dtype=self.dtype, device=self.device)
        self.obstacles = torch.zeros(3, k, n, dtype=self.dtype, device=self.device)
        self.present = torch.ones(k, n, dtype=torch.bool, device=self.device)
        self.counters = torch.zeros(5, n, dtype=torch.int64, device=self.device)
        self.tracking = torch.zeros(2, n, dtype=self.dtype, device=self.device)
        self.placement_failed = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._obstacles_changed()

    def _obstacles_changed(self) -> None:
        """Refresh the contract's batch-first obstacle tensors (once per change, not per step)."""
        self.obstacle_centres = self.obstacles[:2].permute(2, 1, 0).contiguous()  # (N, K, 2)
        self.obstacle_radii = self.obstacles[2].T.contiguous()  # (N, K)
        self.obstacle_mask = self.present.T.contiguous()  # (N, K)

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
        about [-1, 1] and clipped to [-2, 2] (only a pursuer overshooting a wall or an obstacle
        on its collision step, or a state set by hand, leaves [-1, 1]).
        """
        unit = [name.endswith(("_cos", "_sin", "_v", "_w")) for name in self.observation_names()]
        return [-1.0 if u else -2.0 for u in unit], [1.0 if u else 2.0 for u in unit]

    # -- seeding and reset ----------------------------------------------------------------------

    def seed(self, seeds: Sequence[int]) -> None:
        """One seed per env (env i of a vector env seeded s gets s + i); call `reset` next.

        Seeds are integers taken mod 2**64; the next reset of each env starts its episode 0.
        """
        seeds = [int(s) for s in seeds]
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed() got {len(seeds)} seeds for num_envs={self.num_envs}; accepted: one per env")
        halves = torch.tensor([split_seed(s) for s in seeds], dtype=torch.int64, device=self.device).T
        counters = self.counters.clone()
        counters[_SEED_LO], counters[_SEED_HI] = halves[0], halves[1]
        counters[_EPISODE] = -1
        self.counters = counters

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
        self._reset_index(index)
        self.check_placement()
        return self.observe()

    def check_placement(self) -> None:
        """Raise `PlacementError` if any env's last reset failed to place its obstacles (a sync)."""
        if bool(self.placement_failed.any()):
            bad = self.placement_failed.nonzero().squeeze(1).tolist()
            p = self.params
            raise PlacementError(
                f"could not place env.num_obstacles={p.num_obstacles} obstacles with "
                f"env.obstacle_clearance={p.obstacle_clearance} and env.start_margin={p.start_margin} "
                f"(radius up to {p.obstacle_radius_max} m) in a "
                f"{p.arena_size} m arena after {PLACEMENT_CANDIDATES} candidates each, in envs {bad[:10]}; "
                "accepted: fewer or smaller obstacles, less clearance or a larger arena"
            )

    def _start_states(self, counters: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """First states of the episodes in `counters` (5, M) (its episode row already advanced).

        Returns robots (5, 2, M), obstacles (3, K, M), key (M,), distance (M,), failed (M,) bool.
        """
        if self.compiled:
            return self._start_states_compiled(counters)
        p = self.params
        dtype = self.dtype
        m = counters.shape[1]
        key = episode_key(counters[_SEED_LO], counters[_SEED_HI], counters[_EPISODE])
        draw = uniforms(key, 0, self._reset_salts, dtype)  # (D, M)
        # Safe starts by construction: both robots start with |x|, |y| <= U (the body keeps
        # robot_radius + safety_margin + start_margin from the walls, plus START_SLACK against
        # rounding), and so does the pursuer's heading segment [p, p + s (cos t, sin t)], s =
        # start_margin: a CBF look-ahead point d <= s ahead lies on that segment, so its barriers
        # (which sit d inside the body's) start >= s - d >= 0. Obstacles keep off the segment below.
        usable, ahead_length = p.start_half_width, p.start_margin
        span = 2 * usable - ahead_length  # per-axis room for the pursuer-evader offset, any heading

        # The pursuer-evader distance is uniform; the direction uniform over the directions that
        # fit in the span (four arcs, sampled exactly: no rejection); the pursuer uniform over the
        # positions that keep both robots (and the pursuer's heading segment) inside the square.
        distance = p.start_distance_min + draw[_DRAW_START_DISTANCE] * (p.start_distance_max - p.start_distance_min)
        distance = distance.clamp(max=math.sqrt(2) * span)  # at most the span's diagonal
        cut = torch.acos(torch.clamp(span / distance.clamp_min(1e-12), max=1.0))  # in [0, pi/4]
        quadrant = torch.floor(4 * draw[_DRAW_QUADRANT])
        direction = quadrant * (math.pi / 2) + cut + draw[_DRAW_ANGLE] * (math.pi / 2 - 2 * cut)
        offset = torch.stack((torch.cos(direction), torch.sin(direction))) * distance  # (2, M)
        headings = (2 * draw[_DRAW_PURSUER_THETA : _DRAW_EVADER_THETA + 1] - 1) * math.pi  # (2, M)
        ahead = torch.stack((torch.cos(headings[0]), torch.sin(headings[0]))) * ahead_length  # (2, M)
        low = torch.maximum(-usable - offset, -usable + (-ahead).clamp_min(0.0))
        high = torch.minimum(usable - offset, usable - ahead.clamp_min(0.0))
        pursuer = low + draw[_DRAW_PURSUER_X : _DRAW_PURSUER_Y + 1] * (high - low)  # (2, M) x, y
        evader = pursuer + offset
        zeros = torch.zeros(2, m, dtype=dtype, device=self.device)
        robots = torch.stack(
            (torch.stack((pursuer[0], evader[0])), torch.stack((pursuer[1], evader[1])), headings, zeros, zeros)
        )

        # Obstacles one after another, each the first valid of C candidates (vectorised).
        k_total, c = self.num_obstacles, PLACEMENT_CANDIDATES
        obstacles = torch.zeros(3, k_total, m, dtype=dtype, device=self.device)
        failed = torch.zeros(m, dtype=torch.bool, device=self.device)
        if k_total:
            cand = draw[_DRAW_OBSTACLES:].reshape(k_total, c, 3, m)
            robot_x, robot_y = robots[_X].unsqueeze(1), robots[_Y].unsqueeze(1)  # (2, 1, M)
            keep_off_robots = p.robot_radius + p.obstacle_clearance
            keep_off_segment = p.robot_radius + p.safety_margin + p.start_margin + START_SLACK
            segment_squared = max(ahead_length**2, 1e-30)
            for k in range(k_total):
                radius = p.obstacle_radius_min + cand[k, :, 0] * (p.obstacle_radius_max - p.obstacle_radius_min)  # (C, M)
                span = self._half - radius  # the whole circle inside the arena
                cx, cy = (2 * cand[k, :, 1] - 1) * span, (2 * cand[k, :, 2] - 1) * span
                to_robots = torch.hypot(cx - robot_x, cy - robot_y)  # (2, C, M)
                valid = (to_robots >= radius + keep_off_robots).all(0)  # (C, M)
                # Distance from the centre to the pursuer's heading segment (nearest point on it).
                rel_x, rel_y = cx - pursuer[0], cy - pursuer[1]
                along = ((rel_x * ahead[0] + rel_y * ahead[1]) / segment_squared).clamp(0.0, 1.0)
                to_segment = torch.hypot(rel_x - along * ahead[0], rel_y - along * ahead[1])
                valid &= to_segment >= radius + keep_off_segment
                for j in range(k):  # no overlap with the obstacles already placed
                    valid &= torch.hypot(cx - obstacles[0, j], cy - obstacles[1, j]) >= radius + obstacles[2, j]
                first = torch.argmax(valid.to(torch.int32), dim=0, keepdim=True)  # first valid (or 0), (1, M)
                failed |= ~valid.any(0)
                obstacles[:, k] = torch.cat((cx.gather(0, first), cy.gather(0, first), radius.gather(0, first)))
        return robots, obstacles, key, distance, failed

    def _start_states_compiled(self, counters: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """`_start_states` by `env.compiled`'s loops (CPU): the same bits. torch computes acos, cos,
        sin and hypot, on tensors of the torch code's shapes (ATen's rounding path depends on them)."""
        from env import compiled

        m, dtype = counters.shape[1], self._observe_consts.dtype
        salts = self._reset_salts.numpy()
        key, draw = np.empty(m, np.int64), np.empty((salts.shape[0], m), dtype)
        distance, acos_arg = np.empty(m, dtype), np.empty(m, dtype)
        compiled.start_draws_kernel(*(np.ascontiguousarray(counters[row].numpy()) for row in (_SEED_LO, _SEED_HI, _EPISODE)),
                                    salts, self._hashing, dtype.type(_UNIT_24), self._start_consts[0], key, draw, distance,
                                    acos_arg)
        direction, headings = np.empty(m, dtype), np.empty((2, m), dtype)
        compiled.start_angles_kernel(draw, torch.acos(torch.from_numpy(acos_arg)).numpy(), self._start_consts[1],
                                     direction, headings)
        direction_t, heading_t = torch.from_numpy(direction), torch.from_numpy(headings)[0]
        robots, ahead = np.empty((5, 2, m), dtype), np.empty((2, m), dtype)
        compiled.start_robots_kernel(draw, distance, headings, *(f(x).numpy() for x in (direction_t, heading_t)
                                                                 for f in (torch.cos, torch.sin)),
                                     self._start_consts[2], robots, ahead)
        k_total, c = self.num_obstacles, PLACEMENT_CANDIDATES
        obstacles, failed = np.zeros((3, k_total, m), dtype), np.zeros(m, np.bool_)
        for k in range(k_total):
            radius, cx, cy = (np.empty((c, m), dtype) for _ in range(3))
            robot_dx, robot_dy = np.empty((2, c, m), dtype), np.empty((2, c, m), dtype)
            segment_dx, segment_dy = np.empty((c, m), dtype), np.empty((c, m), dtype)
            placed_dx, placed_dy = np.empty((k, c, m), dtype), np.empty((k, c, m), dtype)
            compiled.obstacle_candidates_kernel(draw, k, robots, ahead, obstacles, self._start_consts[3], radius, cx, cy,
                                                robot_dx, robot_dy, segment_dx, segment_dy, placed_dx, placed_dy)
            to_placed = np.empty((k, c, m), dtype)
            for j in range(k):  # one (C, M) call per placed obstacle, as the torch code
                to_placed[j] = _torch_hypot(placed_dx[j], placed_dy[j])
            compiled.obstacle_choice_kernel(k, radius, cx, cy, _torch_hypot(robot_dx, robot_dy),
                                            _torch_hypot(segment_dx, segment_dy),
                                            to_placed, self._start_consts[4], obstacles, failed)
        return (torch.from_numpy(robots), torch.from_numpy(obstacles), torch.from_numpy(key), torch.from_numpy(distance),
                torch.from_numpy(failed))

    def _reset_index(self, index: Tensor) -> None:
        """Start the next episode in the envs listed in `index` (M,) int64 (out of place)."""
        counters = self.counters[:, index]
        counters[_EPISODE] += 1
        counters[_STEP] = 0
        robots, obstacles, key, distance, failed = self._start_states(counters)
        counters[_KEY] = key
        self.counters = self.counters.index_copy(1, index, counters)
        self.robots = self.robots.index_copy(2, index, robots)
        self.obstacles = self.obstacles.index_copy(2, index, obstacles)
        self.present = self.present.index_fill(1, index, True)
        self.tracking = self.tracking.index_copy(1, index, torch.stack((distance, torch.zeros_like(distance))))
        self.placement_failed = self.placement_failed.index_copy(0, index, failed)
        # The batch-first views: transpose only the M new rows.
        self.obstacle_centres = self.obstacle_centres.index_copy(0, index, obstacles[:2].permute(2, 1, 0))
        self.obstacle_radii = self.obstacle_radii.index_copy(0, index, obstacles[2].T)
        self.obstacle_mask = self.obstacle_mask.index_fill(0, index, True)

    def _reset_where(self, done: Tensor) -> None:
        """Start the next episode where `done` (N,) is True: compute all, select (no host sync)."""
        counters = self.counters.clone()
        counters[_EPISODE] += done
        robots, obstacles, key, distance, failed = self._start_states(counters)
        counters[_KEY] = key
        counters[_STEP] = 0
        self.counters = torch.where(done, counters, self.counters)
        self.robots = torch.where(done, robots, self.robots)
        self.obstacles = torch.where(done, obstacles, self.obstacles)
        self.present = self.present | done
        self.tracking = torch.where(done, torch.stack((distance, torch.zeros_like(distance))), self.tracking)
        self.placement_failed = torch.where(done, failed, self.placement_failed)
        self.obstacle_centres = torch.where(done.view(-1, 1, 1), obstacles[:2].permute(2, 1, 0), self.obstacle_centres)
        self.obstacle_radii = torch.where(done.unsqueeze(1), obstacles[2].T, self.obstacle_radii)
        self.obstacle_mask = self.obstacle_mask | done.unsqueeze(1)

    # -- stepping -------------------------------------------------------------------------------

    def step(
        self, action: Tensor, evader_action: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
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
        action = torch.as_tensor(action, device=self.device, dtype=self.dtype)
        if action.shape != (self.num_envs, 2):
            raise ValueError(f"action has shape {tuple(action.shape)}; accepted: ({self.num_envs}, 2) pursuer (v, w)")
        if self.validate_actions:
            self._check_not_nan(action)
        robots, obstacles, present = self.robots, self.obstacles, self.present
        robots_before = robots
        step_count = self.counters[_STEP] + 1
        if evader_action is None:
            if p.evader_policy == "random":
                if not self.compiled:  # the compiled step draws them itself
                    draws = uniforms(self.counters[_KEY], step_count, self._step_salts, self.dtype)
                    evader_v, evader_w = random_evader(draws[0], draws[1], p)
            else:
                evader_v, evader_w = flee_evader(robots, obstacles, present, p)
        else:
            evader_action = torch.as_tensor(evader_action, device=self.device, dtype=self.dtype)
            if evader_action.shape != (self.num_envs, 2):
                raise ValueError(f"evader_action has shape {tuple(evader_action.shape)}; accepted: ({self.num_envs}, 2)")
            evader_v = evader_action[:, 0].clamp(0.0, p.evader_v_max)
            evader_w = evader_action[:, 1].clamp(-p.evader_w_max, p.evader_w_max)
        if self.compiled:
            given = None if evader_action is None and p.evader_policy == "random" else torch.stack((evader_v, evader_w))
            robots, distance, centre_distance, h, collided, captured, truncated, reward = self._advance_compiled(
                action, given, step_count)
            pursuer_x, pursuer_y = robots[_X, _PURSUER], robots[_Y, _PURSUER]
            terminated = captured | collided
        else:
            v = torch.stack((action[:, 0].clamp(0.0, p.pursuer_v_max), evader_v))  # (2, N)
            w = torch.stack((action[:, 1].clamp(-p.pursuer_w_max, p.pursuer_w_max), evader_w))
            x, y, theta = unicycle_arc(robots[_X], robots[_Y], robots[_THETA], v, w, p.dt)  # both robots at once
            evader_x, evader_y = self._confine_evader(
                x[_EVADER], y[_EVADER], robots[_X, _EVADER], robots[_Y, _EVADER], obstacles, present
            )
            pursuer_x, pursuer_y = x[_PURSUER], y[_PURSUER]
            robots = torch.stack((torch.stack((pursuer_x, evader_x)), torch.stack((pursuer_y, evader_y)), theta, v, w))

            # Events of the new state (the contract's inequalities, evaluated as written).
            distance = torch.hypot(pursuer_x - evader_x, pursuer_y - evader_y)
            centre_distance = torch.hypot(pursuer_x - obstacles[0], pursuer_y - obstacles[1])  # (K, N)
            h = body_barriers(pursuer_x, pursuer_y, centre_distance, obstacles[2], present, p).T.contiguous()
            inner = self._half - p.robot_radius
            collided = (present & (centre_distance <= obstacles[2] + p.robot_radius)).any(0)
            collided |= (pursuer_x.abs() >= inner) | (pursuer_y.abs() >= inner)
            captured = (distance <= p.capture_radius) & ~collided  # collision wins: safety first
            terminated = captured | collided
            truncated = (step_count >= p.max_steps) & ~terminated  # pays nothing: time is not observed
            reward = torch.where(collided, p.collision_penalty, torch.where(captured, p.capture_reward, self._zero))
        tracking = self.tracking
        reward = reward + self._shaping(robots_before, pursuer_x, pursuer_y, distance, centre_distance, terminated)
        episode_return = tracking[_RETURN] + reward
        obs = self._observe(robots, obstacles, present)
        info = {
            "pursuer": robots[:3, _PURSUER].T,
            "evader": robots[:3, _EVADER].T,
            "pursuer_vel": robots[3:, _PURSUER].T,
            "evader_vel": robots[3:, _EVADER].T,
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
        counters = self.counters.clone()
        counters[_STEP] = step_count
        self.robots, self.counters = robots, counters
        self.tracking = torch.stack((distance, episode_return))
        if self.autoreset:
            done = terminated | truncated
            if self.sync_free_autoreset:
                self._reset_where(done)
                obs = self.observe()
            elif bool(done.any()):
                index = done.nonzero().squeeze(1)
                self._reset_index(index)
                self.check_placement()
                fresh = self._observe(self.robots[:, :, index], self.obstacles[:, :, index], self.present[:, index])
                obs = obs.index_copy(0, index, fresh)
        return obs, reward, terminated, truncated, info

    def _shaping(
        self, robots_before: Tensor, x: Tensor, y: Tensor, distance: Tensor, centre_distance: Tensor, terminated: Tensor
    ) -> Tensor:
        """Both shaping terms (N,) in the policy-invariant form of Ng, Harada and Russell (1999).

        ``k (g Phi(s') - Phi(s))`` with ``g = shaping_discount`` (1.0 when None) and
        ``Phi = -distance_shaping d - proximity_shaping C``, C the proximity cost; ``Phi(s') = 0``
        when s' is terminal. Over an episode it sums (discounted by g) to ``g^T Phi(s_T) -
        Phi(s_0)``, or ``-Phi(s_0)`` when it terminated: no term of it depends on the policy, so
        the optimal policy at discount g is that of the unshaped task. x, y, distance (N,) and
        centre_distance (K, N) describe s'; robots_before (5, 2, N) s.
        """
        p = self.params
        if self.compiled:
            return self._shaping_compiled(robots_before, x, y, distance, centre_distance, terminated)
        # Phi(s') - Phi(s) first, then - (1 - g) Phi(s'): the same number as g Phi(s') - Phi(s),
        # but the large potentials cancel before rounding (float32 keeps 1e-5 over an episode).
        d_before = self.tracking[_DISTANCE]
        difference = p.distance_shaping * (d_before - distance)
        potential_after = -p.distance_shaping * distance
        potential_before = -p.distance_shaping * d_before
        if p.proximity_shaping:
            px, py = robots_before[_X, _PURSUER], robots_before[_Y, _PURSUER]
            obstacles, present = self.obstacles, self.present
            cost_before = self._proximity(px, py, torch.hypot(px - obstacles[0], py - obstacles[1]), obstacles, present)
            cost_after = self._proximity(x, y, centre_distance, obstacles, present)
            difference = difference + p.proximity_shaping * (cost_before - cost_after)
            potential_after = potential_after - p.proximity_shaping * cost_after
            potential_before = potential_before - p.proximity_shaping * cost_before
        live = difference - (1.0 - p.discount) * potential_after if p.discount != 1.0 else difference
        return torch.where(terminated, -potential_before, live)

    def _advance_compiled(self, action: Tensor, evader: Tensor | None, step_count: Tensor) -> tuple[Tensor, ...]:
        """The step's dynamics and events by `env.compiled`'s loops (CPU): the same bits. torch
        computes sin, cos, the heading's remainder, hypot and the evader's push sums, on tensors of
        the torch code's shapes. action (N, 2); evader (2, N) its (v, w) when not drawn here (a
        given or fleeing evader), None for the random evader. Returns robots (5, 2, N), distance
        (N,), centre_distance (K, N), h (N, K + 4), collided, captured, truncated (N,) bool and
        the event reward (N,)."""
        from env import compiled

        dtype, (n, k) = self._observe_consts.dtype, (self.num_envs, self.num_obstacles)
        # C-contiguous, one compiled type per loop (`set_state` leaves `present` transposed)
        robots, obstacles, present = (np.ascontiguousarray(t.numpy()) for t in (self.robots, self.obstacles, self.present))
        c = self._step_consts
        plane = lambda rows: np.empty((rows, n), dtype)  # noqa: E731
        v, w, half_turn, mid = plane(2), plane(2), plane(2), plane(2)
        compiled.arc_inputs_kernel(np.ascontiguousarray(action.detach().numpy()), np.ascontiguousarray(self.counters[_KEY].numpy()),
                                   step_count.numpy(), self._step_salts.numpy(), self._hashing, dtype.type(_UNIT_24),
                                   plane(0) if evader is None else np.ascontiguousarray(evader.numpy()), evader is None,
                                   c[0], v, w, half_turn, mid, robots[_THETA])
        half_turn_t, mid_t = torch.from_numpy(half_turn), torch.from_numpy(mid)
        x, y, wrap = plane(2), plane(2), plane(2)
        compiled.arc_kernel(robots[_X], robots[_Y], v, half_turn, mid, torch.sin(half_turn_t).numpy(),
                            torch.cos(mid_t).numpy(), torch.sin(mid_t).numpy(), c[1], x, y, wrap)
        wrapped = torch.remainder(torch.from_numpy(wrap), 2 * math.pi).numpy()
        evader_x, evader_y, away_x, away_y = plane(1)[0], plane(1)[0], plane(k), plane(k)
        compiled.confine_start_kernel(x[_EVADER], y[_EVADER], obstacles, c[2], evader_x, evader_y, away_x, away_y)
        gap, contact = plane(k), plane(k)
        if k:
            push_x, push_y = plane(k), plane(k)
            compiled.confine_push_kernel(away_x, away_y, _torch_hypot(away_x, away_y), obstacles, present, c[3], push_x,
                                         push_y, contact)
            sums = (torch.from_numpy(push).sum(0).numpy() for push in (push_x, push_y))
            pushed_x, pushed_y = plane(1)[0], plane(1)[0]
            compiled.confine_move_kernel(evader_x, evader_y, *sums, obstacles, c[2], pushed_x, pushed_y, away_x, away_y)
            evader_x, evader_y, gap = pushed_x, pushed_y, _torch_hypot(away_x, away_y)
        new_robots, dx, dy, centre_dx, centre_dy = np.empty((5, 2, n), dtype), plane(1)[0], plane(1)[0], plane(k), plane(k)
        compiled.new_state_kernel(x, y, evader_x, evader_y, gap, contact, present, robots, wrapped, v, w, obstacles, c[4],
                                  new_robots, dx, dy, centre_dx, centre_dy)
        distance, centre_distance = _torch_hypot(dx, dy), _torch_hypot(centre_dx, centre_dy)
        h = np.empty((n, k + 4), dtype)
        collided, captured, truncated = (np.empty(n, np.bool_) for _ in range(3))
        reward = plane(1)[0]
        compiled.events_kernel(new_robots, distance, centre_distance, obstacles, present, step_count.numpy(),
                               self.params.max_steps, c[5], h, collided, captured, truncated, reward)
        return tuple(torch.from_numpy(a) for a in (new_robots, distance, centre_distance, h, collided, captured,
                                                   truncated, reward))

    def _shaping_compiled(self, robots_before: Tensor, x: Tensor, y: Tensor, distance: Tensor, centre_distance: Tensor,
                          terminated: Tensor) -> Tensor:
        """`_shaping` by `env.compiled`'s loops (CPU): the same bits. torch computes what it rounds its
        own way (the hypot to the obstacles before the step, the sums over the proximity terms)."""
        from env.compiled import proximity_terms_kernel, shaping_kernel

        consts = self._shaping_consts
        costs = []
        if self.params.proximity_shaping:
            px, py = robots_before[_X, _PURSUER], robots_before[_Y, _PURSUER]
            obstacles, present = self.obstacles, self.present
            before = torch.hypot(px - obstacles[0], py - obstacles[1])
            for px_, py_, centres in ((px, py, before), (x, y, centre_distance)):
                terms = np.empty((self.num_obstacles + 4, px_.shape[0]), consts.dtype)
                proximity_terms_kernel(*(np.ascontiguousarray(t.numpy()) for t in (px_, py_, centres, obstacles[2], present)),
                                       self._proximity_consts, terms)
                costs.append(torch.from_numpy(terms).sum(0).numpy())  # torch's sum: its order of additions
        else:
            costs = [np.zeros(distance.shape[0], consts.dtype)] * 2
        out = np.empty(distance.shape[0], consts.dtype)
        shaping_kernel(*(np.ascontiguousarray(t.numpy()) for t in (self.tracking[_DISTANCE], distance)), *costs,
                       terminated.numpy(), consts, out)
        return torch.from_numpy(out)

    def _proximity(self, x: Tensor, y: Tensor, centre_distance: Tensor, obstacles: Tensor, present: Tensor) -> Tensor:
        """Proximity cost (N,) = sum over obstacles and walls of max(0, 1 - clearance / range), the
        body clearance of a pursuer at x, y (N,) (0 = touching); centre_distance (K, N) its
        distance to each obstacle centre, obstacles (3, K, N)."""
        p = self.params
        inner = self._half - p.robot_radius
        clearance = [inner - x, inner + x, inner - y, inner + y]
        if self.num_obstacles:
            gap = centre_distance - obstacles[2] - p.robot_radius  # (K, N)
            clearance.append(torch.where(present, gap, math.inf))
        clearance = torch.cat([c.view(-1, x.shape[0]) for c in clearance])
        return (1.0 - clearance / p.proximity_range).clamp_min(0.0).sum(0)

    def _check_not_nan(self, action: Tensor) -> None:
        if bool(torch.isnan(action).any()):
            bad = torch.isnan(action).any(1)
            p = self.params
            rows = bad.nonzero().squeeze(1).tolist()
            raise ValueError(
                f"action is NaN in env index {rows[:10]} (values {action[bad][:3].tolist()}); accepted: "
                f"numbers, clipped to [0, {p.pursuer_v_max}] x [-{p.pursuer_w_max}, {p.pursuer_w_max}]"
            )

    def _confine_evader(
        self, x: Tensor, y: Tensor, previous_x: Tensor, previous_y: Tensor, obstacles: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Keep the evader, proposed at x, y (N,), inside the arena and out of obstacles (3, K, N).

        Its centre is clamped to the square where its body fits; then, where its body overlaps
        an obstacle, it is moved radially out to touch it (overlaps with two obstacles at once
        add both moves), and clamped again. Where that still leaves the body inside an obstacle
        (an evader wedged between an obstacle and a wall, or between two obstacles: the push
        crossed the wall bound and the clamp pushed it back in), the move is rejected and the
        evader keeps its previous position (N,) (it still turns). So every step ends with its
        body inside the walls and outside every obstacle (to `_contact_tol`) whenever the step
        started so. The evader never collides, it slides: only the learner can collide.
        """
        p = self.params
        inner = self._half - p.robot_radius
        x, y = x.clamp(-inner, inner), y.clamp(-inner, inner)
        if self.num_obstacles:
            away_x, away_y = x - obstacles[0], y - obstacles[1]  # (K, N)
            gap = torch.hypot(away_x, away_y)
            contact = obstacles[2] + p.robot_radius
            inside = present & (gap < contact)
            # Radial push to the surface: scale the offset from the centre by contact / gap.
            stretch = torch.where(inside, contact / gap.clamp_min(1e-12) - 1, self._zero)
            x = (x + (away_x * stretch).sum(0)).clamp(-inner, inner)
            y = (y + (away_y * stretch).sum(0)).clamp(-inner, inner)
            gap = torch.hypot(x - obstacles[0], y - obstacles[1])
            wedged = (present & (gap < contact - self._contact_tol)).any(0)
            x, y = torch.where(wedged, previous_x, x), torch.where(wedged, previous_y, y)
        return x, y

    # -- observation ------------------------------------------------------------------------------

    def _observe(self, robots: Tensor, obstacles: Tensor, present: Tensor) -> Tensor:
        """Normalised observation (M, obs_dim) of the pursuer from robots (5, 2, M), obstacles
        (3, K, M), present (K, M); layout in `observation_names`."""
        p = self.params
        # the transcendental calls: torch's on both paths (ATen rounds them its own way)
        cos_t, sin_t = torch.cos(robots[_THETA]), torch.sin(robots[_THETA])  # (2, M)
        px, py = robots[_X, _PURSUER], robots[_Y, _PURSUER]
        dx, dy = robots[_X, _EVADER] - px, robots[_Y, _EVADER] - py
        distance = torch.hypot(dx, dy)
        k_obs, k_all = self.observed_obstacles, self.num_obstacles
        take = min(k_obs, k_all)
        if take:
            ox, oy = obstacles[0] - px, obstacles[1] - py  # (K, M) towards the centres
            centre_distance = torch.hypot(ox, oy)
        if self.compiled:
            return self._observe_compiled(robots, obstacles, present, cos_t, sin_t, distance,
                                          centre_distance if take else distance.new_empty(0, robots.shape[2]))
        position = robots[:2] / self._half  # (2, 2, M)
        velocity = robots[_V:] / self._velocity_scale  # (2, 2, M)
        pc, ps = cos_t[_PURSUER], sin_t[_PURSUER]
        inner = self._half - p.robot_radius  # body clearance to each wall: 0 = touching
        rows = []
        for who in (_PURSUER, _EVADER):
            rows += [position[_X, who], position[_Y, who], cos_t[who], sin_t[who], velocity[0, who], velocity[1, who]]
        rows += [distance / self._diagonal, *self._bearing(dx, dy, distance, pc, ps)]
        rows += [inner - px, inner + px, inner - py, inner + py]
        obs = torch.stack(rows)  # (19, M)
        obs[15:19] /= p.arena_size
        blocks = [obs]
        if take:
            gap = torch.where(present, (centre_distance - obstacles[2] - p.robot_radius) / self._diagonal, math.inf)
            entries = torch.stack((gap, *self._bearing(ox, oy, centre_distance, pc, ps)), dim=1)  # (K, 3, M)
            if k_all == 2:  # nearest first; a swap is far cheaper than a sort (ties keep order)
                entries = torch.where(gap[1] < gap[0], entries.flip(0), entries)
            elif k_all > 2:
                order = torch.sort(gap, dim=0, stable=True).indices[:take]
                entries = entries.gather(0, order.unsqueeze(1).expand(-1, 3, -1))
            entries = entries[:take]
            entries = torch.where(torch.isfinite(entries[:, :1]), entries, self._far_obstacle)  # absent: far away
            blocks.append(entries.reshape(3 * take, -1))
        if k_obs > take:  # fewer obstacles than observed slots: "far away" padding
            blocks.append(self._far_obstacle.view(3, 1).repeat(k_obs - take, obs.shape[1]))
        obs = torch.cat(blocks) if len(blocks) > 1 else obs
        # Positions and distances to [-2, 2]; unit entries are already in [-1, 1].
        return obs.clamp_(-2.0, 2.0).T.contiguous()

    def _observe_compiled(self, robots: Tensor, obstacles: Tensor, present: Tensor, cos_t: Tensor, sin_t: Tensor,
                          distance: Tensor, centre_distance: Tensor) -> Tensor:
        """`_observe`'s arithmetic after its torch calls, by `env.compiled` (CPU): the same bits.
        cos_t, sin_t (2, M), distance (M,), centre_distance (K, M) (or (0, M) when no obstacle is
        observed)."""
        from env.compiled import observe_kernel

        arrays = (x.numpy() for x in (robots, obstacles, present, cos_t, sin_t, distance, centre_distance))
        out = np.empty((robots.shape[2], self.obs_dim), self._observe_consts.dtype)
        observe_kernel(*(np.ascontiguousarray(x) for x in arrays), self._velocity_scale_np, self._observe_consts,
                       self.observed_obstacles, out)
        return torch.from_numpy(out)

    def _bearing(self, dx: Tensor, dy: Tensor, length: Tensor, cos_t: Tensor, sin_t: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) of the direction (dx, dy) relative to the heading (cos_t, sin_t), clipped to
        [-1, 1] against rounding; (0, 0) at length 0 (no direction). Shapes broadcast."""
        scale = 1 / length.clamp_min(1e-30)
        ux, uy = dx * scale, dy * scale
        return (ux * cos_t + uy * sin_t).clamp_(-1.0, 1.0), (uy * cos_t - ux * sin_t).clamp_(-1.0, 1.0)

    def observe(self) -> Tensor:
        """Observation (N, obs_dim) of the current state."""
        return self._observe(self.robots, self.obstacles, self.present)

    # -- views, state -----------------------------------------------------------------------------

    @property
    def pursuer(self) -> Tensor:
        """(N, 3) pursuer pose."""
        return self.robots[:3, _PURSUER].T

    @property
    def evader(self) -> Tensor:
        """(N, 3) evader pose."""
        return self.robots[:3, _EVADER].T

    @property
    def step_count(self) -> Tensor:
        """(N,) steps taken in the current episode."""
        return self.counters[_STEP]

    def safety_state(self) -> SafetyState:
        """What the CBF rows need, of the current (post-autoreset) state."""
        return SafetyState(self.pursuer, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask)

    def state_info(self) -> dict[str, Tensor]:
        """The state entries of `step`'s info for the current state (what `reset` reports):
        ``pursuer``, ``evader`` (N, 3), ``pursuer_vel``, ``evader_vel`` (N, 2),
        ``obstacle_centres`` (N, K, 2), ``obstacle_radii``, ``obstacle_mask`` (N, K), ``h``
        (N, K + 4) body barriers (m), and ``captured``, ``collided``, ``timeout`` (N,) all False."""
        false = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return {
            "pursuer": self.robots[:3, _PURSUER].T,
            "evader": self.robots[:3, _EVADER].T,
            "pursuer_vel": self.robots[3:, _PURSUER].T,
            "evader_vel": self.robots[3:, _EVADER].T,
            "obstacle_centres": self.obstacle_centres,
            "obstacle_radii": self.obstacle_radii,
            "obstacle_mask": self.obstacle_mask,
            "h": self.barrier(),
            "captured": false,
            "collided": false,
            "timeout": false.clone(),
        }

    def barrier(self) -> Tensor:
        """h (N, K + 4) of the current state (see `barrier_values`)."""
        return barrier_values(self.pursuer, self.obstacle_centres, self.obstacle_radii, self.obstacle_mask, self.params)

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
        n, k = self.num_envs, self.num_obstacles
        expected = {
            "pursuer": (n, 3), "evader": (n, 3), "obstacle_centres": (n, k, 2), "obstacle_radii": (n, k),
            "obstacle_mask": (n, k), "pursuer_vel": (n, 2), "evader_vel": (n, 2),
        }  # fmt: skip
        given = {
            "pursuer": pursuer, "evader": evader, "obstacle_centres": obstacle_centres, "obstacle_radii": obstacle_radii,
            "obstacle_mask": obstacle_mask, "pursuer_vel": pursuer_vel, "evader_vel": evader_vel,
        }  # fmt: skip
        values = {}
        for name, value in given.items():
            if value is None:
                continue
            value = torch.as_tensor(value, device=self.device)
            value = value.to(torch.bool if name == "obstacle_mask" else self.dtype)
            if tuple(value.shape) != expected[name]:
                raise ValueError(f"set_state({name}=...) has shape {tuple(value.shape)}; accepted: {expected[name]}")
            values[name] = value
        robots, obstacles = self.robots.clone(), self.obstacles.clone()
        for name, who, columns in (("pursuer", _PURSUER, slice(0, 3)), ("evader", _EVADER, slice(0, 3)),
                                   ("pursuer_vel", _PURSUER, slice(3, 5)), ("evader_vel", _EVADER, slice(3, 5))):  # fmt: skip
            if name in values:
                robots[columns, who] = values[name].T
        if "obstacle_centres" in values:
            obstacles[:2] = values["obstacle_centres"].permute(2, 1, 0)
        if "obstacle_radii" in values:
            obstacles[2] = values["obstacle_radii"].T
        if "obstacle_mask" in values:
            self.present = values["obstacle_mask"].T.clone()
        self.robots, self.obstacles = robots, obstacles
        self._obstacles_changed()
        counters, tracking = self.counters.clone(), self.tracking.clone()
        if step_count is not None:
            counters[_STEP] = torch.as_tensor(step_count, dtype=torch.int64, device=self.device)
        tracking[_DISTANCE] = torch.hypot(robots[_X, 0] - robots[_X, 1], robots[_Y, 0] - robots[_Y, 1])
        self.counters, self.tracking = counters, tracking
        return self.observe()

    def keep_envs(self, index: Tensor) -> None:
        """Shrink the batch to the envs `index` (M,) int64, M >= 1, in that order; the others are
        dropped. A kept env's state and RNG counters are unchanged, and every env is computed on
        its own (counter-based draws, per-env arithmetic), so it goes on exactly as in the full
        batch. Evaluation drops its ended episodes with this (without autoreset an ended env
        would otherwise be stepped until the longest episode of the batch ends)."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError(f"keep_envs: index has shape {tuple(index.shape)}; accepted: (M,) with M >= 1")
        for name in _STATE_KEYS:
            setattr(self, name, getattr(self, name).index_select(-1, index))
        self.num_envs = int(index.numel())
        self._obstacles_changed()

    def state_dict(self) -> dict[str, Any]:
        """The full state and RNG counters (copies), for a bit-exact resume."""
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in _STATE_KEYS}
        state["params"] = self.params.model_dump(mode="json")
        state["num_envs"] = self.num_envs
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (of a core with the same params and num_envs)."""
        mine = self.params.model_dump(mode="json")
        saved = state.get("params", {})
        if saved != mine:
            diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
            raise ValueError(f"load_state_dict: saved env params differ from this core's, as (saved, here): {diff}")
        if state.get("num_envs") != self.num_envs:
            raise ValueError(f"load_state_dict: saved num_envs={state.get('num_envs')}, this core has {self.num_envs}")
        missing = [name for name in _STATE_KEYS if name not in state]
        if missing:
            raise ValueError(f"load_state_dict: missing keys {missing}")
        for name in _STATE_KEYS:
            value = state[name]
            dtype = self.dtype if value.is_floating_point() else value.dtype
            setattr(self, name, value.to(device=self.device, dtype=dtype).clone())
        self._obstacles_changed()
