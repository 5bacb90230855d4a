"""The exact backend's rules in NumPy, CPU, n = 2: the fallback of the CPU n = 2 route.

The plain-Python element and the compiled batch loop (`model.qp.cpu_n2`) settle what the fast rule
settles; the elements they cannot (infeasible problems, round-off at degenerate points) come here
for the full rule (`full_rule_rows`), and a single element (B = 1) that the Python path cannot
settle is solved here whole (`solve`). Tests force `solve` on whole batches (route "cpu_numpy")
to compare it with the torch reference (`model.qp.reference`), whose rules it follows:
on CPU these tensors are tiny and the torch path's cost is per-op overhead (several us per op,
~150 ops), NumPy's is ~1 us. Differences from the reference: the winner's KKT system is solved
once, on the unit rows, and serves as the fast rule's primal check, the hint check and the answer
(the multipliers and gradients are scaled back to the raw rows: lam_i = lam_unit_i / |a_i|).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL, PrecomputedKKT, QPSolution, needs_grad

_NP_TABLES: dict[int, tuple[np.ndarray, ...]] = {}
_NP_EYE2 = {np.dtype(t): np.eye(2, dtype=t) for t in (np.float64, np.float32)}

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


def full_rule_rows(Hn, fn, An, bn, mask, float_dtype):
    """The full rule (`_np_select`) for elements another implementation could not settle:
    Hn (R, 2, 2), fn (R, 2), An (R, m, 2), bn (R, m) NumPy (m >= 1), mask (R, m) bool or None
    (not yet applied). Returns active (R, 2) canonical, feasible (R,), violation (R,), and the
    winner's u, lam (R, 2) per slot, Y, K (R, 2, 2) (the backward's matrices of `_np_slot_kkt`),
    inv_norm (R, 2) = 1 / |a_row| of used slots (0 elsewhere), lam_rows (R, m) on the raw rows."""
    dtype = fn.dtype
    mm = bn.shape[1]
    if mask is not None:
        An = np.where(mask[..., None], An, 0).astype(dtype, copy=False)
        bn = np.where(mask, bn, 1).astype(dtype, copy=False)
    Hinv, u0, Au, bu, b_tol, scale = _np_unit_problem(Hn, fn, An, bn, float_dtype)
    best, feasible, violation = _np_select(Hinv, Au, u0, bu, b_tol, float_dtype)
    active = _np_tables(mm)[3][best]
    u, lam, _, used, Y, K = _np_slot_kkt(Hinv, u0, Au, bu, active, SINGULAR_TOL[float_dtype])
    slot_norm = np.take_along_axis(scale, np.maximum(active, 0), 1)  # (R, 2)
    inv_norm = np.where(used, 1 / slot_norm, 0).astype(dtype, copy=False)
    onehot = np.arange(mm)[None, :, None] == np.maximum(active, 0)[:, None, :]  # (R, m', 2)
    lam_rows = (onehot * inv_norm[:, None, :] @ lam[:, :, None])[..., 0]
    return active, feasible, violation, u, lam, Y, K, inv_norm, lam_rows


def _np_backward(grad_u, u, lam, Y, K, scatter, m):
    """The implicit-function backward of the winner's KKT system (as `reference._ActiveSetKKT`),
    from the saved NumPy pieces: grad_u (B, 2) -> grads of H (B, 2, 2), f (B, 2), A (B, m, 2),
    b (B, m); the active rows' gradients land on A and b through `scatter` (B, m', 2): one-hot
    slot -> row, / |a_i|."""
    g = grad_u.numpy()[:, :, None]
    dz, y = (K @ g)[..., 0], (Y @ g)[..., 0]  # dL/df, dL/db_S (unit rows)
    outer = dz[:, :, None] * u[:, None, :]
    grad_H = 0.5 * (outer + outer.transpose(0, 2, 1))
    grad_A_S = lam[:, :, None] * dz[:, None, :] - y[:, :, None] * u[:, None, :]
    grad_A = (scatter @ grad_A_S)[:, :m]
    grad_b = (scatter @ y[:, :, None])[:, :m, 0]
    return torch.from_numpy(grad_H), torch.from_numpy(dz), torch.from_numpy(grad_A), torch.from_numpy(grad_b)


def solve(H, f, A, b, mask, active_hint, element_kkt: Callable | None = None,
          element_backward: Callable | None = None) -> QPSolution:
    """`solve_qp`'s exact backend for CPU tensors with n = 2, in NumPy: raw inputs H (B, 2, 2),
    f (B, 2), A (B, m, 2), b (B, m), mask (B, m) | None, active_hint (B, 2) | None (validated).
    For one float64 element (B = 1) the caller may pass the Python-float KKT solve
    (`element_kkt`, the signature of `_np_slot_kkt`) and backward (`element_backward(grad_u, u,
    lam, Y, K, scatter, m)` with scatter [(slot, row, 1 / |a_row|)]): a dozen NumPy calls on
    (1, 2, 2) arrays cost more than the arithmetic.
    Returns the QPSolution of `solve_qp` (lam (B, m)), differentiable in H, f, A, b."""
    B, m = b.shape
    float_dtype = f.dtype
    Hn, fn, An, bn = (x.detach().numpy() for x in (H, f, A, b))
    dtype = fn.dtype
    one_element = B == 1 and dtype == np.float64 and element_kkt is not None
    if m == 0:  # one row 0'u <= 1 so that every step sees m >= 1
        An, bn = np.zeros((B, 1, 2), dtype), np.ones((B, 1), dtype)
    elif mask is not None:  # masked rows: 0'u <= 1, never active, always satisfied
        mask = mask.numpy()
        An, bn = np.where(mask[..., None], An, 0).astype(dtype, copy=False), np.where(mask, bn, 1).astype(dtype, copy=False)
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
    slot_kkt = element_kkt if one_element else _np_slot_kkt
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
    if one_element:  # Python floats; `scatter` as [(slot, row, 1 / |a_row|)]
        scatter, lam_rows = [], np.zeros((1, mm))
        for k, (row, real, lam_k) in enumerate(zip(active[0].tolist(), used[0].tolist(), lam[0].tolist())):
            if real:
                inv_norm = 1.0 / float(scale[0, row])
                scatter.append((k, row, inv_norm))
                lam_rows[0, row] += lam_k * inv_norm
        lam_rows = lam_rows[:, :m]
        backward = element_backward
    else:
        scatter = (np.arange(mm)[None, :, None] == np.maximum(active, 0)[:, None, :]) * used[:, None, :]
        scatter = scatter / scale[:, :, None]  # bool / float: the float dtype
        lam_rows = (scatter @ lam[:, :, None])[:, :m, 0]
        backward = _np_backward
    if needs_grad(H, f, A, b):
        # a copy of u: the caller may modify the returned u in place, the backward needs the original
        u_t = PrecomputedKKT.apply(H, f, A, b, lambda: torch.from_numpy(u.copy()),
                                   lambda grad_u: backward(grad_u, u, lam, Y, K, scatter, m))
    else:
        u_t = torch.from_numpy(u)
    return QPSolution(u_t, torch.from_numpy(feasible), torch.from_numpy(violation), torch.from_numpy(lam_rows),
                      torch.ones(B, dtype=torch.bool), torch.from_numpy(active))
