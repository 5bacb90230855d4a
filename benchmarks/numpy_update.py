"""The PPO minibatch step outside torch, for every algorithm: what the update costs without per-op
dispatch.

    python benchmarks/numpy_update.py                       # the baseline, 5 alternated rounds
    python benchmarks/numpy_update.py --algo barriernet --repeats 10 --whole
    python benchmarks/numpy_update.py --quick               # tiny batch (a smoke test)

`update_levers.py --ceiling` showed that even free matrix products and tanh leave a baseline
iteration at most 2.0-2.2x faster: the rest is the dispatch of some 30 k small ATen ops (about
300 per minibatch step, each with its autograd bookkeeping) and the Python around them. So the
route to issue 17's 2x per core is a step with far fewer, larger calls, and it must keep the
pinned numerics. This measures how far that route goes; training takes it as
`train.learner: numpy` (model/numpy_learner.py, model/numpy_rollout.py), the default.
`NumpyPPOStep` is one minibatch step written as whole-array NumPy calls with the backward derived
by hand:

- the actor's log-probability of the stored samples and its backward: `GaussianActor` (tanh MLP,
  learned log-std; also inside `ShieldedActor`, whose QP only acts), `BarrierNetActor` in
  through_qp mode (tanh MLP, nominal and class-K heads, the CBF rows' right sides gamma h / dt,
  the QP by the compiled loop of `model.qp.cpu_n2_kernels` with its implicit-function backward,
  the clamp to the action box) or `CBFBetaActor` (softplus concentrations, the Beta density on
  the rollout's safe boxes, the Beta entropy; digamma from scipy.special, trigamma our own);
- the `Critic` (tanh MLP);
- the clipped surrogate, the clipped value loss and the entropy term of `model.ppo.ppo_losses`;
- global-norm clipping;
- Adam as torch's fused Adam computes it, on one flat vector of every parameter.

Every piece is pinned by `tasks/numerics.py`: OpenBLAS's Haswell kernels for the products,
NumPy's AVX2 loops for the elementwise calls, numba's Haswell target for the QP loop and the
rational tanh. The step runs with two tanh functions: NumPy's (a scalar loop here, 5 ns per
element) and `model.numpy_learner.rational_tanh` (Eigen's, a few ulp; vectorised).

Printed: the CPU; each way's one step against torch's from the same weights; ms per minibatch of
the eager step (as `model.ppo.ppo_update` runs it, without the gradient probe) and of each NumPy
way on the same minibatches, alternated; what a whole iteration would take if only its update
ran at a NumPy way's speed (the iteration timed in the same process; the rollout, GAE and the
rest unchanged: an estimate); and where a rollout's time goes (env steps, the actor's and the
critic's forward calls, the rest), with the rollout time that twice today's iteration speed
would leave once the update is that fast.

Its bits are not torch's learner's: OpenBLAS's products and either tanh round differently from
MKL's COMPATIBLE branch and ATen's, so the learning is shown the same within the seed intervals
instead (`benchmarks/numpy_learning.py`). `check_against_torch` compares one
step with torch's from the same weights: the loss, every gradient and the updated weights agree
to float32 round-off (tests/test_numpy_update.py, with every clipping branch and, for
BarrierNet, active CBF rows). `--whole` alternates real training iterations: torch's learner,
torch's learner with its update by the NumPy step (`NumpyLearner.patched`), and
`train.learner: numpy` as training runs it. Nothing here changes training.
"""

from __future__ import annotations

import argparse
import contextlib
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

from model.numpy_learner import NumpyLearner as _ModelLearner, NumpyPPOStep  # noqa: E402
from tasks.params import load_params  # noqa: E402

QUICK = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2}


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

    # torch's learner: the torch step measured here runs the modules' own forward
    params = load_params(overrides={"train.total_steps": 10**7, "train.learner": "torch", **overrides})
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
    from model.numpy_learner import rational_tanh

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


class NumpyLearner(_ModelLearner):
    """`model.numpy_learner.NumpyLearner` for one Trainer built with torch's learner: `patched`
    puts its update into `model.ppo.ppo_iteration` (the rollout stays torch's)."""

    def __init__(self, trainer, tanh=np.tanh):
        agent = trainer.agent
        super().__init__(agent.actor, agent.critic, agent.optimizer, trainer.update_cfg, tanh)

    def ppo_update(self, actor, critic, optimizer, batch, cfg, generator, scaler=None, after_backward=None,
                   learner=None) -> dict:
        """`model.ppo.ppo_update`'s signature (what `patched` installs)."""
        return self.update(actor, batch, cfg, generator, after_backward)

    @contextlib.contextmanager
    def patched(self):
        """Inside: `model.ppo.ppo_iteration` calls `update` (run only this trainer's iterations here)."""
        import model.ppo as ppo

        original = ppo.ppo_update
        ppo.ppo_update = self.ppo_update
        try:
            yield self
        finally:
            ppo.ppo_update = original


def measure_whole(algo: str, overrides: dict, repeats: int) -> dict:
    """Whole iterations of Trainers of the same seed, alternated after a warm-up round: torch's
    learner; torch's learner with the update by the NumPy step (`NumpyLearner.patched`, the
    rational tanh); and `train.learner: numpy` as training runs it (the update and the rollout's
    actor and critic forward in NumPy, `model/numpy_rollout.py`). Best ms of each."""
    from tasks.train import Trainer
    from model.numpy_learner import rational_tanh

    params = {learner: load_params(overrides={"train.total_steps": 10**7, **overrides, "train.learner": learner})
              for learner in ("torch", "numpy")}
    torch_trainer = Trainer(params["torch"], algo, 0, update_device="cpu")
    numpy_trainer = Trainer(params["torch"], algo, 0, update_device="cpu")
    learner = NumpyLearner(numpy_trainer, rational_tanh)
    both_trainer = Trainer(params["numpy"], algo, 0, update_device="cpu")
    ways = {"torch": (torch_trainer, contextlib.nullcontext), "numpy": (numpy_trainer, learner.patched),
            "numpy_rollout": (both_trainer, contextlib.nullcontext)}
    best = {name: float("inf") for name in ways}
    for round_ in range(repeats + 1):
        for name, (trainer, context) in ways.items():
            with context():
                start = time.perf_counter()
                trainer.train_one_update()
                if round_:
                    best[name] = min(best[name], time.perf_counter() - start)
    tp = params["torch"].train
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
    labels = {"numpy": "NumPy, np.tanh", "rational": "NumPy, rational tanh (model.numpy_learner.rational_tanh)"}
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
                            ("train.learner: numpy (the update, and the rollout's forwards where model/numpy_rollout.py has them)",
                             "numpy_rollout")):
            ms = whole[f"{name}_ms"]
            print(f"| {label} | {ms:.0f} | {whole['env_steps'] / ms * 1e3:,.0f} | {whole['torch_ms'] / ms:.2f}x |")
        r["whole"] = whole
    return r


if __name__ == "__main__":
    main()
