"""Batched quadratic programs for the CBF safety layer.

`solve_qp(H, f, A, b, backend, mask)` solves, for every batch element,

    min_u  1/2 u'Hu + f'u   subject to   A u <= b        (rows where mask is True)

with H (B, n, n) symmetric positive definite, f (B, n), A (B, m, n), b (B, m), and returns a
`QPSolution(u, feasible, violation, lam)`. The solution is differentiable in H, f, A and b.

Backends
--------
``"exact"`` (default): active-set enumeration, meant for the small n of this project (n = 2:
u = (v, w)). A strictly convex QP has a unique optimum, and (Caratheodory) it solves the
equality-constrained problem of some set S of at most n linearly independent rows. So we
enumerate every S with |S| <= n once (cached per (m, n, device)), solve each KKT system

    [H  A_S'] [u  ]   [-f ]
    [A_S  0 ] [lam] = [b_S]

for all candidates of the whole batch at once (closed forms for n = 2, `torch.linalg` else),
and keep, among the candidates that satisfy every row, the one with the lowest objective
(equal to the optimum: it is one of the candidates, and every feasible candidate costs at
least as much). No iterations, no convergence tolerance, no host synchronisation. Singular
systems (zero rows, duplicated or parallel rows, masked rows) mark that candidate invalid; a
zero row ``0'u <= b`` is satisfied iff b >= 0. Autograd runs through a recomputation of the
winning candidate only (one small solve per element), not through all candidates.

``"qpth"``: qpth 0.0.18's interior-point `QPFunction` in float64 (cast in and out), kept as the
reference design and for speed comparisons. qpth returns NaN on zero rows, so masked rows and
real zero rows are replaced by a copy of the element's first real row (the same constraint
twice changes nothing; a far-away row ``e_1'u <= BIG`` was tried and makes qpth's 20 interior-point
iterations stop short, errors up to 0.7 on our CBF problems); an element without any real row
gets the far-away row ``e_1'u <= e_1'u0 + QPTH_FAR * scale``. qpth never raises on
infeasible or inaccurate problems, so we check the result: NaN, or a row violated by more than
`QPTH_FEAS_TOL` (relative), marks it infeasible, and its action is replaced by the exact
backend's fallback below (qpth's gradient for that element is zeroed, never NaN).

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


class QPSolution(NamedTuple):
    """Result of `solve_qp`.

    u:         (B, n) the optimum, or the documented fallback where infeasible.
    feasible:  (B,) bool, True where every (unmasked) row can be satisfied.
    violation: (B,) largest row violation of ``u`` as a distance (0 where feasible).
    lam:       (B, m) KKT multipliers (H u + f + A' lam = 0, lam >= 0 where feasible; zero on
               inactive and masked rows) from the exact backend; None from qpth.
    """

    u: Tensor
    feasible: Tensor
    violation: Tensor
    lam: Tensor | None = None


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
    set, then the singletons, then the pairs, ... (C = sum_k binom(m, k), k <= n).
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
    """(B, n, n) inverse; Cramer's rule for n <= 2 (no LAPACK call overhead)."""
    n = H.shape[-1]
    if n == 1:
        return 1.0 / H
    if n == 2:
        h00, h01, h10, h11 = H[:, 0, 0], H[:, 0, 1], H[:, 1, 0], H[:, 1, 1]
        det = h00 * h11 - h01 * h10
        adj = torch.stack([torch.stack([h11, -h01], -1), torch.stack([-h10, h00], -1)], -2)
        return adj / det[:, None, None]
    return torch.linalg.inv(H)


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


def _select_active_set(H, f, A, b):
    """Enumerate every active set (no autograd) and pick the winner per batch element.

    Returns best (B,) candidate index, feasible (B,) bool, violation (B,) of the winner.
    """
    dtype = f.dtype
    B, m, n = A.shape
    idx, used = _candidates(m, n, f.device)  # (C, n)
    Hinv = _inv_spd(H)
    u0 = -(Hinv @ f[..., None])[..., 0]  # (B, n) unconstrained optimum
    AHinv = A @ Hinv  # (B, m, n)  rows of A H^-1 (H^-1 symmetric)
    G = AHinv @ A.transpose(1, 2)  # (B, m, m)  Gram matrix in the H^-1 metric
    r = (A @ u0[..., None])[..., 0] - b  # (B, m)  residual of the unconstrained optimum

    # slot-form KKT blocks of every candidate: M[c] = G[idx[c], idx[c]], rhs[c] = r[idx[c]]
    M = G[:, idx[:, :, None], idx[:, None, :]]  # (B, C, n, n)
    rhs = r[:, idx]  # (B, C, n)
    lam, ok = _kkt_multipliers(M, rhs, used, SINGULAR_TOL[dtype])
    # u_c = u0 - H^-1 A_S' lam ; objective(u_c) - objective(u0) = 1/2 lam' r_S
    u_c = u0[:, None, :] - (AHinv[:, idx] * lam[..., None]).sum(-2)  # (B, C, n)
    objective = 0.5 * (lam * rhs).sum(-1)  # (B, C)

    row_norm = A.norm(dim=-1)  # (B, m)
    tol = FEAS_TOL[dtype] * (1 + b.abs() + row_norm * u0.norm(dim=-1, keepdim=True))
    dist_scale = torch.where(row_norm > 0, row_norm, torch.ones_like(row_norm))
    excess = u_c @ A.transpose(1, 2) - b[:, None, :] - tol[:, None, :]  # (B, C, m)
    violation = (excess.clamp(min=0) / dist_scale[:, None, :]).amax(-1)  # (B, C)
    inf = torch.full((), math.inf, dtype=dtype, device=f.device)
    violation = torch.where(ok, violation, inf)  # the empty set is always ok: never all inf
    least = violation.amin(-1, keepdim=True)  # (B, 1)
    eligible = violation <= least * (1 + TIE_REL[dtype])
    best = torch.where(eligible, objective, inf).argmin(-1)  # (B,)
    feasible = least[:, 0] == 0
    return best, feasible


def _solve_exact(H, f, A, b):
    """Exact solve of prepared inputs (masked rows already neutralised). Returns QPSolution."""
    B, m, n = A.shape
    with torch.no_grad():
        best, feasible = _select_active_set(H.detach(), f.detach(), A.detach(), b.detach())
    idx, used = _candidates(m, n, f.device)
    active = idx[best]  # (B, n)
    active_used = used[best]  # (B, n)

    # recompute the winner with autograd: one small KKT solve per element
    A_S = A.gather(1, active[..., None].expand(B, n, n))  # (B, n, n) slot rows
    b_S = b.gather(1, active)  # (B, n)
    Hinv = _inv_spd(H)
    u0 = -(Hinv @ f[..., None])[..., 0]
    ASHinv = A_S @ Hinv  # (B, n, n)
    M = ASHinv @ A_S.transpose(1, 2)
    rhs = (A_S @ u0[..., None])[..., 0] - b_S
    lam_S, _ = _kkt_multipliers(M, rhs, active_used, SINGULAR_TOL[f.dtype])
    u = u0 - (ASHinv * lam_S[..., None]).sum(-2)

    lam = f.new_zeros(B, m).scatter_add(1, active, lam_S * active_used)
    with torch.no_grad():
        row_norm = A.norm(dim=-1)
        dist_scale = torch.where(row_norm > 0, row_norm, torch.ones_like(row_norm))
        resid = (A @ u.detach()[..., None])[..., 0] - b
        violation = torch.where(feasible, torch.zeros_like(b[:, 0]), (resid.clamp(min=0) / dist_scale).amax(-1))
    return QPSolution(u, feasible, violation, lam)


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
        # a duplicate of the element's first real row is harmless (same constraint) and, unlike
        # a far-away row, does not slow qpth's interior-point iterations down
        real = ~zero_row
        first_real = real.to(torch.int8).argmax(-1)  # (B,)
        has_real = real.any(-1)
    e1 = torch.zeros(n, dtype=torch.float64, device=f.device)
    e1[0] = 1
    spare_row = torch.where(has_real[:, None], A64[torch.arange(B, device=f.device), first_real], e1)
    spare_rhs = torch.where(has_real, b64.gather(1, first_real[:, None])[:, 0], far[:, 0])
    A_q = torch.where(zero_row[..., None], spare_row[:, None, :], A64)
    b_q = torch.where(zero_row, spare_rhs[:, None], b64)
    empty = torch.empty(0, dtype=torch.float64, device=f.device)
    u = QPFunction(verbose=-1)(H64, f64, A_q, b_q, empty, empty)

    with torch.no_grad():
        row_norm = A64.norm(dim=-1)
        tol = QPTH_FEAS_TOL * (1 + b64.abs() + row_norm * u.abs().amax(-1, keepdim=True))
        resid = (A64 @ u[..., None])[..., 0] - b64
        ok = torch.isfinite(u).all(-1) & (resid <= tol).all(-1)
    if u.requires_grad:
        # qpth's backward of an infeasible element can be NaN: zero it (that element's action
        # comes from the exact fallback, whose gradient is used instead).
        u.register_hook(lambda g: torch.where(ok[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device)))
    u = torch.where(ok[:, None], u, torch.zeros((), dtype=u.dtype, device=u.device))
    u = u.to(dtype)
    feasible = ok
    violation = torch.zeros_like(f[:, 0])
    if not bool(ok.all()):  # qpth syncs anyway; the fallback runs on the flagged rows only
        bad = (~ok).nonzero()[:, 0]
        fallback = _solve_exact(H[bad], f[bad], A[bad], b[bad])
        u = u.index_put((bad,), fallback.u)
        # exact can prove a flagged problem feasible (qpth was inaccurate): then it is the optimum
        feasible = feasible.index_put((bad,), fallback.feasible)
        violation = violation.index_put((bad,), fallback.violation)
    return QPSolution(u, feasible, violation, None)


# ----------------------------------------------------------------------------------------------
# public API


def solve_qp(H: Tensor, f: Tensor, A: Tensor, b: Tensor, backend: str = "exact", mask: Tensor | None = None) -> QPSolution:
    """Solve the batch ``min 1/2 u'Hu + f'u  s.t.  A u <= b`` (rows with mask True).

    H (B, n, n) symmetric positive definite (its symmetric part is used), f (B, n),
    A (B, m, n), b (B, m): float32 or float64, one device. mask (B, m) bool or None (all rows
    real); False rows are ignored entirely. backend: "exact" (active-set enumeration; n <= 3
    intended, the candidate count grows as m^n) or "qpth".
    Returns QPSolution(u (B, n), feasible (B,), violation (B,), lam (B, m) | None), in the dtype
    of f; differentiable in H, f, A, b. Infeasible elements get the fallback of the module
    docstring (feasible False), never NaN.
    """
    _validate(H, f, A, b, mask, backend)
    if f.shape[0] == 0:
        return QPSolution(f.new_zeros(f.shape), f.new_zeros(0, dtype=torch.bool), f.new_zeros(0),
                          f.new_zeros(0, A.shape[1]) if backend == "exact" else None)
    num_rows = A.shape[1]
    H, f, A, b = _prepare(H, f, A, b, mask)
    if backend == "exact":
        sol = _solve_exact(H, f, A, b)
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
        # obstacle centred 0.5..3 m from the look-ahead point, radius 0.3..1.0 (+ body and margin)
        direction = (rand(batch) * 2 - 1) * math.pi
        dist = 0.5 + 2.5 * rand(batch)
        centre = look + dist[:, None] * torch.stack([direction.cos(), direction.sin()], -1)
        radius = 0.3 + 0.7 * rand(batch) + 0.25
        diff = look - centre
        h = diff.norm(dim=-1) - radius  # may be negative: infeasible or tight problems occur
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
                backward: bool = False, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (seconds) of one `solve_qp` call (plus `u.sum().backward()` if backward)
    on this batch, after `warmup` untimed calls. CUDA work is synchronised before each reading."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}; accepted: repeats >= 1, warmup >= 0")
    cuda = f.device.type == "cuda"
    leaves = [x.detach().clone().requires_grad_(backward) for x in (H, f, A, b)]
    times = []
    for i in range(warmup + repeats):
        for leaf in leaves:
            leaf.grad = None
        if cuda:
            torch.cuda.synchronize(f.device)
        start = time.perf_counter()
        if backward:
            solve_qp(*leaves, backend=backend, mask=mask).u.sum().backward()
        else:
            with torch.no_grad():
                solve_qp(*leaves, backend=backend, mask=mask)
        if cuda:
            torch.cuda.synchronize(f.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
