"""Control-barrier-function constraint rows for the pursuer's (v, w), batched.

Virtual control point
---------------------
A unicycle's position derivative ``p' = v [cos t, sin t]`` does not contain the turn rate w, so a
barrier on p alone cannot steer. We put the barrier on a point ``q = p + d [cos t, sin t]`` a
distance ``d = cbf.lookahead`` ahead of the pursuer:

    q' = J(t) u,   J(t) = [[cos t, -d sin t],
                           [sin t,  d cos t]],   u = (v, w)

so both v and w enter every constraint.

Barriers (on q)
---------------
- obstacle i: ``h_i = |q - c_i|^2 - rho_i^2``, ``rho_i = r_i + robot_radius + safety_margin + d``.
  Guarantee: ``|p - c_i| >= |q - c_i| - |q - p| = |q - c_i| - d``, so ``h_i >= 0`` implies
  ``|p - c_i| >= r_i + robot_radius + safety_margin``: the env's own barrier (the one the metrics
  use) is non-negative too.
- walls, in the env's order +x, -x, +y, -y: ``h = W - q_x``, ``W + q_x``, ``W - q_y``, ``W + q_y`` with
  ``W = L/2 - robot_radius - safety_margin - d``. Since ``|p_x - q_x| <= d``, ``h >= 0`` implies the
  env's wall barrier ``L/2 - R - margin -/+ p_x >= 0``.

Robust margin (the RCBF-QP filter)
----------------------------------
``robust_margin`` (m, >= 0; ``cbf.robust_margin`` for the RCBF filter, 0 everywhere else) inflates
every clearance: ``rho_i += robust_margin`` and ``W -= robust_margin``. The obstacle barriers stay
in m^2 and the walls in m (a margin added to h itself would mean m^2 for one and m for the
other). ``robust_margin = 0`` gives today's rows bit for bit (adding 0.0 is exact).

Constraint forms (rows ``A u <= b``)
------------------------------------
- ``ct`` (continuous time): ``grad_h(q) . J u + gamma h >= 0``, i.e.
  ``A_row = -grad_h(q) @ J``, ``b_row = gamma h``; gamma is a rate in 1/s.
- ``dcbf``, the FIRST-ORDER discrete form: ``h(x_{k+1}) >= (1 - gamma) h(x_k)`` with
  ``h(x_{k+1})`` replaced by its first-order Taylor expansion over one step ``dt``:
  ``h + dt grad_h . J u >= (1 - gamma) h``, i.e. ``-dt grad_h @ J u <= gamma h``. We divide the
  row by ``dt`` (same feasible set, rows on the scale of the ct rows and the bound rows):
  ``A_row = -grad_h @ J``, ``b_row = (gamma / dt) h``. So this form IS the ct form at rate
  ``gamma / dt`` (identical rows); gamma is a per-step fraction in (0, 1]. It does not make the
  exact discrete step invariant: the neglected second-order term can take ``h(x_{k+1})`` below
  ``(1 - gamma) h`` and below 0 (benchmarks/dcbf_invariance.py counts how often).
- ``dcbf_exact`` (model/dcbf_exact.py): the same condition on the exact arc step, enforced by
  re-linearising and re-solving; not a fixed set of rows, so `cbf_rows` refuses it.

Rows, in order: K obstacles, 4 walls (the M = K + 4 barrier rows, one gamma each), then 4 control
bounds ``v <= v_max``, ``-v <= 0``, ``w <= w_max``, ``-w <= w_max``: m = K + 8 rows in all.
Absent obstacles (``obstacle_mask`` False) are masked out (``mask`` False) and their rows hold the
harmless, non-zero row ``-v <= 1`` so that even a solver that ignored the mask would not break.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from numba import njit
from torch import Tensor

from model.qp.cpu_n2_kernels import contiguous

if TYPE_CHECKING:  # the env's SafetyState; any object with these fields works
    from env.core import SafetyState
    from model.config import CBFParams
    from env.config import EnvParams

FORMS = ("dcbf", "ct")
"""The forms that are a fixed set of rows (`cbf_rows`); ``dcbf_exact`` iterates (model/dcbf_exact.py)."""
NUM_WALLS = 4
NUM_BOUND_ROWS = 4
# The action-bound rows v <= high_v, -v <= -low_v, w <= high_w, -w <= -low_w (here v_max, 0, w_max,
# w_max: b_bounds); CBF-Beta's safe box appends them to its centres' QPs too.
BOUND_ROWS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))
_BOUND_ROWS_NP = np.array(BOUND_ROWS)


class CBFRows(NamedTuple):
    """The QP constraints ``A u <= b`` of one batch of states.

    A: (B, m, 2), b: (B, m), mask: (B, m) bool (True where the row is real), with m = K + 8.
    h: (B, M) barrier values on the virtual point, M = K + 4 (obstacles then walls +x, -x, +y, -y);
    absent obstacles are +inf.
    """

    A: Tensor
    b: Tensor
    mask: Tensor
    h: Tensor


def num_barriers(num_obstacles: int) -> int:
    """M: one barrier row per obstacle slot and per wall."""
    return num_obstacles + NUM_WALLS


def num_rows(num_obstacles: int) -> int:
    """m: barrier rows plus the four control-bound rows."""
    return num_obstacles + NUM_WALLS + NUM_BOUND_ROWS


def virtual_point(pursuer: Tensor, lookahead: float) -> Tensor:
    """q = p + d [cos t, sin t]; pursuer (..., 3) -> (..., 2)."""
    theta = pursuer[..., 2]
    return pursuer[..., :2] + lookahead * torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)


def check_robust_margin(robust_margin: float) -> float:
    """robust_margin as a float, or ValueError naming it and what is accepted (metres, >= 0)."""
    margin = float(robust_margin)
    if not (math.isfinite(margin) and margin >= 0.0):
        raise ValueError(f"robust_margin={robust_margin!r} is invalid; accepted: a finite number of metres >= 0")
    return margin


def barriers_at(
    q: Tensor, safety: "SafetyState", env: "EnvParams", lookahead: float, robust_margin: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The look-ahead barriers evaluated at a point q (B, 2) (m), e.g. the exact next look-ahead point.

    The radii and wall bounds are those of the look-ahead point (``lookahead`` m ahead of the
    body), inflated by ``robust_margin`` m. Returns h (B, M) (m^2 for obstacles, m for walls;
    absent obstacles hold a finite placeholder), grad (B, M, 2) = dh/dq, mask (B, M) bool.
    On the CPU, for float32 or float64 inputs that need no gradient, one numba loop over the states
    (`_barriers_kernel`) computes the same numbers bit for bit (tested).
    """
    if _compiles(q, safety.obstacle_centres, safety.obstacle_radii):
        return _barriers_compiled(q, safety, env, lookahead, robust_margin)
    return _barriers_torch(q, safety, env, lookahead, robust_margin)


def _barriers_torch(
    q: Tensor, safety: "SafetyState", env: "EnvParams", lookahead: float, robust_margin: float
) -> tuple[Tensor, Tensor, Tensor]:
    """`barriers_at` as batched tensor ops (any device, autograd)."""
    batch = q.shape[0]
    present = safety.obstacle_mask.to(torch.bool)
    # Absent slots may hold anything (zeros, garbage, inf): replace before any arithmetic so that no
    # NaN/inf reaches a row or a gradient.
    centres = torch.where(present.unsqueeze(-1), safety.obstacle_centres, q.detach().unsqueeze(1) + 1.0)
    radii = torch.where(present, safety.obstacle_radii, torch.zeros_like(safety.obstacle_radii))
    # robust_margin = 0.0 adds exactly 0.0: today's rows bit for bit
    rho = radii + (env.robot_radius + env.safety_margin + lookahead + robust_margin)
    offset = q.unsqueeze(1) - centres  # (B, K, 2)
    h_obstacles = (offset * offset).sum(-1) - rho * rho
    grad_obstacles = 2.0 * offset

    wall = env.arena_size / 2 - env.robot_radius - env.safety_margin - lookahead - robust_margin
    qx, qy = q[:, 0], q[:, 1]
    h_walls = torch.stack((wall - qx, wall + qx, wall - qy, wall + qy), dim=-1)  # (B, 4)
    grad_walls = q.new_tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]).expand(batch, NUM_WALLS, 2)

    h = torch.cat((h_obstacles, h_walls), dim=1)
    grad = torch.cat((grad_obstacles, grad_walls), dim=1)
    mask = torch.cat((present, torch.ones(batch, NUM_WALLS, dtype=torch.bool, device=q.device)), dim=1)
    return h, grad, mask


def _check_gamma(gamma: float | Tensor, form: str, batch: int, barriers: int, like: Tensor) -> Tensor:
    if isinstance(gamma, Tensor):
        if gamma.dim() > 2:
            raise ValueError(f"gamma has shape {tuple(gamma.shape)}; accepted: a float, (M,) or (B, M) = ({batch}, {barriers})")
        try:
            return torch.broadcast_to(gamma.to(like.dtype), (batch, barriers))
        except RuntimeError:
            raise ValueError(
                f"gamma has shape {tuple(gamma.shape)}; accepted: a float, (M,) or (B, M) = ({batch}, {barriers})"
            ) from None
    return like.new_full((batch, barriers), _check_gamma_value(gamma, form))


def _check_gamma_value(gamma: float, form: str) -> float:
    """gamma as a float, or ValueError naming it and the form's accepted range."""
    gamma = float(gamma)
    upper = 1.0 if form == "dcbf" else float("inf")
    if not 0.0 < gamma <= upper:
        accepted = "(0, 1] (a per-step fraction)" if form == "dcbf" else "> 0 (a rate in 1/s)"
        raise ValueError(f"gamma={gamma} is invalid for the {form} form; accepted: {accepted}")
    return gamma


class CBFGeometry(NamedTuple):
    """The gamma-free part of the rows of one batch of states (all but ``b`` of the barrier rows):
    computed once per PPO update for the whole rollout and indexed per minibatch.

    A (B, m, 2) and mask (B, m) as in CBFRows; h (B, M) finite barrier values (absent obstacles
    hold a placeholder); barrier_mask (B, M); b_bounds (B, 4) the control-bound right sides.
    """

    A: Tensor
    mask: Tensor
    h: Tensor
    barrier_mask: Tensor
    b_bounds: Tensor

    def index(self, idx: Tensor) -> "CBFGeometry":
        """The rows of the states `idx` (a minibatch)."""
        return CBFGeometry(*(x.index_select(0, idx) for x in self))


def cbf_geometry(
    safety: "SafetyState", env_params: "EnvParams", cbf_params: "CBFParams", robust_margin: float = 0.0,
    implementation: str = "compiled",
) -> CBFGeometry:
    """The gamma-free part of `cbf_rows` (see there for the shapes of safety and robust_margin).

    implementation: "compiled" (on the CPU, float32 or float64 states that need no gradient: one
    numba loop over the states, `_geometry_kernel`, equal to the torch code bit for bit; elsewhere
    the torch code) or "torch" (the batched tensor ops: any device, autograd)."""
    if implementation not in ("compiled", "torch"):
        raise ValueError(f"cbf_geometry implementation={implementation!r}; accepted: 'compiled' or 'torch'")
    pursuer = safety.pursuer
    if pursuer.dim() != 2 or pursuer.shape[-1] != 3:
        raise ValueError(f"safety.pursuer has shape {tuple(pursuer.shape)}; accepted: (B, 3) = x, y, theta")
    batch, obstacles = safety.obstacle_radii.shape[0], safety.obstacle_radii.shape[-1]
    if safety.obstacle_centres.shape != (batch, obstacles, 2) or safety.obstacle_mask.shape != (batch, obstacles):
        raise ValueError(
            f"safety obstacle fields disagree: centres {tuple(safety.obstacle_centres.shape)}, radii "
            f"{tuple(safety.obstacle_radii.shape)}, mask {tuple(safety.obstacle_mask.shape)}; accepted: (B, K, 2), (B, K), (B, K)"
        )
    margin = check_robust_margin(robust_margin)
    if implementation == "compiled" and _compiles(pursuer, safety.obstacle_centres, safety.obstacle_radii):
        return _geometry_compiled(safety, env_params, cbf_params.lookahead, margin)
    lookahead = cbf_params.lookahead
    q = virtual_point(pursuer, lookahead)
    h, grad, barrier_mask = _barriers_torch(q, safety, env_params, lookahead, margin)
    theta = pursuer[:, 2]
    cos, sin = torch.cos(theta), torch.sin(theta)
    # grad @ J(theta): J's columns are dq/dv = (cos, sin) and dq/dw = d (-sin, cos).
    a_v = grad[..., 0] * cos.unsqueeze(1) + grad[..., 1] * sin.unsqueeze(1)
    a_w = lookahead * (-grad[..., 0] * sin.unsqueeze(1) + grad[..., 1] * cos.unsqueeze(1))
    a_barrier = -torch.stack((a_v, a_w), dim=-1)  # (B, M, 2)

    # Masked rows: "-v <= 1", non-zero and always satisfied within the bounds.
    placeholder_a = pursuer.new_tensor([-1.0, 0.0]).expand_as(a_barrier)
    a_barrier = torch.where(barrier_mask.unsqueeze(-1), a_barrier, placeholder_a)

    v_max, w_max = env_params.pursuer_v_max, env_params.pursuer_w_max
    a_bounds = pursuer.new_tensor(BOUND_ROWS).expand(batch, NUM_BOUND_ROWS, 2)
    b_bounds = pursuer.new_tensor([v_max, 0.0, w_max, w_max]).expand(batch, NUM_BOUND_ROWS)
    A = torch.cat((a_barrier, a_bounds), dim=1)
    mask = torch.cat((barrier_mask, torch.ones(batch, NUM_BOUND_ROWS, dtype=torch.bool, device=pursuer.device)), dim=1)
    return CBFGeometry(A=A, mask=mask, h=h, barrier_mask=barrier_mask, b_bounds=b_bounds)


def _compiles(*floats: Tensor) -> bool:
    """Whether the compiled loops take these tensors: CPU, one float32 or float64 dtype, no
    gradient wanted (the loops have no autograd), and not the accelerators' sync-free path forced
    on the CPU by a test (`model.qp.routing.sync_free`: there a host copy stands for a sync)."""
    from model.qp import routing

    dtype = floats[0].dtype
    return dtype in (torch.float32, torch.float64) and not routing.sync_free(floats[0].device) and all(
        t.dtype == dtype and t.device.type == "cpu" and not t.requires_grad for t in floats)


def _barrier_constants(env: "EnvParams", lookahead: float, margin: float, dtype: torch.dtype) -> np.ndarray:
    """(6,) in the dtype: lookahead, rho's added clearance, the wall bound, 1, 2, 0. The Python-float
    sums are formed as `barriers_at` forms them, then rounded once to the dtype, as torch rounds a
    Python number it combines with a tensor."""
    rho_add = env.robot_radius + env.safety_margin + lookahead + margin
    wall = env.arena_size / 2 - env.robot_radius - env.safety_margin - lookahead - margin
    return np.array([lookahead, rho_add, wall, 1.0, 2.0, 0.0], np.float32 if dtype == torch.float32 else np.float64)


def _barriers_compiled(q: Tensor, safety: "SafetyState", env: "EnvParams", lookahead: float, margin: float
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """`barriers_at` through `_barriers_kernel` (CPU, no autograd)."""
    batch, obstacles = safety.obstacle_radii.shape
    consts = _barrier_constants(env, lookahead, margin, q.dtype)
    h = np.empty((batch, obstacles + NUM_WALLS), consts.dtype)
    grad = np.empty((batch, obstacles + NUM_WALLS, 2), consts.dtype)
    mask = np.empty((batch, obstacles + NUM_WALLS), np.bool_)
    _barriers_kernel(*contiguous(q.detach().numpy(), safety.obstacle_centres.detach().numpy(),
                                 safety.obstacle_radii.detach().numpy(), safety.obstacle_mask.to(torch.bool).numpy()),
                     consts, h, grad, mask)
    return torch.from_numpy(h), torch.from_numpy(grad), torch.from_numpy(mask)


def _geometry_compiled(safety: "SafetyState", env: "EnvParams", lookahead: float, margin: float) -> CBFGeometry:
    """`cbf_geometry`'s torch code as one numba loop over the states (CPU, no autograd): a few
    dozen small tensor ops per call cost more than the arithmetic. cos, sin come from torch's own
    kernels (their vectorised code rounds differently from libm's)."""
    pursuer = safety.pursuer
    theta = pursuer[:, 2]
    cos, sin = torch.cos(theta), torch.sin(theta)
    batch, obstacles = safety.obstacle_radii.shape
    barriers = obstacles + NUM_WALLS
    consts = _barrier_constants(env, lookahead, margin, pursuer.dtype)
    A = np.empty((batch, barriers + NUM_BOUND_ROWS, 2), consts.dtype)
    h = np.empty((batch, barriers), consts.dtype)
    grad = np.empty((batch, barriers, 2), consts.dtype)
    barrier_mask = np.empty((batch, barriers), np.bool_)
    _geometry_kernel(*contiguous(pursuer.detach().numpy(), cos.numpy(), sin.numpy(), safety.obstacle_centres.detach().numpy(),
                                 safety.obstacle_radii.detach().numpy(), safety.obstacle_mask.to(torch.bool).numpy()),
                     consts, A, h, grad, barrier_mask)
    A[:, barriers:] = _BOUND_ROWS_NP  # (a NumPy constant: converting the tuple costs more than the copy)
    mask = np.ones((batch, barriers + NUM_BOUND_ROWS), np.bool_)
    mask[:, :barriers] = barrier_mask
    b_bounds = torch.tensor([env.pursuer_v_max, 0.0, env.pursuer_w_max, env.pursuer_w_max], dtype=pursuer.dtype)
    return CBFGeometry(A=torch.from_numpy(A), mask=torch.from_numpy(mask), h=torch.from_numpy(h),
                       barrier_mask=torch.from_numpy(barrier_mask), b_bounds=b_bounds.expand(batch, NUM_BOUND_ROWS))


@njit(cache=True, inline="always")
def _state_barriers(n, qx, qy, centres, radii, present, consts, h, grad, barrier_mask):  # pragma: no cover
    """`_barriers_torch` for state n at the point (qx, qy), operation for operation in the arrays'
    dtype (no fast-math: no fused multiply-add): writes h[n], grad[n], barrier_mask[n]."""
    obstacles = radii.shape[1]
    rho_add, wall, one, two, zero = consts[1], consts[2], consts[3], consts[4], consts[5]
    for k in range(obstacles):
        real = present[n, k]
        # absent slots: centre q + 1, radius 0 (finite placeholders, masked out)
        cx = centres[n, k, 0] if real else qx + one
        cy = centres[n, k, 1] if real else qy + one
        rho = (radii[n, k] if real else zero) + rho_add
        ox, oy = qx - cx, qy - cy
        h[n, k] = (ox * ox + oy * oy) - rho * rho
        grad[n, k, 0], grad[n, k, 1] = two * ox, two * oy
        barrier_mask[n, k] = real
    # walls +x, -x, +y, -y: h = wall - qx, wall + qx, wall - qy, wall + qy
    j = obstacles
    h[n, j], h[n, j + 1], h[n, j + 2], h[n, j + 3] = wall - qx, wall + qx, wall - qy, wall + qy
    grad[n, j, 0], grad[n, j, 1], grad[n, j + 1, 0], grad[n, j + 1, 1] = -one, zero, one, zero
    grad[n, j + 2, 0], grad[n, j + 2, 1], grad[n, j + 3, 0], grad[n, j + 3, 1] = zero, -one, zero, one
    for w in range(NUM_WALLS):
        barrier_mask[n, j + w] = True


@njit(cache=True)
def _barriers_kernel(q, centres, radii, present, consts, h, grad, barrier_mask):  # pragma: no cover
    """numba: `_barriers_torch`. q (B, 2), centres (B, K, 2), radii (B, K), present (B, K) bool,
    consts `_barrier_constants`; writes h (B, K + 4), grad (B, K + 4, 2), barrier_mask (B, K + 4)."""
    for n in range(q.shape[0]):
        _state_barriers(n, q[n, 0], q[n, 1], centres, radii, present, consts, h, grad, barrier_mask)


@njit(cache=True)
def _geometry_kernel(pursuer, cos, sin, centres, radii, present, consts, A, h, grad, barrier_mask):  # pragma: no cover
    """numba: `cbf_geometry`'s torch code per state. pursuer (B, 3), cos, sin (B,) of theta, the
    obstacles and consts as `_barriers_kernel`; writes the barrier rows of A (B, >= K + 4, 2) and
    h, grad (scratch), barrier_mask as `_barriers_kernel` at the look-ahead point."""
    d, one, zero = consts[0], consts[3], consts[5]
    for n in range(pursuer.shape[0]):
        c, s = cos[n], sin[n]
        _state_barriers(n, pursuer[n, 0] + d * c, pursuer[n, 1] + d * s, centres, radii, present, consts, h, grad,
                        barrier_mask)
        for k in range(h.shape[1]):
            if barrier_mask[n, k]:  # -grad @ J(theta)
                gx, gy = grad[n, k, 0], grad[n, k, 1]
                A[n, k, 0] = -(gx * c + gy * s)
                A[n, k, 1] = -(d * (-gx * s + gy * c))
            else:  # "-v <= 1": non-zero, always satisfied within the bounds
                A[n, k, 0], A[n, k, 1] = -one, zero


def cbf_rows_from_geometry(geometry: CBFGeometry, env_params: "EnvParams", gamma: float | Tensor, form: str) -> CBFRows:
    """`cbf_rows` from its gamma-free part: b of the barrier rows = gamma h (gamma / dt for dcbf)."""
    _check_row_form(form)
    h, barrier_mask = geometry.h, geometry.barrier_mask
    gamma = _check_gamma(gamma, form, h.shape[0], h.shape[1], h)
    if form == "dcbf":
        gamma = gamma / env_params.dt
    b_barrier = torch.where(barrier_mask, gamma * h, torch.ones_like(h))
    b = torch.cat((b_barrier, geometry.b_bounds), dim=1)
    h_out = torch.where(barrier_mask, h, torch.full_like(h, float("inf")))
    return CBFRows(A=geometry.A, b=b, mask=geometry.mask, h=h_out)


def cbf_rows(
    safety: "SafetyState",
    env_params: "EnvParams",
    cbf_params: "CBFParams",
    gamma: float | Tensor,
    form: str | None = None,
    robust_margin: float = 0.0,
) -> CBFRows:
    """Constraint rows ``A u <= b`` on u = (v, w) for a batch of states (see the module docstring).

    safety: pursuer (B, 3), obstacle_centres (B, K, 2), obstacle_radii (B, K), obstacle_mask (B, K).
    gamma: float (fixed) or a tensor (B, M) / (M,) (e.g. from a network; differentiable), M = K + 4.
    form: "dcbf" (first order; = "ct" at gamma / dt) or "ct"; None takes ``cbf_params.form``.
    robust_margin: metres (>= 0) added to every clearance (RCBF-QP filter: ``cbf.robust_margin``);
    0 gives the plain rows.
    Returns CBFRows(A (B, m, 2), b (B, m), mask (B, m), h (B, M)), m = K + 8, in safety's dtype/device.
    No host synchronisation. On the CPU, for states and a gamma that need no gradient, the rows
    come from `cbf_rows_arrays`' one compiled loop (the same numbers, bit for bit); elsewhere from
    the batched tensor ops (any device, autograd).
    """
    form = cbf_params.form if form is None else form
    _check_row_form(form)
    pursuer = safety.pursuer
    if _compiles(pursuer, safety.obstacle_centres, safety.obstacle_radii) and not (
            isinstance(gamma, Tensor) and gamma.requires_grad):
        batch, barriers = safety.obstacle_radii.shape[0], safety.obstacle_radii.shape[-1] + NUM_WALLS
        if isinstance(gamma, Tensor):  # (B, M) or (M,), as the tensor route takes it
            gamma = _check_gamma(gamma, form, batch, barriers, pursuer).contiguous().numpy()
        A, b, mask, h, barrier_mask = cbf_rows_arrays(safety, env_params, cbf_params, gamma, form, robust_margin)
        h = np.where(barrier_mask, h, np.array(np.inf, h.dtype))
        return CBFRows(A=torch.from_numpy(A), b=torch.from_numpy(b), mask=torch.from_numpy(mask), h=torch.from_numpy(h))
    return cbf_rows_from_geometry(cbf_geometry(safety, env_params, cbf_params, robust_margin), env_params, gamma, form)


def cbf_rows_arrays(
    safety: "SafetyState",
    env_params: "EnvParams",
    cbf_params: "CBFParams",
    gamma: float | np.ndarray,
    form: str | None = None,
    robust_margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`cbf_rows` on the CPU as NumPy arrays: the gamma-free part and the right sides in one
    compiled loop (`_rows_kernel`), for the NumPy rollout forwards (model/numpy_rollout.py), where
    the tensor plumbing between `cbf_geometry` and `cbf_rows_from_geometry` cost three to four
    times their arithmetic at 256 envs.

    safety: CPU tensors of one float dtype, float32 or float64, that need no gradient (the
    compiled route of `cbf_geometry`); gamma: a float, or an array (B, M) in safety's dtype (a
    gamma per state and barrier, e.g. BarrierNet's heads); form and robust_margin as `cbf_rows`.
    Returns A (B, m, 2), b (B, m), mask (B, m), h (B, M) (absent obstacles: the finite
    placeholder values), barrier_mask (B, M): bit for bit `cbf_rows`'s A, b, mask and
    `cbf_geometry`'s h and barrier_mask (their division gamma / dt included, in the dtype).
    """
    form = cbf_params.form if form is None else form
    _check_row_form(form)
    pursuer = safety.pursuer
    if not _compiles(pursuer, safety.obstacle_centres, safety.obstacle_radii):
        raise ValueError("cbf_rows_arrays takes CPU float32 or float64 states of one dtype that need no gradient; "
                         "use cbf_rows for the others")
    batch, obstacles = safety.obstacle_radii.shape
    barriers = obstacles + NUM_WALLS
    if pursuer.shape != (batch, 3) or safety.obstacle_centres.shape != (batch, obstacles, 2) or \
            safety.obstacle_mask.shape != (batch, obstacles):
        raise ValueError(
            f"safety fields disagree: pursuer {tuple(pursuer.shape)}, centres {tuple(safety.obstacle_centres.shape)}, "
            f"radii {tuple(safety.obstacle_radii.shape)}, mask {tuple(safety.obstacle_mask.shape)}; accepted: "
            "(B, 3), (B, K, 2), (B, K), (B, K)")
    consts = _barrier_constants(env_params, cbf_params.lookahead, check_robust_margin(robust_margin), pursuer.dtype)
    dtype = consts.dtype
    if isinstance(gamma, np.ndarray):
        if gamma.shape != (batch, barriers) or gamma.dtype != dtype:
            raise ValueError(f"gamma has shape {gamma.shape} and dtype {gamma.dtype}; accepted: a float or an array "
                             f"({batch}, {barriers}) of {np.dtype(dtype).name}")
        gamma = np.ascontiguousarray(gamma)
    else:
        # its range by the torch route's rule, rounded once to the dtype, as new_full does
        gamma = np.full((batch, barriers), _check_gamma_value(gamma, form), dtype)
    theta = pursuer[:, 2]
    cos, sin = torch.cos(theta), torch.sin(theta)  # torch's kernels, as the torch code rounds them
    bounds = np.array([env_params.pursuer_v_max, 0.0, env_params.pursuer_w_max, env_params.pursuer_w_max], dtype)
    A = np.empty((batch, barriers + NUM_BOUND_ROWS, 2), dtype)
    b = np.empty((batch, barriers + NUM_BOUND_ROWS), dtype)
    mask = np.empty((batch, barriers + NUM_BOUND_ROWS), np.bool_)
    h, grad = np.empty((batch, barriers), dtype), np.empty((batch, barriers, 2), dtype)
    barrier_mask = np.empty((batch, barriers), np.bool_)
    _rows_kernel(*contiguous(pursuer.detach().numpy(), cos.numpy(), sin.numpy(), safety.obstacle_centres.detach().numpy(),
                             safety.obstacle_radii.detach().numpy(), safety.obstacle_mask.to(torch.bool).numpy()),
                 consts, gamma, dtype.type(env_params.dt), form == "dcbf", bounds, _BOUND_ROWS_NP.astype(dtype),
                 A, b, h, grad, barrier_mask, mask)
    return A, b, mask, h, barrier_mask


@njit(cache=True)
def _rows_kernel(pursuer, cos, sin, centres, radii, present, consts, gamma, dt, divide, bounds, bound_rows,
                 A, b, h, grad, barrier_mask, mask):  # pragma: no cover
    """numba: `_geometry_kernel`, then the rows' right sides as `cbf_rows_from_geometry` forms them
    (gamma / dt when divide, times h, on the barrier rows; 1 on absent ones; then the bounds), the
    bound rows and the mask. gamma (B, M), dt a scalar of the dtype, bounds (4,), bound_rows (4, 2);
    writes A (B, M + 4, 2), b and mask (B, M + 4), h, grad (scratch), barrier_mask (B, M)."""
    _geometry_kernel(pursuer, cos, sin, centres, radii, present, consts, A, h, grad, barrier_mask)
    barriers, one = h.shape[1], consts[3]
    for n in range(pursuer.shape[0]):
        for k in range(barriers):
            real = barrier_mask[n, k]
            if real:
                g = gamma[n, k] / dt if divide else gamma[n, k]
                b[n, k] = g * h[n, k]
            else:
                b[n, k] = one
            mask[n, k] = real
        for j in range(bound_rows.shape[0]):
            A[n, barriers + j, 0], A[n, barriers + j, 1] = bound_rows[j, 0], bound_rows[j, 1]
            b[n, barriers + j] = bounds[j]
            mask[n, barriers + j] = True


def _check_row_form(form: str) -> None:
    if form == "dcbf_exact":
        raise ValueError(
            "form='dcbf_exact' has no fixed rows (it re-linearises at each proposal); accepted here: "
            f"{FORMS}; use model.dcbf_exact.exact_dcbf_action for it"
        )
    if form not in FORMS:
        raise ValueError(f"form={form!r} is unknown; accepted: {FORMS}")
