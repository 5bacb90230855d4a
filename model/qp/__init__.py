"""Batched quadratic programs for the CBF safety layer.

`solve_qp(H, f, A, b, backend, mask)` solves, for every batch element,

    min_u  1/2 u'Hu + f'u   subject to   A u <= b        (rows where mask is True)

with H (B, n, n) symmetric positive definite, f (B, n), A (B, m, n), b (B, m), and returns a
`QPSolution(u, feasible, violation, lam, solver_ok, active)`. The solution is differentiable in
H, f, A, b.

Backends
--------
``"exact"`` (default): active-set enumeration, meant for the small n of this project (n = 2:
u = (v, w)): every active set of at most n rows is a candidate; the dual-feasible candidate with
the highest objective is the optimum (weak duality), confirmed by one primal check; elements that
fail it (infeasible, round-off) take the full rule (a primal check of every candidate). No
iterations, no convergence tolerance. ``"qpth"``: qpth's interior-point solver with its answers
checked and rejected ones re-solved exactly (`qpth_adapter`).

Layout (one implementation per module; `routing.choose_route` picks one per call)
------
`common`        tolerances, `QPSolution`, input checks, masked-row preparation, KKT residuals.
`routing`       the route of a call (device, n, batch size) and its one override for tests.
`reference`     the exact solver in torch: every n, accelerators without host syncs, the
                reference the tests compare the CPU route with.
`cpu_n2`        CPU, n = 2: one element in Python floats, a batch through `cpu_n2_kernels`
                (numba, the same arithmetic in one compiled loop, equal bit for bit).
`cpu_numpy`     CPU, n = 2: the same rules in NumPy, the fallback for what `cpu_n2` cannot
                settle (the full rule for infeasible problems and round-off).
`qpth_adapter`  the qpth backend.

Infeasible problems (both backends)
-----------------------------------
``feasible`` is False and ``u`` is a deterministic, NaN-free fallback: among the enumerated
active-set candidates (the unconstrained optimum, the optimum on each constraint line, every
vertex), the one whose largest violation ``max_i (a_i'u - b_i)_+ / |a_i|`` (a distance in
action space; |a_i| := 1 for zero rows) is smallest, ties broken by the lower objective.
``violation`` reports that largest violation (0 for feasible problems). For a feasible problem
the same rule picks the QP optimum, so both cases are one code path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.qp import cpu_n2, routing
from model.qp.common import (
    BACKENDS,
    FEAS_TOL,
    QPTH_FAR,
    QPTH_FEAS_TOL,
    QPTH_GAP_TOL,
    QPTH_STAT_TOL,
    SINGULAR_TOL,
    TIE_REL,
    QPSolution,
    kkt_residuals,
    prepare,
    validate,
    validate_hint,
)
from model.qp.qpth_adapter import solve_qpth
from model.qp.reference import solve_exact

__all__ = [
    "BACKENDS",
    "FEAS_TOL",
    "QPTH_FAR",
    "QPTH_FEAS_TOL",
    "QPTH_GAP_TOL",
    "QPTH_STAT_TOL",
    "SINGULAR_TOL",
    "TIE_REL",
    "QPSolution",
    "kkt_residuals",
    "solve_qp",
]


def solve_qp(H: Tensor, f: Tensor, A: Tensor, b: Tensor, backend: str = "exact", mask: Tensor | None = None,
             active_hint: Tensor | None = None) -> QPSolution:
    """Solve the batch ``min 1/2 u'Hu + f'u  s.t.  A u <= b`` (rows with mask True).

    H (B, n, n) symmetric positive definite (its symmetric part is used), f (B, n),
    A (B, m, n), b (B, m): float32 or float64, one device. mask (B, m) bool or None (all rows
    real); False rows are ignored entirely. backend: "exact" (active-set enumeration; n <= 3
    intended, the candidate count grows as m^n) or "qpth".
    active_hint (B, n) int64 or None (exact backend only; qpth ignores it): a guess of each
    element's active set (row indices in any order, -1 = no row), e.g. the `active` of an
    earlier solve of the same problem. Its KKT system is solved and checked as the enumeration
    checks its winner; elements that pass skip the enumeration, the rest are enumerated (on
    CPU only those; on other devices all, merged without a host sync). The hint changes speed
    only: u, feasible, violation and the gradients are those of the unhinted solve (up to
    round-off; at a degenerate point, where several active sets give the same u, lam and the
    gradient may belong to another valid active set).
    Returns QPSolution(u (B, n), feasible (B,), violation (B,), lam (B, m) | None, solver_ok (B,),
    active (B, n) | None), in the dtype of f; differentiable in H, f, A, b. Infeasible elements
    get the fallback of the module docstring (feasible False), never NaN.
    """
    validate(H, f, A, b, mask, backend)
    num_rows = A.shape[1]
    sync_free = routing.sync_free(f.device)
    if active_hint is not None:
        validate_hint(active_hint, f, num_rows, check_range=not sync_free)
    if f.shape[0] == 0:
        exact = backend == "exact"
        return QPSolution(f.new_zeros(f.shape), f.new_zeros(0, dtype=torch.bool), f.new_zeros(0),
                          f.new_zeros(0, num_rows) if exact else None, f.new_zeros(0, dtype=torch.bool),
                          f.new_zeros(f.shape, dtype=torch.int64) if exact else None)
    if backend == "qpth":
        return solve_qpth(*prepare(H, f, A, b, mask), sync_free)
    route = routing.choose_route(f.device, f.shape[1], f.shape[0])
    if route in routing.CPU_N2_ROUTES:
        return cpu_n2.solve(H, f, A, b, mask, active_hint, route)
    sol = solve_exact(*prepare(H, f, A, b, mask), sync_free=route == "reference_sync_free", active_hint=active_hint)
    return sol._replace(lam=sol.lam[:, :num_rows])  # m = 0 problems got a dummy row
