"""The baseline's PPO minibatch step outside torch: what the update costs without per-op dispatch.

    python benchmarks/numpy_update.py                 # the default batch, 5 alternated rounds
    python benchmarks/numpy_update.py --repeats 10
    python benchmarks/numpy_update.py --quick         # tiny batch (a smoke test)

`update_levers.py --ceiling` showed that even free matrix products and tanh leave a baseline
iteration at most 2.0-2.2x faster: the rest is the dispatch of some 30 k small ATen ops (about
300 per minibatch step, each with its autograd bookkeeping) and the Python around them. So the
route to issue 17's 2x per core is a step with far fewer, larger calls, and it must keep the
pinned numerics. This measures how far that route goes before anyone builds it.
`NumpyPPOStep` is one minibatch step of the baseline written as whole-array NumPy calls with the
backward derived by hand:

- `GaussianActor` and `Critic`: tanh MLPs;
- the clipped surrogate, the clipped value loss and the entropy term of `model.ppo.ppo_losses`;
- global-norm clipping;
- Adam as torch's fused Adam computes it, on one flat vector of every parameter.

Every piece is pinned by `tasks/numerics.py`: OpenBLAS's Haswell kernels for the products,
NumPy's AVX2 loops for the elementwise calls, numba's Haswell target for the rational tanh. The
step runs with two tanh functions: NumPy's (a scalar loop here, 5 ns per element) and
`update_levers.rational_tanh` (Eigen's, a few ulp; vectorised).

Printed: the CPU; each way's one step against torch's from the same weights; ms per minibatch of
the eager step (as `model.ppo.ppo_update` runs it, without the gradient probe) and of each NumPy
way on the same minibatches, alternated; and what a whole iteration would take if only its
update ran at a NumPy way's speed (the iteration timed in the same process; the rollout, GAE
and the rest unchanged: an estimate).

Its answer is not training's: OpenBLAS's products and either tanh round differently from MKL's
COMPATIBLE branch and ATen's, so adopting such a step would move every result, and the learning
would have to be shown the same within the seed intervals. `check_against_torch` compares one
step with torch's from the same weights: the loss, every gradient and the updated weights agree
to float32 round-off (tests/test_numpy_update.py, with every clipping branch active). Nothing
here changes training.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

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


class NumpyPPOStep:
    """One PPO minibatch step of a `GaussianActor` and a `Critic` in NumPy (module docstring).

    The parameters (actor's, then critic's, in `named_parameters` order, as the trainer's Adam
    holds them) live in one flat float32 vector, their gradients and Adam's moments in three more,
    so clipping and Adam are a few whole-vector calls. Shapes: obs (B, D), sample (B, 2),
    old_log_prob, advantages, returns, old_value (B,).
    """

    def __init__(self, actor, critic, cfg, lr: float, betas=(0.9, 0.999), eps: float = 1e-5, tanh=np.tanh):
        named = ([(f"actor.{n}", p) for n, p in actor.named_parameters()]
                 + [(f"critic.{n}", p) for n, p in critic.named_parameters()])
        self.flat = np.concatenate([p.detach().cpu().numpy().astype(np.float32).ravel() for _, p in named])
        self.grad = np.zeros_like(self.flat)
        self.exp_avg, self.exp_avg_sq = np.zeros_like(self.flat), np.zeros_like(self.flat)
        self.steps = 0
        self.cfg, self.lr, self.betas, self.eps, self.tanh = cfg, float(lr), betas, eps, tanh
        by_tensor, offset = {}, 0
        for _, p in named:
            size = p.numel()
            by_tensor[id(p)] = (self.flat[offset:offset + size].reshape(p.shape),
                                self.grad[offset:offset + size].reshape(p.shape))
            offset += size
        self.actor_layers = [(by_tensor[id(m.weight)][0], by_tensor[id(m.bias)][0]) for m in _linears(actor)]
        self.actor_grads = [(by_tensor[id(m.weight)][1], by_tensor[id(m.bias)][1]) for m in _linears(actor)]
        self.critic_layers = [(by_tensor[id(m.weight)][0], by_tensor[id(m.bias)][0]) for m in _linears(critic)]
        self.critic_grads = [(by_tensor[id(m.weight)][1], by_tensor[id(m.bias)][1]) for m in _linears(critic)]
        self.log_std, self.log_std_grad = by_tensor[id(actor.log_std)]
        self.centre = actor.action_centre.cpu().numpy().astype(np.float32)
        self.half = actor.action_half_range.cpu().numpy().astype(np.float32)
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]

    def loss_and_grad(self, obs, sample, old_log_prob, advantages, returns, old_value) -> float:
        """The minibatch loss of `model.ppo.ppo_losses` (float) and its gradient in self.grad."""
        cfg, n = self.cfg, obs.shape[0]
        actor_acts = _forward(obs, self.actor_layers, self.tanh)
        t = self.tanh(actor_acts[-1])
        mean = self.centre + self.half * t
        std = self.half * np.exp(self.log_std)
        log_std_phys = np.log(std)
        z = (sample - mean) / std
        log_prob = (-0.5 * z * z - log_std_phys - HALF_LOG_2PI).sum(1)
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
        entropy = (0.5 + HALF_LOG_2PI + log_std_phys).sum()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss

        grad_log_prob = (grad_ratio * ratio)[:, None]  # (B, 1)
        grad_raw = grad_log_prob * z / std * self.half * (1.0 - t * t)  # d log_prob / d mean = z / std
        self.log_std_grad[:] = (grad_log_prob * (z * z - 1.0)).sum(0) - cfg.ent_coef
        _backward(actor_acts, grad_raw.astype(np.float32), self.actor_layers, self.actor_grads)
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


def rollout_batch(algo: str, overrides: dict):
    """A Trainer after one rollout, its flattened batch with GAE, and minibatch index slices as
    `model.ppo.ppo_update` draws them. Returns (trainer, batch, slices)."""
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
    batch = buf.flatten(advantages, returns, "cpu")
    size, minibatch = batch.obs.shape[0], trainer.minibatch_size
    order = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    return trainer, batch, [order[s : s + minibatch] for s in range(0, size, minibatch)]


def _minibatch(batch, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows of one minibatch as ppo_update gathers them: obs, sample, log_prob, advantages,
    returns, value."""
    return tuple(x.index_select(0, idx) for x in (batch.obs, batch.sample, batch.log_prob, batch.advantages,
                                                   batch.returns, batch.value))


def torch_step(trainer, rows: tuple[torch.Tensor, ...]) -> float:
    """One eager minibatch step as `model.ppo.ppo_update` runs it on the CPU (without the gradient
    probe): forward, `ppo_losses`, backward, clip_grad_norm_, the trainer's fused Adam."""
    from model.ppo import ppo_losses

    agent, cfg = trainer.agent, trainer.update_cfg
    obs, sample, old_log_prob, advantages, returns, old_value = rows
    new_log_prob, entropy = agent.actor.evaluate_actions(obs, None, sample)
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


def check_against_torch(trainer, rows: tuple[torch.Tensor, ...], tanh=np.tanh) -> dict[str, float]:
    """One step from the trainer's weights both ways (the trainer's Adam moments reset, as a fresh
    NumpyPPOStep's are). Returns both losses, the largest difference of the clipped gradients
    relative to the largest gradient, and the largest difference of the updated weights relative
    to the largest weight change of the step. The trainer's weights and optimizer move by one step."""
    agent = trainer.agent
    agent.optimizer.state.clear()
    ours = numpy_step_for(trainer, tanh)
    before = ours.flat.copy()
    loss_numpy = ours.loss_and_grad(*(x.numpy() for x in rows))
    ours.clip_and_step()  # clips self.grad in place, as torch does
    loss_torch = torch_step(trainer, rows)
    named = list(agent.actor.parameters()) + list(agent.critic.parameters())
    grads_torch = np.concatenate([p.grad.numpy().ravel() for p in named])
    weights_torch = np.concatenate([p.detach().numpy().ravel() for p in named])
    return {"loss_numpy": loss_numpy, "loss_torch": loss_torch,
            "grad_rel": float(np.abs(ours.grad - grads_torch).max() / np.abs(grads_torch).max()),
            "weight_rel": float(np.abs(ours.flat - weights_torch).max() / np.abs(weights_torch - before).max())}


def measure(algo: str, overrides: dict, repeats: int) -> dict:
    """Alternated epochs (every minibatch once) of the eager step and the NumPy step with each
    tanh on the same minibatches, then whole iterations: best ms of each, and each NumPy way's
    one-step check against torch."""
    from update_levers import rational_tanh

    tanhs = {"numpy": np.tanh, "rational": rational_tanh}
    trainer, batch, slices = rollout_batch(algo, overrides)
    checks = {name: check_against_torch(trainer, _minibatch(batch, slices[0]), tanh) for name, tanh in tanhs.items()}
    steps = {name: numpy_step_for(trainer, tanh) for name, tanh in tanhs.items()}
    arrays = [x.numpy() for x in (batch.obs, batch.sample, batch.log_prob, batch.advantages, batch.returns, batch.value)]
    index = [idx.numpy() for idx in slices]

    def eager_epoch():
        for idx in slices:
            torch_step(trainer, _minibatch(batch, idx))

    def numpy_epoch(step):
        def epoch():
            for idx in index:  # the rows gathered as the eager step gathers them
                step.step(*(np.take(x, idx, axis=0) for x in arrays))
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
    tp = trainer.params.train
    return {"checks": checks, "minibatches": len(slices), "minibatch": trainer.minibatch_size,
            **{f"{name}_ms": best[name] / len(slices) * 1e3 for name in ways},
            "iteration_ms": iteration * 1e3, "update_minibatches": tp.update_epochs * len(slices),
            "env_steps": tp.num_envs * tp.rollout_steps}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds of each way (the best is kept)")
    parser.add_argument("--quick", action="store_true", help="a tiny batch: a smoke test, not a measurement")
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
    r = measure("baseline", overrides, args.repeats)
    labels = {"numpy": "NumPy, np.tanh", "rational": "NumPy, rational tanh (update_levers.rational_tanh)"}
    print("\none step from the same weights, against torch (float32 round-off: other bits, the same step)")
    print("| way | loss | torch's loss | max gradient difference / max gradient | max weight difference / max step |\n"
          "|---|---|---|---|---|")
    for name, c in r["checks"].items():
        print(f"| {labels[name]} | {c['loss_numpy']:.7g} | {c['loss_torch']:.7g} | {c['grad_rel']:.1e} | {c['weight_rel']:.1e} |")
    print(f"\nbaseline: one minibatch step ({r['minibatch']} states: loss, backward, clip, Adam), best of "
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
    return r


if __name__ == "__main__":
    main()
