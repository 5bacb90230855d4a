"""PPO pieces shared by BarrierNet and the baseline: normalisers, rollout buffer, GAE, update.

Read top to bottom like CleanRL's ppo_continuous_action.py: the rollout tensors are
preallocated as (rollout_steps, num_envs, ...), GAE runs backwards over them, and
`ppo_update` iterates shuffled minibatches with the clipped surrogate and value loss.

Differences from CleanRL, kept on purpose:
- truncation (timeout) is not folded into `done`: the value of the final observation is
  bootstrapped (Stable-Baselines3 issue #633);
- the actor scores the *stored* sample with `evaluate_actions(obs, safety, sample)`; the
  action the env executed (after a QP or clipping) is kept beside it for metrics only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from env.core import SafetyState


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


class RolloutBuffer:
    """Preallocated rollout storage, (rollout_steps, num_envs, ...) on one device.

    Fields: obs (T,N,D) normalised observations; sample (T,N,2) what the policy drew and PPO
    re-scores; action (T,N,2) what the env executed; nominal (T,N,2); log_prob, value, reward,
    final_value (T,N); terminated, truncated (T,N) bool; the SafetyState tensors
    (pursuer (T,N,3), obstacle_centres (T,N,K,2), obstacle_radii (T,N,K), obstacle_mask (T,N,K));
    optional qp_active (T,N,2) int64 (None until `store_qp_active` is first called): the active
    set of the policy mean's QP at each step (BarrierNet's ``info["active_mean"]``), handed back
    to ``evaluate_actions(..., qp_hint=)`` as a warm start.
    """

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, num_obstacles: int, device: torch.device | str):
        T, N, K = num_steps, num_envs, num_obstacles
        f32 = dict(dtype=torch.float32, device=device)
        self.num_steps, self.num_envs = num_steps, num_envs
        self.obs = torch.zeros(T, N, obs_dim, **f32)
        self.sample = torch.zeros(T, N, 2, **f32)
        self.action = torch.zeros(T, N, 2, **f32)
        self.nominal = torch.zeros(T, N, 2, **f32)
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
        self.qp_active: Tensor | None = None
        self.device = device

    def store_qp_active(self, t: int, active: Tensor) -> None:
        """active (N, 2) int64 row indices (-1 = none); allocates qp_active on first use."""
        if self.qp_active is None:
            self.qp_active = torch.full(
                (self.num_steps, self.num_envs, active.shape[-1]), -1, dtype=torch.int64, device=self.device
            )
        self.qp_active[t] = active

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
            qp_active=None if self.qp_active is None else flat(self.qp_active),
        )


class Batch(NamedTuple):
    obs: Tensor         # (B, D)
    sample: Tensor      # (B, 2)
    log_prob: Tensor    # (B,)
    value: Tensor       # (B,)
    advantages: Tensor  # (B,)
    returns: Tensor     # (B,)
    safety: SafetyState
    qp_active: Tensor | None = None  # (B, 2) int64 warm start for the actor's QP, or None


def _index_safety(safety: SafetyState, idx: Tensor) -> SafetyState:
    return SafetyState(*(x[idx] for x in safety))


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


def ppo_update(
    actor: nn.Module,
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: UpdateConfig,
    generator: torch.Generator,
    scaler: "torch.amp.GradScaler | None" = None,
    after_backward: "Callable[[], None] | None" = None,
) -> dict[str, float]:
    """One PPO update over `batch` (update_epochs x shuffled minibatches).

    `after_backward` is called after each minibatch's backward pass, before clipping (read-only
    diagnostics: model/diagnostics.py `GradientProbe`).

    `generator` (CPU) draws the minibatch permutation, so the update is reproducible and its
    state can be checkpointed. `scaler` is given only for CUDA mixed precision; autocast is
    then enabled around the forward passes (the actor keeps its QP in float32).
    Returns the logged statistics (CleanRL names).
    """
    device = batch.obs.device
    batch_size = batch.obs.shape[0]
    amp = scaler is not None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # the stored QP active sets speed up the actor's re-solve (results unchanged)
    use_hint = batch.qp_active is not None and "qp_hint" in inspect.signature(actor.evaluate_actions).parameters
    # the gamma-free part of BarrierNet's CBF rows depends on the states only: once per update
    geometry = actor.cbf_geometry(batch.safety, batch.obs) if hasattr(actor, "cbf_geometry") else None
    clipfracs, approx_kls = [], []
    pg_loss = v_loss = entropy_loss = torch.zeros(())
    for _ in range(cfg.update_epochs):
        order = torch.randperm(batch_size, generator=generator).to(device)
        for start in range(0, batch_size, cfg.minibatch_size):
            idx = order[start : start + cfg.minibatch_size]
            with torch.autocast(device_type=device.type, enabled=amp):
                hint = {"qp_hint": batch.qp_active[idx]} if use_hint else {}
                if geometry is not None:
                    hint["cbf_geometry"] = geometry.index(idx)
                # with the geometry the actor reads no SafetyState (the indexing is skipped)
                safety = None if geometry is not None else _index_safety(batch.safety, idx)
                new_log_prob, entropy = actor.evaluate_actions(batch.obs[idx], safety, batch.sample[idx], **hint)
                new_value = critic(batch.obs[idx]).float()
            log_ratio = new_log_prob.float() - batch.log_prob[idx]
            ratio = log_ratio.exp()
            with torch.no_grad():
                approx_kls.append(((ratio - 1) - log_ratio).mean())  # Schulman's k3 estimator
                clipfracs.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())

            advantages = batch.advantages[idx]
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            pg_loss = torch.max(
                -advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
            ).mean()

            returns = batch.returns[idx]
            if cfg.clip_vloss:
                old_value = batch.value[idx]
                clipped = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((new_value - returns).square(), (clipped - returns).square()).mean()
            else:
                v_loss = 0.5 * (new_value - returns).square().mean()
            entropy_loss = entropy.float().mean()
            loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss

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
