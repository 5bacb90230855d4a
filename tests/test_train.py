"""Training stage: determinism, bit-exact resume after SIGKILL, refusal of bad checkpoints, NaN guard,
and a learning smoke test. Tiny budgets, CPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.params import load_params
from tasks.train import (
    TIMING_METRICS,
    CheckpointError,
    InjectedFault,
    NonFiniteError,
    Trainer,
    cell_name,
    fault_injection_hook,
    run,
    state_root,
)
from tests.helpers import same_bits

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "train.num_envs": 8,
    "train.rollout_steps": 16,
    "train.num_minibatches": 2,
    "train.update_epochs": 2,
    "train.total_steps": 8 * 16 * 4,  # 4 updates
    "train.checkpoint_every": 1,
    "train.seeds": [0],
    "env.max_steps": 40,  # episodes end inside the rollout: exercises autoreset + bootstrap
}


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(path))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    record = torch.load(path, weights_only=False)
    return {**{f"actor.{k}": v for k, v in record["actor"].items()}, **{f"critic.{k}": v for k, v in record["critic"].items()}}


def _curves(live_dir: Path) -> dict[str, list[list[str]]]:
    """Every DVCLive curve except the wall-clock ones, as rows of text (exact comparison)."""
    curves = {}
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        name = tsv.relative_to(live_dir / "plots" / "metrics").with_suffix("").as_posix()
        if name in TIMING_METRICS:
            continue
        curves[name] = list(csv.reader(tsv.open(), delimiter="\t"))
    return curves


@pytest.mark.parametrize("algo", ["baseline", "barriernet"])
def test_same_seed_same_weights(tmp_path, state_dir, algo):
    params = load_params(overrides=TINY)
    run(params, tmp_path / "a", algo, 0)
    os.environ["BARRIERNET_STATE_DIR"] = str(tmp_path / "state2")  # fresh state: a real second run
    run(params, tmp_path / "b", algo, 0)
    wa = _weights(tmp_path / "a/results/train" / cell_name(algo, 0) / "model.pt")
    wb = _weights(tmp_path / "b/results/train" / cell_name(algo, 0) / "model.pt")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert same_bits(wa[name], wb[name]), name
    # and a different seed gives different weights (the check above can fail)
    other = load_params(overrides={**TINY, "train.seeds": [1]})
    run(other, tmp_path / "c", algo, 1)
    wc = _weights(tmp_path / "c/results/train" / cell_name(algo, 1) / "model.pt")
    assert any(not torch.equal(wa[n], wc[n]) for n in wa)


def _train_cli(workdir: Path, state: Path, algo: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BARRIERNET_STATE_DIR": str(state), **(extra_env or {})}
    sets = []
    for key, value in TINY.items():
        sets += ["--set", f"{key}={value}"]
    cmd = [sys.executable, "-m", "tasks", "train", "--algo", algo, "--seed", "0", "--workdir", str(workdir), *sets]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["barriernet", "cbf_beta", "shielded"])
def test_sigkill_after_checkpoint_then_resume_is_bit_identical(tmp_path, monkeypatch, algo):
    # Uninterrupted reference run, in this process (a fresh process costs the imports again; the
    # pinned numerics make both give the same bits).
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "ref_state"))
    assert run(load_params(overrides=TINY), tmp_path / "ref", algo, 0)["resumed_from_update"] is None
    # A run that SIGKILLs itself right after its second checkpoint, then is started again.
    marker = tmp_path / "killed.marker"
    fault = {"BARRIERNET_FAULT_TRAIN_AFTER_UPDATE": "2", "BARRIERNET_FAULT_MARKER": str(marker), "BARRIERNET_FAULT_KIND": "kill"}
    killed = _train_cli(tmp_path / "run", tmp_path / "run_state", algo, fault)
    assert killed.returncode == -9 and marker.exists(), (killed.returncode, killed.stderr[-2000:])
    resumed = _train_cli(tmp_path / "run", tmp_path / "run_state", algo, fault)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr

    cell = cell_name(algo, 0)
    w_ref = _weights(tmp_path / "ref/results/train" / cell / "model.pt")
    w_run = _weights(tmp_path / "run/results/train" / cell / "model.pt")
    for name in w_ref:
        assert same_bits(w_ref[name], w_run[name]), name
    c_ref = _curves(tmp_path / "ref/results/train" / cell / "live")
    c_run = _curves(tmp_path / "run/results/train" / cell / "live")
    assert "rollout/capture_rate" in c_ref and len(c_ref["losses/approx_kl"]) == 1 + 4  # header + 4 updates
    assert c_ref == c_run


def _live_summary(live_dir: Path) -> dict:
    """live/metrics.json without the wall-clock entries."""
    summary = json.loads((live_dir / "metrics.json").read_text())
    for name in TIMING_METRICS:
        group, key = name.split("/")
        del summary[group][key]
    return summary


def test_live_files_equal_a_run_that_syncs_every_point(tmp_path, monkeypatch):
    """The curves and live/metrics.json sync only at checkpoints and on the last point, and a
    finished run leaves the same files as one that synced after every point (the old way)."""
    import dvclive

    import tasks.train

    overrides = {**TINY, "train.total_steps": 8 * 16 * 5, "train.checkpoint_every": 2}  # 5 updates
    params = load_params(overrides=overrides)
    syncs = []
    real_next_step = dvclive.Live.next_step
    monkeypatch.setattr(dvclive.Live, "next_step", lambda live: (syncs.append(live.step), real_next_step(live))[1])
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "sparse_state"))
    run(params, tmp_path / "sparse", "baseline", 0)
    steps = 8 * 16
    assert syncs == [2 * steps, 4 * steps, 5 * steps]  # checkpoints at updates 2 and 4, then the last

    real_log_point = tasks.train._log_point
    monkeypatch.setattr(tasks.train, "_log_point", lambda live, record, sync=True: real_log_point(live, record, True))
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "every_state"))
    syncs.clear()
    run(params, tmp_path / "every", "baseline", 0)
    assert len(syncs) == 5
    sparse, every = (tmp_path / w / "results/train/baseline-s0/live" for w in ("sparse", "every"))
    assert _curves(sparse) == _curves(every) and len(_curves(sparse)["losses/approx_kl"]) == 1 + 5
    assert _live_summary(sparse) == _live_summary(every)
    assert _live_summary(sparse)["step"] == 5 * steps


def test_changed_config_starts_fresh_and_keeps_other_state(tmp_path, state_dir):
    params = load_params(overrides=TINY)
    done = run(params, tmp_path, "baseline", 0)
    # one training thread (pinned numerics): the process's CPU time cannot exceed its wall time
    assert 0 < done["cpu_seconds"] <= 1.05 * done["wall_seconds"] + 0.01, done
    first = sorted(p.name for p in state_root().iterdir())
    changed = load_params(overrides={**TINY, "train.total_steps": 8 * 16 * 2})
    summary = run(changed, tmp_path, "baseline", 0)
    assert summary["resumed_from_update"] is None and summary["updates"] == 2
    after = sorted(p.name for p in state_root().iterdir())
    assert len(after) == 2 and set(first) <= set(after)
    # the same configuration again resumes from its final checkpoint: nothing left to do
    again = run(params, tmp_path, "baseline", 0)
    assert again["resumed_from_update"] == 4 and again["updates"] == 4
    # the times come back from the checkpoint (no iteration ran since)
    assert (again["wall_seconds"], again["cpu_seconds"]) == (done["wall_seconds"], done["cpu_seconds"])


def test_changed_training_code_starts_fresh(tmp_path, state_dir, monkeypatch):
    """A finished checkpoint is never reused (nor a half-done one resumed) by other training code."""
    import tasks.train

    params = load_params(overrides=TINY)
    run(params, tmp_path, "baseline", 0)
    assert run(params, tmp_path, "baseline", 0)["resumed_from_update"] == 4
    monkeypatch.setattr(tasks.train, "code_fingerprint", lambda: "0123456789abcdef")  # "edited code"
    summary = run(params, tmp_path, "baseline", 0)
    assert summary["resumed_from_update"] is None and summary["updates"] == 4
    assert len(list(state_root().iterdir())) == 2  # the other code's state is left alone


def test_code_fingerprint_follows_the_train_stage_sources(tmp_path, monkeypatch):
    """The fingerprint hashes the Python files the registry lists as the train stage's code: an
    edit changes it, byte-code and other files do not."""
    import shutil

    import tasks.train
    from tasks.registry import STAGES

    for entry in STAGES["train"].code:
        source = REPO / entry
        if source.is_dir():
            shutil.copytree(source, tmp_path / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp_path / entry)
    monkeypatch.setattr(tasks.train, "REPO_ROOT", tmp_path)

    def fingerprint() -> str:
        tasks.train.code_fingerprint.cache_clear()
        return tasks.train.code_fingerprint()

    original = fingerprint()
    (tmp_path / "model" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "model" / "__pycache__" / "qp.cpython-311.pyc").write_bytes(b"byte-code")
    (tmp_path / "env" / "notes.txt").write_text("not code")
    assert fingerprint() == original
    with (tmp_path / "model" / "ppo.py").open("a") as handle:
        handle.write("\n# an edit\n")
    assert fingerprint() != original
    tasks.train.code_fingerprint.cache_clear()  # the real tree's value again for later tests


def test_resume_key_records_the_device_the_learner_runs_on():
    """train.update_device "auto" is recorded resolved (the weights depend on the device)."""
    auto = Trainer(load_params(overrides={**TINY, "train.update_device": "auto"}), "baseline", 0)
    assert auto.config["train"]["update_device"] == auto.update_device.type != "auto"
    cpu = Trainer(load_params(overrides={**TINY, "train.update_device": "cpu"}), "baseline", 0)
    assert cpu.config["train"]["update_device"] == "cpu"
    assert (auto.key == cpu.key) == (auto.update_device.type == "cpu")


@pytest.mark.parametrize("algo", ["barriernet", "baseline", "cbf_beta", "shielded"])
def test_each_actor_names_its_rollout_curves(algo):
    """The trainer logs exactly the rollout curves the actor names (no algorithm branches), the
    policy's forward time as perf/policy_ms, and the policy's own numbers (charts/*)."""
    trainer = Trainer(load_params(overrides=TINY), algo, 0)
    stats = trainer.train_one_update()
    layer = {f"rollout/{name}" for name in trainer.actor.rollout_metric_names}
    expected = {
        "barriernet": {"rollout/qp_intervention_rate", "rollout/qp_infeasible_rate", "rollout/mean_gamma",
                       "rollout/qp_correction", "rollout/qp_active_rows", "rollout/qp_active_fraction"},
        "baseline": set(),
        "cbf_beta": {"rollout/qp_intervention_rate", "rollout/qp_infeasible_rate", "rollout/mean_gamma",
                     "rollout/qp_correction", "rollout/box_width_v", "rollout/box_width_w"},
        "shielded": {"rollout/qp_intervention_rate", "rollout/qp_infeasible_rate", "rollout/mean_gamma",
                     "rollout/qp_correction"},
    }[algo]
    assert layer == expected and layer <= set(stats)
    assert stats["perf/policy_ms"] > 0 and "perf/qp_ms" not in stats
    assert ("charts/log_std_mean" in stats) == (algo in ("baseline", "shielded"))
    if algo == "shielded":  # the mean gamma of a fixed filter is its gamma
        assert stats["rollout/mean_gamma"] == pytest.approx(trainer.params.cbf.filter_gamma, rel=1e-6)


def test_fault_injection_hook(tmp_path, monkeypatch):
    """Unset: a no-op. Set: fails once, after the named update only (the marker remembers)."""
    for name in ("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE", "BARRIERNET_FAULT_MARKER", "BARRIERNET_FAULT_KIND"):
        monkeypatch.delenv(name, raising=False)
    fault_injection_hook()(2)
    marker = tmp_path / "marker"
    monkeypatch.setenv("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE", "2")
    monkeypatch.setenv("BARRIERNET_FAULT_MARKER", str(marker))
    hook = fault_injection_hook()
    hook(1)
    with pytest.raises(InjectedFault, match="after update 2"):
        hook(2)
    assert marker.exists()
    hook(2)  # once only
    marker.unlink()
    monkeypatch.setenv("BARRIERNET_FAULT_KIND", "oom")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fault_injection_hook()(2)


def test_preallocated_adam_state_equals_the_lazy_one():
    """The trainer allocates Adam's state before the first rollout (an early out-of-memory error):
    the first steps then give the same weights and state as torch's own lazy initialisation."""
    from tasks.train import _allocate_adam_state

    results = []
    for preallocate in (True, False):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-5, fused=True)
        if preallocate:
            _allocate_adam_state(opt)
        for k in range(3):
            opt.zero_grad()
            net(torch.full((4, 5), float(k))).square().sum().backward()
            opt.step()
        results.append((net.state_dict(), opt.state_dict()["state"]))
    (w1, s1), (w2, s2) = results
    assert all(same_bits(w1[k], w2[k]) for k in w1)
    for index in s1:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            a, b = s1[index][key], s2[index][key]
            assert same_bits(a, b) and a.dtype == b.dtype and a.device == b.device, key


def test_truncated_or_tampered_checkpoint_is_refused(tmp_path, state_dir):
    params = load_params(overrides=TINY)
    run(params, tmp_path, "baseline", 0)
    (ckpt,) = state_root().glob("*/checkpoint.pt")
    other_files = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match=str(ckpt)):
        run(params, tmp_path, "baseline", 0)
    assert ckpt.exists() and ckpt.stat().st_size == len(data) // 2  # left in place

    ckpt.write_bytes(data)
    state = torch.load(ckpt, weights_only=False)
    state["config"]["train"]["learning_rate"] = 0.5  # tampered: recorded params differ from the key
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError) as info:
        run(params, tmp_path, "baseline", 0)
    assert str(ckpt) in str(info.value) and "train.learning_rate" in str(info.value)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == other_files  # nothing deleted


def test_a_checkpoint_that_is_no_training_checkpoint_and_bad_cells_are_named(tmp_path, state_dir, monkeypatch):
    import re

    from tasks.train import TrainingError, load_checkpoint, resolve_device

    params = load_params(overrides=TINY)
    path = tmp_path / "checkpoint.pt"
    torch.save({"actor": {"w": torch.zeros(2)}}, path)  # loads as weights, but records no config or key
    with pytest.raises(CheckpointError, match=f"checkpoint {re.escape(str(path))} is not a training checkpoint"):
        load_checkpoint(path, {})
    with pytest.raises(TrainingError, match="unknown algo 'ppo'; accepted: "):
        run(params, tmp_path, "ppo", 0)
    # refused before anything was written: no state, no results
    assert not any(state_root().glob("*")) and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with CUDA
    with pytest.raises(TrainingError, match="train device 'cuda' requested but torch.cuda.is_available"):
        resolve_device("cuda")


def test_nan_observation_names_step_and_env(tmp_path, state_dir, monkeypatch):
    params = load_params(overrides=TINY)
    trainer = Trainer(params, "baseline", 0)
    real_step = trainer.core.step
    calls = {"n": 0}

    def poisoned_step(action):
        obs, reward, term, trunc, info = real_step(action)
        calls["n"] += 1
        if calls["n"] == 5:
            obs = obs.clone()
            obs[3, 2] = float("nan")
        return obs, reward, term, trunc, info

    monkeypatch.setattr(trainer.core, "step", poisoned_step)
    with pytest.raises(NonFiniteError, match=r"non-finite observation at global step 32 .*rollout step 4\), env index 3"):
        trainer.train_one_update()


@pytest.mark.slow
def test_learning_smoke_easy_setting(tmp_path, state_dir):
    """No obstacles, slow evader: a short training beats a random policy by far."""
    from model.ppo import RunningMeanStd
    from tasks.evaluate import play_episodes
    from tasks.train import load_trained

    easy = {
        "env.num_obstacles": 0, "env.evader_v_max": 0.2,
        "env.start_distance_min": 2.0, "env.start_distance_max": 5.0, "env.max_steps": 150,
        "train.num_envs": 32, "train.rollout_steps": 64, "train.num_minibatches": 16, "train.update_epochs": 10,
        "train.total_steps": 40_000, "train.seeds": [0], "eval.dev_episodes": 64, "eval.test_episodes": 64, "eval.num_envs": 64,
    }
    params = load_params(overrides=easy)
    run(params, tmp_path, "baseline", 0)
    actor, _, obs_rms, _ = load_trained(tmp_path / "results/train/baseline-s0/model.pt", params)

    class RandomPolicy(torch.nn.Module):
        def forward(self, obs, safety, deterministic=True):
            from model.actors import ActorOutput
            g = torch.rand(obs.shape[0], 2)
            action = torch.stack((g[:, 0] * params.env.pursuer_v_max, (2 * g[:, 1] - 1) * params.env.pursuer_w_max), 1)
            return ActorOutput(action, action, torch.zeros(obs.shape[0]), {})

    episodes = list(range(params.eval.test_episodes))
    trained_rows, _ = play_episodes(actor, obs_rms, params, episodes)
    torch.manual_seed(0)
    random_rows, _ = play_episodes(RandomPolicy(), RunningMeanStd((obs_rms.mean.shape[0],)), params, episodes)
    trained = sum(r["outcome"] == "capture" for r in trained_rows) / len(episodes)
    random = sum(r["outcome"] == "capture" for r in random_rows) / len(episodes)
    assert trained >= 0.6 and trained >= random + 0.3, (trained, random)
