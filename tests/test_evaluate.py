"""Batched evaluation: every policy of a cell played side by side in one batched env
(`tasks.evaluate.play_groups`) and post-hoc filters that differ only in gamma stacked into one pass
(`SafetyFilter.forward_stacked`) give, row for row, the numbers of playing each policy alone, one
env at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from env.core import PursuitEvasionCore
from model.actors import ActorOutput, GaussianActor, SafetyFilter, make_actor, make_filter
from model.ppo import RunningMeanStd
from tasks.evaluate import EpisodeGroup, play_episodes, play_groups
from tasks.params import load_params
from tests.test_shielded import near_obstacle_states

OBS_DIM = PursuitEvasionCore(load_params().env, 1).obs_dim


def _params(num_envs: int):
    return load_params(overrides={"env.max_steps": 80, "eval.num_envs": num_envs})


def _obs_rms() -> RunningMeanStd:
    rms = RunningMeanStd((OBS_DIM,))
    g = torch.Generator().manual_seed(3)
    rms.update(torch.randn(64, OBS_DIM, generator=g, dtype=torch.float64) * 4.0)  # not the identity
    return rms


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "decision_ms"} for row in rows]


@pytest.mark.parametrize("algo", ["baseline", "barriernet", "cbf_beta"])
def test_play_groups_gives_each_groups_rows_as_if_it_were_played_alone_one_env_at_a_time(algo):
    torch.manual_seed(0)
    params = _params(num_envs=7)
    actor = make_actor(algo, OBS_DIM, params).eval()
    obs_rms = _obs_rms()
    dcbf = [make_filter(actor, params, "dcbf", gamma).eval() for gamma in (0.05, 1.0)]  # these two stack
    exact = make_filter(actor, params, "dcbf_exact", 0.2, robust_margin=0.05).eval()
    groups = [
        EpisodeGroup(actor, "dev", [0, 1, 2]),
        EpisodeGroup(actor, "test", [0, 1, 2, 3, 4], record=2),  # same policy: one call with the dev rows
        EpisodeGroup(dcbf[0], "dev", [0, 1, 2, 3]),
        EpisodeGroup(dcbf[1], "dev", [0, 1, 2, 3]),
        EpisodeGroup(exact, "test", [4, 5, 6, 7], record=5),
    ]
    # chunks of 7 rows: [g0 x3, g1 x4] [g1 x1, g2 x4, g3 x2] [g3 x2, g4 x4]; calls of 1-7 rows
    together = play_groups(groups, obs_rms, params)

    alone_params = _params(num_envs=1)
    interventions = 0
    for group, (rows, trajectory) in zip(groups, together):
        alone_rows, alone_trajectory = play_episodes(group.policy, obs_rms, alone_params, group.episodes,
                                                     group.record, group.split)
        assert _without_timing(rows) == _without_timing(alone_rows)
        assert [(r["split"], r["episode"]) for r in rows] == [(group.split, e) for e in group.episodes]
        assert (trajectory is None) == (group.record is None) == (alone_trajectory is None)
        if trajectory is not None:
            assert trajectory.keys() == alone_trajectory.keys()
            for key in trajectory:
                np.testing.assert_array_equal(trajectory[key], alone_trajectory[key])
        interventions += sum(r["interventions"] for r in rows)
    assert interventions > 0  # the filters acted, so their rows were compared where it matters


@pytest.mark.parametrize("form", ["dcbf", "ct", "dcbf_exact"])
def test_forward_stacked_equals_each_filters_own_forward_on_its_rows(form):
    params = load_params()
    torch.manual_seed(1)
    actor = GaussianActor(OBS_DIM, params.env, params.train.hidden_sizes, init_log_std=-0.5).eval()
    gammas = (0.05, 0.2, 1.0)
    filters = [make_filter(actor, params, form, gamma, robust_margin=0.05).eval() for gamma in gammas]
    sizes = [8, 16, 8]  # a multiple of 8 rows each, as play_groups pads its calls (tasks.artifacts.policy.CALL_ROWS)
    safety = near_obstacle_states(sum(sizes), seed=4)
    safety = type(safety)(*(x.float() if x.is_floating_point() else x for x in safety))
    obs = torch.randn(sum(sizes), OBS_DIM)
    with torch.no_grad():
        stacked = SafetyFilter.forward_stacked(filters, sizes, obs, safety, deterministic=True)
        start = 0
        for f, n in zip(filters, sizes):
            rows = slice(start, start + n)
            alone = f(obs[rows], type(safety)(*(x[rows] for x in safety)), deterministic=True)
            assert torch.equal(stacked.action[rows], alone.action)
            for key, value in alone.info.items():
                assert torch.equal(stacked.info[key][rows], value), key
            start += n
    assert stacked.info["intervened"].any()  # the states sit at an obstacle: the rows bind


def test_filters_over_two_views_of_one_cbf_beta_actor_stack_and_others_are_refused():
    params = load_params()
    beta = make_actor("cbf_beta", OBS_DIM, params)
    a, b = make_filter(beta, params, "dcbf", 0.2), make_filter(beta, params, "dcbf", 1.0)
    assert a.actor is not b.actor and a.stacks_with(b)  # make_filter wraps each time; one policy underneath
    other_actor = make_filter(make_actor("cbf_beta", OBS_DIM, params), params, "dcbf", 0.2)
    other_form = make_filter(beta, params, "ct", 0.2)
    other_margin = make_filter(beta, params, "dcbf", 0.2, robust_margin=0.05)
    assert not any(a.stacks_with(f) for f in (other_actor, other_form, other_margin))
    safety = near_obstacle_states(4, seed=0)
    with pytest.raises(ValueError, match="stack"):
        SafetyFilter.forward_stacked([a, other_form], [2, 2], torch.zeros(4, OBS_DIM, dtype=torch.float64), safety)


def test_dropping_ended_episodes_from_the_batch_moves_no_number(monkeypatch):
    # one chunk of 44 rows whose episodes end at many different steps (an actor that drives
    # nearly straight at full speed in a small arena): compacted (ended rows dropped, later calls
    # shorter, recorded rows at new positions in the batch) vs never compacted
    from tasks import evaluate
    from tasks.params import load_params

    torch.manual_seed(1)
    params = load_params(overrides={"env.max_steps": 100, "eval.num_envs": 64, "env.arena_size": 8.0,
                                    "env.start_distance_min": 1.0, "env.start_distance_max": 4.0})
    actor = make_actor("baseline", OBS_DIM, params).eval()
    with torch.no_grad():
        actor.mean_head.bias[0] = 2.0  # v near its maximum
    obs_rms = _obs_rms()
    groups = [
        EpisodeGroup(actor, "dev", list(range(24)), record=20),
        EpisodeGroup(make_filter(actor, params, "dcbf", 0.2).eval(), "test", list(range(20)), record=17),
    ]
    kept: list[int] = []
    keep_envs = PursuitEvasionCore.keep_envs

    def spy(core, index):
        kept.append(len(index))
        keep_envs(core, index)

    monkeypatch.setattr(PursuitEvasionCore, "keep_envs", spy)
    compacted = play_groups(groups, obs_rms, params)
    batch_sizes = kept[:]
    monkeypatch.setattr(evaluate, "COMPACT_FRACTION", float("inf"))
    kept.clear()
    full = play_groups(groups, obs_rms, params)
    assert len(batch_sizes) >= 3 and batch_sizes[-1] <= 30 and not kept  # compacted, then never

    lengths = [r["length"] for rows, _ in full for r in rows]
    assert len(set(lengths)) > 10 and min(lengths) < 40  # episodes ended at many different steps
    for (rows, trajectory), (rows_full, trajectory_full) in zip(compacted, full):
        assert _without_timing(rows) == _without_timing(rows_full)
        assert trajectory.keys() == trajectory_full.keys()
        for key in trajectory:
            np.testing.assert_array_equal(trajectory[key], trajectory_full[key])
    # both recorded episodes played on after rows before them had been dropped, and the filter acted
    recorded = [rows[g.episodes.index(g.record)]["length"] for g, (rows, _) in zip(groups, full)]
    assert min(recorded) > min(lengths) + 1
    assert sum(r["interventions"] for r in full[1][0]) > 0


def test_play_stacked_lays_out_groups_one_call_can_serve_together_and_moves_no_number(monkeypatch):
    from tasks import evaluate

    torch.manual_seed(2)
    params = _params(num_envs=64)
    actor = make_actor("baseline", OBS_DIM, params).eval()
    obs_rms = _obs_rms()
    dcbf = [make_filter(actor, params, "dcbf", gamma).eval() for gamma in (0.05, 0.2, 1.0)]
    exact = make_filter(actor, params, "dcbf_exact", 1.0).eval()
    groups = [  # interleaved: in this order only the last two neighbours share a call
        EpisodeGroup(actor, "dev", [0, 1, 2]), EpisodeGroup(dcbf[0], "dev", [0, 1, 2, 3]),
        EpisodeGroup(actor, "test", [0, 1, 2, 3], record=1), EpisodeGroup(exact, "dev", [0, 1, 2]),
        EpisodeGroup(dcbf[1], "test", [0, 1, 2, 3, 4], record=3), EpisodeGroup(dcbf[2], "dev", [4, 5, 6]),
    ]  # fmt: skip
    calls_per_step: list[int] = []
    calls = evaluate._calls

    def spy(groups_, runs):
        out = calls(groups_, runs)
        calls_per_step.append(len(out))
        return out

    monkeypatch.setattr(evaluate, "_calls", spy)
    stacked = evaluate.play_stacked(groups, obs_rms, params)
    assert calls_per_step[0] == 3  # the actor's rows, the three dcbf filters, the exact one
    calls_per_step.clear()
    evaluate.play_groups(groups, obs_rms, params)
    assert calls_per_step[0] == 5
    for group, (rows, trajectory) in zip(groups, stacked):
        alone_rows, alone_trajectory = play_groups([group], obs_rms, params)[0]
        assert _without_timing(rows) == _without_timing(alone_rows)
        assert [(r["split"], r["episode"]) for r in rows] == [(group.split, e) for e in group.episodes]
        assert (trajectory is None) == (alone_trajectory is None) == (group.record is None)
        for key in trajectory or {}:
            np.testing.assert_array_equal(trajectory[key], alone_trajectory[key])


def test_evaluate_plays_the_sweep_beside_the_arms_with_the_numbers_of_playing_each_alone(tmp_path, monkeypatch):
    # eval.tuned_filter fixed (the default): the sweep's filters and every arm play in one pass,
    # the tuned arm stacked with the sweep's filters of its form; the stage's files must be those
    # of playing every group alone
    import pandas as pd

    from tasks import evaluate, train
    from tasks.params import load_params

    params = load_params(overrides={
        "train.total_steps": 8192, "env.max_steps": 60, "eval.dev_episodes": 6, "eval.test_episodes": 8,
        "eval.filter_sweep.gammas": [0.2, 1.0], "eval.filter_sweep.robust_margins": [0.0],
    })  # fmt: skip
    assert params.eval.tuned_filter is not None and params.eval.tuned_filter.form in params.eval.filter_sweep.forms
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "state"))
    train.run(params, tmp_path / "together", "baseline", 0)
    cell = "results/train/baseline-s0"
    (tmp_path / "alone" / cell).mkdir(parents=True)
    (tmp_path / "alone" / cell / "model.pt").write_bytes((tmp_path / "together" / cell / "model.pt").read_bytes())

    passes: list[int] = []
    play_stacked = evaluate.play_stacked

    def counted(groups, obs_rms, params_):
        passes.append(len(groups))
        return play_stacked(groups, obs_rms, params_)

    monkeypatch.setattr(evaluate, "play_stacked", counted)
    evaluate.run(params, tmp_path / "together", "baseline", 0)
    assert passes == [4 + 2 * 4]  # one pass: 4 sweep filters and 4 arms x 2 splits
    monkeypatch.setattr(evaluate, "play_stacked",
                        lambda groups, obs_rms, params_: [play_groups([g], obs_rms, params_)[0] for g in groups])
    evaluate.run(params, tmp_path / "alone", "baseline", 0)

    out = "results/eval/baseline-s0"
    together, alone = (pd.read_csv(tmp_path / side / out / "episodes.csv").drop(columns="decision_ms")
                       for side in ("together", "alone"))
    pd.testing.assert_frame_equal(together, alone)
    assert set(together.arm) == {"baseline", "baseline_ct_filter", "baseline_dcbf_filter", "baseline_tuned_filter"}
    for name in ("filter_sweep.csv", "filter_choice.json"):
        assert (tmp_path / "together" / out / name).read_text() == (tmp_path / "alone" / out / name).read_text()
    with np.load(tmp_path / "together" / out / "trajectory.npz") as a, np.load(tmp_path / "alone" / out / "trajectory.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_single_decision_timing_calls_each_arm_on_one_state_at_a_time_taking_turns():
    """`single_decision_ms` (the reference's "inference per step"): every arm acts on one dev start
    state per call (padded to CALL_ROWS rows, as every evaluation call), the arms taking turns state
    by state after one untimed call each, and the state is the one a dev episode starts from. No
    timing is asserted beyond its being a positive number: speed lives in benchmarks."""
    from tasks.artifacts.policy import CALL_ROWS
    from tasks.evaluate import single_decision_ms

    params = load_params(overrides={"eval.dev_episodes": 20})
    calls = []

    class Recorder(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, obs, safety, deterministic=False):
            calls.append((self.name, obs.shape[0], obs[0].clone(), deterministic))
            zeros = torch.zeros(obs.shape[0], 2)
            return ActorOutput(zeros, zeros, torch.zeros(obs.shape[0]), {})

    obs_rms = _obs_rms()
    result = single_decision_ms({"a": Recorder("a"), "b": Recorder("b")}, obs_rms, params, states=32)
    assert set(result) == {"a", "b"} and all(v > 0 for v in result.values())
    states = 20  # capped at the dev episodes
    assert [c[0] for c in calls] == ["a", "b"] + ["a", "b"] * states
    assert all(rows == CALL_ROWS and deterministic for _, rows, _, deterministic in calls)
    core = PursuitEvasionCore(params.env, 1, autoreset=False)  # dev episode 5's start, played alone
    core.seed([params.eval.split_range("dev").start + 5])
    assert torch.equal(calls[2 + 2 * 5][2], obs_rms.normalize(core.reset())[0])
