"""model/numpy_learner.py inside training (`train.learner: numpy`): an iteration logs what torch's
logs, a checkpoint resumes bit for bit, Adam's state lives in the torch optimizer, and a CUDA
update is refused before anything is built. The step's numbers against torch's autograd, and its
pinning, are tests/test_numpy_update.py's (the benchmark imports this module's step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.params import load_params

QUICK = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2, "train.total_steps": 10**6}


def _trainer(algo: str, learner: str):
    from tasks.train import Trainer

    return Trainer(load_params(overrides={**QUICK, "train.learner": learner}), algo, 0, update_device="cpu")


def _weights(trainer) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in
                           list(trainer.actor.parameters()) + list(trainer.critic.parameters())])


@pytest.mark.parametrize("algo", ["baseline", "barriernet", "cbf_beta", "shielded"])
def test_an_iteration_logs_what_torchs_update_logs(algo):
    theirs = _trainer(algo, "torch").train_one_update()
    trainer = _trainer(algo, "numpy")  # re-seeds: the same rollout
    ours = trainer.train_one_update()
    keys = [k for k in theirs if k.startswith(("losses/", "grad/"))]
    assert "grad/actor_norm" in keys and set(keys) <= set(ours)
    for key in keys:  # the rational tanh and OpenBLAS round differently: 1e-3 is far above that
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-9), key
    state = trainer.optimizer.state[next(iter(trainer.actor.parameters()))]
    cfg = trainer.update_cfg
    assert int(state["step"]) == cfg.update_epochs * trainer.params.train.num_minibatches  # Adam's state in torch
    assert float(state["exp_avg_sq"].abs().sum()) > 0


@pytest.mark.parametrize("algo", ["baseline", "barriernet"])
def test_a_checkpoint_resumes_bit_for_bit(algo):
    straight = _trainer(algo, "numpy")
    for _ in range(3):
        straight.train_one_update()
    first = _trainer(algo, "numpy")
    first.train_one_update()
    state = first.state_dict()
    resumed = _trainer(algo, "numpy")
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.train_one_update()
    assert np.array_equal(_weights(resumed), _weights(straight))
    for p, q in zip(resumed.optimizer.state.values(), straight.optimizer.state.values()):
        assert torch.equal(p["exp_avg"], q["exp_avg"]) and torch.equal(p["step"], q["step"])


def test_the_numpy_learner_moves_the_weights_differently_from_torchs():
    """The choice is real: the same iteration with the other learner gives other bits (close ones)."""
    torch_trainer, numpy_trainer = _trainer("baseline", "torch"), None
    torch_trainer.train_one_update()
    numpy_trainer = _trainer("baseline", "numpy")
    numpy_trainer.train_one_update()
    a, b = _weights(torch_trainer), _weights(numpy_trainer)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_cuda_update_is_refused_before_anything_is_built(monkeypatch):
    import tasks.train as train

    monkeypatch.setattr(train, "resolve_device", lambda name: torch.device("cpu" if name in ("cpu", "auto") else name))
    with pytest.raises(ValueError, match=r"train\.learner=numpy runs the update on the CPU.*train\.update_device=cpu"):
        train.Trainer(load_params(overrides={**QUICK, "train.learner": "numpy"}), "baseline", 0, update_device="cuda")


def test_an_unknown_learner_is_refused_by_the_params():
    from tasks.params import ParamsError

    with pytest.raises(ParamsError, match="train.learner"):
        load_params(overrides={"train.learner": "jax"})


@pytest.mark.parametrize("override", [{"cbf.form": "ct"}, {"barriernet.update_mode": "nominal"}])
def test_a_barriernet_the_numpy_step_does_not_cover_trains_with_torchs_learner(override, caplog):
    from tasks.train import Trainer

    """BarrierNet settings without a NumPy step (other CBF forms, other update modes) train with
    torch's learner and the torch forwards, say so in the log, and record it as the cell's learner."""
    from model.numpy_learner import not_covered

    params = load_params(overrides={**QUICK, "train.learner": "numpy", **override})
    with caplog.at_level("WARNING"):
        trainer = Trainer(params, "barriernet", 0, update_device="cpu")
    assert trainer.learner is None and trainer.learner_name == "torch"
    assert "torch's learner trains this cell" in caplog.text and not_covered(trainer.actor) in caplog.text
    assert "forward" not in vars(trainer.rollout_actor) and "forward" not in vars(trainer.rollout_critic)
    assert trainer.train_one_update()["losses/approx_kl"] >= 0
    assert not_covered(_trainer("barriernet", "numpy").actor) is None


def test_the_numpy_and_torch_routes_share_one_compiled_qp_loop(monkeypatch):
    """Both learners hand `cpu_n2_kernels.solve_batch` arrays of the same numba types, so a fresh
    cache compiles the loop once, not once per route (a read-only H made a second one)."""
    import numba

    from model.qp import cpu_n2_kernels

    seen = set()
    original = cpu_n2_kernels.solve_batch

    def spy(*args):
        seen.add(tuple(str(numba.typeof(a)) for a in args))
        return original(*args)

    monkeypatch.setattr(cpu_n2_kernels, "solve_batch", spy)
    for learner in ("torch", "numpy"):
        _trainer("barriernet", learner).train_one_update()
    assert len(seen) == 1, seen
