"""The safety layer's own params: the `cbf` and `barriernet` sections of params.yaml.

`model/` owns these models (the layer that uses a setting owns its definition); the pipeline's
schema `tasks/params.py` imports them and composes them with its own sections. Nothing here
imports `tasks/` or `flows/`: `import model` works without the pipeline.

Errors name the dotted key, the bad value and what is accepted (pydantic's own range errors are
rewritten that way by `tasks.params.validate_params`, which prefixes the key).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CBF_FORMS = ("dcbf", "ct", "dcbf_exact")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class CBFParams(_Section):
    """Control-barrier-function rows shared by BarrierNet and the post-hoc filters (model/cbf.py)."""

    form: Literal["dcbf", "ct", "dcbf_exact"] = Field(
        "dcbf",
        description="ct: h' + gamma h >= 0, gamma a rate (1/s); dcbf: the first-order discrete form "
        "h + dt h' >= (1 - gamma) h, gamma a per-step fraction in (0, 1] -- exactly ct at gamma / dt; "
        "dcbf_exact: h(q+) >= (1 - gamma) h(q) on the exact arc step (model/dcbf_exact.py), re-linearised "
        "until it holds on the true step, else flagged infeasible",
    )
    lookahead: float = Field(0.2, gt=0, description="virtual control point distance ahead of the pursuer (m)")
    qp_backend: Literal["exact", "qpth"] = Field("exact", description="QP solver used in the policies")
    action_weights: list[float] = Field([1.0, 0.1], min_length=2, max_length=2, description="QP cost diag for (v, w)")
    filter_gamma: float = Field(0.2, gt=0, le=1, description="fixed class-K gamma of the post-hoc filters")
    intervention_tol: float = Field(1e-3, gt=0, description="|(safe - nominal) / (v_max, w_max)| above this counts as an intervention (normalised action units)")
    robust_margin: float = Field(
        0.05,
        ge=0,
        description="RCBF-QP filter (issue 15): every clearance inflated by this many metres (obstacle radius + "
        "margin, wall bound - margin); the plain rows (BarrierNet, the ct/dcbf filters) use 0",
    )
    exact_max_iters: int = Field(
        8, ge=1, le=100,
        description="dcbf_exact: linearise-and-re-solve rounds before the line search toward the stop action",
    )

    @field_validator("action_weights")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if any(w <= 0 for w in value):
            raise ValueError(f"cbf.action_weights={value} must be positive (QP cost must be strictly convex)")
        return value


class BarrierNetParams(_Section):
    """BarrierNet actor: nominal head + class-K head -> CBF rows -> QP."""

    update_mode: Literal["through_qp", "nominal"] = Field(
        "through_qp", description="through_qp: log-prob under the QP mean (gamma learns); nominal: the reference's choice"
    )
    gamma_min: float = Field(0.05, gt=0, le=1, description="lower end of the learned class-K gamma")
    gamma_max: float = Field(1.0, gt=0, le=1, description="upper end of the learned class-K gamma")
    exploration_std: list[float] = Field([0.3, 0.6], min_length=2, max_length=2, description="fixed std (v, w)")

    @model_validator(mode="after")
    def _range(self) -> "BarrierNetParams":
        if self.gamma_max <= self.gamma_min:
            raise ValueError(f"barriernet.gamma_max={self.gamma_max} must exceed gamma_min={self.gamma_min}")
        if any(s <= 0 for s in self.exploration_std):
            raise ValueError(f"barriernet.exploration_std={self.exploration_std} must be positive")
        return self


__all__ = ["CBF_FORMS", "BarrierNetParams", "CBFParams"]
