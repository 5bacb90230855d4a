"""The exact discrete-time CBF: ``h(q+) >= (1 - gamma) h(q)`` on the true arc step, not its Taylor expansion.

Why
---
The first-order ``dcbf`` rows (model/cbf.py) enforce ``h(q) + dt grad_h(q) . J u >= (1 - gamma) h(q)``,
which is the ``ct`` form at rate ``gamma / dt``: the step's second-order term (the arc's curvature,
the obstacle barrier's curvature) is ignored, and one exact step can end with
``h(q+) < (1 - gamma) h(q)`` and even ``h(q+) < 0`` (benchmarks/dcbf_invariance.py counts it).

The exact next look-ahead point
-------------------------------
With u = (v, w) held for one step dt (the env's arc integration, `env.core.unicycle_step`),
the look-ahead point q = p + d e(theta) moves to

    q+ = q + dt sinc(eta) R(eta) J(theta) u,    eta = w dt / 2,    sinc(eta) = sin(eta) / eta,

with J(theta) = [e(theta), d e_perp(theta)] as in model/cbf.py and R(eta) the rotation by eta.
We evaluate q+ by stepping the pose with the env's own `unicycle_step` and taking its look-ahead
point, so the barrier we enforce is the one of the step the env will take (same arithmetic).

The iteration (sequential linearisation)
----------------------------------------
1. Linearise every barrier at the proposal u0 (clipped to the action box):
   ``h(q+(u0)) + g . (u - u0) >= (1 - gamma) h(q)``, ``g = dq+/du(u0)' grad_h(q+(u0))``; rows
   ``A u <= b`` with ``A = -g / dt``, ``b = (h(q+(u0)) - g . u0 - h(q)) / dt + (gamma / dt) h(q)``
   (divided by dt like the first-order rows; at u0 = 0 they ARE the first-order rows).
2. Solve the projection QP ``min 1/2 (u - u_ref)' H (u - u_ref)`` s.t. those rows and the action
   box (`model.qp.solve_qp`), step the true dynamics with its answer and test the exact
   condition for every barrier: ``h(q+) >= (1 - gamma) h(q)`` (strictly; the linearised rows
   aim tol / 2 inside it so that the iteration's fixed point passes despite round-off).
3. Where it fails, re-linearise at the answer and re-solve, up to ``cbf.exact_max_iters`` rounds;
   where the linearised QP was infeasible, re-linearise at the stop action u = 0 instead (there
   the rows are the first-order rows, which always admit u = 0 when h >= 0, while the curvature
   of a turn can make rows linearised far from 0 exclude it).
4. Last resort, a line search toward the stop action: u = s u_k with the largest s in [0, 1]
   (on a grid refined three times, to 64^-3) whose step passes the test. The stop action (v = w = 0) leaves the
   pursuer, hence q, in place: h(q+) = h(q) >= (1 - gamma) h(q) whenever h(q) >= 0, so this
   always succeeds from a state inside the safe set. Where it cannot (some h(q) < 0), the step is
   flagged infeasible and the last QP answer is returned.
The returned ``feasible`` flag re-tests the returned action: ``h(q+) - (1 - gamma) h(q) >= -tol``
for every barrier, tol = 1e-9 (float64) or 1e-6 x the size of the numbers in h (float32:
(|q+| + |c| + rho)^2 for an obstacle, the wall bound + |q+| for a wall). So every element flagged
feasible satisfies the exact condition on the true step to tol.

Gradients (BarrierNet's layer)
------------------------------
The returned action is the answer of the LAST linearised QP solved for that element (times the
line search's factor s, held constant, where the line search ran). Autograd differentiates that QP
with its linearisation point held fixed: d u / d u_ref and d u / d gamma are those of the final
linearised problem (gamma enters its b as (gamma / dt) h(q), exactly as in the first-order rows),
not of the fixed point of the iteration (the dependence of the linearisation point on u_ref and
gamma is not differentiated). At a converged element the two differ by the curvature terms
of one step, O(dt^2).

Cost: one QP solve per round on the whole batch and one host synchronisation per round (to stop
early when every element passed); states far from every barrier pass after the first round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from env.core import unicycle_step
from model.cbf import (
    NUM_BOUND_ROWS,
    NUM_WALLS,
    CBFRows,
    _check_gamma,
    barriers_at,
    check_robust_margin,
    virtual_point,
)
from model.qp import solve_qp

if TYPE_CHECKING:
    from env.core import SafetyState
    from model.config import CBFParams
    from env.config import EnvParams

FLOAT64_TOL = 1e-9
"""Absolute tolerance of the exact condition in float64 (m^2 for obstacles, m for walls)."""
FLOAT32_RTOL = 1e-6
"""Tolerance of the exact condition in float32, relative to the size of the numbers in h."""
LINE_SEARCH_POINTS = 64
LINE_SEARCH_STAGES = 3
"""The last-resort line search toward the stop action tests 64 factors per stage, 3 stages: s to 64^-3."""


class ExactDCBFSolution(NamedTuple):
    """The exact discrete-time CBF projection of a batch of B proposals (M = K + 4 barriers).

    u: (B, 2) action (v [m/s], w [rad/s]), inside the action box.
    feasible: (B,) bool, True where ``h(q+) >= (1 - gamma) h(q)`` holds on the true step for
        every barrier (to the module's tolerance); False: no such action was found (some h(q) < 0).
    h: (B, M) barrier values at q now (absent obstacles +inf).
    h_next: (B, M) barrier values at the exact next look-ahead point under u (absent +inf).
    rounds: (B,) int64, linearised QPs solved until the element's answer was accepted (or all).
    line_search: (B,) bool, True where the stop-action line search gave the answer.
    rows: CBFRows of the last linearised QP of each element (A (B, m, 2), b (B, m), mask, h).
    active: (B, 2) int64 | None, that QP's active set (solve_qp's ``active``).
    """

    u: Tensor
    feasible: Tensor
    h: Tensor
    h_next: Tensor
    rounds: Tensor
    line_search: Tensor
    rows: CBFRows
    active: Tensor | None


def next_lookahead_point(pursuer: Tensor, u: Tensor, lookahead: float, dt: float) -> Tensor:
    """q+ (B, 2): the look-ahead point after one exact arc step of pursuer (B, 3) under u (B, 2)."""
    return virtual_point(unicycle_step(pursuer, u[:, 0], u[:, 1], dt), lookahead)


def _sinc_and_derivative(eta: Tensor) -> tuple[Tensor, Tensor]:
    """sin(eta) / eta and its derivative (eta cos eta - sin eta) / eta^2, with series near 0."""
    small = eta.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(eta), eta)
    sinc = torch.where(small, 1.0 - eta * eta / 6.0, torch.sin(safe) / safe)
    dsinc = torch.where(small, -eta / 3.0, (safe * torch.cos(safe) - torch.sin(safe)) / (safe * safe))
    return sinc, dsinc


def next_lookahead_jacobian(pursuer: Tensor, u: Tensor, lookahead: float, dt: float) -> Tensor:
    """d q+ / d u (B, 2, 2) at u (B, 2): column 0 is d/dv, column 1 d/dw.

    From q+ = p + v dt sinc(eta) e(theta + eta) + d e(theta + 2 eta), eta = w dt / 2:
    d/dv = dt sinc(eta) e(a);  d/dw = v dt (dt / 2) (sinc'(eta) e(a) + sinc(eta) e_perp(a))
    + d dt e_perp(theta + 2 eta), with a = theta + eta, e = (cos, sin), e_perp = (-sin, cos).
    """
    theta, v, w = pursuer[:, 2], u[:, 0], u[:, 1]
    eta = w * (0.5 * dt)
    sinc, dsinc = _sinc_and_derivative(eta)
    a = theta + eta
    cos_a, sin_a = torch.cos(a), torch.sin(a)
    end = theta + 2.0 * eta
    d_v = torch.stack((dt * sinc * cos_a, dt * sinc * sin_a), dim=-1)
    arc = v * dt * (0.5 * dt)
    d_w = torch.stack(
        (
            arc * (dsinc * cos_a - sinc * sin_a) - lookahead * dt * torch.sin(end),
            arc * (dsinc * sin_a + sinc * cos_a) + lookahead * dt * torch.cos(end),
        ),
        dim=-1,
    )
    return torch.stack((d_v, d_w), dim=-1)


def _size_of_h(q: Tensor, safety: "SafetyState", env: "EnvParams", lookahead: float, margin: float) -> Tensor:
    """(B, M) the size of the numbers that make up h at q (float32 rounding scales with it)."""
    reach = q.abs().amax(-1, keepdim=True)  # (B, 1)
    present = safety.obstacle_mask.to(torch.bool)
    centres = torch.where(present.unsqueeze(-1), safety.obstacle_centres, torch.zeros_like(safety.obstacle_centres))
    radii = torch.where(present, safety.obstacle_radii, torch.zeros_like(safety.obstacle_radii))
    rho = radii + (env.robot_radius + env.safety_margin + lookahead + margin)
    obstacles = (reach + centres.abs().amax(-1) + rho) ** 2
    wall = env.arena_size / 2 - env.robot_radius - env.safety_margin - lookahead - margin
    walls = (abs(wall) + reach).expand(q.shape[0], NUM_WALLS)
    return torch.cat((obstacles, walls), dim=1)


class _Problem:
    """What every round needs: the states, gamma, the targets and the tolerances."""

    def __init__(self, safety, env, cbf, gamma, margin):
        self.safety, self.env, self.margin = safety, env, margin
        self.lookahead, self.dt = cbf.lookahead, env.dt
        pursuer = safety.pursuer
        self.pursuer = pursuer.detach()
        self.h, _, self.barrier_mask = barriers_at(virtual_point(self.pursuer, self.lookahead), safety, env, self.lookahead, margin)
        batch, barriers = self.h.shape
        self.gamma = _check_gamma(gamma, "dcbf", batch, barriers, self.h)  # (B, M), may carry a gradient
        self.target = (1.0 - self.gamma.detach()) * self.h  # h(q+) must reach this
        self.low = pursuer.new_tensor([0.0, -env.pursuer_w_max])
        self.high = pursuer.new_tensor([env.pursuer_v_max, env.pursuer_w_max])
        self.float64 = pursuer.dtype == torch.float64

    def index(self, idx: Tensor) -> "_Problem":
        """The same problem for the elements idx (1-D int64) only (gamma keeps its gradient)."""
        part = object.__new__(_Problem)
        part.__dict__.update(self.__dict__)
        part.safety = type(self.safety)(*(t[idx] for t in self.safety))
        for name in ("pursuer", "h", "barrier_mask", "gamma", "target"):
            setattr(part, name, getattr(self, name)[idx])
        return part

    def clamp(self, u: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(u, self.high), self.low)

    def next_barriers(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h(q+(u)) (B, M), its gradient in q (B, M, 2), and q+ (B, 2) for u (B, 2) (no autograd)."""
        q_next = next_lookahead_point(self.pursuer, u, self.lookahead, self.dt)
        h_next, grad, _ = barriers_at(q_next, self.safety, self.env, self.lookahead, self.margin)
        return h_next, grad, q_next

    def tolerance(self, q: Tensor) -> Tensor | float:
        """The exact condition's tolerance at look-ahead points q (B, 2): 1e-9 (float64), else (B, M)."""
        if self.float64:
            return FLOAT64_TOL
        return FLOAT32_RTOL * _size_of_h(q, self.safety, self.env, self.lookahead, self.margin)

    def slack(self, u: Tensor, tolerant: bool = True) -> tuple[Tensor, Tensor]:
        """(min over present barriers of h(q+) - (1 - gamma) h(q) (+ tol if tolerant)) (B,), and h(q+) (B, M)."""
        h_next, _, q_next = self.next_barriers(u)
        excess = h_next - self.target
        if tolerant:
            excess = excess + self.tolerance(q_next)
        excess = torch.where(self.barrier_mask, excess, torch.full_like(h_next, float("inf")))
        return excess.amin(-1), h_next

    def rows_at(self, u_lin: Tensor) -> CBFRows:
        """The barrier rows linearised at u_lin (B, 2) plus the bound rows; b carries gamma's gradient."""
        h_lin, grad_q, q_next = self.next_barriers(u_lin)
        jac = next_lookahead_jacobian(self.pursuer, u_lin, self.lookahead, self.dt)  # (B, 2, 2)
        g = torch.einsum("bmi,bij->bmj", grad_q, jac)  # d h(q+) / d u, (B, M, 2)
        dt = self.dt
        a_barrier = -g / dt
        # Aim half a tolerance inside the exact condition: the fixed point of the iteration then
        # passes the strict test in `exact_dcbf_action` despite round-off.
        backoff = 0.5 * self.tolerance(q_next)
        offset = (h_lin - (g * u_lin.unsqueeze(1)).sum(-1) - self.h - backoff) / dt
        b_barrier = offset + (self.gamma / dt) * self.h
        # absent obstacles: the harmless row "-v <= 1", as in model/cbf.py
        a_barrier = torch.where(self.barrier_mask.unsqueeze(-1), a_barrier, a_barrier.new_tensor([-1.0, 0.0]))
        b_barrier = torch.where(self.barrier_mask, b_barrier, torch.ones_like(b_barrier))
        batch = u_lin.shape[0]
        env = self.env
        a_bounds = a_barrier.new_tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]).expand(batch, NUM_BOUND_ROWS, 2)
        b_bounds = a_barrier.new_tensor([env.pursuer_v_max, 0.0, env.pursuer_w_max, env.pursuer_w_max]).expand(batch, NUM_BOUND_ROWS)
        mask = torch.cat((self.barrier_mask, torch.ones(batch, NUM_BOUND_ROWS, dtype=torch.bool, device=u_lin.device)), dim=1)
        h_out = torch.where(self.barrier_mask, self.h, torch.full_like(self.h, float("inf")))
        return CBFRows(
            A=torch.cat((a_barrier, a_bounds), dim=1), b=torch.cat((b_barrier, b_bounds), dim=1), mask=mask, h=h_out
        )


def exact_dcbf_action(
    safety: "SafetyState",
    env_params: "EnvParams",
    cbf_params: "CBFParams",
    gamma: float | Tensor,
    u_ref: Tensor,
    robust_margin: float = 0.0,
    max_iters: int | None = None,
    active_hint: Tensor | None = None,
) -> ExactDCBFSolution:
    """The action closest to u_ref (weighted by ``cbf.action_weights``) whose exact step keeps
    ``h(q+) >= (1 - gamma) h(q)`` for every barrier (see the module docstring).

    safety: SafetyState with pursuer (B, 3), obstacle_centres (B, K, 2), obstacle_radii (B, K),
    obstacle_mask (B, K), in u_ref's dtype and device. gamma: per-step fraction in (0, 1], a
    float or a tensor (B, M) / (M,), M = K + 4 (differentiable). u_ref (B, 2) the proposal
    (physical units; may lie outside the action box; differentiable). robust_margin: metres added
    to every clearance (model/cbf.py). max_iters: rounds (default ``cbf.exact_max_iters``).
    active_hint (B, 2) int64: a warm start for the first round's QP (speed only).
    Returns ExactDCBFSolution; gradients as the module docstring says (the last linearised QP).
    """
    margin = check_robust_margin(robust_margin)
    rounds_max = int(cbf_params.exact_max_iters if max_iters is None else max_iters)
    if rounds_max < 1:
        raise ValueError(f"max_iters={max_iters} is invalid; accepted: an integer >= 1")
    if u_ref.dim() != 2 or u_ref.shape[-1] != 2 or u_ref.shape[0] != safety.pursuer.shape[0]:
        raise ValueError(f"u_ref has shape {tuple(u_ref.shape)}; accepted: (B, 2) with B = {safety.pursuer.shape[0]}")
    problem = _Problem(safety, env_params, cbf_params, gamma, margin)
    batch = u_ref.shape[0]
    weights = u_ref.new_tensor(cbf_params.action_weights)
    H = torch.diag(weights).expand(batch, 2, 2)
    f = -u_ref * weights

    u_lin = problem.clamp(u_ref.detach())
    done = torch.zeros(batch, dtype=torch.bool, device=u_ref.device)
    rounds = torch.zeros(batch, dtype=torch.int64, device=u_ref.device)
    # Round 1 solves the whole batch; later rounds only the elements still failing (`todo`, their
    # batch indices), written back with out-of-place index_put so that each element keeps the
    # autograd graph of the QP that produced its answer.
    todo, part, H_part, f_part = None, problem, H, f
    for _ in range(rounds_max):
        rows = part.rows_at(u_lin)
        solution = solve_qp(H_part, f_part, rows.A, rows.b, backend=cbf_params.qp_backend, mask=rows.mask,
                            active_hint=active_hint)
        active_hint = None  # the hint was for the first problem
        u_k = part.clamp(solution.u)
        # accept strictly (no tolerance): answers accepted here pass with room to spare
        passed = part.slack(u_k.detach(), tolerant=False)[0] >= 0
        if todo is None:
            u_out, A_out, b_out, active_out, mask_out = u_k, rows.A, rows.b, solution.active, rows.mask
            rounds = rounds + 1
            done = passed
        else:
            u_out = u_out.index_put((todo,), u_k)
            A_out = A_out.index_put((todo,), rows.A)
            b_out = b_out.index_put((todo,), rows.b)
            if active_out is not None and solution.active is not None:
                active_out = active_out.index_put((todo,), solution.active)
            rounds = rounds.index_put((todo,), rounds[todo] + 1)
            done = done.index_put((todo,), passed)
        if bool(passed.all()):  # one host synchronisation per round
            break
        # Re-linearise at the answer; where the linearised QP was infeasible, at the stop action
        # instead: far from u = 0 the arc's curvature can make the linearisation exclude the stop
        # action, which the exact condition admits (h >= 0), while the rows at u = 0 (the
        # first-order rows) always admit it.
        u_lin = torch.where(solution.feasible.unsqueeze(-1), u_k.detach(), torch.zeros_like(u_k))
        failing = (~passed).nonzero().squeeze(-1)
        todo = failing if todo is None else todo[failing]
        part, H_part, f_part, u_lin = part.index(failing), H_part[failing], f_part[failing], u_lin[failing]

    line_search = torch.zeros_like(done)
    if not bool(done.all()):
        failed = (~done).nonzero().squeeze(-1)
        scale, used = _line_search_to_stop(problem.index(failed), u_out[failed].detach())
        # s is held constant: the gradient is s times the last QP's
        u_out = u_out.index_put((failed,), scale.unsqueeze(-1) * u_out[failed])
        line_search = line_search.index_put((failed,), used)
    slack, h_next = problem.slack(u_out.detach())
    h_next = torch.where(problem.barrier_mask, h_next, torch.full_like(h_next, float("inf")))
    h_now = torch.where(problem.barrier_mask, problem.h, torch.full_like(problem.h, float("inf")))
    rows_out = CBFRows(A=A_out, b=b_out, mask=mask_out, h=h_now)
    return ExactDCBFSolution(
        u=u_out, feasible=slack >= 0, h=h_now, h_next=h_next, rounds=rounds, line_search=line_search,
        rows=rows_out, active=active_out,
    )


def _line_search_to_stop(problem: _Problem, u: Tensor) -> tuple[Tensor, Tensor]:
    """The factor s (B,) in [0, 1] for u (B, 2): the largest point of a refined grid whose exact step
    passes, where the stop action (s = 0) passes (every h(q) >= 0); 1 elsewhere. Returns
    (s, used (B,) bool: the stop action passes).

    Each of LINE_SEARCH_STAGES stages tests LINE_SEARCH_POINTS factors above the best so far in one
    batched evaluation (few, large tensor operations instead of a bisection's many small ones),
    so s is found to 1 / POINTS ** STAGES."""
    stop_passes = problem.slack(torch.zeros_like(u))[0] >= 0
    batch, points = u.shape[0], LINE_SEARCH_POINTS
    repeated = problem.index(torch.arange(batch, device=u.device).repeat_interleave(points))
    steps = torch.arange(1, points + 1, device=u.device, dtype=u.dtype) / points  # (G,)
    lo = torch.zeros_like(u[:, 0])  # always a passing factor where stop_passes
    width = 1.0
    for _ in range(LINE_SEARCH_STAGES):
        factors = (lo.unsqueeze(-1) + width * steps).clamp(max=1.0)  # (B, G)
        trial = (factors.unsqueeze(-1) * u.unsqueeze(1)).reshape(batch * points, 2)
        ok = (repeated.slack(trial, tolerant=False)[0] >= 0).view(batch, points)  # strict, as in the rounds
        best = torch.where(ok, factors, torch.full_like(factors, -1.0)).amax(-1)
        lo = torch.where(best >= 0, best, lo)
        width = width / points
    return torch.where(stop_passes, lo, torch.ones_like(lo)), stop_passes


__all__ = [
    "ExactDCBFSolution",
    "exact_dcbf_action",
    "next_lookahead_jacobian",
    "next_lookahead_point",
]
