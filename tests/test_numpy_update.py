"""benchmarks/numpy_update.py: the hand-derived NumPy PPO step against torch's autograd and fused
Adam (the second implementation), with every clipping branch active, and a `--quick` run (no
timing asserts: speed lives in the benchmark's output)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_numpy_update", REPO / "benchmarks" / "numpy_update.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


TORCH = {"train.learner": "torch"}  # the trainers whose update `NumpyLearner.patched` replaces
QUICK = {"baseline": {}, "barriernet": {"train.num_envs": 64, "train.rollout_steps": 8}, "cbf_beta": {},
         "shielded": {}}


def _perturbed(minibatch, seed: int):
    """The minibatch with the stored log-probabilities and values moved, so that some ratios
    leave [1 - clip, 1 + clip] on both sides and some value steps exceed the clip: at the
    rollout's own weights every ratio is 1 and no clipping branch would be tested."""
    gen = torch.Generator().manual_seed(seed)
    obs, sample, log_prob, advantages, returns, value = minibatch.rows
    log_prob = log_prob + 0.4 * torch.randn(log_prob.shape, generator=gen)
    value = value + 0.5 * torch.randn(value.shape, generator=gen)
    inputs = minibatch.inputs
    if hasattr(inputs.cbf_geometry, "barrier_mask"):
        # BarrierNet: barrier values cut to a thousandth, so that many QPs have an active CBF row
        # (a first rollout rarely comes near an obstacle) and the gradient through the QP is tested
        inputs = inputs._replace(cbf_geometry=inputs.cbf_geometry._replace(h=inputs.cbf_geometry.h * 1e-3))
    return minibatch._replace(rows=(obs, sample, log_prob, advantages, returns, value), inputs=inputs)


def _active_states(bench, trainer, minibatch) -> int:
    """States of the minibatch whose mean's QP has an active row (NumPy step, current weights)."""
    ours = bench.numpy_step_for(trainer)
    rows, extra = minibatch.arrays()
    ours.policy.log_prob(rows[0], rows[1], extra)
    return int((ours.policy.saved[4][:, 0] >= 0).sum())


def _trainer(bench, algo):
    return bench.rollout_batch(algo, {**bench.QUICK, **QUICK[algo]})


@pytest.mark.parametrize("algo,ent_coef,clip_vloss,tanh", [
    ("baseline", 0.0, True, "numpy"), ("baseline", 0.01, False, "rational"),
    ("barriernet", 0.0, True, "numpy"), ("barriernet", 0.01, False, "rational"),
    ("cbf_beta", 0.0, True, "rational"), ("cbf_beta", 0.01, False, "numpy"), ("shielded", 0.01, True, "rational"),
])
def test_numpy_steps_follow_torch_autograd_and_adam(bench, algo, ent_coef, clip_vloss, tanh):
    from model.numpy_learner import rational_tanh

    tanh = {"numpy": np.tanh, "rational": rational_tanh}[tanh]
    trainer, batch, slices = _trainer(bench, algo)
    trainer.update_cfg = dataclasses.replace(trainer.update_cfg, ent_coef=ent_coef, clip_vloss=clip_vloss)
    minibatches = [_perturbed(batch.index(idx), seed) for seed, idx in enumerate(slices * 2)]
    clip = trainer.update_cfg.clip_coef
    (obs, sample, old_log_prob, *_), inputs = minibatches[0]
    new_log_prob = trainer.agent.actor.evaluate_actions(obs, inputs.safety, sample, qp_hint=inputs.qp_hint,
                                                        cbf_geometry=inputs.cbf_geometry)[0].detach()
    ratio = torch.exp(new_log_prob - old_log_prob)
    assert (ratio < 1 - clip).any() and (ratio > 1 + clip).any() and ((ratio - 1).abs() < clip).any()
    if algo == "barriernet":  # QPs with an active CBF row: the gradient goes through the QP
        assert _active_states(bench, trainer, minibatches[0]) > 0.1 * obs.shape[0]

    check = bench.check_against_torch(trainer, minibatches[0], tanh)
    assert check["loss_numpy"] == pytest.approx(check["loss_torch"], rel=1e-5)
    assert check["grad_rel"] < 1e-5
    assert check["weight_rel"] < 1e-3

    # then several steps with Adam's moments and bias correction carried along, from equal weights
    trainer.agent.optimizer.state.clear()
    ours = bench.numpy_step_for(trainer, tanh)
    start = ours.flat.copy()
    for minibatch in minibatches[1:]:
        rows, extra = minibatch.arrays()
        ours.step(*rows, extra)
        bench.torch_step(trainer, minibatch)
    named = ([(f"actor.{n}", p) for n, p in trainer.agent.actor.named_parameters()]
             + [(f"critic.{n}", p) for n, p in trainer.agent.critic.named_parameters()])
    theirs = np.concatenate([p.detach().numpy().ravel() for _, p in named])
    moved = np.abs(theirs - start).max()
    assert moved > 0
    assert np.abs(ours.flat - theirs).max() < 1e-3 * moved
    mine = ours.tensors()
    for name, p in named[:1] + named[-1:]:  # the names map to the right tensors
        np.testing.assert_allclose(mine[name], p.detach().numpy(), atol=1e-3 * moved)


def _gradient_difference(bench, trainer, minibatch, ours) -> float:
    """One step of `ours` and of torch from the same weights: `gradient_difference` after it."""
    rows, extra = minibatch.arrays()
    ours.loss_and_grad(*rows, extra)
    ours.clip_and_step()
    bench.torch_step(trainer, minibatch)
    return bench.gradient_difference(ours, list(trainer.agent.actor.parameters()) + list(trainer.agent.critic.parameters()))


def test_a_step_that_ignores_the_clipping_is_caught(bench):
    """The comparison can fail: a NumPy step whose gradient ignores the ratio and value clipping
    (a plausible slip) leaves the tolerance the test above holds, on the same perturbed minibatch."""
    trainer, batch, slices = _trainer(bench, "baseline")
    trainer.agent.optimizer.state.clear()
    ours = bench.numpy_step_for(trainer)
    ours.cfg = dataclasses.replace(ours.cfg, clip_coef=1e9)  # every ratio and value step "inside"
    assert _gradient_difference(bench, trainer, _perturbed(batch.index(slices[0]), 0), ours) > 1e-3


def test_a_barriernet_step_that_ignores_the_qp_is_caught(bench):
    """The comparison can fail: with the QP's backward replaced by the unconstrained one (the
    gradient as if no CBF row were active), BarrierNet's gradients leave the tolerance."""

    def unconstrained_backward(grad_u, u, lam, Y, K, active, inv_norm, grad_H, grad_f, grad_A, grad_b):
        grad_f[:] = -grad_u / weights  # u = -H^-1 f without constraints
        grad_b[:] = 0.0

    trainer, batch, slices = _trainer(bench, "barriernet")
    trainer.agent.optimizer.state.clear()
    ours = bench.numpy_step_for(trainer)
    weights = ours.policy.weights
    ours.policy.qp_backward = unconstrained_backward
    assert _gradient_difference(bench, trainer, _perturbed(batch.index(slices[0]), 0), ours) > 1e-3


def test_quick_run_prints_the_table_and_the_cpu(bench):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = bench.main(["--quick", "--repeats", "1", "--whole"])
    text = out.getvalue()
    assert "numerics pinned" in text and "| NumPy, rational tanh" in text and "whole iteration" in text
    assert result["eager_ms"] > 0 and result["numpy_ms"] > 0 and result["rational_ms"] > 0
    assert all(c["grad_rel"] < 1e-5 for c in result["checks"].values())
    split = result["rollout_split"]  # the timed calls lie inside the rollout, each was called
    assert 0 < split["env_step"] + split["actor"] + split["critic"] < split["rollout"]
    assert min(split["env_step"], split["actor"], split["critic"]) > 0 and "2x needs the iteration" in text
    assert result["whole"]["numpy_ms"] > 0 and "whole training iterations" in text


def test_the_numpy_learner_trains_inside_real_iterations_and_hands_its_weights_to_the_rollout(bench):
    """Under `NumpyLearner.patched` a training iteration's update is the NumPy step's (Adam's step
    count says so), the torch modules the rollout reads hold its weights afterwards, and the
    original `ppo_update` is back on exit."""
    import model.ppo as ppo
    from tasks.params import load_params
    from tasks.train import Trainer

    trainer = Trainer(load_params(overrides={**bench.QUICK, **TORCH, "train.total_steps": 10**6}), "barriernet", 0,
                      update_device="cpu")
    learner = bench.NumpyLearner(trainer)
    original = ppo.ppo_update
    before = learner.step.flat.copy()
    with learner.patched():
        trainer.train_one_update()
    assert ppo.ppo_update is original
    cfg = trainer.update_cfg
    assert learner.step.steps == cfg.update_epochs * trainer.params.train.num_minibatches
    assert not np.array_equal(learner.step.flat, before)
    rollout = list(trainer.agent.rollout_actor.parameters()) + list(trainer.agent.rollout_critic.parameters())
    assert np.array_equal(np.concatenate([p.detach().numpy().ravel() for p in rollout]), learner.step.flat)


@pytest.mark.parametrize("algo", ["baseline", "barriernet"])
def test_the_numpy_learner_logs_what_torchs_update_logs(bench, algo):
    """One iteration from the same seed by torch's update and by `NumpyLearner`: the same loss
    statistics and gradient diagnostics (GradientProbe fed from the NumPy gradients; BarrierNet's
    nominal-action gradient too), equal up to the round-off that the minibatch steps accumulate."""
    from tasks.params import load_params
    from tasks.train import Trainer

    params = load_params(overrides={**bench.QUICK, **TORCH, "train.total_steps": 10**6})
    theirs = Trainer(params, algo, 0, update_device="cpu").train_one_update()
    trainer = Trainer(params, algo, 0, update_device="cpu")  # re-seeds: the same rollout
    with bench.NumpyLearner(trainer).patched():
        ours = trainer.train_one_update()
    keys = [k for k in theirs if k.startswith(("losses/", "grad/"))]
    assert "grad/actor_norm" in keys and (algo != "barriernet" or "grad/nominal_norm_p50" in keys)
    assert set(keys) <= set(ours)
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-9), key  # measured: 2e-5 at most
    with pytest.raises(TypeError, match="GradientProbe"), bench.NumpyLearner(trainer).patched():
        trainer.probe, probe = (lambda: None), trainer.probe  # a diagnostics hook it cannot feed
        try:
            trainer.train_one_update()
        finally:
            trainer.probe = probe


# One NumPy step, three times, on fixed weights and a fixed minibatch (numpy's RNG), in a fresh
# process: the sha256 of the weights. argv: the numerics mode.
_PINNED_PATH_SCRIPT = """
import hashlib, sys
mode = sys.argv[1]
sys.argv = ["x", "--set", f"numerics.mode={mode}"]
sys.path.insert(0, "benchmarks")
import numpy_update as bench  # applies the mode before numpy, torch and numba load
import numpy as np
import torch
from model.numpy_learner import rational_tanh
from model.actors import Critic, GaussianActor
from model.ppo import UpdateConfig
from tasks.params import load_params

params = load_params()
actor, critic = GaussianActor(25, params.env, [64, 64], -0.5), Critic(25, [64, 64])
rng = np.random.default_rng(0)
with torch.no_grad():
    for p in list(actor.parameters()) + list(critic.parameters()):
        p.copy_(torch.from_numpy((0.3 * rng.standard_normal(tuple(p.shape))).astype(np.float32)))
cfg = UpdateConfig(update_epochs=1, minibatch_size=1024, clip_coef=0.2, clip_vloss=True, ent_coef=0.01,
                   vf_coef=0.5, max_grad_norm=0.5)
step = bench.NumpyPPOStep(actor, critic, cfg, 1e-3, tanh=rational_tanh)
f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
rows = (f32(1024, 25), f32(1024, 2), f32(1024) - 3.0, f32(1024), f32(1024), f32(1024))
for _ in range(3):
    step.step(*rows, ())
print(hashlib.sha256(step.flat.tobytes()).hexdigest())
"""


def test_the_numpy_step_is_pinned_under_host_settings_and_not_without_the_pin():
    """The NumPy route keeps `tasks/numerics.py`'s promise: under host settings that change
    OpenBLAS's kernel, numpy's SIMD loops, numba's target and the thread counts, pinned processes
    compute the same weights; the control, the same change in native mode, moves them."""
    import subprocess

    from tasks import numerics

    host = {"OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": "AVX2,FMA3", "NUMBA_CPU_NAME": "generic",
            "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}

    def weights(mode, extra):
        env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k != numerics.MARKER}
        done = subprocess.run([sys.executable, "-c", _PINNED_PATH_SCRIPT, mode], cwd=REPO, env={**env, **extra},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    assert weights("pinned", {}) == weights("pinned", host)
    assert weights("native", {}) != weights("native", host)
