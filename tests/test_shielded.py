"""Shielded PPO (the post-hoc filter inside the training loop) and the training / evaluation of the
issue-15 algorithms: executed actions against the CBF rows and an independent QP solver,
log-probabilities against torch.distributions, rollouts re-scored exactly in the update, short
smoke trainings and the new evaluation arms."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import quadprog
import torch

from env.core import SafetyState
from model.actors import GaussianActor, SafetyFilter, ShieldedActor, make_actor
from model.cbf import cbf_rows
from tasks import evaluate
from tasks.params import Params, load_params
from tasks.train import Trainer, load_trained, run

OBS_DIM = 12
TINY = {
    "train.num_envs": 8,
    "train.rollout_steps": 16,
    "train.num_minibatches": 2,
    "train.update_epochs": 2,
    "train.total_steps": 8 * 16 * 3,  # 3 updates
    "train.checkpoint_every": 1,
    "train.seeds": [0],
    "env.max_steps": 40,
}


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(path))
    return path


def near_obstacle_states(n: int, seed: int) -> SafetyState:
    """Pursuers whose look-ahead point is 1-10 cm outside obstacle 0's barrier, heading at it."""
    params = Params()
    env, cbf = params.env, params.cbf
    g = np.random.default_rng(seed)
    radii = g.uniform(0.3, 1.0, (n, 2))
    rho = radii[:, 0] + env.robot_radius + env.safety_margin + cbf.lookahead
    bearing = g.uniform(-np.pi, np.pi, n)
    centres = np.zeros((n, 2, 2))
    centres[:, 0] = g.uniform(-4, 4, (n, 2))
    centres[:, 1] = centres[:, 0] + 6.0
    q = centres[:, 0] + (rho + g.uniform(0.01, 0.1, n))[:, None] * np.column_stack([np.cos(bearing), np.sin(bearing)])
    heading = bearing + np.pi + g.uniform(-0.5, 0.5, n)
    p = q - cbf.lookahead * np.column_stack([np.cos(heading), np.sin(heading)])
    pose = np.column_stack([p, heading])
    return SafetyState(torch.tensor(pose), torch.tensor(centres), torch.tensor(radii), torch.ones(n, 2, dtype=torch.bool))


def quadprog_projection(u_ref: np.ndarray, A: np.ndarray, b: np.ndarray, weights) -> np.ndarray | None:
    """argmin 1/2 (u - u_ref)' W (u - u_ref) s.t. A u <= b (Goldfarb-Idnani), None if infeasible."""
    W = np.diag(weights).astype(float)
    try:
        return quadprog.solve_qp(W, W @ u_ref, -A.T, -b, 0)[0]
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The shielded actor


def test_shielded_executes_the_filtered_sample_and_scores_the_sample():
    params = Params()
    torch.manual_seed(0)
    shield = make_actor("shielded", OBS_DIM, params).double()
    assert isinstance(shield, ShieldedActor) and isinstance(shield.actor, GaussianActor)
    assert (shield.form, shield.gamma) == (params.cbf.form, params.cbf.filter_gamma)
    states = near_obstacle_states(300, seed=1)
    obs = torch.randn(300, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(5)
        out = shield(obs, states)
        # the sample and its log-probability are the Gaussian policy's (torch.distributions)
        mean, std = shield.actor.distribution(obs)
        torch.manual_seed(5)
        expected_sample = mean + std * torch.randn_like(mean)
        assert torch.equal(out.sample, expected_sample)
        normal = torch.distributions.Normal(mean, std.expand_as(mean))
        np.testing.assert_allclose(out.log_prob.numpy(), normal.log_prob(out.sample).sum(-1).numpy(), rtol=1e-12)
        lp, _ = shield.evaluate_actions(obs, states, out.sample)
        assert torch.equal(lp, out.log_prob)
    # the executed action is the CBF-QP projection of the clipped sample (quadprog, independently)
    rows = cbf_rows(states, params.env, params.cbf, params.cbf.filter_gamma, form=params.cbf.form)
    low = torch.tensor([0.0, -params.env.pursuer_w_max], dtype=torch.float64)
    high = torch.tensor([params.env.pursuer_v_max, params.env.pursuer_w_max], dtype=torch.float64)
    clipped = torch.maximum(torch.minimum(out.sample, high), low)
    np.testing.assert_allclose(out.info["proposal"].numpy(), clipped.numpy(), atol=1e-6)  # float32 bounds
    compared = 0
    for i in range(300):
        m = rows.mask[i]
        reference = quadprog_projection(clipped[i].numpy(), rows.A[i][m].numpy(), rows.b[i][m].numpy(),
                                        params.cbf.action_weights)
        if reference is None:
            assert bool(out.info["infeasible"][i])
            continue
        np.testing.assert_allclose(out.action[i].numpy(), reference, atol=1e-6)
        compared += 1
    assert compared > 250
    assert 0.1 < float(out.info["intervened"].double().mean()) < 1.0  # the heading-in states need the filter


def test_shielded_state_dict_is_the_gaussian_policys():
    params = Params()
    torch.manual_seed(0)
    shield = make_actor("shielded", OBS_DIM, params)
    gaussian = GaussianActor(OBS_DIM, params.env, params.train.hidden_sizes, params.train.init_log_std)
    gaussian.load_state_dict({k.removeprefix("actor."): v for k, v in shield.state_dict().items()})
    # the same policy under the same filter: the shielded actor is the post-hoc filter arm, trained
    states = near_obstacle_states(64, seed=2)
    obs = torch.randn(64, OBS_DIM)
    filtered = SafetyFilter(gaussian, params.env, params.cbf, params.cbf.form, params.cbf.filter_gamma)
    with torch.no_grad():
        assert torch.equal(shield(obs, states, deterministic=True).action, filtered(obs, states, deterministic=True).action)


# ---------------------------------------------------------------------------------------------
# Training: rollouts, re-scoring, smoke runs


@pytest.mark.parametrize("algo", ["cbf_beta", "shielded"])
def test_rollout_actions_are_safe_and_rescored_exactly(algo):
    params = load_params(overrides=TINY)
    trainer = Trainer(params, algo, 0, update_device="cpu")
    stats = trainer.collect_rollout()
    buf = trainer.buffer
    T, N = buf.num_steps, buf.num_envs
    flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
    safety = SafetyState(flat(buf.pursuer), flat(buf.obstacle_centres), flat(buf.obstacle_radii), flat(buf.obstacle_mask))
    action = flat(buf.action).double()
    # every executed action satisfies the filter's CBF rows of its state (recomputed here), unless
    # the state's safe set is empty
    rows = cbf_rows(SafetyState(*(t.double() if t.is_floating_point() else t for t in safety)), params.env, params.cbf,
                    params.cbf.filter_gamma, form=params.cbf.form)
    excess = torch.where(rows.mask, torch.einsum("bmk,bk->bm", rows.A, action) - rows.b, torch.zeros(()))
    if algo == "cbf_beta":
        boxes = trainer.actor.cbf_geometry(safety, flat(buf.obs))
        feasible = boxes.feasible
        assert ((action >= boxes.low - 1e-6) & (action <= boxes.high + 1e-6)).all()
    else:
        feasible = torch.ones(T * N, dtype=torch.bool)
        for i in range(T * N):
            m = rows.mask[i]
            if quadprog_projection(np.zeros(2), rows.A[i][m].numpy(), rows.b[i][m].numpy(), [1.0, 1.0]) is None:
                feasible[i] = False
    assert int(feasible.sum()) > 0.9 * T * N
    assert bool((excess[feasible] <= 1e-4 * (1 + rows.b.abs()[feasible])).all()), float(excess[feasible].max())
    # the update scores the stored samples exactly as the rollout did (same weights: ratio 1)
    with torch.no_grad():
        hint = {}
        if hasattr(trainer.actor, "cbf_geometry"):
            hint["cbf_geometry"] = trainer.actor.cbf_geometry(safety, flat(buf.obs))
        lp, _ = trainer.actor.evaluate_actions(flat(buf.obs), None if hint else safety, flat(buf.sample), **hint)
    assert torch.equal(lp, flat(buf.log_prob))
    assert "rollout/qp_intervention_rate" in stats


@pytest.mark.parametrize("algo", ["cbf_beta", "shielded"])
def test_smoke_training_and_every_arm_evaluates(tmp_path, state_dir, algo):
    params = load_params(overrides={**TINY, "eval.dev_episodes": 3, "eval.test_episodes": 3, "eval.num_envs": 3})
    summary = run(params, tmp_path, algo, 0)
    assert summary["updates"] == 3 and summary["total_steps"] == 3 * 128
    assert np.isfinite(summary["env_steps_per_second"])
    actor, _, _, record = load_trained(tmp_path / "results/train" / f"{algo}-s0" / "model.pt", params)
    assert record["algo"] == algo and type(actor) is type(make_actor(algo, record["obs_dim"], params))
    metrics = json.loads((tmp_path / "results/train" / f"{algo}-s0" / "live" / "metrics.json").read_text())
    assert np.isfinite(metrics["losses"]["approx_kl"]) and "qp_intervention_rate" in metrics["rollout"]
    evaluate.run(params, tmp_path, algo, 0)
    table = pd.read_csv(evaluate.output_dir(tmp_path, algo, 0) / "episodes.csv")
    assert sorted(set(table["arm"])) == sorted(evaluate.ARMS_OF_ALGO[algo])
    assert (table["decision_ms"] > 0).all() and table["length"].between(1, 40).all()


def test_new_arms_are_built_from_their_checkpoints():
    params = Params()
    torch.manual_seed(0)
    for algo, arms in evaluate.ARMS_OF_ALGO.items():
        actor = make_actor(algo, OBS_DIM, params)
        for arm in arms:
            policy = evaluate.build_policy(arm, actor, params)
            if arm.endswith("_rcbf"):
                assert isinstance(policy, SafetyFilter) and policy.robust_margin == params.cbf.robust_margin > 0
            elif arm in ("barriernet", "baseline", "cbf_beta", "shielded"):
                assert policy is actor
    with pytest.raises(ValueError, match="unknown arm"):
        evaluate.build_policy("cbf_beta_tuned", actor, params)


def test_bad_algo_and_arm_names_are_refused_with_what_is_accepted():
    from tasks.params import ParamsError

    with pytest.raises(ParamsError, match=r"train\.algos.*cbf_beta"):
        load_params(overrides={"train.algos": ["cbf_beta", "beta"]})
    with pytest.raises(ParamsError, match=r"eval\.arms.*cbf_beta_rcbf"):
        load_params(overrides={"eval.arms": ["cbf_beta_rcbf", "shielded_rcbf"]})
    with pytest.raises(ValueError, match="accepted: .*cbf_beta.*shielded"):
        make_actor("beta", OBS_DIM, Params())
    defaults = load_params()
    assert defaults.train.algos == ["barriernet", "baseline", "cbf_beta", "shielded"]
    assert {"barriernet_rcbf", "cbf_beta", "cbf_beta_rcbf", "shielded"} <= set(defaults.eval.arms)
