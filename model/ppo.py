"""PPO for every actor: normalisers, rollout buffer, collect -> GAE -> update.

Read top to bottom like CleanRL's ppo_continuous_action.py: the rollout tensors are
preallocated as (rollout_steps, num_envs, ...), `collect_rollout` fills them, `compute_gae` runs
backwards over them, and `ppo_update` iterates shuffled minibatches with the clipped surrogate
and value loss; `ppo_iteration` is the three in order. What the update and the rollout curves
need from an actor it asks through the actor's methods (`model.actors.Actor`). Devices,
checkpoints, resume and logging belong to the train stage (`tasks/train.py`).

Differences from CleanRL, kept on purpose:
- truncation (timeout) is not folded into `done`: the value of the final observation is
  bootstrapped (Stable-Baselines3 issue #633);
- the actor scores the *stored* sample with `evaluate_actions(obs, safety, sample)`; the
  action the env executed (after a QP or clipping) is kept beside it for metrics only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from env.core import PursuitEvasionCore, SafetyState
from model.actors import Actor


class RunningMeanStd(nn.Module):
    """Running mean/variance (parallel Welford merge), float64 statistics.

    Used for observation normalisation and for scaling rewards by the std of the discounted
    return (gymnasium's NormalizeObservation / NormalizeReward, as in CleanRL).
    """

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        """batch: (B, *shape)."""
        batch = batch.to(torch.float64)
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.square() * self.count * batch_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: Tensor, clip: float = 10.0) -> Tensor:
        """(B, *shape) -> same shape and dtype as x, clipped to [-clip, clip]."""
        out = (x.to(torch.float64) - self.mean) / torch.sqrt(self.var + 1e-8)
        return out.clamp(-clip, clip).to(x.dtype)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (per env accumulator)."""

    def __init__(self, num_envs: int, gamma: float):
        super().__init__()
        self.gamma = gamma
        self.stats = RunningMeanStd(())
        self.register_buffer("discounted", torch.zeros(num_envs, dtype=torch.float64))

    @torch.no_grad()
    def __call__(self, reward: Tensor, done: Tensor) -> Tensor:
        """reward, done: (N,) -> scaled reward (N,)."""
        self.discounted.mul_(self.gamma).add_(reward.to(torch.float64))
        self.stats.update(self.discounted)
        self.discounted.masked_fill_(done, 0.0)
        return (reward.to(torch.float64) / torch.sqrt(self.stats.var + 1e-8)).to(reward.dtype)


class RolloutBuffer:
    """Preallocated rollout storage, (rollout_steps, num_envs, ...) on one device.

    Fields: obs (T,N,D) normalised observations; sample (T,N,2) what the policy drew and PPO
    re-scores; action (T,N,2) what the env executed; log_prob, value, reward,
    final_value (T,N); terminated, truncated (T,N) bool; the SafetyState tensors
    (pursuer (T,N,3), obstacle_centres (T,N,K,2), obstacle_radii (T,N,K), obstacle_mask (T,N,K));
    optional record (T,N,k) (None until `store_record` is first called): what the actor's
    `rollout_record` keeps of each step for its update (BarrierNet: the mean QP's active set,
    int64, handed back to ``evaluate_actions(..., qp_hint=)`` as a warm start; CBF-Beta: the
    step's safe box, float64), handed to ``update_inputs``.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, num_obstacles: int, device: torch.device | str):
        T, N, K = num_steps, num_envs, num_obstacles
        f32 = dict(dtype=torch.float32, device=device)
        self.num_steps, self.num_envs = num_steps, num_envs
        self.obs = torch.zeros(T, N, obs_dim, **f32)
        self.sample = torch.zeros(T, N, 2, **f32)
        self.action = torch.zeros(T, N, 2, **f32)
        self.log_prob = torch.zeros(T, N, **f32)
        self.value = torch.zeros(T, N, **f32)
        self.reward = torch.zeros(T, N, **f32)
        self.final_value = torch.zeros(T, N, **f32)
        self.terminated = torch.zeros(T, N, dtype=torch.bool, device=device)
        self.truncated = torch.zeros(T, N, dtype=torch.bool, device=device)
        self.pursuer = torch.zeros(T, N, 3, **f32)
        self.obstacle_centres = torch.zeros(T, N, K, 2, **f32)
        self.obstacle_radii = torch.zeros(T, N, K, **f32)
        self.obstacle_mask = torch.zeros(T, N, K, dtype=torch.bool, device=device)
        self.record: Tensor | None = None
        self.device = device

    def store_record(self, t: int, record: Tensor) -> None:
        """record (N, k) of step t; allocates `record` (T, N, k) in its dtype on first use."""
        if self.record is None:
            self.record = torch.zeros(
                (self.num_steps, self.num_envs, *record.shape[1:]), dtype=record.dtype, device=self.device
            )
        self.record[t] = record

    def store_safety(self, t: int, safety: SafetyState) -> None:
        self.pursuer[t] = safety.pursuer
        self.obstacle_centres[t] = safety.obstacle_centres
        self.obstacle_radii[t] = safety.obstacle_radii
        self.obstacle_mask[t] = safety.obstacle_mask

    def flatten(self, advantages: Tensor, returns: Tensor, device: torch.device | str) -> "Batch":
        """Flatten (T, N, ...) to (T*N, ...) and move to the update device in one transfer each."""
        def flat(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).to(device, non_blocking=True)

        safety = SafetyState(
            flat(self.pursuer), flat(self.obstacle_centres), flat(self.obstacle_radii), flat(self.obstacle_mask)
        )
        return Batch(
            obs=flat(self.obs), sample=flat(self.sample), log_prob=flat(self.log_prob), value=flat(self.value),
            advantages=flat(advantages), returns=flat(returns), safety=safety,
            record=None if self.record is None else flat(self.record),
        )


class Batch(NamedTuple):
    obs: Tensor         # (B, D)
    sample: Tensor      # (B, 2)
    log_prob: Tensor    # (B,)
    value: Tensor       # (B,)
    advantages: Tensor  # (B,)
    returns: Tensor     # (B,)
    safety: SafetyState
    record: Tensor | None = None  # (B, k) the actor's `rollout_record` of each state, or None


# ---------------------------------------------------------------------------------------------
# 1. Collect: the rollout copy of the agent acts in the batched env for rollout_steps steps


class NonFiniteStep(RuntimeError):
    """A NaN/inf observation or reward in a rollout, at rollout step `step` of env `env_index`;
    `what` is "observation", "reward" or (sync-free rollouts) "observation or reward", `detail`
    the bad row (empty when unknown)."""

    def __init__(self, step: int, env_index: int, what: str, detail: str = ""):
        super().__init__(f"non-finite {what} at rollout step {step}, env index {env_index}{detail}")
        self.step, self.env_index, self.what, self.detail = step, env_index, what, detail


class RolloutTotals(NamedTuple):
    """A rollout's sums over its steps * envs env steps (float64 sums, as Python floats)."""

    rollout_steps: int
    env_steps: int  # rollout_steps * num_envs
    episodes: float  # episodes that ended
    captures: float
    collisions: float
    return_sum: float  # sum of the ended episodes' returns
    violation_steps: float  # env steps with a body barrier h < 0
    safety_layer: list[float]  # the actor's rollout_step_sums, summed; order: actor.rollout_metric_names
    policy_seconds: float  # wall time of the actor's forward passes


def _check_finite(obs: Tensor, reward: Tensor, t: int) -> None:
    """obs (N, D), reward (N,) after step t: raise NonFiniteStep naming the first bad env."""
    bad = ~torch.isfinite(obs).all(dim=1) | ~torch.isfinite(reward)
    if bool(bad.any()):
        env_index = int(bad.nonzero()[0, 0])
        what = "observation" if not bool(torch.isfinite(obs[env_index]).all()) else "reward"
        raise NonFiniteStep(t, env_index, what, f": obs={obs[env_index].tolist()} reward={float(reward[env_index])}")


@torch.no_grad()
def collect_rollout(
    env: PursuitEvasionCore,
    actor: Actor,
    critic: nn.Module,
    buffer: "RolloutBuffer",
    obs_rms: RunningMeanStd,
    reward_scaler: RewardScaler,
    next_obs: Tensor,
    norm_obs: bool,
    sync_free: bool,
) -> tuple[Tensor, RolloutTotals]:
    """Fill `buffer` with buffer.num_steps steps of every env, starting from next_obs (N, D).

    obs_rms learns from each raw observation (when norm_obs) before normalising it; rewards are
    stored scaled by `reward_scaler`; a truncated env's final observation is valued by the critic
    for the GAE bootstrap. sync_free (CUDA): no host sync per step, the NaN check runs once at the
    end (else after every step, naming the bad step before its NaN spreads).
    Returns (the observation after the last step (N, D), the rollout's totals). Raises NonFiniteStep.
    """
    num_steps, num_envs = buffer.num_steps, buffer.num_envs
    device = next_obs.device
    counts = torch.zeros(5, dtype=torch.float64, device=device)  # RolloutTotals' fields episodes .. violation_steps
    safety_layer = torch.zeros(len(actor.rollout_metric_names), dtype=torch.float64, device=device)
    nonfinite = torch.zeros(num_steps, num_envs, dtype=torch.bool, device=device) if sync_free else None
    normalize = obs_rms.normalize if norm_obs else (lambda x: x)
    policy_seconds = 0.0
    for t in range(num_steps):
        obs = next_obs
        if norm_obs:
            obs_rms.update(obs)
        obs_n = normalize(obs)
        safety = env.safety_state()
        started = time.perf_counter()
        out = actor(obs_n, safety)
        policy_seconds += time.perf_counter() - started
        value = critic(obs_n)
        next_obs, reward, terminated, truncated, info = env.step(out.action)
        if sync_free:
            nonfinite[t] = ~torch.isfinite(next_obs).all(dim=1) | ~torch.isfinite(reward)
        else:
            _check_finite(next_obs, reward, t)

        ended = terminated | truncated
        # a timeout is no terminal state: GAE bootstraps from V(final observation)
        if sync_free:  # one critic pass more per step beats a device sync
            final_value = torch.where(truncated, critic(normalize(info["final_obs"])), 0.0)
        elif bool(truncated.any()):
            final_value = torch.where(truncated, critic(normalize(info["final_obs"])), 0.0)
        else:
            final_value = torch.zeros_like(reward)

        buffer.obs[t] = obs_n
        buffer.sample[t] = out.sample
        buffer.action[t] = out.action
        buffer.log_prob[t] = out.log_prob
        buffer.value[t] = value
        buffer.reward[t] = reward_scaler(reward, ended)
        buffer.final_value[t] = final_value
        buffer.terminated[t] = terminated
        buffer.truncated[t] = truncated
        buffer.store_safety(t, safety)
        record = actor.rollout_record(out)
        if record is not None:
            buffer.store_record(t, record)

        counts[0] += ended.sum()
        counts[1] += (info["captured"] & ended).sum()
        counts[2] += (info["collided"] & ended).sum()
        counts[3] += torch.where(ended, info["episode_return"], 0.0).sum()
        counts[4] += (info["h"] < 0).any(dim=1).sum()  # the env's body barrier (metres)
        safety_layer += actor.rollout_step_sums(out)

    if sync_free and bool(nonfinite.any()):  # one sync per rollout
        t, env_index = (int(i) for i in nonfinite.nonzero()[0])
        raise NonFiniteStep(t, env_index, "observation or reward")
    c = counts.tolist()  # the rollout's device-to-host transfers of statistics
    totals = RolloutTotals(
        num_steps, num_steps * num_envs, c[0], c[1], c[2], c[3], c[4], safety_layer.tolist(), policy_seconds
    )
    return next_obs, totals


def rollout_metrics(totals: RolloutTotals, actor: Actor, collisions_cumulative: float) -> dict[str, float]:
    """The rollout's curves (rollout/*, perf/policy_ms): rates per env step or per ended episode;
    collisions_cumulative: the training's collisions so far, this rollout's included."""
    steps = totals.env_steps
    stats = {
        "rollout/episodes": totals.episodes,
        "rollout/cbf_violation_rate": totals.violation_steps / steps,
        "rollout/collisions_cumulative": collisions_cumulative,
    }
    if totals.episodes > 0:
        stats.update({
            "rollout/episode_return": totals.return_sum / totals.episodes,
            "rollout/capture_rate": totals.captures / totals.episodes,
            "rollout/collision_rate": totals.collisions / totals.episodes,
        })
    for name, total in zip(actor.rollout_metric_names, totals.safety_layer):
        stats[f"rollout/{name}"] = total / steps
    # the policy's whole forward per rollout step (all envs): its safety layer included, if any
    stats["perf/policy_ms"] = 1000.0 * totals.policy_seconds / totals.rollout_steps
    return stats


# ---------------------------------------------------------------------------------------------
# 2. GAE over the rollout


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    final_values: Tensor,
    next_value: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation with the truncation bootstrap.

    rewards, values, final_values: (T, N) float; terminated, truncated: (T, N) bool;
    next_value: (N,) value of the observation after the last step.
    `final_values[t]` is V(final observation) for envs truncated at step t (ignored elsewhere):
    a timeout is not a terminal state, so its target keeps gamma * V(s_final).
    Returns (advantages, returns), both (T, N).
    """
    num_steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_advantage = torch.zeros_like(next_value)
    ended = terminated | truncated
    for t in reversed(range(num_steps)):
        following_value = next_value if t == num_steps - 1 else values[t + 1]
        # After an ended episode, the next row belongs to a new episode: cut the chain there.
        bootstrap = torch.where(
            ended[t], torch.where(truncated[t] & ~terminated[t], final_values[t], 0.0), following_value
        )
        delta = rewards[t] + gamma * bootstrap - values[t]
        last_advantage = delta + gamma * gae_lambda * (~ended[t]).to(rewards.dtype) * last_advantage
        advantages[t] = last_advantage
    return advantages, advantages + values


# ---------------------------------------------------------------------------------------------
# 3. Update: epochs of shuffled minibatches


@dataclass
class UpdateConfig:
    update_epochs: int
    minibatch_size: int
    clip_coef: float
    clip_vloss: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    target_kl: float | None = None


def explained_variance(pred: Tensor, target: Tensor) -> float:
    """1 - Var[target - pred] / Var[target] (nan when the target is constant)."""
    var_target = target.var()
    return float("nan") if var_target == 0 else float(1 - (target - pred).var() / var_target)


class PPOLosses(NamedTuple):
    loss: Tensor       # () what the update minimises: policy - ent_coef * entropy + vf_coef * value
    policy: Tensor     # () the clipped surrogate
    value: Tensor      # () the (clipped, if clip_vloss) value loss
    entropy: Tensor    # () mean entropy
    log_ratio: Tensor  # (B,) new - old log-probability of the stored samples
    ratio: Tensor      # (B,) exp(log_ratio)


def ppo_losses(
    new_log_prob: Tensor, entropy: Tensor, new_value: Tensor, old_log_prob: Tensor, advantages: Tensor,
    returns: Tensor, old_value: Tensor, cfg: UpdateConfig,
) -> PPOLosses:
    """The PPO minibatch loss (CleanRL's): every argument (B,), the first three from the current
    policy and critic, the rest stored by the rollout; advantages are normalised per minibatch."""
    log_ratio = new_log_prob.float() - old_log_prob
    ratio = log_ratio.exp()
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
    if cfg.clip_vloss:
        clipped = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns).square(), (clipped - returns).square()).mean()
    else:
        v_loss = 0.5 * (new_value - returns).square().mean()
    entropy_loss = entropy.float().mean()
    loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
    return PPOLosses(loss, pg_loss, v_loss, entropy_loss, log_ratio, ratio)


def ppo_update(
    actor: Actor,
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: UpdateConfig,
    generator: torch.Generator,
    scaler: "torch.amp.GradScaler | None" = None,
    after_backward: "Callable[[], None] | None" = None,
    learner: object | None = None,
) -> dict[str, float]:
    """One PPO update over `batch` (update_epochs x shuffled minibatches).

    `learner` (a `model.numpy_learner.NumpyLearner`, ``train.learner: numpy``, CPU only; not
    imported here, so the stages that read this module do not depend on it): the update runs as
    whole-array NumPy calls, the same algorithm with other bits; None: torch's autograd and Adam.

    `after_backward` is called after each minibatch's backward pass, before clipping (read-only
    diagnostics: model/diagnostics.py `GradientProbe`).

    `generator` (CPU) draws the minibatch permutation, so the update is reproducible and its
    state can be checkpointed. `scaler` is given only for CUDA mixed precision; autocast is
    then enabled around the forward passes (the actor keeps its QP in float32).
    Returns the logged statistics (CleanRL names).
    """
    if learner is not None:
        return learner.update(actor, batch, cfg, generator, after_backward)
    device = batch.obs.device
    batch_size = batch.obs.shape[0]
    amp = scaler is not None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # what evaluate_actions needs per state besides obs and sample, once per update (BarrierNet:
    # the rows' gamma-free part and the rollout's QP active sets; CBF-Beta: the rollout's safe boxes)
    inputs = actor.update_inputs(batch.safety, batch.obs, batch.record)
    clipfracs, approx_kls = [], []
    pg_loss = v_loss = entropy_loss = torch.zeros(())
    for _ in range(cfg.update_epochs):
        order = torch.randperm(batch_size, generator=generator).to(device)
        for start in range(0, batch_size, cfg.minibatch_size):
            idx = order[start : start + cfg.minibatch_size]
            # index_select: the same copy of the rows as x[idx], 2-4x faster on the CPU
            rows = partial(torch.index_select, dim=0, index=idx)
            minibatch, obs = inputs.index(idx), rows(batch.obs)
            with torch.autocast(device_type=device.type, enabled=amp):
                new_log_prob, entropy = actor.evaluate_actions(
                    obs, minibatch.safety, rows(batch.sample),
                    qp_hint=minibatch.qp_hint, cbf_geometry=minibatch.cbf_geometry,
                )
                new_value = critic(obs).float()
            losses = ppo_losses(new_log_prob, entropy, new_value, rows(batch.log_prob), rows(batch.advantages),
                                rows(batch.returns), rows(batch.value), cfg)
            with torch.no_grad():
                ratio, log_ratio = losses.ratio, losses.log_ratio
                approx_kls.append(((ratio - 1) - log_ratio).mean())  # Schulman's k3 estimator
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())
            loss, pg_loss, v_loss, entropy_loss = losses.loss, losses.policy, losses.value, losses.entropy

            optimizer.zero_grad(set_to_none=True)
            if amp:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if after_backward is not None:
                    after_backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if after_backward is not None:
                    after_backward()
                nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
        if cfg.target_kl is not None and float(torch.stack(approx_kls[-batch_size // cfg.minibatch_size :]).mean()) > cfg.target_kl:
            break
    return {
        "losses/policy_loss": float(pg_loss.detach()),
        "losses/value_loss": float(v_loss.detach()),
        "losses/entropy": float(entropy_loss.detach()),
        "losses/approx_kl": float(torch.stack(approx_kls).mean()),
        "losses/clipfrac": float(torch.stack(clipfracs).mean()),
        "losses/explained_variance": explained_variance(batch.value, batch.returns),
    }


# ---------------------------------------------------------------------------------------------
# One iteration: collect -> GAE -> update


class UpdateOutOfMemory(RuntimeError):
    """CUDA ran out of memory in the PPO update (not the rollout): a smaller minibatch may fit."""


@dataclass
class PPOAgent:
    """What one PPO iteration reads and changes. The learner (actor, critic, optimizer) lives on
    the update device; `rollout_actor` / `rollout_critic` are its copies beside the env (the same
    objects when both devices agree), refreshed from the learner after every update."""

    env: PursuitEvasionCore
    actor: Actor
    critic: nn.Module
    rollout_actor: Actor
    rollout_critic: nn.Module
    optimizer: torch.optim.Optimizer
    obs_rms: RunningMeanStd
    reward_scaler: RewardScaler
    buffer: RolloutBuffer
    generator: torch.Generator  # CPU: the minibatch permutations
    scaler: "torch.amp.GradScaler | None" = None  # CUDA mixed precision only

    def sync_rollout_copy(self) -> None:
        if self.rollout_actor is not self.actor:
            self.rollout_actor.load_state_dict(self.actor.state_dict())
            self.rollout_critic.load_state_dict(self.critic.state_dict())


@dataclass
class IterationConfig:
    """The rollout and GAE settings of an iteration (the update's are in UpdateConfig)."""

    gamma: float
    gae_lambda: float
    norm_obs: bool
    sync_free: bool  # no per-step host sync in the rollout (CUDA)


def ppo_iteration(
    agent: PPOAgent,
    next_obs: Tensor,
    config: IterationConfig,
    update_cfg: UpdateConfig,
    update_device: torch.device,
    learning_rate: float,
    after_backward: "Callable[[], None] | None" = None,
    learner: object | None = None,
) -> tuple[Tensor, RolloutTotals, dict[str, float]]:
    """One PPO iteration from next_obs (N, D): set the learning rate, collect a rollout, GAE,
    update the learner, copy its weights to the rollout copy.

    Returns (the observation to continue from (N, D), the rollout's totals, the update's
    statistics). Raises NonFiniteStep (a bad observation or reward), UpdateOutOfMemory.
    """
    for group in agent.optimizer.param_groups:
        group["lr"] = learning_rate

    # 1. collect
    next_obs, totals = collect_rollout(
        agent.env, agent.rollout_actor, agent.rollout_critic, agent.buffer, agent.obs_rms, agent.reward_scaler,
        next_obs, config.norm_obs, config.sync_free,
    )

    # 2. GAE, bootstrapped from the value of the observation after the last step
    b = agent.buffer
    with torch.no_grad():
        next_value = agent.rollout_critic(agent.obs_rms.normalize(next_obs) if config.norm_obs else next_obs)
    advantages, returns = compute_gae(
        b.reward, b.value, b.terminated, b.truncated, b.final_value, next_value, config.gamma, config.gae_lambda
    )

    # 3. update the learner on the flattened rollout, then refresh the rollout copy
    batch = b.flatten(advantages, returns, update_device)
    try:
        stats = ppo_update(
            agent.actor, agent.critic, agent.optimizer, batch, update_cfg, agent.generator, agent.scaler,
            after_backward=after_backward, learner=learner,
        )
    except torch.cuda.OutOfMemoryError as exc:
        raise UpdateOutOfMemory(str(exc)) from exc
    agent.sync_rollout_copy()
    return next_obs, totals, stats
