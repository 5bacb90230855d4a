"""PPO pieces against values computed another way (hand-derived numbers, a naive second implementation)."""

import numpy as np
import pytest
import torch

from model.ppo import RewardScaler, RunningMeanStd, compute_gae, explained_variance


def test_gae_hand_computed_with_truncation_bootstrap():
    # One env, 3 steps; step 1 is a timeout (truncated), so its target bootstraps V(final obs) = 5
    # and the advantage chain is cut there. gamma = 0.5, lambda = 0.5 keep the arithmetic exact.
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[1.0], [1.0], [2.0]])
    terminated = torch.tensor([[False], [False], [False]])
    truncated = torch.tensor([[False], [True], [False]])
    final_values = torch.tensor([[0.0], [5.0], [0.0]])
    next_value = torch.tensor([4.0])
    adv, ret = compute_gae(rewards, values, terminated, truncated, final_values, next_value, 0.5, 0.5)
    # step 2: delta = 3 + 0.5*4 - 2 = 3                      -> A2 = 3
    # step 1: delta = 2 + 0.5*5 - 1 = 3.5 (bootstrap final)  -> A1 = 3.5 (chain cut)
    # step 0: delta = 1 + 0.5*1 - 1 = 0.5                    -> A0 = 0.5 + 0.25*3.5 = 1.375
    assert adv[:, 0].tolist() == [1.375, 3.5, 3.0]
    assert ret[:, 0].tolist() == [2.375, 4.5, 5.0]


def test_gae_termination_does_not_bootstrap():
    rewards = torch.tensor([[1.0], [10.0]])
    values = torch.tensor([[2.0], [3.0]])
    terminated = torch.tensor([[True], [False]])
    truncated = torch.zeros(2, 1, dtype=torch.bool)
    adv, _ = compute_gae(rewards, values, terminated, truncated, torch.full((2, 1), 99.0), torch.tensor([7.0]), 0.9, 0.8)
    assert adv[0, 0].item() == pytest.approx(1.0 - 2.0)  # terminal: no future value at all
    assert adv[1, 0].item() == pytest.approx(10.0 + 0.9 * 7.0 - 3.0)


def _naive_gae(rewards, values, terminated, truncated, final_values, next_value, gamma, lam):
    """Second implementation: A_t = sum_k (gamma*lam)^k delta_{t+k} within the episode."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        deltas = []
        for t in range(T):
            if terminated[t, n]:
                nxt = 0.0
            elif truncated[t, n]:
                nxt = final_values[t, n]
            else:
                nxt = next_value[n] if t == T - 1 else values[t + 1, n]
            deltas.append(rewards[t, n] + gamma * nxt - values[t, n])
        for t in range(T):
            total, k = 0.0, 0
            while t + k < T:
                total += (gamma * lam) ** k * deltas[t + k]
                if terminated[t + k, n] or truncated[t + k, n]:
                    break
                k += 1
            adv[t, n] = total
    return adv


def test_gae_matches_naive_implementation_on_random_episodes():
    g = torch.Generator().manual_seed(0)
    T, N = 40, 6
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    final_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    next_value = torch.randn(N, generator=g, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=g) < 0.08
    truncated = (torch.rand(T, N, generator=g) < 0.08) & ~terminated
    adv, ret = compute_gae(rewards, values, terminated, truncated, final_values, next_value, 0.99, 0.95)
    expected = _naive_gae(rewards.numpy(), values.numpy(), terminated.numpy(), truncated.numpy(),
                          final_values.numpy(), next_value.numpy(), 0.99, 0.95)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + values.numpy(), rtol=1e-12, atol=1e-12)


def test_running_mean_std_matches_numpy_over_batches():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(1000, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -3.0, 0.5])
    rms = RunningMeanStd((3,), epsilon=0.0 + 1e-12)
    for chunk in data.split(77):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean.numpy(), data.double().mean(0).numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), data.double().var(0, unbiased=False).numpy(), rtol=1e-6)


def test_reward_scaler_divides_by_return_std_and_resets_on_done():
    gamma = 0.9
    rewards = [1.0, 0.5, -2.0, 3.0, 1.0, 0.25]
    dones = [False, False, True, False, False, False]
    scaler = RewardScaler(num_envs=1, gamma=gamma)
    returns, running = [], 0.0
    for r, d in zip(rewards, dones):
        scaled = scaler(torch.tensor([r], dtype=torch.float64), torch.tensor([d]))
        running = running * gamma + r  # second implementation: plain discounted return
        returns.append(running)
        expected = r / np.sqrt(np.var(returns) + 1e-8)
        # the scaler's prior (count 1e-4, var 1) matters only while the history is a single point
        if len(returns) > 1:
            assert scaled.item() == pytest.approx(expected, rel=1e-2)
        if d:
            running = 0.0
    assert scaler.discounted.item() == pytest.approx(running)


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0)


def test_rollout_buffer_carries_the_actors_record_into_the_batch_and_update_hands_it_over():
    from env.core import SafetyState
    from model.actors import Actor, UpdateInputs
    from model.ppo import RolloutBuffer, UpdateConfig, ppo_update

    T, N, K = 3, 4, 2
    buf = RolloutBuffer(T, N, 5, K, "cpu")
    zeros = torch.zeros(T, N)
    assert buf.flatten(zeros, zeros, "cpu").record is None  # not stored: no field
    for t in range(T):
        buf.store_record(t, torch.arange(N * 2).reshape(N, 2) + 100 * t)
    batch = buf.flatten(zeros, zeros, "cpu")
    assert batch.record.shape == (T * N, 2) and batch.record.dtype == torch.int64
    assert torch.equal(batch.record[N + 1], torch.tensor([102, 103]))  # step 1, env 1
    # a record keeps its dtype and width (CBF-Beta's boxes: (N, 5) float64)
    boxes = RolloutBuffer(T, N, 5, K, "cpu")
    for t in range(T):
        boxes.store_record(t, torch.full((N, 5), t + 0.1, dtype=torch.float64))
    record = boxes.flatten(zeros, zeros, "cpu").record
    assert record.dtype == torch.float64 and record.shape == (T * N, 5) and record[2 * N, 0] == 2.1

    class PlainActor(Actor):  # the default update_inputs: the states, no hint
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def evaluate_actions(self, obs, safety, sample, qp_hint=None, cbf_geometry=None):
            self.seen.append((obs[:, 0].long(), safety, qp_hint))
            return self.w.expand(obs.shape[0]), self.w.expand(obs.shape[0])

    class HintedActor(PlainActor):  # asks for the rollout's hints (as BarrierNet does)
        def update_inputs(self, safety, obs, record):
            return UpdateInputs(safety, record)

    B = T * N
    obs = torch.arange(B, dtype=torch.float32)[:, None].expand(B, 5).clone()
    safety = SafetyState(torch.arange(B * 3.0).reshape(B, 3), torch.zeros(B, K, 2), torch.zeros(B, K),
                         torch.zeros(B, K, dtype=torch.bool))
    hints = torch.arange(B * 2).reshape(B, 2)
    batch = batch._replace(obs=obs, safety=safety, record=hints, advantages=torch.randn(B), returns=torch.randn(B))
    cfg = UpdateConfig(update_epochs=2, minibatch_size=4, clip_coef=0.2, clip_vloss=True, ent_coef=0.0,
                       vf_coef=0.5, max_grad_norm=0.5)
    critic = torch.nn.Linear(5, 1)
    for actor, expect_hint in ((HintedActor(), True), (PlainActor(), False)):
        opt = torch.optim.Adam(list(actor.parameters()) + list(critic.parameters()))
        ppo_update(actor, critic, opt, batch, cfg, torch.Generator().manual_seed(0))
        assert len(actor.seen) == 2 * B // 4
        for rows, states, hint in actor.seen:
            assert torch.equal(states.pursuer, safety.pursuer[rows])  # the minibatch's own states
            assert torch.equal(hint, hints[rows]) if expect_hint else hint is None
