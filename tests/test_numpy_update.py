"""benchmarks/numpy_update.py: the hand-derived NumPy PPO step against torch's autograd and fused
Adam (the second implementation), with every clipping branch active, and a `--quick` run (no
timing asserts: speed lives in the benchmark's output)."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
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


def _perturbed(rows, seed: int):
    """The minibatch with the stored log-probabilities and values moved, so that some ratios
    leave [1 - clip, 1 + clip] on both sides and some value steps exceed the clip: at the
    rollout's own weights every ratio is 1 and no clipping branch would be tested."""
    gen = torch.Generator().manual_seed(seed)
    obs, sample, log_prob, advantages, returns, value = rows
    log_prob = log_prob + 0.4 * torch.randn(log_prob.shape, generator=gen)
    value = value + 0.5 * torch.randn(value.shape, generator=gen)
    return obs, sample, log_prob, advantages, returns, value


@pytest.mark.parametrize("ent_coef,clip_vloss,tanh", [(0.0, True, "numpy"), (0.01, False, "rational")])
def test_numpy_steps_follow_torch_autograd_and_adam(bench, ent_coef, clip_vloss, tanh):
    from update_levers import rational_tanh  # benchmarks/ is on sys.path once bench is loaded

    tanh = {"numpy": np.tanh, "rational": rational_tanh}[tanh]
    trainer, batch, slices = bench.rollout_batch("baseline", bench.QUICK)
    trainer.update_cfg = dataclasses.replace(trainer.update_cfg, ent_coef=ent_coef, clip_vloss=clip_vloss)
    minibatches = [_perturbed(bench._minibatch(batch, idx), seed) for seed, idx in enumerate(slices * 2)]
    clip = trainer.update_cfg.clip_coef
    ratio = torch.exp(trainer.agent.actor.evaluate_actions(minibatches[0][0], None, minibatches[0][1])[0].detach()
                      - minibatches[0][2])
    assert (ratio < 1 - clip).any() and (ratio > 1 + clip).any() and ((ratio - 1).abs() < clip).any()

    check = bench.check_against_torch(trainer, minibatches[0], tanh)
    assert check["loss_numpy"] == pytest.approx(check["loss_torch"], rel=1e-5)
    assert check["grad_rel"] < 1e-5
    assert check["weight_rel"] < 1e-3

    # then several steps with Adam's moments and bias correction carried along, from equal weights
    trainer.agent.optimizer.state.clear()
    ours = bench.numpy_step_for(trainer, tanh)
    start = ours.flat.copy()
    for rows in minibatches[1:]:
        ours.step(*(x.numpy() for x in rows))
        bench.torch_step(trainer, rows)
    named = list(trainer.agent.actor.named_parameters()) + list(trainer.agent.critic.named_parameters())
    theirs = np.concatenate([p.detach().numpy().ravel() for _, p in named])
    moved = np.abs(theirs - start).max()
    assert moved > 0
    assert np.abs(ours.flat - theirs).max() < 1e-3 * moved
    assert ours.tensors()["actor.log_std"] == pytest.approx(named[0][1].detach().numpy(), abs=1e-3 * moved)


def test_a_step_that_ignores_the_clipping_is_caught(bench):
    """The comparison can fail: a NumPy step whose gradient ignores the ratio and value clipping
    (a plausible slip) leaves the tolerance the test above holds, on the same perturbed minibatch."""
    trainer, batch, slices = bench.rollout_batch("baseline", bench.QUICK)
    rows = _perturbed(bench._minibatch(batch, slices[0]), 0)
    trainer.agent.optimizer.state.clear()
    ours = bench.numpy_step_for(trainer)
    ours.cfg = dataclasses.replace(ours.cfg, clip_coef=1e9)  # every ratio and value step "inside"
    ours.loss_and_grad(*(x.numpy() for x in rows))
    ours.clip_and_step()
    bench.torch_step(trainer, rows)
    named = list(trainer.agent.actor.parameters()) + list(trainer.agent.critic.parameters())
    theirs = np.concatenate([p.grad.numpy().ravel() for p in named])
    assert np.abs(ours.grad - theirs).max() / np.abs(theirs).max() > 1e-3


def test_quick_run_prints_the_table_and_the_cpu(bench):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = bench.main(["--quick", "--repeats", "1"])
    text = out.getvalue()
    assert "numerics pinned" in text and "| NumPy, rational tanh" in text and "whole iteration" in text
    assert result["eager_ms"] > 0 and result["numpy_ms"] > 0 and result["rational_ms"] > 0
    assert all(c["grad_rel"] < 1e-5 for c in result["checks"].values())
