"""Policies: BarrierNet (a differentiable CBF-QP safety layer), the Gaussian baseline, the post-hoc
safety filter, and the critic.

All actors share one interface (docs/ARCHITECTURE.md, "Safety layer")::

    forward(obs (B, obs_dim), safety: SafetyState, deterministic=False) -> ActorOutput
    evaluate_actions(obs, safety, sample (B, 2), qp_hint=None, cbf_geometry=None) -> (log_prob (B,), entropy (B,))

and what the PPO loop (`model.ppo`) needs from them, as explicit methods of `Actor` (defaults for
a policy without a safety layer): ``update_inputs`` (the per-state inputs of ``evaluate_actions``,
computed once per update), ``rollout_record`` (what the rollout keeps of each step for them),
``rollout_metric_names`` / ``rollout_step_sums`` (the safety layer's rollout curves) and
``policy_metrics`` (numbers of the policy itself, logged after each update).

``ActorOutput.action`` is what the env executes (physical units, within bounds); ``sample`` is what
PPO stores and later re-scores with ``evaluate_actions`` (it is never re-drawn there: the
reference project's resampling bug scored a fresh sample, which has no gradient with respect to
the mean). ``obs`` is already normalised; ``safety`` is the raw SafetyState.

Units: every mean, std and sample here is in physical units, u = (v [m/s], w [rad/s]).

The safety layer runs in float32 (or the obs' dtype if float64) with autocast disabled, so CUDA
mixed precision never reaches the QP. No host synchronisation happens in forward.

Two barriers meet in a rollout: the env's ``info["h"]`` (the body barrier, metres) and the
actors' ``info["lookahead_h"]`` (the CBF rows' barrier on the look-ahead point, m^2 for
obstacles); the key names which one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from model.cbf import (
    CBFGeometry,
    barriers_at,
    cbf_geometry,
    cbf_rows,
    cbf_rows_from_geometry,
    check_robust_margin,
    num_barriers,
    virtual_point,
)
from model.dcbf_exact import exact_dcbf_action
from model.qp import routing, solve_qp

if TYPE_CHECKING:
    from env.config import EnvParams
    from env.core import SafetyState
    from model.config import BarrierNetParams, CBFParams
    from tasks.params import Params  # only a type: make_actor reads its env, cbf, barriernet, train sections

ALGOS = ("barriernet", "baseline", "cbf_beta", "shielded")
UPDATE_MODES = ("through_qp", "nominal")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ActorOutput(NamedTuple):
    action: Tensor  # (B, 2) executed (physical units, within bounds)
    sample: Tensor  # (B, 2) what PPO stores and re-scores
    log_prob: Tensor  # (B,)
    info: dict[str, Tensor]  # see each actor's docstring; empty for the baseline


class UpdateInputs(NamedTuple):
    """The per-state inputs of ``evaluate_actions`` besides obs and sample, for B states.

    safety: the SafetyState, or None where the actor reads `cbf_geometry` instead;
    qp_hint: (B, 2) int64 active sets of the rollout's QP (a warm start), or None;
    cbf_geometry: the actor's per-state precomputation (`CBFGeometry`, `SafeBox`), or None.
    """

    safety: "SafetyState | None"
    qp_hint: Tensor | None = None
    cbf_geometry: Any = None

    def index(self, idx: Tensor) -> "UpdateInputs":
        """The inputs of states `idx` (a PPO minibatch)."""
        safety = None if self.safety is None else type(self.safety)(*(x.index_select(0, idx) for x in self.safety))
        return UpdateInputs(
            safety,
            None if self.qp_hint is None else self.qp_hint.index_select(0, idx),
            None if self.cbf_geometry is None else self.cbf_geometry.index(idx),
        )


class Actor(nn.Module):
    """What the PPO loop asks of every policy besides forward / evaluate_actions (module docstring).

    The defaults are those of a policy without a safety layer (the baseline)."""

    # The safety layer's rollout curves, logged as rollout/<name> = (sum over the rollout's env
    # steps of `rollout_step_sums`) / (rollout_steps * num_envs).
    rollout_metric_names: tuple[str, ...] = ()

    def update_inputs(self, safety: "SafetyState", obs: Tensor, record: Tensor | None) -> UpdateInputs:
        """Once per PPO update, for the whole batch: safety (B,) states, obs (B, obs_dim), record
        (B, k) or None (what `rollout_record` kept of each state). Indexed per minibatch."""
        return UpdateInputs(safety)

    def rollout_record(self, out: ActorOutput) -> Tensor | None:
        """What the rollout keeps of each step for `update_inputs`, (B, k) (one dtype), or None."""
        return None

    def rollout_step_sums(self, out: ActorOutput) -> Tensor:
        """(len(rollout_metric_names),) float64: this step's sums over the envs of the metrics."""
        return torch.zeros(0, dtype=torch.float64, device=out.action.device)

    def policy_metrics(self) -> dict[str, float]:
        """Numbers of the policy itself, logged after each update (charts/*)."""
        return {}

    def views(self) -> nn.Module:
        """The actor whose actions this one's are (itself; a wrapper that only re-reads another
        actor returns that one): two actors with one `views` act alike."""
        return self


# The rollout curves of every actor with a safety layer in the loop (BarrierNet's QP, CBF-Beta's
# box, the shield), in the order `_safety_layer_sums` returns them.
SAFETY_LAYER_METRICS = ("qp_intervention_rate", "qp_infeasible_rate", "mean_gamma", "qp_correction")


def _safety_layer_sums(info: dict[str, Tensor], counts: Sequence[Tensor] = (), sums: Sequence[Tensor] = ()) -> Tensor:
    """A step's sums over the envs of SAFETY_LAYER_METRICS, then the number of True entries of each
    bool tensor in `counts`, then the 0-dim tensors `sums`: (4 + len(counts) + len(sums),) float64
    (the counts exact, the float32 sums widened exactly).

    On the CPU the counts are NumPy's and the vector is built once from host numbers: the same
    values as the tensor ops the accelerators run (without a host sync; also where a test forces
    their sync-free route on the CPU), at a fifth of their cost."""
    flags = (info["intervened"], info["infeasible"])
    totals = (info["gamma"].float().mean(dim=1).sum(), info["correction"].sum())
    if not routing.sync_free(flags[0].device):
        count = lambda f: float(np.count_nonzero(f.numpy()))  # noqa: E731
        return torch.tensor([count(f) for f in flags] + [float(x) for x in totals] + [count(f) for f in counts]
                            + [float(x) for x in sums], dtype=torch.float64)
    return torch.stack([f.sum().double() for f in flags] + [x.double() for x in totals]
                       + [f.sum().double() for f in counts] + [x.double() for x in sums])


# ---------------------------------------------------------------------------------------------
# Building blocks


def _layer_init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_backbone(in_dim: int, hidden_sizes: Sequence[int]) -> nn.Sequential:
    """Linear + tanh layers, orthogonal init with gain sqrt(2) (PPO implementation details)."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [_layer_init(nn.Linear(in_dim, size), math.sqrt(2)), nn.Tanh()]
        in_dim = size
    return nn.Sequential(*layers)


def _normal_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Sum over the action dimensions of a diagonal Normal's log density; (B, 2) -> (B,)."""
    z = (sample - mean) / std
    return (-0.5 * z * z - torch.log(std) - _HALF_LOG_2PI).sum(-1)


def _normal_entropy(std: Tensor, batch: int) -> Tensor:
    """Diagonal Normal entropy, (2,) std -> (B,)."""
    return (0.5 + _HALF_LOG_2PI + torch.log(std)).sum(-1).expand(batch)


def _bounds(env: "EnvParams") -> tuple[list[float], list[float]]:
    return [0.0, -env.pursuer_w_max], [env.pursuer_v_max, env.pursuer_w_max]


def _safety_like(safety: "SafetyState", like: Tensor) -> "SafetyState":
    """The SafetyState on `like`'s device and float dtype (a no-op when they already match)."""
    cast = lambda t: t.to(device=like.device, dtype=like.dtype)  # noqa: E731
    return safety._replace(
        pursuer=cast(safety.pursuer),
        obstacle_centres=cast(safety.obstacle_centres),
        obstacle_radii=cast(safety.obstacle_radii),
        obstacle_mask=safety.obstacle_mask.to(device=like.device, dtype=torch.bool),
    )


def _safe_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _ExactRows(NamedTuple):
    """Stands in for CBFRows when the form is ``dcbf_exact``, whose rows depend on the proposal
    (model/dcbf_exact.py): what `_CBFProjection.forward` needs to build them, and h for info."""

    safety: "SafetyState"  # in the proposal's dtype and device
    gamma: float | Tensor  # per-step fraction, float or (B, M)
    robust_margin: float
    h: Tensor  # (B, M) barrier values on the look-ahead point (absent obstacles +inf): info["lookahead_h"]


class _CBFProjection(nn.Module):
    """u_safe = argmin 1/2 (u - u_ref)' H (u - u_ref)  s.t. the CBF rows, H = diag(cbf.action_weights).

    Infeasible problems return solve_qp's documented fallback action, flagged in ``feasible``; the
    result is then clamped to the action box (a no-op for feasible solutions).
    Form ``dcbf_exact``: `rows` returns an `_ExactRows` and forward runs
    `model.dcbf_exact.exact_dcbf_action` (re-linearised QPs until the exact step passes, flagged
    infeasible otherwise); autograd sees the last linearised QP (see that module).
    """

    def __init__(self, env: "EnvParams", cbf: "CBFParams"):
        super().__init__()
        self.env, self.cbf = env, cbf
        low, high = _bounds(env)
        self.register_buffer("weights", torch.tensor(cbf.action_weights, dtype=torch.float32), persistent=False)
        self.register_buffer("low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("high", torch.tensor(high, dtype=torch.float32), persistent=False)

    def rows(self, safety: "SafetyState", gamma: float | Tensor, like: Tensor, form: str | None = None,
             robust_margin: float = 0.0):
        """CBFRows of the states in `like`'s dtype (an `_ExactRows` for form ``dcbf_exact``);
        form None takes ``cbf.form``; robust_margin (m) inflates every clearance (RCBF-QP)."""
        form = self.cbf.form if form is None else form
        safety = _safety_like(safety, like)
        if form != "dcbf_exact":
            return cbf_rows(safety, self.env, self.cbf, gamma, form=form, robust_margin=robust_margin)
        margin = check_robust_margin(robust_margin)
        h, _, present = barriers_at(virtual_point(safety.pursuer, self.cbf.lookahead), safety, self.env,
                                    self.cbf.lookahead, margin)
        return _ExactRows(safety, gamma, margin, torch.where(present, h, torch.full_like(h, float("inf"))))

    def geometry(self, safety: "SafetyState", like: Tensor) -> CBFGeometry:
        return cbf_geometry(_safety_like(safety, like), self.env, self.cbf)

    def rows_from(self, geometry: CBFGeometry, gamma: Tensor):
        return cbf_rows_from_geometry(geometry, self.env, gamma, self.cbf.form)

    def forward(self, u_ref: Tensor, rows, active_hint: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """u_ref (B, 2) -> (u_safe (B, 2), feasible (B,) bool, active (B, 2) int64 | None).

        active: the QP's active rows (solve_qp's ``active``; None from qpth); active_hint (B, 2)
        int64: such a set from an earlier solve of the same problem (a warm start: speed only)."""
        batch = u_ref.shape[0]
        weights = self.weights.to(u_ref.dtype)
        H = torch.diag(weights).expand(batch, 2, 2)
        f = -u_ref * weights
        if isinstance(rows, _ExactRows):
            solution = exact_dcbf_action(rows.safety, self.env, self.cbf, rows.gamma, u_ref,
                                         robust_margin=rows.robust_margin, active_hint=active_hint)
        else:
            solution = solve_qp(H, f, rows.A, rows.b, backend=self.cbf.qp_backend, mask=rows.mask,
                                active_hint=active_hint)
        u = torch.maximum(torch.minimum(solution.u, self.high.to(u_ref.dtype)), self.low.to(u_ref.dtype))
        return u, solution.feasible, solution.active


def _same_policy(a: nn.Module, b: nn.Module) -> bool:
    """The same policy: one object, or two views of one actor (`Actor.views`)."""
    return a is b or (isinstance(a, Actor) and isinstance(b, Actor) and a.views() is b.views())


def _intervention_info(proposal: Tensor, executed: Tensor, tol: float, full_scale: Tensor) -> dict[str, Tensor]:
    """correction (B,) = |(executed - proposal) / (v_max, w_max)|: in normalised action units, so a
    change of speed and one of turn rate weigh alike (m/s and rad/s do not add); intervened (B,) =
    correction > tol. proposal, executed (B, 2); full_scale (2,) = (v_max, w_max)."""
    correction = ((executed - proposal) / full_scale.to(executed.dtype)).norm(dim=-1)
    return {"correction": correction, "intervened": correction > tol}


# ---------------------------------------------------------------------------------------------
# BarrierNet


class BarrierNetActor(Actor):
    """MLP backbone -> nominal-action head and class-K head -> CBF rows -> QP -> safe action.

    - nominal mean (B, 2): ``centre + half_range * tanh(raw)``, so it always lies inside the action
      box [0, v_max] x [-w_max, w_max] (the sample around it may leave the box; the QP's bound rows
      bring the executed action back).
    - gamma (B, M), M = K + 4 (obstacles, then walls +x, -x, +y, -y):
      ``gamma_min + (gamma_max - gamma_min) * sigmoid(raw)``, as in BarrierNet (Xiao et al. 2023);
      interpreted by ``cbf.form`` (dcbf, the first-order form = ct at gamma / dt, and dcbf_exact:
      per-step fraction; ct: rate in 1/s). With ``dcbf_exact`` every "QP" below is the exact
      projection of model/dcbf_exact.py, whose gradient is that of its last linearised QP.
    - exploration std: a fixed buffer ``barriernet.exploration_std`` (physical units), not learned.

    Update modes (``barriernet.update_mode``):
    - ``through_qp``: mean = QP(nominal mean); sample = mean + std * eps; executed = QP(sample).
      log_prob scores the sample under the current QP mean, so the PPO loss sends gradients
      through the QP into both the nominal head and the gamma head. Two QP solves per forward.
    - ``nominal`` (the reference project's choice): sample = nominal mean + std * eps;
      executed = QP(sample); log_prob under the nominal mean (no QP in evaluate_actions, gamma gets
      no gradient). One QP solve per forward.
    ``deterministic=True``: no noise; executed = QP(nominal mean) in both modes.

    info: ``nominal`` (B, 2) nominal mean; ``gamma`` (B, M); ``proposal`` (B, 2) the action the
    nominal policy alone would have executed (nominal mean, plus std * eps when stochastic, clipped to the bounds);
    ``correction`` (B,) = |(executed - proposal) / (v_max, w_max)| (normalised units); ``intervened`` (B,) = correction > cbf.intervention_tol;
    ``infeasible`` (B,) (any QP of this forward was infeasible); ``lookahead_h`` (B, M) the CBF
    rows' barrier values on the look-ahead point (absent obstacles +inf; not the env's body
    barrier ``info["h"]``); ``active_mean`` (B, 2) int64, only in through_qp mode with the exact
    backend: the active rows of the mean's QP (-1 padded), which PPO stores (`rollout_record`)
    and hands back to ``evaluate_actions(..., qp_hint=)`` as a warm start.

    Rollout curves: SAFETY_LAYER_METRICS, and in through_qp mode ``qp_active_rows`` (mean number
    of active rows of the mean's QP per step) and ``qp_active_fraction`` (steps with one).
    """

    def __init__(
        self,
        obs_dim: int,
        env_params: "EnvParams",
        cbf_params: "CBFParams",
        barriernet_params: "BarrierNetParams",
        hidden_sizes: Sequence[int] = (64, 64),
    ):
        super().__init__()
        if barriernet_params.update_mode not in UPDATE_MODES:
            raise ValueError(f"barriernet.update_mode={barriernet_params.update_mode!r}; accepted: {UPDATE_MODES}")
        self.env_params, self.cbf_params, self.barriernet_params = env_params, cbf_params, barriernet_params
        self.update_mode = barriernet_params.update_mode
        self.num_obstacles = env_params.num_obstacles
        self.num_barriers = num_barriers(self.num_obstacles)
        self.backbone = mlp_backbone(obs_dim, hidden_sizes)
        feature_dim = hidden_sizes[-1] if hidden_sizes else obs_dim
        self.nominal_head = _layer_init(nn.Linear(feature_dim, 2), 0.01)
        self.gamma_head = _layer_init(nn.Linear(feature_dim, self.num_barriers), 0.01)
        low, high = _bounds(env_params)
        self.register_buffer("action_centre", torch.tensor([(l + h) / 2 for l, h in zip(low, high)]))
        self.register_buffer("action_half_range", torch.tensor([(h - l) / 2 for l, h in zip(low, high)]))
        self.register_buffer("std", torch.tensor(barriernet_params.exploration_std, dtype=torch.float32))
        self.projection = _CBFProjection(env_params, cbf_params)
        # Gradient diagnostics (model/diagnostics.py): while True, evaluate_actions keeps its nominal
        # tensor with its gradient (retain_grad changes no gradient).
        self.probe_nominal = False
        self.last_nominal: Tensor | None = None
        self.rollout_metric_names = SAFETY_LAYER_METRICS + (
            ("qp_active_rows", "qp_active_fraction") if self.update_mode == "through_qp" else ()
        )

    def _heads(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, obs_dim) -> nominal mean (B, 2), gamma (B, M), both float32 (float64 for float64 obs)."""
        features = self.backbone(obs)
        dtype = _safe_dtype(obs)
        raw_nominal = self.nominal_head(features).to(dtype)
        raw_gamma = self.gamma_head(features).to(dtype)
        nominal = self.action_centre.to(dtype) + self.action_half_range.to(dtype) * torch.tanh(raw_nominal)
        bn = self.barriernet_params
        gamma = bn.gamma_min + (bn.gamma_max - bn.gamma_min) * torch.sigmoid(raw_gamma)
        return nominal, gamma

    def _check_safety(self, safety: "SafetyState", batch: int) -> None:
        if safety is None:
            raise ValueError("BarrierNetActor needs the SafetyState (got None)")
        shape = tuple(safety.obstacle_radii.shape)
        if len(shape) != 2 or shape[0] != batch or shape[1] < self.num_obstacles:
            raise ValueError(
                f"safety.obstacle_radii has shape {shape}; accepted: (B, K) = ({batch}, {self.num_obstacles}) with K = "
                f"env.num_obstacles the actor was built for, or more obstacles (B, K' > K: see full_gamma)"
            )

    def full_gamma(self, gamma: Tensor, safety: "SafetyState") -> Tensor:
        """gamma (B, K + 4) of the gamma head -> (B, K' + 4) for a state with K' >= K obstacles.

        The head has one output per obstacle it was trained with (K) plus the 4 walls. A scenario
        with more obstacles (the evaluation's multi-obstacle ones) must still constrain every one
        of them: the K obstacles nearest the pursuer's body (what the observation shows, by body
        gap) take the head's K obstacle outputs, in storage order as in training; every other
        obstacle gets the fixed ``cbf.filter_gamma`` of the post-hoc filters (same units as the
        head under ``cbf.form``). K' == K returns `gamma` unchanged (training is untouched).
        """
        k, k_all = self.num_obstacles, safety.obstacle_radii.shape[1]
        if k_all == k:
            return gamma
        batch = gamma.shape[0]
        centres, radii = safety.obstacle_centres.to(gamma.dtype), safety.obstacle_radii.to(gamma.dtype)
        gap = torch.linalg.vector_norm(centres - safety.pursuer[:, None, :2].to(gamma.dtype), dim=-1) - radii
        gap = torch.where(safety.obstacle_mask, gap, torch.full_like(gap, float("inf")))
        nearest = torch.sort(gap, dim=1, stable=True).indices[:, :k].sort(dim=1).values  # (B, K) storage order
        obstacle_gamma = gamma.new_full((batch, k_all), self.cbf_params.filter_gamma)
        obstacle_gamma = obstacle_gamma.scatter(1, nearest, gamma[:, :k])
        return torch.cat((obstacle_gamma, gamma[:, k:]), dim=1)

    def forward(self, obs: Tensor, safety: "SafetyState", deterministic: bool = False) -> ActorOutput:
        self._check_safety(safety, obs.shape[0])
        nominal, gamma = self._heads(obs)
        gamma = self.full_gamma(gamma, safety)
        std = self.std.to(nominal.dtype)
        with torch.autocast(device_type=nominal.device.type, enabled=False):
            rows = self.projection.rows(safety, gamma, nominal)
            noise = torch.zeros_like(nominal) if deterministic else std * torch.randn_like(nominal)
            proposal = nominal + noise
            if self.update_mode == "through_qp":
                mean, feasible_mean, active_mean = self.projection(nominal, rows)
                sample = mean + noise
                # the sample's QP often keeps the mean's active set: a warm start (speed only)
                executed, feasible = (mean, feasible_mean) if deterministic else \
                    self.projection(sample, rows, active_hint=active_mean)[:2]
                feasible = feasible & feasible_mean
            else:
                mean, sample, active_mean = nominal, proposal, None
                executed, feasible, _ = self.projection(sample, rows)
            log_prob = _normal_log_prob(sample, mean, std)
        # What the env would execute without the safety layer: the proposal clipped to the
        # control bounds. Bound clipping is not a safety intervention; only the CBF rows' is.
        centre, half = self.action_centre.to(proposal.dtype), self.action_half_range.to(proposal.dtype)
        proposal = torch.maximum(torch.minimum(proposal, centre + half), centre - half)
        info = {"nominal": nominal, "gamma": gamma, "proposal": proposal, "infeasible": ~feasible,
                "lookahead_h": rows.h}
        info.update(_intervention_info(proposal, executed, self.cbf_params.intervention_tol, centre + half))
        if active_mean is not None:
            info["active_mean"] = active_mean
        return ActorOutput(executed, sample, log_prob, info)

    def update_inputs(self, safety: "SafetyState", obs: Tensor, record: Tensor | None) -> UpdateInputs:
        """The rows' gamma-free part once per update (`cbf_geometry`) and the rollout's active
        sets (`record`, the QP hint); where there is no geometry (nominal mode, dcbf_exact) the
        states themselves."""
        geometry = self.cbf_geometry(safety, obs)
        return UpdateInputs(safety if geometry is None else None, record, geometry)

    def rollout_record(self, out: ActorOutput) -> Tensor | None:
        """The mean's QP active set (B, 2) int64 (through_qp with the exact backend), else None."""
        return out.info.get("active_mean")

    def rollout_step_sums(self, out: ActorOutput) -> Tensor:
        if self.update_mode != "through_qp":
            return _safety_layer_sums(out.info)
        if "active_mean" not in out.info:  # a backend without active sets (qpth): nothing counted
            return torch.cat((_safety_layer_sums(out.info), torch.zeros(2, dtype=torch.float64, device=out.action.device)))
        active = out.info["active_mean"] >= 0  # (B, 2): each mean's QP's active rows
        return _safety_layer_sums(out.info, counts=(active, active.any(dim=1)))

    def cbf_geometry(self, safety: "SafetyState", obs: Tensor) -> CBFGeometry | None:
        """The gamma-free part of the CBF rows of states (B,) (None in nominal mode, which needs no
        rows in `evaluate_actions`): PPO computes it once per update and hands
        ``geometry.index(minibatch)`` to `evaluate_actions` (speed only, same rows)."""
        if self.update_mode != "through_qp" or self.cbf_params.form == "dcbf_exact":
            return None  # dcbf_exact's rows depend on the proposal: evaluate_actions builds them
        self._check_safety(safety, obs.shape[0])
        return self.projection.geometry(safety, obs.new_empty(0, dtype=_safe_dtype(obs)))

    def evaluate_actions(
        self, obs: Tensor, safety: "SafetyState", sample: Tensor, qp_hint: Tensor | None = None,
        cbf_geometry: CBFGeometry | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Score the STORED sample (B, 2) under the current policy: (log_prob (B,), entropy (B,)).

        qp_hint (B, 2) int64 or None: the active set the mean's QP had when the sample was drawn
        (forward's ``info["active_mean"]``); a warm start for the re-solve, results unchanged.
        cbf_geometry: `cbf_geometry` of these states, or None (computed here)."""
        nominal, gamma = self._heads(obs)
        if self.probe_nominal and nominal.requires_grad:
            nominal.retain_grad()
            self.last_nominal = nominal
        std = self.std.to(nominal.dtype)
        with torch.autocast(device_type=nominal.device.type, enabled=False):
            if self.update_mode == "through_qp":
                if cbf_geometry is None:
                    self._check_safety(safety, obs.shape[0])
                    rows = self.projection.rows(safety, self.full_gamma(gamma, safety), nominal)
                else:
                    rows = self.projection.rows_from(cbf_geometry, gamma)
                if qp_hint is not None:
                    qp_hint = qp_hint.to(device=nominal.device, dtype=torch.int64)
                mean = self.projection(nominal, rows, active_hint=qp_hint)[0]
            else:
                mean = nominal
            log_prob = _normal_log_prob(sample.to(mean.dtype), mean, std)
        return log_prob, _normal_entropy(std, obs.shape[0])


# ---------------------------------------------------------------------------------------------
# Baseline


class GaussianActor(Actor):
    """The baseline PPO policy (CleanRL's continuous-action agent).

    MLP -> raw (B, 2); physical mean = centre + half_range * tanh(raw), inside the action box like
    BarrierNet's nominal mean (an unbounded mean drifts past v_max, where every sample clips to the
    same action and the policy gradient to slow down vanishes); a state-independent log-std
    parameter (normalised units, init ``train.init_log_std``), physical std = half_range *
    exp(log_std). The sample (physical, unclipped) is stored; the executed action
    is the sample clipped to [0, v_max] x [-w_max, w_max]. ``safety`` is accepted and ignored.
    info is empty.
    """

    def __init__(self, obs_dim: int, env_params: "EnvParams", hidden_sizes: Sequence[int], init_log_std: float):
        super().__init__()
        self.backbone = mlp_backbone(obs_dim, hidden_sizes)
        feature_dim = hidden_sizes[-1] if hidden_sizes else obs_dim
        self.mean_head = _layer_init(nn.Linear(feature_dim, 2), 0.01)
        self.log_std = nn.Parameter(torch.full((2,), float(init_log_std)))
        low, high = _bounds(env_params)
        self.register_buffer("action_low", torch.tensor(low))
        self.register_buffer("action_high", torch.tensor(high))
        self.register_buffer("action_centre", torch.tensor([(l + h) / 2 for l, h in zip(low, high)]))
        self.register_buffer("action_half_range", torch.tensor([(h - l) / 2 for l, h in zip(low, high)]))

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, obs_dim) -> physical mean (B, 2), physical std (2,)."""
        dtype = _safe_dtype(obs)
        raw = self.mean_head(self.backbone(obs)).to(dtype)
        half = self.action_half_range.to(dtype)
        return self.action_centre.to(dtype) + half * torch.tanh(raw), half * torch.exp(self.log_std.to(dtype))

    def forward(self, obs: Tensor, safety: "SafetyState | None" = None, deterministic: bool = False) -> ActorOutput:
        mean, std = self.distribution(obs)
        with torch.autocast(device_type=mean.device.type, enabled=False):
            sample = mean if deterministic else mean + std * torch.randn_like(mean)
            log_prob = _normal_log_prob(sample, mean, std)
            action = torch.maximum(torch.minimum(sample, self.action_high.to(mean.dtype)), self.action_low.to(mean.dtype))
        return ActorOutput(action, sample, log_prob, {})

    def update_inputs(self, safety: "SafetyState", obs: Tensor, record: Tensor | None) -> UpdateInputs:
        """None: evaluate_actions reads no safety state (so no minibatch gathers one)."""
        return UpdateInputs(None)

    def evaluate_actions(self, obs: Tensor, safety: "SafetyState | None", sample: Tensor, qp_hint: Tensor | None = None,
                         cbf_geometry: Any = None) -> tuple[Tensor, Tensor]:
        """Score the STORED (unclipped) sample (B, 2): (log_prob (B,), entropy (B,)). safety,
        qp_hint and cbf_geometry are accepted and ignored (no safety layer)."""
        mean, std = self.distribution(obs)
        with torch.autocast(device_type=mean.device.type, enabled=False):
            return _normal_log_prob(sample.to(mean.dtype), mean, std), _normal_entropy(std, obs.shape[0])

    def policy_metrics(self) -> dict[str, float]:
        """charts/log_std_mean: the mean learned log-std (normalised units)."""
        return {"charts/log_std_mean": float(self.log_std.detach().mean())}


# ---------------------------------------------------------------------------------------------
# Post-hoc safety filter


class SafetyFilter(Actor):
    """Wraps any actor at evaluation: its action is projected by the CBF QP at a fixed gamma.

    ``form`` "ct" (gamma: rate in 1/s) or "dcbf" (first-order discrete rows, gamma: per-step
    fraction in (0, 1]; the same rows as "ct" at gamma / dt); these are the "baseline + CT-CBF
    filter" and "baseline + DCBF filter" arms. "dcbf_exact" (gamma: per-step fraction) enforces
    h(q+) >= (1 - gamma) h(q) on the exact arc step (model/dcbf_exact.py). forward has the actor's
    signature (pass deterministic=True at evaluation); sample and log_prob are the wrapped actor's.
    info: ``nominal`` (B, 2) the wrapped actor's executed action, ``gamma`` (B, M) the fixed gamma,
    ``proposal`` (= nominal), ``correction``, ``intervened``, ``infeasible``, ``lookahead_h``, as for
    BarrierNetActor. evaluate_actions delegates to the wrapped actor. Rollout curves:
    SAFETY_LAYER_METRICS.

    ``robust_margin`` (m, >= 0): the RCBF-QP filter, every clearance of the rows inflated by it
    (`model.cbf.cbf_rows`); 0 is the plain filter. ``infeasible`` also counts the wrapped actor's
    own infeasible QPs (a BarrierNet under an RCBF filter: the hybrid arm).
    """

    def __init__(self, actor: nn.Module, env_params: "EnvParams", cbf_params: "CBFParams", form: str, gamma: float,
                 robust_margin: float = 0.0):
        super().__init__()
        if form not in ("ct", "dcbf", "dcbf_exact"):
            raise ValueError(f"SafetyFilter form={form!r}; accepted: 'dcbf_exact', 'ct' or 'dcbf'")
        gamma = float(gamma)
        if not (gamma > 0 if form == "ct" else 0 < gamma <= 1):
            raise ValueError(f"SafetyFilter gamma={gamma} for form {form}; accepted: {'> 0' if form == 'ct' else '(0, 1]'}")
        self.actor, self.env_params, self.cbf_params = actor, env_params, cbf_params
        self.form, self.gamma = form, gamma
        self.robust_margin = check_robust_margin(robust_margin)
        self.num_barriers = num_barriers(env_params.num_obstacles)
        self.projection = _CBFProjection(env_params, cbf_params)
        self.rollout_metric_names = SAFETY_LAYER_METRICS

    def forward(self, obs: Tensor, safety: "SafetyState", deterministic: bool = False) -> ActorOutput:
        return self._filtered(obs, safety, deterministic, self.gamma)

    def stacks_with(self, other: nn.Module) -> bool:
        """Whether `other` is a filter that can act beside this one in one pass (`forward_stacked`):
        the same wrapped policy, form and margin; any gamma."""
        return isinstance(other, SafetyFilter) and _same_policy(self.actor, other.actor) and \
            (self.form, self.robust_margin) == (other.form, other.robust_margin)

    @staticmethod
    def forward_stacked(filters: Sequence["SafetyFilter"], sizes: Sequence[int], obs: Tensor, safety: "SafetyState",
                        deterministic: bool = False) -> ActorOutput:
        """filters[i] acts on the next sizes[i] rows of obs (B, obs_dim), B = sum(sizes), in one pass
        with a per-row gamma (B, 1); row for row the same numbers as each filter's own forward on
        its rows (the rows take gamma as a (B, M) tensor either way). The filters must share
        the wrapped policy (`stacks_with`); the first one's runs once for all rows."""
        first = filters[0]
        if not all(first.stacks_with(f) for f in filters) or len(sizes) != len(filters):
            raise ValueError("forward_stacked: every filter must stack with the first (stacks_with), one size each")
        gamma = torch.cat([obs.new_full((n, 1), f.gamma, dtype=_safe_dtype(obs)) for f, n in zip(filters, sizes)])
        return first._filtered(obs, safety, deterministic, gamma)

    def _filtered(self, obs: Tensor, safety: "SafetyState", deterministic: bool, gamma: float | Tensor) -> ActorOutput:
        """forward at `gamma`: a float, or (B, 1) per row (`forward_stacked`)."""
        if safety is None:
            raise ValueError("SafetyFilter needs the SafetyState (got None)")
        inner = self.actor(obs, safety, deterministic=deterministic)
        proposal = inner.action.to(_safe_dtype(inner.action))
        with torch.autocast(device_type=proposal.device.type, enabled=False):
            rows = self.projection.rows(safety, gamma, proposal, form=self.form, robust_margin=self.robust_margin)
            executed, feasible, _ = self.projection(proposal, rows)
            if "infeasible" in inner.info:
                feasible = feasible & ~inner.info["infeasible"]
        shape = (proposal.shape[0], rows.h.shape[1])
        gamma = gamma.to(proposal.dtype).expand(shape) if isinstance(gamma, Tensor) else proposal.new_full(shape, gamma)
        info = {"nominal": proposal, "gamma": gamma, "proposal": proposal, "infeasible": ~feasible,
                "lookahead_h": rows.h}
        info.update(_intervention_info(proposal, executed, self.cbf_params.intervention_tol, self.projection.high))
        return ActorOutput(executed, inner.sample, inner.log_prob, info)

    def update_inputs(self, safety: "SafetyState", obs: Tensor, record: Tensor | None) -> UpdateInputs:
        """The wrapped actor's (the filter is fixed, outside the policy)."""
        return self.actor.update_inputs(safety, obs, record)

    def evaluate_actions(self, obs: Tensor, safety: "SafetyState", sample: Tensor, qp_hint: Tensor | None = None,
                         cbf_geometry: Any = None) -> tuple[Tensor, Tensor]:
        """The wrapped actor's score of the stored sample (the filter is fixed, outside the policy)."""
        return self.actor.evaluate_actions(obs, safety, sample, qp_hint=qp_hint, cbf_geometry=cbf_geometry)

    def rollout_step_sums(self, out: ActorOutput) -> Tensor:
        return _safety_layer_sums(out.info)


# ---------------------------------------------------------------------------------------------
# Critic and factories


class Critic(nn.Module):
    """MLP (tanh, orthogonal sqrt(2)) -> value head (orthogonal gain 1.0); obs (B, obs_dim) -> (B,)."""

    def __init__(self, obs_dim: int, hidden_sizes: Sequence[int] = (64, 64)):
        super().__init__()
        self.backbone = mlp_backbone(obs_dim, hidden_sizes)
        self.value_head = _layer_init(nn.Linear(hidden_sizes[-1] if hidden_sizes else obs_dim, 1), 1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.value_head(self.backbone(obs)).squeeze(-1)


class ShieldedActor(SafetyFilter):
    """Shielded PPO: the baseline's Gaussian policy with the post-hoc filter inside the training loop.

    The executed action, in training and at evaluation, is the CBF-QP projection (form
    ``cbf.form``, gamma ``cbf.filter_gamma``, both fixed before training) of the clipped Gaussian
    sample; PPO stores and re-scores the policy's own sample (its log-probability, not the
    filter's output). Same forward / evaluate_actions / info as SafetyFilter; state_dict keys
    ``actor.*`` (the Gaussian policy).
    """

    def __init__(self, obs_dim: int, env_params: "EnvParams", cbf_params: "CBFParams",
                 hidden_sizes: Sequence[int], init_log_std: float):
        super().__init__(GaussianActor(obs_dim, env_params, hidden_sizes, init_log_std), env_params, cbf_params,
                         cbf_params.form, cbf_params.filter_gamma)

    @property
    def log_std(self) -> Tensor:
        return self.actor.log_std

    def policy_metrics(self) -> dict[str, float]:
        return self.actor.policy_metrics()


def make_actor(algo: str, obs_dim: int, params: "Params") -> nn.Module:
    """The policy of one algorithm, from the params sections: ``barriernet`` -> BarrierNetActor,
    ``baseline`` -> GaussianActor, ``cbf_beta`` -> CBFBetaActor (model/cbf_beta.py),
    ``shielded`` -> ShieldedActor."""
    if algo == "barriernet":
        return BarrierNetActor(obs_dim, params.env, params.cbf, params.barriernet, params.train.hidden_sizes)
    if algo == "baseline":
        return GaussianActor(obs_dim, params.env, params.train.hidden_sizes, params.train.init_log_std)
    if algo == "cbf_beta":
        from model.cbf_beta import CBFBetaActor  # cbf_beta imports this module's building blocks

        return CBFBetaActor(obs_dim, params.env, params.cbf, params.train.hidden_sizes)
    if algo == "shielded":
        return ShieldedActor(obs_dim, params.env, params.cbf, params.train.hidden_sizes, params.train.init_log_std)
    raise ValueError(f"algo={algo!r} is unknown; accepted: {ALGOS}")


def make_filter(actor: nn.Module, params: "Params", form: str, gamma: float | None = None,
                robust_margin: float = 0.0) -> SafetyFilter:
    """The post-hoc filter arm: ``actor`` projected by a ``form`` ("ct" | "dcbf") CBF-QP at
    ``gamma`` (default ``cbf.filter_gamma``; note: for "ct" it is read as a rate in 1/s, for "dcbf"
    as a per-step fraction, so the same number makes the ct filter 1/dt times (20x at dt = 0.05 s)
    more conservative than the dcbf one: the reference project's ct filter likewise ignored dt).
    ``robust_margin`` (m) > 0 makes it the RCBF-QP filter (pass ``cbf.robust_margin``).
    A CBFBetaActor is filtered through its unconstrained policy (the Beta over the whole action
    box, `model.cbf_beta.UnconstrainedBeta`): the deployment mechanism of the arm cbf_beta_rcbf."""
    from model.cbf_beta import CBFBetaActor, UnconstrainedBeta

    if isinstance(actor, CBFBetaActor):
        actor = UnconstrainedBeta(actor)
    return SafetyFilter(actor, params.env, params.cbf, form, params.cbf.filter_gamma if gamma is None else gamma,
                        robust_margin=robust_margin)


__all__ = [
    "Actor",
    "ActorOutput",
    "UpdateInputs",
    "BarrierNetActor",
    "GaussianActor",
    "SafetyFilter",
    "ShieldedActor",
    "Critic",
    "make_actor",
    "make_filter",
]
