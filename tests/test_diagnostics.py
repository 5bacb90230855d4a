"""Training diagnostics (model/diagnostics.py, tasks/train.py): read-only, and right."""

from __future__ import annotations

import pytest
import torch

from model.actors import make_actor
from model.diagnostics import GradientProbe
from tasks.params import load_params
from tasks.train import Trainer
from tests.helpers import TINY_PIPELINE


def _tiny_params(updates: int = 3, learner: str = "numpy"):
    over = {k: v for k, v in TINY_PIPELINE.items() if k.startswith(("env.", "train."))}
    over["train.total_steps"] = 8 * 16 * updates
    over["train.learner"] = learner
    return load_params(overrides=over)


class _NoProbe:
    def __call__(self) -> None:
        pass

    def stats(self) -> dict:
        return {}


@pytest.mark.parametrize("learner", ["torch", "numpy"])
def test_the_probe_changes_no_weight(learner):
    params = _tiny_params(learner=learner)
    for algo in ("barriernet", "cbf_beta"):
        weights = []
        for probed in (True, False):
            trainer = Trainer(params, algo, 0)
            if not probed:
                trainer.probe.close()
                trainer.probe = _NoProbe()
                if trainer.learner is not None:  # the NumPy learner feeds only a GradientProbe: give it none
                    update = trainer.learner.update
                    trainer.learner.update = lambda actor, batch, cfg, generator, after_backward=None: update(
                        actor, batch, cfg, generator, None)
            for _ in range(3):
                stats = trainer.train_one_update()
            weights.append(torch.cat([p.detach().flatten() for p in trainer.actor.parameters()]))
            if probed:
                assert stats["grad/actor_norm"] > 0
                assert ("grad/nominal_abs_w" in stats) == (algo == "barriernet")
                assert ("rollout/box_width_v" in stats) == (algo == "cbf_beta")
        assert torch.equal(weights[0], weights[1]), algo


def test_nominal_gradient_per_sample_matches_finite_differences():
    """The probe's dL/du_nom (per sample, through the QP) against central differences of the loss
    in the nominal head's raw output, converted by the tanh squashing's derivative."""
    params = load_params()
    torch.manual_seed(0)
    from env.core import PursuitEvasionCore

    core = PursuitEvasionCore(params.env, 6, dtype=torch.float64)
    core.seed(list(range(6)))
    obs = core.reset()
    for _ in range(30):  # move toward obstacles and walls so that some CBF rows are active
        obs = core.step(torch.tensor([[1.0, 0.3]] * 6, dtype=torch.float64))[0]
    safety = core.safety_state()
    actor = make_actor("barriernet", core.obs_dim, params).double()
    sample = torch.randn(6, 2, dtype=torch.float64) * 0.3 + torch.tensor([0.5, 0.0], dtype=torch.float64)
    weights = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)

    def loss(shift: torch.Tensor | None = None) -> torch.Tensor:
        handle = None
        if shift is not None:
            handle = actor.nominal_head.register_forward_hook(lambda m, i, out: out + shift)
        try:
            log_prob, _ = actor.evaluate_actions(obs, safety, sample)
        finally:
            if handle is not None:
                handle.remove()
        return -(weights * log_prob).mean()

    probe = GradientProbe(actor)
    actor.zero_grad()
    loss().backward()
    probe()
    per_sample = probe.per_sample[0]  # (6, 2) = B x dL/du_nom
    probe.close()

    raw = actor.nominal_head(actor.backbone(obs)).detach()
    half = actor.action_half_range.double()
    eps = 1e-6
    for i in range(6):
        for k in range(2):
            shift = torch.zeros(6, 2, dtype=torch.float64)
            shift[i, k] = eps
            d_raw = (loss(shift) - loss(-shift)) / (2 * eps)
            d_u = d_raw / (half[k] * (1 - torch.tanh(raw[i, k]) ** 2))
            assert torch.allclose(per_sample[i, k] / 6, d_u, rtol=1e-5, atol=1e-9), (i, k)


def test_layer_norms_are_the_parameter_gradient_norms():
    params = load_params()
    actor = make_actor("baseline", 10, params).double()
    probe = GradientProbe(actor)
    obs = torch.randn(5, 10, dtype=torch.float64)
    log_prob, _ = actor.evaluate_actions(obs, None, torch.randn(5, 2, dtype=torch.float64))
    (-log_prob.mean()).backward()
    probe()
    probe()  # two identical calls: the means equal one call's norms
    stats = probe.stats()
    total = 0.0
    for name, p in actor.named_parameters():
        assert abs(stats[f"grad/layer/{name}"] - float(p.grad.norm())) < 1e-12
        total += float(p.grad.norm()) ** 2
    assert abs(stats["grad/actor_norm"] - total**0.5) < 1e-12
    assert probe.stats() == {}  # reset after reading


def test_the_nominal_percentiles_are_torchs_quantiles_bit_for_bit():
    """The probe's p50 and p99 (NumPy's quantile) against torch.quantile of the same per-sample
    norms (the second implementation), with ties and an even and odd number of samples."""
    import numpy as np

    class _Actor(torch.nn.Linear):
        last_nominal = None

    probe = GradientProbe(_Actor(2, 2))
    probe.nominal = True
    g = torch.Generator().manual_seed(4)
    for samples in (40960, 1023):
        grads = torch.randn(samples, 2, dtype=torch.float64, generator=g) * torch.rand(samples, 1, generator=g,
                                                                                      dtype=torch.float64) ** 8
        grads[: samples // 3] = grads[0]  # ties
        probe.per_sample, probe.calls = [grads], 1
        stats = probe.stats()
        want = torch.quantile(grads.norm(dim=-1), torch.tensor([0.5, 0.99], dtype=torch.float64))
        got = np.array([stats["grad/nominal_norm_p50"], stats["grad/nominal_norm_p99"]])
        assert got.tobytes() == want.numpy().tobytes()
