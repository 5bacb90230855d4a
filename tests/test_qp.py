"""model/qp.py against an independent solver (quadprog, Goldfarb-Idnani), closed forms,
finite differences and qpth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

quadprog = pytest.importorskip("quadprog")

from model.qp import QPSolution, kkt_residuals, routing, solve_qp  # noqa: E402
from tasks.qp_benchmark import cbf_benchmark_problems  # noqa: E402
from tests.helpers import same_bits

# The module-scoped fixtures below run once: every test of this module goes to one xdist worker.
pytestmark = pytest.mark.xdist_group("test_qp")

V_MAX, W_MAX = 1.0, 2.84


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: on a busy 2-core machine OpenMP's thread wake-ups cost ~30 ms per
    LAPACK call, so run this module single-threaded (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# reference and problem generators


def reduce_rows(A, b):
    """Rows A u <= b (numpy) without the degeneracies Goldfarb-Idnani trips over: zero rows
    (dropped; None if one has b < 0: infeasible), parallel copies (the tightest kept) and
    opposite pairs that pin a'u = c (one equality). Returns (equalities, inequalities) as lists
    of (unit row, rhs)."""
    norms = np.linalg.norm(A, axis=1)
    if np.any((norms == 0) & (b < 0)):
        return None
    tightest = {}
    for a, beta, norm in zip(A, b, norms):
        if norm == 0:
            continue
        unit, rhs = a / norm, beta / norm
        key = tuple(np.round(unit, 9))
        tightest[key] = min(tightest.get(key, (np.inf,))[0], rhs), unit
    eqs, ineqs, used = [], [], set()
    for key, (rhs, unit) in tightest.items():
        opposite = tuple(np.round(-unit, 9) + 0.0)
        if opposite in tightest and key not in used:
            rhs_opp = tightest[opposite][0]
            if abs(rhs + rhs_opp) <= 1e-12:  # a'u <= c and -a'u <= -c: a'u = c
                eqs.append((unit, rhs))
                used.update({key, opposite})
                continue
        if key not in used:
            ineqs.append((unit, rhs))
    return eqs, ineqs


def quadprog_reference(H, f, A, b, mask=None):
    """Solve every element with quadprog (min 1/2 x'Gx - a'x s.t. C'x >= b, first meq equal):
    (u (B, n) with NaN where infeasible, feasible (B,) bool)."""
    B, n = f.shape
    u = np.full((B, n), np.nan)
    feasible = np.zeros(B, dtype=bool)
    for i in range(B):
        rows = np.ones(A.shape[1], dtype=bool) if mask is None else mask[i].numpy()
        reduced = reduce_rows(A[i].numpy()[rows], b[i].numpy()[rows])
        if reduced is None:
            continue
        eqs, ineqs = reduced
        C = np.array([-a for a, _ in eqs + ineqs]).reshape(-1, n).T
        rhs = np.array([-beta for _, beta in eqs + ineqs])
        if C.shape[1] == 0:
            C, rhs = np.zeros((n, 1)), np.zeros(1)  # quadprog needs at least one constraint
        try:
            u[i] = quadprog.solve_qp(H[i].numpy(), -f[i].numpy(), C, rhs, len(eqs))[0]
            feasible[i] = True
        except ValueError:  # "constraints are inconsistent, no solution"
            pass
    return torch.from_numpy(u), torch.from_numpy(feasible)


def random_spd(B, n, gen):
    L = torch.randn(B, n, n, generator=gen, dtype=torch.float64)
    return L @ L.transpose(1, 2) + 0.3 * torch.eye(n, dtype=torch.float64)


def random_problems(B, m, n, seed):
    """Random H, f, rows; b mostly positive (the origin feasible), some elements infeasible."""
    gen = torch.Generator().manual_seed(seed)
    H = random_spd(B, n, gen)
    f = 3 * torch.randn(B, n, generator=gen, dtype=torch.float64)
    A = torch.randn(B, m, n, generator=gen, dtype=torch.float64)
    b = torch.rand(B, m, generator=gen, dtype=torch.float64) * 2 - 0.3
    return H, f, A, b


def unicycle_bounds(B):
    """Rows of 0 <= v <= V_MAX, -W_MAX <= w <= W_MAX: A (B, 4, 2), b (B, 4)."""
    A = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([V_MAX, 0.0, W_MAX, W_MAX], dtype=torch.float64)
    return A.expand(B, 4, 2).clone(), b.expand(B, 4).clone()


def nominal_cost(u_nom, weights=(1.0, 0.1)):
    H = torch.diag_embed(torch.tensor(weights, dtype=torch.float64).expand(u_nom.shape[0], 2)).clone()
    return H, -(H @ u_nom[..., None])[..., 0]


def degenerate_problems(B, seed):
    """Control bounds plus zero rows, duplicated rows, scaled copies and opposite parallel rows."""
    gen = torch.Generator().manual_seed(seed)
    A, b = unicycle_bounds(B)
    u_nom = torch.stack([torch.rand(B, generator=gen) * 2 - 0.5, (torch.rand(B, generator=gen) * 2 - 1) * 4], -1)
    H, f = nominal_cost(u_nom.double())
    half_plane = torch.randn(B, 1, 2, generator=gen, dtype=torch.float64)
    offset = torch.rand(B, 1, generator=gen, dtype=torch.float64) * 0.5
    extra_A = torch.cat([
        torch.zeros(B, 1, 2, dtype=torch.float64),        # 0'u <= 0.3: always satisfied
        half_plane, half_plane,                           # duplicated row
        2.5 * half_plane,                                 # scaled copy (parallel, same set)
        -half_plane,                                      # opposite: a band, maybe a line
        A[:, :1],                                         # duplicate of v <= V_MAX
    ], 1)
    extra_b = torch.cat([
        torch.full((B, 1), 0.3, dtype=torch.float64), offset, offset, 2.5 * offset,
        -offset + torch.rand(B, 1, generator=gen, dtype=torch.float64) * 0.2 * (torch.rand(B, 1, generator=gen) > 0.3),
        torch.full((B, 1), V_MAX, dtype=torch.float64),
    ], 1)
    return H, f, torch.cat([A, extra_A], 1), torch.cat([b, extra_b], 1)


def vertex_problems(B, seed):
    """Three (or four) constraints active at one vertex p, with the unconstrained optimum inside
    their normal cone: the optimum is p (more active rows than n = 2)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    base = torch.rand(B, generator=gen, dtype=torch.float64) * 2 * math.pi
    spread = 0.3 + torch.rand(B, 3, generator=gen, dtype=torch.float64).cumsum(-1) * 0.4  # < pi apart
    angles = torch.cat([base[:, None], base[:, None] + spread], 1)  # (B, 4)
    normals = torch.stack([angles.cos(), angles.sin()], -1) * (0.5 + torch.rand(B, 4, 1, generator=gen, dtype=torch.float64))
    A = normals
    b = (A * p[:, None, :]).sum(-1)
    # u0 = p + a positive combination of the 2nd and 3rd normals: strictly inside the cone
    weights = 0.2 + torch.rand(B, 2, generator=gen, dtype=torch.float64)
    H = random_spd(B, 2, gen)
    u0 = p + (weights[..., None] * (torch.linalg.solve(H, normals[:, 1:3].transpose(1, 2))).transpose(1, 2)).sum(1)
    f = -(H @ u0[..., None])[..., 0]
    return H, f, A, b, p


def assert_matches_reference(H, f, A, b, mask=None, atol=1e-8):
    sol = solve_qp(H, f, A, b, mask=mask)
    u_ref, feasible_ref = quadprog_reference(H, f, A, b, mask)
    assert same_bits(sol.feasible, feasible_ref), (
        f"feasibility flags differ on {(sol.feasible != feasible_ref).sum()} of {len(f)} problems")
    assert torch.isfinite(sol.u).all()
    err = (sol.u - u_ref)[feasible_ref].abs().max() if feasible_ref.any() else torch.tensor(0.0)
    assert err <= atol, f"max |u - u_quadprog| = {err:.3g}"
    real = torch.ones_like(b, dtype=torch.bool) if mask is None else mask
    resid = torch.where(real, (A @ sol.u[..., None])[..., 0] - b, -1.0).amax(-1)
    assert (resid[sol.feasible] <= 1e-9).all(), f"feasible output violates a row by {resid[sol.feasible].max():.3g}"
    return sol, feasible_ref


# ----------------------------------------------------------------------------------------------
# exact backend vs quadprog (>= 1000 problems in total)


@pytest.mark.parametrize("m", [1, 3, 6, 12])
def test_exact_matches_quadprog_on_random_problems(m):
    H, f, A, b = random_problems(120, m, 2, seed=m)
    sol, feasible = assert_matches_reference(H, f, A, b)
    if m >= 6:
        assert (~feasible).any() and feasible.any(), "the random set should contain both kinds"


@pytest.mark.parametrize("num_obstacles", [2, 8])
def test_exact_matches_quadprog_on_cbf_problems(num_obstacles):
    H, f, A, b, mask = cbf_benchmark_problems(200, num_obstacles, seed=num_obstacles)
    # tighten half of the obstacle rows so that some problems have several active rows or none
    # feasible point at all (b < 0 on an obstacle row with v >= 0 may still be satisfiable)
    gen = torch.Generator().manual_seed(1)
    shift = torch.zeros_like(b)
    shift[:, 8:] = torch.rand(200, num_obstacles, generator=gen, dtype=torch.float64) * 0.12 - 0.04
    sol, feasible = assert_matches_reference(H, f, A, b - shift, mask)
    assert feasible.any()


def test_exact_matches_quadprog_on_degenerate_rows():
    H, f, A, b = degenerate_problems(200, seed=5)
    sol, feasible = assert_matches_reference(H, f, A, b)
    assert feasible.float().mean() > 0.5


def test_three_active_constraints_at_one_vertex():
    H, f, A, b, vertex = vertex_problems(200, seed=6)
    sol, feasible = assert_matches_reference(H, f, A, b)
    assert feasible.all()
    assert (sol.u - vertex).abs().max() <= 1e-9
    # the multipliers certify optimality (Caratheodory: a size-2 subset has lam >= 0)
    kkt = kkt_residuals(H, f, A, b, sol.u, sol.lam)
    assert kkt["stationarity"].max() <= 1e-9
    assert kkt["dual"].max() == 0


def test_zero_rows():
    A, b = unicycle_bounds(2)
    H, f = nominal_cost(torch.tensor([[2.0, 0.5], [2.0, 0.5]], dtype=torch.float64))
    A = torch.cat([A, torch.zeros(2, 1, 2, dtype=torch.float64)], 1)
    b = torch.cat([b, torch.tensor([[0.0], [-0.1]], dtype=torch.float64)], 1)  # 0 <= 0 ok, 0 <= -0.1 not
    for backend in ("exact", "qpth"):
        sol = solve_qp(H, f, A, b, backend=backend)
        assert sol.feasible.tolist() == [True, False]
        # the infeasible zero row cannot be helped by any u: the fallback is the optimum of the rest
        assert torch.allclose(sol.u, torch.tensor([[V_MAX, 0.5], [V_MAX, 0.5]], dtype=torch.float64), atol=1e-6)
        assert sol.violation[1] > 0


# ----------------------------------------------------------------------------------------------
# infeasible problems


def test_infeasible_problems_are_flagged_with_the_documented_fallback():
    B = 50
    gen = torch.Generator().manual_seed(7)
    A, b = unicycle_bounds(B)
    A = torch.cat([A, torch.tensor([[-1.0, 0.0]], dtype=torch.float64).expand(B, 1, 2)], 1)  # v >= 1.5
    b = torch.cat([b, torch.full((B, 1), -1.5, dtype=torch.float64)], 1)
    u_nom = torch.stack([torch.rand(B, generator=gen) * 1.4 - 0.2, (torch.rand(B, generator=gen) * 2 - 1) * 2], -1).double()
    H, f = nominal_cost(u_nom)
    _, feasible_ref = quadprog_reference(H, f, A, b)
    assert not feasible_ref.any()
    for backend in ("exact", "qpth"):
        sol = solve_qp(H, f, A, b, backend=backend)
        assert not sol.feasible.any()
        assert torch.isfinite(sol.u).all()
        # candidates: u_nom (violation max(v - 1, 1.5 - v)), v = 1 and v = 1.5 (0.5 each; tie
        # broken by the objective: v = 1 as u_nom's v < 1.25); w = u_nom's w throughout
        v_nom = u_nom[:, 0]
        inside = (v_nom >= 1) & (v_nom <= 1.5)
        assert inside.any() and (~inside).any()
        v = torch.where(inside, v_nom, torch.full_like(v_nom, V_MAX))
        assert torch.allclose(sol.u, torch.stack([v, u_nom[:, 1]], -1), atol=1e-6)
        violation = torch.where(inside, torch.maximum(v_nom - 1, 1.5 - v_nom), torch.full_like(v_nom, 0.5))
        assert torch.allclose(sol.violation, violation, atol=1e-6)
    again = solve_qp(H, f, A, b)
    assert same_bits(again.u, solve_qp(H, f, A, b).u), "fallback must be deterministic"


def test_infeasible_fallback_measures_violation_as_a_distance():
    # 4v <= 4 (v <= 1) and -v <= -2 (v >= 2), u_nom = (3, 0). Candidates: u_nom (distance 2 to
    # v <= 1), v = 1 and v = 2 (distance 1 each: a tie, broken by the objective -> v = 2). In raw
    # units v = 2 would violate 4v <= 4 by 4 and lose to v = 1; distances make row scaling moot.
    H, f = nominal_cost(torch.tensor([[3.0, 0.0]], dtype=torch.float64))
    A = torch.tensor([[[4.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[4.0, -2.0]], dtype=torch.float64)
    sol = solve_qp(H, f, A, b)
    assert not sol.feasible.item()
    assert torch.allclose(sol.u, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    assert sol.violation.item() == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# gradients


def _gradcheck_problems():
    """Non-degenerate problems with 0, 1 and 2 active rows (strict complementarity)."""
    H, f, A, b = random_problems(60, 5, 2, seed=11)
    sol = solve_qp(H, f, A, b)
    resid = (A @ sol.u[..., None])[..., 0] - b
    active = sol.lam > 1e-6
    clear = ((resid.abs() > 1e-4) | active).all(-1) & ((sol.lam == 0) | active).all(-1) & sol.feasible
    picks = []
    for count in (0, 1, 2):
        where = (clear & (active.sum(-1) == count)).nonzero()[:, 0]
        assert len(where) > 0, f"no problem with {count} active rows"
        picks.append(where[:2])
    keep = torch.cat(picks)
    return H[keep], f[keep], A[keep], b[keep]


def test_exact_gradients_match_finite_differences():
    H, f, A, b = _gradcheck_problems()
    inputs = [x.clone().requires_grad_() for x in (H, f, A, b)]
    assert torch.autograd.gradcheck(lambda *x: solve_qp(*x).u, inputs, eps=1e-6, atol=1e-6)


def test_exact_gradients_with_mask_match_finite_differences():
    H, f, A, b = _gradcheck_problems()
    mask = torch.ones_like(b, dtype=torch.bool)
    mask[:, -1] = False
    inputs = [x.clone().requires_grad_() for x in (H, f, A, b)]
    assert torch.autograd.gradcheck(lambda *x: solve_qp(*x, mask=mask).u, inputs, eps=1e-6, atol=1e-6)
    # masked rows receive no gradient
    solve_qp(*inputs, mask=mask).u.sum().backward()
    assert inputs[2].grad[:, -1].abs().max() == 0 and inputs[3].grad[:, -1].abs().max() == 0


def test_exact_gradients_match_qpth():
    H, f, A, b, mask = cbf_benchmark_problems(40, 2, seed=12)
    weights = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = {}
    for backend in ("exact", "qpth"):
        inputs = [x.clone().requires_grad_() for x in (H, f, A, b)]
        sol = solve_qp(*inputs, backend=backend, mask=mask)
        (sol.u * weights).sum().backward()
        grads[backend] = (sol, [x.grad for x in inputs])
    sol_q = grads["qpth"][0]
    # compare where qpth's own answer was accepted and no row is nearly active
    exact_sol = grads["exact"][0]
    resid = (A @ exact_sol.u[..., None])[..., 0] - b
    clear = torch.where(mask, (resid.abs() > 1e-3) | (exact_sol.lam > 1e-3), True).all(-1) & sol_q.solver_ok
    assert clear.sum() >= 20
    for name, g_exact, g_qpth in zip("HfAb", grads["exact"][1], grads["qpth"][1]):
        diff = (g_exact - g_qpth)[clear]
        if name in "Ab":
            diff = torch.where(mask[clear].reshape(diff.shape[:2] + (1,) * (diff.dim() - 2)), diff, 0.0)
        assert diff.abs().max() <= 1e-4 * (1 + g_exact[clear].abs().max()), f"d/d{name} differs by {diff.abs().max():.3g}"


# ----------------------------------------------------------------------------------------------
# qpth backend, masks, dtypes, devices, errors


def test_qpth_backend_agrees_and_never_returns_nan():
    problems = [
        cbf_benchmark_problems(30, 4, seed=13),
        (*degenerate_problems(30, seed=14), None),
        (*random_problems(30, 6, 2, seed=15), None),
    ]
    for H, f, A, b, mask in problems:
        exact = solve_qp(H, f, A, b, mask=mask)
        sol = solve_qp(H, f, A, b, backend="qpth", mask=mask)
        assert torch.isfinite(sol.u).all()
        assert same_bits(sol.feasible, exact.feasible)
        assert (sol.u - exact.u)[exact.feasible].abs().max() <= 1e-4
        real = torch.ones_like(b, dtype=torch.bool) if mask is None else mask
        resid = torch.where(real, (A @ sol.u[..., None])[..., 0] - b, -1.0).amax(-1)
        assert (resid[sol.feasible] <= 1e-5).all()


def test_mask_equals_removing_rows():
    H, f, A, b = random_problems(80, 7, 2, seed=16)
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(80, 7, generator=gen) > 0.4
    A_garbage = torch.where(mask[..., None], A, torch.nan)  # ignored rows may hold anything
    b_garbage = torch.where(mask, b, torch.inf)
    for backend in ("exact", "qpth"):
        sol = solve_qp(H, f, A_garbage, b_garbage, backend=backend, mask=mask)
        assert torch.isfinite(sol.u).all()
        for i in range(0, 80, 8 if backend == "qpth" else 1):
            rows = mask[i]
            alone = solve_qp(H[i:i + 1], f[i:i + 1], A[i:i + 1, rows], b[i:i + 1, rows])
            assert sol.feasible[i] == alone.feasible[0]
            assert torch.allclose(sol.u[i], alone.u[0], atol=1e-8 if backend == "exact" else 1e-4)


def test_float32_agrees_with_float64():
    H, f, A, b, mask = cbf_benchmark_problems(500, 8, seed=17)
    sol64 = solve_qp(H, f, A, b, mask=mask)
    sol32 = solve_qp(H.float(), f.float(), A.float(), b.float(), mask=mask)
    assert sol32.u.dtype == torch.float32
    assert same_bits(sol32.feasible, sol64.feasible)
    assert (sol32.u.double() - sol64.u).abs().max() <= 1e-4
    inputs = [x.float().requires_grad_() for x in (H, f, A, b)]
    solve_qp(*inputs, mask=mask).u.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in inputs)


def test_generic_path_for_n_1_and_3_matches_quadprog():
    for n, m in ((1, 4), (3, 7)):
        H, f, A, b = random_problems(60, m, n, seed=20 + n)
        assert_matches_reference(H, f, A, b)
    H, f, A, b = random_problems(4, 4, 3, seed=30)
    inputs = [x.clone().requires_grad_() for x in (H, f, A, b)]
    assert torch.autograd.gradcheck(lambda *x: solve_qp(*x).u, inputs, eps=1e-6, atol=1e-5)


def test_multipliers_satisfy_kkt():
    H, f, A, b, mask = cbf_benchmark_problems(200, 8, seed=18)
    sol = solve_qp(H, f, A, b, mask=mask)
    kkt = kkt_residuals(H, f, A, b, sol.u, sol.lam, mask)
    assert kkt["primal"].max() <= 1e-9
    assert kkt["stationarity"].max() <= 1e-9
    assert kkt["dual"].max() <= 1e-9
    assert kkt["complementarity"].max() <= 1e-9


def test_edge_shapes():
    H, f = nominal_cost(torch.tensor([[0.3, -0.2]], dtype=torch.float64))
    sol = solve_qp(H, f, torch.zeros(1, 0, 2, dtype=torch.float64), torch.zeros(1, 0, dtype=torch.float64))
    assert torch.allclose(sol.u, torch.tensor([[0.3, -0.2]], dtype=torch.float64)) and sol.feasible.all()
    assert sol.lam.shape == (1, 0)
    empty = solve_qp(H[:0], f[:0], torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64))
    assert isinstance(empty, QPSolution) and empty.u.shape == (0, 2)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(f=torch.zeros(2, 2, 1)), "f has shape"),
        (dict(H=torch.eye(3).expand(2, 3, 3)), "H has shape"),
        (dict(A=torch.zeros(2, 4, 3)), "A has shape"),
        (dict(b=torch.zeros(2, 5)), "b has shape"),
        (dict(b=torch.zeros(2, 4, dtype=torch.float64)), "b has dtype"),
        (dict(mask=torch.ones(2, 4)), "mask must be a torch.bool"),
        (dict(mask=torch.ones(2, 3, dtype=torch.bool)), "mask has shape"),
        (dict(backend="osqp"), "backend='osqp' is not known"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    args = dict(H=torch.eye(2).expand(2, 2, 2), f=torch.zeros(2, 2), A=torch.zeros(2, 4, 2), b=torch.ones(2, 4),
                backend="exact", mask=None)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=message):
        solve_qp(**args)


def test_sync_free_path_used_on_cuda_agrees_on_cpu():
    """The CUDA branch (full rule everywhere, merged by torch.where) run on CPU."""
    from model.qp.common import prepare as _prepare
    from model.qp.reference import solve_exact as _solve_exact

    H, f, A, b, mask = cbf_benchmark_problems(100, 8, seed=21)
    b = b - 0.05 * torch.rand(b.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    Hd, fd, Ad, bd = _prepare(H, f, A, b, mask)
    indexed = _solve_exact(Hd, fd, Ad, bd, sync_free=False)
    merged = _solve_exact(Hd, fd, Ad, bd, sync_free=True)
    assert (~indexed.feasible).any() and indexed.feasible.any()
    assert same_bits(indexed.feasible, merged.feasible)
    assert same_bits(indexed.u, merged.u)
    assert same_bits(indexed.violation, merged.violation)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    H, f, A, b, mask = cbf_benchmark_problems(512, 8, seed=19)
    cpu = solve_qp(H, f, A, b, mask=mask)
    inputs = [x.cuda().requires_grad_() for x in (H, f, A, b)]
    gpu = solve_qp(*inputs, mask=mask.cuda())
    gpu.u.sum().backward()
    assert same_bits(gpu.feasible.cpu(), cpu.feasible)
    assert (gpu.u.cpu() - cpu.u).abs().max() <= 1e-9
    assert all(torch.isfinite(x.grad).all() for x in inputs)


# ----------------------------------------------------------------------------------------------
# warm start (active_hint)


def _hint_variants(active, m, seed):
    """The correct active sets, its slots swapped, random (mostly wrong) sets, a half/half mix,
    and 'no row at all': every hint must give the unhinted answer."""
    gen = torch.Generator().manual_seed(seed)
    B, n = active.shape
    random = torch.randint(-1, m, (B, n), generator=gen)
    half = torch.rand(B, generator=gen) < 0.5
    return {
        "correct": active,
        "swapped": active.flip(-1),
        "random": random,
        "partly wrong": torch.where(half[:, None], active, random),
        "none": torch.full_like(active, -1),
    }


def _solve_with_grads(H, f, A, b, mask=None, **kwargs):
    inputs = [x.clone().requires_grad_() for x in (H, f, A, b)]
    sol = solve_qp(*inputs, mask=mask, **kwargs)
    # a generic downstream loss, so every gradient entry is exercised
    weights = torch.linspace(0.5, 1.5, sol.u.numel(), dtype=sol.u.dtype).reshape(sol.u.shape)
    (sol.u * weights).sum().backward()
    return sol, [x.grad for x in inputs]


def _assert_hint_is_transparent(H, f, A, b, mask=None, atol=1e-10, gradients=True, seed=0):
    full, full_grads = _solve_with_grads(H, f, A, b, mask)
    u_ref, feasible_ref = quadprog_reference(H, f, A, b, mask)
    assert same_bits(full.feasible, feasible_ref)
    for name, hint in _hint_variants(full.active, A.shape[1], seed).items():
        hinted, grads = _solve_with_grads(H, f, A, b, mask, active_hint=hint)
        assert same_bits(hinted.feasible, full.feasible), name
        assert (hinted.u - full.u).abs().max() <= atol, (name, (hinted.u - full.u).abs().max())
        assert (hinted.u - u_ref)[feasible_ref].abs().max() <= 1e-8, name
        assert (hinted.violation - full.violation).abs().max() <= atol, name
        if gradients:
            for g_full, g in zip(full_grads, grads):
                assert (g - g_full).abs().max() <= 1e-8 * (1 + g_full.abs().max()), name
        if name in ("correct", "swapped"):
            # the correct set, in either slot order, is taken as is: the same canonical set
            assert same_bits(hinted.active, full.active), name
            assert same_bits(hinted.u, full.u), name
    return full


def test_active_is_canonical_and_reproduces_the_solution():
    H, f, A, b = random_problems(300, 6, 2, seed=40)
    sol = solve_qp(H, f, A, b)
    act = sol.active
    assert act.dtype == torch.int64 and act.shape == (300, 2)
    used = act >= 0
    # rows ascending, padding last
    assert ((act[:, 0] < act[:, 1]) | ~used[:, 1]).all() and (used[:, 0] | ~used[:, 1]).all()
    assert {0, 1, 2} <= set(used.sum(-1).tolist())
    # the active rows hold with equality at feasible solutions, the multipliers live on them
    feasible = sol.feasible
    resid = (A @ sol.u[..., None])[..., 0] - b
    on = resid.gather(1, act.clamp(min=0))
    assert (on[feasible & used[:, 0], 0].abs() <= 1e-9).all()
    lam_off = sol.lam.clone()
    lam_off.scatter_(1, act.clamp(min=0), 0.0)
    assert (lam_off[feasible] == 0).all()


@pytest.mark.parametrize("m", [3, 8])
def test_hint_gives_the_unhinted_answer_on_random_problems(m):
    H, f, A, b = random_problems(150, m, 2, seed=50 + m)
    full = _assert_hint_is_transparent(H, f, A, b, seed=m)
    assert (~full.feasible).any() and full.feasible.any()


def test_hint_gives_the_unhinted_answer_on_cbf_problems():
    H, f, A, b, mask = cbf_benchmark_problems(200, 2, seed=41)
    shift = torch.zeros_like(b)
    shift[:, 8:] = torch.rand(200, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.12 - 0.04
    full = _assert_hint_is_transparent(H, f, A, b - shift, mask)
    assert (full.active >= 0).sum(-1).max() == 2


def test_hint_on_degenerate_rows_and_vertices():
    H, f, A, b = degenerate_problems(150, seed=42)
    # at duplicated / parallel rows several active sets give the same u: compare u, not gradients
    _assert_hint_is_transparent(H, f, A, b, gradients=False)
    H, f, A, b, vertex = vertex_problems(150, seed=43)
    full = _assert_hint_is_transparent(H, f, A, b, gradients=False)
    # any pair of the vertex's rows with multipliers >= 0 is accepted: still the vertex and a
    # valid certificate
    for pair in ([0, 1], [1, 2], [0, 2], [2, 3]):
        hinted = solve_qp(H, f, A, b, active_hint=torch.tensor(pair).expand(150, 2).clone())
        assert (hinted.u - vertex).abs().max() <= 1e-9
        assert kkt_residuals(H, f, A, b, hinted.u, hinted.lam)["dual"].max() <= 1e-9


def test_hint_naming_a_masked_or_zero_row_is_rejected():
    H, f, A, b, mask = cbf_benchmark_problems(100, 2, seed=44)
    A, b = A.clone(), b.clone()
    A[:, 0] = 0.0  # a real zero row 0'u <= v_max
    full = solve_qp(H, f, A, b, mask=mask)
    masked_row = 8  # the first obstacle row (masked in about a quarter of the elements)
    for hint in ([0, -1], [masked_row, -1], [masked_row, 9], [3, 3]):
        hinted = solve_qp(H, f, A, b, mask=mask, active_hint=torch.tensor(hint).expand(100, 2).clone())
        assert same_bits(hinted.feasible, full.feasible)
        assert (hinted.u - full.u).abs().max() <= 1e-12
        assert not (hinted.active == 0).any()
        assert not ((hinted.active == masked_row) & ~mask[:, masked_row:masked_row + 1]).any()


def test_hint_float32_and_generic_n():
    H, f, A, b, mask = cbf_benchmark_problems(200, 2, seed=45, dtype=torch.float32)
    full = solve_qp(H, f, A, b, mask=mask)
    hinted = solve_qp(H, f, A, b, mask=mask, active_hint=full.active)
    assert same_bits(hinted.u, full.u) and same_bits(hinted.feasible, full.feasible)
    for n, m in ((1, 4), (3, 6)):
        H, f, A, b = random_problems(80, m, n, seed=60 + n)
        _assert_hint_is_transparent(H, f, A, b, seed=n)


def test_hint_sync_free_branch_agrees_on_cpu():
    """The CUDA branch of the warm start (enumerate all, merge by torch.where) run on CPU."""
    from model.qp.common import prepare as _prepare
    from model.qp.reference import solve_exact as _solve_exact

    H, f, A, b, mask = cbf_benchmark_problems(100, 8, seed=46)
    b = b - 0.05 * torch.rand(b.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    Hd, fd, Ad, bd = _prepare(H, f, A, b, mask)
    full = _solve_exact(Hd, fd, Ad, bd, sync_free=False)
    for name, hint in _hint_variants(full.active, A.shape[1], 5).items():
        indexed = _solve_exact(Hd, fd, Ad, bd, sync_free=False, active_hint=hint)
        merged = _solve_exact(Hd, fd, Ad, bd, sync_free=True, active_hint=hint)
        for sol in (indexed, merged):
            assert same_bits(sol.feasible, full.feasible), name
            assert (sol.u - full.u).abs().max() <= 1e-12, name
            assert same_bits(sol.violation, full.violation), name
        assert same_bits(indexed.active, merged.active), name


@pytest.mark.parametrize(
    "hint, message",
    [
        (torch.zeros(2, 2, dtype=torch.int32), "active_hint must be a torch.int64"),
        (torch.zeros(2, 3, dtype=torch.int64), "active_hint has shape"),
        (torch.tensor([[0, 4], [1, -1]]), "active_hint holds values in"),
        (torch.tensor([[0, -2], [1, -1]]), "active_hint holds values in"),
    ],
)
def test_bad_hint_is_named(hint, message):
    with pytest.raises((ValueError, TypeError), match=message):
        solve_qp(torch.eye(2).expand(2, 2, 2), torch.zeros(2, 2), torch.zeros(2, 4, 2), torch.ones(2, 4),
                 active_hint=hint)


def test_qpth_ignores_the_hint_and_reports_no_active_set():
    H, f, A, b, mask = cbf_benchmark_problems(20, 2, seed=47)
    exact = solve_qp(H, f, A, b, mask=mask)
    sol = solve_qp(H, f, A, b, mask=mask, backend="qpth", active_hint=exact.active)
    assert sol.active is None
    assert (sol.u - exact.u).abs().max() <= 1e-5


@pytest.mark.parametrize("path", ["torch", "numpy", "compiled"])
def test_correct_hint_skips_the_enumeration(monkeypatch, path):
    from model.qp import cpu_numpy, reference

    use_numpy = path != "torch"
    forced = {"torch": "reference", "numpy": "cpu_numpy", "compiled": None}[path]
    monkeypatch.setattr(routing, "FORCED_ROUTE", forced)
    enumerated = []
    # the enumeration: `_select_active_set(H, ...)` on the torch path, `_np_candidates(Hinv, ...)`
    # on the numpy path; record the batch size of each call
    module, name = (cpu_numpy, "_np_candidates") if use_numpy else (reference, "_select_active_set")
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda H, *a: enumerated.append(H.shape[0]) or original(H, *a))
    H, f, A, b = random_problems(200, 6, 2, seed=48)
    full = solve_qp(H, f, A, b)
    infeasible = int((~full.feasible).sum())
    assert 0 < infeasible < 200
    # numpy path: all 200, then the full rule's enumeration with points for the infeasible ones;
    # the compiled loop settles the feasible ones itself (its fast rule is not `_np_candidates`)
    assert enumerated == {"torch": [200], "numpy": [200, infeasible], "compiled": [infeasible]}[path]
    del enumerated[:]
    solve_qp(H, f, A, b, active_hint=full.active)
    # only the infeasible elements (no active set certifies them) are enumerated again
    assert enumerated == [infeasible]


# ----------------------------------------------------------------------------------------------
# the NumPy path (CPU, n = 2, the default there; B > 1 through its compiled loop unless switched
# off) against the torch path (the reference)


@pytest.fixture(params=["compiled", "numpy"])
def cpu_path(request, monkeypatch):
    """Run a test with the compiled loop (the default for B > 1) and with the plain NumPy path."""
    monkeypatch.setattr(routing, "FORCED_ROUTE", None if request.param == "compiled" else "cpu_numpy")
    return request.param


def _both_paths(monkeypatch, H, f, A, b, mask=None, active_hint=None, weights=None):
    """Solve with the numpy path and with the torch path; with weights (B, 2) also return the
    gradients of sum(weights * u) with respect to H, f, A, b for each. The numpy path is the
    route the `cpu_path` fixture set (default: the compiled loop for B > 1, Python for B = 1)."""
    out = []
    for route in (routing.FORCED_ROUTE, "reference"):
        monkeypatch.setattr(routing, "FORCED_ROUTE", route)
        leaves = [x.detach().clone().requires_grad_(weights is not None) for x in (H, f, A, b)]
        sol = solve_qp(*leaves, mask=mask, active_hint=active_hint)
        grads = None
        if weights is not None:
            grads = torch.autograd.grad((sol.u * weights).sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]  # m = 0: A, b unused
        out.append((sol, grads))
    return out


def _assert_paths_agree(monkeypatch, H, f, A, b, mask=None, active_hint=None, atol=1e-10, same_active=True,
                        gradients=True):
    gen = torch.Generator().manual_seed(7)
    weights = torch.randn(f.shape, generator=gen, dtype=f.dtype) if gradients else None
    (fast, fast_grads), (ref, ref_grads) = _both_paths(monkeypatch, H, f, A, b, mask, active_hint, weights)
    for name in QPSolution._fields:
        x, y = getattr(fast, name), getattr(ref, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
    assert same_bits(fast.feasible, ref.feasible)
    assert same_bits(fast.solver_ok, ref.solver_ok)
    assert (fast.u - ref.u).abs().max() <= atol
    assert (fast.violation - ref.violation).abs().max() <= atol
    real = torch.ones_like(b, dtype=torch.bool) if mask is None else mask
    if b.shape[1] > 0:
        kkt = kkt_residuals(H, f, A, b, fast.u, fast.lam, real)
        for key in ("primal", "stationarity", "dual", "complementarity"):
            assert (kkt[key][fast.feasible] <= 100 * atol).all(), key
    if same_active:  # generic problems: one active set, the same multipliers and gradients
        assert same_bits(fast.active, ref.active)
        assert fast.lam.numel() == 0 or (fast.lam - ref.lam).abs().max() <= atol
        if gradients:
            for name, gx, gy in zip("HfAb", fast_grads, ref_grads):
                assert gx.numel() == 0 or (gx - gy).abs().max() <= atol * 100, name
    return fast


@pytest.mark.parametrize("m", [1, 3, 8, 12])
def test_numpy_path_matches_torch_path_on_random_problems(monkeypatch, m, cpu_path):
    H, f, A, b = random_problems(150, m, 2, seed=70 + m)
    sol = _assert_paths_agree(monkeypatch, H, f, A, b)
    if m >= 8:
        assert (~sol.feasible).any() and sol.feasible.any()


def test_numpy_path_matches_torch_path_on_cbf_problems_with_masks(monkeypatch, cpu_path):
    H, f, A, b, mask = cbf_benchmark_problems(300, 4, seed=71)
    shift = torch.zeros_like(b)
    shift[:, 8:] = torch.rand(300, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.12 - 0.04
    sol = _assert_paths_agree(monkeypatch, H, f, A, b - shift, mask)
    assert (sol.active >= 0).sum(-1).max() == 2 and (~mask).any()
    # hints: the correct one, and a wrong one (the first row) for every element
    _assert_paths_agree(monkeypatch, H, f, A, b - shift, mask, active_hint=sol.active)
    wrong = torch.full_like(sol.active, -1)
    wrong[:, 1] = 0
    _assert_paths_agree(monkeypatch, H, f, A, b - shift, mask, active_hint=wrong)


def test_numpy_path_matches_torch_path_on_degenerate_problems(monkeypatch, cpu_path):
    # several active sets give the same u here (up to round-off amplified by near-parallel rows)
    H, f, A, b = degenerate_problems(200, seed=72)
    _assert_paths_agree(monkeypatch, H, f, A, b, same_active=False, atol=1e-8)
    H, f, A, b, vertex = vertex_problems(200, seed=73)
    sol = _assert_paths_agree(monkeypatch, H, f, A, b, same_active=False, atol=1e-8)
    assert (sol.u - vertex).abs().max() <= 1e-8


def test_numpy_path_float32_and_edge_shapes(monkeypatch, cpu_path):
    H, f, A, b = random_problems(100, 6, 2, seed=74)
    sol = _assert_paths_agree(monkeypatch, H.float(), f.float(), A.float(), b.float(), atol=1e-4, same_active=False)
    assert sol.u.dtype == torch.float32 and sol.lam.dtype == torch.float32
    # m = 0 and a single element; every row masked
    _assert_paths_agree(monkeypatch, H[:3], f[:3], A[:3, :0], b[:3, :0])
    _assert_paths_agree(monkeypatch, H[:1], f[:1], A[:1], b[:1])
    _assert_paths_agree(monkeypatch, H[:5], f[:5], A[:5], b[:5], mask=torch.zeros(5, 6, dtype=torch.bool))


def test_numpy_path_gradients_match_finite_differences(cpu_path):
    H, f, A, b, mask = cbf_benchmark_problems(6, 2, seed=75)
    b = b - 0.03  # several active rows
    leaves = [x.clone().requires_grad_() for x in (H, f, A, b)]
    assert torch.autograd.gradcheck(lambda *x: solve_qp(*x, mask=mask).u, leaves)


def test_single_element_kkt_in_python_floats_matches_numpy():
    """B = 1 (float64) solves the winner's KKT system in Python floats: same outputs as NumPy."""
    import numpy as np

    from model.qp.cpu_n2 import _py_slot_kkt
    from model.qp.cpu_numpy import _np_slot_kkt

    H, f, A, b = random_problems(40, 5, 2, seed=76)
    A[:, 4] = 0  # a zero row: a singular block when active
    A[:, 3] = 2 * A[:, 2]  # parallel rows: singular as a pair
    Hinv = np.linalg.inv(H.numpy())
    u0 = -(Hinv @ f.numpy()[..., None])[..., 0]
    sets = [(-1, -1), (0, -1), (2, -1), (4, -1), (0, 1), (1, 3), (2, 3), (3, 4)]
    for i in range(40):
        for active in sets:
            args = (Hinv[i:i + 1], u0[i:i + 1], A[i:i + 1].numpy(), b[i:i + 1].numpy(), np.array([active]), 1e-12)
            for x, y in zip(_py_slot_kkt(*args), _np_slot_kkt(*args)):
                assert x.shape == y.shape and x.dtype == y.dtype
                assert np.allclose(x, y, rtol=1e-9, atol=1e-8), active  # K = 0 up to cancellation at pairs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_loop_equals_the_python_float_path_bit_for_bit(dtype):
    """The compiled loop (B > 1) runs `_solve_single_py`'s arithmetic on every element: wherever
    that path settles an element alone (it returns None otherwise: infeasible, round-off), u, lam
    and the active set are the same bits; the rest get the NumPy full rule (feasible False here)."""
    from model.qp import cpu_n2

    H, f, A, b, mask = cbf_benchmark_problems(240, 4, seed=91)
    b = b - torch.rand(b.shape, generator=torch.Generator().manual_seed(5), dtype=b.dtype) * 0.1
    b[:12] -= 5.0  # infeasible
    # every other element gets weights whose products round in float32 (h00 h11, H's symmetrised
    # off-diagonal): the loop must form them in float64, as the Python path does
    gen = torch.Generator().manual_seed(8)
    weights = torch.diag_embed(0.3 + torch.rand(240, 2, generator=gen, dtype=H.dtype))
    tilt = 0.05 * torch.randn(240, generator=gen, dtype=H.dtype)
    weights[:, 0, 1], weights[:, 1, 0] = tilt, tilt * (1 + 1e-3)  # slightly asymmetric: symmetrised
    H[1::2] = weights[1::2]
    H, f, A, b = (x.to(dtype) for x in (H, f, A, b))
    own = solve_qp(H, f, A, b, mask=mask).active
    wrong = torch.full_like(own, -1)
    wrong[:, 0] = 1
    for hint in (None, own, wrong):
        batch = solve_qp(H, f, A, b, mask=mask, active_hint=hint)
        assert batch.u.dtype == dtype and not batch.feasible[:12].any()
        settled = 0
        for i in range(240):
            single = cpu_n2.solve_single(H[i:i + 1], f[i:i + 1], A[i:i + 1], b[i:i + 1], mask[i:i + 1],
                                         None if hint is None else hint[i:i + 1])
            if single is None:
                continue
            settled += 1
            for name in ("u", "lam", "active", "feasible"):
                assert same_bits(getattr(single, name), getattr(batch, name)[i:i + 1]), (name, i)
        assert 180 <= settled <= 228  # most are; the 12 infeasible ones never are


def test_single_element_gradients_match_finite_differences():
    """B = 1 takes the Python-float KKT solve and backward."""
    H, f, A, b, mask = cbf_benchmark_problems(3, 2, seed=77)
    for i in range(3):
        leaves = [x[i:i + 1].clone().requires_grad_() for x in (H, f, A, b - 0.05 * i)]
        assert torch.autograd.gradcheck(lambda *x: solve_qp(*x, mask=mask[i:i + 1]).u, leaves)


def test_numpy_path_gradient_survives_in_place_change_of_u(cpu_path):
    H, f, A, b, mask = cbf_benchmark_problems(4, 2, seed=78)
    leaves = [x.clone().requires_grad_() for x in (H, f, A, b - 0.03)]
    u = solve_qp(*leaves, mask=mask).u
    expected = torch.autograd.grad(u.sum(), leaves, retain_graph=True)
    with torch.no_grad():
        u.mul_(100.0)  # the caller's tensor; the backward must not read it
    for got, want in zip(torch.autograd.grad(u.sum(), leaves), expected):
        assert same_bits(got, want)


# ----------------------------------------------------------------------------------------------
# B = 1: the whole-problem Python-float path against the NumPy and torch paths


def _single_three_ways(monkeypatch, H, f, A, b, mask=None, active_hint=None, weights=None):
    """One element solved by the Python-float path, the NumPy path and the torch path:
    [(QPSolution, grads of sum(weights * u) w.r.t. H, f, A, b)] in that order."""
    out = []
    for route in (None, "cpu_numpy", "reference"):
        monkeypatch.setattr(routing, "FORCED_ROUTE", route)
        leaves = [x.detach().clone().requires_grad_() for x in (H, f, A, b)]
        sol = solve_qp(*leaves, mask=mask, active_hint=active_hint)
        grads = torch.autograd.grad((sol.u * weights).sum(), leaves, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
        out.append((sol, grads))
    return out


def _assert_single_paths_agree(monkeypatch, H, f, A, b, mask=None, hints=("none", "own", "wrong"), atol=1e-10,
                               same_active=True, seed=0):
    """Every element of the batch solved alone (B = 1): the Python-float path equals the NumPy path
    and the torch path, with no hint, its own active set as the hint and a wrong hint."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for i in range(f.shape[0]):
        args = [x[i:i + 1] for x in (H, f, A, b)]
        mask_i = None if mask is None else mask[i:i + 1]
        weights = torch.randn(1, 2, generator=gen, dtype=torch.float64).to(f.dtype)
        own = None
        for hint_kind in hints:
            hint = None
            if hint_kind == "own":
                hint = own
            elif hint_kind == "wrong":
                hint = torch.tensor([[-1, int(torch.randint(A.shape[1], (1,), generator=gen))]]) if A.shape[1] else None
            results = _single_three_ways(monkeypatch, *args, mask=mask_i, active_hint=hint, weights=weights)
            (py, py_grads) = results[0]
            if own is None:
                own = py.active
            for ref, ref_grads in results[1:]:
                for name in QPSolution._fields:
                    x, y = getattr(py, name), getattr(ref, name)
                    assert x.dtype == y.dtype and x.shape == y.shape, name
                assert same_bits(py.feasible, ref.feasible) and same_bits(py.solver_ok, ref.solver_ok), i
                assert (py.u - ref.u).abs().max() <= atol, (i, hint_kind)
                assert (py.violation - ref.violation).abs().max() <= atol
                if same_active:
                    assert same_bits(py.active, ref.active), (i, hint_kind)
                    assert py.lam.numel() == 0 or (py.lam - ref.lam).abs().max() <= atol
                    for name, gx, gy in zip("HfAb", py_grads, ref_grads):
                        assert gx.numel() == 0 or (gx - gy).abs().max() <= 100 * atol, (i, hint_kind, name)
            count += 1
    return count


@pytest.mark.parametrize("m", [1, 4, 12])
def test_single_element_path_matches_numpy_and_torch_on_random_problems(monkeypatch, m):
    H, f, A, b = random_problems(60, m, 2, seed=80 + m)
    _assert_single_paths_agree(monkeypatch, H, f, A, b, seed=m)
    # some are infeasible (m = 12): the fallback runs, the flags and violations agree
    if m == 12:
        assert not bool(solve_qp(H, f, A, b).feasible.all())


def test_single_element_path_matches_on_cbf_problems_with_masks(monkeypatch):
    H, f, A, b, mask = cbf_benchmark_problems(120, 4, seed=81)
    shift = torch.zeros_like(b)
    shift[:, 8:] = torch.rand(120, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.12 - 0.04
    assert (~mask).any()
    _assert_single_paths_agree(monkeypatch, H, f, A, b - shift, mask, seed=1)
    sol = solve_qp(H, f, A, b - shift, mask=mask)
    assert (sol.active >= 0).sum(-1).max() == 2


def test_single_element_path_matches_on_degenerate_infeasible_and_edge_problems(monkeypatch):
    H, f, A, b = degenerate_problems(60, seed=82)
    _assert_single_paths_agree(monkeypatch, H, f, A, b, atol=1e-8, same_active=False, seed=2)
    H, f, A, b, vertex = vertex_problems(40, seed=83)
    _assert_single_paths_agree(monkeypatch, H, f, A, b, atol=1e-8, same_active=False, seed=3)
    # infeasible: v <= -0.5 and v >= 0 (a band with nothing in it), plus the bounds
    A_inf, b_inf = unicycle_bounds(20)
    A_inf = torch.cat([A_inf, A_inf[:, :1]], 1)
    b_inf = torch.cat([b_inf, torch.full((20, 1), -0.5, dtype=torch.float64)], 1)
    H_inf, f_inf = nominal_cost(torch.randn(20, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    assert not solve_qp(H_inf, f_inf, A_inf, b_inf).feasible.any()
    _assert_single_paths_agree(monkeypatch, H_inf, f_inf, A_inf, b_inf, seed=4)
    # m = 0, every row masked
    H, f, A, b = random_problems(5, 6, 2, seed=84)
    _assert_single_paths_agree(monkeypatch, H, f, A[:, :0], b[:, :0], hints=("none",), seed=5)
    _assert_single_paths_agree(monkeypatch, H, f, A, b, mask=torch.zeros(5, 6, dtype=torch.bool), seed=6)


def test_single_element_path_float32(monkeypatch):
    H, f, A, b, mask = cbf_benchmark_problems(60, 4, seed=85)
    sol = solve_qp(H[:1].float(), f[:1].float(), A[:1].float(), b[:1].float() - 0.02, mask=mask[:1])
    assert sol.u.dtype == torch.float32 and sol.lam.dtype == torch.float32
    _assert_single_paths_agree(monkeypatch, H.float(), f.float(), A.float(), b.float() - 0.02, mask, atol=1e-4,
                               seed=7)


def test_single_element_path_is_taken_and_gradients_match_finite_differences(monkeypatch):
    from model.qp import cpu_n2

    calls = []
    original = cpu_n2.solve_single
    monkeypatch.setattr(cpu_n2, "solve_single", lambda *a: calls.append(1) or original(*a))
    H, f, A, b, mask = cbf_benchmark_problems(3, 2, seed=86)
    for i in range(3):
        leaves = [x[i:i + 1].clone().requires_grad_() for x in (H, f, A, b - 0.05 * i)]
        assert torch.autograd.gradcheck(lambda *x: solve_qp(*x, mask=mask[i:i + 1]).u, leaves)
    assert calls


# ----------------------------------------------------------------------------------------------
# routing: one function picks the implementation, one override forces another


def test_route_choice_by_device_n_and_batch():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert routing.choose_route(cpu, 2, 1) == "cpu_single"
    assert routing.choose_route(cpu, 2, 64) == "cpu_batch"
    assert routing.choose_route(cpu, 3, 64) == "reference"
    assert routing.choose_route(cpu, 1, 1) == "reference"
    assert routing.choose_route(cuda, 2, 64) == "reference_sync_free"
    assert not routing.sync_free(cpu) and routing.sync_free(cuda)
    with routing.forced("cpu_numpy"):
        assert routing.choose_route(cpu, 2, 1) == "cpu_numpy"
        assert routing.choose_route(cpu, 3, 8) == "reference"  # no NumPy rule for n != 2
        assert routing.choose_route(cuda, 2, 8) == "reference_sync_free"
    with routing.forced("reference_sync_free"):
        assert routing.choose_route(cpu, 2, 8) == "reference_sync_free" and routing.sync_free(cpu)
    assert routing.FORCED_ROUTE is None  # restored
    with pytest.raises(ValueError, match="'cpu_single'.*accepted: None or one of 'cpu_numpy'"):
        with routing.forced("cpu_single"):
            pass


def test_bad_forced_route_is_named(monkeypatch):
    monkeypatch.setattr(routing, "FORCED_ROUTE", "numba")
    with pytest.raises(ValueError, match="FORCED_ROUTE='numba'; accepted: None or one of 'cpu_numpy'"):
        solve_qp(torch.eye(2).expand(2, 2, 2), torch.zeros(2, 2), torch.zeros(2, 3, 2), torch.ones(2, 3))


@pytest.mark.parametrize("forced, batch, infeasible, expected", [
    (None, 1, False, ["solve_single"]),
    (None, 1, True, ["solve_single", "cpu_numpy.solve"]),  # the Python path hands over what it cannot settle
    (None, 6, True, ["solve_batch", "full_rule_rows"]),
    (None, 6, False, ["solve_batch"]),
    ("cpu_numpy", 6, False, ["cpu_numpy.solve"]),
    ("reference", 1, False, ["solve_exact"]),
    ("reference_sync_free", 6, True, ["solve_exact"]),
])
def test_each_route_runs_its_implementation(monkeypatch, forced, batch, infeasible, expected):
    """Spies on every implementation's entry: the route calls exactly the expected ones."""
    import model.qp as qp
    from model.qp import cpu_n2, cpu_numpy

    calls = []

    def spy(owner, name, label):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(label) or original(*a, **k))

    spy(cpu_n2, "solve_single", "solve_single")
    spy(cpu_n2, "solve_batch", "solve_batch")
    spy(cpu_numpy, "solve", "cpu_numpy.solve")
    spy(cpu_numpy, "full_rule_rows", "full_rule_rows")
    spy(qp, "solve_exact", "solve_exact")
    monkeypatch.setattr(routing, "FORCED_ROUTE", forced)
    H, f, A, b = random_problems(batch, 4, 2, seed=90)
    if infeasible:  # v <= -1 and v >= 0 in the last element: no point satisfies both
        A[-1, :2] = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=A.dtype)
        b[-1, :2] = torch.tensor([-1.0, 0.0], dtype=b.dtype)
    else:  # u = 0 satisfies every row
        b = b.abs()
    sol = solve_qp(H, f, A, b)
    assert calls == expected
    assert bool(sol.feasible[-1]) != infeasible


def test_the_compiled_loops_see_one_array_layout_per_dtype():
    # numba compiles a loop once per argument type, layout and read-only flag included; the
    # callers hand over C-contiguous writable arrays (cpu_n2_kernels.contiguous), so an expanded
    # H, a transposed A or a read-only view costs no compilation of its own (3-5 s each, cold).
    from numba.core import types

    from model.qp.cpu_n2_kernels import backward_batch, contiguous, solve_batch

    B, m = 16, 5
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.float64):
        H_view = torch.eye(2, dtype=dtype).expand(B, 2, 2)  # stride 0
        f = torch.randn(2, B, generator=gen, dtype=dtype).t().requires_grad_(True)  # transposed: not contiguous
        A = torch.randn(B, 2, m, generator=gen, dtype=dtype).transpose(1, 2)
        b = torch.rand(m, B, generator=gen, dtype=dtype).t() + 0.5
        solution = solve_qp(H_view, f, A, b, mask=torch.ones(B, m, dtype=torch.bool))
        solution.u.sum().backward()
        expected = solve_qp(H_view.contiguous(), f.detach().contiguous(), A.contiguous(), b.contiguous())
        assert same_bits(solution.u.detach(), expected.u)
    for loop in (solve_batch, backward_batch):
        arrays = [t for signature in loop.signatures for t in signature if isinstance(t, types.Array)]
        assert arrays and all(t.layout == "C" and t.mutable for t in arrays), loop.signatures
    read_only = np.broadcast_to(np.eye(2), (3, 2, 2))
    (copy,) = contiguous(read_only)
    assert copy.flags.c_contiguous and copy.flags.writeable and np.array_equal(copy, read_only)
    kept = np.zeros((3, 2))
    assert contiguous(kept)[0] is kept  # no copy where none is needed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_loop_keeps_unit_zero_and_masked_rows_bit_for_bit(dtype):
    """The loop divides a row by its norm only where the norm is neither 1 nor 0 (nor NaN): unit
    rows (the action bounds), zero rows and masked rows keep their numbers, as division by a scale
    of 1 would. The Python float path always divides: u and the row multipliers must be the same
    bytes (a -0.0 included), and in float64, where both backwards run in float64, the gradients
    through every input too (in float32 the batch's backward runs in float32, the Python one in
    float64: they differ in the last bit with or without the shortcut)."""
    from model.qp import cpu_n2

    H, f, A, b, mask = cbf_benchmark_problems(96, 2, seed=93)
    B, m = b.shape
    gen = torch.Generator().manual_seed(6)
    b = b - torch.rand(b.shape, generator=gen, dtype=b.dtype) * 0.2
    A[::3, 0] = torch.tensor([0.6, -0.8], dtype=A.dtype)  # a unit row that is no bound row
    # a row just off unit norm, binding (v >= 0.3 / |a|): it must be divided
    A[1::3, 3], b[1::3, 3] = torch.tensor([-(1 + 2.0 ** -20), 0.0], dtype=A.dtype), -0.3
    A[1::4, 1] = 0.0  # a zero row
    mask = mask.clone()
    mask[2::5, 2] = False
    f[5::7, 0] = -0.0  # a zero proposal coordinate: u comes out -0.0 where no row moves it
    H, f, A, b = (x.to(dtype) for x in (H, f, A, b))
    norms = A.double().norm(dim=-1)
    assert (norms == 1).sum() > B and (norms == 0).any() and ((norms - 1).abs() < 1e-5).sum() > (norms == 1).sum()
    weights = torch.linspace(-1, 1, 2 * B, dtype=dtype).reshape(B, 2)
    leaves = [x.clone().requires_grad_() for x in (H, f, A, b)]
    batch = solve_qp(*leaves, mask=mask)
    (batch.u * weights).sum().backward()
    settled = off_unit_active = 0
    for i in range(B):
        one = [x[i:i + 1].detach().clone().requires_grad_() for x in (H, f, A, b)]
        single = cpu_n2.solve_single(*one, mask[i:i + 1], None)
        if single is None:
            continue
        settled += 1
        off_unit_active += i % 3 == 1 and 3 in single.active.tolist()[0]
        assert single.u.detach().numpy().tobytes() == batch.u[i:i + 1].detach().numpy().tobytes(), i
        assert single.lam.numpy().tobytes() == batch.lam[i:i + 1].numpy().tobytes(), i
        if dtype == torch.float64:
            (single.u * weights[i:i + 1]).sum().backward()
            for name, mine, theirs in zip("HfAb", one, leaves):
                assert mine.grad.numpy().tobytes() == theirs.grad[i:i + 1].numpy().tobytes(), (name, i)
    assert settled >= B // 2 and off_unit_active >= 5


LOOP_OUTPUTS = ("u", "lam", "used", "Y", "K", "active", "inv_norm", "lam_rows", "passed")


def _rows_around_u0(B: int, m: int, seed: int):
    """The generator, then weights (B, 2) of H = diag(weights), u0 (B, 2) and the rows' angles
    (B, m), drawn in this order (the caller draws the rest from the same generator)."""
    gen = torch.Generator().manual_seed(seed)
    weights = 0.5 + 2 * torch.rand(B, 2, generator=gen, dtype=torch.float64)
    u0 = torch.randn(B, 2, generator=gen, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(B, m, generator=gen, dtype=torch.float64)
    return gen, weights, u0, angle


def _loop_runner(weights, u0, A, slack, scale, dtype):
    """run(loop): the outputs (LOOP_OUTPUTS) of a loop with `solve_batch`'s signature on min 1/2
    (u - u0)' H (u - u0) s.t. A u <= b, H = diag(weights), b = A u0 + slack |row| (row k's slack
    in its own units: scale (B, m, 1) its length), no mask or hint, dtype's tolerances."""
    from model.qp import cpu_n2_kernels as kernels
    from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL

    B, m = slack.shape
    H = torch.diag_embed(weights)
    b = (A * u0[:, None, :]).sum(-1) + slack * scale[..., 0]
    f = -(H @ u0[..., None])[..., 0]
    arrays = kernels.contiguous(*(x.numpy() for x in (H, f, A, b)))
    mask, hint = np.ones((B, m), np.bool_), np.full((B, 2), -1, np.int64)
    tol = (FEAS_TOL[dtype], TIE_REL[dtype], SINGULAR_TOL[dtype])

    def run(loop):
        out = kernels.allocate_outputs(B, m)
        loop(*arrays, mask, False, hint, False, *tol, *out)
        return out

    return run


@pytest.mark.parametrize("tolerances", ["float64", "float32"])
def test_the_loops_shortcut_for_clear_rows_keeps_the_fast_rules_winner(tolerances, monkeypatch):
    """Where u0 satisfies every row by more than the dual test could forgive, the compiled loop
    skips the fast rule's single-row and pair loops (`_all_rows_clear`): the empty set wins there.
    Near that line the rule can still pick a row u0 satisfies (a multiplier just below 0, within
    the tie tolerance). The nearest row's slack is swept over nine decades across that line, for
    either dtype's tolerances; the compiled loop must give every output of the same loop run as
    Python with the shortcut switched off, byte for byte."""
    from model.qp import cpu_n2_kernels as kernels

    B, m = 400, 7
    gen, weights, u0, angle = _rows_around_u0(B, m, seed=17)
    scale = 0.2 + 3 * torch.rand(B, m, 1, generator=gen, dtype=torch.float64)  # rows of any length
    A = torch.stack((angle.cos(), angle.sin()), -1) * scale
    slack = 0.5 + torch.rand(B, m, generator=gen, dtype=torch.float64)
    slack[:, 0] = 10.0 ** torch.linspace(-10, -1, B, dtype=torch.float64)  # the nearest row
    slack[::9, 1] = 0.0  # a row u0 touches
    slack[4::11, 2] = -1e-3  # a violated row
    run = _loop_runner(weights, u0, A, slack, scale, getattr(torch, tolerances))

    compiled = run(kernels.solve_batch)
    clear = []
    real = kernels._all_rows_clear
    monkeypatch.setattr(kernels, "_all_rows_clear", lambda *a: clear.append(real(*a)) or clear[-1])
    assert all(x.tobytes() == y.tobytes() for x, y in zip(run(kernels.solve_batch.py_func), compiled))
    monkeypatch.setattr(kernels, "_all_rows_clear", lambda *a: False)
    reference = run(kernels.solve_batch.py_func)
    for name, x, y in zip(LOOP_OUTPUTS, reference, compiled):
        assert x.tobytes() == y.tobytes(), name
    active = compiled[5]
    touched_or_violated = np.zeros(B, np.bool_)
    touched_or_violated[::9] = touched_or_violated[4::11] = True
    # both sides of the line are exercised: rows u0 satisfies picked near it, elements skipped beyond
    picked_near = int(((active >= 0).any(1) & ~touched_or_violated).sum())
    # (float64's tolerances leave a wider margin for round-off at near-singular pairs: fewer skipped)
    assert picked_near >= 5 and (100 if tolerances == "float32" else 25) <= sum(clear) <= B - picked_near, \
        (picked_near, sum(clear))


@pytest.mark.parametrize("tolerances", ["float64", "float32"])
def test_the_loops_pair_skip_keeps_the_fast_rules_winner(tolerances, monkeypatch):
    """The compiled loop skips a pair before its divisions where a multiplier's numerator shows it
    fails the dual test whatever the rounding (`_dual_test_cutoff`). Near that line the rule picks
    a pair of rows u0 satisfies: one multiplier positive, the other just below 0 within the tie
    tolerance. Two such rows per element, their slacks swept over eleven decades across the line;
    every output must equal, byte for byte, the same loop run as Python with the skip switched off."""
    from model.qp import cpu_n2_kernels as kernels
    from model.qp.common import TIE_REL

    dtype = getattr(torch, tolerances)
    B, m = 600, 6
    gen, weights, u0, angle = _rows_around_u0(B, m, seed=23)
    angle[:, 1] = angle[:, 0] + 0.2 + 0.8 * torch.rand(B, generator=gen, dtype=torch.float64)  # an acute pair
    scale = 0.2 + 3 * torch.rand(B, m, 1, generator=gen, dtype=torch.float64)
    A = torch.stack((angle.cos(), angle.sin()), -1) * scale
    slack = 0.5 + torch.rand(B, m, generator=gen, dtype=torch.float64)
    slack[:, 0] = 10.0 ** torch.linspace(-13, -2, B, dtype=torch.float64)
    slack[:, 1] = slack[:, 0] * (1 + 20 * torch.rand(B, generator=gen, dtype=torch.float64))
    run = _loop_runner(weights, u0, A, slack, scale, dtype)
    tie = TIE_REL[dtype]

    compiled = run(kernels.solve_batch)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(run(kernels.solve_batch.py_func), compiled))
    monkeypatch.setattr(kernels, "_dual_test_cutoff", lambda tie: math.inf)  # never skip
    reference = run(kernels.solve_batch.py_func)
    for name, x, y in zip(LOOP_OUTPUTS, reference, compiled):
        assert x.tobytes() == y.tobytes(), name
    # both sides of the line are exercised: the pair's least multiplier (float64, unit rows in the
    # H^-1 metric) within the tolerance where the pair wins, beyond twice it where it is skipped
    unit = A[:, :2] / A[:, :2].norm(dim=-1, keepdim=True)
    M = unit @ torch.diag_embed(1 / weights) @ unit.transpose(1, 2)
    least = torch.linalg.solve(M, -(slack[:, :2] * scale[:, :2, 0]) / A[:, :2].norm(dim=-1)).min(-1).values
    tau = tie / (1 - tie)
    pair_won = torch.from_numpy((compiled[5] == [0, 1]).all(1))
    assert int((pair_won & (least < 0) & (least >= -tau)).sum()) >= 20
    assert int((least < -2.5 * tau).sum()) >= 100 and not pair_won[least < -2.5 * tau].any()
