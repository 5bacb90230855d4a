"""The rollout's actor and critic forward in NumPy (`train.learner: numpy`, CPU rollout).

Why: a rollout step's actor and critic forward are a few dozen small ATen ops on 256 envs, and
their dispatch costs more than their arithmetic, as in the update (`model/numpy_learner.py`).
With the forwards in NumPy too, whole training iterations ran 1.69-1.85x faster than torch's,
against 1.52-1.70x with the NumPy update alone (`benchmarks/numpy_update.py --whole`, measured on
a 2-core AMD EPYC).

What it replaces: the `forward` of the rollout's Gaussian policy (the baseline's), of a
`ShieldedActor` (forms dcbf and ct: the Gaussian policy's NumPy forward, then the filter's rows and
QP on NumPy arrays, bit for bit the torch filter's), of a `BarrierNetActor` (through_qp, dcbf:
heads, the CBF rows by `model.cbf.cbf_rows_arrays`' compiled loop, the mean's QP, the sample's QP
warm-started by the mean's active set, and the info the rollout's curves and record read), of a
`CBFBetaActor` (the concentrations and log-density as the NumPy update computes them, the
actor's own rows and safe box, torch's Beta draw) and of the `Critic`. Everything else the rollout
calls (`rollout_record`, the step sums) is the torch actor's, reading the same `ActorOutput`.

The weights are read from the torch parameters' own storage (`Tensor.numpy()` shares it, no
copy), so the forward always sees the current weights: the update, `load_state_dict` and a
checkpoint load all write in place. The Gaussian noise and the Beta draws come from torch's global
generator, so the RNG stream is the torch forward's. Numerics: pinned as the NumPy update's (its module
docstring); the outputs equal torch's to float32 round-off (tests/test_numpy_rollout.py).
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from torch import nn

from model.numpy_learner import (HALF_LOG_2PI, NumpyPPOStep, ProjectionQP, _BarrierNetPolicy, _BetaPolicy, _forward,
                                 _GaussianPolicy, rational_tanh)


class _LiveWeights:
    """What the NumPy policies read as their `step`: every parameter of `modules` as a NumPy view
    of the torch storage (no gradients: forward only)."""

    layers_of = NumpyPPOStep.layers_of

    def __init__(self, modules: list[nn.Module], tanh):
        self.tanh = tanh
        self.views = {id(p): (p.detach().numpy(), None) for m in modules for p in m.parameters()}


def gaussian_forward(actor, tanh=rational_tanh):
    """`GaussianActor.forward` in NumPy: (obs (B, D), safety=None, deterministic=False) ->
    ActorOutput(action (B, 2) clamped to the action box, sample (B, 2), log_prob (B,), {})."""
    from model.actors import ActorOutput

    policy = _GaussianPolicy(_LiveWeights([actor], tanh), actor)
    low, high = actor.action_low.numpy(), actor.action_high.numpy()

    def forward(obs, safety=None, deterministic=False):
        mean = policy.centre + policy.half * tanh(_forward(obs.numpy(), policy.layers, tanh)[-1])
        std = policy.half * np.exp(policy.log_std)
        noise = np.zeros_like(mean) if deterministic else torch.randn(mean.shape, dtype=torch.float32).numpy()
        sample = mean + std * noise
        z = (sample - mean) / std
        log_prob = (-0.5 * z * z - np.log(std) - HALF_LOG_2PI).sum(1)
        action = np.maximum(np.minimum(sample, high), low)
        return ActorOutput(torch.from_numpy(action), torch.from_numpy(sample), torch.from_numpy(log_prob), {})

    return forward


@njit(cache=True)
def _barriernet_rollout_tail(u, mean, sample, nominal, noise, high, low, std, log_std, full_scale, proposal_low,
                             tol, h, barrier_mask, executed, log_prob, proposal, correction, intervened,
                             lookahead_h):  # pragma: no cover
    """numba, float32: what `barriernet_forward` computes after its QPs, the NumPy expressions
    (kept in tests/test_numpy_rollout.py as the reference) in their order, one rounding each:

        executed = maximum(minimum(u, high), low)        (a tie gives the bound, as NumPy's loops)
        z = (sample - mean) / std;  log_prob = sum_d ((-1/2 z_d) z_d - log_std_d) - HALF_LOG_2PI
        proposal = maximum(minimum(nominal + noise, full_scale), proposal_low)
        correction = sqrt(sum_d ((executed_d - proposal_d) / full_scale_d)^2);  intervened = correction > tol
        lookahead_h = h where the barrier is present, else +inf

    u (the executed QP's solution), mean, sample, nominal, noise (B, 2); high, low, std, log_std
    (NumPy's log of std), full_scale, proposal_low (2,); tol a float32; h, barrier_mask (B, M).
    Writes executed, proposal (B, 2), log_prob, correction, intervened (B,), lookahead_h (B, M)."""
    half_log_2pi = np.float32(HALF_LOG_2PI)
    minus_half = np.float32(-0.5)
    inf = np.float32(np.inf)
    for i in range(u.shape[0]):
        score = np.float32(0.0)
        square = np.float32(0.0)
        for d in range(2):
            x = u[i, d]
            x = x if (x < high[d] or x != x) else high[d]
            x = x if (x > low[d] or x != x) else low[d]
            executed[i, d] = x
            z = (sample[i, d] - mean[i, d]) / std[d]
            term = (minus_half * z) * z - log_std[d] - half_log_2pi
            score = term if d == 0 else score + term
            p = nominal[i, d] + noise[i, d]
            p = p if (p < full_scale[d] or p != p) else full_scale[d]
            p = p if (p > proposal_low[d] or p != p) else proposal_low[d]
            proposal[i, d] = p
            c = (x - p) / full_scale[d]
            square = c * c if d == 0 else square + c * c
        log_prob[i] = score
        correction[i] = np.sqrt(square)
        intervened[i] = correction[i] > tol
        for k in range(h.shape[1]):
            lookahead_h[i, k] = h[i, k] if barrier_mask[i, k] else inf


@intrinsic
def _fma32(typingctx, a, b, c):  # pragma: no cover (numba)
    """numba: a b + c with one rounding for float32 (LLVM's llvm.fma.f32: the CPU's FMA instruction
    where the target has one, an exact software fma elsewhere). Defined here, not shared with
    `model.cbf_beta._fma`: numba would not recompile this file's cached loops after an edit there."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        single = ir.FloatType()
        fma = builder.module.declare_intrinsic("llvm.fma", [single], ir.FunctionType(single, [single] * 3))
        return builder.call(fma, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True)
def _shielded_rollout_tail(u, proposal, high, low, full_scale, tol, h, barrier_mask, executed, correction,
                           intervened, lookahead_h):  # pragma: no cover
    """numba, float32: what `shielded_forward` computes after its QP, as the torch ops it replaces
    (kept in tests/test_numpy_rollout.py as the reference) round and compare, bit for bit:

        executed = torch.maximum(torch.minimum(u, high), low)   (ATen's scalar loop, which a (B, 2)
            tensor against a (2,) bound takes: NaN propagates, a tie keeps u, so -0.0 against the
            bound +0.0 stays -0.0, where NumPy's loops give the bound)
        correction = ((executed - proposal) / full_scale).norm(dim=-1)   (ATen reduces the pair as
            sqrt(fma(c1, c1, c0 c0)))
        intervened = correction > tol   (torch compares with the Python float rounded to float32)
        lookahead_h = h where the barrier is present, else +inf

    u, proposal (B, 2); high, low, full_scale (2,); tol a float32; h, barrier_mask (B, M). Writes
    executed (B, 2), correction, intervened (B,) and lookahead_h (B, M)."""
    inf = np.float32(np.inf)
    for i in range(u.shape[0]):
        square = np.float32(0.0)
        for d in range(2):
            x = u[i, d]
            x = high[d] if high[d] < x else x
            x = low[d] if x < low[d] else x
            executed[i, d] = x
            c = (x - proposal[i, d]) / full_scale[d]
            square = c * c if d == 0 else _fma32(c, c, square)
        correction[i] = np.sqrt(square)
        intervened[i] = correction[i] > tol
        for k in range(h.shape[1]):
            lookahead_h[i, k] = h[i, k] if barrier_mask[i, k] else inf


def barriernet_forward(actor, tanh=rational_tanh):
    """`BarrierNetActor.forward` (through_qp, dcbf, the training's obstacles) in NumPy: (obs (B, D),
    safety, deterministic=False) -> ActorOutput(executed (B, 2), sample (B, 2), log_prob (B,), info)
    with info's nominal (B, 2), gamma (B, M), proposal (B, 2), infeasible (B,), lookahead_h (B, M),
    correction (B,), intervened (B,) and active_mean (B, 2) as the torch actor's."""
    from model.actors import ActorOutput, _safety_like
    from model.cbf import cbf_rows_arrays

    policy = _BarrierNetPolicy(_LiveWeights([actor], tanh), actor)
    tol = np.float32(actor.cbf_params.intervention_tol)  # NumPy compared the float32 correction with it in float32
    full_scale, proposal_low = policy.centre + policy.half, policy.centre - policy.half

    def forward(obs, safety, deterministic=False):
        nominal, gamma = policy.heads(obs.numpy())
        # the rows and their right sides gamma h / dt in one compiled loop (the update's
        # `right_sides` arithmetic, bit for bit)
        A, b, mask, h, barrier_mask = cbf_rows_arrays(_safety_like(safety, obs), actor.env_params, actor.cbf_params,
                                                      gamma, "dcbf")
        noise = (np.zeros_like(nominal) if deterministic
                 else policy.std * torch.randn(nominal.shape, dtype=torch.float32).numpy())
        u, *_, active_mean, _, feasible_mean = policy.solve(nominal, A, mask, b, None)
        mean = np.maximum(np.minimum(u, policy.high), policy.low)
        sample = mean + noise
        if deterministic:
            feasible = feasible_mean
        else:  # the sample's QP, warm-started by the mean's active set, as the torch actor does
            u, *_, feasible = policy.solve(sample, A, mask, b, active_mean)
            feasible = feasible & feasible_mean
        batch = u.shape[0]
        executed, proposal = np.empty((batch, 2), np.float32), np.empty((batch, 2), np.float32)
        log_prob, correction = np.empty(batch, np.float32), np.empty(batch, np.float32)
        intervened, lookahead_h = np.empty(batch, np.bool_), np.empty(h.shape, np.float32)
        _barriernet_rollout_tail(u, mean, sample, nominal, noise, policy.high, policy.low, policy.std, policy.log_std,
                                 full_scale, proposal_low, tol, h, barrier_mask, executed, log_prob, proposal,
                                 correction, intervened, lookahead_h)
        info = {"nominal": nominal, "gamma": gamma, "proposal": proposal, "infeasible": ~feasible,
                "lookahead_h": lookahead_h, "correction": correction, "intervened": intervened,
                "active_mean": active_mean}
        return ActorOutput(torch.from_numpy(executed), torch.from_numpy(sample), torch.from_numpy(log_prob),
                           {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in info.items()})

    return forward


def shielded_forward(actor, tanh=rational_tanh):
    """`ShieldedActor.forward` (cbf.form dcbf or ct) in NumPy: (obs (B, D), safety,
    deterministic=False) -> ActorOutput(executed (B, 2), sample (B, 2), log_prob (B,), info) with
    info's nominal, proposal (B, 2), gamma, lookahead_h (B, M), infeasible, correction and
    intervened (B,) as `SafetyFilter`'s.

    The Gaussian policy's NumPy forward proposes; the rows and their right sides come from one
    compiled loop (`model.cbf.cbf_rows_arrays`, bit for bit `cbf_rows`), the projection is the
    torch filter's arithmetic on arrays (`ProjectionQP`: the same compiled loop), the clamp, the
    correction and its comparison one more loop rounding as torch's ops do
    (`_shielded_rollout_tail`). So every output equals the torch filter's on the same
    proposal bit for bit (tests/test_numpy_rollout.py); what goes is the tensor plumbing around
    them, which cost more than the filter's arithmetic at 256 envs."""
    from model.actors import ActorOutput, _safety_like
    from model.cbf import cbf_rows_arrays

    if actor.form not in ("dcbf", "ct"):
        raise ValueError(f"shielded_forward covers the forms 'dcbf' and 'ct'; got {actor.form!r}")
    propose = gaussian_forward(actor.actor, tanh)
    projection = actor.projection
    solve = ProjectionQP(projection.weights.numpy())
    gamma = np.float32(actor.gamma)
    tol = np.float32(actor.cbf_params.intervention_tol)  # torch compared the float32 correction with it in float32
    high, low = projection.high.numpy(), projection.low.numpy()
    full_scale = high  # (v_max, w_max): `_intervention_info`'s units

    def forward(obs, safety, deterministic=False):
        inner = propose(obs, None, deterministic)
        A, b, mask, h, barrier_mask = cbf_rows_arrays(_safety_like(safety, inner.action), actor.env_params,
                                                      actor.cbf_params, actor.gamma, actor.form, actor.robust_margin)
        proposal = inner.action.numpy()
        u, *_, feasible = solve(proposal, A, mask, b, None)
        batch = u.shape[0]
        executed, correction = np.empty((batch, 2), np.float32), np.empty(batch, np.float32)
        intervened, lookahead_h = np.empty(batch, np.bool_), np.empty(h.shape, np.float32)
        _shielded_rollout_tail(u, proposal, high, low, full_scale, tol, h, barrier_mask, executed, correction,
                               intervened, lookahead_h)
        info = {"nominal": inner.action, "gamma": torch.from_numpy(np.full(h.shape, gamma)), "proposal": inner.action,
                "infeasible": torch.from_numpy(~feasible), "lookahead_h": torch.from_numpy(lookahead_h),
                "correction": torch.from_numpy(correction), "intervened": torch.from_numpy(intervened)}
        return ActorOutput(torch.from_numpy(executed), inner.sample, inner.log_prob, info)

    return forward


def cbf_beta_forward(actor, tanh=rational_tanh):
    """`CBFBetaActor.forward` in NumPy: (obs (B, D), safety, deterministic=False) ->
    ActorOutput(executed (B, 2), sample x (B, 2), log_prob (B,), info) with info's nominal,
    proposal (B, 2), infeasible (B,), gamma, lookahead_h (B, M), box_low, box_high (B, 2),
    safe_box (B, 5) float64, correction and intervened (B,) as the torch actor's.

    The concentrations and the log-density are the NumPy update's own arithmetic (`_BetaPolicy`:
    the same MLP, softplus and scipy's gammaln), so the rollout's log_prob is the one the update's
    first epoch recomputes; the rows and the safe box are the torch actor's compiled loops on NumPy
    arrays (`CBFBetaActor.rows_arrays`, `model.cbf_beta.safe_box_arrays`: the same numbers, without
    the tensors between them); the Beta draw is torch's `_sample_dirichlet` on the stacked
    concentrations, the call `torch.distributions.Beta.sample` makes, so the RNG stream is the torch
    forward's."""
    from model import cbf_beta
    from model.actors import ActorOutput
    from model.cbf import num_barriers

    policy = _BetaPolicy(_LiveWeights([actor], tanh), actor)
    low, high = actor.low.numpy(), actor.high.numpy()  # the action box (2,) float32
    eps_low, eps_high = np.float32(cbf_beta.SAMPLE_EPS), np.float32(1.0 - cbf_beta.SAMPLE_EPS)
    tol = actor.cbf_params.intervention_tol
    barriers = num_barriers(actor.num_obstacles)

    def forward(obs, safety, deterministic=False):
        if safety is None:
            raise ValueError("CBFBetaActor needs the SafetyState (got None)")
        a, b = policy.concentrations(obs.numpy())
        A, b_rows, mask, h, barrier_mask = actor.rows_arrays(safety)
        # looked up per call (a profiler times the module's function)
        box_low, box_high, feasible = cbf_beta.safe_box_arrays(*actor.box_rows(A, b_rows, mask), actor.action_low,
                                                               actor.action_high, actor.box_rounds)
        if deterministic:
            x = a / (a + b)
        else:  # Beta(a, b) = the first coordinate of Dirichlet((a, b))
            x = torch._sample_dirichlet(torch.from_numpy(np.stack((a, b), -1)))[..., 0].numpy()
        x = np.minimum(np.maximum(x, eps_low), eps_high)
        executed = (box_low + x.astype(np.float64) * (box_high - box_low)).astype(np.float32)
        log_prob, _ = policy.log_density(a, b, x, box_low, box_high, feasible)
        proposal = low + x * (high - low)
        correction = np.sqrt((((executed - proposal) / high) ** 2).sum(-1))
        info = {"nominal": proposal, "proposal": proposal, "infeasible": ~feasible,
                "gamma": np.full((x.shape[0], barriers), np.float32(actor.gamma)),
                "lookahead_h": np.where(barrier_mask, h, np.float32(np.inf)).astype(np.float32),
                "box_low": box_low.astype(np.float32), "box_high": box_high.astype(np.float32),
                "correction": correction, "intervened": correction > tol,
                "safe_box": np.concatenate((box_low, box_high, feasible.astype(np.float64)[:, None]), -1)}  # SafeBox.packed
        info = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in info.items()}
        return ActorOutput(torch.from_numpy(executed), torch.from_numpy(np.ascontiguousarray(x)),
                           torch.from_numpy(log_prob), info)

    return forward


def critic_forward(critic, tanh=rational_tanh):
    """`Critic.forward` in NumPy: obs (B, D) -> value (B,)."""
    layers, _ = _LiveWeights([critic], tanh).layers_of(critic)

    def forward(obs):
        return torch.from_numpy(np.ascontiguousarray(_forward(obs.numpy(), layers, tanh)[-1][:, 0]))

    return forward


def rollout_forwards(actor, critic, tanh=rational_tanh) -> dict:
    """{module: its NumPy forward} for a CPU rollout's actor and critic: the Gaussian policy (the
    baseline's), the ShieldedActor's (forms dcbf and ct; with dcbf_exact only the policy it wraps
    gets one, its filter stays torch's), BarrierNet's (through_qp, dcbf), CBF-Beta's and the critic.
    An actor with none (BarrierNet's other modes) keeps torch's: only the critic's is given.
    Raises ValueError for parameters off the CPU."""
    from model.actors import BarrierNetActor, GaussianActor, ShieldedActor
    from model.cbf_beta import CBFBetaActor

    if any(p.device.type != "cpu" for p in list(actor.parameters()) + list(critic.parameters())):
        raise ValueError("the NumPy rollout forward reads CPU parameters; accepted: train.rollout_device=cpu")
    forwards = {critic: critic_forward(critic, tanh)}
    if isinstance(actor, ShieldedActor) and actor.form in ("dcbf", "ct"):
        forwards[actor] = shielded_forward(actor, tanh)
        return forwards
    policy = actor.actor if isinstance(actor, ShieldedActor) else actor
    if type(policy) is GaussianActor:
        forwards[policy] = gaussian_forward(policy, tanh)
    elif type(policy) is CBFBetaActor:
        forwards[policy] = cbf_beta_forward(policy, tanh)
    elif (isinstance(policy, BarrierNetActor) and policy.update_mode == "through_qp"
          and policy.cbf_params.form == "dcbf"):
        forwards[policy] = barriernet_forward(policy, tanh)
    return forwards


def install_rollout_forwards(actor, critic, tanh=rational_tanh) -> list[nn.Module]:
    """Make `rollout_forwards` the modules' own `forward` (an instance attribute, which
    `nn.Module.__call__` calls): the rollout, GAE's bootstrap value and anything else calling the
    rollout copy run them. Returns the modules changed (`uninstall_rollout_forwards` undoes it)."""
    forwards = rollout_forwards(actor, critic, tanh)
    for module, forward in forwards.items():
        module.forward = forward
    return list(forwards)


def uninstall_rollout_forwards(modules: list[nn.Module]) -> None:
    """Give `modules` their class's torch forward back."""
    for module in modules:
        if "forward" in vars(module):
            del module.forward
