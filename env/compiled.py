"""The env's per-step arithmetic as numba loops over the envs (CPU), bit for bit the torch code's.

Why: `PursuitEvasionCore`'s step is about two hundred small tensor ops on (., N) rows (the arc,
the evader's confinement, the events, the shaping reward, the observation, and a reset's start
states); at the training's 256 envs their dispatch, not their arithmetic, is the cost. With these
loops a step at 256 envs took 0.50 ms against the torch code's 1.49 ms (2-core AMD EPYC,
`python benchmarks/env_throughput.py`).

What stays torch: sin, cos, acos, hypot, the heading's remainder and the sums over obstacles.
ATen's vectorised kernels round the transcendental ones differently from libm (and its scalar
tail, under 16 float32 elements, uses libm), and its sum's order depends on the shape; so the
caller computes them with torch, on tensors of the torch code's shapes, and passes them in.
Everything else is +, -, *, /, comparisons and selections, which IEEE 754 rounds the same
whatever the order in which independent elements are computed: each operation is written here in
the torch code's order and in the arrays' dtype (constants cast once, as ATen casts a Python
scalar to the tensor's dtype; no fast-math, so LLVM fuses no multiply-add). tests/test_env.py
steps a compiled and a torch core in lockstep and compares every output bitwise.
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


# -- the start states of a reset (`PursuitEvasionCore._start_states`) ------------------------------
# torch keeps acos, cos, sin and hypot; the loops below compute everything between those calls.


@njit(cache=True, inline="always")
def _mix32(x, hashing):  # pragma: no cover (numba)
    """`env.core._mix32` of one int64; hashing = [mask32, multiplier A, multiplier B, seed salt]."""
    x = x ^ (x >> 16)
    x = (x * hashing[1]) & hashing[0]
    x = x ^ (x >> 15)
    x = (x * hashing[2]) & hashing[0]
    return x ^ (x >> 16)


@njit(cache=True)
def start_draws_kernel(seed_lo, seed_hi, episode, salts, hashing, unit, consts, key_out, draw_out, distance_out,
                       acos_arg_out):  # pragma: no cover (numba)
    """numba: a reset's episode keys and uniform draws (`episode_key`, `uniforms` at step 0; integer
    arithmetic, exact) and its start distance up to torch's acos. seed_lo, seed_hi, episode (M,)
    int64, salts (D,) int64; unit: 2^-24 in the draws' dtype; consts: start_distance_min,
    start_distance_max - start_distance_min, sqrt(2) span, 1e-12, span, 1. Writes key_out (M,),
    draw_out (D, M), distance_out (M,) (clamped to the span's diagonal) and acos_arg_out (M,) =
    min(1, span / max(distance, 1e-12)) as torch computes it (1 / x, then times span)."""
    mask, seed_salt = hashing[0], hashing[3]
    low, width, cap, tiny, span, one = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    for n in range(key_out.shape[0]):
        key = _mix32(seed_lo[n] ^ seed_salt, hashing)
        key = _mix32(key ^ seed_hi[n], hashing)
        key = _mix32(key ^ (episode[n] & mask), hashing)
        key_out[n] = key
        for d in range(salts.shape[0]):  # step 0: the counter is the key itself
            draw_out[d, n] = (_mix32(key ^ salts[d], hashing) >> 8) * unit  # a 24-bit integer times 2^-24: exact
        distance = draw_out[0, n] * width + low
        distance = cap if distance > cap else distance
        ratio = (one / (tiny if distance < tiny else distance)) * span  # torch's `span / t` is reciprocal(t) * span
        distance_out[n] = distance
        acos_arg_out[n] = one if ratio > one else ratio


@njit(cache=True)
def start_angles_kernel(draw, cut, consts, direction_out, headings_out):  # pragma: no cover (numba)
    """numba: the pursuer-to-evader direction (M,) from the draws (D, M) and torch's cut = acos(.) (M,),
    and both headings (2, M), up to torch's cos and sin. consts: pi / 2, pi, 1, 2, 4."""
    half_pi, pi, one, two, four = consts[0], consts[1], consts[2], consts[3], consts[4]
    for n in range(cut.shape[0]):
        quadrant = np.floor(four * draw[1, n])
        direction_out[n] = (quadrant * half_pi + cut[n]) + draw[2, n] * (half_pi - two * cut[n])
        headings_out[0, n] = (two * draw[5, n] - one) * pi
        headings_out[1, n] = (two * draw[6, n] - one) * pi


@njit(cache=True)
def start_robots_kernel(draw, distance, headings, cos_direction, sin_direction, cos_heading, sin_heading, consts,
                        robots_out, ahead_out):  # pragma: no cover (numba)
    """numba: both robots' start states robots_out (5, 2, M) and the pursuer's heading segment
    ahead_out (2, M) from torch's cos and sin of the direction and of the pursuer's heading (M,).
    consts: the start half-width U, -U, start_margin, 0."""
    usable, minus_usable, ahead_length, zero = consts[0], consts[1], consts[2], consts[3]
    for n in range(distance.shape[0]):
        offset = (cos_direction[n] * distance[n], sin_direction[n] * distance[n])
        ahead = (cos_heading[n] * ahead_length, sin_heading[n] * ahead_length)
        for axis in range(2):
            # torch.maximum / minimum: NaN wins, as `_clamp`'s comparisons let it
            a = minus_usable - offset[axis]
            b = _clamp_min(-ahead[axis], zero) + minus_usable
            low = a if (a > b or a != a) else b
            a = usable - offset[axis]
            b = usable - _clamp_min(ahead[axis], zero)
            high = a if (a < b or a != a) else b
            pursuer = low + draw[3 + axis, n] * (high - low)
            robots_out[axis, 0, n] = pursuer
            robots_out[axis, 1, n] = pursuer + offset[axis]
            ahead_out[axis, n] = ahead[axis]
        robots_out[2, 0, n], robots_out[2, 1, n] = headings[0, n], headings[1, n]
        for row in range(3, 5):
            robots_out[row, 0, n], robots_out[row, 1, n] = zero, zero


@njit(cache=True)
def obstacle_candidates_kernel(draw, k, robots, ahead, obstacles, consts, radius, cx, cy, robot_dx, robot_dy,
                               segment_dx, segment_dy, placed_dx, placed_dy):  # pragma: no cover (numba)
    """numba: obstacle k's C candidates per env (C, M) (radius, centre) and the offsets whose lengths
    torch's hypot measures: to both robots (2, C, M), to the pursuer's heading segment (C, M) and to
    each obstacle placed before it (k, C, M). draw (D, M), robots (5, 2, M), ahead (2, M),
    obstacles (3, K, M); consts: obstacle_radius_min, its range, half arena, max(start_margin^2,
    1e-30), 1, 2, 0."""
    r_min, r_range, half, segment_squared, one, two, zero = (consts[0], consts[1], consts[2], consts[3], consts[4],
                                                            consts[5], consts[6])
    candidates = radius.shape[0]
    for c in range(candidates):
        base = 7 + (k * candidates + c) * 3  # draw[7:] reshaped (K, C, 3, M)
        for n in range(radius.shape[1]):
            r = draw[base, n] * r_range + r_min
            span = half - r
            x = (two * draw[base + 1, n] - one) * span
            y = (two * draw[base + 2, n] - one) * span
            radius[c, n], cx[c, n], cy[c, n] = r, x, y
            for who in range(2):
                robot_dx[who, c, n] = x - robots[0, who, n]
                robot_dy[who, c, n] = y - robots[1, who, n]
            rel_x, rel_y = x - robots[0, 0, n], y - robots[1, 0, n]
            along = _clamp((rel_x * ahead[0, n] + rel_y * ahead[1, n]) / segment_squared, zero, one)
            segment_dx[c, n] = rel_x - along * ahead[0, n]
            segment_dy[c, n] = rel_y - along * ahead[1, n]
            for j in range(k):
                placed_dx[j, c, n] = x - obstacles[0, j, n]
                placed_dy[j, c, n] = y - obstacles[1, j, n]


@njit(cache=True)
def obstacle_choice_kernel(k, radius, cx, cy, to_robots, to_segment, to_placed, consts, obstacles,
                           failed):  # pragma: no cover (numba)
    """numba: obstacle k of each env is its first valid candidate (candidate 0 where none is: the env
    is marked failed). to_robots (2, C, M), to_segment (C, M), to_placed (k, C, M) torch's hypot
    of `obstacle_candidates_kernel`'s offsets; consts: keep-off from the robots, keep-off from the
    segment. Writes obstacles[:, k] (3, M) and ors failed (M,)."""
    keep_off_robots, keep_off_segment = consts[0], consts[1]
    candidates, envs = radius.shape
    for n in range(envs):
        first = -1
        for c in range(candidates):
            r = radius[c, n]
            valid = to_robots[0, c, n] >= r + keep_off_robots and to_robots[1, c, n] >= r + keep_off_robots
            valid = valid and to_segment[c, n] >= r + keep_off_segment
            for j in range(k):
                valid = valid and to_placed[j, c, n] >= r + obstacles[2, j, n]
            if valid:
                first = c
                break
        if first < 0:
            failed[n] = True
            first = 0
        obstacles[0, k, n], obstacles[1, k, n], obstacles[2, k, n] = cx[first, n], cy[first, n], radius[first, n]


# -- one step of the dynamics and its events (`PursuitEvasionCore.step` up to the shaping) ---------
# torch keeps sin, cos, remainder, hypot and the evader's push sums; the loops compute the rest.


@njit(cache=True)
def arc_inputs_kernel(action, key, step, salts, hashing, unit, evader, random_evader, consts, v_out, w_out,
                      half_turn_out, mid_out, theta):  # pragma: no cover (numba)
    """numba: both robots' (v, w) (2, N) (the pursuer's action (N, 2) clipped; the evader's from its
    uniform draws when random_evader, else `evader` (2, N) as given) and the arc's half turn
    w dt / 2 and mid heading theta + w dt / 2 (2, N), theta (2, N) the headings. key, step (N,)
    int64, salts (2,) int64, hashing = [mask32, multiplier A, multiplier B, seed salt, step
    multiplier]; consts: pursuer v_max, w_max, evader v_max, w_max, dt / 2, 0, 1, 2."""
    v_max, w_max, evader_v_max, evader_w_max, half_dt = consts[0], consts[1], consts[2], consts[3], consts[4]
    zero, one, two = consts[5], consts[6], consts[7]
    mask, step_mul = hashing[0], hashing[4]
    for n in range(action.shape[0]):
        if random_evader:  # `uniforms(key, step, salts)`, then `random_evader`
            counter = key[n] ^ ((step[n] * step_mul) & mask)
            # a 24-bit integer times 2^-24 is exact in any float type; stored, it takes the arrays'
            v_out[1, n] = (_mix32(counter ^ salts[0], hashing) >> 8) * unit
            w_out[1, n] = (_mix32(counter ^ salts[1], hashing) >> 8) * unit
            ev, ew = v_out[1, n] * evader_v_max, (two * w_out[1, n] - one) * evader_w_max
        else:
            ev, ew = evader[0, n], evader[1, n]
        v_out[0, n], v_out[1, n] = _clamp(action[n, 0], zero, v_max), ev
        w_out[0, n], w_out[1, n] = _clamp(action[n, 1], -w_max, w_max), ew
        for who in range(2):
            turn = w_out[who, n] * half_dt
            half_turn_out[who, n] = turn
            mid_out[who, n] = theta[who, n] + turn


@njit(cache=True)
def arc_kernel(x, y, v, half_turn, mid, sin_half_turn, cos_mid, sin_mid, consts, x_out, y_out,
               wrap_out):  # pragma: no cover (numba)
    """numba: `unicycle_arc` of both robots (2, N) from torch's sin(half turn), cos and sin(mid),
    up to `wrap_angle`'s remainder: x_out, y_out and wrap_out = pi - (mid + half turn).
    consts: dt, 1, pi."""
    dt, one, pi = consts[0], consts[1], consts[2]
    for who in range(2):
        for n in range(x.shape[1]):
            turn = half_turn[who, n]
            factor = one if turn == 0 else sin_half_turn[who, n] / turn
            length = (v[who, n] * dt) * factor
            x_out[who, n] = x[who, n] + length * cos_mid[who, n]
            y_out[who, n] = y[who, n] + length * sin_mid[who, n]
            wrap_out[who, n] = pi - (mid[who, n] + turn)


@njit(cache=True)
def confine_start_kernel(x, y, obstacles, consts, x_out, y_out, away_x, away_y):  # pragma: no cover (numba)
    """numba: `_confine_evader`'s first clamp of the evader's proposed x, y (N,) into the arena and
    its offsets (K, N) from every obstacle centre. consts: half - robot radius."""
    inner = consts[0]
    for n in range(x.shape[0]):
        ex, ey = _clamp(x[n], -inner, inner), _clamp(y[n], -inner, inner)
        x_out[n], y_out[n] = ex, ey
        for k in range(obstacles.shape[1]):
            away_x[k, n] = ex - obstacles[0, k, n]
            away_y[k, n] = ey - obstacles[1, k, n]


@njit(cache=True)
def confine_push_kernel(away_x, away_y, gap, obstacles, present, consts, push_x, push_y,
                        contact_out):  # pragma: no cover (numba)
    """numba: the radial pushes (K, N) out of the obstacles the evader's body overlaps (before torch
    sums them over K): away * (contact / max(gap, 1e-12) - 1) where present and gap < contact,
    contact = radius + robot radius (written to contact_out). consts: robot radius, 1e-12, 1, 0."""
    robot_radius, tiny, one, zero = consts[0], consts[1], consts[2], consts[3]
    for k in range(gap.shape[0]):
        for n in range(gap.shape[1]):
            contact = obstacles[2, k, n] + robot_radius
            contact_out[k, n] = contact
            g = gap[k, n]
            stretch = contact / (tiny if g < tiny else g) - one if (present[k, n] and g < contact) else zero
            push_x[k, n] = away_x[k, n] * stretch
            push_y[k, n] = away_y[k, n] * stretch


@njit(cache=True)
def confine_move_kernel(x, y, sum_x, sum_y, obstacles, consts, x_out, y_out, away_x,
                        away_y):  # pragma: no cover (numba)
    """numba: the pushed evader clamped into the arena again, x_out, y_out (N,), and its offsets
    (K, N) from the obstacle centres (torch measures them). consts: half - robot radius."""
    inner = consts[0]
    for n in range(x.shape[0]):
        ex, ey = _clamp(x[n] + sum_x[n], -inner, inner), _clamp(y[n] + sum_y[n], -inner, inner)
        x_out[n], y_out[n] = ex, ey
        for k in range(obstacles.shape[1]):
            away_x[k, n] = ex - obstacles[0, k, n]
            away_y[k, n] = ey - obstacles[1, k, n]


@njit(cache=True)
def new_state_kernel(x, y, evader_x, evader_y, gap, contact, present, previous, wrapped, v, w, obstacles, consts,
                     robots_out, dx_out, dy_out, centre_dx, centre_dy):  # pragma: no cover (numba)
    """numba: the end of `_confine_evader` (a wedged evader keeps its previous x, y (2, N): rows x, y
    of the robots before the step) and the new robots (5, 2, N) (theta = pi - torch's remainder
    `wrapped` (2, N)); then the offsets torch measures: evader from pursuer (N,) and obstacle
    centres from pursuer (K, N). gap, contact (K, N) after the push; consts: contact tolerance, pi."""
    tolerance, pi = consts[0], consts[1]
    for n in range(x.shape[1]):
        ex, ey = evader_x[n], evader_y[n]
        for k in range(gap.shape[0]):
            if present[k, n] and gap[k, n] < contact[k, n] - tolerance:  # wedged
                ex, ey = previous[0, 1, n], previous[1, 1, n]
                break
        px, py = x[0, n], y[0, n]
        robots_out[0, 0, n], robots_out[0, 1, n] = px, ex
        robots_out[1, 0, n], robots_out[1, 1, n] = py, ey
        for who in range(2):
            robots_out[2, who, n] = pi - wrapped[who, n]
            robots_out[3, who, n] = v[who, n]
            robots_out[4, who, n] = w[who, n]
        dx_out[n], dy_out[n] = px - ex, py - ey
        for k in range(obstacles.shape[1]):
            centre_dx[k, n] = px - obstacles[0, k, n]
            centre_dy[k, n] = py - obstacles[1, k, n]


@njit(cache=True)
def events_kernel(robots, distance, centre_distance, obstacles, present, step, max_steps, consts, h_out, collided_out,
                  captured_out, truncated_out, reward_out):  # pragma: no cover (numba)
    """numba: the step's events from torch's distances: body barriers h_out (N, K + 4) as
    `body_barriers` (absent obstacles +inf), collided, captured (collision wins), truncated (N,)
    bool and the event reward (N,). consts: robot radius + safety margin, wall bound (half - robot
    radius - safety margin), half - robot radius, robot radius, capture radius, collision penalty,
    capture reward, 0, inf."""
    body, wall, inner, robot_radius, capture = consts[0], consts[1], consts[2], consts[3], consts[4]
    collision_penalty, capture_reward, zero, inf = consts[5], consts[6], consts[7], consts[8]
    obstacles_count = obstacles.shape[1]
    for n in range(distance.shape[0]):
        px, py = robots[0, 0, n], robots[1, 0, n]
        collided = False
        for k in range(obstacles_count):
            d = centre_distance[k, n]
            h_out[n, k] = d - (obstacles[2, k, n] + body) if present[k, n] else inf
            collided = collided or (present[k, n] and d <= obstacles[2, k, n] + robot_radius)
        h_out[n, obstacles_count] = wall - px
        h_out[n, obstacles_count + 1] = wall + px
        h_out[n, obstacles_count + 2] = wall - py
        h_out[n, obstacles_count + 3] = wall + py
        collided = collided or abs(px) >= inner or abs(py) >= inner
        captured = distance[n] <= capture and not collided
        collided_out[n], captured_out[n] = collided, captured
        truncated_out[n] = step[n] >= max_steps and not (captured or collided)
        reward_out[n] = collision_penalty if collided else (capture_reward if captured else zero)
