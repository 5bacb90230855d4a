"""Gymnasium front doors to the batched core: a native vector env and the single env.

Both are views of one `PursuitEvasionCore` (the single env: a core with N = 1), so they cannot
drift apart; the vector env exposes its core as ``.core`` for the zero-copy torch path.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from env.config import EnvParams, make_params
from env.core import PursuitEvasionCore


def _spaces(core: PursuitEvasionCore) -> tuple[spaces.Box, spaces.Box]:
    p = core.params
    low, high = core.observation_bounds()
    observation = spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32), dtype=np.float32)
    action = spaces.Box(
        np.array([0.0, -p.pursuer_w_max], dtype=np.float32),
        np.array([p.pursuer_v_max, p.pursuer_w_max], dtype=np.float32),
        dtype=np.float32,
    )
    return observation, action


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    """CPU float tensors become float32 arrays (zero-copy when already float32 on CPU)."""
    array = value.detach().cpu().numpy()
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return array


_DOC = """
    ## Description

    A pursuer (the learner) chases an evader in a square arena with hard walls and circular
    obstacles. Both robots are unicycles, ``x' = v cos t, y' = v sin t, t' = w``, integrated
    exactly over each step of ``dt`` seconds (arcs of radius v / w). The evader follows a
    scripted policy (``evader_policy``): ``random`` draws a uniform action in its bounds every
    step (the reference scenario), ``flee`` steers away from the pursuer along a potential
    field that avoids obstacles and walls. The evader is kept inside the arena (clamped) and is
    pushed radially out of obstacles; where the push would cross a wall (an evader wedged
    between an obstacle and a wall, or between two obstacles) the move is rejected and it keeps
    its place. So after every step its body is inside the walls and outside every obstacle: it
    never collides. Only the pursuer can collide.

    Units: metres, seconds, radians; the arena is ``[-L/2, L/2]^2`` with ``L = arena_size``.

    ## Action Space

    ``Box([0, -w_max], [v_max, w_max], (2,), float32)``: the pursuer's speed v (m/s) and turn
    rate w (rad/s) in physical units. Out-of-bounds actions are clipped to the box; a NaN
    action raises ``ValueError`` naming the env index. (``check_env`` warns that the box is not
    normalised to [-1, 1]: that is deliberate, the safety layer works in physical units.)

    ## Observation Space

    ``Box(float32, (19 + 3 K,))`` with ``K = observed_obstacles`` (25 by default), the
    pursuer's view, scaled to about [-1, 1] (clipped to [-2, 2]; unit entries to [-1, 1]):

    | Num   | Observation                                           | Scale            |
    |-------|-------------------------------------------------------|------------------|
    | 0-1   | pursuer x, y                                          | / (L/2)          |
    | 2-3   | pursuer cos(theta), sin(theta)                        | -                |
    | 4-5   | pursuer v, w (last executed action)                   | / v_max, / w_max |
    | 6-7   | evader x, y                                           | / (L/2)          |
    | 8-9   | evader cos(theta), sin(theta)                         | -                |
    | 10-11 | evader v, w (last executed action)                    | / evader limits  |
    | 12    | pursuer-evader distance                               | / (L sqrt 2)     |
    | 13-14 | bearing to the evader relative to the pursuer heading, cos and sin | -   |
    | 15-18 | body clearance to the walls +x, -x, +y, -y: ``L/2 - r -/+ x`` | / L      |
    | 19+3k | k-th nearest obstacle: body clearance ``|p - c| - r_k - r`` | / (L sqrt 2) |
    | 20+3k | its bearing relative to the pursuer heading, cos      | -                |
    | 21+3k | its bearing relative to the pursuer heading, sin      | -                |

    ``r`` is ``robot_radius``. Slots beyond the number of obstacles hold (1, 0, 0): far away.
    A bearing to a point the pursuer sits exactly on is (0, 0).

    ## Rewards

    ``capture_reward`` on capture, ``collision_penalty`` on collision, nothing on truncation,
    plus two potential-based shaping terms in the policy-invariant form of Ng, Harada and
    Russell (1999), ``k (g Phi(s') - Phi(s))``:

    - distance: ``k = distance_shaping``, ``Phi = -d`` (d: pursuer-evader distance, m);
    - proximity: ``k = proximity_shaping``, ``Phi = -sum_i max(0, 1 - c_i / proximity_range)``
      over the pursuer's body clearances ``c_i`` to each obstacle and wall (it makes a course
      closing in on an obstacle cost at once instead of only at the collision).

    ``g = shaping_discount``, the discount the learner uses (None means 1.0 here; the pipeline
    sets it to ``train.gamma``). ``Phi(s') = 0`` when s' is terminal (capture, collision), and
    ``Phi(s_T)`` is kept at truncation. So over an episode the g-discounted shaping sums to
    ``g^T Phi(s_T) - Phi(s_0)``, or ``-Phi(s_0)`` when it terminated: nothing the policy
    controls beyond what the bootstrap V(s_T) accounts for, so the optimal policy at discount g
    is the unshaped task's. (The earlier form ``k (Phi(s') - Phi(s))`` was invariant only
    without discounting: at g = 0.995 a pass-by cost -3.15 and driving into an obstacle added
    about -31.5 to the collision penalty.) Note the terminal step pays ``-Phi(s)``: with
    ``Phi = -d`` a capture or collision at distance d adds ``+k d``; the value of continuing
    carries the same ``+k d`` (``V' = V - Phi``), so this rewards neither.

    Why no timeout penalty: time is not in the observation, so a penalty paid at truncation is
    unpredictable for the critic (Pardo et al. 2018, "Time Limits in Reinforcement Learning").
    Truncation is a cut of an unending task: it pays nothing of its own and the learner
    bootstraps ``V(final_obs)`` there (``env.timeout_penalty`` was removed; a params file that
    names it is refused with this reason).

    ## Starting State

    The pursuer-evader distance is uniform in ``[start_distance_min, start_distance_max]``
    (capped at the diagonal of the square the robots may start in), its direction uniform over
    the directions that fit, headings uniform, both robots with ``|x|, |y| <= U``, ``U = L/2 -
    r - safety_margin - start_margin - 1 mm`` (1 mm against float32 rounding), and the
    pursuer's heading segment ``[p, p + start_margin (cos t, sin t)]`` inside that square too.
    Then ``num_obstacles`` circles with radius uniform in ``[obstacle_radius_min,
    obstacle_radius_max]``, wholly inside the arena, not overlapping each other, at least
    ``obstacle_clearance`` from both robots' bodies and ``r + safety_margin + start_margin``
    (+ 1 mm) from every point of the pursuer's heading segment (first valid of 64 candidates
    each; ``PlacementError`` names the parameters if none fits).

    Why: a CBF that enforces its barriers on a look-ahead point ``q = p + d (cos t, sin t)``
    (``cbf.lookahead`` = d) puts q's safe set d inside the body's, and q itself lies up to d
    ahead. q lies on the heading segment when ``d <= start_margin``, so every look-ahead
    barrier (walls in m, obstacles in m^2, inflated by any robust margin up to ``start_margin
    - d``) and every body barrier in ``info["h"]`` is >= 0 at step 0, by construction (before,
    2.6 % of starts had a negative look-ahead wall barrier and the QP was infeasible at once).
    The pipeline refuses ``cbf.lookahead + cbf.robust_margin > env.start_margin``; this class
    refuses an arena too small for the margins. Autoresets use the same sampler.

    All draws are counter-based hashes of (seed, episode, step, draw): env i of a vector env
    seeded s equals a single env seeded s + i.

    ## Episode End

    1. Termination, capture: pursuer-evader distance ``<= capture_radius``.
    2. Termination, collision: the pursuer's body touches an obstacle (``|p - c| <= r_k + r``)
       or a wall (``|x| >= L/2 - r`` or ``|y| >= L/2 - r``). If capture and collision happen in
       the same step, collision wins (safety first): only ``collision_penalty`` is paid and
       ``info["captured"]`` is False.
    3. Truncation: ``max_steps`` steps, unless the last step terminated (no penalty, see Rewards).

    ## Info

    ``pursuer``, ``evader`` (3,) poses, ``pursuer_vel``, ``evader_vel`` (2,), ``obstacle_centres``
    (K, 2), ``obstacle_radii``, ``obstacle_mask`` (K,), ``h`` (K + 4,) barrier values (obstacles
    ``|p - c| - (r_k + r + safety_margin)``, absent = inf, then walls +x, -x, +y, -y
    ``L/2 - r - safety_margin -/+ x``), ``captured``, ``collided``, ``timeout``, ``final_obs``,
    ``episode_return``, ``episode_length``; batched with a leading env axis in the vector env.
    ``reset()`` returns the same state entries (poses, velocities, obstacles, ``h``) with the
    three flags False, so a start can be checked without stepping.

    ## Arguments

    ``params`` (``env.config.EnvParams``, defaults when None) and any of its fields as keyword
    overrides, e.g. ``gymnasium.make("PursuitEvasion-v0", num_obstacles=4, shaping_discount=0.995)``;
    a bad key or value raises ``env.config.EnvParamsError`` (a ValueError) naming ``env.<key>``,
    the value and what is accepted. The new fields: ``start_margin`` (m, default 0.25: the
    default look-ahead 0.2 plus the robust margin 0.05), ``shaping_discount`` (None = 1.0);
    ``render_mode="rgb_array"``. The vector env also takes ``num_envs``, ``device`` and
    ``dtype`` (torch), e.g. ``gymnasium.make_vec("PursuitEvasion-v0", num_envs=64)``.

    ## Version History

    * v0: initial version (the "Phase 2.5" reference scenario, plus the potential-based proximity
      shaping, which the reference did not have).
    * v0, issue 14 revision (the id is kept so that existing callers run; results move): starts
      inside the CBF's safe set (``start_margin``), shaping in the discounted policy-invariant
      form with ``Phi(terminal) = 0`` (``shaping_discount``), no timeout penalty, the state in
      ``reset()``'s info, wedged evader moves rejected.
"""


class PursuitEvasionEnv(gym.Env[np.ndarray, np.ndarray]):
    __doc__ = "Pursuit-evasion with unicycles, walls and circular obstacles (a view of a core with N = 1).\n" + _DOC

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, params: EnvParams | None = None, render_mode: str | None = None, **overrides: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; accepted: {self.metadata['render_modes']} or None")
        self.params = make_params(params, **overrides)
        self.render_mode = render_mode
        # float32 like the vector env's default, so a single env seeded s + i matches env i.
        self.core = PursuitEvasionCore(self.params, num_envs=1, autoreset=False)
        self.observation_space, self.action_space = _spaces(self.core)
        self._seeded = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.core.seed([seed])
            self._seeded = True
        elif not self._seeded:  # no seed ever given: draw one from gymnasium's generator
            self.core.seed([int(self.np_random.integers(0, 2**63 - 1))])
            self._seeded = True
        obs = self.core.reset()
        info = {key: value[0].numpy().copy() for key, value in self.core.state_info().items()}
        return obs[0].numpy().copy(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (2,):
            raise ValueError(f"action has shape {action.shape}; accepted: (2,) pursuer (v, w)")
        obs, reward, terminated, truncated, info = self.core.step(torch.from_numpy(action).unsqueeze(0))
        info = {key: value[0].numpy().copy() for key, value in info.items()}  # copies: never reused
        return obs[0].numpy().copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' to the constructor")
            return None
        from env.render import render_frame

        return render_frame(self.core, 0)


class PursuitEvasionVectorEnv(VectorEnv):
    __doc__ = (
        "N pursuit-evasion games in one batched torch core, behind gymnasium's numpy VectorEnv API.\n\n"
        "    Same-step autoreset: an env that ends is reset inside `step`; the returned observation\n"
        "    is the new episode's first, ``info['final_obs']`` (N, obs_dim) the ended one's last and\n"
        "    ``info['_final_obs']`` (N,) marks the envs that ended. ``reset(seed=s)`` seeds env i\n"
        "    with s + i (a list gives one seed per env); ``reset()`` later continues each env's\n"
        "    sequence of episodes. ``options={'reset_mask': mask}`` resets only where mask is True.\n"
        "    ``.core`` is the torch core for the zero-copy training path.\n" + _DOC
    )

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        params: EnvParams | None = None,
        render_mode: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_episode_steps: int | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; accepted: {self.metadata['render_modes']} or None")
        if max_episode_steps is not None:  # gymnasium.make_vec's name for env.max_steps
            overrides.setdefault("max_steps", max_episode_steps)
        self.params = make_params(params, **overrides)
        self.render_mode = render_mode
        self.core = PursuitEvasionCore(self.params, num_envs=num_envs, device=device, dtype=dtype)
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _spaces(self.core)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._seeded = False

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        mask = None if options is None else options.get("reset_mask")
        if isinstance(seed, (list, tuple)):
            if len(seed) != self.num_envs:
                raise ValueError(f"reset(seed=[...]) got {len(seed)} seeds for num_envs={self.num_envs}; accepted: one per env")
            super().reset(seed=int(seed[0]))
            seeds = [int(s) for s in seed]
        elif seed is not None:
            super().reset(seed=int(seed))
            seeds = [int(seed) + i for i in range(self.num_envs)]
        elif not self._seeded:  # no seed ever given: draw a base seed from gymnasium's generator
            base = int(self.np_random.integers(0, 2**62))
            seeds = [base + i for i in range(self.num_envs)]
        else:
            seeds = None
        if seeds is not None:
            if mask is not None:
                raise ValueError("reset(seed=..., options={'reset_mask': ...}): seeding restarts every env; pass one of them")
            self.core.seed(seeds)
            self._seeded = True
        obs = self.core.reset(None if mask is None else torch.as_tensor(np.asarray(mask, dtype=bool)))
        return _to_numpy(obs), {key: _to_numpy(value) for key, value in self.core.state_info().items()}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        obs, reward, terminated, truncated, info = self.core.step(actions)
        out = {key: _to_numpy(value) for key, value in info.items()}
        done = terminated | truncated
        out["_final_obs"] = done.cpu().numpy()
        return _to_numpy(obs), _to_numpy(reward), terminated.cpu().numpy(), truncated.cpu().numpy(), out

    def render(self) -> tuple[np.ndarray, ...] | None:
        """Frames (H, W, 3) uint8 of the first (up to) 4 envs."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' to the constructor")
            return None
        from env.render import render_frame

        return tuple(render_frame(self.core, i) for i in range(min(self.num_envs, 4)))

