"""The exact backend in torch: the reference implementation, the path for every n and for
accelerators (no host synchronisation there), and what the tests compare the CPU n = 2 route with.

A strictly convex QP has a unique optimum, and (Caratheodory) it solves the equality-constrained
problem of some set S of at most n linearly independent rows. So every S with |S| <= n is
enumerated once (cached per (m, n, device)), and each KKT system

    [H  A_S'] [u  ]   [-f ]
    [A_S  0 ] [lam] = [b_S]

is solved for all candidates of the whole batch at once (closed forms for n = 2, `torch.linalg`
else). By weak duality every candidate with multipliers lam >= 0 costs at most the optimum, and
the optimum's own active set is a candidate, so the dual-feasible candidate with the highest
objective is the optimum; one primal check of that winner confirms it (else the problem is
infeasible, or round-off bit at a degenerate point, and the element takes the full rule: a
primal check of every candidate, the lowest objective among the feasible ones). Singular systems
(zero rows, duplicated or parallel rows, masked rows) mark that candidate invalid. Autograd runs
through a recomputation of the winning candidate only (`_ActiveSetKKT`: one small solve per
element and the implicit-function backward), not through all candidates.

Inputs are prepared (`model.qp.common.prepare`: H symmetric, masked rows 0'u <= 1, m >= 1).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL, QPSolution


_CANDIDATES: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def _candidates(m: int, n: int, device) -> tuple[Tensor, Tensor]:
    """Every active set of size <= n of m rows, as slot indices.

    Returns idx (C, n) long (unused slots point at row 0) and used (C, n) bool. Order: the empty
    set, then the singletons, then the pairs, ... (C = sum_k binom(m, k), k <= n), each subset
    with its rows ascending (i < j < ...): the canonical form `active` sets are reported in.
    """
    key = (m, n, str(device))
    if key not in _CANDIDATES:
        rows_idx, rows_used = [], []
        for k in range(min(m, n) + 1):
            for S in itertools.combinations(range(m), k):
                rows_idx.append(list(S) + [0] * (n - k))
                rows_used.append([True] * k + [False] * (n - k))
        _CANDIDATES[key] = (
            torch.tensor(rows_idx, dtype=torch.long, device=device),
            torch.tensor(rows_used, dtype=torch.bool, device=device),
        )
    return _CANDIDATES[key]


def _unit_rows(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of A (B, m, n) and b (B, m) divided by |a_i|: violations become distances, the same
    constraint set; zero rows stay zero."""
    row_norm = A.norm(dim=-1, keepdim=True)
    row_scale = torch.where(row_norm > 0, row_norm, torch.ones_like(row_norm))
    return A / row_scale, b / row_scale[..., 0]


def _inv_spd(H: Tensor) -> Tensor:
    """(B, n, n) inverse; closed forms for n <= 2 (no LAPACK call overhead)."""
    n = H.shape[-1]
    if n == 1:
        return 1.0 / H
    if n == 2:  # Cayley-Hamilton: H^-1 = (tr(H) I - H) / det(H)
        h = H.reshape(-1, 4)
        det = h[:, 0] * h[:, 3] - h[:, 1] * h[:, 2]
        eye = torch.eye(2, dtype=H.dtype, device=H.device)
        return (eye * (h[:, 0] + h[:, 3])[:, None, None] - H) / det[:, None, None]
    return torch.linalg.inv(H)


def _matvec(M: Tensor, x: Tensor) -> Tensor:
    """(B, k, n) @ (B, n) -> (B, k) as n multiply-adds (n is tiny: faster than bmm or a sum
    over a last dimension of size 2)."""
    out = M[..., 0] * x[:, None, 0]
    for j in range(1, x.shape[-1]):
        out = torch.addcmul(out, M[..., j], x[:, None, j])
    return out


def _kkt_multipliers(M: Tensor, rhs: Tensor, used: Tensor, sing_tol: float) -> tuple[Tensor, Tensor]:
    """Solve M_S lam_S = rhs_S for every candidate, padded to n slots.

    M (..., n, n) = A_S H^-1 A_S' in slot form (entries of unused slots are ignored), rhs (..., n),
    used (..., n) bool. Unused slots get an identity row/column and lam = 0. Returns lam (..., n)
    and ok (...): False where M_S is singular (zero, duplicated or parallel rows); there lam is
    a finite dummy (0).
    """
    n = M.shape[-1]
    pair_used = used[..., :, None] & used[..., None, :]
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    M = torch.where(pair_used, M, eye)
    rhs = torch.where(used, rhs, torch.zeros((), dtype=rhs.dtype, device=rhs.device))
    if n == 1:
        det = M[..., 0, 0]
        ok = det > 0
        lam = rhs / torch.where(ok, det, torch.ones_like(det))[..., None]
    elif n == 2:
        p, q, s = M[..., 0, 0], M[..., 0, 1], M[..., 1, 1]
        det = p * s - q * q
        ok = det > sing_tol * p * s
        det = torch.where(ok, det, torch.ones_like(det))
        lam = torch.stack([(s * rhs[..., 0] - q * rhs[..., 1]) / det, (p * rhs[..., 1] - q * rhs[..., 0]) / det], -1)
    else:
        diag = M.diagonal(dim1=-2, dim2=-1)
        det = torch.linalg.det(M)
        ok = det > sing_tol * diag.prod(-1)
        M = torch.where(ok[..., None, None], M, eye)
        lam = torch.linalg.solve(M, rhs[..., None])[..., 0]
    lam = torch.where(ok[..., None], lam, torch.zeros((), dtype=lam.dtype, device=lam.device))
    return lam, ok


def _candidate_points_pairs(u0, AHinv, A, r, idx, sing_tol):
    """n = 2 closed forms. Every candidate point u_c (B, C, 2), its objective minus that of u0
    (B, C), whether its KKT block is regular (B, C) and its smallest multiplier (B, C);
    candidates in the order of `_candidates` (pairs: the m(m-1)/2 unordered pairs i < j)."""
    B, m, _ = A.shape
    I, J = idx[1 + m:, 0], idx[1 + m:, 1]  # (P,) the pairs' rows
    AH0, AH1, A0, A1 = AHinv[..., 0], AHinv[..., 1], A[..., 0], A[..., 1]  # (B, m) each
    Gd = AH0 * A0 + AH1 * A1  # (B, m)  a_i' H^-1 a_i, 0 for zero rows
    # singletons: lam = r_i / G_ii
    ok1 = Gd > 0
    lam1 = r / torch.where(ok1, Gd, torch.ones_like(Gd))
    u1 = u0[:, None, :] - AHinv * lam1[..., None]  # (B, m, 2)
    obj1 = 0.5 * lam1 * r
    # pairs (i, j): 2x2 Cramer on [[p, q], [q, s]] lam = [r_i, r_j], (B, P) each
    AH0I, AH1I, AH0J, AH1J = AH0[:, I], AH1[:, I], AH0[:, J], AH1[:, J]
    p, s = Gd[:, I], Gd[:, J]
    q = torch.addcmul(AH0I * A0[:, J], AH1I, A1[:, J])
    rI, rJ = r[:, I], r[:, J]
    det = p * s - q * q
    ok2 = det > sing_tol * p * s  # False for zero, duplicated and parallel rows
    det = torch.where(ok2, det, torch.ones_like(det))
    lam_I = (s * rI - q * rJ) / det
    lam_J = (p * rJ - q * rI) / det
    u2 = torch.stack([u0[:, 0, None] - AH0I * lam_I - AH0J * lam_J,
                      u0[:, 1, None] - AH1I * lam_I - AH1J * lam_J], -1)
    obj2 = 0.5 * (lam_I * rI + lam_J * rJ)
    u_c = torch.cat([u0[:, None, :], u1, u2], 1)
    objective = torch.cat([torch.zeros_like(r[:, :1]), obj1, obj2], 1)
    ok = torch.cat([torch.ones_like(ok1[:, :1]), ok1, ok2], 1)
    least_lam = torch.cat([torch.zeros_like(r[:, :1]), lam1, torch.minimum(lam_I, lam_J)], 1)
    return u_c, objective, ok, least_lam


def _candidate_points_generic(u0, AHinv, A, r, idx, used, sing_tol):
    """Any n: padded KKT blocks solved by torch.linalg (see `_candidate_points_pairs`)."""
    G = AHinv @ A.transpose(1, 2)  # (B, m, m)  Gram matrix in the H^-1 metric
    M = G[:, idx[:, :, None], idx[:, None, :]]  # (B, C, n, n)
    rhs = r[:, idx]  # (B, C, n)
    lam, ok = _kkt_multipliers(M, rhs, used, sing_tol)
    u_c = u0[:, None, :] - (AHinv[:, idx] * lam[..., None]).sum(-2)  # (B, C, n)
    objective = 0.5 * (lam * rhs).sum(-1)  # (B, C)  = 1/2 lam' A_S H^-1 A_S' lam
    return u_c, objective, ok, lam.amin(-1)  # unused slots hold lam = 0


def _select_active_set(H, f, A, b, sync_free: bool):
    """Enumerate every active set (no autograd) and pick the winner per batch element.
    sync_free (True for accelerators: `model.qp.routing.sync_free`) computes the full rule for
    every element and merges with torch.where instead of indexing the flagged ones (which needs
    a host sync).

    Returns best (B,) candidate index (into `_candidates`), feasible (B,) bool and the winner's
    largest violation (B,) as a distance beyond the feasibility tolerance.

    Fast rule (weak duality): a candidate with multipliers lam >= 0 minimises the Lagrangian at
    lam, so its objective is a lower bound of the optimum, attained by the optimum's own active
    set. Hence the dual-feasible candidate with the HIGHEST objective is the optimum whenever
    the problem is feasible -- it needs (B, C) work plus one (B, m) primal check of the winner.
    Elements whose winner fails that check (infeasible problems, or round-off at degenerate
    points) go through the full rule: among the candidates with the least violation, the
    lowest objective, with a primal check of every candidate, (B, C, m) work.
    """
    dtype = f.dtype
    B, m, n = A.shape
    idx, used = _candidates(m, n, f.device)  # (C, n)
    A, b = _unit_rows(A, b)
    Hinv = _inv_spd(H)
    u0 = -_matvec(Hinv, f)  # (B, n) unconstrained optimum
    AHinv = A @ Hinv  # (B, m, n)  rows of A H^-1 (H^-1 symmetric)
    r = _matvec(A, u0) - b  # (B, m)  residual of the unconstrained optimum
    if n == 2:
        u_c, objective, ok, least_lam = _candidate_points_pairs(u0, AHinv, A, r, idx, SINGULAR_TOL[dtype])
    else:
        u_c, objective, ok, least_lam = _candidate_points_generic(u0, AHinv, A, r, idx, used, SINGULAR_TOL[dtype])
    b_tol = b + FEAS_TOL[dtype] * (1 + b.abs() + u0.norm(dim=-1, keepdim=True))

    inf = torch.full((), math.inf, dtype=dtype, device=f.device)
    dual_ok = ok & (least_lam >= -TIE_REL[dtype] * (1 + least_lam.abs()))  # the empty set: always
    best = torch.where(dual_ok, objective, -inf).argmax(-1)  # (B,)
    u_best = u_c.gather(1, best[:, None, None].expand(B, 1, n))[:, 0]
    fast_ok = (_matvec(A, u_best) <= b_tol).all(-1)
    feasible = fast_ok
    violation = torch.zeros_like(b[:, 0])

    if not sync_free:  # a sync is free on CPU: run the full rule on the rejected rows only
        if not bool(fast_ok.all()):
            rest = (~fast_ok).nonzero()[:, 0]
            best_r, feasible_r, violation_r = _full_rule(
                u_c[rest], objective[rest], ok[rest], least_lam[rest], A[rest], b_tol[rest])
            best = best.index_put((rest,), best_r)
            feasible = feasible.index_put((rest,), feasible_r)
            violation = violation.index_put((rest,), violation_r)
    else:  # no host sync on accelerators: full rule everywhere, fast answer where it passed
        best_r, feasible_r, violation_r = _full_rule(u_c, objective, ok, least_lam, A, b_tol)
        best = torch.where(fast_ok, best, best_r)
        feasible = fast_ok | feasible_r
        violation = torch.where(fast_ok, violation, violation_r)
    return best, feasible, violation


def _full_rule(u_c, objective, ok, least_lam, A, b_tol):
    """Primal check of every candidate: least largest violation, then lowest objective (then,
    at degenerate vertices of feasible problems, multipliers >= 0). Shapes as in
    `_select_active_set`; returns best (B,), feasible (B,), violation (B,)."""
    dtype = objective.dtype
    n = A.shape[-1]
    # A u_c - b_tol for every candidate and row, (B, C, m): n fused multiply-adds (a bmm with
    # an inner dimension of 2 is slower on CPU)
    resid = -b_tol[:, None, :]
    for k in range(n):
        resid = torch.addcmul(resid, u_c[:, :, k:k + 1], A[:, None, :, k])
    violation = resid.amax(-1).clamp(min=0)  # (B, C)
    inf = torch.full((), math.inf, dtype=dtype, device=objective.device)
    violation = torch.where(ok, violation, inf)  # the empty set is always ok: never all inf
    least = violation.amin(-1, keepdim=True)  # (B, 1)
    eligible = violation <= least * (1 + TIE_REL[dtype])
    # Degenerate vertices (more than n active rows) are reached by several candidates with the
    # same point; prefer one with multipliers >= 0 (one exists, Caratheodory), so that lam and
    # the gradient belong to a valid active set.
    dual_ok = eligible & (least_lam >= -TIE_REL[dtype] * (1 + least_lam.abs()))
    prefer = dual_ok.any(-1, keepdim=True) & (least == 0)
    eligible = torch.where(prefer, dual_ok, eligible)
    best = torch.where(eligible, objective, inf).argmin(-1)  # (B,)
    return best, least[:, 0] == 0, least[:, 0]


def _solve_slots(M: Tensor, rhs: Tensor) -> Tensor:
    """Solve the regular (B, n, n) slot-form systems M x = rhs (B, n); Cramer for n = 2."""
    n = M.shape[-1]
    if n == 2:
        p, q, q2, s = M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1]
        det = p * s - q * q2
        return torch.stack([s * rhs[:, 0] - q * rhs[:, 1], p * rhs[:, 1] - q2 * rhs[:, 0]], -1) / det[:, None]
    return torch.linalg.solve(M, rhs[..., None])[..., 0]


class _ActiveSetKKT(torch.autograd.Function):
    """u, lam of  min 1/2 u'Hu + f'u  s.t.  A_S u = b_S  for the winning active set, batched.

    A_S (B, n, n) and b_S (B, n) hold the active rows in slots; `used` (B, n) marks the real
    slots (unused slots get an identity KKT row and lam = 0). The backward pass is the
    implicit-function gradient of the KKT system (as in OptNet, Amos & Kolter 2017):
    [dz; dnu] = -K^-1 [g; 0], dL/df = dz, dL/db_S = -dnu, dL/dA_S = dnu u' + lam dz',
    dL/dH = (dz u' + u dz') / 2 -- a few small ops instead of autograd through the solve.
    """

    @staticmethod
    def forward(ctx, H, f, A_S, b_S, used):
        n = H.shape[-1]
        eye = torch.eye(n, dtype=H.dtype, device=H.device)
        pair_used = used[:, :, None] & used[:, None, :]
        Hinv = _inv_spd(H)
        u0 = -_matvec(Hinv, f)
        AH = A_S @ Hinv  # (B, n, n)
        M = torch.where(pair_used, AH @ A_S.transpose(1, 2), eye)
        # a singular winner only happens if every candidate was rejected by round-off: use u0
        regular = torch.linalg.det(M).abs() > 0 if n != 2 else (M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]).abs() > 0
        M = torch.where(regular[:, None, None], M, eye)
        rhs = torch.where(used & regular[:, None], _matvec(A_S, u0) - b_S, 0.0)
        lam = _solve_slots(M, rhs)
        u = u0 - (AH * lam[..., None]).sum(-2)
        ctx.save_for_backward(Hinv, AH, M, u, lam, used & regular[:, None])
        ctx.mark_non_differentiable(lam)
        return u, lam

    @staticmethod
    def backward(ctx, grad_u, grad_lam):
        Hinv, AH, M, u, lam, used = ctx.saved_tensors
        w = _matvec(Hinv, grad_u)  # H^-1 g
        y = torch.where(used, _solve_slots(M, _matvec(AH, grad_u)), 0.0)  # -dnu
        dz = (AH * y[..., None]).sum(-2) - w
        grad_H = 0.5 * (dz[:, :, None] * u[:, None, :] + u[:, :, None] * dz[:, None, :])
        grad_A = -y[..., None] * u[:, None, :] + lam[..., None] * dz[:, None, :]
        return grad_H, dz, grad_A, y, None


def _sort_padded(active: Tensor, m: int) -> Tensor:
    """(B, n) row indices, -1 = no row -> rows ascending, then the -1 padding (the order of
    `_candidates`, so a hinted set and the enumerated one give bit-identical solves)."""
    keyed = torch.where(active < 0, torch.full_like(active, m), active).sort(-1).values
    return torch.where(keyed >= m, torch.full_like(keyed, -1), keyed)


def _check_hint(H, f, A, b, active: Tensor) -> Tensor:
    """The warm start: is the hinted active set (B, n) (canonical, -1 padded, rows in range)
    the optimum's? Solves its equality-constrained KKT system and applies exactly the checks the
    enumeration applies to its winner: a regular KKT block, multipliers >= -tol (the same
    tolerance as `_select_active_set`'s dual test) and every row satisfied within FEAS_TOL on the
    unit-scaled rows. A set that passes satisfies the KKT conditions, which are sufficient for a
    convex QP: it is the optimum. Returns passed (B,) bool; no autograd, no host sync."""
    dtype = f.dtype
    B, m, n = A.shape
    A, b = _unit_rows(A, b)
    Hinv = _inv_spd(H)
    u0 = -_matvec(Hinv, f)  # (B, n)
    used = active >= 0  # (B, n)
    slot = active.clamp(min=0)
    A_S = A.gather(1, slot[..., None].expand(B, n, n))  # (B, n, n) unit rows in slots
    AH_S = A_S @ Hinv  # (B, n, n)
    r_S = _matvec(A_S, u0) - b.gather(1, slot)  # (B, n)
    M = (AH_S[:, :, None, :] * A_S[:, None, :, :]).sum(-1)  # (B, n, n)  A_S H^-1 A_S'
    lam, ok = _kkt_multipliers(M, r_S, used, SINGULAR_TOL[dtype])  # unused slots: lam = 0
    u = u0 - (AH_S * lam[..., None]).sum(-2)
    least_lam = lam.amin(-1)
    dual_ok = ok & (least_lam >= -TIE_REL[dtype] * (1 + least_lam.abs()))
    b_tol = b + FEAS_TOL[dtype] * (1 + b.abs() + u0.norm(dim=-1, keepdim=True))
    primal_ok = (_matvec(A, u) <= b_tol).all(-1)
    return dual_ok & primal_ok


def solve_exact(H: Tensor, f: Tensor, A: Tensor, b: Tensor, sync_free: bool,
                active_hint: Tensor | None = None) -> QPSolution:
    """Exact solve of prepared inputs H (B, n, n), f (B, n), A (B, m, n), b (B, m) (masked rows
    already neutralised, m >= 1). sync_free: no host syncs (accelerators; `routing.sync_free`).
    active_hint (B, n) int64 or None: a candidate active set per element (see `solve_qp`).
    Returns the QPSolution of `solve_qp` (lam (B, m)), differentiable in H, f, A, b."""
    B, m, n = A.shape
    idx, used = _candidates(m, n, f.device)
    with torch.no_grad():
        Hd, fd, Ad, bd = H.detach(), f.detach(), A.detach(), b.detach()
        if active_hint is None:
            best, feasible, violation = _select_active_set(Hd, fd, Ad, bd, sync_free)
            active = idx[best]  # (B, n)
            active = torch.where(used[best], active, -1)
        else:
            hint = _sort_padded(active_hint, m)
            passed = _check_hint(Hd, fd, Ad, bd, hint)
            if sync_free:  # no host sync: enumerate everything, keep the hint where it passed
                best, feasible, violation = _select_active_set(Hd, fd, Ad, bd, sync_free)
                active = torch.where(passed[:, None], hint, torch.where(used[best], idx[best], -1))
                feasible = passed | feasible
                violation = torch.where(passed, torch.zeros_like(violation), violation)
            else:  # enumerate only the elements whose hint failed
                active, feasible, violation = hint, passed, torch.zeros_like(fd[:, 0])
                if not bool(passed.all()):
                    rest = (~passed).nonzero()[:, 0]
                    best_r, feasible_r, violation_r = _select_active_set(Hd[rest], fd[rest], Ad[rest], bd[rest], False)
                    active = active.index_put((rest,), torch.where(used[best_r], idx[best_r], -1))
                    feasible = feasible.index_put((rest,), feasible_r)
                    violation = violation.index_put((rest,), violation_r)
    active_used = active >= 0  # (B, n)
    slot = active.clamp(min=0)  # unused slots read row 0 (ignored, lam = 0 there)
    # recompute the winner only, with gradients: one small KKT solve per element
    A_S = A.gather(1, slot[..., None].expand(B, n, n))  # (B, n, n) slot rows
    b_S = b.gather(1, slot)  # (B, n)
    u, lam_S = _ActiveSetKKT.apply(H, f, A_S, b_S, active_used)
    lam = lam_S.new_zeros(B, m).scatter_add(1, slot, lam_S)
    return QPSolution(u, feasible, violation, lam, torch.ones_like(feasible), active)

