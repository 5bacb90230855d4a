"""Policies: gradient regressions of the PPO update, log-probabilities computed another way, the
executed actions against the CBF rows and an independent QP solver, baseline clipping, the filter."""

from __future__ import annotations

import math


import numpy as np
import pytest
import quadprog
import torch
from torch import nn

from model.actors import (
    ActorOutput,
    BarrierNetActor,
    Critic,
    GaussianActor,
    SafetyFilter,
    make_actor,
    make_filter,
)
from model.cbf import cbf_rows, virtual_point
from tasks.params import Params

from env.core import SafetyState


OBS_DIM = 12
PARAMS = Params()
ENV, CBF = PARAMS.env, PARAMS.cbf


def params_with(**sections) -> Params:
    """Params() with some section fields replaced, e.g. barriernet={"update_mode": "nominal"}."""
    raw = Params().to_dict()
    for section, fields in sections.items():
        raw[section].update(fields)
    return Params.model_validate(raw)


def barriernet(mode: str, seed: int = 0, **cbf) -> BarrierNetActor:
    torch.manual_seed(seed)
    return make_actor("barriernet", OBS_DIM, params_with(barriernet={"update_mode": mode}, cbf=cbf))


def near_obstacle_states(n: int, seed: int, gap=(0.005, 0.02), absent_second=True) -> SafetyState:
    """Pursuers whose virtual point is `gap` outside obstacle 0's barrier, heading into it, so the
    barrier row is active at the nominal action; obstacle 1 far away (absent in every other env)."""
    g = np.random.default_rng(seed)
    d = CBF.lookahead
    radii = g.uniform(0.3, 1.0, (n, 2))
    rho = radii[:, 0] + ENV.robot_radius + ENV.safety_margin + d
    bearing = g.uniform(-math.pi, math.pi, n)
    centres = np.zeros((n, 2, 2))
    centres[:, 0] = g.uniform(-4, 4, (n, 2))
    centres[:, 1] = centres[:, 0] + 6.0
    q = centres[:, 0] + (rho + g.uniform(*gap, n))[:, None] * np.column_stack([np.cos(bearing), np.sin(bearing)])
    heading = bearing + math.pi + g.uniform(-0.4, 0.4, n)
    p = q - d * np.column_stack([np.cos(heading), np.sin(heading)])
    mask = np.ones((n, 2), dtype=bool)
    if absent_second:
        mask[::2, 1] = False
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return SafetyState(f32(np.column_stack([p, heading])), f32(centres), f32(radii), torch.tensor(mask))


def open_space_states(n: int, seed: int) -> SafetyState:
    """Pursuers near the arena centre, obstacles far away: no barrier constrains anything."""
    g = np.random.default_rng(seed)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    pose = np.column_stack([g.uniform(-1, 1, (n, 2)), g.uniform(-math.pi, math.pi, n)])
    centres = np.stack([np.full((n, 2), 6.0), np.full((n, 2), -6.0)], axis=1)
    return SafetyState(f32(pose), f32(centres), f32(np.full((n, 2), 0.5)), torch.ones(n, 2, dtype=torch.bool))


def observations(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, OBS_DIM, generator=torch.Generator().manual_seed(seed))


def quadprog_projection(u_ref: np.ndarray, A: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Independent solver: argmin 1/2 (u-u_ref)'H(u-u_ref) s.t. A u <= b (masked rows dropped)."""
    H = np.diag(CBF.action_weights).astype(np.float64)
    out = []
    for i in range(len(u_ref)):
        rows = mask[i]
        Ai, bi = A[i][rows].astype(np.float64), b[i][rows].astype(np.float64)
        out.append(quadprog.solve_qp(H, H @ u_ref[i].astype(np.float64), -Ai.T, -bi, 0)[0])
    return np.stack(out)


def normal_log_prob(sample, mean, std):
    return torch.distributions.Normal(mean, std).log_prob(sample).sum(-1)


# ---------------------------------------------------------------------------------------------
# BarrierNet: gradients


def test_exploration_std_is_a_buffer_not_a_parameter():
    actor = barriernet("through_qp")
    names = [name for name, _ in actor.named_parameters()]
    assert not any("std" in name for name in names)
    torch.testing.assert_close(actor.std, torch.tensor(PARAMS.barriernet.exploration_std))
    assert "std" in actor.state_dict()
    baseline = make_actor("baseline", OBS_DIM, PARAMS)
    assert "log_std" in [name for name, _ in baseline.named_parameters()]


def ppo_loss_backward(actor, obs, safety, seed=0):
    """Roll out (no grad), then the clipped-surrogate loss on the stored samples, as in ppo_update."""
    torch.manual_seed(seed)
    with torch.no_grad():
        out = actor(obs, safety)
    new_log_prob, entropy = actor.evaluate_actions(obs, safety, out.sample)
    ratio = (new_log_prob - out.log_prob).exp()
    advantages = torch.randn(obs.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    loss = -torch.min(advantages * ratio, advantages * ratio.clamp(0.8, 1.2)).mean() - 0.01 * entropy.mean()
    actor.zero_grad(set_to_none=True)
    loss.backward()
    return out


def grad_norm(module: nn.Module) -> float:
    grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


@pytest.mark.parametrize("mode", ["through_qp", "nominal"])
def test_ppo_loss_reaches_the_backbone_and_the_right_heads(mode):
    actor = barriernet(mode)
    obs, safety = observations(64, 0), near_obstacle_states(64, 0)
    out = ppo_loss_backward(actor, obs, safety)
    assert out.info["intervened"].float().mean() > 0.5, "states must make the CBF rows active"
    assert grad_norm(actor.backbone) > 1e-6
    assert grad_norm(actor.nominal_head) > 1e-6
    for p in actor.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    if mode == "through_qp":
        assert grad_norm(actor.gamma_head) > 1e-6, "gamma must learn through the QP"
    else:
        assert grad_norm(actor.gamma_head) == 0.0, "the nominal mode gives gamma no gradient"


def test_through_qp_gamma_gradient_matches_finite_differences():
    """d(log_prob)/d(gamma head bias) by autograd through the QP, against central differences (float64)."""
    actor = barriernet("through_qp").double()
    obs, safety = observations(16, 1).double(), near_obstacle_states(16, 1)
    safety = SafetyState(*(t.double() if t.is_floating_point() else t for t in safety))
    with torch.no_grad():
        sample = actor(obs, safety).sample
    log_prob, _ = actor.evaluate_actions(obs, safety, sample)
    (grad,) = torch.autograd.grad(log_prob.sum(), actor.gamma_head.bias)
    eps = 1e-6
    numeric = torch.zeros_like(grad)
    with torch.no_grad():
        for j in range(grad.numel()):
            actor.gamma_head.bias[j] += eps
            up = actor.evaluate_actions(obs, safety, sample)[0].sum()
            actor.gamma_head.bias[j] -= 2 * eps
            down = actor.evaluate_actions(obs, safety, sample)[0].sum()
            actor.gamma_head.bias[j] += eps
            numeric[j] = (up - down) / (2 * eps)
    assert grad[0].abs() > 1e-3  # obstacle 0's row is active
    torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-6)


def _float64(actor: BarrierNetActor, safety: SafetyState) -> tuple[BarrierNetActor, SafetyState]:
    return actor.double(), SafetyState(*(t.double() if t.is_floating_point() else t for t in safety))


def clipped_surrogate(actor, obs, safety, sample, old_log_prob, advantages, clip=0.2):
    """PPO's clipped surrogate loss on stored samples, as in model/ppo.py."""
    ratio = (actor.evaluate_actions(obs, safety, sample)[0] - old_log_prob).exp()
    return -torch.min(advantages * ratio, advantages * ratio.clamp(1 - clip, 1 + clip)).mean()


def test_through_qp_surrogate_gradient_in_the_gamma_head_matches_finite_differences():
    """docs/ARCHITECTURE.md, "What gamma learns": the gradient the gamma head receives is the
    derivative of the PPO surrogate with the stored sample held, i.e. through the mean's QP only.
    Autograd against central differences of the surrogate itself, for the bias entries and for
    random directions in the weight matrix (float64; the policy moved off the old one first, so
    that the ratio is not 1 and some terms are clipped)."""
    actor, safety = _float64(barriernet("through_qp", seed=3), near_obstacle_states(24, 3))
    obs = observations(24, 3).double()
    torch.manual_seed(3)
    with torch.no_grad():
        out = actor(obs, safety)
        for p in actor.parameters():  # a policy a few updates later
            p.add_(0.05 * torch.randn_like(p))
    advantages = torch.randn(24, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss = lambda: clipped_surrogate(actor, obs, safety, out.sample, out.log_prob, advantages)  # noqa: E731
    ratio = (actor.evaluate_actions(obs, safety, out.sample)[0] - out.log_prob).exp()
    assert ((ratio - 1).abs() > 1e-3).all()
    weight, bias = actor.gamma_head.weight, actor.gamma_head.bias
    grad_w, grad_b = torch.autograd.grad(loss(), (weight, bias))
    assert grad_b.abs().max() > 1e-4, "the obstacle rows are active: gamma must receive a gradient"
    eps = 1e-6
    directions = [("bias", j, None) for j in range(bias.numel())]
    g = torch.Generator().manual_seed(5)
    directions += [("weight", None, torch.randn(weight.shape, generator=g, dtype=torch.float64)) for _ in range(2)]
    for name, j, direction in directions:
        param = bias if name == "bias" else weight
        step = torch.zeros_like(param)
        if direction is None:
            step[j] = eps
            analytic = grad_b[j]
        else:
            step = eps * direction
            analytic = (grad_w * direction).sum()
        with torch.no_grad():
            param.add_(step)
            up = loss()
            param.sub_(2 * step)
            down = loss()
            param.add_(step)
        numeric = (up - down) / (2 * eps)
        torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-8)


def test_through_qp_gamma_gradient_ignores_the_sample_projection():
    """The executed action QP(sample; gamma) moves with gamma, but the likelihood ratio of the
    stored sample does not see it: where the MEAN's QP has no active barrier row, the gamma head
    receives exactly zero gradient even though gamma changes the executed action."""
    actor, safety = _float64(barriernet("through_qp", seed=6), near_obstacle_states(64, 6, gap=(0.03, 0.12)))
    obs = observations(64, 6).double()
    with torch.no_grad():
        nominal, gamma = actor._heads(obs)
        rows = actor.projection.rows(safety, gamma, nominal)
        mean = actor.projection(nominal, rows)[0]
        sample = mean + torch.tensor([0.45, 0.0], dtype=torch.float64)  # faster, straight at the obstacle
        executed = actor.projection(sample, rows)[0]
    free_mean = (mean - nominal).norm(dim=-1) < 1e-12
    projected_sample = (executed - sample.clamp(min=mean.new_tensor([0.0, -2.84]), max=mean.new_tensor([1.0, 2.84]))).norm(dim=-1) > 1e-3
    chosen = free_mean & projected_sample
    assert chosen.sum() >= 5, "need states where only the sample's QP is active"
    idx = chosen.nonzero().squeeze(-1)
    sub = SafetyState(*(t[idx] for t in safety))
    log_prob = actor.evaluate_actions(obs[idx], sub, sample[idx])[0]
    grad = torch.autograd.grad(log_prob.sum(), (actor.gamma_head.weight, actor.gamma_head.bias))
    assert all(bool((g == 0).all()) for g in grad)
    # ... while the executed action does depend on gamma: shift the gamma head's obstacle-0 bias
    with torch.no_grad():
        actor.gamma_head.bias[0] += 0.5
        _, gamma_up = actor._heads(obs[idx])
        executed_up = actor.projection(sample[idx], actor.projection.rows(sub, gamma_up, sample[idx]))[0]
        actor.gamma_head.bias[0] -= 0.5
    assert ((executed_up - executed[idx]).norm(dim=-1) > 1e-4).all()


# ---------------------------------------------------------------------------------------------
# BarrierNet: log-probabilities and executed actions


@pytest.mark.parametrize("mode", ["through_qp", "nominal"])
def test_log_prob_matches_evaluate_actions_and_a_hand_computed_density(mode):
    actor = barriernet(mode)
    obs, safety = observations(32, 2), near_obstacle_states(32, 2)
    with torch.no_grad():
        det = actor(obs, safety, deterministic=True)
        out = actor(obs, safety)
        log_prob, entropy = actor.evaluate_actions(obs, safety, out.sample)
        other, _ = actor.evaluate_actions(obs, safety, out.sample + 0.1)
    # the mean: the QP's deterministic action (through_qp) or the nominal head's output (nominal)
    mean = det.action if mode == "through_qp" else det.info["nominal"]
    assert not det.info["infeasible"].any()
    expected = normal_log_prob(out.sample, mean, actor.std)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other, normal_log_prob(out.sample + 0.1, mean, actor.std), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, torch.distributions.Normal(mean, actor.std).entropy().sum(-1))
    if mode == "through_qp":  # the safe mean differs from the nominal mean where the rows are active
        assert (det.action - det.info["nominal"]).norm(dim=-1).max() > 0.05


@pytest.mark.parametrize("mode", ["through_qp", "nominal"])
def test_executed_actions_satisfy_the_rows_and_equal_an_independent_projection(mode):
    actor = barriernet(mode)
    n = 48
    obs = observations(n, 3)
    near, free = near_obstacle_states(n // 2, 3), open_space_states(n // 2, 3)
    safety = SafetyState(*(torch.cat([a, b]) for a, b in zip(near, free)))
    with torch.no_grad():
        out = actor(obs, safety)
    info = out.info
    assert set(info) >= {"nominal", "gamma", "intervened", "infeasible", "correction", "lookahead_h"}
    assert info["gamma"].shape == (n, 6) and info["lookahead_h"].shape == (n, 6)
    g = PARAMS.barriernet
    assert ((info["gamma"] > g.gamma_min) & (info["gamma"] < g.gamma_max)).all()
    rows = cbf_rows(safety, ENV, CBF, info["gamma"])
    feasible = ~info["infeasible"]
    assert feasible.all()
    slack = torch.einsum("bmj,bj->bm", rows.A, out.action) - rows.b
    assert (slack[rows.mask & feasible.unsqueeze(1)] <= 1e-5).all()
    # executed = projection of the sample (nominal) / of the sample around the QP mean (through_qp)
    expected = quadprog_projection(out.sample.numpy(), rows.A.numpy(), rows.b.numpy(), rows.mask.numpy())
    np.testing.assert_allclose(out.action.numpy(), expected, atol=2e-4)
    # intervention bookkeeping against the proposal the nominal policy alone would have executed:
    # the nominal mean plus this draw's noise (the sample less the mean it was drawn around: the
    # QP's deterministic action in through_qp mode, the nominal mean in nominal mode), clipped to
    # the action box; correction in normalised action units: (dv / v_max, dw / w_max)
    with torch.no_grad():
        det = actor(obs, safety, deterministic=True)
    noise = out.sample - (det.action if mode == "through_qp" else info["nominal"])
    scale = torch.tensor([ENV.pursuer_v_max, ENV.pursuer_w_max])
    proposal = torch.maximum(torch.minimum(info["nominal"] + noise, scale), torch.tensor([0.0, -ENV.pursuer_w_max]))
    torch.testing.assert_close(info["proposal"], proposal, rtol=0, atol=1e-6)
    torch.testing.assert_close(info["correction"], ((out.action - proposal) / scale).norm(dim=-1), rtol=1e-5, atol=1e-6)
    assert torch.equal(info["intervened"], info["correction"] > CBF.intervention_tol)
    assert info["intervened"][: n // 2].float().mean() > 0.5


@pytest.mark.parametrize("mode", ["through_qp", "nominal"])
def test_deterministic_action_is_the_projected_nominal_mean(mode):
    actor = barriernet(mode)
    obs, safety = observations(20, 4), near_obstacle_states(20, 4)
    with torch.no_grad():
        first = actor(obs, safety, deterministic=True)
        second = actor(obs, safety, deterministic=True)
    assert torch.equal(first.action, second.action)
    rows = cbf_rows(safety, ENV, CBF, first.info["gamma"])
    expected = quadprog_projection(first.info["nominal"].numpy(), rows.A.numpy(), rows.b.numpy(), rows.mask.numpy())
    np.testing.assert_allclose(first.action.numpy(), expected, atol=2e-4)


def test_infeasible_states_give_a_flagged_finite_in_bounds_action():
    actor = barriernet("through_qp")
    safety = near_obstacle_states(8, 5)
    pursuer = safety.pursuer.clone()
    # virtual point on obstacle 0's centre: the barrier gradient vanishes and h = -rho^2 < 0
    heading = pursuer[:, 2]
    pursuer[:, :2] = safety.obstacle_centres[:, 0] - CBF.lookahead * torch.stack([heading.cos(), heading.sin()], -1)
    inside = safety._replace(pursuer=pursuer)
    obs = observations(8, 5)
    out = actor(obs, inside)
    assert out.info["infeasible"].all()
    assert torch.isfinite(out.action).all() and torch.isfinite(out.log_prob).all()
    assert (out.action[:, 0] >= 0).all() and (out.action[:, 0] <= ENV.pursuer_v_max).all()
    assert (out.action[:, 1].abs() <= ENV.pursuer_w_max).all()
    log_prob, _ = actor.evaluate_actions(obs, inside, out.sample.detach())
    log_prob.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in actor.parameters() if p.grad is not None)


@pytest.mark.parametrize("which", ["barriernet", "shielded", "cbf_beta"])
def test_rollout_step_sums_count_and_sum_the_info_on_both_routes(which):
    """rollout_step_sums on the CPU (NumPy counts, one tensor built) against hand sums of the
    info in Python and against the accelerators' tensor route (forced on the CPU): the same
    float64 vector, byte for byte, with infeasible, corrected and active-row states in the batch."""
    from model.actors import make_actor
    from model.qp import routing

    torch.manual_seed(3)
    actor = make_actor(which, OBS_DIM, PARAMS)
    near, inside = near_obstacle_states(64, 1), near_obstacle_states(16, 2)
    heading = inside.pursuer[:, 2]
    inside.pursuer[:, :2] = inside.obstacle_centres[:, 0] - CBF.lookahead * torch.stack([heading.cos(), heading.sin()], -1)
    safety = SafetyState(*(torch.cat(pair) for pair in zip(near, inside)))
    with torch.no_grad():
        out = actor(observations(80, 3) * 4.0, safety)
        ours = actor.rollout_step_sums(out)
        with routing.forced("reference_sync_free"):
            theirs = actor.rollout_step_sums(out)
    info = out.info
    hand = [sum(bool(x) for x in info["intervened"]), sum(bool(x) for x in info["infeasible"])]
    assert hand[0] > 0 and hand[1] > 0
    assert ours.dtype == torch.float64 and ours.shape == (len(actor.rollout_metric_names),)
    assert ours[:2].tolist() == hand
    assert math.isclose(ours[2], sum(float(g.mean()) for g in info["gamma"].float()), rel_tol=1e-5)
    assert math.isclose(ours[3], sum(float(c) for c in info["correction"]), rel_tol=1e-5)
    if which == "barriernet":
        rows = [sum(int(k) >= 0 for k in pair) for pair in info["active_mean"]]
        assert ours[4:].tolist() == [sum(rows), sum(r > 0 for r in rows)] and sum(rows) > 0
    assert ours.numpy().tobytes() == theirs.numpy().tobytes()


def test_lookahead_barrier_has_its_own_key():
    """The actor's barrier (of the CBF rows, on the look-ahead point) is info["lookahead_h"], never
    "h", the env's body barrier (metres) that meets it in a rollout: the rows' h of the same states."""
    actor = barriernet("through_qp")
    obs, safety = observations(4, 6), near_obstacle_states(4, 6)
    with torch.no_grad():
        out = actor(obs, safety)
    assert "h" not in out.info
    rows = cbf_rows(safety, ENV, CBF, out.info["gamma"])
    torch.testing.assert_close(out.info["lookahead_h"], rows.h)


def test_wrong_obstacle_count_is_named():
    actor = barriernet("through_qp")
    safety = near_obstacle_states(4, 7)
    one = SafetyState(safety.pursuer, safety.obstacle_centres[:, :1], safety.obstacle_radii[:, :1], safety.obstacle_mask[:, :1])
    with pytest.raises(ValueError, match=r"obstacle_radii has shape \(4, 1\).*\(4, 2\)"):
        actor(observations(4, 7), one)


def test_autocast_keeps_the_safety_layer_in_float32():
    actor = barriernet("through_qp")
    obs, safety = observations(8, 8), near_obstacle_states(8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = actor(obs, safety)
        log_prob, _ = actor.evaluate_actions(obs, safety, out.sample)
    assert out.action.dtype == torch.float32 and log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob, out.log_prob)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["through_qp", "nominal"])
def test_cuda_matches_cpu(mode):
    actor = barriernet(mode)
    obs, safety = observations(32, 9), near_obstacle_states(32, 9)
    with torch.no_grad():
        cpu = actor(obs, safety, deterministic=True)
        gpu_actor = actor.cuda()
        gpu_safety = SafetyState(*(t.cuda() for t in safety))
        gpu = gpu_actor(obs.cuda(), gpu_safety, deterministic=True)
        log_prob, _ = gpu_actor.evaluate_actions(obs.cuda(), gpu_safety, cpu.sample.cuda())
    torch.testing.assert_close(gpu.action.cpu(), cpu.action, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_prob.cpu(), cpu.log_prob, atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Baseline


def test_baseline_stores_the_unclipped_sample_and_executes_the_clipped_one():
    torch.manual_seed(0)
    actor = GaussianActor(OBS_DIM, ENV, [64, 64], init_log_std=0.5)  # wide: many samples leave the box
    with torch.no_grad():  # raw head outputs of a few units, where tanh(raw) and raw differ
        actor.mean_head.weight.mul_(300.0)
    obs = observations(256, 10)
    with torch.no_grad():
        out = actor(obs, None)
        mean, std = actor.distribution(obs)
    low, high = torch.tensor([0.0, -ENV.pursuer_w_max]), torch.tensor([ENV.pursuer_v_max, ENV.pursuer_w_max])
    outside = ((out.sample < low) | (out.sample > high)).any(-1)
    assert outside.float().mean() > 0.2
    torch.testing.assert_close(out.action, torch.maximum(torch.minimum(out.sample, high), low))
    assert (out.action[outside] != out.sample[outside]).any(-1).all()
    # physical mean and std, by hand from the raw head and log-std
    raw = actor.mean_head(actor.backbone(obs)).detach()
    half = torch.tensor([ENV.pursuer_v_max / 2, ENV.pursuer_w_max])
    torch.testing.assert_close(mean, torch.tensor([ENV.pursuer_v_max / 2, 0.0]) + half * torch.tanh(raw))
    assert ((mean >= low) & (mean <= high)).all()  # the mean stays in the box; samples may leave it
    torch.testing.assert_close(std, half * math.exp(0.5))
    torch.testing.assert_close(out.log_prob, normal_log_prob(out.sample, mean, std))
    log_prob, entropy = actor.evaluate_actions(obs, None, out.sample)
    torch.testing.assert_close(log_prob, out.log_prob)
    assert out.info == {}


def test_baseline_ppo_loss_reaches_backbone_and_log_std():
    torch.manual_seed(1)
    actor = make_actor("baseline", OBS_DIM, PARAMS)
    out = ppo_loss_backward(actor, observations(64, 11), None)
    assert grad_norm(actor.backbone) > 1e-6 and actor.log_std.grad.abs().sum() > 0
    det = actor(observations(4, 11), None, deterministic=True)
    torch.testing.assert_close(det.sample, actor.distribution(observations(4, 11))[0])
    assert out.sample.shape == (64, 2)


# ---------------------------------------------------------------------------------------------
# Post-hoc filter


class FixedActor(nn.Module):
    """Proposes a given action; stands in for any wrapped actor."""

    def __init__(self, action: torch.Tensor):
        super().__init__()
        self.fixed = action

    def forward(self, obs, safety, deterministic=False):
        return ActorOutput(self.fixed, self.fixed + 1.0, torch.zeros(len(self.fixed)), {})

    def evaluate_actions(self, obs, safety, sample, qp_hint=None, cbf_geometry=None):  # the Actor interface
        return torch.full((len(sample),), -1.0), torch.zeros(len(sample))


@pytest.mark.parametrize("form,gamma", [("ct", 4.0), ("dcbf", 0.2)])
def test_filter_leaves_a_safe_action_alone_and_corrects_an_unsafe_one(form, gamma):
    n = 32
    forward = torch.tensor([[ENV.pursuer_v_max, 0.0]]).expand(n, 2)
    filtered = make_filter(FixedActor(forward), PARAMS, form, gamma)
    obs = observations(n, 12)
    safe = filtered(obs, open_space_states(n, 12), deterministic=True)
    torch.testing.assert_close(safe.action, forward, rtol=0, atol=1e-6)
    assert not safe.info["intervened"].any() and not safe.info["infeasible"].any()
    torch.testing.assert_close(safe.sample, forward + 1.0)  # the wrapped actor's sample and log-prob pass through

    states = near_obstacle_states(n, 12)
    unsafe = filtered(obs, states, deterministic=True)
    assert unsafe.info["intervened"].all() and not unsafe.info["infeasible"].any()
    assert (unsafe.info["gamma"] == gamma).all() and unsafe.info["lookahead_h"].shape == (n, 6)
    rows = cbf_rows(states, ENV, CBF, gamma, form=form)
    slack = torch.einsum("bmj,bj->bm", rows.A, unsafe.action) - rows.b
    assert (slack[rows.mask] <= 1e-5).all()
    expected = quadprog_projection(forward.numpy(), rows.A.numpy(), rows.b.numpy(), rows.mask.numpy())
    np.testing.assert_allclose(unsafe.action.numpy(), expected, atol=2e-4)
    # the wrapped actor's proposal would have moved the virtual point into the barrier faster
    q = virtual_point(states.pursuer, CBF.lookahead)
    toward = (states.obstacle_centres[:, 0] - q) * torch.stack([states.pursuer[:, 2].cos(), states.pursuer[:, 2].sin()], -1)
    assert (toward.sum(-1) > 0).all()
    assert (unsafe.action[:, 0] < forward[:, 0] - 1e-3).all() or (unsafe.action[:, 1].abs() > 1e-3).all()
    assert filtered.evaluate_actions(obs, states, forward)[0].eq(-1.0).all()


def test_ct_filter_is_more_conservative_than_dcbf_at_the_same_gamma():
    """Same number, different units: ct reads gamma as 1/s, dcbf as per step (ct == dcbf at gamma*dt)."""
    n = 32
    forward = torch.tensor([[ENV.pursuer_v_max, 0.0]]).expand(n, 2)
    states = near_obstacle_states(n, 13, gap=(0.05, 0.3))
    obs = observations(n, 13)
    ct = make_filter(FixedActor(forward), PARAMS, "ct")(obs, states, deterministic=True)
    dcbf = make_filter(FixedActor(forward), PARAMS, "dcbf")(obs, states, deterministic=True)
    dcbf_equiv = make_filter(FixedActor(forward), PARAMS, "dcbf", CBF.filter_gamma * ENV.dt)(obs, states, deterministic=True)
    assert ct.info["correction"].mean() > dcbf.info["correction"].mean()
    torch.testing.assert_close(ct.action, dcbf_equiv.action, atol=1e-5, rtol=1e-5)


def test_filter_wraps_the_baseline():
    torch.manual_seed(2)
    actor = make_actor("baseline", OBS_DIM, PARAMS)
    filtered = make_filter(actor, PARAMS, "dcbf")
    obs, states = observations(16, 14), near_obstacle_states(16, 14)
    with torch.no_grad():
        out = filtered(obs, states, deterministic=True)
        inner = actor(obs, states, deterministic=True)
    torch.testing.assert_close(out.info["nominal"], inner.action)
    torch.testing.assert_close(out.log_prob, inner.log_prob)
    assert out.info["intervened"].any()


def test_filter_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"form='cbf'.*'ct' or 'dcbf'"):
        SafetyFilter(FixedActor(torch.zeros(1, 2)), ENV, CBF, "cbf", 0.2)
    with pytest.raises(ValueError, match=r"gamma=2.0 for form dcbf.*\(0, 1\]"):
        SafetyFilter(FixedActor(torch.zeros(1, 2)), ENV, CBF, "dcbf", 2.0)


# ---------------------------------------------------------------------------------------------
# Critic and factories


def test_critic_shape_and_orthogonal_init():
    torch.manual_seed(3)
    critic = Critic(OBS_DIM, [64, 32])
    assert critic(observations(5, 15)).shape == (5,)
    first = critic.backbone[0].weight  # (64, 12): orthogonal columns with gain sqrt(2)
    torch.testing.assert_close(first.T @ first, 2.0 * torch.eye(OBS_DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(critic.value_head.weight.norm(), torch.tensor(1.0))
    assert critic.value_head.bias.abs().sum() == 0


def test_factories():
    assert isinstance(make_actor("barriernet", OBS_DIM, PARAMS), BarrierNetActor)
    assert isinstance(make_actor("baseline", OBS_DIM, PARAMS), GaussianActor)
    with pytest.raises(ValueError, match=r"algo='ppo' is unknown; accepted: \('barriernet', 'baseline', 'cbf_beta', 'shielded'\)"):
        make_actor("ppo", OBS_DIM, PARAMS)
    actor = make_actor("barriernet", OBS_DIM, params_with(barriernet={"update_mode": "nominal"}))
    assert actor.update_mode == "nominal"
    assert make_filter(actor, PARAMS, "ct").gamma == CBF.filter_gamma


# ---------------------------------------------------------------------------------------------
# Closed loop with the env


class TowardNearestObstacle(nn.Module):
    """Adversarial nominal policy: full speed, steering at the nearest obstacle."""

    def forward(self, obs, safety, deterministic=False):
        p = safety.pursuer
        distance = (safety.obstacle_centres - p[:, None, :2]).norm(dim=-1).masked_fill(~safety.obstacle_mask, 1e9)
        centre = safety.obstacle_centres[torch.arange(len(p)), distance.argmin(1)]
        bearing = torch.atan2(centre[:, 1] - p[:, 1], centre[:, 0] - p[:, 0]) - p[:, 2]
        bearing = torch.atan2(bearing.sin(), bearing.cos())
        action = torch.stack([torch.ones(len(p)), (3 * bearing).clamp(-ENV.pursuer_w_max, ENV.pursuer_w_max)], -1)
        return ActorOutput(action, action, torch.zeros(len(p)), {})


def test_filters_keep_the_env_barrier_nonnegative_in_closed_loop():
    """The env's own barrier (metrics' definition, computed by env.core) never goes negative under
    the filtered adversarial policy, while the unfiltered one violates it and collides."""
    core_module = pytest.importorskip("env.core")
    params = params_with(env={"num_obstacles": 4, "observed_obstacles": 4})
    arms = {
        "raw": TowardNearestObstacle(),
        "dcbf": make_filter(TowardNearestObstacle(), params, "dcbf"),
        "ct": make_filter(TowardNearestObstacle(), params, "ct"),
    }
    results = {}
    for name, policy in arms.items():
        core = core_module.PursuitEvasionCore(params.env, 32)
        core.seed(list(range(32)))
        obs = core.reset()
        violations = collisions = 0
        for _ in range(100):
            with torch.no_grad():
                out = policy(obs, core.safety_state(), deterministic=True)
            obs, _, _, _, info = core.step(out.action)
            violations += int((info["h"] < 0).any(1).sum())
            collisions += int(info["collided"].sum())
        results[name] = (violations, collisions)
    assert results["raw"][0] > 10 and results["raw"][1] > 0, results
    assert results["dcbf"] == (0, 0) and results["ct"] == (0, 0), results


# ---------------------------------------------------------------------------------------------
# QP warm start (info["active_mean"] -> evaluate_actions(qp_hint=))


def test_active_mean_is_the_mean_qps_active_set_and_the_hint_changes_nothing():
    actor = barriernet("through_qp").double()
    obs, safety = observations(64, 3).double(), near_obstacle_states(64, 3)
    safety = SafetyState(*(t.double() if t.is_floating_point() else t for t in safety))
    torch.manual_seed(0)
    out = actor(obs, safety)
    active = out.info["active_mean"]
    assert active.dtype == torch.int64 and active.shape == (64, 2)
    assert (active >= 0).any(), "states must make some CBF rows active"
    # an independent solve of the mean's QP (quadprog) has those rows tight
    rows = cbf_rows(safety, ENV, CBF, out.info["gamma"])
    mean = torch.from_numpy(quadprog_projection(out.info["nominal"].detach().numpy(), rows.A.detach().numpy(),
                                                rows.b.detach().numpy(), rows.mask.numpy()))
    resid = (rows.A.detach() @ mean[..., None])[..., 0] - rows.b.detach()
    tight = resid.gather(1, active.clamp(min=0))[active >= 0]
    assert tight.abs().max() <= 1e-6
    # the hint (correct, wrong, none) gives the same log_prob and the same gradients
    results = []
    for hint in (None, active, torch.full_like(active, -1), active.roll(1, 0)):
        actor.zero_grad()
        log_prob, _ = actor.evaluate_actions(obs, safety, out.sample.detach(), qp_hint=hint)
        log_prob.sum().backward()
        results.append((log_prob.detach(), [p.grad.clone() for p in actor.parameters()]))
    for log_prob, grads in results[1:]:
        torch.testing.assert_close(log_prob, results[0][0], rtol=0, atol=1e-10)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-8, atol=1e-10)


def test_nominal_mode_reports_no_active_set():
    actor = barriernet("nominal")
    out = actor(observations(8, 4), near_obstacle_states(8, 4))
    assert "active_mean" not in out.info


def test_precomputed_cbf_geometry_changes_nothing():
    """PPO computes the gamma-free part of the rows once for the whole rollout and indexes it per
    minibatch: log_prob and every gradient equal those of rows built from the minibatch's states."""
    actor = barriernet("through_qp").double()
    obs, safety = observations(96, 5).double(), near_obstacle_states(96, 5)
    safety = SafetyState(*(t.double() if t.is_floating_point() else t for t in safety))
    sample = actor(obs, safety).sample.detach()
    geometry = actor.cbf_geometry(safety, obs)
    idx = torch.randperm(96, generator=torch.Generator().manual_seed(2))[:40]
    results = []
    for given in (None, geometry.index(idx)):
        actor.zero_grad()
        mb_safety = SafetyState(*(t[idx] for t in safety))
        log_prob, _ = actor.evaluate_actions(obs[idx], mb_safety if given is None else None, sample[idx],
                                             cbf_geometry=given)
        log_prob.sum().backward()
        results.append((log_prob.detach(), [p.grad.clone() for p in actor.parameters()]))
    (lp0, g0), (lp1, g1) = results
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in g0[-2:])  # the gamma head gets a gradient through the rows
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert barriernet("nominal").cbf_geometry(safety, obs) is None  # no rows in the nominal update
