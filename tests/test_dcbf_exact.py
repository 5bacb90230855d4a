"""The exact discrete-time CBF (model/dcbf_exact.py) against an arc step integrated independently
(benchmarks/dcbf_invariance.py: quadrature, not the env's sinc form), the sinc-rotation formula,
autograd and finite differences, the first-order rows, and the one-step invariance it promises."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from env.core import SafetyState
from model.actors import BarrierNetActor, SafetyFilter
from model.cbf import cbf_rows, num_barriers
from model.config import BarrierNetParams, CBFParams
from model.dcbf_exact import (
    _Problem,
    exact_dcbf_action,
    next_lookahead_jacobian,
    next_lookahead_point,
)
from model.qp import solve_qp
from tasks.params import EnvParams

ENV = EnvParams()
CBF = CBFParams()
REPO = Path(__file__).resolve().parent.parent


def _benchmark():
    spec = importlib.util.spec_from_file_location("dcbf_invariance", REPO / "benchmarks" / "dcbf_invariance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _benchmark()


def random_poses_and_actions(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = np.random.default_rng(seed)
    pose = np.column_stack([g.uniform(-5, 5, (n, 2)), g.uniform(-math.pi, math.pi, n)])
    u = np.column_stack([g.uniform(0, ENV.pursuer_v_max, n), g.uniform(-ENV.pursuer_w_max, ENV.pursuer_w_max, n)])
    u[:5, 1] = [0.0, 1e-9, -1e-9, 1e-5, -1e-5]  # straight and nearly straight
    return torch.tensor(pose), torch.tensor(u)


def test_next_lookahead_point_is_the_integrated_arc_and_the_sinc_rotation_formula():
    pose, u = random_poses_and_actions(500, 0)
    d, dt = CBF.lookahead, ENV.dt
    got = next_lookahead_point(pose, u, d, dt).numpy()
    # route 1: the arc integrated by quadrature, then the look-ahead point
    stepped = BENCH.arc_step(pose.numpy(), u.numpy(), dt)
    route1 = stepped[:, :2] + d * np.column_stack([np.cos(stepped[:, 2]), np.sin(stepped[:, 2])])
    np.testing.assert_allclose(got, route1, rtol=0, atol=1e-12)
    # route 2: q+ = q + dt sinc(eta) R(eta) J(theta) u, eta = w dt / 2 (issue 14's formula)
    p, theta = pose[:, :2].numpy(), pose[:, 2].numpy()
    v, w = u[:, 0].numpy(), u[:, 1].numpy()
    q = p + d * np.column_stack([np.cos(theta), np.sin(theta)])
    eta = w * dt / 2
    sinc = np.sinc(eta / np.pi)  # numpy's sinc is sin(pi x) / (pi x)
    J_u = np.column_stack([np.cos(theta) * v - d * np.sin(theta) * w, np.sin(theta) * v + d * np.cos(theta) * w])
    R_J_u = np.column_stack([np.cos(eta) * J_u[:, 0] - np.sin(eta) * J_u[:, 1], np.sin(eta) * J_u[:, 0] + np.cos(eta) * J_u[:, 1]])
    np.testing.assert_allclose(got, q + dt * sinc[:, None] * R_J_u, rtol=0, atol=1e-12)


def test_jacobian_matches_central_differences():
    pose, u = random_poses_and_actions(300, 1)
    u[:, 0] = u[:, 0].clamp(1e-3, ENV.pursuer_v_max - 1e-3)
    d, dt = CBF.lookahead, ENV.dt
    jac = next_lookahead_jacobian(pose, u, d, dt)
    eps = 1e-6
    for j in range(2):
        step = torch.zeros_like(u)
        step[:, j] = eps
        numeric = (next_lookahead_point(pose, u + step, d, dt) - next_lookahead_point(pose, u - step, d, dt)) / (2 * eps)
        # central differences: truncation ~eps^2, round-off ~1e-16 |q| / eps ~ 1e-9
        torch.testing.assert_close(jac[..., j], numeric, rtol=0, atol=1e-8)
    # autograd through the env's own step (a second derivative route, exact to round-off except
    # where autograd differentiates sin(h) / h at 0 < |h| << 1, which cancels: those are skipped)
    u_grad = u.clone().requires_grad_(True)
    q_next = next_lookahead_point(pose, u_grad, d, dt)
    fine = (u[:, 1].abs() > 0.1) | (u[:, 1] == 0)
    for i in range(2):
        (row,) = torch.autograd.grad(q_next[:, i].sum(), u_grad, retain_graph=True)
        torch.testing.assert_close(jac[fine, i, :], row[fine], rtol=1e-10, atol=1e-14)


def test_rows_linearised_at_the_stop_action_are_the_first_order_rows():
    """At u = 0 the linearisation of h(q+(u)) is h(q) + dt grad_h . J u: the dcbf rows (less the
    half-tolerance back-off the iteration aims inside by)."""
    safety = BENCH.sample_states("obstacle", 64, 3, ENV, CBF)[0]
    gamma = torch.rand(64, num_barriers(1), dtype=torch.float64) * 0.9 + 0.05
    problem = _Problem(safety, ENV, CBF, gamma, 0.0)
    exact = problem.rows_at(torch.zeros(64, 2, dtype=torch.float64))
    first_order = cbf_rows(safety, ENV, CBF, gamma, form="dcbf")
    torch.testing.assert_close(exact.A, first_order.A, rtol=1e-9, atol=1e-12)
    backoff = 0.5e-9 / ENV.dt
    torch.testing.assert_close(exact.b[:, :5], first_order.b[:, :5] - backoff, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(exact.b[:, 5:], first_order.b[:, 5:], rtol=0, atol=0)
    torch.testing.assert_close(exact.h, first_order.h, rtol=0, atol=0)


@pytest.mark.parametrize("kind", BENCH.KINDS)
def test_one_step_invariance_on_the_exact_step(kind):
    """300 states with h(q) in [0, 0.05] and a nominal action pushing toward the boundary, stepped
    by the benchmark's own integrated arc: dcbf_exact 0 violations and 0 infeasible, while the
    first-order form violates h+ >= (1 - gamma) h (the test can tell the forms apart)."""
    rows = BENCH.count_violations(kind, 300, 1, (0.05, 0.2, 1.0))
    exact = [r for r in rows if r["form"] == "dcbf_exact"]
    assert all(r["decay_violations"] == 0 and r["nonneg_violations"] == 0 and r["infeasible"] == 0 for r in exact), exact
    assert all(r["worst_shortfall"] <= 1e-9 for r in exact)
    first_order = [r for r in rows if r["form"] == "dcbf"]
    assert sum(r["decay_violations"] for r in first_order) > 0
    nominal = [r for r in rows if r["form"] == "nominal"]
    assert all(r["decay_violations"] > 150 for r in nominal), "the nominal actions must push"


def test_float32_holds_to_one_part_in_a_million():
    rows = BENCH.count_violations("obstacle", 200, 2, (0.2, 1.0), dtype=torch.float32)
    rows += BENCH.count_violations("wall", 200, 2, (0.2, 1.0), dtype=torch.float32)
    exact = [r for r in rows if r["form"] == "dcbf_exact"]
    assert all(r["decay_violations"] == 0 and r["nonneg_violations"] == 0 and r["infeasible"] == 0 for r in exact), exact


def test_line_search_toward_stop_is_the_last_resort():
    """One round only: the elements whose first answer fails the exact test get s * u, s in [0, 1),
    found by the refined grid, and still pass (stop keeps q in place); the rest keep their QP answer."""
    safety, nominal, _ = BENCH.sample_states("wall", 300, 4, ENV, CBF)
    nominal = torch.tensor(nominal)
    one = exact_dcbf_action(safety, ENV, CBF, 1.0, nominal, max_iters=1)
    full = exact_dcbf_action(safety, ENV, CBF, 1.0, nominal)
    assert one.line_search.sum() > 10 and one.feasible.all() and (one.rounds == 1).all()
    # stepped by the benchmark's integrated arc, not the solver's own check
    pose = safety.pursuer.numpy()
    h0, _ = BENCH.lookahead_barriers(pose, safety, ENV, CBF.lookahead)
    h1, _ = BENCH.lookahead_barriers(BENCH.arc_step(pose, one.u.numpy(), ENV.dt), safety, ENV, CBF.lookahead)
    assert (h1 >= -1e-9).all()  # gamma = 1: h+ >= 0
    # where the line search ran, the answer is a shrunk copy of the one-round QP answer: same direction
    first = exact_dcbf_action(safety, ENV, CBF, 1.0, nominal, max_iters=1)
    searched = one.line_search
    qp_answer = _one_round_answer(safety, nominal)
    ratio = one.u[searched].norm(dim=-1) / qp_answer[searched].norm(dim=-1)
    assert (ratio < 1).all() and (ratio >= 0).all()
    torch.testing.assert_close(one.u[searched], ratio.unsqueeze(-1) * qp_answer[searched], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(first.u, one.u, rtol=0, atol=0)  # deterministic
    # with more rounds, the iteration converges without it
    assert full.line_search.sum() == 0 and full.feasible.all()


def _one_round_answer(safety, nominal):
    problem = _Problem(safety, ENV, CBF, 1.0, 0.0)
    rows = problem.rows_at(problem.clamp(nominal))
    weights = nominal.new_tensor(CBF.action_weights)
    H = torch.diag(weights).expand(len(nominal), 2, 2)
    return problem.clamp(solve_qp(H, -nominal * weights, rows.A, rows.b, mask=rows.mask).u)


def test_no_action_from_deep_inside_is_flagged_infeasible():
    """Look-ahead point 0.3 m inside an obstacle's barrier, facing it: h+ >= 0 (gamma = 1) cannot be
    reached in one step (q moves at most (v_max + d w_max) dt = 0.078 m), so it is flagged."""
    rho = 0.5 + ENV.robot_radius + ENV.safety_margin + CBF.lookahead
    q = np.array([[-(rho - 0.3), 0.0]])  # obstacle at the origin
    p = q - CBF.lookahead * np.array([[1.0, 0.0]])
    safety = SafetyState(torch.tensor(np.column_stack([p, [0.0]])), torch.zeros(1, 1, 2, dtype=torch.float64),
                         torch.tensor([[0.5]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool))
    out = exact_dcbf_action(safety, ENV, CBF, 1.0, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert not out.feasible.item() and torch.isfinite(out.u).all()
    assert 0 <= out.u[0, 0] <= ENV.pursuer_v_max and abs(out.u[0, 1]) <= ENV.pursuer_w_max
    assert out.h[0, 0] < 0 and out.h_next[0, 0] < 0


def test_gradient_is_that_of_the_last_linearised_qp():
    """d u / d gamma and d u / d u_ref by autograd equal central differences of the LAST linearised
    QP with its linearisation point held (b moves by dgamma h / dt on the barrier row, f by -H du_ref)."""
    safety, nominal, _ = BENCH.sample_states("obstacle", 64, 5, ENV, CBF)
    gamma = torch.full((64, num_barriers(1)), 0.2, dtype=torch.float64, requires_grad=True)
    u_ref = torch.tensor(nominal, requires_grad=True)
    out = exact_dcbf_action(safety, ENV, CBF, gamma, u_ref)
    assert out.feasible.all() and (out.rounds >= 2).any(), "some elements must need a second round"
    weights = torch.tensor(CBF.action_weights, dtype=torch.float64)
    H = torch.diag(weights).expand(64, 2, 2)
    A, b, mask = out.rows.A.detach(), out.rows.b.detach(), out.rows.mask

    def last_qp(b_rows, ref):
        return solve_qp(H, -ref * weights, A, b_rows, mask=mask).u

    torch.testing.assert_close(last_qp(b, u_ref.detach()), out.u.detach(), rtol=0, atol=1e-12)
    for j in range(2):  # d v / d ..., d w / d ...
        g_gamma, g_ref = torch.autograd.grad(out.u[:, j].sum(), (gamma, u_ref), retain_graph=True)

        def central(perturbed, eps):  # perturbed(sign, eps) -> u (B, 2)
            return (perturbed(1, eps) - perturbed(-1, eps))[:, j] / (2 * eps)

        def smooth(perturbed):  # elements where two step sizes agree (no active-set switch in between)
            a, c = central(perturbed, 1e-7), central(perturbed, 2e-7)
            return a, (a - c).abs() < 1e-6

        def by_gamma(sign, eps):
            bump = torch.zeros_like(b)
            bump[:, 0] = sign * eps * out.h[:, 0] / ENV.dt  # obstacle row: b = ... + (gamma / dt) h
            return last_qp(b + bump, u_ref.detach())

        numeric, ok = smooth(by_gamma)
        assert ok.sum() >= 60
        torch.testing.assert_close(g_gamma[ok, 0], numeric[ok], rtol=1e-5, atol=1e-6)
        assert (numeric[ok].abs() > 1e-3).sum() > 10, "the obstacle row must be active somewhere"
        for k in range(2):
            def by_ref(sign, eps, k=k):
                step = torch.zeros_like(u_ref)
                step[:, k] = sign * eps
                return last_qp(b, u_ref.detach() + step)

            numeric, ok = smooth(by_ref)
            assert ok.sum() >= 60
            torch.testing.assert_close(g_ref[ok, k], numeric[ok], rtol=1e-5, atol=1e-6)


def near_obstacle(n: int, seed: int, dtype=torch.float32) -> SafetyState:
    safety = BENCH.sample_states("obstacle", n, seed, ENV, CBF)[0]
    return SafetyState(*(t.to(dtype) if t.is_floating_point() else t for t in safety))


def test_barriernet_and_the_filter_run_the_exact_form():
    """cbf.form = dcbf_exact selects the exact projection for BarrierNet (both update modes) and the
    post-hoc filter; executed actions pass the exact test on the integrated arc (float32: 1e-6 x size)."""
    cbf = CBF.model_copy(update={"form": "dcbf_exact"})
    n = 128
    safety = near_obstacle(n, 6)
    obs = torch.randn(n, 10, generator=torch.Generator().manual_seed(0))
    pose = safety.pursuer.double().numpy()
    env_k1 = ENV.model_copy(update={"num_obstacles": 1})
    for mode in ("through_qp", "nominal"):
        torch.manual_seed(0)
        actor = BarrierNetActor(10, env_k1, cbf, BarrierNetParams(update_mode=mode), (16,))
        out = actor(obs, safety)
        assert out.info["intervened"].any() and not out.info["infeasible"].any()
        gamma = out.info["gamma"].detach().double().numpy()
        h0, _ = BENCH.lookahead_barriers(pose, safety, ENV, CBF.lookahead)
        h1, size = BENCH.lookahead_barriers(BENCH.arc_step(pose, out.action.detach().double().numpy(), ENV.dt), safety, ENV, CBF.lookahead)
        assert ((1 - gamma) * h0 - h1 <= 1e-6 * size).all()
        assert actor.cbf_geometry(safety, obs) is None  # the update rebuilds the exact rows per minibatch
        log_prob, _ = actor.evaluate_actions(obs, safety, out.sample.detach())  # PPO stores it detached
        if mode == "through_qp":
            (grad,) = torch.autograd.grad(log_prob.sum(), actor.gamma_head.bias)
            assert torch.isfinite(grad).all() and grad.abs().max() > 0
    filtered = SafetyFilter(_Constant(torch.tensor([ENV.pursuer_v_max, 0.0])), env_k1, cbf, "dcbf_exact", 0.2)
    out = filtered(obs, safety, deterministic=True)
    assert out.info["intervened"].any() and not out.info["infeasible"].any()
    h1, size = BENCH.lookahead_barriers(BENCH.arc_step(pose, out.action.detach().double().numpy(), ENV.dt), safety, ENV, CBF.lookahead)
    h0, _ = BENCH.lookahead_barriers(pose, safety, ENV, CBF.lookahead)
    assert (0.8 * h0 - h1 <= 1e-6 * size).all()
    with pytest.raises(ValueError, match=r"gamma=1.5 for form dcbf_exact; accepted: \(0, 1\]"):
        SafetyFilter(_Constant(torch.zeros(2)), env_k1, cbf, "dcbf_exact", 1.5)


def test_robust_margin_in_the_exact_form_keeps_the_inflated_barrier():
    """robust_margin m: the exact step keeps the barrier of the clearances inflated by m, i.e. the
    plain barrier of an env whose safety_margin is m larger (computed by the benchmark's own code)."""
    wider = ENV.model_copy(update={"safety_margin": ENV.safety_margin + 0.05})
    # states sampled against the plain barrier lie outside the inflated safe set (h_inflated < 0);
    # states sampled against the wider env's barrier lie inside it: 200 of each
    plain, plain_nominal, _ = BENCH.sample_states("obstacle", 200, 7, ENV, CBF)
    inside, inside_nominal, _ = BENCH.sample_states("obstacle", 200, 8, wider, CBF)
    safety = SafetyState(*(torch.cat([a, b]) for a, b in zip(plain, inside)))
    nominal = np.concatenate([plain_nominal, inside_nominal])
    pose = safety.pursuer.numpy()
    h_inflated, _ = BENCH.lookahead_barriers(pose, safety, wider, CBF.lookahead)
    keep = torch.tensor(h_inflated.min(1) >= 0)
    assert int(keep.sum()) >= 200  # the 200 drawn inside the inflated set: the feasibility check is not vacuous
    out = exact_dcbf_action(safety, ENV, CBF, 0.2, torch.tensor(nominal), robust_margin=0.05)
    h1, _ = BENCH.lookahead_barriers(BENCH.arc_step(pose, out.u.numpy(), ENV.dt), safety, wider, CBF.lookahead)
    ok = (h1 - 0.8 * h_inflated >= -1e-9).all(1)
    assert out.feasible[keep].all() and torch.tensor(ok)[out.feasible].all()
    assert (~out.feasible).sum() > 0, "states inside the inflated set (h < 0) exist and are flagged or recovered"


class _Constant(torch.nn.Module):
    """A policy that always proposes the same action (for the filter)."""

    def __init__(self, action: torch.Tensor):
        super().__init__()
        self.action = action

    def forward(self, obs, safety, deterministic=False):
        from model.actors import ActorOutput

        a = self.action.to(obs.dtype).expand(obs.shape[0], 2)
        return ActorOutput(a, a, torch.zeros(obs.shape[0]), {})


def test_absent_obstacles_with_garbage_are_ignored():
    """Masked obstacle slots may hold NaN/inf (the env leaves anything there): the exact form gives
    the answer of the same states without those slots, finite, in both dtypes."""
    safety, nominal, _ = BENCH.sample_states("obstacle", 32, 8, ENV, CBF)
    centres = torch.cat((safety.obstacle_centres, torch.full((32, 1, 2), float("nan"))), dim=1)
    centres[::2, 1] = float("inf")
    radii = torch.cat((safety.obstacle_radii, torch.full((32, 1), float("nan"))), dim=1)
    mask = torch.cat((safety.obstacle_mask, torch.zeros(32, 1, dtype=torch.bool)), dim=1)
    padded = SafetyState(safety.pursuer, centres, radii, mask)
    for dtype in (torch.float64, torch.float32):
        cast = lambda s: SafetyState(*(t.to(dtype) if t.is_floating_point() else t for t in s))  # noqa: E731
        u_ref = torch.tensor(nominal, dtype=dtype)
        with_slot = exact_dcbf_action(cast(padded), ENV, CBF, 0.2, u_ref)
        without = exact_dcbf_action(cast(safety), ENV, CBF, 0.2, u_ref)
        assert torch.isfinite(with_slot.u).all() and with_slot.feasible.all()
        torch.testing.assert_close(with_slot.u, without.u, rtol=0, atol=0)
        assert torch.isinf(with_slot.h[:, 1]).all() and torch.isinf(with_slot.h_next[:, 1]).all()
