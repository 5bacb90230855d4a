"""Stage `train`: PPO for one (algorithm, seed) cell, hybrid rollout/update, resumable.

Inputs: params (env, train, and for BarrierNet cbf + barriernet).
Outputs under ``<workdir>/results/train/<algo>-s<seed>/``:
  model.pt        final weights + observation normaliser (what `evaluate` loads)
  summary.json    budget, wall time, env-steps/s, last-window rates, fallbacks
  live/           DVCLive curves (metrics.json, plots/metrics/**.tsv)

Resume state lives outside the outputs DVC deletes, in ``<state_root>/<algo>-s<seed>-<hash>/``
(default ``.cache/train-state`` at the repo root, env ``BARRIERNET_STATE_DIR`` overrides), keyed
by the hash of the params that shape training and of the training code (`code_fingerprint`):
the same configuration resumes from its latest checkpoint; a changed one starts fresh and
leaves the other's state alone.

Hybrid scheme (the reference design's, kept because batch-1 GPU inference loses to the CPU):
the rollout copy of the agent lives on ``train.rollout_device`` beside the batched env, the
learner on ``train.update_device``; weights are copied to the rollout copy after every update,
and each rollout goes to the learner in one transfer per tensor.

The PPO iteration itself (collect -> GAE -> update) is `model.ppo.ppo_iteration`; this stage
keeps the devices, checkpoints, resume keys and logging around it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from env.core import PursuitEvasionCore
from model.actors import ALGOS, Critic, make_actor
from model.diagnostics import GradientProbe
from model.ppo import (
    IterationConfig,
    NonFiniteStep,
    PPOAgent,
    RewardScaler,
    RolloutBuffer,
    RolloutTotals,
    RunningMeanStd,
    UpdateConfig,
    UpdateOutOfMemory,
    collect_rollout,
    ppo_iteration,
    rollout_metrics,
)
from tasks import io, numerics
from tasks.artifacts import CheckpointError, cell_name, train_dir
from tasks.artifacts.policy import _safe_torch_load, load_trained, trained_model_record  # noqa: F401 (load_trained re-exported for tests)
from tasks.gpu import release_cached_memory, set_allocator_defaults, wait_for_headroom
from tasks.params import Params, params_hash, training_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_NAME = "checkpoint.pt"
# Curves whose values depend on wall-clock time, not on the computation (excluded from the
# bit-exact resume comparison).
TIMING_METRICS = ("perf/SPS", "perf/policy_ms")


class TrainingError(RuntimeError):
    """Training cannot go on (bad numbers, bad checkpoint); the message says where."""


class NonFiniteError(TrainingError):
    """A NaN/inf observation or reward: the message names the step and env index."""


class TrainingOOMError(TrainingError):
    """CUDA ran out of memory; the orchestrator may retry with a smaller minibatch."""

    def __init__(self, message: str, minibatch_size: int):
        super().__init__(message)
        self.minibatch_size = minibatch_size

    def __reduce__(self):  # survives pickling between Dask processes
        return (type(self), (str(self), self.minibatch_size))


class InjectedFault(RuntimeError):
    """Test-only transient failure (BARRIERNET_FAULT_* environment variables)."""


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """Hash (16 hex digits) of the Python sources the train stage declares as its code in the
    stage registry (the files DVC watches for it), part of the resume key: a checkpoint written
    by other code is never resumed, nor a finished one reused, after the code changed."""
    from tasks.code_deps import import_closure

    digest = hashlib.sha256()
    for entry in import_closure("tasks.train"):
        path = REPO_ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for source in files:
            digest.update(source.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def state_root() -> Path:
    return Path(os.environ.get("BARRIERNET_STATE_DIR", REPO_ROOT / ".cache" / "train-state"))


def output_dir(workdir: Path, algo: str, seed: int) -> Path:
    return train_dir(workdir, algo, seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train device 'cuda' requested but torch.cuda.is_available() is False; use 'cpu' or 'auto'")
    return torch.device(name)


def train_env_seeds(seed: int, num_envs: int) -> list[int]:
    """Env i of training seed s gets env seed s * num_envs + i (below eval.seed_base, checked in params)."""
    return [seed * num_envs + i for i in range(num_envs)]


def _allocate_adam_state(optimizer: torch.optim.Adam) -> None:
    """Create Adam's moment buffers now (torch allocates them lazily at the first step).

    On a shared GPU an out-of-memory error then comes in the first seconds, not after the
    first rollout. The state equals what Adam's lazy init would create.
    """
    for group in optimizer.param_groups:
        on_device = group.get("fused") or group.get("capturable")  # torch keeps their step beside p
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def fault_injection_hook() -> Callable[[int], None]:
    """The test-only fault switch, read once from the environment (so a test reaches another
    process, such as a Dask worker): called with the number of updates done after each one.

    BARRIERNET_FAULT_TRAIN_AFTER_UPDATE=n and BARRIERNET_FAULT_MARKER=path: after update n, once
    (the marker file remembers it happened), fail as BARRIERNET_FAULT_KIND says: "crash"
    (default, InjectedFault), "oom" (torch.cuda.OutOfMemoryError) or "kill" (SIGKILL this
    process). Unset: a no-op.
    """
    after = os.environ.get("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE")
    marker = os.environ.get("BARRIERNET_FAULT_MARKER")
    kind = os.environ.get("BARRIERNET_FAULT_KIND", "crash")
    if after is None or marker is None:
        return lambda update: None

    def inject(update: int) -> None:
        if update != int(after) or Path(marker).exists():
            return
        Path(marker).write_text(f"fault injected after update {update}\n")
        if kind == "oom":
            raise torch.cuda.OutOfMemoryError(f"injected out-of-memory after update {update} (test switch)")
        if kind == "kill":
            os.kill(os.getpid(), 9)
        raise InjectedFault(f"injected transient failure after update {update} (test switch)")

    return inject


class Trainer:
    """Owns the env, the learner and its rollout copy, and everything a checkpoint holds."""

    def __init__(
        self,
        params: Params,
        algo: str,
        seed: int,
        minibatch_size: int | None = None,
        update_device: str | None = None,
        sync_free: bool | None = None,
    ):
        params = params.for_algo(algo)  # this algorithm's tuned settings (train.per_algo)
        self.params, self.algo, self.seed = params, algo, seed
        tp = params.train
        self.rollout_device = resolve_device(tp.rollout_device)
        requested = update_device or tp.update_device
        # the NumPy learner updates on the CPU: "auto" means the CPU there, an explicit CUDA is refused
        self.update_device = resolve_device("cpu" if tp.learner == "numpy" and requested == "auto" else requested)
        if tp.learner == "numpy" and self.update_device.type != "cpu":  # before any model is built
            raise ValueError(f"train.learner=numpy runs the update on the CPU, but the update device is "
                             f"{self.update_device.type}; accepted: train.update_device=cpu, or train.learner=torch")
        config = training_config(params, algo, seed)
        # the device the learner really runs on ("auto" resolved, or the CPU fallback): its
        # weights differ from another device's, so a checkpoint never resumes on the other
        config["train"] = {**config["train"], "update_device": self.update_device.type}
        self.config = {**config, "code": code_fingerprint()}
        self.key = params_hash(self.config)
        # On CUDA the rollout loop must not wait on the device every step: no per-step host
        # syncs (checks are batched once per rollout). On the CPU syncs are free, and checking
        # each step names the bad step before its NaN spreads.
        self.sync_free = self.rollout_device.type == "cuda" if sync_free is None else sync_free
        self.num_updates = tp.num_updates
        self.minibatch_size = minibatch_size or tp.minibatch_size
        if tp.torch_threads:
            torch.set_num_threads(tp.torch_threads)

        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.core = PursuitEvasionCore(
            params.env, tp.num_envs, device=self.rollout_device,
            sync_free_autoreset=self.sync_free, validate_actions=not self.sync_free,
        )
        self.core.seed(train_env_seeds(seed, tp.num_envs))
        self.obs_dim = self.core.obs_dim

        self.actor = make_actor(algo, self.obs_dim, params).to(self.update_device)
        self.critic = Critic(self.obs_dim, tp.hidden_sizes).to(self.update_device)
        # fused: one kernel for every parameter tensor (3x faster than the per-tensor loop on CPU)
        self.optimizer = torch.optim.Adam(
            list(self.actor.parameters()) + list(self.critic.parameters()), lr=tp.learning_rate, eps=1e-5, fused=True
        )
        _allocate_adam_state(self.optimizer)
        self.amp = self.update_device.type == "cuda" and tp.mixed_precision
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        if self.rollout_device == self.update_device:
            self.rollout_actor, self.rollout_critic = self.actor, self.critic
        else:
            self.rollout_actor = copy.deepcopy(self.actor).to(self.rollout_device)
            self.rollout_critic = copy.deepcopy(self.critic).to(self.rollout_device)

        self.obs_rms = RunningMeanStd((self.obs_dim,)).to(self.rollout_device)
        self.reward_scaler = RewardScaler(tp.num_envs, tp.gamma).to(self.rollout_device)
        self.update_generator = torch.Generator().manual_seed(seed)
        self.buffer = RolloutBuffer(
            tp.rollout_steps, tp.num_envs, self.obs_dim, params.env.num_obstacles, self.rollout_device
        )
        self.agent = PPOAgent(
            self.core, self.actor, self.critic, self.rollout_actor, self.rollout_critic, self.optimizer,
            self.obs_rms, self.reward_scaler, self.buffer, self.update_generator, self.scaler,
        )
        self.iteration_cfg = IterationConfig(
            gamma=tp.gamma, gae_lambda=tp.gae_lambda, norm_obs=tp.norm_obs, sync_free=self.sync_free
        )
        self.update_cfg = UpdateConfig(
            update_epochs=tp.update_epochs, minibatch_size=self.minibatch_size, clip_coef=tp.clip_coef,
            clip_vloss=tp.clip_vloss, ent_coef=tp.ent_coef, vf_coef=tp.vf_coef,
            max_grad_norm=tp.max_grad_norm, target_kl=tp.target_kl,
        )
        self.probe = GradientProbe(self.actor, self.scaler)  # read-only gradient diagnostics (DVCLive grad/*)
        self.learner, self.learner_name = None, tp.learner  # the learner that runs (the summary records it)
        if tp.learner == "numpy":
            from model.numpy_learner import NumpyLearner, not_covered

            reason = not_covered(self.actor)
            if reason is not None:  # e.g. a study over cbf.form: those cells train with torch's learner
                log.warning("%s-s%d: train.learner=numpy does not cover %s; torch's learner trains this cell",
                            algo, seed, reason)
                self.learner_name = "torch"
            else:
                self.learner = NumpyLearner(self.actor, self.critic, self.optimizer, self.update_cfg)
                if self.rollout_device.type == "cpu":  # the rollout's forwards too (they read the weights in place)
                    from model.numpy_rollout import install_rollout_forwards

                    install_rollout_forwards(self.rollout_actor, self.rollout_critic)
        self.next_obs = self.core.reset()
        self.training_collisions = 0.0  # episodes ended by a collision so far (cumulative curve)
        self.update = 0  # updates done
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0
        # this process's CPU time in the iterations: wall clock without the time spent waiting for
        # a core while other processes run (the other Dask worker's cell, the Prefect server), so
        # a report can tell waiting from slower computing
        self.cpu_seconds = 0.0

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 2,  # 2: the NumPy RNG state as plain types (weights_only loading)
            "key": self.key,
            "config": self.config,
            "update": self.update,
            "global_step": self.global_step,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "obs_rms": self.obs_rms.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "env": self.core.state_dict(),
            "next_obs": self.next_obs,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": _numpy_rng_state(),  # plain types: the file loads with weights_only=True
                "python": random.getstate(),
                "update_generator": self.update_generator.get_state(),
            },
            "history": self.history,
            "training_collisions": self.training_collisions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.update = state["update"]
        self.global_step = state["global_step"]
        self.wall_seconds = state["wall_seconds"]
        self.cpu_seconds = state["cpu_seconds"]
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.core.load_state_dict(state["env"])
        self.next_obs = state["next_obs"].to(self.rollout_device)
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        _set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        self.update_generator.set_state(rng["update_generator"])
        self.history = list(state["history"])
        self.training_collisions = float(state.get("training_collisions", 0.0))
        self.agent.sync_rollout_copy()

    # -- one iteration ------------------------------------------------------------------------
    def train_one_update(self) -> dict[str, float]:
        """One PPO iteration (`model.ppo.ppo_iteration`: collect -> GAE -> update) with this
        stage's bookkeeping; returns the curves logged for it (rollout/*, losses/*, grad/*,
        perf/*, charts/*). Raises NonFiniteError, TrainingOOMError."""
        tp = self.params.train
        started, cpu_started = time.perf_counter(), time.process_time()
        learning_rate = (1.0 - self.update / self.num_updates) * tp.learning_rate if tp.anneal_lr else tp.learning_rate
        try:
            self.next_obs, totals, update_stats = ppo_iteration(
                self.agent, self.next_obs, self.iteration_cfg, self.update_cfg, self.update_device, learning_rate,
                after_backward=self.probe, learner=self.learner,
            )
        except NonFiniteStep as exc:
            raise self._nonfinite_error(exc) from None
        except UpdateOutOfMemory as exc:
            raise TrainingOOMError(
                f"CUDA out of memory in the PPO update with minibatch {self.minibatch_size}: {exc}",
                self.minibatch_size,
            ) from exc.__cause__
        stats = {**self._rollout_stats(totals), **update_stats, **self.probe.stats()}
        self.update += 1
        self.global_step += tp.rollout_steps * tp.num_envs
        elapsed = time.perf_counter() - started
        self.wall_seconds += elapsed
        self.cpu_seconds += time.process_time() - cpu_started
        stats["perf/SPS"] = tp.rollout_steps * tp.num_envs / elapsed
        stats["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        stats.update(self.actor.policy_metrics())
        return stats

    def collect_rollout(self) -> dict[str, float]:
        """A rollout alone, no update (tests, benchmarks): fills `buffer`, returns its curves."""
        try:
            self.next_obs, totals = collect_rollout(
                self.core, self.rollout_actor, self.rollout_critic, self.buffer, self.obs_rms, self.reward_scaler,
                self.next_obs, self.params.train.norm_obs, self.sync_free,
            )
        except NonFiniteStep as exc:
            raise self._nonfinite_error(exc) from None
        return self._rollout_stats(totals)

    def _rollout_stats(self, totals: RolloutTotals) -> dict[str, float]:
        self.training_collisions += totals.collisions
        return rollout_metrics(totals, self.rollout_actor, self.training_collisions)

    def _nonfinite_error(self, exc: NonFiniteStep) -> NonFiniteError:
        """The rollout's NonFiniteStep, placed in the training: global step and update."""
        return NonFiniteError(
            f"non-finite {exc.what} at global step {self.global_step + exc.step * self.params.train.num_envs} "
            f"(update {self.update + 1}, rollout step {exc.step}), env index {exc.env_index}{exc.detail}"
        )


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global RNG state as types `torch.load(weights_only=True)` accepts (its own tuple
    holds a uint32 ndarray): the 624 MT19937 keys as an int64 tensor (uint32 values, exact)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"bit_generator": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `_numpy_rng_state`."""
    np.random.set_state((state["bit_generator"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def load_checkpoint(path: Path, expected_config: dict[str, Any]) -> dict[str, Any]:
    """Load and check a checkpoint; raise CheckpointError naming the file and the difference."""
    state = _safe_torch_load(path, "checkpoint", "cpu")
    if not isinstance(state, dict) or "config" not in state or "key" not in state:
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (no config/key recorded)")
    recorded = state["config"]
    if params_hash(recorded) != state["key"] or recorded != expected_config:
        diff = _config_diff(recorded, expected_config)
        raise CheckpointError(
            f"checkpoint {path} does not match its key: recorded params differ from this configuration "
            f"({diff}); refusing to resume from it. It was left in place."
        )
    return state


def _config_diff(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        parts = []
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                parts.append(_config_diff(a.get(key), b.get(key), f"{prefix}{key}."))
        return "; ".join(parts) or "hash mismatch"
    return f"{prefix.rstrip('.')}: checkpoint has {a!r}, expected {b!r}"


# ---------------------------------------------------------------------------------------------
# The stage function


def _progress(total: int, done: int):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=done, unit="step", unit_scale=True, dynamic_ncols=True)
    return None


def _live_logger(path: Path):
    from dvclive import Live

    # save_dvc_exp=False, dvcyaml=False: never rewrite dvc.yaml or create experiments.
    return Live(dir=str(path), resume=False, save_dvc_exp=False, dvcyaml=False, report=None)


def _log_point(live, record: dict[str, float], sync: bool = True) -> None:
    """Append one point to every curve (a TSV row each, written at once). sync: also rewrite
    live/metrics.json through `Live.next_step`. Done only where a checkpoint is written and on the
    last point (the curve files are always current):
    dvclive 3.49's next_step rereads every curve file of the run whether or not Studio is set up
    (`Live._get_live_data`), so syncing each update cost ~8 ms per update and grew with the run.
    The files a finished run leaves are the same either way (the last point always syncs)."""
    live.step = int(record["global_step"])
    for name, value in record.items():
        if name != "global_step" and value is not None and math.isfinite(value):
            live.log_metric(name, value)
    if sync:
        live.next_step()


def run(
    params: Params,
    workdir: str | Path = ".",
    algo: str = "barriernet",
    seed: int = 0,
    minibatch_size: int | None = None,
    progress_callback=None,
    headroom_callback=None,
) -> dict[str, Any]:
    """Train one (algo, seed) cell to train.total_steps, resuming if a checkpoint exists.

    `minibatch_size` overrides the planned one (out-of-memory fallback); it does not change the
    resume key, and the summary records it. `progress_callback(fraction)` is called after each
    update (the Prefect flow turns it into a progress artifact).
    Returns the summary dict (also written to summary.json).
    """
    if algo not in ALGOS:
        raise TrainingError(f"unknown algo '{algo}'; accepted: {', '.join(ALGOS)}")
    out_dir = output_dir(Path(workdir), algo, seed)
    set_allocator_defaults()
    update_device = resolve_device(params.train.update_device)
    headroom = wait_for_headroom(params.gpu, update_device, on_progress=headroom_callback)
    if headroom.status == "fallback_cpu":
        update_device = torch.device("cpu")
    trainer = Trainer(params, algo, seed, minibatch_size=minibatch_size, update_device=str(update_device))
    state_dir = state_root() / f"{cell_name(algo, seed)}-{trainer.key}"
    state_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(state_dir / "config.json", trainer.config)
    checkpoint_path = state_dir / CHECKPOINT_NAME
    resumed_from = None
    if checkpoint_path.exists():
        trainer.load_state_dict(load_checkpoint(checkpoint_path, trainer.config))
        resumed_from = trainer.update
        log.info("%s: resuming from %s (update %d/%d)", cell_name(algo, seed), checkpoint_path,
                 trainer.update, trainer.num_updates)

    tp = params.train
    live = _live_logger(out_dir / "live")
    for i, record in enumerate(trainer.history):  # replay: curves after a resume equal an uninterrupted run's
        _log_point(live, record, sync=i == len(trainer.history) - 1)
    bar = _progress(trainer.num_updates * tp.batch_size, trainer.update * tp.batch_size)
    last_log = time.monotonic()
    after_update = fault_injection_hook()  # test-only (BARRIERNET_FAULT_*); a no-op otherwise
    try:
        while trainer.update < trainer.num_updates:
            stats = trainer.train_one_update()
            record = {"global_step": float(trainer.global_step), **stats}
            last = trainer.update == trainer.num_updates
            checkpoint = trainer.update % tp.checkpoint_every == 0 or last
            if trainer.update % tp.log_every == 0 or last:
                trainer.history.append(record)
                _log_point(live, record, sync=checkpoint)
            if checkpoint:
                io.torch_save(trainer.state_dict(), checkpoint_path)
            if bar is not None:
                bar.update(tp.batch_size)
                bar.set_postfix(SPS=f"{stats['perf/SPS']:.0f}", capture=f"{stats.get('rollout/capture_rate', float('nan')):.2f}")
            elif time.monotonic() - last_log > 10 or trainer.update == trainer.num_updates:
                last_log = time.monotonic()
                log.info(
                    "%s update %d/%d step %d SPS %.0f capture %.3f collision %.3f",
                    cell_name(algo, seed), trainer.update, trainer.num_updates, trainer.global_step,
                    stats["perf/SPS"], stats.get("rollout/capture_rate", float("nan")),
                    stats.get("rollout/collision_rate", float("nan")),
                )
            if progress_callback is not None:
                progress_callback(trainer.update / trainer.num_updates)
            after_update(trainer.update)
    finally:
        if bar is not None:
            bar.close()
        live.end()

    summary = _write_outputs(trainer, out_dir, minibatch_size, resumed_from, headroom)
    release_cached_memory()
    return summary


def _write_outputs(trainer: Trainer, out_dir: Path, minibatch_override: int | None, resumed_from, headroom) -> dict[str, Any]:
    tp = trainer.params.train
    model = trained_model_record(
        algo=trainer.algo, seed=trainer.seed, key=trainer.key, config=trainer.config,
        params=trainer.params.to_dict(), obs_dim=trainer.obs_dim, actor=trainer.actor.state_dict(),
        critic=trainer.critic.state_dict(), obs_rms=trainer.obs_rms.state_dict(),
    )
    io.torch_save(model, out_dir / "model.pt")
    window = trainer.history[-max(1, len(trainer.history) // 10):]

    def mean_of(name: str) -> float | None:
        values = [r[name] for r in window if name in r and math.isfinite(r[name])]
        return float(np.mean(values)) if values else None

    summary = {
        "algo": trainer.algo,
        "seed": trainer.seed,
        "config_hash": trainer.key,
        "total_steps": trainer.global_step,
        "updates": trainer.update,
        "wall_seconds": trainer.wall_seconds,
        "cpu_seconds": trainer.cpu_seconds,
        "env_steps_per_second": trainer.global_step / max(trainer.wall_seconds, 1e-9),
        "planned_minibatch_size": tp.minibatch_size,
        "minibatch_size": trainer.minibatch_size,
        "minibatch_fallback": minibatch_override is not None and minibatch_override != tp.minibatch_size,
        "resumed_from_update": resumed_from,
        "rollout_device": str(trainer.rollout_device),
        "update_device": str(trainer.update_device),
        "learner": trainer.learner_name,
        "gpu_headroom": headroom.status,
        "gpu_wait_seconds": headroom.waited_seconds,
        "final_capture_rate": mean_of("rollout/capture_rate"),
        "final_collision_rate": mean_of("rollout/collision_rate"),
        "final_episode_return": mean_of("rollout/episode_return"),
        "numerics": numerics.describe(),  # where it ran: the same weights on any AVX2 CPU when pinned
    }
    io.write_json(out_dir / "summary.json", summary)
    return summary
