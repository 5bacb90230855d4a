"""The gradient probe under mixed precision (model/diagnostics.py): the loss scale is removed.

`GradScaler.unscale_` unscales only the optimizer's parameters; the nominal action's retained
gradient still carries the loss scale. The probe must report the same dL/du_nom with and without
a scaler. The scaler here is the CPU one (`torch.amp.GradScaler("cpu")`): the division is the same
code the CUDA path runs, and CI has no GPU.
"""

from __future__ import annotations

import torch

from env.core import PursuitEvasionCore
from model.actors import make_actor
from model.diagnostics import GradientProbe
from tasks.params import load_params

SCALE = 1024.0  # a power of two: scaling and unscaling are exact in float64


def _nominal_grads(scaled: bool, probe_knows_scaler: bool) -> torch.Tensor:
    params = load_params()
    torch.manual_seed(0)
    core = PursuitEvasionCore(params.env, 6, dtype=torch.float64)
    core.seed(list(range(6)))
    obs = core.reset()
    safety = core.safety_state()
    actor = make_actor("barriernet", core.obs_dim, params).double()
    sample = torch.randn(6, 2, dtype=torch.float64) * 0.3 + torch.tensor([0.5, 0.0], dtype=torch.float64)
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE) if scaled else None
    probe = GradientProbe(actor, scaler if probe_knows_scaler else None)
    log_prob, _ = actor.evaluate_actions(obs, safety, sample)
    loss = -log_prob.mean()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # as model/ppo.py does before calling the probe
    else:
        loss.backward()
    probe()
    grads = probe.per_sample[0]
    probe.close()
    return grads


def test_probe_removes_the_loss_scale():
    plain = _nominal_grads(scaled=False, probe_knows_scaler=False)
    assert plain.abs().max() > 0
    assert torch.equal(_nominal_grads(scaled=True, probe_knows_scaler=True), plain)


def test_without_the_scaler_the_probe_would_be_off_by_the_scale():
    """The bug this guards against: the retained gradient is the scaled one."""
    plain = _nominal_grads(scaled=False, probe_knows_scaler=False)
    assert torch.equal(_nominal_grads(scaled=True, probe_knows_scaler=False), plain * SCALE)
