"""Batched quadratic programs for the CBF safety layer.

`solve_qp(H, f, A, b, backend, mask)` solves, for every batch element,

    min_u  1/2 u'Hu + f'u   subject to   A u <= b        (rows where mask is True)

with H (B, n, n) symmetric positive definite, f (B, n), A (B, m, n), b (B, m), and returns a
`QPSolution(u, feasible, violation, lam, solver_ok)`. The solution is differentiable in H, f, A, b.

Backends
--------
``"exact"`` (default): active-set enumeration, meant for the small n of this project (n = 2:
u = (v, w)). A strictly convex QP has a unique optimum, and (Caratheodory) it solves the
equality-constrained problem of some set S of at most n linearly independent rows. So we
enumerate every S with |S| <= n once (cached per (m, n, device)), solve each KKT system

    [H  A_S'] [u  ]   [-f ]
    [A_S  0 ] [lam] = [b_S]

for all candidates of the whole batch at once (closed forms for n = 2, `torch.linalg` else).
By weak duality every candidate with multipliers lam >= 0 costs at most the optimum, and the
optimum's own active set is a candidate, so the dual-feasible candidate with the highest
objective is the optimum; one primal check of that winner confirms it (else the problem is
infeasible, or round-off bit at a degenerate point, and the element takes the full rule: a
primal check of every candidate, the lowest objective among the feasible ones). No
iterations, no convergence tolerance, no host synchronisation on CUDA (on CPU the full rule
runs on the flagged elements only). Singular
systems (zero rows, duplicated or parallel rows, masked rows) mark that candidate invalid; a
zero row ``0'u <= b`` is satisfied iff b >= 0. Autograd runs through a recomputation of the
winning candidate only (one small solve per element), not through all candidates.
On CPU with n = 2 the same rules run in NumPy (per-op overhead ~1 us instead of several: see
`_solve_exact_numpy`), a single element (B = 1) wholly in Python floats (`_solve_single_py`:
list arithmetic beats ~100 NumPy calls on (1, m) arrays), and a batch (B > 1) through the same
Python-float arithmetic compiled with numba into one loop over the elements
(`model/qp_compiled.py`, float64 inside, 6-9x faster than the NumPy calls at B = 256-1024); the
elements it cannot settle alone (infeasible, round-off) take the NumPy full rule. The torch code
is the path for other n and for accelerators, and the reference the tests compare the CPU paths with.

``"qpth"``: qpth 0.0.18's interior-point `QPFunction` in float64 (cast in and out), kept as the
reference design and for speed comparisons. qpth returns NaN on zero rows, so masked rows and
real zero rows are replaced by a copy of the element's first real row shifted outwards by
1 + |b| (parallel, never active; a far-away row ``e_1'u <= BIG`` was tried and stalls qpth's 20
interior-point iterations, errors up to 0.7 on our CBF problems, and an unshifted duplicate of an
active row stalls it too); an element without any real row
gets the far-away row ``e_1'u <= e_1'u0 + QPTH_FAR * scale``. qpth never raises on
infeasible or inaccurate problems, so we check the result: NaN, a row violated by more than
`QPTH_FEAS_TOL` (relative), or a KKT check on qpth's own multipliers (complementarity gap,
stationarity; qpth stalls on some feasible problems and returns a point 0.1-0.9 off) rejects it
(``solver_ok`` False). A rejected element is re-solved by the exact backend: ``feasible`` then
says whether the problem was infeasible (and ``u`` is the fallback below) or qpth merely failed
(and ``u`` is the exact optimum). qpth's gradient for a rejected element is zeroed, never NaN.

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

import itertools
import math
import statistics
import time
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "QPSolution",
    "solve_qp",
    "kkt_residuals",
    "time_solver",
    "cbf_benchmark_problems",
    "BACKENDS",
]

BACKENDS = ("exact", "qpth")

# Relative primal tolerance per dtype: a row counts as satisfied when
# a'u - b <= tol * (1 + |b| + |a| |u0|)  (u0: the unconstrained optimum, the problem's scale).
FEAS_TOL = {torch.float64: 1e-11, torch.float32: 1e-5}
# A candidate's KKT block M = A_S H^-1 A_S' counts as singular when det(M) <= tol * prod(diag M)
# (the ratio is the squared sine of the angle between the rows in the H^-1 metric).
SINGULAR_TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
# Infeasible problems: candidates whose violation is within this factor of the least one tie.
TIE_REL = {torch.float64: 1e-9, torch.float32: 1e-5}
# qpth is an interior-point method with its own accuracy; a row it violates by more than this
# (relative, as FEAS_TOL) flags the problem infeasible/inaccurate.
QPTH_FEAS_TOL = 1e-6
# qpth, element without any real row: e_1'u <= e_1'u0 + QPTH_FAR * (1 + |u0| + max|b|).
QPTH_FAR = 1e3
# qpth answers whose complementarity max_i lam_i s_i exceeds QPTH_GAP_TOL * (1 + |u'Hu| + |f'u|)
# (or stationarity QPTH_STAT_TOL * sqrt(that)) are rejected as inaccurate. Measured on 900 CBF
# problems: accurate answers have gaps <= 5e-13, the stalled ones >= 9e-3.
QPTH_GAP_TOL = 1e-8
QPTH_STAT_TOL = 1e-6


class QPSolution(NamedTuple):
    """Result of `solve_qp`.

    u:         (B, n) the optimum, or the documented fallback where infeasible.
    feasible:  (B,) bool, True where every (unmasked) row can be satisfied.
    violation: (B,) largest row violation of ``u``, as a distance in action space beyond the
               feasibility tolerance (0 where feasible).
    lam:       (B, m) KKT multipliers (H u + f + A' lam = 0, lam >= 0 where feasible; zero on
               inactive and masked rows) from the exact backend; None from qpth.
    solver_ok: (B,) bool, False where the backend's own answer was rejected and replaced by the
               exact solver's (qpth: NaN, a violated row, or a KKT check failure); exact: all True.
    active:    (B, n) int64, the exact backend's chosen active set: its rows ascending, then -1
               padding (-1 -1 = the unconstrained optimum); pass it back as `active_hint` when
               the same or a nearby problem is solved again. None from qpth.
    """

    u: Tensor
    feasible: Tensor
    violation: Tensor
    lam: Tensor | None = None
    solver_ok: Tensor | None = None
    active: Tensor | None = None


# ----------------------------------------------------------------------------------------------
# input checks


def _validate(H, f, A, b, mask, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; accepted: {', '.join(map(repr, BACKENDS))}")
    for name, value in (("H", H), ("f", f), ("A", A), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if f.dim() != 2:
        raise ValueError(f"f has shape {tuple(f.shape)}; accepted: (B, n)")
    B, n = f.shape
    if n < 1:
        raise ValueError(f"f has shape {tuple(f.shape)}: n = 0 decision variables; accepted: n >= 1")
    if H.shape != (B, n, n):
        raise ValueError(f"H has shape {tuple(H.shape)}; accepted: (B, n, n) = {(B, n, n)} (f is (B, n) = {(B, n)})")
    if A.dim() != 3 or A.shape[0] != B or A.shape[2] != n:
        raise ValueError(f"A has shape {tuple(A.shape)}; accepted: (B, m, n) with B = {B}, n = {n}")
    m = A.shape[1]
    if b.shape != (B, m):
        raise ValueError(f"b has shape {tuple(b.shape)}; accepted: (B, m) = {(B, m)} (A is {tuple(A.shape)})")
    if f.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"f has dtype {f.dtype}; accepted: torch.float32 or torch.float64")
    for name, value in (("H", H), ("A", A), ("b", b)):
        if value.dtype != f.dtype:
            raise TypeError(f"{name} has dtype {value.dtype}; accepted: the dtype of f ({f.dtype})")
        if value.device != f.device:
            raise ValueError(f"{name} is on {value.device}; accepted: the device of f ({f.device})")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a torch.bool tensor of shape (B, m) = {(B, m)}, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != (B, m):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; accepted: (B, m) = {(B, m)}")
        if mask.device != f.device:
            raise ValueError(f"mask is on {mask.device}; accepted: the device of f ({f.device})")


def _prepare(H, f, A, b, mask):
    """Symmetrise H; give masked rows the form 0'u <= 1 (never active, always satisfied);
    give m = 0 problems one such row so every code path sees m >= 1."""
    H = 0.5 * (H + H.transpose(-1, -2))
    if A.shape[1] == 0:
        B, n = f.shape
        A = f.new_zeros(B, 1, n)
        b = f.new_ones(B, 1)
        mask = None
    if mask is not None:
        A = torch.where(mask[..., None], A, torch.zeros((), dtype=A.dtype, device=A.device))
        b = torch.where(mask, b, torch.ones((), dtype=b.dtype, device=b.device))
    return H, f, A, b


# ----------------------------------------------------------------------------------------------
# exact backend

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


def _select_active_set(H, f, A, b, sync_free: bool | None = None):
    """Enumerate every active set (no autograd) and pick the winner per batch element.
    sync_free (default: True off the CPU) computes the full rule for every element and merges
    with torch.where instead of indexing the flagged ones (which needs a host sync).

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
    # unit rows: violations become distances, the same constraint set, zero rows stay zero
    row_norm = A.norm(dim=-1, keepdim=True)
    row_scale = torch.where(row_norm > 0, row_norm, torch.ones_like(row_norm))
    A = A / row_scale
    b = b / row_scale[..., 0]
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

    if sync_free is None:
        sync_free = _sync_free_default(f.device)
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
    row_norm = A.norm(dim=-1, keepdim=True)
    row_scale = torch.where(row_norm > 0, row_norm, torch.ones_like(row_norm))
    A = A / row_scale
    b = b / row_scale[..., 0]
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


def _solve_exact(H, f, A, b, sync_free: bool | None = None, active_hint: Tensor | None = None):
    """Exact solve of prepared inputs (masked rows already neutralised). Returns QPSolution.
    active_hint (B, n) int64 or None: a candidate active set per element (see `solve_qp`)."""
    B, m, n = A.shape
    if sync_free is None:
        sync_free = _sync_free_default(f.device)
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


# ----------------------------------------------------------------------------------------------
# exact backend, NumPy path (CPU, n = 2)
#
# On CPU these tensors are tiny and the torch path's cost is per-op overhead (several us per op,
# ~150 ops). NumPy's per-op overhead is ~1 us, so CPU problems with n = 2 take this path: the
# selection, the hint check, the winner's KKT solve and the backward all in NumPy, wrapped in one
# autograd Function (`_NumpyActiveSetKKT`). Same rules as the torch path (which stays the
# reference, the path for other n and the accelerator path without host syncs); tests check that
# both agree. Differences: the winner's KKT system is solved once, on the unit rows, and serves
# as the fast rule's primal check, the hint check and the answer (the multipliers and gradients
# are scaled back to the raw rows: lam_i = lam_unit_i / |a_i|).

_FORCE_SYNC_FREE = False  # tests: run the accelerator (no host sync) branches on the CPU


def _sync_free_default(device: torch.device) -> bool:
    """No host syncs off the CPU (they stall the device); on the CPU they are free."""
    return _FORCE_SYNC_FREE or device.type != "cpu"


_USE_NUMPY_CPU = True  # tests switch it off to compare with the torch path
_NP_TABLES: dict[int, tuple[np.ndarray, ...]] = {}


def _np_tables(m: int):
    """For m rows: the pairs (i < j) in the order of `_candidates` as I, J (P,) and their flat
    index I * m + J into an (m, m) matrix, and every candidate's active set (C, 2) int64 (-1
    padded; the empty set, the singletons, the pairs)."""
    if m not in _NP_TABLES:
        I, J = np.triu_indices(m, 1)  # row-major (0,1), (0,2), ..., (1,2), ...: as combinations
        table = np.full((1 + m + len(I), 2), -1, dtype=np.int64)
        table[1:1 + m, 0] = np.arange(m)
        table[1 + m:, 0], table[1 + m:, 1] = I, J
        _NP_TABLES[m] = (I, J, I * m + J, table)
    return _NP_TABLES[m]


def _np_candidates(Hinv, A, u0, b, sing_tol, points: bool):
    """Every candidate of `_candidates` at once (NumPy, n = 2, closed forms as
    `_candidate_points_pairs`). Hinv (B, 2, 2), A (B, m, 2) unit rows, u0 (B, 2), b (B, m).
    Returns objective minus that of u0, ok (regular KKT block), least multiplier, each (B, C),
    and (points True) the candidate points (B, C, 2), else None."""
    B, m, _ = A.shape
    I, J, IJ, table = _np_tables(m)
    AH = A @ Hinv  # (B, m, 2) rows of A H^-1
    G = (AH @ A.transpose(0, 2, 1)).reshape(B, m * m)  # Gram matrix in the H^-1 metric
    Gd = G[:, ::m + 1]  # a_i' H^-1 a_i, 0 for zero rows
    r = (A @ u0[:, :, None])[..., 0] - b  # residual of the unconstrained optimum
    ok1 = Gd > 0
    lam1 = r / np.where(ok1, Gd, 1)
    p, s, q, rI, rJ = Gd[:, I], Gd[:, J], G[:, IJ], r[:, I], r[:, J]
    det = p * s - q * q
    ok2 = det > sing_tol * p * s  # False for zero, duplicated and parallel rows
    det = np.where(ok2, det, 1)
    lam_I = (s * rI - q * rJ) / det
    lam_J = (p * rJ - q * rI) / det
    zero = np.zeros((B, 1), A.dtype)
    objective = np.concatenate([zero, 0.5 * lam1 * r, 0.5 * (lam_I * rI + lam_J * rJ)], 1)
    ok = np.concatenate([np.ones((B, 1), bool), ok1, ok2], 1)
    least_lam = np.concatenate([zero, lam1, np.minimum(lam_I, lam_J)], 1)
    u_c = None
    if points:
        lam_first = np.concatenate([zero, lam1, lam_I], 1)[..., None]  # (B, C, 1) per slot
        lam_second = np.concatenate([zero, np.zeros_like(lam1), lam_J], 1)[..., None]
        first, second = np.maximum(table[:, 0], 0), np.maximum(table[:, 1], 0)
        u_c = u0[:, None, :] - AH[:, first] * lam_first - AH[:, second] * lam_second
    return objective, ok, least_lam, u_c


def _np_dual_ok(least_lam, tie):
    return least_lam >= -tie * (1 + np.abs(least_lam))


def _np_select(Hinv, A, u0, b, b_tol, float_dtype):
    """`_select_active_set` in NumPy (n = 2) on unit rows: Hinv (B, 2, 2), A (B, m, 2), u0 (B, 2),
    b and b_tol (B, m). Returns best (B,) candidate index (rows of `_np_tables`' table),
    feasible (B,) bool, violation (B,)."""
    B = A.shape[0]
    tie = TIE_REL[float_dtype]
    objective, ok, least_lam, u_c = _np_candidates(Hinv, A, u0, b, SINGULAR_TOL[float_dtype], True)
    dual_ok = ok & _np_dual_ok(least_lam, tie)
    best = np.where(dual_ok, objective, -np.inf).argmax(-1)
    u_best = u_c[np.arange(B), best]  # (B, 2)
    feasible = ((A @ u_best[:, :, None])[..., 0] <= b_tol).all(-1)
    violation = np.zeros(B, A.dtype)
    if not feasible.all():  # the full rule (`_full_rule`) on the rejected elements only
        rest = np.flatnonzero(~feasible)
        resid = u_c[rest] @ A[rest].transpose(0, 2, 1) - b_tol[rest, None, :]  # (R, C, m)
        viol = np.where(ok[rest], np.maximum(resid.max(-1), 0), np.inf)
        least = viol.min(-1, keepdims=True)
        eligible = viol <= least * (1 + tie)
        dual = eligible & dual_ok[rest]
        eligible = np.where(dual.any(-1, keepdims=True) & (least == 0), dual, eligible)
        best[rest] = np.where(eligible, objective[rest], np.inf).argmin(-1)
        feasible[rest] = least[:, 0] == 0
        violation[rest] = least[:, 0]
    return best, feasible, violation


def _np_slot_kkt(Hinv, u0, A, b, active, sing_tol):
    """The KKT system of one active set per element (NumPy, n = 2): active (B, 2) canonical
    (-1 = unused slot: identity row, lam = 0), rows of A (B, m, 2) / b (B, m). Returns u (B, 2),
    lam (B, 2), ok (B,) (regular by `_kkt_multipliers`'s test), used (B, 2) (real slots with a
    regular block, det != 0, as `_ActiveSetKKT`; else u = u0, lam = 0) and the backward's
    matrices Y = diag(used) M^-1 A_S H^-1 and K = (A_S H^-1)' Y - H^-1 (B, 2, 2): for an
    upstream gradient g, y = Y g = dL/db_S and dz = K g = dL/df."""
    B = A.shape[0]
    used = active >= 0
    slot = np.maximum(active, 0)
    rows = np.arange(B)[:, None]
    weight = used.astype(A.dtype)
    a = A[rows, slot] * weight[..., None]  # (B, 2, 2) the active rows in slots, unused: 0
    AH = a @ Hinv
    M = AH @ a.transpose(0, 2, 1) + _NP_EYE2[A.dtype] * (1 - weight)[:, None, :]  # identity on unused slots
    p, q, q2, s = M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1]
    det = p * s - q * q2
    ok = det > sing_tol * p * s
    regular = det != 0
    adj = ((p + s)[:, None, None] * _NP_EYE2[A.dtype] - M) / np.where(regular, det, 1)[:, None, None]  # M^-1
    used = used & regular[:, None]
    Minv = adj * used[:, :, None]  # rows of unused slots (or of a singular block) zero: lam = 0
    rhs = (a @ u0[:, :, None])[..., 0] - b[rows, slot] * weight
    lam = (Minv @ rhs[:, :, None])[..., 0]
    u = u0 - (AH.transpose(0, 2, 1) @ lam[:, :, None])[..., 0]
    Y = Minv @ AH
    K = AH.transpose(0, 2, 1) @ Y - Hinv
    return u, lam, ok, used, Y, K


def _py_slot_kkt(Hinv, u0, A, b, active, sing_tol):
    """`_np_slot_kkt` for one float64 element (B = 1) through `_py_kkt`: a dozen NumPy calls on
    (1, 2, 2) arrays cost more than the arithmetic. Same inputs and outputs."""
    slots = [(A[0, k].tolist(), float(b[0, k])) if k >= 0 else (None, None) for k in active[0].tolist()]
    u, lam, ok, used, Y, K = _py_kkt(Hinv[0].reshape(-1).tolist(), u0[0].tolist(), *slots[0], *slots[1], sing_tol)
    return np.array([u]), np.array([lam]), np.array([ok]), np.array([used]), np.array([Y]), np.array([K])


def _py_backward(grad_u, u, lam, Y, K, scatter, m):
    """`_NumpyActiveSetKKT.backward` for one float64 element, through `_py_backward_single`."""
    return _py_backward_single(grad_u, (u[0].tolist(), lam[0].tolist(), Y[0].tolist(), K[0].tolist(), scatter, m, torch.float64))


_NP_EYE2 = {np.dtype(t): np.eye(2, dtype=t) for t in (np.float64, np.float32)}


class _NumpyActiveSetKKT(torch.autograd.Function):
    """`_ActiveSetKKT` with the forward already done in NumPy (`_np_slot_kkt`): inputs the raw
    H, f, A, b and the saved NumPy pieces; the same implicit-function backward, the active rows'
    gradients scattered onto A and b by `scatter` (B, m, 2): one-hot slot -> row, / |a_i|."""

    @staticmethod
    def forward(ctx, H, f, A, b, saved):
        ctx.saved = saved
        # a copy: the caller may modify the returned u in place, the backward needs the original
        return torch.from_numpy(saved["u"].copy())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        u, lam, Y, K, scatter = (ctx.saved[k] for k in ("u", "lam", "Y", "K", "scatter"))
        if u.shape[0] == 1 and u.dtype == np.float64:  # one element: Python floats beat NumPy calls
            return _py_backward(grad_u, u, lam, Y, K, scatter, ctx.saved["m"])
        g = grad_u.numpy()[:, :, None]
        dz, y = (K @ g)[..., 0], (Y @ g)[..., 0]  # dL/df, dL/db_S (unit rows)
        outer = dz[:, :, None] * u[:, None, :]
        grad_H = 0.5 * (outer + outer.transpose(0, 2, 1))
        grad_A_S = lam[:, :, None] * dz[:, None, :] - y[:, :, None] * u[:, None, :]
        m = ctx.saved["m"]
        grad_A = (scatter @ grad_A_S)[:, :m]
        grad_b = (scatter @ y[:, :, None])[:, :m, 0]
        return torch.from_numpy(grad_H), torch.from_numpy(dz), torch.from_numpy(grad_A), torch.from_numpy(grad_b), None


class _CompiledActiveSetKKT(torch.autograd.Function):
    """`_NumpyActiveSetKKT` for a forward done by `model.qp_compiled.solve_batch`: the same backward
    formulas in `backward_batch`'s loop, from the slots' rows (`active`) and 1 / |a_row|
    (`inv_norm`) instead of a scatter matrix."""

    @staticmethod
    def forward(ctx, H, f, A, b, saved):
        ctx.saved = saved
        return torch.from_numpy(saved["u"].copy())  # a copy: the backward needs the original

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        from model.qp_compiled import backward_batch

        saved = ctx.saved
        u, m = saved["u"], saved["m"]
        B, dtype = u.shape[0], u.dtype
        grads = (np.empty((B, 2, 2), dtype), np.empty((B, 2), dtype), np.empty((B, m, 2), dtype), np.empty((B, m), dtype))
        backward_batch(grad_u.numpy().astype(dtype, copy=False), u, saved["lam"], saved["Y"], saved["K"],
                       saved["active"], saved["inv_norm"], *grads)
        return (*(torch.from_numpy(x) for x in grads), None)


_NP_DTYPE = {torch.float64: np.float64, torch.float32: np.float32}
_USE_PY_SINGLE = True  # tests switch it off to compare the B = 1 path with the NumPy path


def _py_kkt(h, u0, a0, b0, a1, b1, sing_tol):
    """The KKT system of one active set of one element in Python floats (n = 2; the arithmetic
    of `_np_slot_kkt`). h = (i00, i01, i10, i11) H^-1, u0 (2,), slot rows a0, a1 (2,) and right
    sides b0, b1 (None: unused slot). Returns u, lam (2,), ok, used (2,), Y, K ((2, 2) lists)."""
    h00, h01, h10, h11 = h
    used0, used1 = a0 is not None, a1 is not None
    if not used0:
        a0, b0 = (0.0, 0.0), 0.0
    if not used1:
        a1, b1 = (0.0, 0.0), 0.0
    AH0 = (a0[0] * h00 + a0[1] * h10, a0[0] * h01 + a0[1] * h11)  # a H^-1 per slot
    AH1 = (a1[0] * h00 + a1[1] * h10, a1[0] * h01 + a1[1] * h11)
    p = AH0[0] * a0[0] + AH0[1] * a0[1] + (0.0 if used0 else 1.0)
    q = AH0[0] * a1[0] + AH0[1] * a1[1]
    q2 = AH1[0] * a0[0] + AH1[1] * a0[1]
    s = AH1[0] * a1[0] + AH1[1] * a1[1] + (0.0 if used1 else 1.0)
    det = p * s - q * q2
    ok = det > sing_tol * p * s
    regular = det != 0
    d = det if regular else 1.0
    used0, used1 = used0 and regular, used1 and regular
    M0 = (s / d, -q / d) if used0 else (0.0, 0.0)
    M1 = (-q2 / d, p / d) if used1 else (0.0, 0.0)
    r0 = a0[0] * u0[0] + a0[1] * u0[1] - b0
    r1 = a1[0] * u0[0] + a1[1] * u0[1] - b1
    lam = (M0[0] * r0 + M0[1] * r1, M1[0] * r0 + M1[1] * r1)
    u = (u0[0] - AH0[0] * lam[0] - AH1[0] * lam[1], u0[1] - AH0[1] * lam[0] - AH1[1] * lam[1])
    Y = [[Mk[0] * AH0[j] + Mk[1] * AH1[j] for j in range(2)] for Mk in (M0, M1)]
    K = [[AH0[i] * Y[0][j] + AH1[i] * Y[1][j] - hij for j, hij in enumerate(hrow)]
         for i, hrow in enumerate(((h00, h01), (h10, h11)))]
    return u, lam, ok, (used0, used1), Y, K


def _py_backward_single(grad_u, saved):
    """The implicit-function backward of `_NumpyActiveSetKKT` for one element in Python floats:
    grad_u (1, 2) -> grads of H (1, 2, 2), f (1, 2), A (1, m, 2), b (1, m)."""
    g0, g1 = grad_u[0].tolist()
    (u0, u1), (l0, l1), Y, K, scatter, m, dtype = saved
    dz0, dz1 = K[0][0] * g0 + K[0][1] * g1, K[1][0] * g0 + K[1][1] * g1  # dL/df
    y = (Y[0][0] * g0 + Y[0][1] * g1, Y[1][0] * g0 + Y[1][1] * g1)  # dL/db_S (unit rows)
    off = 0.5 * (dz0 * u1 + u0 * dz1)
    grad_A_S = ((l0 * dz0 - y[0] * u0, l0 * dz1 - y[0] * u1), (l1 * dz0 - y[1] * u0, l1 * dz1 - y[1] * u1))
    grad_A, grad_b = [[0.0, 0.0] for _ in range(m)], [0.0] * m
    for k, row, inv_norm in scatter:  # [(slot, row, 1 / |a_row|)] of the used slots
        grad_A[row][0] += grad_A_S[k][0] * inv_norm
        grad_A[row][1] += grad_A_S[k][1] * inv_norm
        grad_b[row] += y[k] * inv_norm
    np_dtype = _NP_DTYPE[dtype]

    def new(x):  # torch.from_numpy(np.array(x)) costs a third of torch.tensor(x)
        return torch.from_numpy(np.array(x, np_dtype))

    if m == 0:
        grad_A, grad_b = torch.zeros(1, 0, 2, dtype=dtype), torch.zeros(1, 0, dtype=dtype)
        return new([[[dz0 * u0, off], [off, dz1 * u1]]]), new([[dz0, dz1]]), grad_A, grad_b, None
    return new([[[dz0 * u0, off], [off, dz1 * u1]]]), new([[dz0, dz1]]), new([grad_A]), new([grad_b]), None


class _PyActiveSetKKT(torch.autograd.Function):
    """`_NumpyActiveSetKKT` for one element whose forward was done in Python floats
    (`_solve_single_py`); saved = (u, lam, Y, K, scatter, m, dtype)."""

    @staticmethod
    def forward(ctx, H, f, A, b, saved):
        ctx.saved = saved
        return torch.from_numpy(np.array([saved[0]], _NP_DTYPE[saved[6]]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        return _py_backward_single(grad_u, ctx.saved)


def _solve_single_py(H, f, A, b, mask, active_hint):
    """`_solve_exact_numpy` for one element (B = 1) in Python floats, float64 arithmetic (float32
    inputs are exact in it; the results are rounded to float32): a few hundred NumPy calls on
    (1, m) arrays cost more than the arithmetic. The same rules in the same order: the hint (or
    the fast rule's winner: the dual-feasible candidate with the highest objective, first on
    ties) is solved and checked; a failed hint enumerates. Returns None where the winner fails
    its check (infeasible problems, round-off): the NumPy path then applies the full rule."""
    dtype = f.dtype
    m = b.shape[1]
    (h00, h01), (h10, h11) = H.tolist()[0]  # tolist: no detach or indexing needed (us each)
    f0, f1 = f.tolist()[0]
    rows_raw = A.tolist()[0]
    rhs_raw = b.tolist()[0]
    if m == 0:  # one row 0'u <= 1 so that every step sees m >= 1
        rows_raw, rhs_raw = [[0.0, 0.0]], [1.0]
    elif mask is not None:  # masked rows: 0'u <= 1, never active, always satisfied
        for i, real in enumerate(mask.tolist()[0]):
            if not real:
                rows_raw[i], rhs_raw[i] = [0.0, 0.0], 1.0
    mm = len(rhs_raw)
    h01 = 0.5 * (h01 + h10)
    det = h00 * h11 - h01 * h01
    i00, i01, i11 = h11 / det, -h01 / det, h00 / det
    hinv = (i00, i01, i01, i11)
    u0 = (-(i00 * f0 + i01 * f1), -(i01 * f0 + i11 * f1))
    feas, u0_norm = FEAS_TOL[dtype], math.hypot(u0[0], u0[1])
    tie, sing_tol = TIE_REL[dtype], SINGULAR_TOL[dtype]
    # unit rows: violations become distances; zero rows stay zero
    rows, rhs, b_tol, inv_norms = [], [], [], []
    for (x, y), c in zip(rows_raw, rhs_raw):
        norm = math.sqrt(x * x + y * y)
        scale = norm if norm > 0 else 1.0
        c = c / scale
        rows.append((x / scale, y / scale))
        rhs.append(c)
        b_tol.append(c + feas * (1 + abs(c) + u0_norm))
        inv_norms.append(1.0 / scale)

    def solve(active):
        i, j = active
        kkt = _py_kkt(hinv, u0, rows[i] if i >= 0 else None, rhs[i] if i >= 0 else None,
                      rows[j] if j >= 0 else None, rhs[j] if j >= 0 else None, sing_tol)
        u, lam, ok = kkt[0], kkt[1], kkt[2]
        least = min(lam)
        passed = ok and least >= -tie * (1 + abs(least)) and all(
            a[0] * u[0] + a[1] * u[1] <= bt for a, bt in zip(rows, b_tol))
        return passed, kkt

    passed = False
    if active_hint is not None:  # canonical order: rows ascending, then -1
        hint = sorted(k if k >= 0 else mm for k in active_hint.tolist()[0])
        active = tuple(k if k < mm else -1 for k in hint)
        passed, kkt = solve(active)
    if not passed:  # the fast rule: dual-feasible candidate with the highest objective
        AH = [(x * i00 + y * i01, x * i01 + y * i11) for x, y in rows]
        Gd = [ah[0] * a[0] + ah[1] * a[1] for ah, a in zip(AH, rows)]
        r = [a[0] * u0[0] + a[1] * u0[1] - c for a, c in zip(rows, rhs)]
        best, active = 0.0, (-1, -1)  # the empty set: objective 0, always dual feasible
        for i in range(mm):
            if Gd[i] > 0:
                lam1 = r[i] / Gd[i]
                obj = 0.5 * lam1 * r[i]
                if obj > best and lam1 >= -tie * (1 + abs(lam1)):
                    best, active = obj, (i, -1)
        # pairs; a pair with a zero row is singular (q = 0, det = 0): left out. A pair of rows
        # that u0 satisfies (r <= 0) is skipped where it cannot win: its multipliers pass the
        # dual test only if >= -tie / (1 - tie), so its objective is <= tie (|r_i| + |r_j|),
        # and `best` only grows -- the same winner as the full enumeration, fewer candidates.
        pairs = [(Gd[k], r[k], rows[k][0], rows[k][1], AH[k], k) for k in range(mm) if Gd[k] > 0]
        violated = [e for e in pairs if e[1] > 0]
        slack_max = max([-e[1] for e in pairs if e[1] <= 0], default=0.0)
        for n_i, (p, rI, _, _, (ah0, ah1), i) in enumerate(pairs):
            if rI <= 0 and best > tie * (slack_max - rI):
                partners = [e for e in violated if e[5] > i]
            else:
                partners = pairs[n_i + 1:]
            p_tol = sing_tol * p
            for s, rJ, x, y, _, j in partners:
                q = ah0 * x + ah1 * y
                det = p * s - q * q
                if det > p_tol * s:  # else singular: duplicated or parallel rows
                    lam_I = (s * rI - q * rJ) / det
                    lam_J = (p * rJ - q * rI) / det
                    obj = 0.5 * (lam_I * rI + lam_J * rJ)
                    if obj > best:
                        least = lam_I if lam_I < lam_J else lam_J
                        if least >= -tie * (1 + abs(least)):
                            best, active = obj, (i, j)
        passed, kkt = solve(active)
        if not passed:
            return None
    u, lam, _, used, Y, K = kkt
    scatter, lam_rows = [], [0.0] * mm
    for k, (row, real, lam_k) in enumerate(zip(active, used, lam)):
        if real:
            scatter.append((k, row, inv_norms[row]))
            lam_rows[row] += lam_k * inv_norms[row]
    if torch.is_grad_enabled() and (H.requires_grad or f.requires_grad or A.requires_grad or b.requires_grad):
        u_t = _PyActiveSetKKT.apply(H, f, A, b, (u, lam, Y, K, scatter, m, dtype))
    else:
        u_t = torch.from_numpy(np.array([u], _NP_DTYPE[dtype]))
    np_dtype = _NP_DTYPE[dtype]
    lam_t = torch.from_numpy(np.array([lam_rows[:m]], np_dtype).reshape(1, m))
    return QPSolution(u_t, torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=dtype), lam_t,
                      torch.ones(1, dtype=torch.bool), torch.from_numpy(np.array([active], np.int64)))


def _np_unit_problem(Hn, fn, An, bn, float_dtype):
    """H^-1 (B, 2, 2), u0 = -H^-1 f (B, 2), unit rows Au (B, m, 2) and bu (B, m), the feasibility
    bound b_tol (B, m) and the row norms `scale` (B, m) of NumPy problems (masked rows already
    0'u <= 1). One element in float64 is done in Python floats (NumPy calls cost more)."""
    dtype = fn.dtype
    if Hn.shape[0] == 1 and dtype == np.float64:  # one element: Python floats beat NumPy calls
        (h00, h01), (h10, h11) = Hn[0].tolist()
        h01 = 0.5 * (h01 + h10)
        det = h00 * h11 - h01 * h01
        i00, i01, i11 = h11 / det, -h01 / det, h00 / det
        f0, f1 = fn[0].tolist()
        Hinv = np.array([[[i00, i01], [i01, i11]]])
        u0 = np.array([[-(i00 * f0 + i01 * f1), -(i01 * f0 + i11 * f1)]])
    else:
        Hn = 0.5 * (Hn + Hn.transpose(0, 2, 1))
        # Cayley-Hamilton as `_inv_spd`: H^-1 = (tr(H) I - H) / det(H)
        det = Hn[:, 0, 0] * Hn[:, 1, 1] - Hn[:, 0, 1] * Hn[:, 1, 0]
        Hinv = ((Hn[:, 0, 0] + Hn[:, 1, 1])[:, None, None] * _NP_EYE2[dtype] - Hn) / det[:, None, None]
        u0 = -(Hinv @ fn[:, :, None])[..., 0]
    # unit rows: violations become distances; zero rows stay zero
    norm = np.sqrt((An * An).sum(-1))
    scale = np.where(norm > 0, norm, 1).astype(dtype, copy=False)
    Au, bu = An / scale[..., None], bn / scale
    b_tol = bu + FEAS_TOL[float_dtype] * (1 + np.abs(bu) + np.hypot(u0[:, :1], u0[:, 1:]))
    return Hinv, u0, Au, bu, b_tol, scale


_USE_COMPILED = True  # tests switch it off to compare the compiled loop with the NumPy path


def _solve_exact_compiled(H, f, A, b, Hn, fn, An, bn, mask, active_hint):
    """`_solve_exact_numpy` for B > 1 through `model.qp_compiled.solve_batch` (the arithmetic of
    `_solve_single_py`, compiled, float64 inside); elements it cannot settle (its check fails:
    infeasible problems, round-off) get the NumPy path's full rule. Hn, fn, An, bn: the NumPy
    views of H, f, A, b (m >= 1); mask (B, m) NumPy bool or None (not yet applied).
    Returns the QPSolution of `_solve_exact_numpy`."""
    from model.qp_compiled import allocate_outputs, solve_batch

    float_dtype, dtype = f.dtype, fn.dtype
    B, mm = bn.shape
    m = b.shape[1]
    outputs = allocate_outputs(B, mm)
    u, lam, used, Y, K, active, inv_norm, lam_rows, passed = outputs
    has_mask, has_hint = mask is not None and m > 0, active_hint is not None
    mask_arg = mask if has_mask else np.ones((1, 1), np.bool_)
    hint_arg = active_hint.numpy() if has_hint else np.full((1, 2), -1, np.int64)
    solve_batch(Hn, fn, An, bn, mask_arg, has_mask, hint_arg, has_hint, FEAS_TOL[float_dtype],
                TIE_REL[float_dtype], SINGULAR_TOL[float_dtype], *outputs)
    u, lam, Y, K = (x.astype(dtype) for x in (u, lam, Y, K))
    inv_norm, lam_rows = inv_norm.astype(dtype), lam_rows.astype(dtype)
    feasible, violation = passed.copy(), np.zeros(B, dtype)
    if not passed.all():  # the NumPy path's full rule on those elements only
        rest = np.flatnonzero(~passed)
        An_r, bn_r = An[rest], bn[rest]
        if has_mask:
            keep = mask[rest]
            An_r = np.where(keep[..., None], An_r, 0).astype(dtype, copy=False)
            bn_r = np.where(keep, bn_r, 1).astype(dtype, copy=False)
        Hinv, u0, Au, bu, b_tol, scale = _np_unit_problem(Hn[rest], fn[rest], An_r, bn_r, float_dtype)
        best, feasible[rest], violation[rest] = _np_select(Hinv, Au, u0, bu, b_tol, float_dtype)
        active[rest] = _np_tables(mm)[3][best]
        u[rest], lam[rest], _, used_r, Y[rest], K[rest] = _np_slot_kkt(
            Hinv, u0, Au, bu, active[rest], SINGULAR_TOL[float_dtype])
        slot_norm = np.take_along_axis(scale, np.maximum(active[rest], 0), 1)  # (R, 2)
        inv_norm[rest] = np.where(used_r, 1 / slot_norm, 0)
        onehot = np.arange(mm)[None, :, None] == np.maximum(active[rest], 0)[:, None, :]  # (R, m', 2)
        lam_rows[rest] = (onehot * inv_norm[rest][:, None, :] @ lam[rest][:, :, None])[..., 0]
    if torch.is_grad_enabled() and (H.requires_grad or f.requires_grad or A.requires_grad or b.requires_grad):
        u_t = _CompiledActiveSetKKT.apply(H, f, A, b, dict(u=u, lam=lam, Y=Y, K=K, active=active,
                                                           inv_norm=inv_norm, m=m))
    else:
        u_t = torch.from_numpy(u)
    return QPSolution(u_t, torch.from_numpy(feasible), torch.from_numpy(violation),
                      torch.from_numpy(lam_rows[:, :m]), torch.ones(B, dtype=torch.bool), torch.from_numpy(active))


def _solve_exact_numpy(H, f, A, b, mask, active_hint):
    """`solve_qp`'s exact backend for CPU tensors with n = 2, in NumPy: raw inputs H (B, 2, 2),
    f (B, 2), A (B, m, 2), b (B, m), mask (B, m) | None, active_hint (B, 2) | None (validated).
    Returns the QPSolution of `_solve_exact` (lam (B, m))."""
    B, m = b.shape
    if B == 1 and _USE_PY_SINGLE:
        sol = _solve_single_py(H, f, A, b, mask, active_hint)
        if sol is not None:
            return sol
    float_dtype = f.dtype
    Hn, fn, An, bn = (x.detach().numpy() for x in (H, f, A, b))
    dtype = fn.dtype
    compiled = _USE_COMPILED and B > 1
    if m == 0:  # one row 0'u <= 1 so that every step sees m >= 1
        An, bn = np.zeros((B, 1, 2), dtype), np.ones((B, 1), dtype)
    elif mask is not None:  # masked rows: 0'u <= 1, never active, always satisfied
        mask = mask.numpy()
        if not compiled:  # the compiled loop reads the mask itself
            An, bn = np.where(mask[..., None], An, 0).astype(dtype, copy=False), np.where(mask, bn, 1).astype(dtype, copy=False)
    if compiled:
        return _solve_exact_compiled(H, f, A, b, Hn, fn, An, bn, mask, active_hint)
    mm = An.shape[1]
    Hinv, u0, Au, bu, b_tol, scale = _np_unit_problem(Hn, fn, An, bn, float_dtype)
    tie, sing_tol = TIE_REL[float_dtype], SINGULAR_TOL[float_dtype]
    table = _np_tables(mm)[3]
    if active_hint is None:  # the fast rule's winner, checked below
        objective, ok, least_lam, _ = _np_candidates(Hinv, Au, u0, bu, sing_tol, False)
        active = table[np.where(ok & _np_dual_ok(least_lam, tie), objective, -np.inf).argmax(-1)]
    else:  # canonical order: rows ascending, then -1 (bit-identical to the enumerated set)
        hint = active_hint.numpy()
        active = np.sort(np.where(hint < 0, mm, hint), -1)
        active[active >= mm] = -1
    slot_kkt = _py_slot_kkt if B == 1 and dtype == np.float64 else _np_slot_kkt
    u, lam, ok, used, Y, K = slot_kkt(Hinv, u0, Au, bu, active, sing_tol)
    # the checks of the enumeration's winner / `_check_hint`: regular, lam >= -tol, primal
    least = lam.min(-1)
    passed = ok & _np_dual_ok(least, tie) & ((Au @ u[:, :, None])[..., 0] <= b_tol).all(-1)
    feasible, violation = passed, np.zeros(B, dtype)
    if not passed.all():  # infeasible problems, round-off, failed hints: enumerate those
        rest = np.flatnonzero(~passed)
        best_r, feasible[rest], violation[rest] = _np_select(Hinv[rest], Au[rest], u0[rest], bu[rest], b_tol[rest],
                                                             float_dtype)
        active[rest] = table[best_r]
        u_r, lam_r, _, used_r, Y_r, K_r = slot_kkt(Hinv[rest], u0[rest], Au[rest], bu[rest], active[rest],
                                                        sing_tol)
        u[rest], lam[rest], used[rest], Y[rest], K[rest] = u_r, lam_r, used_r, Y_r, K_r
    # slot -> row, scaled back to the raw rows (lam_i = lam_unit_i / |a_i|), (B, m', 2)
    if B == 1 and dtype == np.float64:  # Python floats; `scatter` as [(slot, row, 1 / |a_row|)]
        scatter, lam_rows = [], np.zeros((1, mm))
        for k, (row, real, lam_k) in enumerate(zip(active[0].tolist(), used[0].tolist(), lam[0].tolist())):
            if real:
                inv_norm = 1.0 / float(scale[0, row])
                scatter.append((k, row, inv_norm))
                lam_rows[0, row] += lam_k * inv_norm
        lam_rows = lam_rows[:, :m]
    else:
        scatter = (np.arange(mm)[None, :, None] == np.maximum(active, 0)[:, None, :]) * used[:, None, :]
        scatter = scatter / scale[:, :, None]  # bool / float: the float dtype
        lam_rows = (scatter @ lam[:, :, None])[:, :m, 0]
    if torch.is_grad_enabled() and (H.requires_grad or f.requires_grad or A.requires_grad or b.requires_grad):
        u_t = _NumpyActiveSetKKT.apply(H, f, A, b, dict(u=u, lam=lam, Y=Y, K=K, scatter=scatter, m=m))
    else:
        u_t = torch.from_numpy(u)
    return QPSolution(u_t, torch.from_numpy(feasible), torch.from_numpy(violation), torch.from_numpy(lam_rows),
                      torch.ones(B, dtype=torch.bool), torch.from_numpy(active))


# ----------------------------------------------------------------------------------------------
# qpth backend


def _solve_qpth(H, f, A, b):
    from qpth.qp import QPFunction

    dtype = f.dtype
    H64, f64, A64, b64 = (x.to(torch.float64) for x in (H, f, A, b))
    B, m, n = A64.shape
    with torch.no_grad():
        u0 = -torch.linalg.solve(H64, f64[..., None])[..., 0]
        zero_row = A64.abs().amax(-1) == 0  # masked rows are zero rows by now
        far = u0[:, :1] + QPTH_FAR * (1 + u0.abs().amax(-1, keepdim=True) + b64.abs().amax(-1, keepdim=True))
        # a copy of the element's first real row, shifted outwards by 1 + |b|, is never active
        # and, unlike a far-away row, does not stall qpth's interior-point iterations
        real = ~zero_row
        first_real = real.to(torch.int8).argmax(-1)  # (B,)
        has_real = real.any(-1)
    e1 = torch.zeros(n, dtype=torch.float64, device=f.device)
    e1[0] = 1
    spare_row = torch.where(has_real[:, None], A64[torch.arange(B, device=f.device), first_real], e1)
    first_rhs = b64.gather(1, first_real[:, None])[:, 0]
    spare_rhs = torch.where(has_real, first_rhs + 1 + first_rhs.abs(), far[:, 0])
    A_q = torch.where(zero_row[..., None], spare_row[:, None, :], A64)
    b_q = torch.where(zero_row, spare_rhs[:, None], b64)
    empty = torch.empty(0, dtype=torch.float64, device=f.device)
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (H64, f64, A_q, b_q))
    if needs_grad:
        u = QPFunction(verbose=-1)(H64, f64, A_q, b_q, empty, empty)
    else:
        # run with a throw-away graph so that qpth's context (its multipliers) can be read
        with torch.enable_grad():
            u = QPFunction(verbose=-1)(H64, f64.detach().requires_grad_(), A_q.detach(), b_q.detach(), empty, empty)
    # qpth 0.0.18 keeps its inequality multipliers on the autograd context
    lam_q = getattr(u.grad_fn, "lams", None)
    if not needs_grad:
        u = u.detach()

    with torch.no_grad():
        ud = u.detach()
        row_norm = A64.norm(dim=-1)
        tol = QPTH_FEAS_TOL * (1 + b64.abs() + row_norm * ud.abs().amax(-1, keepdim=True))
        resid = (A64 @ ud[..., None])[..., 0] - b64
        ok = torch.isfinite(ud).all(-1) & (resid <= tol).all(-1)
        if lam_q is not None and lam_q.shape == b_q.shape:
            # qpth stops after `notImprovedLim` stalled steps and returns its best iterate, which
            # can be primal feasible yet far from optimal: check stationarity and complementarity
            scale = 1 + ((H64 @ ud[..., None])[..., 0] * ud).sum(-1).abs() + (f64 * ud).sum(-1).abs()
            slack = (b_q - (A_q @ ud[..., None])[..., 0]).clamp(min=0)
            gap = (lam_q * slack).abs().amax(-1)
            stationarity = ((H64 @ ud[..., None])[..., 0] + f64 + (A_q.transpose(1, 2) @ lam_q[..., None])[..., 0])
            ok &= (gap <= QPTH_GAP_TOL * scale) & (stationarity.abs().amax(-1) <= QPTH_STAT_TOL * scale.sqrt())
            ok &= torch.isfinite(lam_q).all(-1)
    if u.requires_grad:
        # qpth's backward of a rejected element can be NaN: zero it (that element's action
        # comes from the exact fallback, whose gradient is used instead).
        u.register_hook(lambda g: torch.where(ok[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device)))
    u = torch.where(ok[:, None], u, torch.zeros((), dtype=u.dtype, device=u.device))
    u = u.to(dtype)
    feasible = ok
    violation = torch.zeros_like(f[:, 0])
    if not bool(ok.all()):  # qpth syncs anyway; the exact solver redoes the rejected rows only
        bad = (~ok).nonzero()[:, 0]
        fallback = _solve_exact(H[bad], f[bad], A[bad], b[bad])
        u = u.index_put((bad,), fallback.u)
        # the exact solver tells an infeasible problem from a qpth failure on a feasible one
        feasible = feasible.index_put((bad,), fallback.feasible)
        violation = violation.index_put((bad,), fallback.violation)
    return QPSolution(u, feasible, violation, None, ok)


# ----------------------------------------------------------------------------------------------
# public API


def _validate_hint(active_hint, f, m):
    B, n = f.shape
    if not isinstance(active_hint, Tensor) or active_hint.dtype != torch.int64:
        raise TypeError(f"active_hint must be a torch.int64 tensor of shape (B, n) = {(B, n)}, got "
                        f"{getattr(active_hint, 'dtype', type(active_hint).__name__)}")
    if active_hint.shape != (B, n):
        raise ValueError(f"active_hint has shape {tuple(active_hint.shape)}; accepted: (B, n) = {(B, n)}")
    if active_hint.device != f.device:
        raise ValueError(f"active_hint is on {active_hint.device}; accepted: the device of f ({f.device})")
    # range check only where it costs no host sync (elsewhere a bad index just fails the check)
    if not _sync_free_default(f.device) and B > 0 and (int(active_hint.min()) < -1 or int(active_hint.max()) >= m):
        raise ValueError(f"active_hint holds values in [{int(active_hint.min())}, {int(active_hint.max())}]; "
                         f"accepted: row indices 0..{m - 1} or -1 (no row)")


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
    _validate(H, f, A, b, mask, backend)
    num_rows = A.shape[1]
    if active_hint is not None:
        _validate_hint(active_hint, f, num_rows)
    if f.shape[0] == 0:
        exact = backend == "exact"
        return QPSolution(f.new_zeros(f.shape), f.new_zeros(0, dtype=torch.bool), f.new_zeros(0),
                          f.new_zeros(0, num_rows) if exact else None, f.new_zeros(0, dtype=torch.bool),
                          f.new_zeros(f.shape, dtype=torch.int64) if exact else None)
    if backend == "exact" and _USE_NUMPY_CPU and f.device.type == "cpu" and f.shape[1] == 2:
        return _solve_exact_numpy(H, f, A, b, mask, active_hint)
    H, f, A, b = _prepare(H, f, A, b, mask)
    if backend == "exact":
        sol = _solve_exact(H, f, A, b, active_hint=active_hint)
        return sol._replace(lam=sol.lam[:, :num_rows])  # m = 0 problems got a dummy row
    return _solve_qpth(H, f, A, b)


def kkt_residuals(H, f, A, b, u, lam=None, mask=None) -> dict[str, Tensor]:
    """KKT residuals of a candidate solution, per batch element (B,).

    primal: max_i (a_i'u - b_i)_+ over real rows. If lam (B, m) is given also
    stationarity |H u + f + A' lam|_inf, dual: max_i (-lam_i)_+, complementarity:
    max_i |lam_i (a_i'u - b_i)|.
    """
    if mask is None:
        mask = torch.ones(b.shape, dtype=torch.bool, device=b.device)
    resid = (A @ u[..., None])[..., 0] - b
    zero = torch.zeros((), dtype=resid.dtype, device=resid.device)
    out = {"primal": torch.where(mask, resid, zero).clamp(min=0).amax(-1)}
    if lam is not None:
        lam = torch.where(mask, lam, zero)
        grad = (H @ u[..., None])[..., 0] + f + (A.transpose(1, 2) @ lam[..., None])[..., 0]
        out["stationarity"] = grad.abs().amax(-1)
        out["dual"] = (-lam).clamp(min=0).amax(-1)
        out["complementarity"] = (lam * torch.where(mask, resid, zero)).abs().amax(-1)
    return out


# ----------------------------------------------------------------------------------------------
# benchmark helpers (used by benchmarks/qp_speed.py and the qp_benchmark stage)


def cbf_benchmark_problems(batch: int, num_obstacles: int = 2, dtype=torch.float64, device="cpu", seed: int = 0,
                           v_max: float = 1.0, w_max: float = 2.84, arena_size: float = 20.0,
                           lookahead: float = 0.2, dt: float = 0.05, gamma: float = 0.2) -> tuple[Tensor, ...]:
    """Random CBF-structured QPs shaped like the unicycle safety layer (n = 2, u = (v, w)).

    All problems are feasible (u = 0 satisfies every row), as for a safe state.
    Rows: 4 control bounds (0 <= v <= v_max, |w| <= w_max), 4 walls and `num_obstacles` circles,
    each a discrete-time CBF row on the look-ahead point p_l = p + l (cos t, sin t) linearised:
    -dt grad h(p_l)' J u <= gamma h, J = R(t) diag(1, l). Obstacles are masked out at random
    (about one in four) to exercise masks. Cost: weights (1, 0.1), nominal action u_nom drawn
    partly outside the bounds: H = diag(w), f = -H u_nom.
    Returns H (B,2,2), f (B,2), A (B,m,2), b (B,m), mask (B,m) with m = 8 + num_obstacles.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    half = arena_size / 2
    pos = (rand(batch, 2) * 2 - 1) * (half - 0.5)
    theta = (rand(batch) * 2 - 1) * math.pi
    look = pos + lookahead * torch.stack([theta.cos(), theta.sin()], -1)
    # J maps (v, w) to the look-ahead point's velocity
    J = torch.stack([torch.stack([theta.cos(), -lookahead * theta.sin()], -1),
                     torch.stack([theta.sin(), lookahead * theta.cos()], -1)], -2)  # (B, 2, 2)
    rows, rhs = [], []
    eye = torch.eye(2, dtype=torch.float64)
    for sign, limit in ((1.0, v_max), (-1.0, 0.0)):
        rows.append((sign * eye[0]).expand(batch, 2))
        rhs.append(torch.full((batch,), limit, dtype=torch.float64))
    for sign in (1.0, -1.0):
        rows.append((sign * eye[1]).expand(batch, 2))
        rhs.append(torch.full((batch,), w_max, dtype=torch.float64))
    margin = half - 0.25
    for axis in (0, 1):
        for sign in (1.0, -1.0):  # h = margin - sign * p_l[axis] >= 0
            h = margin - sign * look[:, axis]
            grad = torch.zeros(batch, 2, dtype=torch.float64)
            grad[:, axis] = -sign
            rows.append(-dt * (grad[:, None, :] @ J)[:, 0])
            rhs.append(gamma * h)
    obstacle_mask = []
    for _ in range(num_obstacles):
        # radius 0.3..1.0 (+ body and margin), the look-ahead point 0.05..2.55 m outside it:
        # h > 0, so u = 0 satisfies every row and the problem is feasible
        direction = (rand(batch) * 2 - 1) * math.pi
        radius = 0.3 + 0.7 * rand(batch) + 0.25
        dist = radius + 0.05 + 2.5 * rand(batch)
        centre = look + dist[:, None] * torch.stack([direction.cos(), direction.sin()], -1)
        diff = look - centre
        h = diff.norm(dim=-1) - radius
        grad = diff / diff.norm(dim=-1, keepdim=True)
        rows.append(-dt * (grad[:, None, :] @ J)[:, 0])
        rhs.append(gamma * h)
        obstacle_mask.append(rand(batch) > 0.25)
    A = torch.stack(rows, 1)
    b = torch.stack(rhs, 1)
    mask = torch.cat([torch.ones(batch, 8, dtype=torch.bool)] + [om[:, None] for om in obstacle_mask], 1)
    weights = torch.tensor([1.0, 0.1], dtype=torch.float64)
    H = torch.diag_embed(weights.expand(batch, 2)).clone()
    u_nom = torch.stack([rand(batch) * 1.6 * v_max - 0.3 * v_max, (rand(batch) * 2 - 1) * 1.3 * w_max], -1)
    f = -(H @ u_nom[..., None])[..., 0]
    return tuple(x.to(device=device, dtype=dtype) for x in (H, f, A, b)) + (mask.to(device),)


def time_solver(backend: str, H: Tensor, f: Tensor, A: Tensor, b: Tensor, mask: Tensor | None = None,
                backward: bool = False, repeats: int = 20, warmup: int = 3, clock: str = "wall") -> float:
    """Median time (seconds) of one `solve_qp` call (plus `u.sum().backward()` if backward) on
    this batch, after `warmup` untimed calls. clock: "wall" (time.perf_counter) or "cpu" (this
    process's CPU time, time.process_time: steadier on a busy machine, meaningful with one
    torch thread on CPU only). CUDA work is synchronised before each reading."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}; accepted: repeats >= 1, warmup >= 0")
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    if clock not in clocks:
        raise ValueError(f"clock={clock!r}; accepted: {', '.join(map(repr, clocks))}")
    now = clocks[clock]
    cuda = f.device.type == "cuda"
    leaves = [x.detach().clone().requires_grad_(backward) for x in (H, f, A, b)]
    times = []
    for i in range(warmup + repeats):
        for leaf in leaves:
            leaf.grad = None
        if cuda:
            torch.cuda.synchronize(f.device)
        start = now()
        if backward:
            solve_qp(*leaves, backend=backend, mask=mask).u.sum().backward()
        else:
            with torch.no_grad():
                solve_qp(*leaves, backend=backend, mask=mask)
        if cuda:
            torch.cuda.synchronize(f.device)
        if i >= warmup:
            times.append(now() - start)
    return statistics.median(times)
