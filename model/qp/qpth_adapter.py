"""The ``"qpth"`` backend: qpth 0.0.18's interior-point `QPFunction` in float64 (cast in and out),
kept as the reference design and for speed comparisons, with its answers checked.

qpth returns NaN on zero rows, so masked rows and real zero rows are replaced by a copy of the
element's first real row shifted outwards by 1 + |b| (parallel, never active; a far-away row
``e_1'u <= BIG`` was tried and stalls qpth's 20 interior-point iterations, errors up to 0.7 on our
CBF problems, and an unshifted duplicate of an active row stalls it too); an element without any
real row gets the far-away row ``e_1'u <= e_1'u0 + QPTH_FAR * scale``. qpth never raises on
infeasible or inaccurate problems, so the result is checked: NaN, a row violated by more than
`QPTH_FEAS_TOL` (relative), or a KKT check on qpth's own multipliers (complementarity gap,
stationarity; qpth stalls on some feasible problems and returns a point 0.1-0.9 off) rejects it
(``solver_ok`` False). A rejected element is re-solved by the exact reference solver: ``feasible``
then says whether the problem was infeasible (and ``u`` is the fallback) or qpth merely failed
(and ``u`` is the exact optimum). qpth's gradient for a rejected element is zeroed, never NaN.
"""

from __future__ import annotations

import torch

from model.qp.common import QPTH_FAR, QPTH_FEAS_TOL, QPTH_GAP_TOL, QPTH_STAT_TOL, QPSolution
from model.qp.reference import solve_exact


def solve_qpth(H, f, A, b, sync_free: bool) -> QPSolution:
    """qpth on prepared inputs H (B, n, n), f (B, n), A (B, m, n), b (B, m) (masked rows already
    0'u <= 1, m >= 1); sync_free as `reference.solve_exact` (its fallback for rejected elements).
    Returns the QPSolution of `solve_qp` with lam and active None."""
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
        fallback = solve_exact(H[bad], f[bad], A[bad], b[bad], sync_free)
        u = u.index_put((bad,), fallback.u)
        # the exact solver tells an infeasible problem from a qpth failure on a feasible one
        feasible = feasible.index_put((bad,), fallback.feasible)
        violation = violation.index_put((bad,), fallback.violation)
    return QPSolution(u, feasible, violation, None, ok)

