"""The exact backend on the CPU for n = 2 (u = (v, w)), the project's case: one element in
Python floats, a batch through the same arithmetic compiled with numba.

`solve_single` solves one element (B = 1) in Python floats, float64 arithmetic (float32 inputs
are exact in it; the results are rounded to float32): a few hundred NumPy calls on (1, m) arrays
cost more than the arithmetic. It follows the reference's rules in the same order: the hint (or
the fast rule's winner: the dual-feasible candidate with the highest objective, first on ties) is
solved and checked; a failed hint enumerates. `solve_batch` runs exactly that arithmetic for every
element of a batch (B > 1) in one compiled loop (`model.qp.cpu_n2_kernels.solve_batch`, 6-9x
faster than the NumPy calls at B = 256-1024), equal to `solve_single` bit for bit per element
(tested: it is the second implementation). What either cannot settle (its check fails:
infeasible problems, round-off) takes the NumPy rules of `model.qp.cpu_numpy`.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from model.qp import cpu_numpy
from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL, PrecomputedKKT, QPSolution, needs_grad

_NP_DTYPE = {torch.float64: np.float64, torch.float32: np.float32}


def solve(H, f, A, b, mask, active_hint, route: str) -> QPSolution:
    """The CPU n = 2 routes of `model.qp.routing`: raw inputs H (B, 2, 2), f (B, 2), A (B, m, 2),
    b (B, m), mask (B, m) | None, active_hint (B, 2) | None (validated); route "cpu_single"
    (B = 1), "cpu_batch" or "cpu_numpy". Returns the QPSolution of `solve_qp` (lam (B, m))."""
    if route == "cpu_single":
        sol = solve_single(H, f, A, b, mask, active_hint)
        if sol is not None:
            return sol
    elif route == "cpu_batch":
        return solve_batch(H, f, A, b, mask, active_hint)
    return cpu_numpy.solve(H, f, A, b, mask, active_hint, element_kkt=_py_slot_kkt, element_backward=_py_backward)


# ----------------------------------------------------------------------------------------------
# one element in Python floats


def _py_kkt(h, u0, a0, b0, a1, b1, sing_tol):
    """The KKT system of one active set of one element in Python floats (n = 2; the arithmetic
    of `cpu_numpy._np_slot_kkt`). h = (i00, i01, i10, i11) H^-1, u0 (2,), slot rows a0, a1 (2,) and right
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
    """The implicit-function backward of the winner's KKT system (as `reference._ActiveSetKKT`) for
    one element in Python floats: grad_u (1, 2) -> grads of H (1, 2, 2), f (1, 2), A (1, m, 2),
    b (1, m). saved = (u, lam, Y, K, scatter, m, dtype) with scatter [(slot, row, 1 / |a_row|)]."""
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
        return new([[[dz0 * u0, off], [off, dz1 * u1]]]), new([[dz0, dz1]]), grad_A, grad_b
    return new([[[dz0 * u0, off], [off, dz1 * u1]]]), new([[dz0, dz1]]), new([grad_A]), new([grad_b])


def _py_slot_kkt(Hinv, u0, A, b, active, sing_tol):
    """`cpu_numpy._np_slot_kkt` for one float64 element (B = 1) through `_py_kkt`: a dozen NumPy
    calls on (1, 2, 2) arrays cost more than the arithmetic. Same inputs and outputs."""
    slots = [(A[0, k].tolist(), float(b[0, k])) if k >= 0 else (None, None) for k in active[0].tolist()]
    u, lam, ok, used, Y, K = _py_kkt(Hinv[0].reshape(-1).tolist(), u0[0].tolist(), *slots[0], *slots[1], sing_tol)
    return np.array([u]), np.array([lam]), np.array([ok]), np.array([used]), np.array([Y]), np.array([K])


def _py_backward(grad_u, u, lam, Y, K, scatter, m):
    """`cpu_numpy._np_backward` for one float64 element, through `_py_backward_single`."""
    return _py_backward_single(grad_u, (u[0].tolist(), lam[0].tolist(), Y[0].tolist(), K[0].tolist(), scatter, m, torch.float64))


def solve_single(H, f, A, b, mask, active_hint) -> QPSolution | None:
    """One element (B = 1) in Python floats (see the module docstring): inputs as `solve`.
    Returns the QPSolution of `solve_qp`, or None where the winner fails its check (infeasible
    problems, round-off): `cpu_numpy.solve` then applies the full rule."""
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
    np_dtype = _NP_DTYPE[dtype]
    if needs_grad(H, f, A, b):
        saved = (u, lam, Y, K, scatter, m, dtype)
        u_t = PrecomputedKKT.apply(H, f, A, b, lambda: torch.from_numpy(np.array([u], np_dtype)),
                                   lambda grad_u: _py_backward_single(grad_u, saved))
    else:
        u_t = torch.from_numpy(np.array([u], np_dtype))
    lam_t = torch.from_numpy(np.array([lam_rows[:m]], np_dtype).reshape(1, m))
    return QPSolution(u_t, torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=dtype), lam_t,
                      torch.ones(1, dtype=torch.bool), torch.from_numpy(np.array([active], np.int64)))


# ----------------------------------------------------------------------------------------------
# a batch through the compiled loop


def solve_batch(H, f, A, b, mask, active_hint) -> QPSolution:
    """A batch through `cpu_n2_kernels.solve_batch` (the arithmetic of `solve_single`, compiled,
    float64 inside); elements it cannot settle (its check fails: infeasible problems, round-off)
    get `cpu_numpy.full_rule_rows`. Inputs and result as `solve`."""
    from model.qp.cpu_n2_kernels import backward_batch, contiguous

    Hn, fn, An, bn = (x.detach().numpy() for x in (H, f, A, b))
    B, m = b.shape
    dtype = fn.dtype
    solved = solve_arrays(Hn, fn, An, bn, mask.numpy() if mask is not None else None,
                          active_hint.numpy() if active_hint is not None else None, f.dtype)
    u, lam, Y, K, active, inv_norm, lam_rows, feasible, violation = solved

    def backward(grad_u):  # the formulas of `_py_backward_single`, in the compiled loop
        grads = (np.empty((B, 2, 2), dtype), np.empty((B, 2), dtype), np.empty((B, m, 2), dtype),
                 np.empty((B, m), dtype))
        backward_batch(*contiguous(grad_u.numpy().astype(dtype, copy=False)), u, lam, Y, K, active, inv_norm, *grads)
        return tuple(torch.from_numpy(x) for x in grads)

    if needs_grad(H, f, A, b):
        # a copy of u: the caller may modify the returned u in place, the backward needs the original
        u_t = PrecomputedKKT.apply(H, f, A, b, lambda: torch.from_numpy(u.copy()), backward)
    else:
        u_t = torch.from_numpy(u)
    return QPSolution(u_t, torch.from_numpy(feasible), torch.from_numpy(violation),
                      torch.from_numpy(lam_rows[:, :m]), torch.ones(B, dtype=torch.bool), torch.from_numpy(active))


def solve_arrays(Hn: np.ndarray, fn: np.ndarray, An: np.ndarray, bn: np.ndarray, mask_np: np.ndarray | None,
                 hint_np: np.ndarray | None, float_dtype: torch.dtype,
                 proven_infeasible: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """`solve_batch` on NumPy arrays, no autograd (callers that never need a gradient and whose
    inputs are NumPy already, e.g. `model.cbf_beta`'s box centres, skip the tensor plumbing):
    Hn (B, 2, 2), fn (B, 2), An (B, m, 2), bn (B, m) of one float dtype, mask_np (B, m) bool or
    None, hint_np (B, 2) int64 or None, float_dtype the torch dtype whose tolerances apply.
    Returns u, lam (B, 2), Y, K (B, 2, 2), active (B, 2), inv_norm (B, 2), lam_rows (B, m')
    (m' = max(m, 1)), feasible (B,) bool, violation (B,), in fn's dtype.

    proven_infeasible: for a caller that needs nothing of an infeasible element but the flag.
    Given the indices (R,) of the elements the compiled loop could not settle, it returns (R,)
    bool: True where the full rule would certainly find the element infeasible (a proof with room
    for round-off, e.g. `model.cbf_beta._empty_beyond_round_off`). Those skip the full rule:
    feasible False, every other output NaN (-1 in active). The rest get the full rule as usual."""
    from model.qp.cpu_n2_kernels import allocate_outputs, contiguous, solve_batch as compiled_loop

    dtype = fn.dtype
    B, m = bn.shape
    if m == 0:  # one row 0'u <= 1 so that every step sees m >= 1
        An, bn = np.zeros((B, 1, 2), dtype), np.ones((B, 1), dtype)
    mm = bn.shape[1]
    has_mask, has_hint = mask_np is not None and m > 0, hint_np is not None
    outputs = allocate_outputs(B, mm)
    u, lam, used, Y, K, active, inv_norm, lam_rows, passed = outputs
    mask_arg = mask_np if has_mask else np.ones((1, 1), np.bool_)  # the compiled loop reads the mask itself
    hint_arg = hint_np if has_hint else np.full((1, 2), -1, np.int64)
    compiled_loop(*contiguous(Hn, fn, An, bn, mask_arg), has_mask, contiguous(hint_arg)[0], has_hint,
                  FEAS_TOL[float_dtype], TIE_REL[float_dtype], SINGULAR_TOL[float_dtype], *outputs)
    # (the loop's float64 outputs are fresh arrays: a float64 problem keeps them without a copy)
    u, lam, Y, K = (x.astype(dtype, copy=False) for x in (u, lam, Y, K))
    inv_norm, lam_rows = inv_norm.astype(dtype, copy=False), lam_rows.astype(dtype, copy=False)
    feasible, violation = passed.copy(), np.zeros(B, dtype)
    rest = np.flatnonzero(~passed)
    if rest.size and proven_infeasible is not None:
        proven = proven_infeasible(rest)
        gone, rest = rest[proven], rest[~proven]
        feasible[gone] = False
        for x in (u, lam, Y, K, inv_norm, lam_rows, violation):
            x[gone] = np.nan
        active[gone] = -1
    if rest.size:  # the NumPy full rule on those elements only
        (active[rest], feasible[rest], violation[rest], u[rest], lam[rest], Y[rest], K[rest], inv_norm[rest],
         lam_rows[rest]) = cpu_numpy.full_rule_rows(Hn[rest], fn[rest], An[rest], bn[rest],
                                                    mask_np[rest] if has_mask else None, float_dtype)
    return u, lam, Y, K, active, inv_norm, lam_rows, feasible, violation
