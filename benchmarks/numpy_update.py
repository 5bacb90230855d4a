"""The PPO minibatch step outside torch, for every algorithm: what the update costs without per-op
dispatch.

    python benchmarks/numpy_update.py                       # the baseline, 5 alternated rounds
    python benchmarks/numpy_update.py --algo barriernet --repeats 10 --whole
    python benchmarks/numpy_update.py --quick               # tiny batch (a smoke test)

`update_levers.py --ceiling` showed that even free matrix products and tanh leave a baseline
iteration at most 2.0-2.2x faster: the rest is the dispatch of some 30 k small ATen ops (about
300 per minibatch step, each with its autograd bookkeeping) and the Python around them. So the
route to issue 17's 2x per core is a step with far fewer, larger calls, and it must keep the
pinned numerics. This measures how far that route goes before anyone builds it.
`NumpyPPOStep` is one minibatch step written as whole-array NumPy calls with the backward derived
by hand:

- the actor's log-probability of the stored samples and its backward: `GaussianActor` (tanh MLP,
  learned log-std; also inside `ShieldedActor`, whose QP only acts), `BarrierNetActor` in
  through_qp mode (tanh MLP, nominal and class-K heads, the CBF rows' right sides gamma h / dt,
  the QP by the compiled loop of `model.qp.cpu_n2_kernels` with its implicit-function backward,
  the clamp to the action box) or `CBFBetaActor` (softplus concentrations, the Beta density on
  the rollout's safe boxes, the Beta entropy; digamma and trigamma from scipy.special);
- the `Critic` (tanh MLP);
- the clipped surrogate, the clipped value loss and the entropy term of `model.ppo.ppo_losses`;
- global-norm clipping;
- Adam as torch's fused Adam computes it, on one flat vector of every parameter.

Every piece is pinned by `tasks/numerics.py`: OpenBLAS's Haswell kernels for the products,
NumPy's AVX2 loops for the elementwise calls, numba's Haswell target for the QP loop and the
rational tanh. The step runs with two tanh functions: NumPy's (a scalar loop here, 5 ns per
element) and `update_levers.rational_tanh` (Eigen's, a few ulp; vectorised).

Printed: the CPU; each way's one step against torch's from the same weights; ms per minibatch of
the eager step (as `model.ppo.ppo_update` runs it, without the gradient probe) and of each NumPy
way on the same minibatches, alternated; what a whole iteration would take if only its update
ran at a NumPy way's speed (the iteration timed in the same process; the rollout, GAE and the
rest unchanged: an estimate); and where a rollout's time goes (env steps, the actor's and the
critic's forward calls, the rest), with the rollout time that twice today's iteration speed
would leave once the update is that fast.

Its answer is not training's: OpenBLAS's products and either tanh round differently from MKL's
COMPATIBLE branch and ATen's, so adopting such a step would move every result, and the learning
would have to be shown the same within the seed intervals. `check_against_torch` compares one
step with torch's from the same weights: the loss, every gradient and the updated weights agree
to float32 round-off (tests/test_numpy_update.py, with every clipping branch and, for
BarrierNet, active CBF rows). `--whole` alternates real training iterations, one Trainer's
updates by the NumPy step (`NumpyLearner`); `benchmarks/numpy_learning.py` trains whole cells so
and compares their held-out rates. Nothing here changes training.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo (tasks, model)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side, also when loaded by file path

from tasks import numerics  # noqa: E402  (before torch: the pinned environment)

numerics.apply(numerics.mode_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from tasks.params import load_params  # noqa: E402

QUICK = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2}
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# torch.nn.utils.clip_grad_norm_ divides by (total norm + this)
CLIP_EPS = 1e-6


def _linears(module: nn.Module) -> list[nn.Linear]:
    """The nn.Linear layers of an MLP in forward order (hidden layers, then the head)."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _forward(x: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], tanh=np.tanh) -> list[np.ndarray]:
    """x (B, D) through Linear + tanh layers and a linear head: [x, h1, ..., h_L, head output].
    tanh: a ufunc (np.tanh or update_levers.rational_tanh)."""
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


class _BarrierNetPolicy:
    """`BarrierNetActor.evaluate_actions` (through_qp, rows from the update's CBF geometry) and its
    backward: nominal = centre + half tanh(raw), gamma = gamma_min + (gamma_max - gamma_min)
    sigmoid(raw'); the barrier rows' right sides gamma h / dt; mean = the QP's solution (the
    compiled loop of `model.qp.cpu_n2_kernels`, the NumPy full rule for what it cannot settle;
    its implicit-function backward `backward_batch`), clamped to the action box; fixed std."""

    def __init__(self, step: "NumpyPPOStep", actor):
        from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL
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
        self.tolerances = (FEAS_TOL[torch.float32], TIE_REL[torch.float32], SINGULAR_TOL[torch.float32])
        self.entropy = float((0.5 + HALF_LOG_2PI + np.log(self.std)).sum())
        self.qp_backward = backward_batch  # the QP's implicit-function backward (an attribute: tests swap it)

    def heads(self, obs) -> tuple[np.ndarray, np.ndarray]:
        """obs (B, D) -> nominal (B, 2), gamma (B, M); keeps what `backward` needs."""
        self.acts = _forward(obs, self.layers, self.step.tanh)
        self.acts[-1] = self.step.tanh(self.acts[-1])  # the backbone ends in a tanh: its features
        features = self.acts[-1]
        raw_nominal = features @ self.nominal_head[0][0].T + self.nominal_head[0][1]
        raw_gamma = features @ self.gamma_head[0][0].T + self.gamma_head[0][1]
        self.t = self.step.tanh(raw_nominal)
        self.sig = 1.0 / (1.0 + np.exp(-raw_gamma))
        return self.centre + self.half * self.t, self.gamma_min + self.gamma_span * self.sig

    def solve(self, u_ref, A, mask, b, hint) -> tuple[np.ndarray, ...]:
        """The projection's QP min 1/2 (u - u_ref)' W (u - u_ref) s.t. the rows, as `solve_qp`
        solves it on the CPU (the compiled loop, the NumPy full rule for what it cannot settle).
        hint (B, 2) int64 or None. Returns u, lam, Y, K, active, inv_norm, feasible."""
        from model.qp import cpu_numpy
        from model.qp.cpu_n2_kernels import allocate_outputs, solve_batch

        batch, m = mask.shape
        H = np.broadcast_to(np.diag(self.weights), (batch, 2, 2))
        f = -u_ref * self.weights
        out = allocate_outputs(batch, m)
        u, lam, used, Y, K, active, inv_norm, lam_rows, passed = out
        has_hint = hint is not None
        solve_batch(H, f, A, b, mask, True, hint if has_hint else np.full((1, 2), -1, np.int64), has_hint,
                    *self.tolerances, *out)
        u, lam, Y, K, inv_norm = (x.astype(np.float32) for x in (u, lam, Y, K, inv_norm))
        feasible = passed.copy()
        if not passed.all():  # what the compiled loop cannot settle: the NumPy full rule, as solve_qp does
            rest = np.flatnonzero(~passed)
            (active[rest], feasible[rest], _, u[rest], lam[rest], Y[rest], K[rest], inv_norm[rest], _) = \
                cpu_numpy.full_rule_rows(np.ascontiguousarray(H[rest]), f[rest], A[rest], b[rest], mask[rest],
                                         torch.float32)
        return u, lam, Y, K, active, inv_norm, feasible

    def right_sides(self, gamma, h, barrier_mask, b_bounds) -> np.ndarray:
        """b (B, m): gamma h / dt on the present barrier rows, 1 on absent ones, then the bounds."""
        return np.concatenate((np.where(barrier_mask, (gamma / self.dt) * h, 1.0).astype(np.float32), b_bounds), 1)

    def log_prob(self, obs, sample, extra) -> tuple[np.ndarray, float]:
        A, mask, h, barrier_mask, b_bounds, hint = extra
        m = mask.shape[1]
        nominal, gamma = self.heads(obs)
        self.h, self.barrier_mask = h, barrier_mask
        u, lam, Y, K, active, inv_norm, _ = self.solve(nominal, A, mask, self.right_sides(gamma, h, barrier_mask, b_bounds), hint)
        self.saved = (u, lam, Y, K, active, inv_norm, m)
        mean = np.maximum(np.minimum(u, self.high), self.low)
        # torch.minimum / maximum: the gradient to the larger (smaller) side, half each on a tie
        self.clamp_grad = (np.where(u < self.high, 1.0, np.where(u == self.high, 0.5, 0.0))
                           * np.where(np.minimum(u, self.high) > self.low, 1.0,
                                      np.where(np.minimum(u, self.high) == self.low, 0.5, 0.0))).astype(np.float32)
        self.z = (sample - mean) / self.std
        return (-0.5 * self.z * self.z - np.log(self.std) - HALF_LOG_2PI).sum(1), self.entropy

    def backward(self, grad_log_prob: np.ndarray, grad_entropy: float) -> None:
        u, lam, Y, K, active, inv_norm, m = self.saved
        batch = u.shape[0]
        grad_u = (grad_log_prob * self.z / self.std * self.clamp_grad).astype(np.float32)
        grad_H, grad_f = np.empty((batch, 2, 2), np.float32), np.empty((batch, 2), np.float32)
        grad_A, grad_b = np.empty((batch, m, 2), np.float32), np.empty((batch, m), np.float32)
        self.qp_backward(grad_u, u, lam, Y, K, active, inv_norm, grad_H, grad_f, grad_A, grad_b)
        barriers = self.h.shape[1]
        grad_gamma = np.where(self.barrier_mask, grad_b[:, :barriers] * self.h, 0.0).astype(np.float32) / np.float32(self.dt)
        grad_raw_gamma = grad_gamma * self.gamma_span * self.sig * (1.0 - self.sig)
        self.grad_nominal = -grad_f * self.weights  # d loss / d nominal (B, 2): GradientProbe's number
        grad_raw_nominal = self.grad_nominal * self.half * (1.0 - self.t * self.t)
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
    parameters); entropy of the Beta, summed over d. digamma and trigamma from scipy.special."""

    def __init__(self, step: "NumpyPPOStep", actor):
        from model.cbf_beta import MIN_WIDTH_FRACTION

        self.step = step
        linears = _linears(actor)
        self.layers, self.grads = step.layers_of(actor, linears[:-1])
        self.head, self.head_grad = step.layers_of(actor, linears[-1:])
        self.floor = MIN_WIDTH_FRACTION * (actor.high - actor.low).double().numpy()

    def log_prob(self, obs, sample, extra) -> tuple[np.ndarray, float]:
        from scipy import special

        low, high, feasible = extra
        self.acts = _forward(obs, self.layers, self.step.tanh)
        self.acts[-1] = self.step.tanh(self.acts[-1])  # the backbone ends in a tanh: its features
        raw = self.acts[-1] @ self.head[0][0].T + self.head[0][1]
        # torch's softplus (beta 1, threshold 20): x itself above 20
        soft = np.where(raw > 20, raw, np.log1p(np.exp(np.minimum(raw, 20)))).astype(np.float32)
        self.raw = raw
        a, b = 1.0 + soft[:, :2], 1.0 + soft[:, 2:]
        self.a, self.b, self.x, self.feasible = a, b, sample, feasible
        log_width = np.log(np.maximum(high - low, self.floor)).astype(np.float32).sum(-1)
        log_beta = special.gammaln(a) + special.gammaln(b) - special.gammaln(a + b)
        log_density = ((a - 1) * np.log(sample) + (b - 1) * np.log1p(-sample) - log_beta).sum(-1) - log_width
        log_prob = np.where(feasible, log_density, 0.0).astype(np.float32)
        psi_a, psi_b, psi_ab = special.digamma(a), special.digamma(b), special.digamma(a + b)
        self.psi = (psi_a, psi_b, psi_ab)
        entropy = log_beta - (a - 1) * psi_a - (b - 1) * psi_b + (a + b - 2) * psi_ab  # (B, 2)
        return log_prob, entropy.sum(-1)

    def backward(self, grad_log_prob: np.ndarray, grad_entropy: np.ndarray) -> None:
        """grad_log_prob (B, 1); grad_entropy (B,): d loss / d entropy of each state."""
        from scipy import special

        a, b, x = self.a, self.b, self.x
        psi_a, psi_b, psi_ab = self.psi
        gate = grad_log_prob * self.feasible[:, None]
        grad_a = gate * (np.log(x) - psi_a + psi_ab)
        grad_b = gate * (np.log1p(-x) - psi_b + psi_ab)
        if np.any(grad_entropy):  # dH/da = -(a - 1) psi'(a) + (a + b - 2) psi'(a + b), likewise b
            tri_a, tri_b, tri_ab = special.polygamma(1, a), special.polygamma(1, b), special.polygamma(1, a + b)
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


class Batch(NamedTuple):
    """PPO rows of B states as `model.ppo.ppo_update` gathers them: obs, sample, log_prob,
    advantages, returns, value (torch), and the actor's `UpdateInputs` of those states."""

    rows: tuple[torch.Tensor, ...]
    inputs: object

    def index(self, idx: torch.Tensor) -> "Batch":
        return Batch(tuple(x.index_select(0, idx) for x in self.rows), self.inputs.index(idx))

    def arrays(self) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """The rows as NumPy arrays (shared memory) and the NumPy step's `extra`: BarrierNet's CBF
        geometry (A, mask, h, barrier_mask, b_bounds) and QP hint; nothing for the baseline."""
        geometry, hint = self.inputs.cbf_geometry, self.inputs.qp_hint
        extra = () if geometry is None else tuple(x.numpy() for x in geometry)
        return tuple(x.numpy() for x in self.rows), extra + (() if hint is None else (hint.numpy(),))


def rollout_batch(algo: str, overrides: dict):
    """A Trainer after one rollout, its flattened batch with GAE and the actor's update inputs,
    and minibatch index slices as `model.ppo.ppo_update` draws them: (trainer, Batch, slices)."""
    from model.ppo import compute_gae
    from tasks.train import Trainer

    params = load_params(overrides={"train.total_steps": 10**7, **overrides})
    trainer = Trainer(params, algo, 0, update_device="cpu")
    trainer.collect_rollout()
    agent, buf, tp = trainer.agent, trainer.buffer, trainer.params.train
    with torch.no_grad():
        next_value = agent.rollout_critic(agent.obs_rms.normalize(trainer.next_obs))
    advantages, returns = compute_gae(buf.reward, buf.value, buf.terminated, buf.truncated, buf.final_value,
                                      next_value, tp.gamma, tp.gae_lambda)
    flat = buf.flatten(advantages, returns, "cpu")
    inputs = agent.actor.update_inputs(flat.safety, flat.obs, flat.record)
    batch = Batch((flat.obs, flat.sample, flat.log_prob, flat.advantages, flat.returns, flat.value), inputs)
    size, minibatch = flat.obs.shape[0], trainer.minibatch_size
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    return trainer, batch, [order[s : s + minibatch] for s in range(0, size, minibatch)]


def torch_step(trainer, minibatch: Batch) -> float:
    """One eager minibatch step as `model.ppo.ppo_update` runs it on the CPU (without the gradient
    probe): forward, `ppo_losses`, backward, clip_grad_norm_, the trainer's fused Adam."""
    from model.ppo import ppo_losses

    agent, cfg = trainer.agent, trainer.update_cfg
    (obs, sample, old_log_prob, advantages, returns, old_value), inputs = minibatch
    new_log_prob, entropy = agent.actor.evaluate_actions(obs, inputs.safety, sample, qp_hint=inputs.qp_hint,
                                                         cbf_geometry=inputs.cbf_geometry)
    new_value = agent.critic(obs).float()
    loss = ppo_losses(new_log_prob, entropy, new_value, old_log_prob, advantages, returns, old_value, cfg).loss
    agent.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_([p for g in agent.optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
    agent.optimizer.step()
    return float(loss.detach())


def numpy_step_for(trainer, tanh=np.tanh) -> NumpyPPOStep:
    """A NumpyPPOStep holding the trainer's current weights, lr and Adam settings (fresh moments)."""
    group = trainer.agent.optimizer.param_groups[0]
    return NumpyPPOStep(trainer.agent.actor, trainer.agent.critic, trainer.update_cfg, group["lr"],
                        betas=group["betas"], eps=group["eps"], tanh=tanh)


def check_against_torch(trainer, minibatch: Batch, tanh=np.tanh) -> dict[str, float]:
    """One step from the trainer's weights both ways (the trainer's Adam moments reset, as a fresh
    NumpyPPOStep's are). Returns both losses, the largest difference of the clipped gradients
    relative to the largest gradient, and the largest difference of the updated weights relative
    to the largest weight change of the step. The trainer's weights and optimizer move by one step."""
    agent = trainer.agent
    agent.optimizer.state.clear()
    ours = numpy_step_for(trainer, tanh)
    before = ours.flat.copy()
    rows, extra = minibatch.arrays()
    loss_numpy = ours.loss_and_grad(*rows, extra)
    ours.clip_and_step()  # clips self.grad in place, as torch does
    loss_torch = torch_step(trainer, minibatch)
    named = list(agent.actor.parameters()) + list(agent.critic.parameters())
    weights_torch = np.concatenate([p.detach().numpy().ravel() for p in named])
    return {"loss_numpy": loss_numpy, "loss_torch": loss_torch, "grad_rel": gradient_difference(ours, named),
            "weight_rel": float(np.abs(ours.flat - weights_torch).max() / np.abs(weights_torch - before).max())}


def gradient_difference(ours: NumpyPPOStep, params: list[torch.Tensor]) -> float:
    """The largest, over the parameter tensors, of max |ours - torch's gradient| / max |torch's
    gradient| of that tensor (per tensor: the critic's gradients are far larger than the actor's
    and would hide an error in the actor's). params: the actor's, then the critic's."""
    worst, offset = 0.0, 0
    for p in params:
        theirs = p.grad.numpy().ravel()
        mine = ours.grad[offset:offset + theirs.size]
        offset += theirs.size
        scale = np.abs(theirs).max()
        worst = max(worst, float(np.abs(mine - theirs).max() / scale) if scale > 0 else float(np.abs(mine).max()))
    return worst


def rollout_split(trainer, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` ms of one rollout (`Trainer.collect_rollout`) and, in that rollout, of the
    env's steps and the rollout actor's and critic's forward calls (timers around the three,
    removed afterwards)."""
    agent = trainer.agent
    parts = {"env_step": 0.0, "actor": 0.0, "critic": 0.0}

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] += time.perf_counter() - start
        return call

    targets = {"env_step": (trainer.core, "step"), "actor": (agent.rollout_actor, "forward"),
               "critic": (agent.rollout_critic, "forward")}
    for name, (owner, attr) in targets.items():
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    best = {"rollout": float("inf")}
    try:
        for _ in range(repeats):
            parts.update(dict.fromkeys(parts, 0.0))
            start = time.perf_counter()
            trainer.collect_rollout()
            took = time.perf_counter() - start
            if took < best["rollout"]:
                best = {"rollout": took, **parts}
    finally:
        for owner, attr in targets.values():
            delattr(owner, attr)  # the instance attribute: the class's method again
    return {name: seconds * 1e3 for name, seconds in best.items()}


def measure(algo: str, overrides: dict, repeats: int) -> dict:
    """Alternated epochs (every minibatch once) of the eager step and the NumPy step with each
    tanh on the same minibatches, then whole iterations: best ms of each, and each NumPy way's
    one-step check against torch."""
    from update_levers import rational_tanh

    tanhs = {"numpy": np.tanh, "rational": rational_tanh}
    trainer, batch, slices = rollout_batch(algo, overrides)
    checks = {name: check_against_torch(trainer, batch.index(slices[0]), tanh) for name, tanh in tanhs.items()}
    steps = {name: numpy_step_for(trainer, tanh) for name, tanh in tanhs.items()}
    rows, extra = batch.arrays()
    index = [idx.numpy() for idx in slices]

    def eager_epoch():
        for idx in slices:
            torch_step(trainer, batch.index(idx))

    def numpy_epoch(step):
        def epoch():
            for idx in index:  # the rows gathered as the eager step gathers them
                step.step(*(np.take(x, idx, axis=0) for x in rows), tuple(np.take(x, idx, axis=0) for x in extra))
        return epoch

    ways = {"eager": eager_epoch, **{name: numpy_epoch(step) for name, step in steps.items()}}
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):
        for name, epoch in ways.items():
            start = time.perf_counter()
            epoch()
            best[name] = min(best[name], time.perf_counter() - start)
    iteration = float("inf")
    for _ in range(max(2, repeats // 2)):
        start = time.perf_counter()
        trainer.train_one_update()
        iteration = min(iteration, time.perf_counter() - start)
    split = rollout_split(trainer, max(2, repeats // 2))
    tp = trainer.params.train
    return {"checks": checks, "rollout_split": split, "minibatches": len(slices), "minibatch": trainer.minibatch_size,
            **{f"{name}_ms": best[name] / len(slices) * 1e3 for name in ways},
            "iteration_ms": iteration * 1e3, "update_minibatches": tp.update_epochs * len(slices),
            "env_steps": tp.num_envs * tp.rollout_steps}


class NumpyLearner:
    """Updates one Trainer by a NumpyPPOStep inside whole training iterations (`patched`): the
    step is kept across iterations (Adam's moments carry on), the minibatch order is drawn from
    the trainer's generator as `model.ppo.ppo_update` draws it, the trainer's gradient probe and
    loss statistics run as in torch's update, and the weights are written back into the torch
    modules the rollout reads."""

    def __init__(self, trainer, tanh=np.tanh):
        self.step = numpy_step_for(trainer, tanh)
        self.params = list(trainer.agent.actor.parameters()) + list(trainer.agent.critic.parameters())

    def update(self, actor, critic, optimizer, batch, cfg, generator, scaler=None, after_backward=None) -> dict:
        """`model.ppo.ppo_update`'s signature and statistics. `after_backward` (the trainer's
        GradientProbe, or None) gets each minibatch's gradients before clipping, as in torch's
        update (`feed_probe`)."""
        from model.diagnostics import GradientProbe
        from model.ppo import explained_variance

        step = self.step
        step.lr = optimizer.param_groups[0]["lr"]
        whole = Batch((batch.obs, batch.sample, batch.log_prob, batch.advantages, batch.returns, batch.value),
                      actor.update_inputs(batch.safety, batch.obs, batch.record))
        rows, extra = whole.arrays()
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
        with torch.no_grad():
            for p, value in zip(self.params, step.tensors().values()):
                p.copy_(torch.from_numpy(value))
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

    def rollout_forwards(self, trainer) -> dict:
        """NumPy stand-ins for the rollout's actor forward (the Gaussian policy of the baseline or
        the one a shielded actor wraps, or BarrierNet's: `_barriernet_forward`) and critic forward,
        reading the step's weights: {(module, name): fn}. The Gaussian noise is still drawn by
        torch's global generator, so the RNG stream is training's. CBF-Beta has none (ValueError)."""
        from model.actors import ActorOutput, GaussianActor, ShieldedActor

        step, agent = self.step, trainer.agent
        actor = agent.rollout_actor.actor if isinstance(agent.rollout_actor, ShieldedActor) else agent.rollout_actor
        policy = step.policy
        if isinstance(policy, _BarrierNetPolicy):
            actor_forward = self._barriernet_forward(agent.rollout_actor)
        elif isinstance(actor, GaussianActor) and isinstance(policy, _GaussianPolicy):
            low, high = actor.action_low.numpy(), actor.action_high.numpy()

            def actor_forward(obs, safety=None, deterministic=False):
                x = obs.numpy()
                t = step.tanh(_forward(x, policy.layers, step.tanh)[-1])
                mean = policy.centre + policy.half * t
                std = policy.half * np.exp(policy.log_std)
                noise = np.zeros_like(mean) if deterministic else torch.randn(mean.shape, dtype=torch.float32).numpy()
                sample = mean + std * noise
                z = (sample - mean) / std
                log_prob = (-0.5 * z * z - np.log(std) - HALF_LOG_2PI).sum(1)
                action = np.maximum(np.minimum(sample, high), low)
                return ActorOutput(torch.from_numpy(action), torch.from_numpy(sample), torch.from_numpy(log_prob), {})
        else:
            raise ValueError("the NumPy rollout forward covers the Gaussian policy (baseline, shielded) and BarrierNet")

        def critic_forward(obs):
            return torch.from_numpy(np.ascontiguousarray(_forward(obs.numpy(), step.critic_layers, step.tanh)[-1][:, 0]))

        return {(actor, "forward"): actor_forward, (agent.rollout_critic, "forward"): critic_forward}

    def _barriernet_forward(self, actor):
        """`BarrierNetActor.forward` (through_qp, the training's K obstacles) in NumPy: heads, the
        CBF rows (their gamma-free part by torch, `cbf_geometry`), the mean's QP, the sample's QP
        warm-started by the mean's active set, and the info the rollout's curves and record read."""
        from model.actors import ActorOutput

        policy = self.step.policy
        tol = actor.cbf_params.intervention_tol
        full_scale = policy.centre + policy.half

        def forward(obs, safety, deterministic=False):
            nominal, gamma = policy.heads(obs.numpy())
            A, mask, h, barrier_mask, b_bounds = (x.numpy() for x in actor.projection.geometry(safety, obs.new_empty(0)))
            b = policy.right_sides(gamma, h, barrier_mask, b_bounds)
            noise = (np.zeros_like(nominal) if deterministic
                     else policy.std * torch.randn(nominal.shape, dtype=torch.float32).numpy())
            u, *_, active_mean, _, feasible_mean = policy.solve(nominal, A, mask, b, None)
            mean = np.maximum(np.minimum(u, policy.high), policy.low)
            sample = mean + noise
            if deterministic:
                executed, feasible = mean, feasible_mean
            else:
                u, *_, feasible = policy.solve(sample, A, mask, b, active_mean)
                executed = np.maximum(np.minimum(u, policy.high), policy.low)
                feasible = feasible & feasible_mean
            z = (sample - mean) / policy.std
            log_prob = (-0.5 * z * z - np.log(policy.std) - HALF_LOG_2PI).sum(1)
            proposal = np.maximum(np.minimum(nominal + noise, full_scale), policy.centre - policy.half)
            correction = np.sqrt((((executed - proposal) / full_scale) ** 2).sum(-1))
            info = {"nominal": nominal, "gamma": gamma, "proposal": proposal, "infeasible": ~feasible,
                    "lookahead_h": np.where(barrier_mask, h, np.inf).astype(np.float32), "correction": correction,
                    "intervened": correction > tol, "active_mean": active_mean}
            return ActorOutput(torch.from_numpy(executed.astype(np.float32)), torch.from_numpy(sample),
                               torch.from_numpy(log_prob), {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in info.items()})

        return forward

    @contextlib.contextmanager
    def patched(self, trainer=None):
        """Inside: `model.ppo.ppo_iteration` calls `update` (run only this trainer's iterations
        here); with `trainer`, its rollout's policy and critic forward calls are NumPy's too
        (`rollout_forwards`)."""
        import model.ppo as ppo

        original = ppo.ppo_update
        forwards = self.rollout_forwards(trainer) if trainer is not None else {}
        ppo.ppo_update = self.update
        for (module, name), fn in forwards.items():
            setattr(module, name, fn)
        try:
            yield self
        finally:
            ppo.ppo_update = original
            for module, name in forwards:
                delattr(module, name)


def measure_whole(algo: str, overrides: dict, repeats: int) -> dict:
    """Whole iterations of two Trainers of the same seed, alternated after a warm-up round: one as
    training runs, one updated by the NumPy step with the rational tanh (`NumpyLearner`). Best
    ms of each."""
    from tasks.train import Trainer
    from update_levers import rational_tanh

    params = load_params(overrides={"train.total_steps": 10**7, **overrides})
    torch_trainer = Trainer(params, algo, 0, update_device="cpu")
    numpy_trainer = Trainer(params, algo, 0, update_device="cpu")
    learner = NumpyLearner(numpy_trainer, rational_tanh)
    ways = {"torch": (torch_trainer, contextlib.nullcontext), "numpy": (numpy_trainer, learner.patched)}
    if isinstance(learner.step.policy, (_GaussianPolicy, _BarrierNetPolicy)):  # also the rollout's forward calls
        both_trainer = Trainer(params, algo, 0, update_device="cpu")
        both = NumpyLearner(both_trainer, rational_tanh)
        ways["numpy_rollout"] = (both_trainer, lambda: both.patched(both_trainer))
    best = {name: float("inf") for name in ways}
    for round_ in range(repeats + 1):
        for name, (trainer, context) in ways.items():
            with context():
                start = time.perf_counter()
                trainer.train_one_update()
                if round_:
                    best[name] = min(best[name], time.perf_counter() - start)
    tp = params.train
    return {**{f"{name}_ms": ms * 1e3 for name, ms in best.items()}, "env_steps": tp.num_envs * tp.rollout_steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="baseline", choices=("baseline", "barriernet", "cbf_beta", "shielded"))
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds of each way (the best is kept)")
    parser.add_argument("--quick", action="store_true", help="a tiny batch: a smoke test, not a measurement")
    parser.add_argument("--whole", action="store_true",
                        help="also alternate whole training iterations with the update by the NumPy step (measured, not projected)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, e.g. train.num_envs=512")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: accepted: >= 1")
    from side_by_side import cpu_model, parse_sets

    overrides = {**(QUICK if args.quick else {}), **parse_sets(args.sets)}
    torch.set_num_threads(1)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_model()}, numerics {os.environ.get(numerics.MARKER)}, torch {torch.__version__}, "
          f"numpy {np.__version__}, 1 thread, load average {load}"
          + (" [--quick: tiny batch, ratios are not meaningful]" if args.quick else ""))
    r = measure(args.algo, overrides, args.repeats)
    labels = {"numpy": "NumPy, np.tanh", "rational": "NumPy, rational tanh (update_levers.rational_tanh)"}
    print("\none step from the same weights, against torch (float32 round-off: other bits, the same step)")
    print("| way | loss | torch's loss | max gradient difference / max gradient (worst tensor) | max weight difference / max step |\n"
          "|---|---|---|---|---|")
    for name, c in r["checks"].items():
        print(f"| {labels[name]} | {c['loss_numpy']:.7g} | {c['loss_torch']:.7g} | {c['grad_rel']:.1e} | {c['weight_rel']:.1e} |")
    print(f"\n{args.algo}: one minibatch step ({r['minibatch']} states: loss, backward, clip, Adam), best of "
          f"{args.repeats} alternated epochs of {r['minibatches']}")
    print("| way | ms per minibatch | vs eager |\n|---|---|---|")
    print(f"| eager torch (as ppo_update) | {r['eager_ms']:.2f} | 1.00x |")
    for name, label in labels.items():
        print(f"| {label} | {r[name + '_ms']:.2f} | {r['eager_ms'] / r[name + '_ms']:.2f}x |")
    update_ms = r["update_minibatches"] * r["eager_ms"]
    print(f"\nwhole iteration ({r['env_steps']} env steps), best of {max(2, args.repeats // 2)}: {r['iteration_ms']:.0f} ms, "
          f"of which {r['update_minibatches']} minibatch steps at the eager speed ~{update_ms:.0f} ms. With them at a "
          "NumPy way's speed (an estimate: the rollout and GAE unchanged):")
    print("| update by | iteration ms | env-steps/s | vs today |\n|---|---|---|---|")
    print(f"| eager torch | {r['iteration_ms']:.0f} | {r['env_steps'] / r['iteration_ms'] * 1e3:,.0f} | 1.00x |")
    for name, label in labels.items():
        projected = r["iteration_ms"] - update_ms + r["update_minibatches"] * r[name + "_ms"]
        r[f"{name}_iteration_ms"] = projected
        print(f"| {label} | {projected:.0f} | {r['env_steps'] / projected * 1e3:,.0f} | {r['iteration_ms'] / projected:.2f}x |")
    split = r["rollout_split"]
    others = split["rollout"] - split["env_step"] - split["actor"] - split["critic"]
    rest = r["rational_iteration_ms"] - split["rollout"]  # the update at the rational way's speed, GAE, logging
    print(f"\nwhere a rollout's time goes (best of {max(2, args.repeats // 2)} rollouts, timers around the calls), and what "
          "twice today's iteration speed leaves the rollout once the update runs at the rational way's speed")
    print("| part | ms per rollout | share of today's iteration |\n|---|---|---|")
    for label, ms in (("env.step", split["env_step"]), ("actor forward (its safety layer included)", split["actor"]),
                      ("critic forward", split["critic"]), ("the rest of the rollout (obs norm, buffer, sums)", others),
                      ("rollout", split["rollout"])):
        print(f"| {label} | {ms:.0f} | {ms / r['iteration_ms']:.0%} |")
    budget = r["iteration_ms"] / 2 - rest
    print(f"2x needs the iteration at {r['iteration_ms'] / 2:.0f} ms: with the update, GAE and logging at ~{rest:.0f} ms, "
          f"the rollout at {budget:.0f} ms or less ({budget / split['rollout']:.0%} of today's {split['rollout']:.0f} ms)")
    if args.whole:
        whole = measure_whole(args.algo, overrides, args.repeats)
        print(f"\n{args.algo}: whole training iterations ({whole['env_steps']} env steps: rollout, GAE, update), best of "
              f"{args.repeats} alternated after a warm-up; 'NumPy': the update by the NumPy step with the rational tanh "
              "(the gradient probe and loss statistics computed as in torch's; its weights written back for the "
              "rollout; a timing, not a result)")
        print("| update by | iteration ms | env-steps/s | vs torch |\n|---|---|---|---|")
        for label, name in (("eager torch", "torch"), ("NumPy, rational tanh", "numpy"),
                            ("NumPy, and the rollout's actor and critic forward in NumPy", "numpy_rollout")):
            if f"{name}_ms" not in whole:
                continue
            ms = whole[f"{name}_ms"]
            print(f"| {label} | {ms:.0f} | {whole['env_steps'] / ms * 1e3:,.0f} | {whole['torch_ms'] / ms:.2f}x |")
        r["whole"] = whole
    return r


if __name__ == "__main__":
    main()
