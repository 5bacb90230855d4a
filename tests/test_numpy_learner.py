"""model/numpy_learner.py inside training (`train.learner: numpy`): an iteration logs what torch's
logs, a checkpoint resumes bit for bit, Adam's state lives in the torch optimizer, and a CUDA
update is refused before anything is built. The step's numbers against torch's autograd, and its
pinning, are tests/test_numpy_update.py's (the benchmark imports this module's step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.params import load_params
from tests.helpers import same_bits

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
        assert same_bits(p["exp_avg"], q["exp_avg"]) and same_bits(p["step"], q["step"])


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


@pytest.mark.parametrize("algo", ["barriernet", "cbf_beta"])
def test_the_update_gathers_minibatches_from_arrays_with_no_stride_zero(algo, monkeypatch):
    """An expanded (stride-0) array made every minibatch's `np.take` about 30x slower (BarrierNet's
    bound rows are one row expanded: docs/TOOLCHAIN.md); the update makes such arrays contiguous
    once. Every array it gathers from must have no zero stride, and BarrierNet's did have one."""
    gathered = []
    original = np.take

    def spy(a, indices, *args, **kwargs):
        gathered.append(np.asarray(a).strides)
        return original(a, indices, *args, **kwargs)

    trainer = _trainer(algo, "numpy")
    inputs = []
    real_inputs = type(trainer.actor).update_inputs

    def keep(actor, *args):  # what the actor hands the update, before the update copies it
        inputs.append(real_inputs(actor, *args))
        return inputs[-1]

    monkeypatch.setattr(type(trainer.actor), "update_inputs", keep)
    monkeypatch.setattr(np, "take", spy)
    trainer.train_one_update()
    assert len(gathered) >= 2 * QUICK["train.num_minibatches"] * 6, len(gathered)  # six rows arrays and more
    assert not [strides for strides in gathered if 0 in strides], gathered
    if algo == "barriernet":  # the case the copy is for: the actor hands over a stride-0 array
        assert any(0 in x.stride() for x in inputs[0].cbf_geometry), [x.stride() for x in inputs[0].cbf_geometry]


def _bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x).tobytes()


def test_barriernets_fused_loops_compute_the_numpy_expressions_bit_for_bit():
    """`_barriernet_head_values`, `_barrier_right_sides`, `_clamped_gaussian_log_prob`,
    `_barriernet_head_grads` and `_barriernet_raw_grads` against
    the NumPy expressions they replace (written out here, as `_BarrierNetPolicy` had them), byte
    for byte in float32: random values whose products round, solutions exactly on either bound,
    +0.0 and -0.0 against a bound of 0, NaN, and barriers both present and absent; a minibatch's
    size and an odd one (NumPy's vector loops and their scalar tails)."""
    rng = np.random.default_rng(3)
    for batch in (1024, 4099):
        _check_fused_loops(rng, batch)


def _check_fused_loops(rng, batch):
    from model.numpy_learner import (HALF_LOG_2PI, _barrier_right_sides, _barriernet_head_grads,
                                     _barriernet_head_values, _barriernet_raw_grads, _clamped_gaussian_log_prob)

    barriers, f32 = 6, np.float32
    raw_nominal = (rng.standard_normal((batch, 2)) * 3).astype(f32)
    raw_gamma = (rng.standard_normal((batch, barriers)) * 4).astype(f32)
    raw_gamma[::9, 0] = 200.0  # exp(-raw) underflows to 0: sig exactly 1
    t, decay = np.tanh(raw_nominal), np.exp(-raw_gamma)
    centre, half_range = np.array([0.5, 0.0], f32), np.array([0.5, 2.84], f32)
    gamma_min, gamma_span = f32(0.1), f32(0.9)
    nominal, sig, gamma = np.empty_like(t), np.empty_like(decay), np.empty_like(decay)
    _barriernet_head_values(t, decay, centre, half_range, gamma_min, gamma_span, nominal, sig, gamma)
    want_sig = 1.0 / (1.0 + decay)
    assert _bytes(nominal) == _bytes(centre + half_range * t) and _bytes(sig) == _bytes(want_sig)
    assert _bytes(gamma) == _bytes(gamma_min + gamma_span * want_sig)
    h_rows = rng.standard_normal((batch, barriers)).astype(f32)
    barrier_mask = rng.random((batch, barriers)) < 0.6
    b_bounds = rng.standard_normal((batch, 4)).astype(f32)
    right = np.empty((batch, barriers + 4), f32)
    dt = 0.05  # the env's step, a Python float in the policy
    _barrier_right_sides(gamma, h_rows, barrier_mask, b_bounds, f32(dt), right)
    want_right = np.concatenate((np.where(barrier_mask, (gamma / dt) * h_rows, 1.0).astype(f32), b_bounds), 1)
    assert _bytes(right) == _bytes(want_right)
    low, high = np.array([0.0, -2.84], f32), np.array([1.0, 2.84], f32)
    u = (rng.standard_normal((batch, 2)) * 2).astype(f32)
    u[::7, 0], u[1::7, 0], u[2::7, 1], u[3::7, 1] = high[0], low[0], high[1], low[1]  # ties with a bound
    u[4::7, 0], u[5::11, 0], u[6::13] = f32(-0.0), f32(0.0), np.nan
    sample = (rng.standard_normal((batch, 2)) * 1.3).astype(f32)
    sample[::17, 0] = f32(-0.0)
    std = np.array([0.173, 0.41], f32)
    log_std = np.log(std)

    z, clamp_grad, log_prob = np.empty((batch, 2), f32), np.empty((batch, 2), f32), np.empty(batch, f32)
    _clamped_gaussian_log_prob(u, high, low, sample, std, log_std, z, clamp_grad, log_prob)
    mean = np.maximum(np.minimum(u, high), low)
    want_grad = (np.where(u < high, 1.0, np.where(u == high, 0.5, 0.0))
                 * np.where(np.minimum(u, high) > low, 1.0, np.where(np.minimum(u, high) == low, 0.5, 0.0))).astype(f32)
    want_z = (sample - mean) / std
    want_log_prob = (-0.5 * want_z * want_z - np.log(std) - HALF_LOG_2PI).sum(1)
    assert _bytes(z) == _bytes(want_z) and _bytes(clamp_grad) == _bytes(want_grad)
    assert _bytes(log_prob) == _bytes(want_log_prob)
    assert {0.0, 0.5, 1.0} <= set(clamp_grad.ravel().tolist()) and np.isnan(log_prob).any()

    g = (rng.standard_normal(batch) * 1e-3).astype(f32)[:, None]
    grad_u = np.empty((batch, 2), f32)
    _barriernet_head_grads(g, z, std, clamp_grad, grad_u)
    assert _bytes(grad_u) == _bytes((g * z / std * clamp_grad).astype(f32))

    grad_f = rng.standard_normal((batch, 2)).astype(f32)
    grad_b = rng.standard_normal((batch, barriers + 4)).astype(f32)
    h = (rng.random((batch, barriers)) * 3 - 0.5).astype(f32)
    present = rng.random((batch, barriers)) < 0.7
    sig = rng.random((batch, barriers)).astype(f32)
    t = np.tanh(rng.standard_normal((batch, 2))).astype(f32)
    weights, half = np.array([1.0, 0.1], f32), np.array([0.5, 2.84], f32)
    gamma_span, dt = f32(0.9), f32(0.05)
    grad_nominal, grad_raw_nominal = np.empty((batch, 2), f32), np.empty((batch, 2), f32)
    grad_raw_gamma = np.empty((batch, barriers), f32)
    _barriernet_raw_grads(grad_f, grad_b, h, present, sig, t, weights, half, gamma_span, dt, grad_nominal,
                          grad_raw_nominal, grad_raw_gamma)
    want_gamma = np.where(present, grad_b[:, :barriers] * h, 0.0).astype(f32) / dt
    assert _bytes(grad_raw_gamma) == _bytes(want_gamma * gamma_span * sig * (1.0 - sig))
    want_nominal = -grad_f * weights
    assert _bytes(grad_nominal) == _bytes(want_nominal)
    assert _bytes(grad_raw_nominal) == _bytes(want_nominal * half * (1.0 - t * t))


def test_portable_log1p_is_within_a_few_ulps_of_float64s_log1p():
    """Against Python's math.log1p in float64 (another routine, at twice the precision), rounded
    to float32: over (-1, 0), tiny and large positive and negative arguments, and the specials."""
    import math

    from model.numpy_learner import portable_log1p

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 0, 20_000), np.exp(rng.uniform(-100, 20, 20_000)),
                        -np.exp(rng.uniform(-100, 0, 20_000)), [1e-45, -1e-45, 3e38, np.float32(-1 + 2**-24)]])
    x = x.astype(np.float32)
    ours = portable_log1p(x).astype(np.float64)
    exact = np.array([math.log1p(float(v)) for v in x])
    ulps = np.abs(ours - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 4.0, (x[ulps.argmax()], ours[ulps.argmax()], exact[ulps.argmax()])
    specials = portable_log1p(np.array([-1.0, np.inf, np.nan, 0.0, -0.0], np.float32))
    assert specials[0] == -np.inf and specials[1] == np.inf and np.isnan(specials[2])
    assert same_bits(torch.from_numpy(specials[3:]), torch.tensor([0.0, -0.0]))
    assert portable_log1p(np.zeros((3, 2), np.float32)).shape == (3, 2)


def test_a_cbf_beta_iteration_leaves_log1p_to_no_c_library(monkeypatch):
    """numpy's float32 log1p is the system libm's log1pf, which glibc 2.41 rounds differently from
    2.36 (a tiny CBF-Beta run's weights moved: tests/test_numerics.py). The rollout's and the
    update's Beta densities and gradients must go through `portable_log1p` instead."""
    trainer = _trainer("cbf_beta", "numpy")

    def refuse(*args, **kwargs):
        raise AssertionError("np.log1p reached: its float32 bits are the system libm's")

    monkeypatch.setattr(np, "log1p", refuse)
    trainer.train_one_update()  # the rollout (concentrations, log density), then the update's backward


def test_trigamma_is_scipys_polygamma_and_within_half_an_ulp_of_mpmath():
    """`trigamma` against scipy's polygamma(1, x) (the Hurwitz zeta, another algorithm) bit for bit
    on log-uniform float32 over its whole domain and at the series' switch, and against mpmath's
    psi(1, x) at 40 digits: within half a float32 ulp plus the float64 steps' round-off."""
    import mpmath
    from scipy import special

    from model.numpy_learner import TRIGAMMA_SHIFT, trigamma

    rng = np.random.default_rng(0)
    shift = np.float32(TRIGAMMA_SHIFT)
    edges = [1.0, np.nextafter(np.float32(1), np.float32(2)), np.nextafter(shift, np.float32(0)), shift,
             np.nextafter(shift, np.float32(20)), 2.0**24, np.finfo(np.float32).max]
    x = np.concatenate([np.exp(rng.uniform(0, np.log(3e38), 200_000)), rng.uniform(1, 12, 100_000), edges])
    x = x.astype(np.float32)
    ours = trigamma(x)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, special.polygamma(1, x)), x[ours != special.polygamma(1, x)][:5]
    with mpmath.workdps(40):  # mpmath's precision is global: set for this block only
        for value in np.concatenate([x[:150], x[-len(edges) - 50:]]):
            exact = mpmath.psi(1, mpmath.mpf(float(value)))
            ours_one = trigamma(np.float32(value))
            error = abs(mpmath.mpf(float(ours_one)) - exact)
            assert error <= 0.5000001 * float(np.spacing(ours_one)), (value, ours_one, exact)


def test_a_cbf_beta_iteration_with_an_entropy_bonus_computes_trigamma_without_scipy(monkeypatch):
    """scipy's polygamma took 1.26 ms of a (1024, 2) CBF-Beta minibatch with an entropy bonus; the
    update's entropy gradient must use `trigamma` (its values: the test above, and torch's
    autograd in tests/test_numpy_update.py)."""
    from scipy import special

    from tasks.train import Trainer

    params = load_params(overrides={**QUICK, "train.learner": "numpy", "train.per_algo.cbf_beta.ent_coef": 0.01})
    trainer = Trainer(params, "cbf_beta", 0, update_device="cpu")
    assert trainer.learner.step.cfg.ent_coef == 0.01

    def refuse(*args, **kwargs):
        raise AssertionError("scipy.special.polygamma reached")

    monkeypatch.setattr(special, "polygamma", refuse)
    before = _weights(trainer)
    trainer.train_one_update()
    assert not np.array_equal(before, _weights(trainer))
