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
from typing import Any

import numpy as np
import torch

from env.core import PursuitEvasionCore
from model.actors import ALGOS, Critic, make_actor
from model.diagnostics import GradientProbe
from model.ppo import RewardScaler, RolloutBuffer, RunningMeanStd, UpdateConfig, compute_gae, ppo_update
from tasks import io, numerics
from tasks.gpu import release_cached_memory, set_allocator_defaults, wait_for_headroom
from tasks.params import Params, params_hash, training_config

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_NAME = "checkpoint.pt"
# Curves whose values depend on wall-clock time, not on the computation (excluded from the
# bit-exact resume comparison).
TIMING_METRICS = ("perf/SPS", "perf/qp_ms")


class TrainingError(RuntimeError):
    """Training cannot go on (bad numbers, bad checkpoint); the message says where."""


class NonFiniteError(TrainingError):
    """A NaN/inf observation or reward: the message names the step and env index."""


class CheckpointError(TrainingError):
    """A checkpoint is unreadable or does not belong to this configuration."""


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
    from tasks.registry import STAGES

    digest = hashlib.sha256()
    for entry in STAGES["train"].code:
        path = REPO_ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for source in files:
            digest.update(source.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
            digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def state_root() -> Path:
    return Path(os.environ.get("BARRIERNET_STATE_DIR", REPO_ROOT / ".cache" / "train-state"))


def cell_name(algo: str, seed: int) -> str:
    return f"{algo}-s{seed}"


def output_dir(workdir: Path, algo: str, seed: int) -> Path:
    return Path(workdir) / "results" / "train" / cell_name(algo, seed)


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


def _maybe_inject_fault(update: int) -> None:
    """Test-only switch: raise once after `update` (a marker file remembers it happened)."""
    after = os.environ.get("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE")
    marker = os.environ.get("BARRIERNET_FAULT_MARKER")
    if after is None or marker is None or update != int(after) or Path(marker).exists():
        return
    Path(marker).write_text(f"fault injected after update {update}\n")
    kind = os.environ.get("BARRIERNET_FAULT_KIND", "crash")
    if kind == "oom":
        raise torch.cuda.OutOfMemoryError(f"injected out-of-memory after update {update} (test switch)")
    if kind == "kill":
        os.kill(os.getpid(), 9)
    raise InjectedFault(f"injected transient failure after update {update} (test switch)")


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
        self.config = {**training_config(params, algo, seed), "code": code_fingerprint()}
        self.key = params_hash(self.config)
        self.rollout_device = resolve_device(tp.rollout_device)
        self.update_device = resolve_device(update_device or tp.update_device)
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
        self.nonfinite = torch.zeros(tp.rollout_steps, tp.num_envs, dtype=torch.bool, device=self.rollout_device)
        self.update_cfg = UpdateConfig(
            update_epochs=tp.update_epochs, minibatch_size=self.minibatch_size, clip_coef=tp.clip_coef,
            clip_vloss=tp.clip_vloss, ent_coef=tp.ent_coef, vf_coef=tp.vf_coef,
            max_grad_norm=tp.max_grad_norm, target_kl=tp.target_kl,
        )
        self.probe = GradientProbe(self.actor)  # read-only gradient diagnostics (DVCLive grad/*)
        self.next_obs = self.core.reset()
        self.training_collisions = 0.0  # episodes ended by a collision so far (cumulative curve)
        self.update = 0  # updates done
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.wall_seconds = 0.0

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 2,  # 2: the NumPy RNG state as plain types (weights_only loading)
            "key": self.key,
            "config": self.config,
            "update": self.update,
            "global_step": self.global_step,
            "wall_seconds": self.wall_seconds,
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
        self._sync_rollout_copy()

    def _sync_rollout_copy(self) -> None:
        if self.rollout_actor is not self.actor:
            self.rollout_actor.load_state_dict(self.actor.state_dict())
            self.rollout_critic.load_state_dict(self.critic.state_dict())

    # -- one iteration ------------------------------------------------------------------------
    def _normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_rms.normalize(obs) if self.params.train.norm_obs else obs

    @torch.no_grad()
    def collect_rollout(self) -> dict[str, float]:
        """Fill the buffer with train.rollout_steps steps of every env; return rollout stats."""
        tp, buf = self.params.train, self.buffer
        counts = torch.zeros(8, dtype=torch.float64, device=self.rollout_device)
        # 0 episodes, 1 captures, 2 collisions, 3 return sum, 4 violation steps, 5 interventions,
        # 6 infeasible, 7 gamma sum
        safety_layer = torch.zeros(5, dtype=torch.float64, device=self.rollout_device)
        # diagnostics of the safety layer: 0 correction sum (normalised units), 1 active QP rows sum,
        # 2 steps with an active row, 3 / 4 safe-box width sums (v, w; fractions of the action range)
        qp_seconds = 0.0
        for t in range(tp.rollout_steps):
            obs = self.next_obs
            if tp.norm_obs:
                self.obs_rms.update(obs)
            obs_n = self._normalize(obs)
            safety = self.core.safety_state()
            started = time.perf_counter()
            out = self.rollout_actor(obs_n, safety)
            qp_seconds += time.perf_counter() - started
            value = self.rollout_critic(obs_n)
            next_obs, reward, terminated, truncated, info = self.core.step(out.action)
            if self.sync_free:
                self.nonfinite[t] = ~torch.isfinite(next_obs).all(dim=1) | ~torch.isfinite(reward)
            else:
                self._check_finite(next_obs, reward, t)

            ended = terminated | truncated
            if self.sync_free:  # one critic pass more per step beats a device sync
                final_value = torch.where(truncated, self.rollout_critic(self._normalize(info["final_obs"])), 0.0)
            elif bool(truncated.any()):
                final_value = torch.where(truncated, self.rollout_critic(self._normalize(info["final_obs"])), 0.0)
            else:
                final_value = torch.zeros_like(reward)

            buf.obs[t] = obs_n
            buf.sample[t] = out.sample
            buf.action[t] = out.action
            buf.nominal[t] = out.info.get("nominal", out.action)
            buf.log_prob[t] = out.log_prob
            buf.value[t] = value
            buf.reward[t] = self.reward_scaler(reward, ended)
            buf.final_value[t] = final_value
            buf.terminated[t] = terminated
            buf.truncated[t] = truncated
            buf.store_safety(t, safety)
            if "active_mean" in out.info:  # BarrierNet's QP active set: a warm start for the update
                buf.store_qp_active(t, out.info["active_mean"])

            counts[0] += ended.sum()
            counts[1] += (info["captured"] & ended).sum()
            counts[2] += (info["collided"] & ended).sum()
            counts[3] += torch.where(ended, info["episode_return"], 0.0).sum()
            counts[4] += (info["h"] < 0).any(dim=1).sum()
            if "intervened" in out.info:
                counts[5] += out.info["intervened"].sum()
                counts[6] += out.info["infeasible"].sum()
                counts[7] += out.info["gamma"].float().mean(dim=1).sum()
                if "correction" in out.info:
                    safety_layer[0] += out.info["correction"].sum()
            if "active_mean" in out.info:
                active = (out.info["active_mean"] >= 0).sum(dim=1)
                safety_layer[1] += active.sum()
                safety_layer[2] += (active > 0).sum()
            if "box_low" in out.info:
                full = self.rollout_actor.high - self.rollout_actor.low  # the action box (2,)
                width = (out.info["box_high"] - out.info["box_low"]) / full.to(out.info["box_low"].dtype)
                safety_layer[3:5] += width.double().sum(dim=0)
            self.next_obs = next_obs

        if self.sync_free and bool(self.nonfinite.any()):  # one sync per rollout
            t, env_index = (int(i) for i in self.nonfinite.nonzero()[0])
            raise NonFiniteError(
                f"non-finite observation or reward at global step {self.global_step + t * tp.num_envs} "
                f"(update {self.update + 1}, rollout step {t}), env index {env_index}"
            )
        steps = tp.rollout_steps * tp.num_envs
        c = counts.tolist()  # the rollout's device-to-host transfers of statistics
        d = safety_layer.tolist()
        self.training_collisions += c[2]
        stats = {
            "rollout/episodes": c[0],
            "rollout/cbf_violation_rate": c[4] / steps,
            "rollout/collisions_cumulative": self.training_collisions,
        }
        if c[0] > 0:
            stats.update({
                "rollout/episode_return": c[3] / c[0],
                "rollout/capture_rate": c[1] / c[0],
                "rollout/collision_rate": c[2] / c[0],
            })
        if self.algo != "baseline":  # a safety layer in the loop: BarrierNet's QP, CBF-Beta's box, the shield
            stats.update({
                "rollout/qp_intervention_rate": c[5] / steps,
                "rollout/qp_infeasible_rate": c[6] / steps,
                "rollout/mean_gamma": c[7] / steps,
                "rollout/qp_correction": d[0] / steps,
            })
        if self.algo == "barriernet" and self.params.barriernet.update_mode == "through_qp":
            stats.update({"rollout/qp_active_rows": d[1] / steps, "rollout/qp_active_fraction": d[2] / steps})
        if self.algo == "cbf_beta":
            stats.update({"rollout/box_width_v": d[3] / steps, "rollout/box_width_w": d[4] / steps})
        stats["perf/qp_ms"] = 1000.0 * qp_seconds / tp.rollout_steps
        return stats

    def _check_finite(self, obs: torch.Tensor, reward: torch.Tensor, t: int) -> None:
        bad = ~torch.isfinite(obs).all(dim=1) | ~torch.isfinite(reward)
        if bool(bad.any()):
            env_index = int(bad.nonzero()[0, 0])
            what = "observation" if not bool(torch.isfinite(obs[env_index]).all()) else "reward"
            raise NonFiniteError(
                f"non-finite {what} at global step {self.global_step + t * self.params.train.num_envs} "
                f"(update {self.update + 1}, rollout step {t}), env index {env_index}: "
                f"obs={obs[env_index].tolist()} reward={float(reward[env_index])}"
            )

    def train_one_update(self) -> dict[str, float]:
        tp = self.params.train
        started = time.perf_counter()
        if tp.anneal_lr:
            frac = 1.0 - self.update / self.num_updates
            for group in self.optimizer.param_groups:
                group["lr"] = frac * tp.learning_rate
        stats = self.collect_rollout()
        with torch.no_grad():
            next_value = self.rollout_critic(self._normalize(self.next_obs))
        b = self.buffer
        advantages, returns = compute_gae(
            b.reward, b.value, b.terminated, b.truncated, b.final_value, next_value, tp.gamma, tp.gae_lambda
        )
        batch = b.flatten(advantages, returns, self.update_device)
        try:
            stats.update(ppo_update(
                self.actor, self.critic, self.optimizer, batch, self.update_cfg, self.update_generator, self.scaler,
                after_backward=self.probe,
            ))
            stats.update(self.probe.stats())
        except torch.cuda.OutOfMemoryError as exc:
            raise TrainingOOMError(
                f"CUDA out of memory in the PPO update with minibatch {self.minibatch_size}: {exc}",
                self.minibatch_size,
            ) from exc
        self._sync_rollout_copy()
        self.update += 1
        self.global_step += tp.rollout_steps * tp.num_envs
        elapsed = time.perf_counter() - started
        self.wall_seconds += elapsed
        stats["perf/SPS"] = tp.rollout_steps * tp.num_envs / elapsed
        stats["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if self.algo in ("baseline", "shielded"):
            stats["charts/log_std_mean"] = float(self.actor.log_std.detach().mean())
        return stats


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


def _safe_torch_load(path: Path, what: str, map_location: Any) -> Any:
    """torch.load with weights_only=True: tensors and plain containers (dict, list, tuple, str,
    int, float, bool, None) only, so a planted file (from a shared DVC remote, a copied folder)
    cannot run code. Raises CheckpointError naming the file: refused (other Python objects in the
    pickle) or unreadable (truncated, not a torch file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{what} {path} was refused: it holds Python objects other than tensors and plain containers, "
            f"which loading would run as code (torch.load weights_only=True: {reason}). It was left in place; "
            "do not load it with weights_only=False unless you wrote it yourself. Delete it and rerun the train stage."
        ) from None
    except Exception as exc:  # truncated, tampered, not a torch file
        raise CheckpointError(
            f"{what} {path} is unreadable ({type(exc).__name__}: {exc}); it was left in place. "
            "Delete it (or its folder) to start this configuration from scratch."
        ) from None


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


def _log_point(live, record: dict[str, float]) -> None:
    live.step = int(record["global_step"])
    for name, value in record.items():
        if name != "global_step" and value is not None and math.isfinite(value):
            live.log_metric(name, value)
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
    for record in trainer.history:  # replay: curves after a resume equal an uninterrupted run's
        _log_point(live, record)
    bar = _progress(trainer.num_updates * tp.batch_size, trainer.update * tp.batch_size)
    last_log = time.monotonic()
    try:
        while trainer.update < trainer.num_updates:
            stats = trainer.train_one_update()
            record = {"global_step": float(trainer.global_step), **stats}
            if trainer.update % tp.log_every == 0 or trainer.update == trainer.num_updates:
                trainer.history.append(record)
                _log_point(live, record)
            if trainer.update % tp.checkpoint_every == 0 or trainer.update == trainer.num_updates:
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
            _maybe_inject_fault(trainer.update)
    finally:
        if bar is not None:
            bar.close()
        live.end()

    summary = _write_outputs(trainer, out_dir, minibatch_size, resumed_from, headroom)
    release_cached_memory()
    return summary


def _write_outputs(trainer: Trainer, out_dir: Path, minibatch_override: int | None, resumed_from, headroom) -> dict[str, Any]:
    tp = trainer.params.train
    model = {
        "format": 1,
        "algo": trainer.algo,
        "seed": trainer.seed,
        "key": trainer.key,
        "config": trainer.config,
        "params": trainer.params.to_dict(),
        "obs_dim": trainer.obs_dim,
        "actor": {k: v.cpu() for k, v in trainer.actor.state_dict().items()},
        "critic": {k: v.cpu() for k, v in trainer.critic.state_dict().items()},
        "obs_rms": {k: v.cpu() for k, v in trainer.obs_rms.state_dict().items()},
    }
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
        "env_steps_per_second": trainer.global_step / max(trainer.wall_seconds, 1e-9),
        "planned_minibatch_size": tp.minibatch_size,
        "minibatch_size": trainer.minibatch_size,
        "minibatch_fallback": minibatch_override is not None and minibatch_override != tp.minibatch_size,
        "resumed_from_update": resumed_from,
        "rollout_device": str(trainer.rollout_device),
        "update_device": str(trainer.update_device),
        "gpu_headroom": headroom.status,
        "gpu_wait_seconds": headroom.waited_seconds,
        "final_capture_rate": mean_of("rollout/capture_rate"),
        "final_collision_rate": mean_of("rollout/collision_rate"),
        "final_episode_return": mean_of("rollout/episode_return"),
        "numerics": numerics.describe(),  # where it ran: the same weights on any AVX2 CPU when pinned
    }
    io.write_json(out_dir / "summary.json", summary)
    return summary


def load_trained(path: str | Path, params: Params | None = None, device: str | torch.device = "cpu"):
    """Load model.pt -> (actor, critic, obs_rms, record). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"trained model {path} does not exist; run the train stage first")
    try:
        record = _safe_torch_load(path, "trained model", device)
        if params is None:
            params = Params.model_validate(record["params"])
        actor = make_actor(record["algo"], record["obs_dim"], params.for_algo(record["algo"])).to(device)
        actor.load_state_dict(record["actor"])
        critic = Critic(record["obs_dim"], params.train.hidden_sizes).to(device)
        critic.load_state_dict(record["critic"])
        obs_rms = RunningMeanStd((record["obs_dim"],)).to(device)
        obs_rms.load_state_dict(record["obs_rms"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"trained model {path} is unreadable or incompatible ({type(exc).__name__}: {exc})") from None
    actor.eval()
    return actor, critic, obs_rms, record
