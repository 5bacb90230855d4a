"""The training code that only a CUDA machine takes, forced on the CPU and checked against the CPU's
own path (the second implementation): CI has no GPU, and `tests/test_gpu.py`'s CUDA cases skip.

- The hybrid split: with the update on another device than the rollout, the trainer keeps a
  rollout copy of the actor and critic and refreshes it after every update and after a resume
  (`PPOAgent.sync_rollout_copy`). Here the update runs on ``cpu:0``, a device torch does not
  equal to ``cpu``, so the trainer takes that branch; its training must equal, bit for bit, the
  trainer whose rollout and update share one module.
- Mixed precision: on CUDA the update scales the loss by a `GradScaler`, unscales the gradients
  before the gradient probe and the clipping, and runs the forward under `torch.autocast`. Here a
  CPU `GradScaler` (the same class, the same code in `model/ppo.py`) is handed to the trainer.
  With autocast turned off, a power-of-two scale is exact, so the update must equal the
  float32 update bit for bit, the probe's gradient curves included; with CPU autocast on
  (bfloat16), the update must stay finite and near the float32 one.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tasks.params import load_params
from tasks.train import Trainer
from tests.helpers import same_bits

TINY = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2, "train.total_steps": 10**6}
SCALE = 2.0**10  # a power of two: scaling and unscaling float32 gradients are exact
ALGOS = ["baseline", "barriernet", "cbf_beta", "shielded"]


def _trainer(algo: str, learner: str, update_device: str = "cpu") -> Trainer:
    """A tiny trainer; its constructor re-seeds torch's global generator, so build one, run it,
    then build the next."""
    return Trainer(load_params(overrides={**TINY, "train.learner": learner}), algo, 0, update_device=update_device)


def _curves(stats: list[dict[str, float]]) -> list[dict[str, float]]:
    """The logged curves without the timings."""
    return [{k: v for k, v in s.items() if not k.startswith("perf/")} for s in stats]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(same_bits(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------
# The hybrid split: a rollout copy beside the env, refreshed from the learner


@pytest.mark.parametrize("learner", ["numpy", "torch"])
@pytest.mark.parametrize("algo", ALGOS)
def test_a_separate_rollout_copy_trains_like_one_shared_module(learner, algo):
    shared = _trainer(algo, learner)
    assert shared.rollout_actor is shared.actor
    expected = _curves([shared.train_one_update() for _ in range(3)])

    split = _trainer(algo, learner, update_device="cpu:0")
    assert split.rollout_actor is not split.actor and split.rollout_critic is not split.critic
    got = _curves([split.train_one_update() for _ in range(3)])

    assert got == expected
    assert same_bits(split.buffer.obs, shared.buffer.obs) and same_bits(split.buffer.sample, shared.buffer.sample)
    assert _same_weights(split.actor, shared.actor) and _same_weights(split.critic, shared.critic)
    # the copy the next rollout reads holds the updated weights
    assert _same_weights(split.rollout_actor, split.actor) and _same_weights(split.rollout_critic, split.critic)


def test_a_resumed_rollout_copy_continues_like_an_uninterrupted_run():
    """The rollout right after a resume must read the checkpoint's weights, not the fresh init."""
    whole = _trainer("barriernet", "numpy", update_device="cpu:0")
    for _ in range(2):
        whole.train_one_update()
    state = copy.deepcopy(whole.state_dict())  # what a checkpoint file holds: not the live tensors
    expected = _curves([whole.train_one_update()])

    resumed = _trainer("barriernet", "numpy", update_device="cpu:0")
    assert not _same_weights(resumed.rollout_actor, whole.actor)  # fresh weights before the load
    resumed.load_state_dict(state)
    assert _curves([resumed.train_one_update()]) == expected
    assert _same_weights(resumed.actor, whole.actor) and same_bits(resumed.buffer.obs, whole.buffer.obs)


# ---------------------------------------------------------------------------------------------
# Mixed precision: the GradScaler branch of the update


def _with_scaler(trainer: Trainer, monkeypatch) -> list[int]:
    """Give `trainer` a CPU GradScaler where the CUDA trainer holds its own (the update, the probe
    and the checkpoint read it); returns a list that counts the scaled backward passes."""
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    trainer.scaler = trainer.agent.scaler = trainer.probe.scaler = scaler
    calls = []
    scale = scaler.scale
    monkeypatch.setattr(scaler, "scale", lambda loss: calls.append(1) or scale(loss))
    return calls


@pytest.mark.parametrize("algo", ALGOS)
def test_the_scaled_update_without_autocast_is_the_float32_update(algo, monkeypatch):
    plain = _trainer(algo, "torch")
    expected = _curves([plain.train_one_update() for _ in range(2)])

    scaled = _trainer(algo, "torch")
    calls = _with_scaler(scaled, monkeypatch)
    autocast = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, enabled=True, **kw: autocast(device_type, enabled=False))
    got = _curves([scaled.train_one_update() for _ in range(2)])

    tp = scaled.params.train
    assert len(calls) == 2 * tp.update_epochs * tp.num_minibatches  # every minibatch took the scaler branch
    # the probe's grad/* curves too: it read the unscaled gradients, and clipping acted on them
    assert got == expected
    assert _same_weights(scaled.actor, plain.actor) and _same_weights(scaled.critic, plain.critic)
    assert scaled.scaler.get_scale() == SCALE  # no step was skipped as non-finite


def test_a_checkpoint_keeps_the_loss_scale(monkeypatch):
    trainer = _trainer("baseline", "torch")
    _with_scaler(trainer, monkeypatch)
    trainer.train_one_update()
    trainer.scaler.update(SCALE / 4)  # as after two skipped steps
    state = trainer.state_dict()

    resumed = _trainer("baseline", "torch")
    _with_scaler(resumed, monkeypatch)
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == SCALE / 4


@pytest.mark.parametrize("algo", ["barriernet", "cbf_beta"])
def test_the_scaled_update_under_cpu_autocast_stays_near_the_float32_update(algo, monkeypatch):
    """bfloat16 on the CPU (float16 on CUDA) around the networks; the safety layer stays float32
    (tests/test_actors.py). Loose bounds: bfloat16's products depend on the CPU's instructions."""
    plain = _trainer(algo, "torch")
    expected = _curves([plain.train_one_update() for _ in range(2)])

    mixed = _trainer(algo, "torch")
    calls = _with_scaler(mixed, monkeypatch)
    got = _curves([mixed.train_one_update() for _ in range(2)])

    assert calls and all(math.isfinite(v) for s in got for v in s.values())
    for name in ("losses/policy_loss", "losses/value_loss"):
        assert got[-1][name] == pytest.approx(expected[-1][name], abs=5e-3), name
    moved = max((a - b).abs().max().item() for a, b in zip(mixed.actor.state_dict().values(),
                                                           plain.actor.state_dict().values()))
    assert 0 < moved < 0.05  # bfloat16 changed the update, but only a little
