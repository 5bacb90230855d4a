"""Shared-GPU hygiene without a GPU: the headroom wait with a fake memory probe, the rollout's
host-copy count on the sync-free (CUDA) code path run on the CPU, and CUDA-only cases that skip."""

from __future__ import annotations

import pytest
import torch

from tasks.gpu import GPUHeadroomTimeout, wait_for_headroom
from tasks.params import GPUParams, load_params
from tasks.train import NonFiniteError, Trainer

MB = 2**20
CUDA = torch.device("cuda")


class FakeClock:
    """Deterministic time: `sleep` advances it."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_headroom_wait_returns_when_memory_frees_up():
    clock = FakeClock()
    free = iter([100, 300, 900, 2048])  # MB free at successive polls
    progress = []
    gpu = GPUParams(min_free_mb=1000, poll_seconds=5, wait_timeout_seconds=60)
    result = wait_for_headroom(gpu, CUDA, probe=lambda d: (next(free) * MB, 4096 * MB), sleep=clock.sleep,
                               clock=clock, on_progress=lambda f, w: progress.append((f, w)), cuda_available=True)
    assert result.status == "ready" and result.polls == 4 and result.free_mb == 2048
    assert clock.sleeps == [5, 5, 5] and result.waited_seconds == 15
    assert [f for f, _ in progress] == [100, 300, 900, 2048]


def test_headroom_wait_times_out_then_fails_or_falls_back():
    gpu_fail = GPUParams(min_free_mb=1000, poll_seconds=10, wait_timeout_seconds=30, on_timeout="fail")
    clock = FakeClock()
    with pytest.raises(GPUHeadroomTimeout, match=r"only 57 MB free after waiting 30 s; gpu.min_free_mb=1000"):
        wait_for_headroom(gpu_fail, CUDA, probe=lambda d: (57 * MB, 4096 * MB), sleep=clock.sleep, clock=clock,
                          cuda_available=True)
    assert clock.sleeps == [10, 10, 10]
    gpu_fallback = gpu_fail.model_copy(update={"on_timeout": "fallback_cpu"})
    clock = FakeClock()
    result = wait_for_headroom(gpu_fallback, CUDA, probe=lambda d: (57 * MB, 4096 * MB), sleep=clock.sleep,
                               clock=clock, cuda_available=True)
    assert result.status == "fallback_cpu" and result.waited_seconds == 30


def test_headroom_wait_does_nothing_without_cuda():
    def probe(device):
        raise AssertionError("must not probe without CUDA")

    result = wait_for_headroom(GPUParams(), torch.device("cpu"), probe=probe)
    assert result.status == "no_cuda"
    result = wait_for_headroom(GPUParams(), CUDA, probe=probe, cuda_available=False)
    assert result.status == "no_cuda"


TINY = {"train.num_envs": 8, "train.rollout_steps": 16, "train.num_minibatches": 2, "train.update_epochs": 1,
        "train.total_steps": 512, "train.seeds": [0], "env.max_steps": 20,
        "train.learner": "torch"}  # the CUDA paths are torch's (the NumPy learner runs on the CPU)


class HostTransferCounter:
    """Counts the tensor methods that copy device data to the host (or wait on it) on CUDA."""

    NAMES = ("cpu", "numpy", "item", "tolist", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))
        original_to = torch.Tensor.to

        def counting_to(tensor, *args, **kwargs):
            target = kwargs.get("device", args[0] if args else None)
            if isinstance(target, (str, torch.device)) and torch.device(target).type != tensor.device.type:
                self.calls.append("to(device)")
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", counting_to)

    def _wrap(self, name, original):
        def wrapper(tensor, *args, **kwargs):
            self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return wrapper


@pytest.mark.parametrize("algo", ["baseline", "barriernet"])
def test_rollout_makes_no_host_copies_per_env_step(monkeypatch, algo):
    """The sync-free (CUDA) rollout path, run on the CPU: host transfers per rollout do not grow
    with the number of env steps (zero per step)."""
    from model.qp import routing

    # On CUDA the QP runs its sync-free torch path; force that route here (the CPU route is a
    # host-memory speed-up that CUDA never takes).
    monkeypatch.setattr(routing, "FORCED_ROUTE", "reference_sync_free")
    counts = {}
    for steps in (16, 32):
        params = load_params(overrides={**TINY, "train.rollout_steps": steps})
        trainer = Trainer(params, algo, 0, sync_free=True)
        with monkeypatch.context() as patch:
            counter = HostTransferCounter(patch)
            trainer.collect_rollout()
        counts[steps] = list(counter.calls)
    assert counts[16] == counts[32], counts
    assert len(counts[16]) <= 3, counts[16]  # the rollout's statistics + its NaN check


def test_sync_free_path_still_names_nan_step_and_env(monkeypatch):
    params = load_params(overrides=TINY)
    trainer = Trainer(params, "baseline", 0, sync_free=True)
    real_step = trainer.core.step
    calls = {"n": 0}

    def poisoned(action):
        obs, reward, term, trunc, info = real_step(action)
        calls["n"] += 1
        if calls["n"] == 3:
            reward = reward.clone()
            reward[5] = float("inf")
        return obs, reward, term, trunc, info

    monkeypatch.setattr(trainer.core, "step", poisoned)
    with pytest.raises(NonFiniteError, match=r"rollout step 2\), env index 5"):
        trainer.collect_rollout()


def test_sync_free_and_syncing_rollouts_agree():
    params = load_params(overrides=TINY)
    a = Trainer(params, "barriernet", 0, sync_free=True)
    a.collect_rollout()
    b = Trainer(params, "barriernet", 0, sync_free=False)
    b.collect_rollout()
    for name in ("obs", "sample", "action", "reward", "final_value", "terminated", "truncated"):
        assert torch.equal(getattr(a.buffer, name), getattr(b.buffer, name)), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("algo", ["barriernet", "cbf_beta", "shielded", "baseline"])
@pytest.mark.parametrize("rollout_device", ["cpu", "cuda"])
def test_cuda_training_hybrid_and_all_gpu(tmp_path, monkeypatch, rollout_device, algo):
    from tasks.train import run

    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "state"))
    params = load_params(overrides={**TINY, "train.update_device": "cuda", "train.rollout_device": rollout_device})
    summary = run(params, tmp_path, algo, 0)
    assert summary["update_device"].startswith("cuda") and summary["gpu_headroom"] == "ready"
    trainer = Trainer(params, algo, 0)
    if rollout_device == "cpu":  # the rollout copy never holds CUDA tensors
        assert all(p.device.type == "cpu" for p in trainer.rollout_actor.parameters())
    assert all(p.device.type == "cuda" for p in trainer.actor.parameters())
