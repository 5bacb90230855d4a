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
from model.cbf_beta import SafeBox
from tasks import evaluate
from tasks.params import Params, load_params
from tasks.train import Trainer, load_trained, run
from tests.helpers import same_bits

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
        assert same_bits(out.sample, expected_sample)
        normal = torch.distributions.Normal(mean, std.expand_as(mean))
        np.testing.assert_allclose(out.log_prob.numpy(), normal.log_prob(out.sample).sum(-1).numpy(), rtol=1e-12)
        lp, _ = shield.evaluate_actions(obs, states, out.sample)
        assert same_bits(lp, out.log_prob)
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
        assert same_bits(shield(obs, states, deterministic=True).action, filtered(obs, states, deterministic=True).action)


# ---------------------------------------------------------------------------------------------
# Training: rollouts, re-scoring, smoke runs


@pytest.mark.parametrize("algo,learner", [("cbf_beta", "torch"), ("shielded", "torch"), ("cbf_beta", "numpy"),
                                          ("shielded", "numpy")])
def test_rollout_actions_are_safe_and_rescored_exactly(algo, learner):
    params = load_params(overrides={**TINY, "train.learner": learner})
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
    record = None if buf.record is None else flat(buf.record)
    if algo == "cbf_beta":  # the boxes the rollout kept are the ones rebuilt here from the stored states
        kept = SafeBox.unpacked(record)
        assert all(same_bits(a, b) for a, b in zip(kept, boxes)) and kept.feasible.dtype == torch.bool
    else:
        assert record is None  # the filter over the Gaussian keeps nothing
    with torch.no_grad():
        inputs = trainer.actor.update_inputs(safety, flat(buf.obs), record)  # what ppo_update hands over
        lp, _ = trainer.actor.evaluate_actions(flat(buf.obs), inputs.safety, flat(buf.sample),
                                               qp_hint=inputs.qp_hint, cbf_geometry=inputs.cbf_geometry)
    if learner == "torch":
        assert same_bits(lp, flat(buf.log_prob))
    if learner == "numpy":  # the NumPy update's own scoring: OpenBLAS's products differ in the last bit
        # between the rollout's and the update's row counts, so the first ratio is 1 to float32 round-off
        extra = () if inputs.cbf_geometry is None else tuple(x.numpy() for x in inputs.cbf_geometry)
        ours, _ = trainer.learner.step.policy.log_prob(flat(buf.obs).numpy(), flat(buf.sample).numpy(), extra)
        np.testing.assert_allclose(ours, flat(buf.log_prob).numpy(), rtol=0, atol=2e-6)
        # torch's scoring: its tanh and, for CBF-Beta, its lgamma are a few ulp from the NumPy ones
        assert float((lp - flat(buf.log_prob)).abs().max()) < (1e-5 if algo == "cbf_beta" else 2e-6)
    assert "rollout/qp_intervention_rate" in stats
    if algo == "cbf_beta":
        # the box-width curves: every step's own box (high - low), recomputed here from the stored
        # states, as fractions of the action range, averaged over the rollout's env steps
        full = torch.tensor([params.env.pursuer_v_max, 2 * params.env.pursuer_w_max], dtype=torch.float64)
        width = ((boxes.high - boxes.low) / full).mean(0)  # (2,); tests/test_cbf_beta.py has binding boxes
        assert stats["rollout/box_width_v"] == pytest.approx(float(width[0]), rel=1e-5)
        assert stats["rollout/box_width_w"] == pytest.approx(float(width[1]), rel=1e-5)


@pytest.mark.parametrize("algo", ["cbf_beta", "shielded"])
def test_smoke_training_and_every_arm_evaluates(tmp_path, state_dir, algo):
    params = load_params(overrides={**TINY, "eval.dev_episodes": 3, "eval.test_episodes": 3, "eval.num_envs": 3,
                                    "eval.filter_sweep.gammas": [0.2], "eval.filter_sweep.robust_margins": [0.0, 0.1]})
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
    # cbf_beta's checkpoint is swept too (its unconstrained policy under every filter), without an arm
    sweep_file = evaluate.output_dir(tmp_path, algo, 0) / evaluate.SWEEP_FILE
    assert sweep_file.exists() == (algo == "cbf_beta")
    if algo == "cbf_beta":
        assert len(pd.read_csv(sweep_file)) == 2 * 1 * 2  # forms x gammas x margins


def test_new_arms_are_built_from_their_checkpoints():
    params = Params()
    torch.manual_seed(0)
    for algo, arms in evaluate.ARMS_OF_ALGO.items():
        actor = make_actor(algo, OBS_DIM, params)
        for arm in arms:
            tuned = {"form": "dcbf_exact", "gamma": 0.5, "robust_margin": 0.03}
            policy = evaluate.build_policy(arm, actor, params, tuned if arm == "baseline_tuned_filter" else None)
            if arm == "baseline_tuned_filter":
                assert (policy.form, policy.gamma, policy.robust_margin) == ("dcbf_exact", 0.5, 0.03)
            elif arm.endswith("_rcbf"):
                assert isinstance(policy, SafetyFilter) and policy.robust_margin == params.cbf.robust_margin > 0
            elif arm in ("baseline_ct_filter", "baseline_dcbf_filter"):
                assert isinstance(policy, SafetyFilter) and policy.actor is actor
                assert (policy.form, policy.gamma, policy.robust_margin) == (
                    arm.split("_")[1], params.cbf.filter_gamma, 0.0)
            elif arm in ("barriernet", "baseline", "cbf_beta", "shielded"):
                assert policy is actor
            else:
                pytest.fail(f"arm {arm!r} has no expectation here")
    with pytest.raises(ValueError, match="unknown arm"):
        evaluate.build_policy("cbf_beta_tuned", actor, params)
    with pytest.raises(ValueError, match="needs the configuration"):
        evaluate.build_policy("baseline_tuned_filter", make_actor("baseline", OBS_DIM, params), params)


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


# ---------------------------------------------------------------------------------------------
# The post-hoc filter sweep (dev episodes only) and the arm baseline_tuned_filter


def _sweep_row(form, gamma, margin, capture, collision_upper, intervention, split="dev"):
    return {"form": form, "gamma": gamma, "robust_margin": margin, "split": split, "episodes": 100, "steps": 1000,
            "capture_rate": capture, "collision_rate": 0.0, "collision_upper": collision_upper,
            "intervention_rate": intervention, "infeasible_rate": 0.0, "cbf_violation_rate": 0.0,
            "mean_capture_steps": 100.0}


def test_select_filter_follows_the_rule_and_refuses_test_rows():
    table = pd.DataFrame([
        _sweep_row("dcbf", 0.01, 0.0, 0.80, 0.02, 0.30),
        _sweep_row("dcbf", 0.2, 0.0, 0.95, 0.09, 0.05),   # best capture, but its collision bound is too high
        _sweep_row("dcbf", 0.5, 0.05, 0.90, 0.04, 0.20),
        _sweep_row("dcbf_exact", 0.5, 0.05, 0.90, 0.05, 0.10),  # ties on capture, fewer interventions: chosen
    ])
    choice = evaluate.select_filter(table, max_collision_upper=0.05)
    assert (choice["form"], choice["gamma"], choice["robust_margin"], choice["qualified"]) == ("dcbf_exact", 0.5, 0.05, True)
    json.dumps(choice)  # plain types: written as filter_choice.json
    # nothing qualifies: the lowest collision bound
    fallback = evaluate.select_filter(table, max_collision_upper=0.01)
    assert (fallback["gamma"], fallback["qualified"]) == (0.01, False)
    with pytest.raises(ValueError, match="accepted: dev rows only"):
        evaluate.select_filter(pd.concat([table, pd.DataFrame([_sweep_row("dcbf", 1.0, 0.1, 1.0, 0.0, 0.0, "test")])]),
                               0.05)


def test_sweep_plays_dev_episodes_only_and_the_tuned_arm_plays_the_choice(tmp_path, state_dir, monkeypatch):
    params = load_params(overrides={
        **TINY, "eval.dev_episodes": 4, "eval.test_episodes": 3, "eval.num_envs": 4,
        "eval.filter_sweep.forms": ["dcbf"], "eval.filter_sweep.gammas": [0.05, 1.0],
        "eval.filter_sweep.robust_margins": [0.0, 0.1], "eval.filter_sweep.max_collision_upper": 0.9,
        "eval.tuned_filter": None,  # the seed's own dev sweep chooses (the study's choice is tested in test_tuning)
    })
    run(params, tmp_path, "baseline", 0)
    played: list[tuple[str, str]] = []
    original = evaluate.play_groups

    def spy(groups, obs_rms, p):
        for g in groups:
            form = getattr(g.policy, "form", None)
            played.append((g.split, f"{form}/{getattr(g.policy, 'gamma', None)}/{getattr(g.policy, 'robust_margin', None)}"))
        return original(groups, obs_rms, p)

    monkeypatch.setattr(evaluate, "play_groups", spy)
    evaluate.run(params, tmp_path, "baseline", 0)
    out = evaluate.output_dir(tmp_path, "baseline", 0)
    sweep = pd.read_csv(out / evaluate.SWEEP_FILE)
    assert len(sweep) == 4 and set(sweep["split"]) == {"dev"} and (sweep["episodes"] == 4).all()
    # the sweep's calls came before the arms' and used the dev split only
    assert [split for split, _ in played[:4]] == ["dev"] * 4
    choice = json.loads((out / evaluate.CHOICE_FILE).read_text())
    recomputed = evaluate.select_filter(sweep, 0.9)
    assert {k: choice[k] for k in ("form", "gamma", "robust_margin")} == \
        {k: recomputed[k] for k in ("form", "gamma", "robust_margin")}
    table = pd.read_csv(out / "episodes.csv")
    tuned = table[table["arm"] == "baseline_tuned_filter"]
    assert sorted(set(tuned["split"])) == ["dev", "test"]
    # the tuned arm's dev episodes are the chosen configuration's sweep episodes, replayed
    chosen = sweep[(sweep["gamma"] == choice["gamma"]) & (sweep["robust_margin"] == choice["robust_margin"])].iloc[0]
    dev = tuned[tuned["split"] == "dev"]
    assert dev["outcome"].eq("capture").mean() == pytest.approx(chosen["capture_rate"])
    assert dev["interventions"].sum() / dev["length"].sum() == pytest.approx(chosen["intervention_rate"])


def test_bad_sweep_params_are_refused_with_the_key():
    from tasks.params import ParamsError

    with pytest.raises(ParamsError, match=r"eval\.filter_sweep\.gammas=\[0\.2, 2\.0\].*accepted"):
        load_params(overrides={"eval.filter_sweep.gammas": [0.2, 2.0]})
    with pytest.raises(ParamsError, match=r"eval\.filter_sweep\.robust_margins"):
        load_params(overrides={"eval.filter_sweep.robust_margins": [-0.1]})
    with pytest.raises(ParamsError, match=r"eval\.filter_sweep\.forms"):
        load_params(overrides={"eval.filter_sweep.forms": ["dcbf", "dcbf"]})
    assert load_params(overrides={"eval.filter_sweep.forms": ["ct"], "eval.filter_sweep.gammas": [4.0]})
