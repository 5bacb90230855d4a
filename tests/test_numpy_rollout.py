"""model/numpy_rollout.py: the rollout's actor and critic forward in NumPy against the torch
modules' own forward (the second implementation) from the same weights and RNG state, and how
training installs them (`train.learner: numpy`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.numpy_rollout import (gaussian_forward, install_rollout_forwards, rollout_forwards, shielded_forward,
                                 uninstall_rollout_forwards)
from tasks.params import load_params
from tests.helpers import same_bits
from tasks.train import Trainer

QUICK = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2, "train.total_steps": 10**6}


def _torch_trainer(algo: str, **overrides) -> Trainer:
    return Trainer(load_params(overrides={**QUICK, "train.learner": "torch", **overrides}), algo, 0, update_device="cpu")


@pytest.mark.parametrize("algo", ["baseline", "shielded"])
def test_the_gaussian_policy_and_critic_equal_torchs_up_to_round_off(algo):
    """Action, sample, log_prob and value agree to float32 round-off (a shielded actor's wrapped
    policy by `gaussian_forward`; the shielded actor itself gets `shielded_forward`)."""
    trainer = _torch_trainer(algo)
    agent = trainer.agent
    policy = agent.rollout_actor.actor if algo == "shielded" else agent.rollout_actor
    obs = agent.obs_rms.normalize(trainer.next_obs)
    forwards = rollout_forwards(agent.rollout_actor, agent.rollout_critic)
    assert set(forwards) == {agent.rollout_actor, agent.rollout_critic}
    if algo == "shielded":
        forwards[policy] = gaussian_forward(policy)
    with torch.no_grad():
        torch.manual_seed(7)
        theirs = policy(obs)
        torch.manual_seed(7)
        ours = forwards[policy](obs)
        value = agent.rollout_critic(obs)
    for name in ("action", "sample", "log_prob"):
        np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours.sample.numpy(), policy(obs, deterministic=True).sample.detach().numpy())  # noise drawn
    np.testing.assert_allclose(forwards[policy](obs, deterministic=True).action.numpy(),
                               policy(obs, deterministic=True).action.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forwards[agent.rollout_critic](obs).numpy(), value.numpy(), rtol=1e-5, atol=1e-5)


def test_barriernet_equals_torchs_up_to_round_off_with_active_rows():
    """Heads, both QPs and the info, over a rollout's worth of states (some with active CBF rows):
    actions, samples, log-probabilities and the info the rollout reads."""
    from env.core import SafetyState

    trainer = _torch_trainer("barriernet", **{"train.num_envs": 256})
    trainer.collect_rollout()  # states spread over a rollout, not only starts
    actor = trainer.agent.rollout_actor
    forward = rollout_forwards(actor, trainer.agent.rollout_critic)[actor]
    buf = trainer.buffer
    active = 0
    for t in range(buf.num_steps):
        safety = SafetyState(buf.pursuer[t], buf.obstacle_centres[t], buf.obstacle_radii[t], buf.obstacle_mask[t])
        obs = buf.obs[t]
        with torch.no_grad():
            torch.manual_seed(t)
            theirs = actor(obs, safety)
            torch.manual_seed(t)
            ours = forward(obs, safety)
        for name in ("action", "sample", "log_prob"):
            np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).detach().numpy(),
                                       rtol=1e-4, atol=1e-5)
        for key in ("intervened", "infeasible", "active_mean"):
            assert same_bits(ours.info[key], theirs.info[key]), key
        for key in ("nominal", "gamma", "proposal", "correction", "lookahead_h"):
            np.testing.assert_allclose(ours.info[key].numpy(), theirs.info[key].detach().numpy(), rtol=1e-4, atol=1e-5)
        active += int((ours.info["active_mean"][:, 0] >= 0).sum())
    assert active > 0


def test_cbf_beta_equals_torchs_up_to_round_off_with_shrunken_and_infeasible_boxes():
    """Concentrations, the Beta draw (the same RNG stream), the box and the info over a rollout's
    states, some pushed deep inside an obstacle (an empty safe set: a point box, log_prob 0) and
    some near one (a box smaller than the action box): actions, samples and log-probabilities to
    round-off; the box, its packed record, the flags and the rows' h exactly (the actor's own
    code); the rollout's step sums to round-off."""
    from env.core import SafetyState
    from model.numpy_rollout import cbf_beta_forward

    trainer = _torch_trainer("cbf_beta", **{"train.num_envs": 256, "env.num_obstacles": 4})
    trainer.collect_rollout()  # states spread over a rollout, not only starts
    actor = trainer.agent.rollout_actor
    forward = cbf_beta_forward(actor)
    buf = trainer.buffer
    shrunk = infeasible = 0
    for t in range(buf.num_steps):
        radii = buf.obstacle_radii[t].clone()
        radii[::5, 0] = 3.0 * (t % 2)  # every fifth pursuer deep inside a huge obstacle: infeasible
        safety = SafetyState(buf.pursuer[t], buf.obstacle_centres[t], radii, buf.obstacle_mask[t])
        for deterministic in (False, True):
            with torch.no_grad():
                torch.manual_seed(t)
                theirs = actor(buf.obs[t], safety, deterministic=deterministic)
                torch.manual_seed(t)
                ours = forward(buf.obs[t], safety, deterministic=deterministic)
            for name in ("action", "sample", "log_prob"):
                np.testing.assert_allclose(getattr(ours, name).numpy(), getattr(theirs, name).numpy(),
                                           rtol=1e-5, atol=1e-5, err_msg=name)
            assert set(ours.info) == set(theirs.info)
            for key in ("infeasible", "gamma", "lookahead_h", "box_low", "box_high", "safe_box"):
                assert same_bits(ours.info[key], theirs.info[key]), key
            for key in ("nominal", "proposal", "correction"):
                np.testing.assert_allclose(ours.info[key].numpy(), theirs.info[key].numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(actor.rollout_step_sums(ours).numpy(), actor.rollout_step_sums(theirs).numpy(),
                                       rtol=1e-5, atol=1e-4)
            infeasible += int(ours.info["infeasible"].sum())
            assert (ours.log_prob[ours.info["infeasible"]] == 0).all()
            shrunk += int(((ours.info["box_high"] - ours.info["box_low"]) < (actor.high - actor.low)).any(-1).sum())
    assert infeasible > 0 and shrunk > infeasible


@pytest.mark.parametrize("form", ["dcbf", "ct"])
def test_the_shielded_forward_equals_the_torch_filter_bit_for_bit(form):
    """`shielded_forward` against the torch `SafetyFilter` acting on the same NumPy Gaussian
    proposal (the wrapped policy's `gaussian_forward` installed, as the rollout ran it before),
    over a rollout's states with active and infeasible rows: every output and info entry
    `torch.equal`, and so are the rollout's step sums."""
    from env.core import SafetyState

    overrides = {"train.num_envs": 256, "cbf.form": form, "env.num_obstacles": 4}
    trainer = _torch_trainer("shielded", **overrides)
    trainer.collect_rollout()  # states spread over a rollout, not only starts
    actor = trainer.agent.rollout_actor
    ours_forward = shielded_forward(actor)
    actor.actor.forward = gaussian_forward(actor.actor)  # the torch filter proposes by the same NumPy forward
    buf = trainer.buffer
    corrected = infeasible = 0
    for t in range(buf.num_steps):
        radii = buf.obstacle_radii[t].clone()
        radii[::3, 0] = 3.0 * (t % 2)  # every third pursuer deep inside a huge obstacle: infeasible rows
        safety = SafetyState(buf.pursuer[t], buf.obstacle_centres[t], radii, buf.obstacle_mask[t])
        obs = buf.obs[t] if t % 2 else buf.obs[t] * 8.0  # large inputs: more corrections
        for deterministic in (False, True):
            with torch.no_grad():
                torch.manual_seed(t)
                theirs = actor(obs, safety, deterministic=deterministic)
                torch.manual_seed(t)
                ours = ours_forward(obs, safety, deterministic=deterministic)
            for name in ("action", "sample", "log_prob"):
                assert same_bits(getattr(ours, name), getattr(theirs, name)), name
            assert set(ours.info) == set(theirs.info)
            for key, value in theirs.info.items():
                assert same_bits(ours.info[key], value), key
            assert same_bits(actor.rollout_step_sums(ours), actor.rollout_step_sums(theirs))
            corrected += int(ours.info["intervened"].sum())
            infeasible += int(ours.info["infeasible"].sum())
    assert corrected > 0 and infeasible > 0


def test_the_shielded_forward_refuses_the_exact_form():
    trainer = _torch_trainer("shielded")
    actor = trainer.agent.rollout_actor
    actor.form = "dcbf_exact"
    with pytest.raises(ValueError, match="'dcbf' and 'ct'"):
        shielded_forward(actor)
    assert set(rollout_forwards(actor, trainer.agent.rollout_critic)) == {actor.actor, trainer.agent.rollout_critic}


def test_the_forward_reads_the_current_weights_in_place():
    """Weights written after the forward was built (an update, load_state_dict) are the ones it
    uses: it reads the torch storage, not a copy."""
    trainer = _torch_trainer("baseline")
    agent = trainer.agent
    critic = agent.rollout_critic
    forward = rollout_forwards(agent.rollout_actor, critic)[critic]
    obs = agent.obs_rms.normalize(trainer.next_obs)
    before = forward(obs).numpy().copy()
    state = {k: v + 0.1 for k, v in critic.state_dict().items()}
    critic.load_state_dict(state)
    after = forward(obs).numpy()
    assert not np.allclose(after, before)
    with torch.no_grad():
        np.testing.assert_allclose(after, critic(obs).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", ["baseline", "shielded", "barriernet", "cbf_beta"])
def test_training_with_the_numpy_learner_installs_them_and_uninstall_restores_torchs(algo):
    """`train.learner: numpy` gives the rollout copy's policy and critic their NumPy forward;
    torch's learner leaves them alone; uninstalling gives the class's forward back."""
    trainer = Trainer(load_params(overrides={**QUICK, "train.learner": "numpy"}), algo, 0, update_device="cpu")
    agent = trainer.agent
    policy = agent.rollout_actor  # a shielded actor's whole forward, its filter's included
    assert "forward" in vars(agent.rollout_critic)
    assert "forward" in vars(policy)
    assert not any("forward" in vars(m) for m in (_torch_trainer(algo).agent.rollout_actor,
                                                  _torch_trainer(algo).agent.rollout_critic))
    uninstall_rollout_forwards([policy, agent.rollout_critic])
    assert "forward" not in vars(policy) and "forward" not in vars(agent.rollout_critic)
    assert install_rollout_forwards(agent.rollout_actor, agent.rollout_critic) == [agent.rollout_critic, policy]


def test_a_numpy_learner_iteration_rolls_out_what_torchs_forward_would():
    """One iteration's rollout by the NumPy forwards (the learner's default) against the same
    iteration with the torch forwards put back: the same episodes' counts and the stored actions
    to round-off (the RNG stream is the same)."""
    params = load_params(overrides={**QUICK, "train.learner": "numpy"})
    ours = Trainer(params, "barriernet", 0, update_device="cpu")
    ours.collect_rollout()
    theirs = Trainer(params, "barriernet", 0, update_device="cpu")  # re-seeds torch's global generator
    uninstall_rollout_forwards([theirs.agent.rollout_actor, theirs.agent.rollout_critic])
    theirs.collect_rollout()
    np.testing.assert_allclose(ours.buffer.action.numpy(), theirs.buffer.action.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.buffer.value.numpy(), theirs.buffer.value.numpy(), rtol=1e-4, atol=1e-5)


def test_parameters_off_the_cpu_are_refused():
    trainer = _torch_trainer("baseline")
    critic = trainer.agent.rollout_critic
    meta = torch.nn.Linear(2, 2, device="meta")
    critic.add_module("extra", meta)
    with pytest.raises(ValueError, match="train.rollout_device=cpu"):
        rollout_forwards(trainer.agent.rollout_actor, critic)


def test_barriernets_rollout_tail_computes_the_numpy_expressions_bit_for_bit():
    """`_barriernet_rollout_tail` against the NumPy expressions it replaces (written out here, as
    `barriernet_forward` had them), byte for byte in float32: solutions and proposals on either
    bound, +0.0 and -0.0 against the bound 0, NaN, corrections on both sides of the tolerance,
    barriers present and absent; a rollout's batch and an odd one."""
    from model.numpy_learner import HALF_LOG_2PI
    from model.numpy_rollout import _barriernet_rollout_tail

    rng, f32 = np.random.default_rng(5), np.float32
    centre, half = np.array([0.5, 0.0], f32), np.array([0.5, 2.84], f32)
    full_scale, proposal_low = centre + half, centre - half
    high, low, std = full_scale, proposal_low, np.array([0.173, 0.41], f32)
    tol = f32(0.01)
    for batch in (256, 1001):
        u = (rng.standard_normal((batch, 2)) * 1.5).astype(f32)
        u[::7, 0], u[1::7, 0], u[2::7, 1], u[3::7, 1] = high[0], low[0], high[1], low[1]
        u[4::7, 0], u[5::11, 0], u[6::13] = f32(-0.0), f32(0.0), np.nan
        mean = np.maximum(np.minimum(u[::-1].copy(), high), low)
        noise = (rng.standard_normal((batch, 2)) * std).astype(f32)
        noise[::9] = 0.0
        sample = mean + noise
        nominal = (centre + half * np.tanh(rng.standard_normal((batch, 2)))).astype(f32)
        nominal[::5, 0], nominal[1::5, 0] = f32(-0.0), f32(1.0)
        u[8::10] = nominal[8::10] + noise[8::10] + f32(0.004)  # corrections close to the tolerance
        barriers = 6
        h = rng.standard_normal((batch, barriers)).astype(f32)
        present = rng.random((batch, barriers)) < 0.7
        out = (np.empty((batch, 2), f32), np.empty(batch, f32), np.empty((batch, 2), f32), np.empty(batch, f32),
               np.empty(batch, np.bool_), np.empty((batch, barriers), f32))
        _barriernet_rollout_tail(u, mean, sample, nominal, noise, high, low, std, np.log(std), full_scale,
                                 proposal_low, tol, h, present, *out)
        executed, log_prob, proposal, correction, intervened, lookahead_h = out
        want_executed = np.maximum(np.minimum(u, high), low)
        z = (sample - mean) / std
        want_proposal = np.maximum(np.minimum(nominal + noise, full_scale), centre - half)
        want_correction = np.sqrt((((want_executed - want_proposal) / full_scale) ** 2).sum(-1))
        for ours, want in ((executed, want_executed), (proposal, want_proposal), (correction, want_correction),
                           (log_prob, (-0.5 * z * z - np.log(std) - HALF_LOG_2PI).sum(1)),
                           (intervened, want_correction > 0.01),
                           (lookahead_h, np.where(present, h, np.inf).astype(f32))):
            assert ours.dtype == want.dtype and ours.tobytes() == np.ascontiguousarray(want).tobytes()
        assert intervened.any() and not intervened.all()


def test_the_shields_rollout_tail_computes_the_torch_ops_bit_for_bit():
    """`_shielded_rollout_tail` against the torch ops `shielded_forward` ran (written out here),
    byte for byte: solutions on either bound, +0.0 and -0.0 against the bound 0 (torch keeps the
    solution's zero, NumPy's loops the bound's), NaN, corrections one float32 step either side of
    the tolerance (torch rounds the Python float to float32), a correction's pair where
    sqrt(fma(c1, c1, c0 c0)) and sqrt(c0 c0 + c1 c1) differ, barriers present and absent; a
    rollout's batch, an odd one and a single env."""
    from model.numpy_rollout import _shielded_rollout_tail

    rng, f32 = np.random.default_rng(7), np.float32
    low, high = np.array([0.0, -2.84], f32), np.array([1.0, 2.84], f32)
    tol = 1e-3
    tol32 = f32(tol)
    above_tolerance = plain_differs = 0
    for batch in (256, 1001, 1):
        proposal = np.maximum(np.minimum((rng.standard_normal((batch, 2)) * 1.5).astype(f32), high), low)
        u = proposal + (rng.standard_normal((batch, 2)) * 0.05).astype(f32)
        u[::7, 0], u[1::7, 0], u[2::7, 1], u[3::7, 1] = high[0], low[0], high[1], low[1]
        u[4::7, 0], u[5::11, 0], u[6::13] = f32(-0.0), f32(0.0), np.nan
        proposal[4::14, 0] = f32(0.0)  # a -0.0 solution against a proposal of +0.0: no correction
        # corrections exactly at the tolerance and one float32 step either side: a proposal of 0 and
        # a solution of `target` in the first coordinate (full scale 1, sqrt(x x) = x exactly)
        for k, step in enumerate((-1, 0, 1)):
            target = np.nextafter(tol32, f32(np.inf) if step > 0 else f32(0)) if step else tol32
            rows = slice(8 + k, None, 10)
            proposal[rows, 0], u[rows, 0], u[rows, 1] = f32(0.0), target, proposal[rows, 1]
        barriers = 6
        h = rng.standard_normal((batch, barriers)).astype(f32)
        present = rng.random((batch, barriers)) < 0.7
        out = (np.empty((batch, 2), f32), np.empty(batch, f32), np.empty(batch, np.bool_),
               np.empty((batch, barriers), f32))
        _shielded_rollout_tail(u, proposal, high, low, high, tol32, h, present, *out)
        executed, correction, intervened, lookahead_h = out
        want_executed = torch.maximum(torch.minimum(torch.from_numpy(u), torch.from_numpy(high)), torch.from_numpy(low))
        scaled = (want_executed.numpy() - proposal) / high
        want_correction = torch.from_numpy(scaled).norm(dim=-1)
        for ours, want in ((executed, want_executed), (correction, want_correction),
                           (intervened, want_correction > tol),
                           (lookahead_h, torch.from_numpy(np.where(present, h, np.inf).astype(f32)))):
            assert same_bits(torch.from_numpy(ours), want)
        assert batch == 1 or (intervened.any() and not intervened.all())
        negative_zero = (u[:, 0] == 0) & np.signbit(u[:, 0])
        assert negative_zero.any() or batch == 1
        assert np.signbit(executed[negative_zero, 0]).all()  # torch kept the solution's -0.0 against the bound +0.0
        plain = np.sqrt(scaled[:, 0] * scaled[:, 0] + scaled[:, 1] * scaled[:, 1])
        plain_differs += int((plain.view(np.int32) != correction.view(np.int32)).sum())
        above_tolerance += int((correction == np.nextafter(tol32, f32(np.inf))).sum())
        # torch compares in float32: float32(1e-3) > 1e-3, so a float64 comparison would count these
        assert batch == 1 or ((correction == tol32).any() and not intervened[correction == tol32].any())
    assert plain_differs > 0  # the pairs reach the fma's rounding, not only the plain sum's
    assert above_tolerance > 0  # a correction one step above the tolerance counts
