"""Training env-steps per second (rollout + PPO update, whole iterations, wall clock), side by side.

Seven ways to train a pursuer on the same pursuit-evasion env, measured in one process:

- ``baseline PPO``: our `tasks.train.Trainer`, Gaussian actor, default params (only the budget set),
- ``BarrierNet through_qp``: the same with the BarrierNet actor, ``barriernet.update_mode=through_qp``
  (the default: the PPO loss differentiates through the QP),
- ``BarrierNet nominal``: ``barriernet.update_mode=nominal`` (no QP in the update),
- ``CBF-Beta PPO``: the Beta policy on the safe box (model/cbf_beta.py: one batched centre QP
  per rollout step, kept by the rollout for the update, no QP in the loss),
- ``shielded PPO``: the Gaussian baseline with the post-hoc filter's QP on every rollout step
  (no QP in the update),
- ``reference design``: a faithful re-creation of the reference project's loop with our Trainer:
  one env, a batch-1 rollout with one qpth solve per step (``train.num_envs=1``,
  ``cbf.qp_backend=qpth``), the QP dropped from the update as they did (``update_mode=nominal``),
  and SB3-like PPO hyper-parameters (2048 rollout steps, minibatch 64, 10 epochs),
- ``Stable-Baselines3 PPO``: ``PPO("MlpPolicy", n_steps=2048, batch_size=64, n_epochs=10,
  device="cpu")`` on ``gymnasium.make("PursuitEvasion-v0")``, timed as steps / wall seconds of
  ``model.learn`` (skipped with a message when stable_baselines3 is not importable).

Each row excludes a warm-up: our five items run one full iteration first; the reference design
and SB3 run a short (64-step) iteration of the same configuration first. Our five items are
measured round-robin (one iteration of each per round), and the rounds are split into groups
with the reference design and SB3 run between them (ours, reference, ours, SB3, ours), so that
a change in the machine's load reaches every row alike; the load column is the 1-minute load
average (ours: the mean over their rounds; the others: when they ended). The printed ratios are the speed targets of issue 4: BarrierNet
(through_qp) / reference design, baseline / SB3, and BarrierNet's absolute env-steps/s. The
1-minute load average is printed with each row (this machine is shared), and so is the process's
CPU time over the same span: with one torch thread, env-steps per CPU-second approximate the
rate on an idle core, a load-robust companion to the wall-clock figure (which stays the measure).
The process runs with the pinned numerics training uses (`tasks/numerics.py`; `--set
numerics.mode=native` leaves the host's settings), so every library runs on one thread and the
rates are per core. A last line gives each safe algorithm's rate as a fraction of the baseline's
(issue 17's target: >= 0.9x).

``--phases`` adds each algorithm's fastest iteration split into rollout+GAE and the update, with
its time beyond the baseline's (where a safe algorithm's extra time goes, per phase).

``--profile [ALGO]`` adds a breakdown of one iteration of ALGO (default BarrierNet through_qp):
rollout vs update, the safety layer's share of each (the QP projection, the NumPy learner's too;
CBF-Beta's rows and safe box), the env step, the backward pass (and the QP's KKT backward inside
it), then the top functions of a cProfile run of the same iteration. For a safe algorithm it also
states what 0.9x the baseline's rate leaves it per iteration, how much more it takes, how much
of that the compiled QP loop alone took, the ratio it would reach with its QPs free, and the
ratio it would reach with everything but its own kernels (QP loop and backward, rows, boxes, fused
head loops, Beta special functions and draws) as fast as the baseline's: below 0.9x there, no
removal of plumbing can meet the target without faster kernels.

    python benchmarks/train_throughput.py                    # 3 iterations of the default batch
    python benchmarks/train_throughput.py --steps 81920 --threads 2
    python benchmarks/train_throughput.py --profile --skip-sb3 --skip-reference
    python benchmarks/train_throughput.py --phases --skip-sb3 --skip-reference
    python benchmarks/train_throughput.py --profile cbf_beta --quick --skip-sb3 --skip-reference
    python benchmarks/train_throughput.py --quick            # tiny budgets (a smoke test)
    python benchmarks/train_throughput.py --against 4f49af4  # this checkout vs a commit, side by side
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import os
import pstats
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

if __name__ == "__main__":
    # Pinned numerics, as training runs (tasks/numerics.py): set before torch, numpy and numba
    # load. Among others it holds OpenBLAS to one thread: unpinned, the NumPy learner's products
    # took both cores of a 2-core machine, and the rates were no longer per core.
    from tasks import numerics as _numerics

    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:]))

import torch

from model.actors import ALGOS
from tasks.params import Params, load_params

# Reference design: one env, batch-1 rollout with qpth, SB3-like PPO (minibatch 64, 10 epochs).
REFERENCE = {
    "train.num_envs": 1,
    "cbf.qp_backend": "qpth",
    "barriernet.update_mode": "nominal",
    "train.rollout_steps": 2048,
    "train.num_minibatches": 32,
    "train.update_epochs": 10,
}
SB3_CONFIG = {"n_steps": 2048, "batch_size": 64, "n_epochs": 10}
WARMUP_STEPS = 64  # the short warm-up iteration of the reference design and SB3

# --quick: tiny configurations with the same structure (a smoke test; the ratios mean little).
QUICK_OURS = {"train.num_envs": 8, "train.rollout_steps": 32, "train.num_minibatches": 2, "train.update_epochs": 2}
QUICK_REFERENCE = {"train.rollout_steps": 32, "train.num_minibatches": 1, "train.update_epochs": 2}
QUICK_SB3 = {"n_steps": 64, "batch_size": 64, "n_epochs": 2}
QUICK_WARMUP_STEPS = 16

TARGET_BARRIERNET_VS_REFERENCE = 50.0
TARGET_BASELINE_VS_SB3 = 10.0
TARGET_BARRIERNET_SPS = 10_000.0

ROW_BASELINE = "baseline PPO (ours)"
ROW_THROUGH_QP = "BarrierNet through_qp (ours)"
ROW_NOMINAL = "BarrierNet nominal (ours)"
ROW_CBF_BETA = "CBF-Beta PPO (ours)"
ROW_SHIELDED = "shielded PPO (ours)"
ROW_REFERENCE = "reference design (ours, 1 env)"
ROW_SB3 = "Stable-Baselines3 PPO"


@dataclass
class Measurement:
    """Env-steps and wall seconds of whole training iterations (warm-up excluded)."""

    name: str
    config: str
    iterations: int
    steps: int
    seconds: float  # wall clock
    load: float  # 1-minute load average when the measurement ended
    cpu_seconds: float = float("nan")  # CPU time of this process over the same span

    @property
    def sps(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_sps(self) -> float:
        """Env-steps per CPU-second: what the wall rate would be on an idle core (1 thread)."""
        return self.steps / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _with(params: Params, overrides: dict[str, Any]) -> Params:
    """`params` with dotted-key overrides, validated (ParamsError names a bad key or value)."""
    from tasks.params import apply_overrides, validate_params

    return validate_params(apply_overrides(params.to_dict(), overrides), source="train_throughput")


def _budget_overrides(params: Params, iterations: int) -> dict[str, Any]:
    # total_steps only sets the learning-rate annealing horizon; keep the rate above 0 throughout
    return {"train.total_steps": (iterations + 1) * params.train.batch_size}


def _describe_ours(params: Params) -> str:
    tp = params.train
    return (f"{tp.num_envs} envs x {tp.rollout_steps} steps, {tp.num_minibatches} minibatches of "
            f"{tp.minibatch_size} x {tp.update_epochs} epochs, QP {params.cbf.qp_backend}")


def make_trainer(params: Params, algo: str, seed: int = 0):
    from tasks.train import Trainer

    return Trainer(params, algo, seed)


class OursRunner:
    """Our items measured round-robin: `round()` runs one iteration of each, timed separately.

    items: (row name, params, algo). The constructor builds the trainers and runs one warm-up
    iteration of each (allocations, lazy init), which no measurement includes.
    """

    def __init__(self, items: list[tuple[str, Params, str]]):
        self.items = items
        self.trainers = [make_trainer(params, algo) for _, params, algo in items]
        for trainer in self.trainers:
            trainer.train_one_update()  # warm-up, excluded
        self.rounds = 0
        self.seconds = [0.0] * len(items)
        self.cpu = [0.0] * len(items)
        self.loads: list[float] = []

    def round(self) -> None:
        for i, trainer in enumerate(self.trainers):
            started, cpu_started = time.perf_counter(), time.process_time()
            trainer.train_one_update()
            self.seconds[i] += time.perf_counter() - started
            self.cpu[i] += time.process_time() - cpu_started
        self.rounds += 1
        self.loads.append(load_average())

    def results(self) -> list[Measurement]:
        load = sum(self.loads) / len(self.loads) if self.loads else float("nan")
        return [
            Measurement(name, _describe_ours(params), self.rounds, self.rounds * params.train.batch_size,
                        self.seconds[i], load, self.cpu[i])
            for i, (name, params, _) in enumerate(self.items)
        ]


def interleaved(runner: OursRunner, iterations: int, others: list[Callable[[], Measurement | None]]) -> list[Measurement]:
    """Run our `iterations` rounds in len(others) + 1 groups with the other items between them
    (ours, other 1, ours, other 2, ours ...), so that a drift in the machine's load reaches our
    items and the others alike. Returns the others' measurements (None results dropped)."""
    groups = len(others) + 1
    per_group = [iterations // groups + (1 if g < iterations % groups else 0) for g in range(groups)]
    measured = []
    for g in range(groups):
        for _ in range(per_group[g]):
            runner.round()
        if g < len(others):
            result = others[g]()
            if result is not None:
                measured.append(result)
    return measured


def measure_reference(params: Params, iterations: int, warmup_steps: int = WARMUP_STEPS) -> Measurement:
    """The reference design's loop: batch-1 rollout, one qpth solve per step (see REFERENCE)."""
    tp = params.train
    warm = _with(params, {"train.rollout_steps": warmup_steps, "train.num_minibatches": max(1, warmup_steps // tp.minibatch_size),
                          "train.update_epochs": 1})
    make_trainer(warm, "barriernet").train_one_update()  # warm-up: qpth, autograd, first calls
    trainer = make_trainer(params, "barriernet")
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        trainer.train_one_update()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    config = (f"1 env x {tp.rollout_steps} steps (batch-1 rollout, 1 qpth solve per step), "
              f"{tp.num_minibatches} minibatches of {tp.minibatch_size} x {tp.update_epochs} epochs, "
              f"update_mode {params.barriernet.update_mode}")
    return Measurement(ROW_REFERENCE, config, iterations, iterations * tp.batch_size, seconds, load_average(), cpu)


def sb3_available() -> tuple[bool, str]:
    try:
        import stable_baselines3  # noqa: F401
    except Exception as exc:  # not installed (optional "bench" extra) or broken
        return False, f"{type(exc).__name__}: {exc}"
    return True, stable_baselines3.__version__


def measure_sb3(config: dict[str, int], steps: int, seed: int = 0, warmup_steps: int = WARMUP_STEPS) -> Measurement:
    """SB3 PPO ("MlpPolicy", device cpu) on gymnasium.make("PursuitEvasion-v0"); steps / learn() seconds."""
    import gymnasium
    from stable_baselines3 import PPO

    import env  # noqa: F401  (registers PursuitEvasion-v0)

    warm_cfg = {"n_steps": warmup_steps, "batch_size": min(config["batch_size"], warmup_steps), "n_epochs": 1}
    warm = PPO("MlpPolicy", gymnasium.make(env.ENV_ID), device="cpu", seed=seed, verbose=0, **warm_cfg)
    warm.learn(total_timesteps=warmup_steps)  # warm-up, excluded
    model = PPO("MlpPolicy", gymnasium.make(env.ENV_ID), device="cpu", seed=seed, verbose=0, **config)
    started, cpu_started = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    done = int(model.num_timesteps)  # learn() finishes whole rollouts of n_steps
    desc = (f"1 env, MlpPolicy, n_steps {config['n_steps']}, batch {config['batch_size']} x "
            f"{config['n_epochs']} epochs, device cpu")
    return Measurement(ROW_SB3, desc, max(1, done // config["n_steps"]), done, seconds, load_average(), cpu)


# ---------------------------------------------------------------------------------------------
# Profile of one training iteration


def qp_free_ratio(safe_s: float, baseline_s: float, qp_s: float) -> float:
    """The safe algorithm's speed as a fraction of the baseline's were its QPs free: the baseline's
    iteration time over the safe one's less `qp_s`. Capped at 1 (the QPs' time comes from the timed
    iteration, not from the fastest ones, so the difference can undershoot the baseline's), and
    never below the measured ratio (taking work away cannot slow it; at tiny sizes noise can put
    the measured ratio above 1)."""
    return max(baseline_s / safe_s, baseline_s / max(safe_s - qp_s, baseline_s))


class PhaseTimer:
    """Wall time of named parts of one training iteration, by wrapping callables in place.

    Wrapped: model.ppo.collect_rollout and model.ppo.ppo_update (the two phases), the env step,
    the actor's forward and evaluate_actions, BarrierNet's CBF-QP projection and CBF-Beta's rows
    and safe box (attributed to the phase they run in), Tensor.backward, the optimizer step and
    the QP's KKT backward (exact backend), the compiled QP loop and the safety layer's other
    kernels (`safety_kernels`, one bucket). Everything is restored on exit.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.phase = "other"
        self._restore: list[Callable[[], None]] = []
        self._wrapped: set[tuple[int, str]] = set()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def _timed(self, fn: Callable, name: Callable[[], str] | str, phase: str | None = None) -> Callable:
        def wrapper(*args, **kwargs):
            previous = self.phase
            if phase is not None:
                self.phase = phase
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name() if callable(name) else name, time.perf_counter() - started)
                self.phase = previous
        return wrapper

    def patch(self, owner: Any, attr: str, name: Callable[[], str] | str, phase: str | None = None, static: bool = False) -> None:
        """Replace a module or class attribute by a timed wrapper (restored on exit)."""
        original = owner.__dict__[attr] if static else getattr(owner, attr)
        wrapped = self._timed(original.__func__ if static else original, name, phase)
        setattr(owner, attr, staticmethod(wrapped) if static else wrapped)
        self._restore.append(lambda: setattr(owner, attr, original))

    def patch_instance(self, obj: Any, attr: str, name: Callable[[], str] | str, phase: str | None = None) -> None:
        """Shadow a method by a timed wrapper in the instance's __dict__ (deleted on exit)."""
        if (id(obj), attr) in self._wrapped:
            return  # already wrapped (the same object reached twice)
        self._wrapped.add((id(obj), attr))
        # an instance's own attribute (the NumPy rollout forward, model/numpy_rollout.py) is put back
        had, own = attr in obj.__dict__, obj.__dict__.get(attr)
        obj.__dict__[attr] = self._timed(getattr(obj, attr), name, phase)
        self._restore.append(lambda: obj.__dict__.__setitem__(attr, own) if had else obj.__dict__.pop(attr, None))

    @contextlib.contextmanager
    def attached(self, trainer) -> Iterator["PhaseTimer"]:
        import model.cbf_beta as cbf_beta_module
        import model.qp.common as qp_common
        import model.ppo as ppo_module
        from model.cbf_beta import CBFBetaActor

        qp_name = lambda: f"{self.phase}: QP projection (cbf rows excluded)"  # noqa: E731
        self.patch(ppo_module, "collect_rollout", "rollout", phase="rollout")
        self.patch_instance(trainer.core, "step", "rollout: env step")
        self.patch_instance(trainer.rollout_actor, "forward", "rollout: actor forward")
        self.patch_instance(trainer.actor, "evaluate_actions", "update: actor evaluate_actions")
        for actor in (trainer.rollout_actor, trainer.actor):
            if hasattr(actor, "projection"):  # BarrierNet
                self.patch_instance(actor.projection, "forward", qp_name)
            if isinstance(actor, CBFBetaActor):  # its rows, then the box (centre QPs, chords; numba)
                for rows in ("rows", "rows_arrays"):  # the update's (tensors), the NumPy rollout's (arrays)
                    self.patch_instance(actor, rows, lambda: f"{self.phase}: CBF-Beta rows (cbf_rows)")
        # every CPU box reaches it (`safe_box`'s tensors too), looked up at each call
        self.patch(cbf_beta_module, "safe_box_arrays", lambda: f"{self.phase}: CBF-Beta safe box (centre QPs + chords)")
        self.patch_instance(trainer.optimizer, "step", "update: optimizer step")
        self.patch(ppo_module, "ppo_update", "update", phase="update")
        self.patch(torch.Tensor, "backward", "update: backward (all)")
        # On the CPU every QP backward goes through this one autograd node (model/qp/common.py).
        self.patch(qp_common.PrecomputedKKT, "backward", "update: backward, QP KKT (python part)", static=True)
        # The NumPy learner and rollout (train.learner: numpy) call the QP on arrays: BarrierNet's
        # and the shield's projections, and BarrierNet's implicit-function backward.
        import model.numpy_learner as numpy_learner
        import model.qp.cpu_n2_kernels as kernels
        self.patch(numpy_learner.ProjectionQP, "__call__", qp_name)
        # the QP's own arithmetic (the compiled loop every CPU route ends in), apart from its plumbing
        self.patch(kernels, "solve_batch", KERNEL)
        policy = getattr(getattr(trainer.learner, "step", None), "policy", None)
        if isinstance(policy, numpy_learner._BarrierNetPolicy):
            self.patch_instance(policy, "qp_backward", KKT_KERNEL)
        for owner, attr in safety_kernels():
            self.patch(owner, attr, OWN_KERNELS)
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        """Put back every attribute this timer wrapped."""
        for restore in reversed(self._restore):
            restore()
        self._restore.clear()
        self._wrapped.clear()


KERNEL = "compiled QP loop (model.qp.cpu_n2_kernels.solve_batch; rollout and update)"
# the NumPy BarrierNet update's QP backward is the compiled `backward_batch` itself
KKT_KERNEL = "update: backward, QP KKT (python part)"
OWN_KERNELS = "the safety layer's other kernels"


def safety_kernels() -> list[tuple[Any, str]]:
    """(module, name) of the arithmetic only a safe algorithm runs, besides the QP loop and its
    backward: the CBF rows' compiled loop, CBF-Beta's box loops, special functions and Beta draws,
    BarrierNet's fused head, score and gradient loops, the shield's rollout tail. Each is looked up by name at each call, so
    wrapping the module attribute times every call (none calls another of them from Python)."""
    from scipy import special

    import model.cbf as cbf
    import model.cbf_beta as cbf_beta
    import model.numpy_learner as numpy_learner
    import model.numpy_rollout as numpy_rollout

    return [(cbf, "_rows_kernel"),
            (cbf_beta, "_pushed_right_sides"), (cbf_beta, "_empty_beyond_round_off"), (cbf_beta, "_boxes_kernel"),
            (special, "gammaln"), (special, "digamma"), (numpy_learner, "trigamma"), (torch, "_sample_dirichlet"),
            (numpy_learner, "_barriernet_head_values"), (numpy_learner, "_barrier_right_sides"),
            (numpy_learner, "_clamped_gaussian_log_prob"), (numpy_learner, "_barriernet_head_grads"),
            (numpy_learner, "_barriernet_raw_grads"), (numpy_rollout, "_barriernet_rollout_tail"),
            (numpy_rollout, "_shielded_rollout_tail")]


def kernel_floor_ratio(baseline_s: float, kernels_s: float) -> float:
    """The safe algorithm's speed as a fraction of the baseline's were everything but its own
    kernels as fast as the baseline's: the baseline's iteration over itself plus those kernels. An
    upper bound on what removing plumbing alone can reach (its extra heads' products and the rest
    are left out, so the true bound is lower)."""
    return baseline_s / (baseline_s + kernels_s)


TARGET_SAFE_VS_BASELINE = 0.9  # issue 17: BarrierNet, CBF-Beta and shielded PPO at >= 0.9x the baseline


def _fastest_iterations(trainers: list, repeats: int = 7) -> list[float]:
    """Each trainer's least wall time of `repeats` training iterations (seconds), the trainers
    taking turns (one iteration each per round), so that a drift of the machine reaches them alike."""
    best = [math.inf] * len(trainers)
    for _ in range(repeats):
        for i, trainer in enumerate(trainers):
            started = time.perf_counter()
            trainer.train_one_update()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


PHASE_ALGOS = ("baseline", "barriernet", "cbf_beta", "shielded")


def phase_split(params: Params, repeats: int = 9) -> str:
    """The fastest of `repeats` iterations of each algorithm (taking turns), split into the update
    (`model.ppo.ppo_update`, the NumPy or torch learner) and the rest (rollout, GAE, buffer): where
    each safe algorithm's time beyond the baseline's goes, against what 0.9x the baseline's rate
    allows (issue 17). Each phase's minimum is taken on its own, so the two columns need not add
    up to the fastest whole iteration."""
    import model.ppo as ppo

    trainers = [make_trainer(params, algo) for algo in PHASE_ALGOS]
    for trainer in trainers:
        trainer.train_one_update()  # warm-up, excluded
    best = {algo: [math.inf, math.inf, math.inf] for algo in PHASE_ALGOS}  # rest, update, whole
    timer = PhaseTimer()
    timer.patch(ppo, "ppo_update", "update")  # ppo_iteration looks it up at each call
    try:
        for _ in range(repeats):
            for algo, trainer in zip(PHASE_ALGOS, trainers):
                timer.seconds.clear()
                started = time.perf_counter()
                trainer.train_one_update()
                whole = time.perf_counter() - started
                spent, row = timer.seconds["update"], best[algo]
                row[:] = min(row[0], whole - spent), min(row[1], spent), min(row[2], whole)
    finally:
        timer.restore()
    base = best["baseline"][2]
    allowed = base / TARGET_SAFE_VS_BASELINE - base
    head = (f"{'algorithm':<11} | {'rollout+GAE ms':>14} | {'update ms':>9} | {'iteration ms':>12} | "
            f"{'beyond the baseline':>19} | {'vs baseline':>11}")
    lines = [f"where the time goes per algorithm: fastest of {repeats} iterations each, taking turns, "
             f"{_describe_ours(params)}; 0.9x the baseline's rate allows {1e3 * allowed:.1f} ms beyond its "
             "iteration", head, "-" * len(head)]
    for algo in PHASE_ALGOS:
        rest, upd, whole = best[algo]
        lines.append(f"{algo:<11} | {1e3 * rest:>14.1f} | {1e3 * upd:>9.1f} | {1e3 * whole:>12.1f} | "
                     f"{1e3 * (whole - base):>+16.1f} ms | {base / whole:>10.2f}x")
    return "\n".join(lines)


def profile_iteration(params: Params, algo: str = "barriernet", top: int = 25) -> str:
    """Breakdown of one training iteration of `algo` (after a warm-up) and the top cProfile
    functions. For a policy with a safety layer, also what the 0.9x target leaves it: the
    baseline's and the policy's fastest untimed iteration, and the compiled QP loop's own time."""
    trainer = make_trainer(params, algo)
    trainer.train_one_update()  # warm-up
    timer = PhaseTimer()
    with timer.attached(trainer):
        started = time.perf_counter()
        trainer.train_one_update()
        total = time.perf_counter() - started
    s = timer.seconds
    kernel = s.pop(KERNEL, 0.0)
    own_kernels = s.pop(OWN_KERNELS, 0.0)
    rows = [("iteration (rollout + GAE + update)", total)]
    order = [
        "rollout", "rollout: actor forward", "rollout: QP projection (cbf rows excluded)",
        "rollout: CBF-Beta rows (cbf_rows)", "rollout: CBF-Beta safe box (centre QPs + chords)", "rollout: env step",
        "update", "update: actor evaluate_actions", "update: QP projection (cbf rows excluded)",
        "update: CBF-Beta rows (cbf_rows)", "update: CBF-Beta safe box (centre QPs + chords)",
        "update: backward (all)", "update: backward, QP KKT (python part)", "update: optimizer step",
    ]
    rows += [(name, s[name]) for name in order if name in s]
    rows.append(("other (GAE, buffer flatten, LR, sync)", total - s.get("rollout", 0.0) - s.get("update", 0.0)))
    tp = params.train
    out = io.StringIO()
    what = f"BarrierNet ({params.barriernet.update_mode})" if algo == "barriernet" else algo
    print(f"\nwhere the time goes: one {what} iteration, learner {params.train.learner}, "
          f"{_describe_ours(params)}, load {load_average():.2f}", file=out)
    width = max(len(name) for name, _ in rows)
    print(f"{'part':<{width}} | {'seconds':>8} | {'share':>6}", file=out)
    print("-" * (width + 20), file=out)
    for name, seconds in rows:
        print(f"{name:<{width}} | {seconds:>8.3f} | {100 * seconds / total:>5.1f}%", file=out)
    rollout_qp = s.get("rollout: QP projection (cbf rows excluded)", 0.0)
    update_qp = s.get("update: QP projection (cbf rows excluded)", 0.0)
    kkt = s.get("update: backward, QP KKT (python part)", 0.0)
    print(f"QP forward {rollout_qp + update_qp:.3f} s (rollout {rollout_qp:.3f}, update {update_qp:.3f}) vs "
          f"QP KKT backward {kkt:.3f} s; per rollout step {1e3 * s.get('rollout', 0.0) / tp.rollout_steps:.2f} ms "
          f"for {tp.num_envs} envs", file=out)
    if algo != "baseline":
        baseline = make_trainer(params, "baseline")
        baseline.train_one_update()  # warm-up
        ours, theirs = _fastest_iterations([trainer, baseline])
        allowed = theirs / TARGET_SAFE_VS_BASELINE - theirs
        print(f"{TARGET_SAFE_VS_BASELINE}x the baseline's env-steps/s allows {1e3 * allowed:.1f} ms per iteration "
              f"beyond the baseline's {1e3 * theirs:.1f} ms; {what} takes {1e3 * (ours - theirs):.1f} ms more "
              f"({theirs / ours:.2f}x; fastest of 7 untimed iterations each, taking turns), of which the compiled QP loop "
              f"alone took {1e3 * kernel:.1f} ms in the timed iteration", file=out)
        # The safety layer's QPs whole (the compiled loop, its NumPy plumbing and fallback; CBF-Beta:
        # the safe box, whose centre QPs and chords are its QP work) as if they took no time: a bound
        # on what any faster QP alone can give. Below the target, the rest of the layer (rows, heads,
        # curves) exceeds the allowance by itself.
        qp_parts = ("rollout: QP projection (cbf rows excluded)", "update: QP projection (cbf rows excluded)",
                    "rollout: CBF-Beta safe box (centre QPs + chords)", "update: CBF-Beta safe box (centre QPs + chords)")
        qp_whole = sum(s.get(name, 0.0) for name in qp_parts)
        if qp_whole > 0:
            free = qp_free_ratio(ours, theirs, qp_whole)
            print(f"with its QPs taking no time at all ({1e3 * qp_whole:.1f} ms in the timed iteration: the compiled "
                  f"loop, its plumbing and fallback{', the safe box' if algo == 'cbf_beta' else ''}), {what} would run at "
                  f"{free:.2f}x the baseline ({'meets' if free >= TARGET_SAFE_VS_BASELINE else 'still below'} "
                  f"{TARGET_SAFE_VS_BASELINE}x)", file=out)
        # Only the QP backward timed at the compiled `backward_batch` itself counts (the NumPy
        # learner's); torch's learner times its Python autograd node under that name.
        kkt_kernel = s.get(KKT_KERNEL, 0.0) if params.train.learner == "numpy" else 0.0
        kernels = kernel + kkt_kernel + own_kernels
        floor = kernel_floor_ratio(theirs, kernels)
        print(f"its own kernels alone (the QP loop {1e3 * kernel:.1f} ms, its backward {1e3 * kkt_kernel:.1f} ms, the "
              f"rows', boxes', heads' and Beta's compiled loops, special functions and draws {1e3 * own_kernels:.1f} ms) "
              f"took {1e3 * kernels:.1f} ms in the timed iteration; with everything else as fast as the baseline's, "
              f"{what} would run at {floor:.2f}x ({'meets' if floor >= TARGET_SAFE_VS_BASELINE else 'below'} "
              f"{TARGET_SAFE_VS_BASELINE}x: a bound on what removing plumbing alone can give)", file=out)

    profiler = cProfile.Profile()
    profiler.enable()
    trainer.train_one_update()
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of one more iteration, top {top} by own time (cProfile inflates Python-heavy parts):", file=out)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    print("\n".join(line.replace(os.getcwd() + os.sep, "") for line in lines[start:] if line.strip()), file=out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer; accepted: >= 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; accepted: 0 (torch's default) or more threads")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=_positive, default=None,
                        help="env-steps per item of ours, rounded up to whole iterations (default: 3 iterations)")
    parser.add_argument("--reference-steps", type=_positive, default=None,
                        help="env-steps of the reference design, whole iterations (default: one iteration, 2048)")
    parser.add_argument("--sb3-steps", type=_positive, default=None,
                        help="total_timesteps of SB3's learn() (default: 2 rollouts, 4096)")
    parser.add_argument("--threads", type=_non_negative, default=None,
                        help="torch.set_num_threads for every item (default: train.torch_threads; 0: torch's default)")
    parser.add_argument("--params", default=None, help="params.yaml to start from (default: the repo's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override applied to every item of ours and the reference (repeatable)")
    parser.add_argument("--quick", action="store_true", help="tiny configurations and budgets (a smoke test)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the reference design")
    parser.add_argument("--skip-sb3", action="store_true", help="leave out Stable-Baselines3")
    parser.add_argument("--profile", nargs="?", const="barriernet", default=None,
                        choices=ALGOS, metavar="ALGO",
                        help="add the breakdown of one iteration of ALGO (default, without ALGO: barriernet)")
    parser.add_argument("--phases", action="store_true",
                        help="add each algorithm's fastest iteration split into rollout+GAE and update")
    parser.add_argument("--against", default=None, metavar="COMMIT",
                        help="instead: this checkout vs COMMIT side by side, per algorithm (benchmarks/side_by_side.py)")
    parser.add_argument("--rounds", type=_positive, default=8, help="with --against: alternating rounds in all")
    parser.add_argument("--processes", type=_positive, default=4,
                        help="with --against: successive pairs of child processes the rounds are split over")
    return parser


def format_table(rows: list[Measurement]) -> str:
    head = (f"{'item':<31} | {'iters':>5} | {'env-steps':>9} | {'wall s':>7} | {'env-steps/s':>11} | {'load':>5} | "
            f"{'CPU s':>7} | {'steps/CPU-s':>11} | configuration")
    lines = [head, "-" * len(head)]
    for m in rows:
        lines.append(f"{m.name:<31} | {m.iterations:>5} | {m.steps:>9} | {m.seconds:>7.2f} | {m.sps:>11,.0f} | "
                     f"{m.load:>5.2f} | {m.cpu_seconds:>7.2f} | {m.cpu_sps:>11,.0f} | {m.config}")
    return "\n".join(lines)


def _ratio_line(label: str, top: Measurement, bottom: Measurement | None, bottom_name: str, target: float) -> str:
    if bottom is None:
        return f"{label}: n/a ({bottom_name} not measured)"
    ratio = top.sps / bottom.sps
    verdict = "meets" if ratio >= target else "below"
    cpu_ratio = top.cpu_sps / bottom.cpu_sps
    cpu = f"; per CPU-second {cpu_ratio:,.1f}x" if math.isfinite(cpu_ratio) else ""
    return f"{label}: {ratio:,.1f}x (target >= {target:g}x: {verdict}{cpu})"


def main(argv: list[str] | None = None) -> dict[str, Measurement]:
    from tasks.train import resolve_device

    args = build_parser().parse_args(argv)
    if args.against:
        sys.path.insert(0, str(Path(__file__).parent))  # its sibling, also when loaded by file path
        import side_by_side

        overrides = side_by_side.parse_sets(args.overrides)
        if args.quick:
            overrides.update(QUICK_OURS)
        print(side_by_side.compare(args.against, list(side_by_side.ALGOS), args.rounds, overrides,
                                   args.threads if args.threads is not None else 1, processes=args.processes), flush=True)
        return {}
    base = load_params(args.params, overrides=args.overrides or None)
    if args.threads is not None:
        base = _with(base, {"train.torch_threads": args.threads})
    if args.quick:
        base = _with(base, QUICK_OURS)
    threads = base.train.torch_threads
    if threads:
        torch.set_num_threads(threads)

    batch = base.train.batch_size
    warmup = QUICK_WARMUP_STEPS if args.quick else WARMUP_STEPS
    iterations = math.ceil(args.steps / batch) if args.steps else (1 if args.quick else 3)
    ours_params = _with(base, _budget_overrides(base, iterations))
    items = [
        (ROW_BASELINE, ours_params, "baseline"),
        (ROW_THROUGH_QP, _with(ours_params, {"barriernet.update_mode": "through_qp"}), "barriernet"),
        (ROW_NOMINAL, _with(ours_params, {"barriernet.update_mode": "nominal"}), "barriernet"),
        (ROW_CBF_BETA, ours_params, "cbf_beta"),
        (ROW_SHIELDED, ours_params, "shielded"),
    ]

    print(f"training throughput (env-steps/s, rollout + update, warm-up excluded), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, update device "
          f"{resolve_device(base.train.update_device)}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          + (" [--quick: tiny budgets, ratios are not meaningful]" if args.quick else ""), flush=True)

    others: list[Callable[[], Measurement | None]] = []
    if not args.skip_reference:
        ref_overrides = dict(REFERENCE)
        if args.quick:
            ref_overrides.update(QUICK_REFERENCE)
        ref_base = _with(base, ref_overrides)
        ref_iterations = math.ceil(args.reference_steps / ref_base.train.batch_size) if args.reference_steps else 1
        ref_params = _with(ref_base, _budget_overrides(ref_base, ref_iterations))
        others.append(lambda: measure_reference(ref_params, ref_iterations, warmup))

    sb3_note = None
    if not args.skip_sb3:
        available, detail = sb3_available()
        if available:
            config = dict(QUICK_SB3 if args.quick else SB3_CONFIG)
            sb3_steps = args.sb3_steps or (config["n_steps"] if args.quick else 2 * config["n_steps"])

            def run_sb3() -> Measurement:
                measurement = measure_sb3(config, sb3_steps, warmup_steps=warmup)
                measurement.config += f", stable-baselines3 {detail}"
                return measurement

            others.append(run_sb3)
        else:
            sb3_note = f"{ROW_SB3}: skipped, stable_baselines3 is not importable ({detail}); install the 'bench' extra"

    runner = OursRunner(items)
    measured_others = interleaved(runner, iterations, others)
    results: dict[str, Measurement] = {m.name: m for m in runner.results() + measured_others}

    print(format_table(list(results.values())))
    if sb3_note:
        print(sb3_note)
    through_qp = results[ROW_THROUGH_QP]
    print(_ratio_line("BarrierNet through_qp / reference design", through_qp, results.get(ROW_REFERENCE),
                      ROW_REFERENCE, TARGET_BARRIERNET_VS_REFERENCE))
    print(_ratio_line("baseline PPO / Stable-Baselines3 PPO", results[ROW_BASELINE], results.get(ROW_SB3),
                      ROW_SB3, TARGET_BASELINE_VS_SB3))
    verdict = "meets" if through_qp.sps >= TARGET_BARRIERNET_SPS else "below"
    print(f"BarrierNet through_qp absolute: {through_qp.sps:,.0f} env-steps/s, 1 M steps in "
          f"{1e6 / through_qp.sps / 60:.1f} min (target >= {TARGET_BARRIERNET_SPS:,.0f}: {verdict}); "
          f"{through_qp.cpu_sps:,.0f} env-steps per CPU-second")
    cbf_beta = results[ROW_CBF_BETA]
    print(f"BarrierNet through_qp training-time overhead vs CBF-Beta: {cbf_beta.sps / through_qp.sps:,.2f}x "
          f"(time per env-step; the Phase 2.5 plan's target < 5x, stretch < 3x); shielded PPO "
          f"{results[ROW_SHIELDED].sps:,.0f} env-steps/s, {results[ROW_SHIELDED].sps / results[ROW_BASELINE].sps:,.2f}x "
          "the baseline's")
    base = results[ROW_BASELINE].sps
    print(f"safe algorithms vs the baseline (target >= {TARGET_SAFE_VS_BASELINE}x): " + ", ".join(
        f"{name} {results[row].sps / base:.2f}x ({'meets' if results[row].sps >= TARGET_SAFE_VS_BASELINE * base else 'below'})"
        for name, row in (("BarrierNet through_qp", ROW_THROUGH_QP), ("CBF-Beta", ROW_CBF_BETA),
                          ("shielded", ROW_SHIELDED))))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    if args.phases:
        print(phase_split(ours_params), flush=True)
    if args.profile:
        profiled = _with(ours_params, {"barriernet.update_mode": "through_qp"}) if args.profile == "barriernet" else ours_params
        print(profile_iteration(profiled, args.profile), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
