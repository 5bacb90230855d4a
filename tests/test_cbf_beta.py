"""CBF-Beta (model/cbf_beta.py): the rescaled Beta's density against scipy, the safe box against
the CBF rows on >= 10,000 random and near-boundary states (emptiness confirmed by an independent
LP solver), hand-derived boxes, the PPO re-scoring, and the deployment arm's RCBF filter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.optimize import linprog

from env.core import SafetyState
from model.actors import SafetyFilter, make_actor, make_filter
from model.cbf import cbf_rows, virtual_point
from model.cbf_beta import SAMPLE_EPS, CBFBetaActor, SafeBox, UnconstrainedBeta, beta_log_prob, safe_box
from tasks.params import CBFParams, EnvParams, Params
from tests.helpers import same_bits

OBS_DIM = 12
ENV, CBF = EnvParams(), CBFParams()
LOW, HIGH = [0.0, -ENV.pursuer_w_max], [ENV.pursuer_v_max, ENV.pursuer_w_max]


def actor(seed: int = 0, **cbf) -> CBFBetaActor:
    torch.manual_seed(seed)
    model = CBFBetaActor(OBS_DIM, ENV, CBFParams(**cbf))
    # spread the concentrations (the 0.01-gain head starts them all near 1.69)
    with torch.no_grad():
        model.concentration_head.weight.normal_(0.0, 0.5)
        model.concentration_head.bias.normal_(0.0, 1.0)
    return model


def random_states(n: int, seed: int, k: int = 3) -> SafetyState:
    """Pursuers anywhere (walls included) with k obstacles; a third of them placed with the virtual
    point at a barrier value near 0 (both signs), a tenth of the pursuers hugging a wall."""
    g = np.random.default_rng(seed)
    half = ENV.arena_size / 2
    d = CBF.lookahead
    pose = np.column_stack([g.uniform(-half + 0.2, half - 0.2, (n, 2)), g.uniform(-math.pi, math.pi, n)])
    wall = half - ENV.robot_radius - ENV.safety_margin - d
    hug = g.random(n) < 0.1  # virtual point within +-5 cm of a wall bound
    axis = g.integers(0, 2, n)
    side = g.choice([-1.0, 1.0], n)
    q = virtual_point(torch.tensor(pose), d).numpy()
    target = side * (wall + g.uniform(-0.05, 0.05, n))
    shift = np.where(hug, target - q[np.arange(n), axis], 0.0)
    pose[np.arange(n), axis] += shift
    q = virtual_point(torch.tensor(pose), d).numpy()
    radii = g.uniform(ENV.obstacle_radius_min, ENV.obstacle_radius_max, (n, k))
    centres = g.uniform(-half, half, (n, k, 2))
    near = g.random((n, k)) < 0.35
    rho = radii + ENV.robot_radius + ENV.safety_margin + d
    bearing = g.uniform(-math.pi, math.pi, (n, k))
    gap = rho * (1.0 + g.uniform(-0.03, 0.03, (n, k)))  # h within a few % of 0, both signs
    placed = q[:, None, :] + gap[..., None] * np.stack([np.cos(bearing), np.sin(bearing)], -1)
    centres = np.where(near[..., None], placed, centres)
    mask = g.random((n, k)) < 0.85
    return SafetyState(torch.tensor(pose), torch.tensor(centres), torch.tensor(radii), torch.tensor(mask))


def corners(box: SafeBox) -> torch.Tensor:
    """(B, 4, 2) the four corners."""
    lo, hi = box.low, box.high
    return torch.stack([lo, torch.stack([lo[:, 0], hi[:, 1]], -1), torch.stack([hi[:, 0], lo[:, 1]], -1), hi], 1)


def polytope_is_empty(A: np.ndarray, b: np.ndarray) -> bool:
    """Independent check (HiGHS LP): is {u in the action box : A u <= b} empty?"""
    result = linprog(np.zeros(2), A_ub=A, b_ub=b, bounds=list(zip(LOW, HIGH)), method="highs")
    return result.status == 2  # 2: infeasible


# ---------------------------------------------------------------------------------------------
# The density


def test_beta_log_prob_matches_scipy():
    g = np.random.default_rng(0)
    x = g.uniform(0.001, 0.999, (500, 2))
    a, b = g.uniform(1.0, 8.0, (500, 2)), g.uniform(1.0, 8.0, (500, 2))
    ours = beta_log_prob(torch.tensor(x), torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(ours, scipy.stats.beta(a, b).logpdf(x), rtol=1e-10, atol=1e-10)


def test_rescaled_log_prob_matches_scipy_loc_scale_with_the_jacobian():
    model = actor(1).double()
    states = random_states(400, seed=1)
    obs = torch.randn(400, OBS_DIM, dtype=torch.float64)
    torch.manual_seed(3)
    out = model(obs, states)
    alpha, beta = (t.detach().numpy() for t in model.concentrations(obs))
    low, high = out.info["box_low"].numpy(), out.info["box_high"].numpy()
    feasible = ~out.info["infeasible"].numpy()
    width = high - low
    ok = feasible & (width > 1e-3).all(1)
    assert ok.sum() > 300
    reference = scipy.stats.beta(alpha, beta, loc=low, scale=np.where(width > 0, width, 1.0)).logpdf(out.action.numpy())
    np.testing.assert_allclose(out.log_prob.detach().numpy()[ok], reference.sum(1)[ok], rtol=1e-8, atol=1e-8)
    # the executed action lies in the box, the stored sample is x in (0, 1)
    action = out.action.numpy()
    assert (action >= low - 1e-12).all() and (action <= high + 1e-12).all()
    assert (out.sample >= SAMPLE_EPS).all() and (out.sample <= 1 - SAMPLE_EPS).all()
    np.testing.assert_allclose(action, low + out.sample.numpy() * width, atol=1e-12)


def test_density_integrates_to_one_over_the_box():
    model = actor(2).double()
    states = random_states(64, seed=2)
    obs = torch.randn(64, OBS_DIM, dtype=torch.float64)
    box = model.cbf_geometry(states)
    alpha, beta = model.concentrations(obs)
    nodes, weights = np.polynomial.legendre.leggauss(200)
    checked = 0
    for i in range(64):
        lo, hi = box.low[i].numpy(), box.high[i].numpy()
        if not bool(box.feasible[i]) or (hi - lo).min() < 1e-3:
            continue
        # Gauss-Legendre on the box in physical units: sum of density * area element
        uv = lo[0] + (hi[0] - lo[0]) * (nodes + 1) / 2
        uw = lo[1] + (hi[1] - lo[1]) * (nodes + 1) / 2
        V, W = np.meshgrid(uv, uw, indexing="ij")
        u = torch.tensor(np.stack([V.ravel(), W.ravel()], -1))
        x = ((u - box.low[i]) / box.width[i]).clamp(1e-15, 1 - 1e-15)
        n = u.shape[0]
        sub = SafeBox(box.low[i].expand(n, 2), box.high[i].expand(n, 2), box.feasible[i].expand(n))
        log_density = model._log_prob(x, alpha[i].expand(n, 2), beta[i].expand(n, 2), sub).detach().numpy()
        jac = (hi[0] - lo[0]) * (hi[1] - lo[1]) / 4
        integral = float((np.exp(log_density) * np.outer(weights, weights).ravel()).sum() * jac)
        assert integral == pytest.approx(1.0, abs=1e-4), (i, integral)  # x^(alpha-1) near alpha = 1: quadrature error
        checked += 1
    assert checked >= 40


# ---------------------------------------------------------------------------------------------
# The safe box


@pytest.mark.parametrize("form,gamma,n,seed", [("dcbf", 0.2, 12_000, 10), ("dcbf", 1.0, 4_000, 11), ("ct", 0.5, 4_000, 12)])
def test_every_box_corner_satisfies_every_row_or_the_state_is_flagged(form, gamma, n, seed):
    states = random_states(n, seed=seed)
    rows = cbf_rows(states, ENV, CBF, gamma, form=form)
    box = safe_box(rows.A, rows.b, rows.mask, LOW, HIGH)
    feasible = box.feasible
    # corners inside the action box and every real row, up to round-off
    c = corners(box)  # (B, 4, 2)
    lows, highs = torch.tensor(LOW, dtype=torch.float64), torch.tensor(HIGH, dtype=torch.float64)
    assert ((c >= lows - 1e-12) & (c <= highs + 1e-12)).all()
    values = torch.einsum("bmk,bck->bcm", rows.A, c)  # (B, 4 corners, m rows)
    excess = torch.where(rows.mask[:, None, :], values - rows.b[:, None, :], torch.zeros_like(values))
    tol = 1e-9 * (1 + rows.b.abs()[:, None, :])
    assert bool((excess[feasible] <= tol[feasible]).all()), float(excess[feasible].max())
    # the near-boundary states make both outcomes common enough to matter
    assert 0 < int((~feasible).sum()) < n // 2
    assert (box.width[feasible] > 0).all(dim=1).float().mean() > 0.99
    # every flagged state is truly infeasible (an independent LP solver), and a sample of the
    # unflagged ones truly feasible
    A, b, m = rows.A.numpy(), rows.b.numpy(), rows.mask.numpy()
    for i in torch.nonzero(~feasible).flatten().tolist()[:300]:
        assert polytope_is_empty(A[i][m[i]], b[i][m[i]]), i
    for i in torch.nonzero(feasible).flatten().tolist()[:300]:
        assert not polytope_is_empty(A[i][m[i]], b[i][m[i]]), i


def test_box_is_the_action_box_when_no_row_binds():
    # pursuer at the centre, no obstacles: every wall row has slack far beyond the action box
    states = SafetyState(torch.tensor([[0.0, 0.0, 0.3]]), torch.zeros(1, 2, 2), torch.ones(1, 2),
                         torch.zeros(1, 2, dtype=torch.bool))
    box = CBFBetaActor(OBS_DIM, ENV, CBF).cbf_geometry(states)
    assert box.feasible.all()
    assert box.low.tolist() == [LOW] and box.high.tolist() == [HIGH]


@pytest.mark.parametrize("slack", [0.4, 0.05])
def test_box_facing_a_wall_is_the_hand_derived_interval(slack):
    # Facing the +x wall (theta = 0): q' = (v, d w), the +x wall row is  v <= (gamma / dt) h  and
    # no other row binds, so the safe set is exactly  v <= slack  (any w): the box is that set.
    gamma = CBF.filter_gamma
    wall = ENV.arena_size / 2 - ENV.robot_radius - ENV.safety_margin - CBF.lookahead
    h = slack * ENV.dt / gamma
    x = wall - h - CBF.lookahead  # q_x = wall - h
    states = SafetyState(torch.tensor([[x, 0.0, 0.0]], dtype=torch.float64), torch.zeros(1, 0, 2, dtype=torch.float64),
                         torch.zeros(1, 0, dtype=torch.float64), torch.zeros(1, 0, dtype=torch.bool))
    box = CBFBetaActor(OBS_DIM, ENV, CBF).cbf_geometry(states)
    assert bool(box.feasible.all())
    np.testing.assert_allclose(box.low.numpy(), [LOW], atol=1e-12)
    np.testing.assert_allclose(box.high.numpy(), [[slack, HIGH[1]]], atol=1e-9)


def test_box_is_a_deterministic_function_of_each_state():
    # the update recomputes the rollout's boxes from the stored states, in other batches
    states = random_states(2000, seed=5)
    model = CBFBetaActor(OBS_DIM, ENV, CBF)
    whole = model.cbf_geometry(states)
    idx = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:300]
    part = model.cbf_geometry(SafetyState(*(t[idx] for t in states)))
    for a, b in zip(whole.index(idx), part):
        assert same_bits(a, b)
    # float32 states (what the env and the rollout buffer hold) give the same boxes each time too
    states32 = SafetyState(states.pursuer.float(), states.obstacle_centres.float(), states.obstacle_radii.float(),
                           states.obstacle_mask)
    for a, b in zip(model.cbf_geometry(states32), model.cbf_geometry(states32)):
        assert same_bits(a, b)


def test_infeasible_state_falls_back_and_is_flagged():
    # the virtual point 1 cm from an obstacle's centre: h ~ -rho^2 and |grad h| ~ 0.02, no (v, w) can
    # raise h at rate gamma |h| / dt, so the safe set is empty
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    pose = torch.tensor([[1.0 - CBF.lookahead, 2.0, 0.0]], dtype=torch.float64)
    centres = (q + torch.tensor([[0.01, 0.0]], dtype=torch.float64)).reshape(1, 1, 2)
    states = SafetyState(pose, centres, torch.tensor([[0.5]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool))
    rows = cbf_rows(states, ENV, CBF, CBF.filter_gamma)
    assert polytope_is_empty(rows.A[0].numpy(), rows.b[0].numpy())
    model = actor(0).double()
    out = model(torch.randn(1, OBS_DIM, dtype=torch.float64), states)
    assert out.info["infeasible"].tolist() == [True]
    assert same_bits(out.info["box_low"], out.info["box_high"])  # a point box
    assert torch.equal(out.action, out.info["box_low"])  # the same point (a zero may differ in sign)
    assert out.log_prob.tolist() == [0.0]  # the action did not depend on the sample: ratio 1
    lows, highs = torch.tensor(LOW, dtype=torch.float64), torch.tensor(HIGH, dtype=torch.float64)
    assert bool(((out.action >= lows) & (out.action <= highs)).all())
    lp, _ = model.evaluate_actions(torch.randn(1, OBS_DIM, dtype=torch.float64), states, out.sample)
    assert lp.tolist() == [0.0]


# ---------------------------------------------------------------------------------------------
# The actor in PPO


def test_deterministic_action_is_the_beta_mean_inside_the_box():
    model = actor(4).double()
    states = random_states(200, seed=4)
    obs = torch.randn(200, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        out = model(obs, states, deterministic=True)
        alpha, beta = model.concentrations(obs)
    mean = (alpha / (alpha + beta)).detach()
    low, high = out.info["box_low"], out.info["box_high"]
    feasible = ~out.info["infeasible"]
    np.testing.assert_allclose(out.action[feasible].numpy(), (low + mean * (high - low))[feasible].numpy(), atol=1e-12)
    # proposal: the same x on the whole action box; correction measures what the box changed
    lows, highs = torch.tensor(LOW, dtype=torch.float64), torch.tensor(HIGH, dtype=torch.float64)
    np.testing.assert_allclose(out.info["proposal"].numpy(), (lows + mean * (highs - lows)).numpy(), atol=1e-12)
    np.testing.assert_allclose(out.info["correction"].numpy(),  # normalised units: (dv / v_max, dw / w_max)
                               ((out.action - out.info["proposal"]) / highs).norm(dim=-1).numpy())
    whole = (low == lows).all(1) & (high == highs).all(1)
    assert whole.any() and not out.info["intervened"][whole].any()


def test_update_rescores_the_rollout_sample_exactly_and_has_gradients():
    model = actor(5)
    states = random_states(300, seed=6)
    states = SafetyState(states.pursuer.float(), states.obstacle_centres.float(), states.obstacle_radii.float(),
                         states.obstacle_mask)
    obs = torch.randn(300, OBS_DIM)
    out = model(obs, states)
    # what ppo_update hands over: the rollout's boxes (update_inputs of its record), indexed per
    # minibatch, no SafetyState; without a record the boxes are rebuilt from the states, the same
    inputs = model.update_inputs(states, obs, model.rollout_record(out))
    assert inputs.safety is None and inputs.qp_hint is None and isinstance(inputs.cbf_geometry, SafeBox)
    rebuilt = model.update_inputs(states, obs, None).cbf_geometry
    assert all(same_bits(a, b) for a, b in zip(inputs.cbf_geometry, rebuilt))
    assert not rebuilt.feasible.all() and rebuilt.feasible.any()  # both kinds of state are packed
    idx = torch.arange(0, 300, 3)
    minibatch = inputs.index(idx)
    lp, entropy = model.evaluate_actions(obs[idx], minibatch.safety, out.sample[idx],
                                         cbf_geometry=minibatch.cbf_geometry)
    assert same_bits(lp, out.log_prob[idx])
    lp_recomputed, _ = model.evaluate_actions(obs, states, out.sample)
    assert same_bits(lp_recomputed, out.log_prob)
    # entropy: the Beta's in unit coordinates, against scipy
    alpha, beta = (t.detach().numpy() for t in model.concentrations(obs[idx]))
    np.testing.assert_allclose(entropy.detach().numpy(), scipy.stats.beta(alpha, beta).entropy().sum(1), rtol=1e-4)
    (-lp.mean()).backward()
    grad = model.concentration_head.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_box_width_curves_use_each_steps_own_box():
    """rollout_step_sums: the box-width sums of a step are its own boxes' high - low (fractions of
    the action range), recomputed at every step: two steps with other states give other sums."""
    model = actor(3)
    names = model.rollout_metric_names
    v, w = names.index("box_width_v"), names.index("box_width_w")
    full = torch.tensor(HIGH, dtype=torch.float64) - torch.tensor(LOW, dtype=torch.float64)
    sums = []
    for seed in (8, 9):
        states = random_states(64, seed=seed)
        with torch.no_grad():
            out = model(torch.randn(64, OBS_DIM), states)
            step = model.rollout_step_sums(out)
        boxes = model.cbf_geometry(states)  # recomputed from the states, float64
        expected = ((boxes.high - boxes.low) / full).sum(0)
        assert float(expected.min()) < 64  # some box narrower than the action box: a real check
        torch.testing.assert_close(step[[v, w]], expected, rtol=1e-5, atol=0)
        assert step.shape == (len(names),) and step.dtype == torch.float64
        sums.append(step)
    assert not torch.equal(sums[0][[v, w]], sums[1][[v, w]])


def test_make_actor_builds_cbf_beta_and_its_state_dict_round_trips():
    params = Params()
    torch.manual_seed(0)
    a = make_actor("cbf_beta", OBS_DIM, params)
    b = make_actor("cbf_beta", OBS_DIM, params)
    assert not torch.equal(a.backbone[0].weight, b.backbone[0].weight)
    b.load_state_dict(a.state_dict())
    obs, states = torch.randn(50, OBS_DIM), random_states(50, seed=7)
    assert same_bits(a(obs, states, True).action, b(obs, states, True).action)
    assert set(a.state_dict()) == {k for k in a.state_dict() if k.startswith(("backbone.", "concentration_head."))}


# ---------------------------------------------------------------------------------------------
# The deployment arm: the unconstrained policy through the RCBF-QP filter


def test_cbf_beta_rcbf_filters_the_unconstrained_mean_with_inflated_clearances():
    params = Params()
    margin = 0.1
    model = actor(8)
    policy = make_filter(model, params, "dcbf", robust_margin=margin)
    assert isinstance(policy, SafetyFilter) and isinstance(policy.actor, UnconstrainedBeta)
    states = random_states(500, seed=8)
    obs = torch.randn(500, OBS_DIM, dtype=torch.float64)
    model.double()
    torch.set_grad_enabled(False)
    try:
        _check_rcbf(policy, model, params, obs, states, margin)
    finally:
        torch.set_grad_enabled(True)


def _check_rcbf(policy, model, params, obs, states, margin):
    out = policy(obs, states, deterministic=True)
    # the proposal is the Beta's mean on the whole action box (no safe box)
    alpha, beta = model.concentrations(obs)
    lows, highs = torch.tensor(LOW, dtype=torch.float64), torch.tensor(HIGH, dtype=torch.float64)
    mean_action = lows + (alpha / (alpha + beta)).detach() * (highs - lows)
    np.testing.assert_allclose(out.info["proposal"].numpy(), mean_action.numpy(), atol=1e-12)
    # the executed action satisfies the rows with the margin (independent row evaluation)
    robust = cbf_rows(states, ENV, params.cbf, params.cbf.filter_gamma, form="dcbf", robust_margin=margin)
    plain = cbf_rows(states, ENV, params.cbf, params.cbf.filter_gamma, form="dcbf")
    feasible = ~out.info["infeasible"]
    excess = torch.where(robust.mask, torch.einsum("bmk,bk->bm", robust.A, out.action) - robust.b, torch.zeros(()))
    assert bool((excess[feasible] <= 1e-6).all())  # the QP solution, clipped to the bounds: round-off only
    # and the margin mattered: the plain filter executes something else on some states
    plain_out = make_filter(model, params, "dcbf")(obs, states, deterministic=True)
    assert (plain_out.action - out.action).abs().amax(1).gt(1e-6).any()
    assert int(feasible.sum()) > 300
    # the margin inflates every barrier: each (finite) barrier value is lower with it than without
    finite = torch.isfinite(plain.h)
    assert finite.any() and bool((robust.h[finite] < plain.h[finite]).all())


def test_safe_box_refuses_bad_rounds():
    with pytest.raises(ValueError, match="rounds=0"):
        safe_box(torch.zeros(1, 1, 2), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), LOW, HIGH, rounds=0)


def test_compiled_box_equals_the_torch_code():
    # two implementations of the whole box (NumPy arrays into the compiled QP loop and a numba loop
    # per element; batched torch ops through solve_qp), and the shortcut that skips the other
    # offsets where offset 0 already gives the whole action box
    states = random_states(3000, seed=13)
    for form, gamma in (("dcbf", 0.2), ("ct", 2.0)):
        rows = cbf_rows(states, ENV, CBF, gamma, form=form)
        compiled = safe_box(rows.A, rows.b, rows.mask, LOW, HIGH)
        reference = safe_box(rows.A, rows.b, rows.mask, LOW, HIGH, implementation="torch")
        for a, b in zip(compiled, reference):
            assert same_bits(a, b)
    with pytest.raises(ValueError, match="implementation='numpy'"):
        safe_box(rows.A, rows.b, rows.mask, LOW, HIGH, implementation="numpy")


@pytest.mark.parametrize("shape", [(256, 14, 2), (21, 14, 2), (1, 14, 2), (5000, 3, 2)])
def test_the_pushed_right_sides_use_torchs_norm_bit_for_bit(shape):
    """`_pushed_right_sides` (one numba loop, the norm as sqrt(fma(y, y, x x))) against the tensor
    expression it replaces: torch's norm(dim=-1) of A o half, then b - offset norm; byte for byte,
    on rows over six orders of magnitude, zero components, and rows where plain sqrt(x x + y y)
    rounds differently (so the check can tell the two apart)."""
    from model.cbf_beta import CENTRE_DELTAS, _pushed_right_sides

    rng = np.random.default_rng(shape[0])
    A = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape[:-1] + (1,))
    A[..., 0][rng.random(shape[:-1]) < 0.2] = 0.0
    b = rng.standard_normal(shape[:-1])
    half = (np.array(HIGH) - np.array(LOW)) / 2
    offsets = np.array(CENTRE_DELTAS)
    out = np.empty((len(offsets) * shape[0], shape[1]))
    _pushed_right_sides(A, b, half, offsets, out)
    norm = torch.from_numpy(A * half).norm(dim=-1).numpy()
    want = (b[None] - offsets[:, None, None] * norm[None]).reshape(out.shape)
    assert out.tobytes() == want.tobytes()
    plain = np.sqrt((A * half)[..., 0] ** 2 + (A * half)[..., 1] ** 2)
    assert shape[0] * shape[1] < 100 or (plain != norm).any()


@pytest.mark.parametrize("form", ["dcbf", "ct"])
def test_the_box_without_cbf_rows_own_bound_rows_is_the_same_box(form):
    # `cbf_rows` ends in the action box's four bound rows, which `safe_box` appends itself:
    # `CBFBetaActor.box_rows` leaves the first copy out. The rows left out must be exactly the
    # actor's bound rows (the same set C(x)), and the boxes the same bits, infeasible states too.
    from model.cbf import BOUND_ROWS
    from model.cbf_beta import safe_box_arrays

    model = CBFBetaActor(OBS_DIM, ENV, CBFParams(form=form))
    low, high = model.action_low, model.action_high
    infeasible = 0
    for seed, (k, gamma) in enumerate([(2, 0.05), (3, 0.2), (5, 0.6), (3, 1.0)]):
        states = random_states(6000, seed=300 + seed, k=k)
        model.gamma = gamma
        A, b, mask, _, _ = model.rows_arrays(states)
        assert np.array_equal(A[:, -4:], np.broadcast_to(np.array(BOUND_ROWS), (6000, 4, 2)))
        assert np.array_equal(b[:, -4:], np.broadcast_to(np.array([high[0], -low[0], high[1], -low[1]]), (6000, 4)))
        assert mask[:, -4:].all()
        both = safe_box_arrays(A, b, mask, low, high, model.box_rounds)
        barrier_rows = model.box_rows(A, b, mask)
        assert [x.shape[1] for x in barrier_rows] == [A.shape[1] - 4] * 3
        once = safe_box_arrays(*barrier_rows, low, high, model.box_rounds)
        for x, y in zip(both, once):
            assert x.tobytes() == y.tobytes()
        infeasible += int((~once[2]).sum())
    assert infeasible > 500, infeasible  # the full rule's fallback points are compared too


def test_proven_empty_offsets_get_the_full_rules_flag_without_it():
    # The offsets > 0 skip the full rule where `_empty_beyond_round_off` proves them empty: the
    # flags must be the full rule's, the feasible centres the same bits, and the proof must have
    # settled some elements (else this compares nothing).
    from model.cbf_beta import _BoxConstants, _centres_arrays

    states = random_states(3000, seed=21)
    rows = cbf_rows(states, ENV, CBF, 0.2, form="dcbf")
    low, high = np.array(LOW), np.array(HIGH)
    A = np.concatenate((rows.A.numpy(), np.broadcast_to(np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]]), (3000, 4, 2))), 1)
    b = np.concatenate((rows.b.numpy(), np.broadcast_to(np.array([high[0], -low[0], high[1], -low[1]]), (3000, 4))), 1)
    mask = np.concatenate((rows.mask.numpy(), np.ones((3000, 4), bool)), 1)
    box = _BoxConstants.of(LOW, HIGH)
    full, full_feasible = _centres_arrays(A, b, mask, box, box.deltas[1:], True)
    quick, quick_feasible = _centres_arrays(A, b, mask, box, box.deltas[1:], False)
    assert np.array_equal(full_feasible, quick_feasible)
    assert np.array_equal(full[full_feasible], quick[quick_feasible])
    proven = np.isnan(quick).any(-1)
    assert not (proven & quick_feasible).any()
    assert proven.sum() > 100, proven.sum()


def test_emptiness_proof_agrees_with_an_lp_solver():
    # Random 2-D polygons inside the action box's rows: where the proof says "empty beyond
    # round-off", HiGHS must find no point even with every row relaxed by 1e-7; clearly empty and
    # clearly non-empty hand-made cases are decided both ways.
    from model.cbf_beta import _empty_beyond_round_off

    g = np.random.default_rng(5)
    n, k = 3000, 5
    bounds_A = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    bounds_b = np.array([HIGH[0], -LOW[0], HIGH[1], -LOW[1]])
    angle = g.uniform(-math.pi, math.pi, (n, k))
    normals = np.stack([np.cos(angle), np.sin(angle)], -1) * g.uniform(0.1, 10, (n, k, 1))
    through = np.stack([g.uniform(-0.5, 1.5, (n, k)), g.uniform(-4, 4, (n, k))], -1)
    b_rand = (normals * through).sum(-1) - g.uniform(-0.5, 0.5, (n, k))
    A = np.concatenate((normals, np.broadcast_to(bounds_A, (n, 4, 2))), 1)
    b = np.concatenate((b_rand, np.broadcast_to(bounds_b, (n, 4))), 1)
    mask = np.ones(b.shape, bool)
    mask[:, 0] = g.random(n) < 0.8
    out = np.empty(n, bool)
    _empty_beyond_round_off(A, b, mask, 1e-11, 0.5, max(map(abs, LOW + HIGH)) + 1.0, 1e-9, out)
    assert 100 < out.sum() < n - 100, out.sum()  # both answers occur
    for e in np.flatnonzero(out)[:300]:
        norms = np.linalg.norm(A[e], axis=1)
        keep = mask[e]
        lp = linprog(np.zeros(2), A_ub=A[e][keep] / norms[keep, None], b_ub=b[e][keep] / norms[keep] + 1e-7,
                     bounds=[(None, None)] * 2, method="highs")
        assert lp.status == 2, e  # infeasible
    # v <= 0.2 and -v <= -0.5: empty by 0.3; v <= 0.5 and -v <= -0.2: a strip, not empty
    for right, empty in (((0.2, -0.5), True), ((0.5, -0.2), False)):
        A1 = np.concatenate(([[1.0, 0], [-1, 0]], bounds_A))[None]
        b1 = np.concatenate((right, bounds_b))[None]
        _empty_beyond_round_off(A1, b1, np.ones(b1.shape, bool), 1e-11, 0.5, 3.84, 1e-9, out[:1])
        assert out[0] == empty


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the NumPy box is CPU-only; the torch code runs on CUDA)")
def test_cuda_box_matches_the_cpu_box():
    # CUDA takes the batched torch code through solve_qp; the CPU the NumPy arrays and numba
    # loops. float64 rows: the same feasibility flags, the same box up to round-off.
    states = random_states(3000, seed=17)
    for form, gamma in (("dcbf", 0.2), ("ct", 2.0)):
        rows = cbf_rows(states, ENV, CBF, gamma, form=form)
        cpu = safe_box(rows.A, rows.b, rows.mask, LOW, HIGH)
        gpu = safe_box(rows.A.cuda(), rows.b.cuda(), rows.mask.cuda(), LOW, HIGH)
        for name, a, b in zip(cpu._fields, cpu, gpu):
            assert b.device.type == "cuda", name
            if a.dtype == torch.bool:
                assert same_bits(a, b.cpu()), (form, name)
            else:
                torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-9, msg=f"{form} {name}")
