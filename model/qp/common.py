"""What every implementation of the QP solver shares: the tolerances, the result type, the input
checks, the masked-row preparation and the KKT residuals (a check, not a solver)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

BACKENDS = ("exact", "qpth")

# Relative primal tolerance per dtype: a row counts as satisfied when
# a'u - b <= tol * (1 + |b| + |a| |u0|)  (u0: the unconstrained optimum, the problem's scale).
FEAS_TOL = {torch.float64: 1e-11, torch.float32: 1e-5}
# A candidate's KKT block M = A_S H^-1 A_S' counts as singular when det(M) <= tol * prod(diag M)
# (the ratio is the squared sine of the angle between the rows in the H^-1 metric).
SINGULAR_TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
# Infeasible problems: candidates whose violation is within this factor of the least one tie.
TIE_REL = {torch.float64: 1e-9, torch.float32: 1e-5}
# qpth is an interior-point method with its own accuracy; a row it violates by more than this
# (relative, as FEAS_TOL) flags the problem infeasible/inaccurate.
QPTH_FEAS_TOL = 1e-6
# qpth, element without any real row: e_1'u <= e_1'u0 + QPTH_FAR * (1 + |u0| + max|b|).
QPTH_FAR = 1e3
# qpth answers whose complementarity max_i lam_i s_i exceeds QPTH_GAP_TOL * (1 + |u'Hu| + |f'u|)
# (or stationarity QPTH_STAT_TOL * sqrt(that)) are rejected as inaccurate. Measured on 900 CBF
# problems: accurate answers have gaps <= 5e-13, the stalled ones >= 9e-3.
QPTH_GAP_TOL = 1e-8
QPTH_STAT_TOL = 1e-6


class QPSolution(NamedTuple):
    """Result of `solve_qp`.

    u:         (B, n) the optimum, or the documented fallback where infeasible.
    feasible:  (B,) bool, True where every (unmasked) row can be satisfied.
    violation: (B,) largest row violation of ``u``, as a distance in action space beyond the
               feasibility tolerance (0 where feasible).
    lam:       (B, m) KKT multipliers (H u + f + A' lam = 0, lam >= 0 where feasible; zero on
               inactive and masked rows) from the exact backend; None from qpth.
    solver_ok: (B,) bool, False where the backend's own answer was rejected and replaced by the
               exact solver's (qpth: NaN, a violated row, or a KKT check failure); exact: all True.
    active:    (B, n) int64, the exact backend's chosen active set: its rows ascending, then -1
               padding (-1 -1 = the unconstrained optimum); pass it back as `active_hint` when
               the same or a nearby problem is solved again. None from qpth.
    """

    u: Tensor
    feasible: Tensor
    violation: Tensor
    lam: Tensor | None = None
    solver_ok: Tensor | None = None
    active: Tensor | None = None


def validate(H, f, A, b, mask, backend) -> None:
    """Refuse bad inputs of `solve_qp` with an error naming the argument, its value and what is accepted."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not known; accepted: {', '.join(map(repr, BACKENDS))}")
    for name, value in (("H", H), ("f", f), ("A", A), ("b", b)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if f.dim() != 2:
        raise ValueError(f"f has shape {tuple(f.shape)}; accepted: (B, n)")
    B, n = f.shape
    if n < 1:
        raise ValueError(f"f has shape {tuple(f.shape)}: n = 0 decision variables; accepted: n >= 1")
    if H.shape != (B, n, n):
        raise ValueError(f"H has shape {tuple(H.shape)}; accepted: (B, n, n) = {(B, n, n)} (f is (B, n) = {(B, n)})")
    if A.dim() != 3 or A.shape[0] != B or A.shape[2] != n:
        raise ValueError(f"A has shape {tuple(A.shape)}; accepted: (B, m, n) with B = {B}, n = {n}")
    m = A.shape[1]
    if b.shape != (B, m):
        raise ValueError(f"b has shape {tuple(b.shape)}; accepted: (B, m) = {(B, m)} (A is {tuple(A.shape)})")
    if f.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"f has dtype {f.dtype}; accepted: torch.float32 or torch.float64")
    for name, value in (("H", H), ("A", A), ("b", b)):
        if value.dtype != f.dtype:
            raise TypeError(f"{name} has dtype {value.dtype}; accepted: the dtype of f ({f.dtype})")
        if value.device != f.device:
            raise ValueError(f"{name} is on {value.device}; accepted: the device of f ({f.device})")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a torch.bool tensor of shape (B, m) = {(B, m)}, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != (B, m):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; accepted: (B, m) = {(B, m)}")
        if mask.device != f.device:
            raise ValueError(f"mask is on {mask.device}; accepted: the device of f ({f.device})")


def validate_hint(active_hint, f, m, check_range: bool) -> None:
    """Refuse a bad `active_hint`. check_range: also check the values (a host sync; elsewhere a bad
    index just fails the hint's check and the element is enumerated)."""
    B, n = f.shape
    if not isinstance(active_hint, Tensor) or active_hint.dtype != torch.int64:
        raise TypeError(f"active_hint must be a torch.int64 tensor of shape (B, n) = {(B, n)}, got "
                        f"{getattr(active_hint, 'dtype', type(active_hint).__name__)}")
    if active_hint.shape != (B, n):
        raise ValueError(f"active_hint has shape {tuple(active_hint.shape)}; accepted: (B, n) = {(B, n)}")
    if active_hint.device != f.device:
        raise ValueError(f"active_hint is on {active_hint.device}; accepted: the device of f ({f.device})")
    if check_range and B > 0 and (int(active_hint.min()) < -1 or int(active_hint.max()) >= m):
        raise ValueError(f"active_hint holds values in [{int(active_hint.min())}, {int(active_hint.max())}]; "
                         f"accepted: row indices 0..{m - 1} or -1 (no row)")


def prepare(H, f, A, b, mask):
    """Symmetrise H; give masked rows the form 0'u <= 1 (never active, always satisfied);
    give m = 0 problems one such row so every code path sees m >= 1."""
    H = 0.5 * (H + H.transpose(-1, -2))
    if A.shape[1] == 0:
        B, n = f.shape
        A = f.new_zeros(B, 1, n)
        b = f.new_ones(B, 1)
        mask = None
    if mask is not None:
        A = torch.where(mask[..., None], A, torch.zeros((), dtype=A.dtype, device=A.device))
        b = torch.where(mask, b, torch.ones((), dtype=b.dtype, device=b.device))
    return H, f, A, b


def kkt_residuals(H, f, A, b, u, lam=None, mask=None) -> dict[str, Tensor]:
    """KKT residuals of a candidate solution, per batch element (B,).

    primal: max_i (a_i'u - b_i)_+ over real rows. If lam (B, m) is given also
    stationarity |H u + f + A' lam|_inf, dual: max_i (-lam_i)_+, complementarity:
    max_i |lam_i (a_i'u - b_i)|.
    """
    if mask is None:
        mask = torch.ones(b.shape, dtype=torch.bool, device=b.device)
    resid = (A @ u[..., None])[..., 0] - b
    zero = torch.zeros((), dtype=resid.dtype, device=resid.device)
    out = {"primal": torch.where(mask, resid, zero).clamp(min=0).amax(-1)}
    if lam is not None:
        lam = torch.where(mask, lam, zero)
        grad = (H @ u[..., None])[..., 0] + f + (A.transpose(1, 2) @ lam[..., None])[..., 0]
        out["stationarity"] = grad.abs().amax(-1)
        out["dual"] = (-lam).clamp(min=0).amax(-1)
        out["complementarity"] = (lam * torch.where(mask, resid, zero)).abs().amax(-1)
    return out


def needs_grad(H, f, A, b) -> bool:
    """Whether the solve must be differentiable (grad mode on and an input requires grad)."""
    return torch.is_grad_enabled() and (H.requires_grad or f.requires_grad or A.requires_grad or b.requires_grad)


class PrecomputedKKT(torch.autograd.Function):
    """The winner's KKT solve done outside torch (NumPy, Python floats, numba), as a node of the
    autograd graph. Inputs H, f, A, b (for the graph), `make_u()` -> u (B, n) (a fresh tensor: the
    caller may modify it in place) and `backward(grad_u (B, n))` -> the gradients of H, f, A, b:
    the implementation's own implicit-function backward (as `reference._ActiveSetKKT`)."""

    @staticmethod
    def forward(ctx, H, f, A, b, make_u, backward):
        ctx.backward_fn = backward
        return make_u()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u):
        return (*ctx.backward_fn(grad_u), None, None)
