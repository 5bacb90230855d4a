"""The env's per-step arithmetic as numba loops over the envs (CPU), bit for bit the torch code's.

Why: `PursuitEvasionCore`'s observation and shaping reward are each a few dozen small tensor ops
on (., N) rows; at the training's 256 envs their dispatch, not their arithmetic, is the cost (the
observation 395 us and the shaping 186 us of a 1.45 ms env step, measured on a 2-core AMD EPYC),
and the observation runs once more per reset.

What stays torch: cos, sin, hypot and the shaping's sums over barriers. ATen's vectorised
kernels round the first three differently from libm (and its scalar tail, under 16 float32
elements, uses libm), and its sum's order depends on the shape; so the caller computes them with
torch exactly as the torch code does and passes them in. Everything else is +, -, *, /,
comparisons and selections, which IEEE 754 rounds the same whatever the order in which
independent elements are computed: each operation is written here in the torch code's order and
in the arrays' dtype (constants cast once, as ATen casts a Python scalar to the tensor's dtype;
no fast-math, so LLVM fuses no multiply-add). tests/test_env.py compares the two paths bitwise.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _clamp(x, low, high):  # pragma: no cover (numba)
    """torch.clamp: NaN stays NaN (no comparison holds)."""
    if x < low:
        return low
    if x > high:
        return high
    return x


@njit(cache=True, inline="always")
def _bearing(dx, dy, length, cos_t, sin_t, tiny, one):  # pragma: no cover (numba)
    """`PursuitEvasionCore._bearing` of one element."""
    scale = one / (tiny if length < tiny else length)  # clamp_min: NaN passes
    ux, uy = dx * scale, dy * scale
    return _clamp(ux * cos_t + uy * sin_t, -one, one), _clamp(uy * cos_t - ux * sin_t, -one, one)


@njit(cache=True)
def observe_kernel(robots, obstacles, present, cos_t, sin_t, distance, centre_distance, velocity_scale, consts,
                   observed, out):  # pragma: no cover (numba)
    """numba: `PursuitEvasionCore._observe` after its transcendental calls.

    robots (5, 2, M), obstacles (3, K, M), present (K, M) bool; cos_t, sin_t (2, M) of the headings,
    distance (M,) = hypot of the evader's offset from the pursuer, centre_distance (K, M) = hypot of
    each obstacle centre's offset (torch's values); velocity_scale (2, 2) [v or w, robot];
    consts: half arena, diagonal, wall clearance (half - robot radius), arena size, robot radius,
    1e-30 (the bearing's floor), 1, 2, 0, inf, in the arrays' dtype; observed: obstacle slots in the
    observation. Writes out (M, 19 + 3 observed), clipped to [-2, 2].
    """
    half, diagonal, inner, arena, robot_radius, tiny = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    one, two, zero, inf = consts[6], consts[7], consts[8], consts[9]
    k_all = obstacles.shape[1]
    take = min(observed, k_all)
    gap = np.empty(k_all, consts.dtype)
    order = np.empty(k_all, np.int64)
    for n in range(robots.shape[2]):
        row = out[n]
        for who in range(2):
            base = 6 * who
            row[base] = robots[0, who, n] / half
            row[base + 1] = robots[1, who, n] / half
            row[base + 2] = cos_t[who, n]
            row[base + 3] = sin_t[who, n]
            row[base + 4] = robots[3, who, n] / velocity_scale[0, who]
            row[base + 5] = robots[4, who, n] / velocity_scale[1, who]
        px, py, pc, ps = robots[0, 0, n], robots[1, 0, n], cos_t[0, n], sin_t[0, n]
        dx, dy = robots[0, 1, n] - px, robots[1, 1, n] - py
        row[12] = distance[n] / diagonal
        row[13], row[14] = _bearing(dx, dy, distance[n], pc, ps, tiny, one)
        row[15] = (inner - px) / arena
        row[16] = (inner + px) / arena
        row[17] = (inner - py) / arena
        row[18] = (inner + py) / arena
        if take:
            for k in range(k_all):
                gap[k] = (centre_distance[k, n] - obstacles[2, k, n] - robot_radius) / diagonal if present[k, n] else inf
                order[k] = k
            # nearest first, ties in slot order: torch's swap for two, its stable sort for more
            for k in range(1, k_all):
                j = k
                while j > 0 and gap[order[j]] < gap[order[j - 1]]:
                    order[j], order[j - 1] = order[j - 1], order[j]
                    j -= 1
        for slot in range(observed):
            base = 19 + 3 * slot
            k = order[slot] if slot < take else -1
            if k >= 0 and np.isfinite(gap[k]):
                ox, oy = obstacles[0, k, n] - px, obstacles[1, k, n] - py
                row[base] = gap[k]
                row[base + 1], row[base + 2] = _bearing(ox, oy, centre_distance[k, n], pc, ps, tiny, one)
            else:  # absent, or a padding slot: "far away"
                row[base], row[base + 1], row[base + 2] = one, zero, zero
        for j in range(row.shape[0]):
            row[j] = _clamp(row[j], -two, two)


@njit(cache=True, inline="always")
def _clamp_min(x, low):  # pragma: no cover (numba)
    """torch.clamp_min: NaN stays NaN."""
    return x if (x > low or x != x) else low


@njit(cache=True)
def proximity_terms_kernel(x, y, centre_distance, radii, present, consts, out):  # pragma: no cover (numba)
    """numba: `PursuitEvasionCore._proximity` before its sum: out (K + 4, N) = max(0, 1 - clearance /
    range) for the walls +x, -x, +y, -y, then each obstacle (absent: infinite clearance, 0). x, y
    (N,) the pursuer's position, centre_distance, radii (K, N), present (K, N) bool; consts: wall
    clearance (half - robot radius), robot radius, proximity range, 1, 0, in the arrays' dtype."""
    inner, robot_radius, reach, one, zero = consts[0], consts[1], consts[2], consts[3], consts[4]
    for n in range(x.shape[0]):
        px, py = x[n], y[n]
        out[0, n] = _clamp_min(one - (inner - px) / reach, zero)
        out[1, n] = _clamp_min(one - (inner + px) / reach, zero)
        out[2, n] = _clamp_min(one - (inner - py) / reach, zero)
        out[3, n] = _clamp_min(one - (inner + py) / reach, zero)
        for k in range(radii.shape[0]):
            gap = centre_distance[k, n] - radii[k, n] - robot_radius
            out[4 + k, n] = _clamp_min(one - gap / reach, zero) if present[k, n] else zero


@njit(cache=True)
def shaping_kernel(d_before, distance, cost_before, cost_after, terminated, consts, out):  # pragma: no cover (numba)
    """numba: `PursuitEvasionCore._shaping` from its sums: out (N,). d_before, distance (N,) the
    pursuer-evader distance before and after the step, cost_before, cost_after (N,) the proximity
    costs (zeros without proximity shaping), terminated (N,) bool; consts: distance_shaping,
    -distance_shaping, proximity_shaping, 1 - discount, whether the proximity terms are on (1/0),
    whether the discount is not 1 (1/0), in the arrays' dtype."""
    scale, minus_scale, proximity, undiscounted = consts[0], consts[1], consts[2], consts[3]
    with_proximity, discounted = consts[4] != 0, consts[5] != 0
    for n in range(distance.shape[0]):
        difference = scale * (d_before[n] - distance[n])
        potential_after = minus_scale * distance[n]
        potential_before = minus_scale * d_before[n]
        if with_proximity:
            difference = difference + proximity * (cost_before[n] - cost_after[n])
            potential_after = potential_after - proximity * cost_after[n]
            potential_before = potential_before - proximity * cost_before[n]
        live = difference - undiscounted * potential_after if discounted else difference
        out[n] = -potential_before if terminated[n] else live
