"""The PPO update as whole-array NumPy calls with a hand-derived backward (`train.learner: numpy`).

Why: an eager torch update dispatches about 300 small ATen ops per minibatch, each with its
autograd bookkeeping; at this project's sizes (two 64x64 tanh MLPs, minibatch 1,024, one thread)
that dispatch, not arithmetic, is the update's cost. One step written as NumPy calls on whole
arrays runs 2.2-2.7x faster per minibatch and whole training iterations 1.5-1.7x faster
(`benchmarks/numpy_update.py`, measured on a 2-core AMD EPYC), and five seeds of every algorithm
trained with it reach the same held-out capture and collision rates as the torch-trained ones
within the seed intervals (`benchmarks/numpy_learning.py`).

What it computes, per minibatch (`NumpyPPOStep`):

- the actor's log-probability of the stored samples and its backward, per policy:
  `GaussianActor` (tanh MLP, learned log-std; also inside `ShieldedActor`, whose QP only acts),
  `BarrierNetActor` in through_qp mode with the dcbf rows (heads, the rows' right sides
  gamma h / dt, the QP by the compiled loop of `model.qp.cpu_n2_kernels` with the NumPy full rule
  for what it cannot settle, the QP's implicit-function backward, the clamp to the action box with
  torch's tie gradients) or `CBFBetaActor` (softplus concentrations, the Beta density on the
  rollout's safe boxes, the Beta entropy; digamma from scipy.special, `trigamma` here);
- the `Critic`;
- the clipped surrogate, the clipped value loss and the entropy term of `model.ppo.ppo_losses`;
- global-norm clipping and Adam as torch's fused Adam computes them, on one flat vector of every
  parameter.

`NumpyLearner` runs a whole update: it copies the weights and Adam's moments and step count in
from the torch modules and optimizer, runs the epochs of shuffled minibatches (the permutation
drawn from the same generator as `ppo_update`), feeds the trainer's `GradientProbe` and returns
`ppo_update`'s statistics, then copies everything back. So checkpoints, resumes and the rollout
read the torch objects as before.

Numerics: its bits are not the torch learner's (OpenBLAS's products, `rational_tanh`), and every
piece is pinned by `tasks/numerics.py`: OpenBLAS's Haswell kernels, NumPy's AVX2 loops, numba's
Haswell target without fast-math, scipy.special's scalar C (tests/test_numpy_learner.py runs it
under host settings that change each of them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, vectorize
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# torch.nn.utils.clip_grad_norm_ divides by (total norm + this)
CLIP_EPS = 1e-6


# Eigen's generic_fast_tanh_float (Eigen/src/Core/MathFunctionsImpl.h): the clamp where the
# rational's float32 value reaches 1, and the coefficients of its odd numerator (P) and even
# denominator (Q) in x.
_TANH_CLAMP = np.float32(7.90531110763549805)
_TANH_TINY = np.float32(0.0004)  # below it tanh(x) rounds to x in float32
_P13, _P11, _P9 = np.float32(-2.76076847742355e-16), np.float32(2.00018790482477e-13), np.float32(-8.60467152213735e-11)
_P7, _P5, _P3 = np.float32(5.12229709037114e-08), np.float32(1.48572235717979e-05), np.float32(6.37261928875436e-04)
_P1 = np.float32(4.89352455891786e-03)
_Q6, _Q4 = np.float32(1.19825839466702e-06), np.float32(1.18534705686654e-04)
_Q2, _Q0 = np.float32(2.26843463243900e-03), np.float32(4.89352518554385e-03)


@vectorize(["float32(float32)"], cache=True)
def rational_tanh(x):  # pragma: no cover (numba)
    """tanh of a float32 array, elementwise, as Eigen computes it: clamp to +-7.9053, an odd
    degree-13 over an even degree-6 polynomial, one division; x itself below 4e-4. Horner in x^2,
    one rounding per operation (no fast-math), so the bits depend on neither the CPU nor the
    array's length (vector lanes and the scalar tail run the same operations). A few ulp from
    the true tanh, where ATen's is under one."""
    if abs(x) < _TANH_TINY:
        return x
    c = _TANH_CLAMP if x > _TANH_CLAMP else x
    c = -_TANH_CLAMP if c < -_TANH_CLAMP else c
    x2 = c * c
    p = x2 * _P13 + _P11
    p = p * x2 + _P9
    p = p * x2 + _P7
    p = p * x2 + _P5
    p = p * x2 + _P3
    p = p * x2 + _P1
    q = x2 * _Q6 + _Q4
    q = q * x2 + _Q2
    q = q * x2 + _Q0
    return (c * p) / q


def portable_log1p(x: np.ndarray) -> np.ndarray:
    """log(1 + x) of float32 x (any shape; x >= -1) without the C library's log1pf.

    Why: numpy hands float32 log1p to the system's libm, and glibc 2.41 replaced log1pf with a
    correctly rounded one (CORE-MATH) whose last bits differ from glibc 2.36's: a CBF-Beta run on
    Debian 13 left the weights a Debian 12 machine gives after two updates. So this uses only
    numpy's own float32 log (its SIMD loop on contiguous arrays, which the pin fixes to AVX2) and
    Goldberg's formula (What Every Computer Scientist Should Know About Floating-Point Arithmetic,
    theorem 4): with u = fl(1 + x), log1p(x) = x where u == 1, else log(u) x / (u - 1), within a
    few ulps wherever log is within one (tests/test_numpy_learner.py checks it against float64)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = np.float32(1.0) + x
    d = u - np.float32(1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = x / d  # 1 at +inf (log(u) is inf there already); the u == 1 elements are replaced
        ratio = np.where(np.isinf(x), np.float32(1.0), ratio)
        out = np.log(u) * ratio
    return np.where(d == 0, x, out)


# psi' past TRIGAMMA_SHIFT by its asymptotic series 1/z + 1/(2 z^2) + sum_k B_2k / z^(2k+1), B_2k
# the Bernoulli numbers 1/6, -1/30, 1/42, -1/30, 5/66, -691/2730, 7/6; the first term left out,
# B_16 / z^17, is 7e-16 of the sum at z = 10 (a few float64 ulps, far below float32's half ulp).
TRIGAMMA_SHIFT = 10.0


@vectorize(["float32(float32)"], cache=True)
def trigamma(x):  # pragma: no cover (numba)
    """psi'(x) = d^2/dx^2 log Gamma(x) of float32 x >= 1 (any shape), computed in float64 and
    rounded once to float32: psi'(x) = 1/x^2 + psi'(x + 1) until x >= TRIGAMMA_SHIFT, then the
    asymptotic series. The recurrence adds positive terms and the series' alternating ones are
    small against its leading 1/z, so nothing cancels; only + - * /, so the bits depend on no C
    library and no CPU. Why not scipy's `polygamma(1, x)`: it is a Python function that computes
    psi, gamma and the Hurwitz zeta in float64 at about 200 ns an element (420 us for a (1024, 2)
    minibatch, three per CBF-Beta minibatch with an entropy bonus: CBF-Beta trained at 0.54x the
    baseline's speed against 0.68x without), and its zeta calls libm's pow. Equal to scipy's
    float32 polygamma(1, x) on every float32 x in [1, 3.4e38) (benchmarks/trigamma_exhaustive.py;
    tests/test_numpy_learner.py checks a sample and mpmath)."""
    z = np.float64(x)
    shifted = 0.0
    while z < TRIGAMMA_SHIFT:
        shifted += 1.0 / (z * z)
        z += 1.0
    w = 1.0 / (z * z)
    series = 1.0 / 6.0 - w * (1.0 / 30.0 - w * (1.0 / 42.0 - w * (1.0 / 30.0 - w * (5.0 / 66.0 - w * (
        691.0 / 2730.0 - w * (7.0 / 6.0))))))
    return np.float32(shifted + (1.0 + (0.5 + series / z) / z) / z)


@njit(cache=True)
def _clamped_gaussian_log_prob(u, high, low, sample, std, log_std, z, clamp_grad, log_prob):  # pragma: no cover
    """numba, float32 throughout: BarrierNet's update score of the stored samples around the QP's
    clamped solution, the NumPy expressions of `_BarrierNetPolicy` (kept in the test as the
    reference) fused into one pass over the minibatch, one rounding per operation in their order:

        mean = maximum(minimum(u, high), low)          (as NumPy's SIMD loops: a tie gives the bound,
                                                        so -0.0 against a bound of +0.0 gives +0.0)
        clamp_grad = torch's gradient of that clamp    (1 inside, 1/2 on a tie with a bound, else 0)
        z = (sample - mean) / std
        log_prob = sum_d ((-1/2 z_d) z_d - log_std_d) - HALF_LOG_2PI

    u, sample (B, 2); high, low, std, log_std (2,) (log_std: NumPy's log of std, computed outside:
    numba's log is not NumPy's); writes z, clamp_grad (B, 2) and log_prob (B,)."""
    half_log_2pi = np.float32(HALF_LOG_2PI)
    minus_half = np.float32(-0.5)
    for i in range(u.shape[0]):
        total = np.float32(0.0)
        for d in range(2):
            x, hi, lo = u[i, d], high[d], low[d]
            upper = x if (x < hi or x != x) else hi
            mean = upper if (upper > lo or upper != upper) else lo
            g_hi = np.float32(1.0) if x < hi else (np.float32(0.5) if x == hi else np.float32(0.0))
            g_lo = np.float32(1.0) if upper > lo else (np.float32(0.5) if upper == lo else np.float32(0.0))
            clamp_grad[i, d] = g_hi * g_lo
            zd = (sample[i, d] - mean) / std[d]
            z[i, d] = zd
            term = (minus_half * zd) * zd - log_std[d] - half_log_2pi
            total = term if d == 0 else total + term
        log_prob[i] = total


@njit(cache=True)
def _barriernet_head_grads(grad_log_prob, z, std, clamp_grad, grad_u):  # pragma: no cover
    """numba, float32: d loss / d u (B, 2) = ((g z) / std) clamp_grad into grad_u, g = grad_log_prob (B, 1)."""
    for i in range(z.shape[0]):
        g = grad_log_prob[i, 0]
        for d in range(2):
            grad_u[i, d] = ((g * z[i, d]) / std[d]) * clamp_grad[i, d]


@njit(cache=True)
def _barriernet_raw_grads(grad_f, grad_b, h, barrier_mask, sig, t, weights, half, gamma_span, dt, grad_nominal,
                          grad_raw_nominal, grad_raw_gamma):  # pragma: no cover
    """numba, float32, the NumPy expressions of `_BarrierNetPolicy.backward` in their order: from
    the QP's gradients grad_f (B, 2) and grad_b (B, m) to the heads' raw outputs,

        grad_gamma = (barrier_mask ? grad_b[:, :M] h : 0) / dt              (B, M)
        grad_raw_gamma = ((grad_gamma gamma_span) sig) (1 - sig)            (the sigmoid's derivative)
        grad_nominal = (-grad_f) weights                                    (B, 2)
        grad_raw_nominal = (grad_nominal half) (1 - t t)                    (the tanh's derivative)

    h, barrier_mask, sig (B, M); t (B, 2); weights, half (2,); gamma_span, dt float32 scalars."""
    one = np.float32(1.0)
    for i in range(grad_f.shape[0]):
        for k in range(h.shape[1]):
            g = grad_b[i, k] * h[i, k] if barrier_mask[i, k] else np.float32(0.0)
            s = sig[i, k]
            grad_raw_gamma[i, k] = (((g / dt) * gamma_span) * s) * (one - s)
        for d in range(2):
            gn = (-grad_f[i, d]) * weights[d]
            grad_nominal[i, d] = gn
            grad_raw_nominal[i, d] = (gn * half[d]) * (one - t[i, d] * t[i, d])


@njit(cache=True)
def _barriernet_head_values(t, decay, centre, half, gamma_min, gamma_span, nominal, sig, gamma):  # pragma: no cover
    """numba, float32: BarrierNet's heads from t = tanh(raw nominal) (B, 2) and decay =
    exp(-raw gamma) (B, M) (both NumPy's or the learner's own ufuncs, computed outside), the NumPy
    expressions in their order: nominal = centre + half t, sig = 1 / (1 + decay), gamma =
    gamma_min + gamma_span sig. centre, half (2,); gamma_min, gamma_span float32 scalars."""
    one = np.float32(1.0)
    for i in range(t.shape[0]):
        for d in range(2):
            nominal[i, d] = centre[d] + half[d] * t[i, d]
        for k in range(decay.shape[1]):
            s = one / (one + decay[i, k])
            sig[i, k] = s
            gamma[i, k] = gamma_min + gamma_span * s


@njit(cache=True)
def _barrier_right_sides(gamma, h, barrier_mask, b_bounds, dt, b):  # pragma: no cover
    """numba, float32: the QP's right sides b (B, M + 4): (gamma / dt) h on the present barrier
    rows, 1 on absent ones, then the bound rows' b_bounds (B, 4); gamma, h, barrier_mask (B, M),
    dt a float32 (NumPy divided by the float32 of the Python float)."""
    barriers = h.shape[1]
    for i in range(h.shape[0]):
        for k in range(barriers):
            b[i, k] = (gamma[i, k] / dt) * h[i, k] if barrier_mask[i, k] else np.float32(1.0)
        for j in range(b_bounds.shape[1]):
            b[i, barriers + j] = b_bounds[i, j]


def _linears(module: nn.Module) -> list[nn.Linear]:
    """The nn.Linear layers of an MLP in forward order (hidden layers, then the head)."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _forward(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], tanh=np.tanh) -> list[np.ndarray]:
    """x (B, D) through Linear + tanh layers and a linear head: [x, h1, ..., h_L, head output].
    tanh: a ufunc (np.tanh or `rational_tanh`)."""
    acts = [x]
    for i, (weight, bias) in enumerate(layers):
        z = acts[-1] @ weight.T
        z += bias
        # a new array, not out=z: numba's ufunc copies an aliased output first (5x slower)
        acts.append(tanh(z) if i < len(layers) - 1 else z)
    return acts


def _backward(acts: list[np.ndarray], grad_out: np.ndarray, layers, grads) -> None:
    """Fill grads [(grad_weight, grad_bias)] of `_forward`'s layers from grad_out (B, out), the
    gradient of the head's output; the observation gets no gradient."""
    g = grad_out
    for i in reversed(range(len(layers))):
        grad_weight, grad_bias = grads[i]
        np.matmul(g.T, acts[i], out=grad_weight)
        np.sum(g, axis=0, out=grad_bias)
        if i:
            g = g @ layers[i][0]
            h = acts[i]  # tanh output feeding layer i
            g *= 1.0 - h * h


class _GaussianPolicy:
    """`GaussianActor.evaluate_actions` and its backward: physical mean = centre + half tanh(raw),
    std = half exp(log_std) (a parameter); the entropy's gradient reaches log_std."""

    def __init__(self, step: "NumpyPPOStep", actor):
        self.step = step
        self.layers, self.grads = step.layers_of(actor)
        self.log_std, self.log_std_grad = step.views[id(actor.log_std)]
        self.centre = actor.action_centre.cpu().numpy().astype(np.float32)
        self.half = actor.action_half_range.cpu().numpy().astype(np.float32)

    def log_prob(self, obs, sample, extra) -> tuple[np.ndarray, float]:
        """log_prob (B,) of the stored samples and the (per-state constant) entropy; keeps what
        `backward` needs."""
        self.acts = _forward(obs, self.layers, self.step.tanh)
        self.t = self.step.tanh(self.acts[-1])
        mean = self.centre + self.half * self.t
        self.std = self.half * np.exp(self.log_std)
        log_std_phys = np.log(self.std)
        self.z = (sample - mean) / self.std
        return (-0.5 * self.z * self.z - log_std_phys - HALF_LOG_2PI).sum(1), float((0.5 + HALF_LOG_2PI + log_std_phys).sum())

    def backward(self, grad_log_prob: np.ndarray, grad_entropy: float) -> None:
        """grad_log_prob (B, 1), grad_entropy (d loss / d entropy) -> the actor's gradients."""
        grad_raw = grad_log_prob * self.z / self.std * self.half * (1.0 - self.t * self.t)  # d log_prob / d mean = z / std
        self.log_std_grad[:] = (grad_log_prob * (self.z * self.z - 1.0)).sum(0) + grad_entropy
        _backward(self.acts, grad_raw.astype(np.float32), self.layers, self.grads)


class ProjectionQP:
    """The safety layer's QP on NumPy float32 arrays, as `solve_qp` solves it on the CPU (the
    compiled loop of `model.qp.cpu_n2_kernels`, the NumPy full rule for what it cannot settle),
    without the tensor plumbing: min 1/2 (u - u_ref)' W (u - u_ref) s.t. A u <= b on the rows with
    mask True, W = diag(weights). BarrierNet's update and rollout and the shield's rollout call it
    a few hundred times per iteration, so W's (B, 2, 2) copy is kept per batch size."""

    def __init__(self, weights: np.ndarray):
        from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL

        self.weights = np.asarray(weights, np.float32)
        self.tolerances = (FEAS_TOL[torch.float32], TIE_REL[torch.float32], SINGULAR_TOL[torch.float32])
        self.no_hint = np.full((1, 2), -1, np.int64)
        self._H: dict[int, np.ndarray] = {}

    def _hessians(self, batch: int) -> np.ndarray:
        # W for every row, C-contiguous as `cpu_n2_kernels.contiguous` hands the torch route's H to
        # the loop: both routes share one compiled specialization. The loop only reads it.
        H = self._H.get(batch)
        if H is None:
            H = self._H[batch] = np.ascontiguousarray(np.broadcast_to(np.diag(self.weights), (batch, 2, 2)))
        return H

    def __call__(self, u_ref, A, mask, b, hint) -> tuple[np.ndarray, ...]:
        """u_ref (B, 2), A (B, m, 2), mask (B, m) bool, b (B, m) float32; hint (B, 2) int64 (an
        earlier solve's active set: a warm start) or None. Returns u, lam (B, 2), Y, K (B, 2, 2)
        float32, active (B, 2) int64, inv_norm (B, 2) float32, feasible (B,) bool."""
        from model.qp import cpu_numpy
        from model.qp.cpu_n2_kernels import allocate_outputs, contiguous, solve_batch

        batch, m = mask.shape
        H = self._hessians(batch)
        f = -u_ref * self.weights
        out = allocate_outputs(batch, m)
        u, lam, used, Y, K, active, inv_norm, lam_rows, passed = out
        has_hint = hint is not None
        solve_batch(H, *contiguous(f, A, b, mask), True, *contiguous(hint if has_hint else self.no_hint),
                    has_hint, *self.tolerances, *out)
        u, lam, Y, K, inv_norm = (x.astype(np.float32) for x in (u, lam, Y, K, inv_norm))
        feasible = passed
        if not passed.all():  # what the compiled loop cannot settle: the NumPy full rule, as solve_qp does
            rest = np.flatnonzero(~passed)
            (active[rest], feasible[rest], _, u[rest], lam[rest], Y[rest], K[rest], inv_norm[rest], _) = \
                cpu_numpy.full_rule_rows(np.ascontiguousarray(H[rest]), f[rest], A[rest], b[rest], mask[rest],
                                         torch.float32)
        return u, lam, Y, K, active, inv_norm, feasible


class _BarrierNetPolicy:
    """`BarrierNetActor.evaluate_actions` (through_qp, rows from the update's CBF geometry) and its
    backward: nominal = centre + half tanh(raw), gamma = gamma_min + (gamma_max - gamma_min)
    sigmoid(raw'); the barrier rows' right sides gamma h / dt; mean = the QP's solution (the
    compiled loop of `model.qp.cpu_n2_kernels`, the NumPy full rule for what it cannot settle;
    its implicit-function backward `backward_batch`), clamped to the action box; fixed std."""

    def __init__(self, step: "NumpyPPOStep", actor):
        from model.qp.cpu_n2_kernels import backward_batch

        if actor.update_mode != "through_qp" or actor.cbf_params.form != "dcbf":
            raise ValueError("the NumPy BarrierNet step covers barriernet.update_mode=through_qp with cbf.form=dcbf")
        self.step = step
        linears = _linears(actor)  # backbone, then the nominal head, then the gamma head
        backbone = linears[:-2]
        self.layers, self.grads = step.layers_of(actor, backbone)
        self.nominal_head, self.nominal_grad = step.layers_of(actor, [linears[-2]])
        self.gamma_head, self.gamma_grad = step.layers_of(actor, [linears[-1]])
        self.centre = actor.action_centre.cpu().numpy().astype(np.float32)
        self.half = actor.action_half_range.cpu().numpy().astype(np.float32)
        self.std = actor.std.cpu().numpy().astype(np.float32)
        bn = actor.barriernet_params
        self.gamma_min, self.gamma_span = np.float32(bn.gamma_min), np.float32(bn.gamma_max - bn.gamma_min)
        self.dt = actor.env_params.dt
        proj = actor.projection
        self.weights = proj.weights.cpu().numpy()
        self.low, self.high = proj.low.cpu().numpy(), proj.high.cpu().numpy()
        self.solve = ProjectionQP(self.weights)
        self.entropy = float((0.5 + HALF_LOG_2PI + np.log(self.std)).sum())
        self.log_std = np.log(self.std)  # NumPy's log, for `_clamped_gaussian_log_prob`
        self.dt32 = np.float32(self.dt)
        self.qp_backward = backward_batch  # the QP's implicit-function backward (an attribute: tests swap it)

    def heads(self, obs) -> tuple[np.ndarray, np.ndarray]:
        """obs (B, D) -> nominal (B, 2), gamma (B, M); keeps what `backward` needs."""
        self.acts = _forward(obs, self.layers, self.step.tanh)
        self.acts[-1] = self.step.tanh(self.acts[-1])  # the backbone ends in a tanh: its features
        features = self.acts[-1]
        raw_nominal = features @ self.nominal_head[0][0].T + self.nominal_head[0][1]
        raw_gamma = features @ self.gamma_head[0][0].T + self.gamma_head[0][1]
        self.t = self.step.tanh(raw_nominal)
        decay = np.exp(-raw_gamma)  # NumPy's exp (numba's is not the same function)
        nominal, self.sig, gamma = np.empty_like(self.t), np.empty_like(decay), np.empty_like(decay)
        _barriernet_head_values(self.t, decay, self.centre, self.half, self.gamma_min, self.gamma_span, nominal,
                                self.sig, gamma)
        return nominal, gamma

    def right_sides(self, gamma, h, barrier_mask, b_bounds) -> np.ndarray:
        """b (B, m): gamma h / dt on the present barrier rows, 1 on absent ones, then the bounds."""
        b = np.empty((h.shape[0], h.shape[1] + b_bounds.shape[1]), np.float32)
        _barrier_right_sides(gamma, h, barrier_mask, b_bounds, self.dt32, b)
        return b

    def log_prob(self, obs, sample, extra) -> tuple[np.ndarray, float]:
        A, mask, h, barrier_mask, b_bounds, hint = extra
        m = mask.shape[1]
        nominal, gamma = self.heads(obs)
        self.h, self.barrier_mask = h, barrier_mask
        u, lam, Y, K, active, inv_norm, _ = self.solve(nominal, A, mask, self.right_sides(gamma, h, barrier_mask, b_bounds), hint)
        self.saved = (u, lam, Y, K, active, inv_norm, m)
        batch = u.shape[0]
        self.z, self.clamp_grad = np.empty((batch, 2), np.float32), np.empty((batch, 2), np.float32)
        log_prob = np.empty(batch, np.float32)
        _clamped_gaussian_log_prob(u, self.high, self.low, sample, self.std, self.log_std, self.z, self.clamp_grad,
                                   log_prob)
        return log_prob, self.entropy

    def backward(self, grad_log_prob: np.ndarray, grad_entropy: float) -> None:
        u, lam, Y, K, active, inv_norm, m = self.saved
        batch = u.shape[0]
        grad_u = np.empty((batch, 2), np.float32)
        _barriernet_head_grads(grad_log_prob, self.z, self.std, self.clamp_grad, grad_u)
        grad_H, grad_f = np.empty((batch, 2, 2), np.float32), np.empty((batch, 2), np.float32)
        grad_A, grad_b = np.empty((batch, m, 2), np.float32), np.empty((batch, m), np.float32)
        self.qp_backward(grad_u, u, lam, Y, K, active, inv_norm, grad_H, grad_f, grad_A, grad_b)
        self.grad_nominal = np.empty((batch, 2), np.float32)  # d loss / d nominal (B, 2): GradientProbe's number
        grad_raw_nominal, grad_raw_gamma = np.empty((batch, 2), np.float32), np.empty(self.h.shape, np.float32)
        _barriernet_raw_grads(grad_f, grad_b, self.h, self.barrier_mask, self.sig, self.t, self.weights, self.half,
                              self.gamma_span, self.dt32, self.grad_nominal, grad_raw_nominal, grad_raw_gamma)
        features = self.acts[-1]
        (nominal_w, _), (gamma_w, _) = self.nominal_head[0], self.gamma_head[0]
        for (gw, gb), g in ((self.nominal_grad[0], grad_raw_nominal), (self.gamma_grad[0], grad_raw_gamma)):
            np.matmul(g.T, features, out=gw)
            np.sum(g, axis=0, out=gb)
        grad_features = grad_raw_nominal @ nominal_w + grad_raw_gamma @ gamma_w
        grad_features *= 1.0 - features * features  # through the backbone's last tanh
        _backward(self.acts, grad_features, self.layers, self.grads)


class _BetaPolicy:
    """`CBFBetaActor.evaluate_actions` and its backward: alpha = 1 + softplus(raw[:, :2]), beta =
    1 + softplus(raw[:, 2:]); log_prob = sum_d log Beta(x_d; alpha_d, beta_d) - log(box width)
    on feasible states (0 elsewhere; the widths are the rollout's boxes, constant in the
    parameters); entropy of the Beta, summed over d. digamma from scipy.special, `trigamma` (this module)."""

    def __init__(self, step: "NumpyPPOStep", actor):
        from model.cbf_beta import MIN_WIDTH_FRACTION

        self.step = step
        linears = _linears(actor)
        self.layers, self.grads = step.layers_of(actor, linears[:-1])
        self.head, self.head_grad = step.layers_of(actor, linears[-1:])
        self.floor = MIN_WIDTH_FRACTION * (actor.high - actor.low).double().numpy()

    def concentrations(self, obs) -> tuple[np.ndarray, np.ndarray]:
        """obs (B, D) -> alpha, beta (B, 2) float32, both > 1; keeps what `backward` needs."""
        self.acts = _forward(obs, self.layers, self.step.tanh)
        self.acts[-1] = self.step.tanh(self.acts[-1])  # the backbone ends in a tanh: its features
        raw = self.acts[-1] @ self.head[0][0].T + self.head[0][1]
        # torch's softplus (beta 1, threshold 20): x itself above 20
        soft = np.where(raw > 20, raw, portable_log1p(np.exp(np.minimum(raw, 20)))).astype(np.float32)
        self.raw = raw
        return 1.0 + soft[:, :2], 1.0 + soft[:, 2:]

    def log_density(self, a, b, sample, low, high, feasible) -> tuple[np.ndarray, np.ndarray]:
        """log_prob (B,) float32 of the samples x (B, 2) in (0, 1) on the boxes [low, high] (B, 2)
        float64 (0 on infeasible states, feasible (B,) bool) and log B(a, b) (B, 2): the rollout's
        forward (`model.numpy_rollout.cbf_beta_forward`) and the update score alike."""
        from scipy import special

        log_width = np.log(np.maximum(high - low, self.floor)).astype(np.float32).sum(-1)
        log_beta = special.gammaln(a) + special.gammaln(b) - special.gammaln(a + b)
        self.log_x, self.log_1m_x = np.log(sample), portable_log1p(-sample)  # the backward reads them too
        log_density = ((a - 1) * self.log_x + (b - 1) * self.log_1m_x - log_beta).sum(-1) - log_width
        return np.where(feasible, log_density, 0.0).astype(np.float32), log_beta

    def log_prob(self, obs, sample, extra) -> tuple[np.ndarray, np.ndarray]:
        from scipy import special

        low, high, feasible = extra
        a, b = self.concentrations(obs)
        self.a, self.b, self.feasible = a, b, feasible
        log_prob, log_beta = self.log_density(a, b, sample, low, high, feasible)
        psi_a, psi_b, psi_ab = special.digamma(a), special.digamma(b), special.digamma(a + b)
        self.psi = (psi_a, psi_b, psi_ab)
        entropy = log_beta - (a - 1) * psi_a - (b - 1) * psi_b + (a + b - 2) * psi_ab  # (B, 2)
        return log_prob, entropy.sum(-1)

    def backward(self, grad_log_prob: np.ndarray, grad_entropy: np.ndarray) -> None:
        """grad_log_prob (B, 1); grad_entropy (B,): d loss / d entropy of each state."""
        a, b = self.a, self.b
        psi_a, psi_b, psi_ab = self.psi
        gate = grad_log_prob * self.feasible[:, None]
        grad_a = gate * (self.log_x - psi_a + psi_ab)
        grad_b = gate * (self.log_1m_x - psi_b + psi_ab)
        if np.any(grad_entropy):  # dH/da = -(a - 1) psi'(a) + (a + b - 2) psi'(a + b), likewise b
            tri_a, tri_b, tri_ab = trigamma(a), trigamma(b), trigamma(a + b)
            g = grad_entropy[:, None]
            grad_a = grad_a + g * (-(a - 1) * tri_a + (a + b - 2) * tri_ab)
            grad_b = grad_b + g * (-(b - 1) * tri_b + (a + b - 2) * tri_ab)
        sigmoid = 1.0 / (1.0 + np.exp(-self.raw))  # softplus' derivative (1 above the threshold)
        sigmoid = np.where(self.raw > 20, 1.0, sigmoid)
        grad_raw = (np.concatenate((grad_a, grad_b), 1) * sigmoid).astype(np.float32)
        features = self.acts[-1]
        np.matmul(grad_raw.T, features, out=self.head_grad[0][0])
        np.sum(grad_raw, axis=0, out=self.head_grad[0][1])
        grad_features = grad_raw @ self.head[0][0]
        grad_features *= 1.0 - features * features
        _backward(self.acts, grad_features, self.layers, self.grads)


def not_covered(actor) -> str | None:
    """Why `NumpyPPOStep` has no step for `actor` (a sentence naming the settings), or None when
    it has one: the Gaussian policies, CBF-Beta and BarrierNet in through_qp mode with dcbf rows."""
    from model.actors import BarrierNetActor, GaussianActor, ShieldedActor
    from model.cbf_beta import CBFBetaActor

    if isinstance(actor, BarrierNetActor):
        if actor.update_mode != "through_qp" or actor.cbf_params.form != "dcbf":
            return (f"barriernet.update_mode={actor.update_mode} with cbf.form={actor.cbf_params.form}: the NumPy "
                    "learner covers BarrierNet with update_mode through_qp and form dcbf")
        return None
    if type(actor) in (GaussianActor, ShieldedActor, CBFBetaActor):
        return None
    return f"{type(actor).__name__}: the NumPy learner covers GaussianActor, ShieldedActor, BarrierNetActor, CBFBetaActor"


class NumpyPPOStep:
    """One PPO minibatch step of an actor (`GaussianActor`, `ShieldedActor`, `BarrierNetActor` or `CBFBetaActor`) and a `Critic`
    in NumPy (module docstring).

    The parameters (actor's, then critic's, in `named_parameters` order, as the trainer's Adam
    holds them) live in one flat float32 vector, their gradients and Adam's moments in three more,
    so clipping and Adam are a few whole-vector calls. Shapes: obs (B, D), sample (B, 2),
    old_log_prob, advantages, returns, old_value (B,); extra: what the policy's evaluate_actions
    reads besides (BarrierNet: the minibatch's CBF geometry A (B, m, 2), mask (B, m), h (B, M),
    barrier_mask (B, M), b_bounds (B, 4) and the QP hint (B, 2) int64; the baseline: nothing).
    """

    def __init__(self, actor, critic, cfg, lr: float, betas=(0.9, 0.999), eps: float = 1e-5, tanh=np.tanh):
        from model.actors import BarrierNetActor, GaussianActor, ShieldedActor
        from model.cbf_beta import CBFBetaActor

        named = ([(f"actor.{n}", p) for n, p in actor.named_parameters()]
                 + [(f"critic.{n}", p) for n, p in critic.named_parameters()])
        self.flat = np.concatenate([p.detach().cpu().numpy().astype(np.float32).ravel() for _, p in named])
        self.grad = np.zeros_like(self.flat)
        self.exp_avg, self.exp_avg_sq = np.zeros_like(self.flat), np.zeros_like(self.flat)
        self.steps = 0
        self.cfg, self.lr, self.betas, self.eps, self.tanh = cfg, float(lr), betas, eps, tanh
        self.views, offset = {}, 0
        for _, p in named:
            size = p.numel()
            self.views[id(p)] = (self.flat[offset:offset + size].reshape(p.shape),
                                 self.grad[offset:offset + size].reshape(p.shape))
            offset += size
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        # the shielded actor scores its samples by the Gaussian policy it wraps (the QP only acts)
        policies = {GaussianActor: _GaussianPolicy, BarrierNetActor: _BarrierNetPolicy, CBFBetaActor: _BetaPolicy,
                    ShieldedActor: lambda step, shielded: _GaussianPolicy(step, shielded.actor)}
        if type(actor) not in policies:
            raise ValueError(f"no NumPy step for {type(actor).__name__}; accepted: {', '.join(t.__name__ for t in policies)}")
        self.policy = policies[type(actor)](self, actor)
        self.critic_layers, self.critic_grads = self.layers_of(critic)

    def layers_of(self, module, linears=None):
        """[(weight, bias)] and [(grad_weight, grad_bias)] views of `module`'s nn.Linear layers
        (or of `linears`), in forward order."""
        linears = _linears(module) if linears is None else linears
        return ([(self.views[id(m.weight)][0], self.views[id(m.bias)][0]) for m in linears],
                [(self.views[id(m.weight)][1], self.views[id(m.bias)][1]) for m in linears])

    def loss_and_grad(self, obs, sample, old_log_prob, advantages, returns, old_value, extra=()) -> float:
        """The minibatch loss of `model.ppo.ppo_losses` (float) and its gradient in self.grad."""
        cfg, n = self.cfg, obs.shape[0]
        log_prob, entropy = self.policy.log_prob(obs, sample, extra)
        critic_acts = _forward(obs, self.critic_layers, self.tanh)
        value = critic_acts[-1][:, 0]

        ratio = np.exp(log_prob - old_log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)
        low, high = 1 - cfg.clip_coef, 1 + cfg.clip_coef
        surrogate, clipped = -adv * ratio, -adv * np.clip(ratio, low, high)
        pg_loss = np.maximum(surrogate, clipped).mean()
        # torch.maximum's gradient: all to the larger side, half each on a tie; clamp's passes
        # where low <= ratio <= high
        to_surrogate = np.where(surrogate > clipped, 1.0, np.where(surrogate == clipped, 0.5, 0.0)).astype(np.float32)
        inside = ((ratio >= low) & (ratio <= high)).astype(np.float32)
        grad_ratio = -adv * (to_surrogate + (1 - to_surrogate) * inside) / n

        error = value - returns
        if cfg.clip_vloss:
            step = value - old_value
            clipped_error = old_value + np.clip(step, -cfg.clip_coef, cfg.clip_coef) - returns
            plain, clipped_sq = error * error, clipped_error * clipped_error
            v_loss = 0.5 * np.maximum(plain, clipped_sq).mean()
            to_plain = np.where(plain > clipped_sq, 1.0, np.where(plain == clipped_sq, 0.5, 0.0)).astype(np.float32)
            in_clip = ((step >= -cfg.clip_coef) & (step <= cfg.clip_coef)).astype(np.float32)
            grad_value = (to_plain * error + (1 - to_plain) * clipped_error * in_clip) * (cfg.vf_coef / n)
        else:
            v_loss = 0.5 * (error * error).mean()
            grad_value = error * (cfg.vf_coef / n)
        loss = pg_loss - cfg.ent_coef * np.mean(entropy) + cfg.vf_coef * v_loss
        log_ratio = log_prob - old_log_prob
        # what ppo_update logs of each minibatch (CleanRL's names; k3 estimator of the KL)
        self.last_stats = {"policy": float(pg_loss), "value": float(v_loss), "entropy": float(np.mean(entropy)),
                           "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                           "clipfrac": float((np.abs(ratio - 1.0) > cfg.clip_coef).mean())}

        # d loss / d entropy: -ent_coef for a per-state constant, -ent_coef / B per state otherwise
        grad_entropy = -cfg.ent_coef if np.ndim(entropy) == 0 else np.full(n, -cfg.ent_coef / n, np.float32)
        self.policy.backward((grad_ratio * ratio)[:, None], grad_entropy)
        _backward(critic_acts, grad_value.astype(np.float32)[:, None], self.critic_layers, self.critic_grads)
        return float(loss)

    def clip_and_step(self) -> None:
        """clip_grad_norm_(max_grad_norm), then one Adam step (torch's formula, lr as given)."""
        total = np.sqrt(np.dot(self.grad, self.grad))
        scale = min(1.0, self.cfg.max_grad_norm / (float(total) + CLIP_EPS))
        if scale < 1.0:
            self.grad *= np.float32(scale)
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg *= beta1
        self.exp_avg += (1 - beta1) * self.grad
        self.exp_avg_sq *= beta2
        self.exp_avg_sq += (1 - beta2) * self.grad * self.grad
        correction1, correction2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        denom = np.sqrt(self.exp_avg_sq) / math.sqrt(correction2) + self.eps
        self.flat -= (self.lr / correction1) * self.exp_avg / denom

    def step(self, *minibatch) -> float:
        """loss_and_grad, then clip_and_step; returns the loss."""
        loss = self.loss_and_grad(*minibatch)
        self.clip_and_step()
        return loss

    def tensors(self) -> dict[str, np.ndarray]:
        """{parameter name (actor's, then critic's): a copy of its current value}."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = self.flat[offset:offset + size].reshape(shape).copy()
            offset += size
        return out


class NumpyLearner:
    """A whole PPO update of `actor` and `critic` by a `NumpyPPOStep` (module docstring). Built once
    per Trainer; the weights and Adam's state live in the torch objects between updates."""

    def __init__(self, actor: nn.Module, critic: nn.Module, optimizer: torch.optim.Optimizer, cfg, tanh=rational_tanh):
        group = optimizer.param_groups[0]
        self.step = NumpyPPOStep(actor, critic, cfg, group["lr"], betas=group["betas"], eps=group["eps"], tanh=tanh)
        self.params = list(actor.parameters()) + list(critic.parameters())
        self.optimizer = optimizer

    def _load(self) -> None:
        """The torch weights and Adam's moments and step count into the flat NumPy vectors."""
        step, offset = self.step, 0
        for p in self.params:
            size, state = p.numel(), self.optimizer.state[p]
            step.flat[offset:offset + size] = p.detach().numpy().ravel()
            step.exp_avg[offset:offset + size] = state["exp_avg"].numpy().ravel()
            step.exp_avg_sq[offset:offset + size] = state["exp_avg_sq"].numpy().ravel()
            offset += size
        step.steps = int(self.optimizer.state[self.params[0]]["step"])

    def _store(self) -> None:
        """The flat NumPy vectors back into the torch weights and Adam's state."""
        step, offset = self.step, 0
        with torch.no_grad():
            for p in self.params:
                size, state = p.numel(), self.optimizer.state[p]
                p.copy_(torch.from_numpy(step.flat[offset:offset + size]).view_as(p))
                state["exp_avg"].copy_(torch.from_numpy(step.exp_avg[offset:offset + size]).view_as(p))
                state["exp_avg_sq"].copy_(torch.from_numpy(step.exp_avg_sq[offset:offset + size]).view_as(p))
                state["step"].fill_(step.steps)
                offset += size

    def update(self, actor, batch, cfg, generator, after_backward=None) -> dict:
        """One update over `batch` (`model.ppo.Batch` on the CPU) with `ppo_update`'s statistics.
        `after_backward` (the trainer's GradientProbe, or None) gets each minibatch's gradients
        before clipping, as in torch's update (`feed_probe`). cfg.target_kl is honoured as there."""
        from model.diagnostics import GradientProbe
        from model.ppo import explained_variance

        step = self.step
        self._load()
        step.lr, step.cfg = self.optimizer.param_groups[0]["lr"], cfg
        inputs = actor.update_inputs(batch.safety, batch.obs, batch.record)
        rows = tuple(x.numpy() for x in (batch.obs, batch.sample, batch.log_prob, batch.advantages, batch.returns,
                                         batch.value))
        # contiguous once per update: a stride-0 view (BarrierNet's b_bounds is one row expanded)
        # makes each minibatch's np.take 30x slower (66 us against 2 us at 1,024 of 8,192 rows)
        extra = () if inputs.cbf_geometry is None else tuple(np.ascontiguousarray(x.numpy()) for x in inputs.cbf_geometry)
        extra += () if inputs.qp_hint is None else (inputs.qp_hint.numpy(),)
        size = batch.obs.shape[0]
        if after_backward is not None and not isinstance(after_backward, GradientProbe):
            raise TypeError(f"after_backward={after_backward!r}; accepted: None or a model.diagnostics.GradientProbe")
        kls, clipfracs = [], []
        for _ in range(cfg.update_epochs):
            order = torch.randperm(size, generator=generator).numpy()
            for start in range(0, size, cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                step.loss_and_grad(*(np.take(x, idx, axis=0) for x in rows), tuple(np.take(x, idx, axis=0) for x in extra))
                if after_backward is not None:
                    self.feed_probe(after_backward)
                step.clip_and_step()
                kls.append(step.last_stats["approx_kl"])
                clipfracs.append(step.last_stats["clipfrac"])
            minibatches = -(-size // cfg.minibatch_size)
            if cfg.target_kl is not None and float(np.mean(kls[-minibatches:])) > cfg.target_kl:
                break
        self._store()
        last = step.last_stats
        return {"losses/policy_loss": last["policy"], "losses/value_loss": last["value"],
                "losses/entropy": last["entropy"], "losses/approx_kl": float(np.mean(kls)),
                "losses/clipfrac": float(np.mean(clipfracs)),
                "losses/explained_variance": explained_variance(batch.value, batch.returns)}

    def feed_probe(self, probe) -> None:
        """What `GradientProbe.__call__` adds for one minibatch, from the NumPy gradients: each
        actor tensor's gradient norm (float64), their total, and BarrierNet's per-sample loss
        gradient reaching the nominal action (times B, as the probe scales it)."""
        norms = np.array([math.sqrt(float(np.dot(g, g))) for g in
                          (self.step.views[id(p)][1].astype(np.float64).ravel() for _, p in probe.named)])
        probe.layer += torch.from_numpy(norms)
        probe.total += math.sqrt(float(np.dot(norms, norms)))
        probe.calls += 1
        if probe.nominal and isinstance(self.step.policy, _BarrierNetPolicy):
            grad = self.step.policy.grad_nominal.astype(np.float64)
            probe.per_sample.append(torch.from_numpy(grad * grad.shape[0]))
