"""CBF rows against the true unicycle motion, an independent QP solver and the env's barrier."""

from __future__ import annotations

import math


import numpy as np
import pytest
import quadprog
import torch

from model.cbf import (CBFRows, _barriers_torch, barriers_at, cbf_geometry, cbf_rows, cbf_rows_arrays, cbf_rows_from_geometry,
                       num_barriers, num_rows, virtual_point)
from model.config import CBFParams
from tasks.params import EnvParams

from env.core import SafetyState
from tests.helpers import same_bits


ENV = EnvParams()
CBF = CBFParams()


def unicycle_step(pose: np.ndarray, u: np.ndarray, dt: float) -> np.ndarray:
    """Exact unicycle flow over dt with constant (v, w); pose (N, 3), u (N, 2)."""
    x, y, t = pose.T
    v, w = u.T
    small = np.abs(w) < 1e-9
    w_safe = np.where(small, 1.0, w)
    t1 = t + w * dt
    x1 = np.where(small, x + v * dt * np.cos(t), x + v / w_safe * (np.sin(t1) - np.sin(t)))
    y1 = np.where(small, y + v * dt * np.sin(t), y - v / w_safe * (np.cos(t1) - np.cos(t)))
    return np.stack([x1, y1, t1], axis=1)


def barrier_on_q(pose: np.ndarray, centres: np.ndarray, radii: np.ndarray, env: EnvParams, d: float) -> np.ndarray:
    """h (N, K + 4) written out again in numpy: |q-c|^2 - rho^2, then walls +x, -x, +y, -y."""
    q = pose[:, :2] + d * np.stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])], axis=1)
    rho = radii + env.robot_radius + env.safety_margin + d
    h_obs = ((q[:, None, :] - centres) ** 2).sum(-1) - rho**2
    wall = env.arena_size / 2 - env.robot_radius - env.safety_margin - d
    h_wall = np.stack([wall - q[:, 0], wall + q[:, 0], wall - q[:, 1], wall + q[:, 1]], axis=1)
    return np.concatenate([h_obs, h_wall], axis=1)


def random_states(n: int, k: int, seed: int, dtype=torch.float64) -> SafetyState:
    g = np.random.default_rng(seed)
    half = ENV.arena_size / 2 - 1.0
    pursuer = np.column_stack([g.uniform(-half, half, (n, 2)), g.uniform(-math.pi, math.pi, n)])
    centres = g.uniform(-half, half, (n, k, 2))
    radii = g.uniform(ENV.obstacle_radius_min, ENV.obstacle_radius_max, (n, k))
    t = lambda a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return SafetyState(t(pursuer), t(centres), t(radii), torch.ones(n, k, dtype=torch.bool))


def solve_reference(H: np.ndarray, f: np.ndarray, A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """quadprog (Goldfarb-Idnani): min 1/2 u'Hu + f'u s.t. A u <= b  <=>  (-A) u >= -b."""
    return quadprog.solve_qp(H, -f, -A.T, -b, 0)[0]


def test_shapes_and_row_counts():
    safety = random_states(5, 3, 0)
    rows = cbf_rows(safety, ENV, CBF, 0.3)
    assert isinstance(rows, CBFRows)
    m, big_m = num_rows(3), num_barriers(3)
    assert (m, big_m) == (11, 7)
    assert rows.A.shape == (5, m, 2) and rows.b.shape == (5, m) and rows.mask.shape == (5, m)
    assert rows.h.shape == (5, big_m) and rows.mask.dtype == torch.bool
    h_ref = barrier_on_q(safety.pursuer.numpy(), safety.obstacle_centres.numpy(), safety.obstacle_radii.numpy(), ENV, CBF.lookahead)
    np.testing.assert_allclose(rows.h.numpy(), h_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_dcbf_rows_predict_next_barrier_to_second_order(seed):
    """h(x_{k+1}) = h(x_k) - dt * (A u) + O(dt^2) along the exact unicycle flow (A is the dcbf row / dt)."""
    n, k = 200, 3
    safety = random_states(n, k, seed)
    g = np.random.default_rng(100 + seed)
    u = np.column_stack([g.uniform(0, ENV.pursuer_v_max, n), g.uniform(-ENV.pursuer_w_max, ENV.pursuer_w_max, n)])
    pose = safety.pursuer.numpy()
    h0 = barrier_on_q(pose, safety.obstacle_centres.numpy(), safety.obstacle_radii.numpy(), ENV, CBF.lookahead)
    errors = []
    for dt in (0.02, 0.01, 0.005):
        env = ENV.model_copy(update={"dt": dt})
        rows = cbf_rows(safety, env, CBF, 0.5, form="dcbf")
        A = rows.A[:, : k + 4].numpy()
        predicted = h0 - dt * np.einsum("nmj,nj->nm", A, u)
        true = barrier_on_q(unicycle_step(pose, u, dt), safety.obstacle_centres.numpy(), safety.obstacle_radii.numpy(), env, CBF.lookahead)
        errors.append(np.abs(true - predicted).max())
        # the first-order term itself is not negligible: the rows carry information
        assert np.abs(true - h0).max() > 20 * errors[-1]
    # second order: halving dt quarters the error
    assert 3.0 < errors[0] / errors[1] < 5.0 and 3.0 < errors[1] / errors[2] < 5.0


def test_ct_rows_are_dcbf_rows_with_gamma_over_dt():
    safety = random_states(16, 2, 3)
    gamma = torch.rand(16, num_barriers(2), dtype=torch.float64) * 0.9 + 0.05
    dcbf = cbf_rows(safety, ENV, CBF, gamma, form="dcbf")
    ct = cbf_rows(safety, ENV, CBF, gamma / ENV.dt, form="ct")
    torch.testing.assert_close(dcbf.A, ct.A, rtol=0, atol=0)
    torch.testing.assert_close(dcbf.b, ct.b, rtol=1e-14, atol=1e-12)
    # ct: b = gamma h on the barrier rows, straight from the definition
    torch.testing.assert_close(ct.b[:, :6], gamma / ENV.dt * ct.h, rtol=1e-14, atol=1e-12)
    # form=None takes cbf.form
    default = cbf_rows(safety, ENV, CBFParams(form="ct"), gamma / ENV.dt)
    torch.testing.assert_close(default.b, ct.b, rtol=0, atol=0)


def test_fixed_gamma_equals_constant_tensor_and_gamma_is_differentiable():
    safety = random_states(8, 2, 4)
    fixed = cbf_rows(safety, ENV, CBF, 0.25)
    gamma = torch.full((8, 6), 0.25, dtype=torch.float64, requires_grad=True)
    learned = cbf_rows(safety, ENV, CBF, gamma)
    torch.testing.assert_close(fixed.b, learned.b, rtol=0, atol=0)
    learned.b[:, :6].sum().backward()
    torch.testing.assert_close(gamma.grad, fixed.h / ENV.dt)


def test_bound_rows_describe_the_action_box():
    safety = random_states(1, 0, 5)
    rows = cbf_rows(safety, ENV, CBF, 0.5)
    A, b = rows.A[0, -4:], rows.b[0, -4:]
    inside = torch.tensor([[0.0, -2.84], [1.0, 2.84], [0.5, 0.0]], dtype=torch.float64)
    outside = torch.tensor([[-0.01, 0.0], [1.01, 0.0], [0.5, 2.85], [0.5, -2.85]], dtype=torch.float64)
    assert bool(((inside @ A.T) <= b + 1e-12).all())
    assert bool(((outside @ A.T) > b).any(dim=1).all())


def test_absent_obstacles_are_masked_not_zero_rows():
    safety = random_states(6, 2, 6)
    # slot 1 absent in envs 0..2, holding garbage the env might leave there
    mask = torch.ones(6, 2, dtype=torch.bool)
    mask[:3, 1] = False
    centres = safety.obstacle_centres.clone()
    centres[0, 1] = float("nan")
    centres[1, 1] = float("inf")
    radii = safety.obstacle_radii.clone()
    radii[2, 1] = float("nan")
    partial = SafetyState(safety.pursuer, centres, radii, mask)
    gamma = torch.full((6, 6), 0.3, dtype=torch.float64, requires_grad=True)
    rows = cbf_rows(partial, ENV, CBF, gamma)
    assert torch.isfinite(rows.A).all() and torch.isfinite(rows.b).all()
    assert rows.mask[:3, 1].logical_not().all() and rows.mask[3:].all() and rows.mask[:, 2:].all()
    assert torch.isinf(rows.h[:3, 1]).all() and torch.isfinite(rows.h[3:]).all()
    assert (rows.A.abs().sum(-1) > 0).all(), "no zero rows, masked or not"
    rows.b.sum().backward()
    assert torch.isfinite(gamma.grad).all() and (gamma.grad[:3, 1] == 0).all()
    # present rows equal the rows of the same states with only the present obstacles
    only_first = SafetyState(safety.pursuer[:3], safety.obstacle_centres[:3, :1], safety.obstacle_radii[:3, :1], mask[:3, :1])
    ref = cbf_rows(only_first, ENV, CBF, 0.3)
    keep = [0, 2, 3, 4, 5, 6, 7, 8, 9]  # drop the absent slot's row
    torch.testing.assert_close(rows.A[:3, keep], ref.A)
    torch.testing.assert_close(rows.b[:3, keep].detach(), ref.b)


def test_no_obstacles():
    safety = SafetyState(
        torch.zeros(3, 3), torch.zeros(3, 0, 2), torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool)
    )
    rows = cbf_rows(safety, ENV, CBF, 0.2)
    assert rows.A.shape == (3, 8, 2) and rows.h.shape == (3, 4) and rows.A.dtype == torch.float32


def test_nonnegative_barrier_on_q_implies_env_barrier():
    """|q - c| >= rho = r + R + margin + d  =>  |p - c| >= r + R + margin (and likewise for walls)."""
    safety = random_states(20000, 2, 7)
    rows = cbf_rows(safety, ENV, CBF, 0.5)
    p = safety.pursuer[:, :2]
    clearance = (p.unsqueeze(1) - safety.obstacle_centres).norm(dim=-1) - safety.obstacle_radii
    env_h_obs = clearance - ENV.robot_radius - ENV.safety_margin
    wall = ENV.arena_size / 2 - ENV.robot_radius - ENV.safety_margin
    env_h_wall = torch.stack([wall - p[:, 0], wall + p[:, 0], wall - p[:, 1], wall + p[:, 1]], dim=1)
    env_h = torch.cat([env_h_obs, env_h_wall], dim=1)
    safe_on_q = rows.h >= 0
    assert safe_on_q.sum() > 1000 and (~safe_on_q).sum() > 100  # both cases exercised
    assert bool((env_h[safe_on_q] >= -1e-12).all())


@pytest.mark.parametrize("form,gamma", [("dcbf", 0.2), ("dcbf", 1.0), ("ct", 4.0)])
def test_state_on_the_boundary_stays_safe_after_one_exact_step(form, gamma):
    """Pursuer's virtual point on an obstacle's barrier, heading into it: the QP's action keeps h >= 0
    (up to the O(dt^2) linearisation error) after one exact unicycle step; the nominal action would not."""
    n = 64
    g = np.random.default_rng(8)
    d = CBF.lookahead
    radii = g.uniform(0.3, 1.0, n)
    rho = radii + ENV.robot_radius + ENV.safety_margin + d
    bearing = g.uniform(-math.pi, math.pi, n)
    centres = g.uniform(-3, 3, (n, 2))
    q = centres + rho[:, None] * np.column_stack([np.cos(bearing), np.sin(bearing)])  # on the boundary
    heading = bearing + math.pi + g.uniform(-0.6, 0.6, n)  # facing the obstacle
    p = q - d * np.column_stack([np.cos(heading), np.sin(heading)])
    pose = np.column_stack([p, heading])
    safety = SafetyState(
        torch.tensor(pose), torch.tensor(centres[:, None, :]), torch.tensor(radii[:, None]), torch.ones(n, 1, dtype=torch.bool)
    )
    rows = cbf_rows(safety, ENV, CBF, gamma, form=form)
    np.testing.assert_allclose(rows.h[:, 0].numpy(), 0.0, atol=1e-9)
    nominal = np.column_stack([np.full(n, ENV.pursuer_v_max), g.uniform(-0.5, 0.5, n)])
    H = np.diag(CBF.action_weights)
    A, b = rows.A.numpy(), rows.b.numpy()
    u = np.stack([solve_reference(H, -H @ nominal[i], A[i], b[i]) for i in range(n)])
    assert (np.einsum("nmj,nj->nm", A, u) <= b + 1e-9).all()
    assert (np.abs(u - nominal).sum(1) > 1e-3).all(), "the constraint is active: the QP must intervene"
    h_next = barrier_on_q(unicycle_step(pose, u, ENV.dt), centres[:, None, :], radii[:, None], ENV, d)[:, 0]
    h_nominal = barrier_on_q(unicycle_step(pose, nominal, ENV.dt), centres[:, None, :], radii[:, None], ENV, d)[:, 0]
    scale = 2 * rho * (ENV.pursuer_v_max + d * ENV.pursuer_w_max) * ENV.dt  # size of a first-order change
    assert (h_nominal < -0.1 * scale).all()
    assert (h_next >= -1e-3 * scale).all()


def test_bad_gamma_and_form_are_named():
    safety = random_states(2, 2, 9)
    with pytest.raises(ValueError, match=r"gamma=1.5 .*dcbf.*\(0, 1\]"):
        cbf_rows(safety, ENV, CBF, 1.5, form="dcbf")
    with pytest.raises(ValueError, match=r"gamma=0.0 .*ct"):
        cbf_rows(safety, ENV, CBF, 0.0, form="ct")
    with pytest.raises(ValueError, match=r"form='cbf'.*accepted"):
        cbf_rows(safety, ENV, CBF, 0.5, form="cbf")
    with pytest.raises(ValueError, match=r"gamma has shape \(2, 5\)"):
        cbf_rows(safety, ENV, CBF, torch.ones(2, 5, dtype=torch.float64))
    cbf_rows(safety, ENV, CBF, 3.0, form="ct")  # a ct rate may exceed 1


def test_virtual_point():
    pose = torch.tensor([[1.0, 2.0, math.pi / 2]])
    torch.testing.assert_close(virtual_point(pose, 0.2), torch.tensor([[1.0, 2.2]]))


# ---------------------------------------------------------------------------------------------
# Robust margin (the RCBF-QP filter) and config ownership


def one_state(theta: float) -> SafetyState:
    """Pursuer at (1, 2) heading theta; one obstacle of radius 0.5 at (3, 2)."""
    f64 = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return SafetyState(f64([[1.0, 2.0, theta]]), f64([[[3.0, 2.0]]]), f64([[0.5]]), torch.ones(1, 1, dtype=torch.bool))


def test_robust_margin_rows_against_hand_computed_numbers():
    """Margin 0.05: rho = 0.5 + 0.15 + 0.1 + 0.2 + 0.05 = 1.0, wall bound W = 10 - 0.15 - 0.1 - 0.2 - 0.05 = 9.5."""
    gamma = 0.2  # dcbf: b = (gamma / dt) h = 4 h
    # heading 0: q = (1.2, 2); obstacle h = 1.8^2 - 1 = 2.24, grad = 2 (q - c) = (-3.6, 0), J = [[1, 0], [0, 0.2]]
    rows = cbf_rows(one_state(0.0), ENV, CBF, gamma, form="dcbf", robust_margin=0.05)
    expected_h = [2.24, 9.5 - 1.2, 9.5 + 1.2, 9.5 - 2.0, 9.5 + 2.0]
    np.testing.assert_allclose(rows.h[0].numpy(), expected_h, rtol=0, atol=1e-12)
    expected_A = [[3.6, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 0.2], [0.0, -0.2]]  # -grad_h @ J per barrier
    np.testing.assert_allclose(rows.A[0, :5].numpy(), expected_A, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rows.b[0, :5].numpy(), [4.0 * h for h in expected_h], rtol=0, atol=1e-11)
    # heading pi/2: q = (1, 2.2); h = (4 + 0.04) - 1 = 3.04, grad = (-4, 0.4), J = [[0, -0.2], [1, 0]]
    # -grad @ J = -(0.4, 0.8); walls: -(grad_wall @ J) with grad_wall = (-1, 0), (1, 0), (0, -1), (0, 1)
    rows = cbf_rows(one_state(math.pi / 2), ENV, CBF, 3.0, form="ct", robust_margin=0.05)
    np.testing.assert_allclose(rows.h[0].numpy(), [3.04, 8.5, 10.5, 7.3, 11.7], rtol=0, atol=1e-12)
    expected_A = [[-0.4, -0.8], [0.0, -0.2], [0.0, 0.2], [1.0, 0.0], [-1.0, 0.0]]
    np.testing.assert_allclose(rows.A[0, :5].numpy(), expected_A, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rows.b[0, :5].numpy(), [3.0 * h for h in (3.04, 8.5, 10.5, 7.3, 11.7)], rtol=0, atol=1e-11)


def test_robust_margin_equals_a_larger_safety_margin_and_zero_is_the_plain_rows():
    """Inflating every clearance by m is, for the rows, the env's safety_margin + m (a second route
    to the same rows); m = 0 leaves the rows bit for bit."""
    safety = random_states(64, 3, 11)
    for form, gamma in (("dcbf", 0.3), ("ct", 2.0)):
        robust = cbf_rows(safety, ENV, CBF, gamma, form=form, robust_margin=0.07)
        wider = cbf_rows(safety, ENV.model_copy(update={"safety_margin": ENV.safety_margin + 0.07}), CBF, gamma, form=form)
        for got, want in zip(robust, wider):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        plain, zero = cbf_rows(safety, ENV, CBF, gamma, form=form), cbf_rows(safety, ENV, CBF, gamma, form=form, robust_margin=0.0)
        for got, want in zip(zero, plain):
            assert same_bits(got, want)
        assert (robust.h[:, :3] < plain.h[:, :3]).all() and (robust.h[:, 3:] < plain.h[:, 3:]).all()
    geometry = cbf_geometry(safety, ENV, CBF, robust_margin=0.07)
    torch.testing.assert_close(geometry.h, cbf_rows(safety, ENV, CBF, 0.3, robust_margin=0.07).h)


def test_bad_robust_margin_and_exact_form_in_rows_are_named():
    safety = random_states(2, 1, 12)
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"robust_margin=.*accepted: a finite number of metres >= 0"):
            cbf_rows(safety, ENV, CBF, 0.2, robust_margin=bad)
    with pytest.raises(ValueError, match=r"form='dcbf_exact' has no fixed rows.*exact_dcbf_action"):
        cbf_rows(safety, ENV, CBF, 0.2, form="dcbf_exact")


def test_cbf_params_own_their_validation():
    import pydantic

    assert CBFParams().robust_margin == 0.05 and CBFParams().form == "dcbf"
    assert CBFParams(form="dcbf_exact").form == "dcbf_exact"
    with pytest.raises(pydantic.ValidationError, match=r"robust_margin"):
        CBFParams(robust_margin=-0.1)
    with pytest.raises(pydantic.ValidationError, match=r"form"):
        CBFParams(form="exact")
    import tasks.params

    assert tasks.params.CBFParams is CBFParams  # re-exported, not a copy


def test_importing_model_loads_no_pipeline_module():
    """`import model` and every module under it, in a fresh interpreter: no tasks.* or flows.*."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import importlib, pkgutil, sys, model\n"
        "names = [m.name for m in pkgutil.walk_packages(model.__path__, 'model.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "assert 'model.cbf' in sys.modules and 'model.dcbf_exact' in sys.modules, names\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('tasks', 'flows')))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"pipeline modules loaded by model/: {out.stdout.strip()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_geometry_equals_the_torch_code_bit_for_bit(dtype):
    # two implementations of the rows' gamma-free part and of the barriers (one numba loop per
    # state, batched torch ops): absent obstacles, states hugging walls, K = 0, 2 and 8, with and without the RCBF margin
    for k, seed in ((0, 1), (2, 2), (8, 3)):
        states = random_states(2000, k, seed, dtype)
        g = np.random.default_rng(seed)
        pursuer = states.pursuer.clone()
        hug = torch.from_numpy(g.random(2000) < 0.2)
        pursuer[hug, 0] = (ENV.arena_size / 2 - 0.3) * torch.sign(pursuer[hug, 0])
        states = states._replace(pursuer=pursuer, obstacle_mask=torch.from_numpy(g.random((2000, k)) < 0.7))
        for margin in (0.0, 0.05):
            compiled = cbf_geometry(states, ENV, CBF, margin)
            reference = cbf_geometry(states, ENV, CBF, margin, implementation="torch")
            for name, a, b in zip(compiled._fields, compiled, reference):
                assert a.dtype == b.dtype and a.shape == b.shape, name
                assert same_bits(a, b), (k, margin, name)
            # the barriers at other points (dcbf_exact evaluates them at the exact next look-ahead point)
            q = virtual_point(states.pursuer, CBF.lookahead) + torch.from_numpy(g.normal(0, 0.3, (2000, 2))).to(dtype)
            for a, b in zip(barriers_at(q, states, ENV, CBF.lookahead, margin),
                            _barriers_torch(q, states, ENV, CBF.lookahead, margin)):
                assert a.dtype == b.dtype and same_bits(a, b), (k, margin)
    with pytest.raises(ValueError, match="implementation='numba'"):
        cbf_geometry(states, ENV, CBF, implementation="numba")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_rows_as_arrays_equal_the_torch_code_bit_for_bit(dtype):
    # `cbf_rows_arrays` (one numba loop: geometry and right sides) against the batched torch code
    # (`cbf_geometry(implementation="torch")`, then `cbf_rows_from_geometry`): K = 0, 2 and 8,
    # absent obstacles, states hugging walls, both forms, the RCBF margin, a fixed gamma and one
    # per state and barrier; every array byte for byte
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    for k, seed in ((0, 1), (2, 2), (8, 3)):
        g = np.random.default_rng(seed)
        states = random_states(500, k, seed, dtype)
        pursuer = states.pursuer.clone()
        hug = torch.from_numpy(g.random(500) < 0.2)
        pursuer[hug, 1] = (ENV.arena_size / 2 - 0.3) * torch.sign(pursuer[hug, 1])
        states = states._replace(pursuer=pursuer, obstacle_mask=torch.from_numpy(g.random((500, k)) < 0.7))
        per_state = g.uniform(0.05, 1.0, (500, k + 4)).astype(np_dtype)
        for form in ("dcbf", "ct"):
            for margin in (0.0, 0.05):
                for gamma in (0.2, per_state):
                    torch_gamma = gamma if isinstance(gamma, float) else torch.from_numpy(gamma)
                    geometry = cbf_geometry(states, ENV, CBF, margin, implementation="torch")
                    rows = cbf_rows_from_geometry(geometry, ENV, torch_gamma, form)
                    ours = cbf_rows_arrays(states, ENV, CBF, gamma, form, margin)
                    for name, theirs, mine in zip(("A", "b", "mask", "h", "barrier_mask"),
                                                  (rows.A, rows.b, rows.mask, geometry.h, geometry.barrier_mask), ours):
                        theirs = theirs.contiguous().numpy()
                        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, (k, form, margin, name)
                        assert mine.tobytes() == theirs.tobytes(), (k, form, margin, name)
                    # `cbf_rows` takes this loop on the CPU: its CBFRows too, a gamma tensor (M,) as well
                    for given in (torch_gamma, torch.from_numpy(per_state[0])):
                        reference = cbf_rows_from_geometry(geometry, ENV, given, form)
                        for name, theirs, mine in zip(CBFRows._fields, reference,
                                                      cbf_rows(states, ENV, CBF, given, form, margin)):
                            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, (k, form, name)
                            assert mine.numpy().tobytes() == theirs.contiguous().numpy().tobytes(), (k, form, margin, name)


def test_the_rows_as_arrays_refuse_what_they_cannot_take():
    states = random_states(4, 2, 0, torch.float32)
    with pytest.raises(ValueError, match=r"gamma has shape \(4, 5\) and dtype float32; accepted: a float or an array \(4, 6\)"):
        cbf_rows_arrays(states, ENV, CBF, np.full((4, 5), 0.2, np.float32), "dcbf")
    with pytest.raises(ValueError, match="dtype float64; accepted: a float or an array"):
        cbf_rows_arrays(states, ENV, CBF, np.full((4, 6), 0.2), "dcbf")
    with pytest.raises(ValueError, match=r"gamma=1.5 is invalid for the dcbf form; accepted: \(0, 1\]"):
        cbf_rows_arrays(states, ENV, CBF, 1.5, "dcbf")
    with pytest.raises(ValueError, match="dcbf_exact"):
        cbf_rows_arrays(states, ENV, CBF, 0.2, "dcbf_exact")
    with pytest.raises(ValueError, match="need no gradient; use cbf_rows"):
        cbf_rows_arrays(states._replace(pursuer=states.pursuer.clone().requires_grad_(True)), ENV, CBF, 0.2, "dcbf")
    with pytest.raises(ValueError, match="safety fields disagree"):
        cbf_rows_arrays(states._replace(obstacle_mask=states.obstacle_mask[:, :1]), ENV, CBF, 0.2, "dcbf")


def test_geometry_keeps_autograd_where_the_states_need_it():
    # a pursuer that requires grad takes the torch code: the rows stay differentiable in it
    states = random_states(4, 2, 0)
    pursuer = states.pursuer.clone().requires_grad_(True)
    geometry = cbf_geometry(states._replace(pursuer=pursuer), ENV, CBF)
    geometry.A.sum().backward()
    assert pursuer.grad is not None and torch.isfinite(pursuer.grad).all() and pursuer.grad.abs().sum() > 0
    q = virtual_point(states.pursuer, CBF.lookahead).requires_grad_(True)
    h, _, _ = barriers_at(q, states, ENV, CBF.lookahead)
    h.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the compiled loop is CPU-only; the torch code runs on CUDA)")
def test_cuda_geometry_matches_the_compiled_cpu_loop():
    # On CUDA the rows come from the torch code; on the CPU from the numba loop. Same states,
    # float64: the two devices' cos/sin/sqrt may differ in the last bits, nothing more.
    for k, seed in ((0, 4), (3, 5), (8, 6)):
        states = random_states(4000, k, seed)
        on_gpu = SafetyState(*(t.cuda() for t in states))
        for margin in (0.0, 0.05):
            cpu = cbf_geometry(states, ENV, CBF, margin)
            gpu = cbf_geometry(on_gpu, ENV, CBF, margin)
            for name, a, b in zip(cpu._fields, cpu, gpu):
                assert b.device.type == "cuda", name
                if a.dtype == torch.bool:
                    assert same_bits(a, b.cpu()), name
                else:
                    torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-12, msg=name)
            q = virtual_point(states.pursuer, CBF.lookahead)
            for a, b in zip(barriers_at(q, states, ENV, CBF.lookahead, margin),
                            barriers_at(q.cuda(), on_gpu, ENV, CBF.lookahead, margin)):
                torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-12)


def test_the_compiled_rows_see_one_array_layout_per_dtype():
    # states sliced out of wider tensors (non-contiguous views) reach the loops as C-contiguous
    # copies: one numba specialization per dtype, and the same bits as the contiguous states
    from numba.core import types

    from model.cbf import _barriers_kernel, _geometry_kernel

    for dtype in (torch.float32, torch.float64):
        states = random_states(64, 3, 9, dtype)
        viewed = states._replace(pursuer=states.pursuer.t().contiguous().t())  # column-major: not C-contiguous
        assert not viewed.pursuer.is_contiguous()
        reference = states._replace(pursuer=viewed.pursuer.contiguous())
        for a, b in zip(cbf_geometry(viewed, ENV, CBF), cbf_geometry(reference, ENV, CBF)):
            assert same_bits(a, b)
        q = virtual_point(states.pursuer, CBF.lookahead).t().contiguous().t()
        for a, b in zip(barriers_at(q, states, ENV, CBF.lookahead), barriers_at(q.contiguous(), states, ENV, CBF.lookahead)):
            assert same_bits(a, b)
    for loop in (_geometry_kernel, _barriers_kernel):
        arrays = [t for signature in loop.signatures for t in signature if isinstance(t, types.Array)]
        assert arrays and all(t.layout == "C" and t.mutable for t in arrays), loop.signatures
