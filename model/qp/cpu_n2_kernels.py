"""The exact QP's common case for n = 2 on the CPU, compiled with numba: one loop over the batch.

`model.qp.cpu_n2.solve_single` solves one element in Python floats (float64 arithmetic): canonical
hint -> KKT solve -> check; if that fails, the fast rule (the dual-feasible candidate with the
highest objective, first on ties) -> KKT solve -> check. `solve_batch` runs exactly that
arithmetic, in the same order, for every element of a batch in one compiled loop, where the
NumPy path spends its time in a few hundred array calls on (B, m) arrays. Elements whose check
fails (infeasible problems, round-off) come back with ``passed`` False; the caller applies the
NumPy full rule (`model.qp.cpu_numpy.full_rule_rows`) to those only.

No fast-math: LLVM then keeps IEEE semantics (no fused multiply-add contraction, no
reassociation), so each element's numbers equal `solve_single`'s bit for bit (tested).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _kkt(i00, i01, i11, u00, u01, rows, rhs, slot0, slot1, sing_tol, out):
    """`model.qp.cpu_n2._py_kkt` for the active set (slot0, slot1) (-1: unused slot). Writes into out
    (16,): u (2), lam (2), ok, used0, used1, Y (4, row-major), K (4, row-major), and returns ok."""
    used0, used1 = slot0 >= 0, slot1 >= 0
    a00 = rows[slot0, 0] if used0 else 0.0
    a01 = rows[slot0, 1] if used0 else 0.0
    b0 = rhs[slot0] if used0 else 0.0
    a10 = rows[slot1, 0] if used1 else 0.0
    a11 = rows[slot1, 1] if used1 else 0.0
    b1 = rhs[slot1] if used1 else 0.0
    # H^-1 is symmetric here (h01 = h10 = i01), as `_py_kkt` gets it
    ah00, ah01 = a00 * i00 + a01 * i01, a00 * i01 + a01 * i11  # a H^-1 per slot
    ah10, ah11 = a10 * i00 + a11 * i01, a10 * i01 + a11 * i11
    p = ah00 * a00 + ah01 * a01 + (0.0 if used0 else 1.0)
    q = ah00 * a10 + ah01 * a11
    q2 = ah10 * a00 + ah11 * a01
    s = ah10 * a10 + ah11 * a11 + (0.0 if used1 else 1.0)
    det = p * s - q * q2
    ok = det > sing_tol * p * s
    regular = det != 0
    d = det if regular else 1.0
    used0, used1 = used0 and regular, used1 and regular
    m00, m01 = (s / d, -q / d) if used0 else (0.0, 0.0)
    m10, m11 = (-q2 / d, p / d) if used1 else (0.0, 0.0)
    r0 = a00 * u00 + a01 * u01 - b0
    r1 = a10 * u00 + a11 * u01 - b1
    lam0, lam1 = m00 * r0 + m01 * r1, m10 * r0 + m11 * r1
    out[0] = u00 - ah00 * lam0 - ah10 * lam1
    out[1] = u01 - ah01 * lam0 - ah11 * lam1
    out[2], out[3] = lam0, lam1
    out[4], out[5], out[6] = ok, used0, used1
    y00, y01 = m00 * ah00 + m01 * ah10, m00 * ah01 + m01 * ah11
    y10, y11 = m10 * ah00 + m11 * ah10, m10 * ah01 + m11 * ah11
    out[7], out[8], out[9], out[10] = y00, y01, y10, y11
    out[11] = ah00 * y00 + ah10 * y10 - i00
    out[12] = ah00 * y01 + ah10 * y11 - i01
    out[13] = ah01 * y00 + ah11 * y10 - i01
    out[14] = ah01 * y01 + ah11 * y11 - i11
    return ok


@njit(cache=True, inline="always")
def _check(out, rows, b_tol, m, tie):
    """`solve_single`'s check of a KKT solution: regular, least lam >= -tie, primal feasible."""
    if not out[4]:
        return False
    least = out[2] if out[2] < out[3] else out[3]
    if not least >= -tie * (1 + abs(least)):
        return False
    for k in range(m):
        if not rows[k, 0] * out[0] + rows[k, 1] * out[1] <= b_tol[k]:
            return False
    return True


# a double's unit round-off: the bound on each rounding in `_all_rows_clear`'s argument
_EPS = 2.0 ** -53


@njit(cache=True, inline="always")
def _all_rows_clear(gd, r, m, tie, sing_tol):
    """Whether u0 satisfies every row with gd > 0 (r <= 0) so clearly that no single row and no
    pair of rows can pass the fast rule's dual test (least multiplier >= -tie (1 + |least|), i.e.
    >= -tau, tau = tie / (1 - tie)): then the rule's winner is the empty set, and its loops over
    the rows and the pairs can be skipped (the same result, bit for bit).

    Why, with c = -r >= 0 the slacks and M = [[p, q], [q, s]] a pair's Gram matrix in H^-1
    (p = gd_i, s = gd_j; the pair is tried only where det = ps - q^2 > sing_tol ps, so M is
    positive definite), its multipliers lam = M^-1 r:
    - both lam >= 0: lam'M lam = lam'r = -(lam_i c_i + lam_j c_j) <= 0, so lam = 0 and c = 0;
    - lam_i in [-tau', 0), lam_j >= 0: -c_j = q lam_i + s lam_j >= -|q| tau', so c_j <= |q| tau';
    - both in [-tau', 0): -c_i = p lam_i + q lam_j >= -(p + |q|) tau'.
    So a pair passes only if min(c_i, c_j) <= (max(p, s) + |q|) tau' <= 2 gd_max tau'. The computed
    multipliers carry rounding: each numerator s r_i - q r_j is off by at most about
    2 eps (s c_i + |q| c_j), the determinant by 4 eps ps (a 4e-4 fraction of it at the smallest
    sing_tol, 1e-12), so a computed multiplier >= -tau means an exact one >= -tau' with
    tau' = 1.001 tau + 4.1 eps c_max / (sing_tol gd_min). A single row's multiplier -c / gd passes
    only if c <= tau gd (1 + eps). The threshold below is 4x the pairs' bound and covers both."""
    gd_min, gd_max, r_max, c_max = math.inf, 0.0, -math.inf, 0.0
    for k in range(m):
        if gd[k] > 0:
            gd_min = min(gd_min, gd[k])
            gd_max = max(gd_max, gd[k])
            r_max = max(r_max, r[k])
            c_max = max(c_max, -r[k])
    # a row violated or touched: the full loops. (A row that is no candidate, gd <= 0 or NaN, and
    # a NaN slack, which numba's max passes over, can never win: leaving them out of the bound keeps
    # the winner; with no candidate at all the empty set wins either way.)
    if not r_max < 0.0:
        return False
    tau = tie / (1.0 - tie)
    threshold = 8.0 * gd_max * (1.001 * tau + 4.1 * _EPS * c_max / (sing_tol * gd_min))
    return -r_max > threshold


@njit(cache=True, inline="always")
def _dual_test_cutoff(tie):
    """c such that a pair whose multiplier's numerator is below -c det2 fails the fast rule's dual
    test whatever the rounding, so the loop skips it before its two divisions (most pairs of rows
    that u0 satisfies: their multipliers are of the order of the slacks, far below zero).

    Why: a multiplier passes (lam >= -tie (1 + |lam|)) only if lam >= -tau, tau = tie / (1 - tie).
    c = fl(2 tau): num < -fl(c det2) means num / det2 < -2 tau (1 - 3 eps), and division rounds
    monotonically, so the computed lam is below -2 tau (1 - 4 eps): it fails by a factor of 2, far
    beyond the few ulps the test's own arithmetic rounds. The same winner, bit for bit (tested
    against the loop without the skip)."""
    return 2.0 * tie / (1.0 - tie)


@njit(cache=True)
def solve_batch(H, f, A, b, mask, has_mask, hint, has_hint, feas, tie, sing_tol,
                u, lam, used, Y, K, active, inv_norm, lam_rows, passed):
    """Solve every element of the batch as `model.qp.cpu_n2.solve_single` does.

    Inputs: H (B, 2, 2), f (B, 2), A (B, m, 2), b (B, m) of one float dtype (m >= 1: the caller
    turns m = 0 into one row 0'u <= 1); mask (B, m) bool, read only if has_mask; hint (B, 2)
    int64, read only if has_hint; the dtype's tolerances. Outputs (float64 unless said), filled
    for every element: u (B, 2), lam (B, 2) per slot, used (B, 2) bool, Y and K (B, 2, 2) (the
    backward's matrices of `cpu_numpy._np_slot_kkt`), active (B, 2) int64 canonical (rows ascending,
    -1 last), inv_norm (B, 2) = 1 / |a_row| of used slots (0 elsewhere), lam_rows (B, m) the
    multipliers on the raw rows, passed (B,) bool (False: the caller must apply the full rule;
    the other outputs of that element are then meaningless).
    """
    batch, m = b.shape
    rows = np.empty((m, 2))
    rhs = np.empty(m)
    b_tol = np.empty(m)
    inv = np.empty(m)
    ah = np.empty((m, 2))
    gd = np.empty(m)
    r = np.empty(m)
    pair_rows = np.empty(m, np.int64)
    out = np.empty(15)
    fails_below = _dual_test_cutoff(tie)
    for e in range(batch):
        # np.float64, not float(): numba's float() keeps a float32 a float32, and the products
        # below (h00 h11, the off-diagonal sum) would round to float32 for a float32 problem
        h00, h11 = np.float64(H[e, 0, 0]), np.float64(H[e, 1, 1])
        h01 = 0.5 * (np.float64(H[e, 0, 1]) + np.float64(H[e, 1, 0]))
        det = h00 * h11 - h01 * h01
        i00, i01, i11 = h11 / det, -h01 / det, h00 / det
        f0, f1 = np.float64(f[e, 0]), np.float64(f[e, 1])
        u00, u01 = -(i00 * f0 + i01 * f1), -(i01 * f0 + i11 * f1)
        u0_norm = math.hypot(u00, u01)
        for k in range(m):  # unit rows: violations become distances; zero rows stay zero
            if has_mask and not mask[e, k]:
                x, y, c = 0.0, 0.0, 1.0  # masked rows: 0'u <= 1, never active, always satisfied
            else:
                x, y, c = np.float64(A[e, k, 0]), np.float64(A[e, k, 1]), np.float64(b[e, k])
            norm = math.sqrt(x * x + y * y)
            if norm == 1.0 or not norm > 0:
                # a scale of 1 (zero, masked and NaN rows get one) divides exactly: the action-bound
                # rows, unit already, skip the four divisions too (the same bits, 15 % less time)
                inv[k] = 1.0
            else:
                c = c / norm
                x, y = x / norm, y / norm
                inv[k] = 1.0 / norm
            rows[k, 0], rows[k, 1] = x, y
            rhs[k] = c
            b_tol[k] = c + feas * (1 + abs(c) + u0_norm)

        ok = False
        slot0, slot1 = -1, -1
        if has_hint:  # canonical order: rows ascending, then -1
            k0 = hint[e, 0] if hint[e, 0] >= 0 else m
            k1 = hint[e, 1] if hint[e, 1] >= 0 else m
            if k1 < k0:
                k0, k1 = k1, k0
            slot0 = k0 if k0 < m else -1
            slot1 = k1 if k1 < m else -1
            _kkt(i00, i01, i11, u00, u01, rows, rhs, slot0, slot1, sing_tol, out)
            ok = _check(out, rows, b_tol, m, tie)
        if not ok:  # the fast rule (see `cpu_n2.solve_single` for why the pruning keeps the winner)
            for k in range(m):
                ah[k, 0] = rows[k, 0] * i00 + rows[k, 1] * i01
                ah[k, 1] = rows[k, 0] * i01 + rows[k, 1] * i11
                gd[k] = ah[k, 0] * rows[k, 0] + ah[k, 1] * rows[k, 1]
                r[k] = rows[k, 0] * u00 + rows[k, 1] * u01 - rhs[k]
            best, slot0, slot1 = 0.0, -1, -1
            if _all_rows_clear(gd, r, m, tie, sing_tol):
                m_candidates = 0  # no candidate can pass the dual test: the empty set wins
            else:
                m_candidates = m
            for k in range(m_candidates):
                if gd[k] > 0:
                    lam1 = r[k] / gd[k]
                    obj = 0.5 * lam1 * r[k]
                    if obj > best and lam1 >= -tie * (1 + abs(lam1)):
                        best, slot0, slot1 = obj, k, -1
            n_pairs = 0
            slack_max = 0.0
            any_slack = False
            for k in range(m_candidates):
                if gd[k] > 0:
                    pair_rows[n_pairs] = k
                    n_pairs += 1
                    if r[k] <= 0:
                        slack_max = -r[k] if not any_slack or -r[k] > slack_max else slack_max
                        any_slack = True
            for n_i in range(n_pairs):
                i = pair_rows[n_i]
                p, r_i = gd[i], r[i]
                only_violated = r_i <= 0 and best > tie * (slack_max - r_i)
                p_tol = sing_tol * p
                for n_j in range(n_i + 1, n_pairs):
                    j = pair_rows[n_j]
                    r_j = r[j]
                    if only_violated and not r_j > 0:
                        continue
                    s = gd[j]
                    q = ah[i, 0] * rows[j, 0] + ah[i, 1] * rows[j, 1]
                    det2 = p * s - q * q
                    if det2 > p_tol * s:  # else singular: duplicated or parallel rows
                        num_i, num_j = s * r_i - q * r_j, p * r_j - q * r_i
                        cut = fails_below * det2
                        if num_i < -cut or num_j < -cut:
                            continue  # a multiplier below -2 tau: the dual test fails, whatever the rounding
                        lam_i = num_i / det2
                        lam_j = num_j / det2
                        obj = 0.5 * (lam_i * r_i + lam_j * r_j)
                        if obj > best:
                            least = lam_i if lam_i < lam_j else lam_j
                            if least >= -tie * (1 + abs(least)):
                                best, slot0, slot1 = obj, i, j
            _kkt(i00, i01, i11, u00, u01, rows, rhs, slot0, slot1, sing_tol, out)
            ok = _check(out, rows, b_tol, m, tie)

        passed[e] = ok
        u[e, 0], u[e, 1] = out[0], out[1]
        lam[e, 0], lam[e, 1] = out[2], out[3]
        used[e, 0], used[e, 1] = out[5] != 0, out[6] != 0
        Y[e, 0, 0], Y[e, 0, 1], Y[e, 1, 0], Y[e, 1, 1] = out[7], out[8], out[9], out[10]
        K[e, 0, 0], K[e, 0, 1], K[e, 1, 0], K[e, 1, 1] = out[11], out[12], out[13], out[14]
        active[e, 0], active[e, 1] = slot0, slot1
        for k in range(m):
            lam_rows[e, k] = 0.0
        for k, slot in ((0, slot0), (1, slot1)):
            if used[e, k]:
                inv_norm[e, k] = inv[slot]
                lam_rows[e, slot] += out[2 + k] * inv[slot]
            else:
                inv_norm[e, k] = 0.0


def contiguous(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays C-contiguous and writable (copies where they are not), for a compiled loop's
    inputs. numba compiles a loop once per argument type, and an array's type includes its layout
    and read-only flag: a stride-0 expanded H, a transposed view or a read-only broadcast would each
    cost a compilation of its own (3-5 s for `solve_batch`) in every process with a cold cache. The
    values, and so every result bit, are the same."""
    return tuple(x if x.flags.c_contiguous and x.flags.writeable else np.array(x, order="C") for x in arrays)


def allocate_outputs(batch: int, m: int) -> tuple[np.ndarray, ...]:
    """The output arrays of `solve_batch` for a batch of `batch` problems with m rows."""
    return (np.empty((batch, 2)), np.empty((batch, 2)), np.empty((batch, 2), np.bool_),
            np.empty((batch, 2, 2)), np.empty((batch, 2, 2)), np.empty((batch, 2), np.int64),
            np.empty((batch, 2)), np.empty((batch, m)), np.empty(batch, np.bool_))


@njit(cache=True)
def backward_batch(grad_u, u, lam, Y, K, active, inv_norm, grad_H, grad_f, grad_A, grad_b):
    """The implicit-function backward of the winner's KKT system for the elements of
    `solve_batch` (the formulas of `cpu_numpy._np_backward`, one loop): from the upstream gradient grad_u
    (B, 2) and the saved u, lam (B, 2), Y, K (B, 2, 2), active (B, 2), inv_norm (B, 2), fill
    grad_H (B, 2, 2), grad_f (B, 2) (= K g), grad_A (B, m, 2) and grad_b (B, m): the active
    slots' gradients land on their raw rows, scaled by 1 / |a_row| (zero elsewhere)."""
    batch, m = grad_b.shape
    for e in range(batch):
        g0, g1 = grad_u[e, 0], grad_u[e, 1]
        dz0, dz1 = K[e, 0, 0] * g0 + K[e, 0, 1] * g1, K[e, 1, 0] * g0 + K[e, 1, 1] * g1  # dL/df
        y0, y1 = Y[e, 0, 0] * g0 + Y[e, 0, 1] * g1, Y[e, 1, 0] * g0 + Y[e, 1, 1] * g1  # dL/db_S
        u0, u1 = u[e, 0], u[e, 1]
        grad_f[e, 0], grad_f[e, 1] = dz0, dz1
        off = 0.5 * (dz0 * u1 + dz1 * u0)
        grad_H[e, 0, 0], grad_H[e, 0, 1], grad_H[e, 1, 0], grad_H[e, 1, 1] = dz0 * u0, off, off, dz1 * u1
        for k in range(m):
            grad_A[e, k, 0] = 0.0
            grad_A[e, k, 1] = 0.0
            grad_b[e, k] = 0.0
        for k, y_k in ((0, y0), (1, y1)):
            w = inv_norm[e, k]
            if w != 0.0 and active[e, k] < m:  # a used slot (a row of the raw m; never the m = 0 dummy)
                row = active[e, k]
                grad_A[e, row, 0] += (lam[e, k] * dz0 - y_k * u0) * w
                grad_A[e, row, 1] += (lam[e, k] * dz1 - y_k * u1) * w
                grad_b[e, row] += y_k * w
