"""CBF-Beta (Suttle et al., AISTATS 2024): a Beta policy whose support is a safe box.

The policy draws, per action dimension d = (v, w), a Beta(alpha_d, beta_d) sample ``x_d`` in (0, 1)
and executes ``u_d = low_d + x_d (high_d - low_d)``, where ``[low, high]`` is an axis-aligned box
inside the state's safe control set

    C(x) = {u : A u <= b}   (the CBF rows of `model.cbf.cbf_rows`, form ``cbf.form``,
                             gamma ``cbf.filter_gamma``, plus the four action-bound rows;
                             `cbf_rows` ends in those same four, which the actor leaves out
                             where it hands C(x) to the box: `CBFBetaActor.box_rows`).

So every action the policy can draw satisfies every CBF row: safety by construction, no QP on the
action. The box is a subset of C(x) (conservative: the policy may learn to lean on box edges that
are not edges of C(x)). ``dcbf_exact`` has no linear rows; its box uses the first-order ``dcbf``
rows at the same gamma.

Safe box construction (`safe_box`, vectorised over the batch, float64)
----------------------------------------------------------------------
1. Centres: for each inward offset delta in CENTRE_DELTAS = (0, 0.05, 0.2, 0.5) (units of the
   half action range), the point nearest the action box's centre ``u_mid = (v_max / 2, 0)`` of
   C(x) with every row pushed inwards by delta (the exact QP of `model.qp.solve_qp`, normalised
   units ``z = (u - u_mid) / half_range``). delta = 0 decides feasibility: if C(x) is empty the
   state is *infeasible*. A delta > 0 centre lies at least delta from every edge: the delta = 0
   centre can sit in a corner of C(x), where both chords below are points. The delta > 0 QPs are
   solved (in one batch) only for states whose delta = 0 box is not already the whole action box
   (the same result: step 4 keeps the first largest box).
2. Chords: for each dimension d, the interval of u_d with the other dimension held at the centre c:
   ``{u_d : (u_d, c_other) in C(x)}``, exact (each row bounds u_d from one side).
3. Shrink: the cross product of the two chords may cut a corner of C(x); shrink it toward c by the
   largest t in [0, 1] such that every corner satisfies every row. Per row i, the corners' worst
   increase of ``a_i . u`` over ``a_i . c`` is ``reach_i = sum_d max(a_id (hi_d - c_d),
   a_id (lo_d - c_d))``, so ``t = min(1, min_{reach_i > 0} slack_i / reach_i)`` with
   ``slack_i = b_i - a_i . c >= 0``. A row with zero slack at c has ``reach_i <= 0`` (the chords
   lie on its inner side), so t > 0 whenever c is feasible and some chord has length.
4. Recentre: repeat 2-3 from the box's centre (``rounds`` passes in all). Of all offsets and
   passes keep the box of largest normalised area (ties: the smallest delta, the earliest pass).
   A state whose C(x) contains the whole action box gets the whole action box; a half-plane
   ``v <= s`` gives exactly ``[0, s] x [-w_max, w_max]``.
On the CPU the whole construction runs on NumPy arrays (`_safe_box_arrays`): the centres' QPs go
straight to the exact solver's compiled loop and steps 2-4 run as a numba loop over the states
(`_boxes_kernel`), bit-equal to the batched torch code (`_centres`, `_boxes_torch`; tested), whose
few hundred small tensor ops per call cost more than the arithmetic. This box is not the largest box inside C(x); it is one every corner
of which provably satisfies every row (tested on random and near-boundary states).

Infeasible states (C(x) empty): the box collapses to the QP's minimum-violation point (solve_qp's
documented fallback, clipped to the action bounds), which is the executed action; ``feasible`` is
False and the actor reports ``info["infeasible"]``. The action then does not depend on the sample,
so its log-probability is a constant 0 (the PPO ratio is 1 there: no gradient from an action the
policy did not choose).

Log-probability (feasible states): ``sum_d [log Beta(x_d; alpha_d, beta_d) - log(high_d - low_d)]``,
the density of u on the box (the rescaling Jacobian). PPO stores x (the ``sample``) and re-scores it
under the box of the state where it was drawn: the box is a deterministic function of the stored
SafetyState (computed on the CPU in float64, element by element, so the rollout's and the update's
boxes are the same numbers). The rollout keeps each step's boxes (`CBFBetaActor.rollout_record`),
and `CBFBetaActor.update_inputs` (called by `model.ppo.ppo_update`) hands them to the update, so no
box is built twice; without a record it rebuilds them from the states.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from torch import Tensor, nn

from model.actors import (
    SAFETY_LAYER_METRICS,
    Actor,
    ActorOutput,
    UpdateInputs,
    _bounds,
    _intervention_info,
    _layer_init,
    _safe_dtype,
    _safety_layer_sums,
    _safety_like,
    mlp_backbone,
)
from model.cbf import BOUND_ROWS, NUM_BOUND_ROWS, cbf_rows, cbf_rows_arrays, num_barriers
from model.qp import routing, solve_qp
from model.qp.cpu_n2 import solve_arrays
from model.qp.common import FEAS_TOL

if TYPE_CHECKING:
    from env.core import SafetyState
    from tasks.params import CBFParams, EnvParams

# x is kept this far from 0 and 1: float32 rounds some Beta draws to exactly 0 or 1, where the
# log-density is -inf. 1e-6 of the box width is far below any action resolution that matters.
SAMPLE_EPS = 1e-6
# Widths below this fraction of the action range are clamped in the log-Jacobian only (a box
# collapsed to a point would make log(width) = -inf); the action uses the true width.
MIN_WIDTH_FRACTION = 1e-6
# Coefficients |a_id| below this count as zero when a row bounds u_d (such a row says nothing
# about u_d; dividing by it would give an infinite, meaningless bound).
_COEF_TOL = 1e-12
# Inward offsets of the rows (in units of the half action range) for the candidate box centres.
CENTRE_DELTAS = (0.0, 0.05, 0.2, 0.5)
# `_empty_beyond_round_off`'s margin, relative to the rows' size: far above the full rule's
# round-off (~1e-15), far below the gaps of the centre QPs it settles (~1e-2).
_EMPTY_MARGIN = 1e-9


class SafeBox(NamedTuple):
    """Axis-aligned boxes ``[low, high]`` inside the safe control sets of a batch of states.

    low, high: (B, 2) float64, physical units (v [m/s], w [rad/s]); feasible: (B,) bool (False:
    the safe set is empty and low = high = the fallback action).
    """

    low: Tensor
    high: Tensor
    feasible: Tensor

    @property
    def width(self) -> Tensor:
        """(B, 2) high - low (>= 0)."""
        return self.high - self.low

    def index(self, idx: Tensor) -> "SafeBox":
        """The boxes of states `idx` (a PPO minibatch)."""
        return SafeBox(*(x.index_select(0, idx) for x in self))

    def to(self, device: torch.device | str) -> "SafeBox":
        return SafeBox(*(x.to(device) for x in self))

    def packed(self) -> Tensor:
        """(B, 5) float64: low_v, low_w, high_v, high_w, feasible (1.0 / 0.0); what a rollout keeps
        of each step's box (`CBFBetaActor.rollout_record`). `unpacked` inverts it exactly."""
        return torch.cat((self.low, self.high, self.feasible.to(self.low.dtype).unsqueeze(-1)), -1)

    @staticmethod
    def unpacked(packed: Tensor) -> "SafeBox":
        """The boxes of a `packed` (B, 5) float64 tensor."""
        return SafeBox(packed[:, 0:2], packed[:, 2:4], packed[:, 4] != 0)


def _row_values(A: Tensor, u: Tensor) -> Tensor:
    """a_i . u for every row, elementwise (no BLAS reduction order): A (B, m, 2), u (B, 2) -> (B, m)."""
    return A[..., 0] * u[:, None, 0] + A[..., 1] * u[:, None, 1]


def _chords(A: Tensor, b: Tensor, mask: Tensor, centre: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Per dimension, the interval of u_d with the other coordinate at `centre` (step 2).

    A (B, m, 2), b (B, m), mask (B, m), centre (B, 2), low/high (2,) action bounds -> lo, hi (B, 2).
    """
    los, his = [], []
    for d in (0, 1):
        other = 1 - d
        coef = A[..., d]
        rest = b - A[..., other] * centre[:, None, other]  # coef * u_d <= rest
        bound = rest / torch.where(coef.abs() > _COEF_TOL, coef, torch.ones_like(coef))
        upper = torch.where(mask & (coef > _COEF_TOL), bound, torch.full_like(bound, float("inf"))).amin(-1)
        lower = torch.where(mask & (coef < -_COEF_TOL), bound, torch.full_like(bound, -float("inf"))).amax(-1)
        upper = torch.minimum(upper, high[d].expand_as(upper))
        lower = torch.maximum(lower, low[d].expand_as(lower))
        # the chord contains its centre (a feasible point): guards round-off at a zero-slack row
        los.append(torch.minimum(lower, centre[:, d]))
        his.append(torch.maximum(upper, centre[:, d]))
    return torch.stack(los, -1), torch.stack(his, -1)


def _shrink(A: Tensor, b: Tensor, mask: Tensor, centre: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Shrink [lo, hi] toward `centre` until every corner satisfies every row (step 3)."""
    slack = (b - _row_values(A, centre)).clamp(min=0.0)  # centre feasible up to round-off
    reach = (torch.maximum(A * (hi - centre)[:, None, :], A * (lo - centre)[:, None, :])).sum(-1)
    binding = mask & (reach > 0)
    ratio = torch.where(binding, slack / torch.where(binding, reach, torch.ones_like(reach)), torch.ones_like(reach))
    t = ratio.amin(-1).clamp(0.0, 1.0).unsqueeze(-1)
    return centre + t * (lo - centre), centre + t * (hi - centre)


def safe_box(
    A: Tensor, b: Tensor, mask: Tensor, action_low: Sequence[float], action_high: Sequence[float], rounds: int = 3,
    implementation: str = "compiled",
) -> SafeBox:
    """A box inside ``{u : A u <= b (rows where mask)} ∩ [action_low, action_high]`` (module docstring).

    A (B, m, 2), b (B, m), mask (B, m) bool: the CBF rows (`model.cbf.CBFRows`, bound rows included
    or not); action_low, action_high: (2,) physical bounds. rounds >= 1 chord-and-shrink passes.
    implementation: "compiled" (on the CPU: NumPy arrays into the compiled QP and box loops, unless
    a test forces a QP route; elsewhere the torch code) or "torch" (batched tensor ops, solve_qp).
    Computed in float64 on the inputs' device; returns SafeBox(low (B, 2), high (B, 2), feasible (B,)).
    """
    if rounds < 1:
        raise ValueError(f"safe_box rounds={rounds}; accepted: >= 1")
    if implementation not in ("compiled", "torch"):
        raise ValueError(f"safe_box implementation={implementation!r}; accepted: 'compiled' or 'torch'")
    # a route forced by a test (`model.qp.routing`) reaches the centres' QPs through solve_qp
    if implementation == "compiled" and b.device.type == "cpu" and routing.FORCED_ROUTE is None:
        return _safe_box_arrays(A, b, mask, action_low, action_high, rounds)
    f64 = dict(dtype=torch.float64, device=b.device)
    A, b = A.to(torch.float64), b.to(torch.float64)
    mask = mask.to(torch.bool)
    low, high = torch.tensor(list(action_low), **f64), torch.tensor(list(action_high), **f64)
    batch = b.shape[0]
    # The action bounds as rows too, so the centre's QP respects them.
    bound_A = torch.tensor(BOUND_ROWS, **f64).expand(batch, 4, 2)
    bound_b = torch.stack((high[0], -low[0], high[1], -low[1])).expand(batch, 4)
    A_all = torch.cat((A, bound_A), 1)
    b_all = torch.cat((b, bound_b), 1)
    mask_all = torch.cat((mask, torch.ones(batch, 4, dtype=torch.bool, device=b.device)), 1)

    # Offset 0 first: it decides feasibility, and where its box is the whole action box (most states
    # away from obstacles and walls) no other offset can do better, so only the rest solve the
    # other offsets' QPs (the same boxes as solving all: step 4 keeps the first largest).
    centres, rung_feasible = _centres(A_all, b_all, mask_all, CENTRE_DELTAS[:1], low, high)
    feasible = rung_feasible[0]
    best_lo, best_hi = _boxes_torch(A_all, b_all, mask_all, centres, rung_feasible, low, high, rounds)
    whole = ((best_hi - best_lo) == (high - low)).all(-1)
    rest = torch.nonzero(feasible & ~whole).flatten()
    if rest.numel():
        A_r, b_r, mask_r = A_all[rest], b_all[rest], mask_all[rest]
        more, more_feasible = _centres(A_r, b_r, mask_r, CENTRE_DELTAS[1:], low, high)
        lo_r, hi_r = _boxes_torch(A_r, b_r, mask_r, torch.cat((centres[:, rest], more)),
                                  torch.cat((rung_feasible[:, rest], more_feasible)), low, high, rounds)
        best_lo[rest], best_hi[rest] = lo_r, hi_r
    # Infeasible: a point box at the QP's minimum-violation fallback (of C(x) itself).
    point = centres[0]
    keep = feasible.unsqueeze(-1)
    return SafeBox(torch.where(keep, best_lo, point), torch.where(keep, best_hi, point), feasible)


def _safe_box_arrays(A: Tensor, b: Tensor, mask: Tensor, action_low: Sequence[float], action_high: Sequence[float],
                     rounds: int) -> SafeBox:
    """`safe_box` on the CPU through `safe_box_arrays`, tensors in and out."""
    low, high, feasible = safe_box_arrays(A.detach().to(torch.float64).numpy(), b.detach().to(torch.float64).numpy(),
                                          mask.to(torch.bool).numpy(), action_low, action_high, rounds)
    return SafeBox(torch.from_numpy(low), torch.from_numpy(high), torch.from_numpy(feasible))


def safe_box_arrays(A_np: np.ndarray, b_np: np.ndarray, mask_np: np.ndarray, action_low: Sequence[float],
                    action_high: Sequence[float], rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`safe_box` on the CPU as NumPy arrays and compiled loops: the same steps, the same arithmetic
    per element, equal to the torch code bit for bit (tested). The centres' QPs go straight to the
    exact solver's compiled loop (`model.qp.cpu_n2.solve_arrays`), steps 2-4 to `_boxes_kernel`:
    the torch code's few hundred small tensor ops per call cost more than the QPs themselves.
    A_np (B, m, 2), b_np (B, m) float64, mask_np (B, m) bool; returns low, high (B, 2) float64 and
    feasible (B,) bool (the CBF-Beta rollout's NumPy forward calls it without tensors)."""
    box = _BoxConstants.of(action_low, action_high)
    low, high = box.low, box.high
    batch, m = b_np.shape
    # C(x)'s rows, then the four action-bound rows (slices assigned: no broadcast views to build)
    A_all, b_all, mask_all = np.empty((batch, m + 4, 2)), np.empty((batch, m + 4)), np.empty((batch, m + 4), np.bool_)
    A_all[:, :m], A_all[:, m:] = A_np, box.bound_A
    b_all[:, :m], b_all[:, m:] = b_np, box.bound_b
    mask_all[:, :m], mask_all[:, m:] = mask_np, True

    def boxes(A_, b_, mask_, centres, rung_feasible):
        lo, hi = np.empty((b_.shape[0], 2)), np.empty((b_.shape[0], 2))
        _boxes_kernel(A_, b_, mask_, centres, rung_feasible, low, high, int(rounds), _COEF_TOL, lo, hi)
        return lo, hi

    centres, rung_feasible = _centres_arrays(A_all, b_all, mask_all, box, box.deltas[:1], True)
    feasible = rung_feasible[0]
    best_lo, best_hi = boxes(A_all, b_all, mask_all, centres, rung_feasible)
    whole = ((best_hi - best_lo) == box.width).all(-1)
    rest = np.flatnonzero(feasible & ~whole)
    if rest.size:
        A_r, b_r, mask_r = A_all[rest], b_all[rest], mask_all[rest]
        # an infeasible offset > 0 is only skipped (its point is never read): proven ones skip the full rule
        more, more_feasible = _centres_arrays(A_r, b_r, mask_r, box, box.deltas[1:], False)
        best_lo[rest], best_hi[rest] = boxes(A_r, b_r, mask_r, np.concatenate((centres[:, rest], more)),
                                             np.concatenate((rung_feasible[:, rest], more_feasible)))
    point = centres[0]
    keep = feasible[:, None]
    return np.where(keep, best_lo, point), np.where(keep, best_hi, point), feasible


class _BoxConstants:
    """What `safe_box_arrays` derives from the action box alone, made once per box (a rollout step
    calls it with the same one each time): the bounds (2,), the bound rows and their right sides,
    the centre QPs' weights H = diag(1 / half^2) and linear term f = -H middle (one C-contiguous
    row per problem, grown as batches need; the compiled loop only reads them), the offsets and
    what `_empty_beyond_round_off` needs. The same numbers as computing them per call."""

    _made: dict = {}

    def __init__(self, action_low: tuple[float, ...], action_high: tuple[float, ...]):
        self.low, self.high = np.array(action_low, np.float64), np.array(action_high, np.float64)
        low, high = self.low, self.high
        self.width = high - low
        self.bound_A = np.array(BOUND_ROWS, np.float64)
        self.bound_b = np.array([high[0], -low[0], high[1], -low[1]])
        self.half, self.middle = (high - low) / 2, (high + low) / 2
        self.weights = 1.0 / (self.half * self.half)
        self.deltas = np.array(CENTRE_DELTAS, np.float64)
        # |u0| of the full rule's tolerance (the unconstrained optimum is the box centre); every u
        # with |u|_inf > reach violates a bound row by more than 1
        self.u0_norm = float(np.hypot(*self.middle))
        self.reach = float(np.abs(np.concatenate((low, high))).max()) + 1.0
        self._H, self._f = np.empty((0, 2, 2)), np.empty((0, 2))

    @classmethod
    def of(cls, action_low: Sequence[float], action_high: Sequence[float]) -> "_BoxConstants":
        key = (tuple(float(x) for x in action_low), tuple(float(x) for x in action_high))
        made = cls._made.get(key)
        if made is None:
            made = cls._made[key] = cls(*key)
        return made

    def qp_terms(self, problems: int) -> tuple[np.ndarray, np.ndarray]:
        """H (problems, 2, 2), f (problems, 2): C-contiguous views of the kept rows."""
        if self._H.shape[0] < problems:
            self._H = np.ascontiguousarray(np.broadcast_to(np.diag(self.weights), (problems, 2, 2)))
            self._f = np.ascontiguousarray(np.broadcast_to(-self.weights * self.middle, (problems, 2)))
        return self._H[:problems], self._f[:problems]


def _centres_arrays(A: np.ndarray, b: np.ndarray, mask: np.ndarray, box: _BoxConstants, deltas: np.ndarray,
                    infeasible_points: bool) -> tuple[np.ndarray, np.ndarray]:
    """`_centres` on NumPy arrays (the same arithmetic): centres (R, B, 2), feasible (R, B) for the
    offsets `deltas` (R,). infeasible_points False: an element proven infeasible
    (`_empty_beyond_round_off`) gets a NaN centre instead of the full rule's fallback point (the
    flag is the full rule's, bit for bit)."""
    batch, rungs = b.shape[0], deltas.shape[0]
    b_rungs = np.empty((rungs * batch, b.shape[1]))
    _pushed_right_sides(A, b, box.half, deltas, b_rungs)
    H, f = box.qp_terms(rungs * batch)
    A_rungs = np.concatenate([A] * rungs) if rungs > 1 else A
    mask_rungs = np.concatenate([mask] * rungs) if rungs > 1 else mask
    proven_infeasible = None
    if not infeasible_points:
        def proven_infeasible(rest: np.ndarray) -> np.ndarray:
            out = np.empty(rest.size, np.bool_)
            _empty_beyond_round_off(A_rungs[rest], b_rungs[rest], mask_rungs[rest], FEAS_TOL[torch.float64],
                                    box.u0_norm, box.reach, _EMPTY_MARGIN, out)
            return out

    u, *_, feasible, _ = solve_arrays(H, f, A_rungs, b_rungs, mask_rungs, None, torch.float64, proven_infeasible)
    centre = np.maximum(np.minimum(u, box.high), box.low)
    return centre.reshape(rungs, batch, 2), feasible.reshape(rungs, batch)


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover (numba)
    """numba: a b + c with one rounding (LLVM's llvm.fma.f64: the CPU's FMA instruction where the
    target has one, an exact software fma elsewhere; IEEE-defined either way), for float64."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        double = ir.DoubleType()
        fma = builder.module.declare_intrinsic("llvm.fma", [double], ir.FunctionType(double, [double, double, double]))
        return builder.call(fma, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@njit(cache=True)
def _pushed_right_sides(A, b, half, offsets, out):  # pragma: no cover
    """numba: the centre QPs' right sides with every row pushed inwards by each offset, in z units:
    out[r B + e, k] = b[e, k] - offsets[r] |A[e, k] o half|, for A (B, m, 2), b (B, m), half (2,),
    offsets (R,) float64; out (R B, m). The norm is torch's `norm(dim=-1)` of the (B, m, 2) product
    bit for bit: ATen reduces a pair as sqrt(fma(y, y, x x)), which rounds differently from
    sqrt(x x + y y) in the last bit (tested against torch)."""
    batch, m = b.shape
    for e in range(batch):
        for k in range(m):
            x, y = A[e, k, 0] * half[0], A[e, k, 1] * half[1]
            norm = math.sqrt(_fma(y, y, x * x))
            for r in range(offsets.shape[0]):
                out[r * batch + e, k] = b[e, k] - offsets[r] * norm


@njit(cache=True)
def _empty_beyond_round_off(A, b, mask, feas_tol, u0_norm, reach, margin, out):  # pragma: no cover
    """numba: for each element of a batch of centre QPs, whether its rows leave no point even
    relaxed by the full rule's tolerance and a margin, so that `model.qp.cpu_numpy.full_rule_rows`
    certainly flags it infeasible, whatever its round-off. A (B, m, 2), b (B, m), mask (B, m);
    feas_tol and u0_norm (|H^-1 f|) as the full rule's tolerance uses them; reach: every u with
    |u|_inf > reach violates some row by more than 1 (the action-bound rows do: reach = the largest
    |bound| + 1); margin relative to the rows' size. Writes out (B,) bool.

    The full rule works on unit rows a_i, right sides t_i = b_i / |a_i| + feas_tol (1 + |b_i / |a_i||
    + |u0|), and flags an element feasible only if one of its candidate points has every
    a_i . u - t_i <= 0. For weights lam >= 0 on at most three rows, sum lam = 1 (Farkas; in 2-D
    three rows suffice, Helly), every u with |u|_inf <= reach has
        max_i (a_i . u - t_i) >= sum_i lam_i (a_i . u - t_i) >= -|r|_1 reach - sum_i lam_i t_i =: L,
    r = sum_i lam_i a_i (zero in exact arithmetic). Where L > margin (10 + max |t_i|), every point
    misses a row by more than any round-off of the full rule's computed residuals (a few ulps of
    |u| + |t|): it flags the element infeasible. The weights of three rows are their pairwise
    cross products (c_i a_i + c_j a_j + c_k a_k = 0), used where all share one sign; a pair gets
    (1/2, 1/2). False means "not proven", not "feasible"."""
    batch, m = b.shape
    unit = np.empty((m, 2))
    t = np.empty(m)
    for e in range(batch):
        n = 0
        size = 0.0
        for k in range(m):
            if not mask[e, k]:  # 0'u <= 1 in the full rule: never violated
                continue
            x, y = A[e, k, 0], A[e, k, 1]
            norm = math.sqrt(x * x + y * y)
            if norm == 0.0:  # a zero row is left out: fewer rows can only weaken the proof
                continue
            unit[n, 0], unit[n, 1] = x / norm, y / norm
            bu = b[e, k] / norm
            t[n] = bu + feas_tol * (1.0 + abs(bu) + u0_norm)
            size = max(size, abs(t[n]))
            n += 1
        best = -np.inf
        for i in range(n):
            for j in range(i + 1, n):
                rx, ry = 0.5 * (unit[i, 0] + unit[j, 0]), 0.5 * (unit[i, 1] + unit[j, 1])
                best = max(best, -0.5 * (t[i] + t[j]) - (abs(rx) + abs(ry)) * reach)
                for k in range(j + 1, n):
                    ci = unit[j, 0] * unit[k, 1] - unit[j, 1] * unit[k, 0]
                    cj = unit[k, 0] * unit[i, 1] - unit[k, 1] * unit[i, 0]
                    ck = unit[i, 0] * unit[j, 1] - unit[i, 1] * unit[j, 0]
                    total = ci + cj + ck
                    if total == 0.0:
                        continue
                    li, lj, lk = ci / total, cj / total, ck / total
                    if li < 0.0 or lj < 0.0 or lk < 0.0:
                        continue
                    rx = li * unit[i, 0] + lj * unit[j, 0] + lk * unit[k, 0]
                    ry = li * unit[i, 1] + lj * unit[j, 1] + lk * unit[k, 1]
                    best = max(best, -(li * t[i] + lj * t[j] + lk * t[k]) - (abs(rx) + abs(ry)) * reach)
        out[e] = best > margin * (10.0 + size)


def _centres(A: Tensor, b: Tensor, mask: Tensor, deltas: Sequence[float], low: Tensor, high: Tensor
             ) -> tuple[Tensor, Tensor]:
    """Step 1 for the offsets `deltas` (R,): centres (R, B, 2) (clipped to the action box) and
    feasible (R, B), one QP batch. A (B, m, 2), b (B, m), mask (B, m) include the bound rows."""
    batch, rungs = b.shape[0], len(deltas)
    half, middle = (high - low) / 2, (high + low) / 2
    # The point nearest u_mid of C(x) with every row pushed inwards by delta (normalised units:
    # u = u_mid + half * z): at least delta from every edge, so its chords have length even where
    # the delta = 0 centre sits in a corner of C(x).
    offsets = torch.tensor(list(deltas), dtype=b.dtype, device=b.device)
    row_norm = (A * half).norm(dim=-1)  # |a_i o half|: the row's norm in z units
    b_rungs = (b.unsqueeze(0) - offsets[:, None, None] * row_norm.unsqueeze(0)).reshape(rungs * batch, -1)
    weights = 1.0 / (half * half)
    H = torch.diag(weights).expand(rungs * batch, 2, 2)
    f = (-weights * middle).expand(rungs * batch, 2)
    solution = solve_qp(H, f, A.repeat(rungs, 1, 1), b_rungs, backend="exact", mask=mask.repeat(rungs, 1))
    centre = torch.maximum(torch.minimum(solution.u.detach(), high), low)
    return centre.reshape(rungs, batch, 2), solution.feasible.reshape(rungs, batch)


def _boxes_torch(A: Tensor, b: Tensor, mask: Tensor, centres: Tensor, rung_feasible: Tensor, low: Tensor, high: Tensor,
                 rounds: int) -> tuple[Tensor, Tensor]:
    """Steps 2-4 in torch (the reference the compiled loop is tested against).

    A (B, m, 2), b (B, m), mask (B, m): C(x) with the bound rows; centres (R, B, 2) and
    rung_feasible (R, B) of the R offsets. Returns the chosen box's lo, hi (B, 2)."""
    rungs, batch = rung_feasible.shape
    A_r, b_r, mask_r = A.repeat(rungs, 1, 1), b.repeat(rungs, 1), mask.repeat(rungs, 1)
    centre = centres.reshape(rungs * batch, 2)
    feasible = rung_feasible.reshape(-1)
    best_lo, best_hi = centre.clone(), centre.clone()
    best_area = torch.full((rungs * batch,), -1.0, dtype=b.dtype, device=b.device)
    for _ in range(rounds):
        lo, hi = _chords(A_r, b_r, mask_r, centre, low, high)
        lo, hi = _shrink(A_r, b_r, mask_r, centre, lo, hi)
        area = torch.where(feasible, ((hi - lo) / (high - low)).prod(-1), torch.full_like(best_area, -1.0))
        better = (area > best_area).unsqueeze(-1)
        best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        best_area = torch.maximum(area, best_area)
        centre = (lo + hi) / 2
    # the largest box over the offsets (ties: the lowest delta)
    pick = best_area.reshape(rungs, batch).argmax(0)  # argmax returns the first maximum
    rows_of = pick * batch + torch.arange(batch, device=b.device)
    return best_lo[rows_of], best_hi[rows_of]


@njit(cache=True)
def _boxes_kernel(A, b, mask, centres, rung_feasible, low, high, rounds, coef_tol, lo_out, hi_out):  # pragma: no cover
    """numba: `_boxes_torch` element by element. A (B, m, 2), b (B, m), mask (B, m), centres (R, B, 2),
    rung_feasible (R, B), low/high (2,); writes lo_out, hi_out (B, 2)."""
    rungs, batch, m = centres.shape[0], b.shape[0], b.shape[1]
    range_v, range_w = high[0] - low[0], high[1] - low[1]
    for n in range(batch):
        best_area = -1.0
        best_l0, best_l1 = centres[0, n, 0], centres[0, n, 1]
        best_h0, best_h1 = best_l0, best_l1
        for r in range(rungs):
            if not rung_feasible[r, n]:
                continue
            cv, cw = centres[r, n, 0], centres[r, n, 1]
            for _ in range(rounds):
                # step 2: chords through (cv, cw)
                lo0, hi0, lo1, hi1 = low[0], high[0], low[1], high[1]
                for i in range(m):
                    if not mask[n, i]:
                        continue
                    av, aw, bi = A[n, i, 0], A[n, i, 1], b[n, i]
                    rest = bi - aw * cw
                    if av > coef_tol:
                        hi0 = min(hi0, rest / av)
                    elif av < -coef_tol:
                        lo0 = max(lo0, rest / av)
                    rest = bi - av * cv
                    if aw > coef_tol:
                        hi1 = min(hi1, rest / aw)
                    elif aw < -coef_tol:
                        lo1 = max(lo1, rest / aw)
                lo0, hi0, lo1, hi1 = min(lo0, cv), max(hi0, cv), min(lo1, cw), max(hi1, cw)
                # step 3: shrink toward the centre until every corner satisfies every row
                t = 1.0
                for i in range(m):
                    if not mask[n, i]:
                        continue
                    av, aw = A[n, i, 0], A[n, i, 1]
                    slack = max(b[n, i] - (av * cv + aw * cw), 0.0)
                    reach = max(av * (hi0 - cv), av * (lo0 - cv)) + max(aw * (hi1 - cw), aw * (lo1 - cw))
                    if reach > 0.0:
                        t = min(t, slack / reach)
                t = min(max(t, 0.0), 1.0)
                l0, h0 = cv + t * (lo0 - cv), cv + t * (hi0 - cv)
                l1, h1 = cw + t * (lo1 - cw), cw + t * (hi1 - cw)
                area = ((h0 - l0) / range_v) * ((h1 - l1) / range_w)
                if area > best_area:  # step 4: the first largest over (offset, pass)
                    best_area, best_l0, best_h0, best_l1, best_h1 = area, l0, h0, l1, h1
                cv, cw = (l0 + h0) / 2, (l1 + h1) / 2
        lo_out[n, 0], lo_out[n, 1] = best_l0, best_l1
        hi_out[n, 0], hi_out[n, 1] = best_h0, best_h1


def softplus(raw: Tensor) -> Tensor:
    """torch's softplus (beta 1, threshold 20: raw itself above 20), any shape, from ops that never
    reach the system's C math library: `nn.functional.softplus`'s CPU kernel hands strided inputs
    (the concentrations' column slices) and vector tails to libm's log1pf, which glibc 2.41 rounds
    differently from 2.36 (CBF-Beta's evaluated actions moved: tests/test_numerics.py), while
    torch.exp and torch.log1p run MKL's VML (pinned by MKL_CBWR) or SLEEF on every element."""
    return torch.where(raw > 20, raw, torch.log1p(torch.exp(torch.clamp(raw, max=20))))


def beta_log_prob(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """Elementwise log Beta(x; alpha, beta) density on (0, 1); all (..., 2) -> (..., 2)."""
    return ((alpha - 1) * torch.log(x) + (beta - 1) * torch.log1p(-x)
            - (torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)))


class CBFBetaActor(Actor):
    """CBF-Beta policy: MLP -> Beta concentrations per action dimension -> action in the safe box.

    - concentrations (B, 2) each: ``alpha = 1 + softplus(raw)``, ``beta = 1 + softplus(raw')``
      (both > 1: a unimodal Beta, zero density at the box edges; Chou et al. 2017); the head is
      initialised with gain 0.01, so alpha = beta ~ 1.69 at first (std ~ 0.24 of the box width).
    - the box: `safe_box` of the state's CBF rows at ``cbf.filter_gamma`` in ``cbf.form``
      (module docstring).
    - ``forward``: x ~ Beta (or its mean ``alpha / (alpha + beta)`` when ``deterministic``: the mean,
      not the mode, is the deterministic action), clamped to [SAMPLE_EPS, 1 - SAMPLE_EPS];
      executed action = low + x * width (the fallback point on infeasible states); sample = x;
      log_prob (B,) = Beta log-density of x minus the log-widths (0 on infeasible states).
    - ``evaluate_actions(obs, safety, sample, cbf_geometry=None)``: log_prob of the stored x under
      the current concentrations and the box of `cbf_geometry` (this actor's `cbf_geometry(safety)`,
      indexed; recomputed from `safety` when None); entropy (B,) of the Beta in the box's unit
      coordinates (the log-width term is constant in the parameters).

    info (B rows): ``proposal`` (B, 2) what the policy alone would execute: the same x on the whole
    action box; ``nominal`` (= proposal); ``correction`` = |(executed - proposal) / (v_max, w_max)| (what the safe
    box changed); ``intervened`` = correction > cbf.intervention_tol; ``infeasible`` (B,);
    ``gamma`` (B, M) the fixed filter gamma; ``lookahead_h`` (B, M) the rows' barrier values on the
    look-ahead point (not the env's body barrier ``info["h"]``); ``box_low``, ``box_high`` (B, 2)
    the safe box; ``safe_box`` (B, 5) float64 the same box, `SafeBox.packed` (the rollout keeps it
    for the update: `rollout_record`).

    Rollout curves: SAFETY_LAYER_METRICS, and ``box_width_v``, ``box_width_w``: the mean safe-box
    width per step as a fraction of the action range, from each step's own box.
    """

    def __init__(
        self, obs_dim: int, env_params: "EnvParams", cbf_params: "CBFParams", hidden_sizes: Sequence[int] = (64, 64),
        box_rounds: int = 3,
    ):
        super().__init__()
        self.env_params, self.cbf_params = env_params, cbf_params
        self.num_obstacles = env_params.num_obstacles
        self.box_rounds = box_rounds
        # dcbf_exact re-solves on the exact step and has no fixed linear rows: use its first-order rows
        self.box_form = "dcbf" if cbf_params.form == "dcbf_exact" else cbf_params.form
        self.gamma = float(cbf_params.filter_gamma)
        self.backbone = mlp_backbone(obs_dim, hidden_sizes)
        feature_dim = hidden_sizes[-1] if hidden_sizes else obs_dim
        self.concentration_head = _layer_init(nn.Linear(feature_dim, 4), 0.01)
        low, high = _bounds(env_params)
        self.action_low, self.action_high = low, high
        self.register_buffer("low", torch.tensor(low), persistent=False)
        self.register_buffer("high", torch.tensor(high), persistent=False)
        self.rollout_metric_names = SAFETY_LAYER_METRICS + ("box_width_v", "box_width_w")

    # -- pieces --------------------------------------------------------------------------------
    def concentrations(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, obs_dim) -> alpha (B, 2), beta (B, 2), both > 1."""
        raw = self.concentration_head(self.backbone(obs)).to(_safe_dtype(obs))
        return 1.0 + softplus(raw[:, :2]), 1.0 + softplus(raw[:, 2:])

    def rows(self, safety: "SafetyState"):
        """The CBF rows the box is built from (float64, CPU)."""
        cpu = torch.empty(0, dtype=torch.float64)
        return cbf_rows(_safety_like(safety, cpu), self.env_params, self.cbf_params, self.gamma, form=self.box_form)

    def rows_arrays(self, safety: "SafetyState") -> tuple[np.ndarray, ...]:
        """`rows` as `model.cbf.cbf_rows_arrays` gives them, without the tensors: A (B, m, 2), b (B, m),
        mask (B, m), h (B, M) (absent obstacles: finite placeholders), barrier_mask (B, M), float64."""
        cpu = torch.empty(0, dtype=torch.float64)
        return cbf_rows_arrays(_safety_like(safety, cpu), self.env_params, self.cbf_params, self.gamma, self.box_form)

    @staticmethod
    def box_rows(A, b, mask):
        """C(x)'s barrier rows for `safe_box`: A (B, m, 2), b, mask (B, m) of `rows` (tensors) or
        `rows_arrays` (arrays) without their last NUM_BOUND_ROWS rows, views. Those are the action
        box's bound rows (`model.cbf.BOUND_ROWS`, right sides v_max, 0, w_max, w_max: this actor's
        [low, high]), which `safe_box` appends itself; given twice they only lengthen every loop
        of the box (the centre QPs' pair search 91 pairs instead of 45 at two obstacles) and
        leave the same set C(x). The same boxes, bit for bit: a scratch comparison over 1.8 M random
        and near-boundary states, and tests/test_cbf_beta.py over 24,000 in each row form (it also
        checks that the rows left out are the bound rows). 400 -> 270 us per 256-state step."""
        return A[:, :-NUM_BOUND_ROWS], b[:, :-NUM_BOUND_ROWS], mask[:, :-NUM_BOUND_ROWS]

    def cbf_geometry(self, safety: "SafetyState", obs: Tensor | None = None) -> SafeBox:
        """The safe boxes of states (B,), on obs' device (or the CPU): the per-state part of
        `evaluate_actions`, computed once per PPO update (`model.ppo.ppo_update`'s hook) and
        indexed per minibatch (`update_inputs`). Always computed on the CPU in float64: the
        rollout's numbers."""
        if safety is None:
            raise ValueError("CBFBetaActor needs the SafetyState (got None)")
        rows = self.rows(safety)
        box = safe_box(*self.box_rows(rows.A, rows.b, rows.mask), self.action_low, self.action_high, self.box_rounds)
        return box.to(obs.device) if obs is not None else box

    def _log_prob(self, x: Tensor, alpha: Tensor, beta: Tensor, box: SafeBox) -> Tensor:
        dtype = alpha.dtype
        floor = MIN_WIDTH_FRACTION * (self.high - self.low).to(box.low.dtype)
        log_width = torch.log(torch.maximum(box.width, floor)).to(dtype).sum(-1)
        log_prob = beta_log_prob(x.to(dtype), alpha, beta).sum(-1) - log_width
        return torch.where(box.feasible.to(x.device), log_prob, torch.zeros_like(log_prob))

    def _draw(self, alpha: Tensor, beta: Tensor, deterministic: bool) -> Tensor:
        if deterministic:
            x = alpha / (alpha + beta)
        else:
            x = torch.distributions.Beta(alpha, beta, validate_args=False).sample()  # alpha, beta > 1 by construction
        return x.clamp(SAMPLE_EPS, 1.0 - SAMPLE_EPS)

    # -- the actor interface -------------------------------------------------------------------
    def forward(self, obs: Tensor, safety: "SafetyState", deterministic: bool = False) -> ActorOutput:
        if safety is None:
            raise ValueError("CBFBetaActor needs the SafetyState (got None)")
        alpha, beta = self.concentrations(obs)
        with torch.autocast(device_type=alpha.device.type, enabled=False):
            rows = self.rows(safety)
            box = safe_box(*self.box_rows(rows.A, rows.b, rows.mask), self.action_low, self.action_high,
                           self.box_rounds)
            box = box.to(obs.device)
            x = self._draw(alpha, beta, deterministic)
            dtype = alpha.dtype
            executed = (box.low + x.to(torch.float64) * box.width).to(dtype)
            log_prob = self._log_prob(x, alpha, beta, box)
            low, high = self.low.to(dtype), self.high.to(dtype)
            proposal = low + x * (high - low)
        gamma = proposal.new_full((proposal.shape[0], num_barriers(self.num_obstacles)), self.gamma)
        info = {"nominal": proposal, "proposal": proposal, "infeasible": ~box.feasible, "gamma": gamma,
                "lookahead_h": rows.h.to(device=obs.device, dtype=dtype), "box_low": box.low.to(dtype),
                "box_high": box.high.to(dtype), "safe_box": box.packed()}
        info.update(_intervention_info(proposal, executed, self.cbf_params.intervention_tol, self.high))
        return ActorOutput(executed, x, log_prob, info)

    def forward_unconstrained(self, obs: Tensor, deterministic: bool = False) -> ActorOutput:
        """The same Beta over the whole action box (no safety): the deployment arm's proposal.

        action (B, 2) = low + x (high - low); sample x; log_prob with the action box's Jacobian; info {}."""
        alpha, beta = self.concentrations(obs)
        with torch.autocast(device_type=alpha.device.type, enabled=False):
            x = self._draw(alpha, beta, deterministic)
            low, high = self.low.to(alpha.dtype), self.high.to(alpha.dtype)
            action = low + x * (high - low)
            log_prob = beta_log_prob(x, alpha, beta).sum(-1) - torch.log(high - low).sum()
        return ActorOutput(action, x, log_prob, {})

    def evaluate_actions(
        self, obs: Tensor, safety: "SafetyState | None", sample: Tensor, qp_hint: Tensor | None = None,
        cbf_geometry: SafeBox | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Score the STORED x (B, 2) under the current policy: (log_prob (B,), entropy (B,)).
        qp_hint is accepted and ignored (no QP on the action)."""
        alpha, beta = self.concentrations(obs)
        box = cbf_geometry if cbf_geometry is not None else self.cbf_geometry(safety, obs)
        with torch.autocast(device_type=alpha.device.type, enabled=False):
            log_prob = self._log_prob(sample, alpha, beta, box)
            entropy = torch.distributions.Beta(alpha, beta, validate_args=False).entropy().sum(-1)
        return log_prob, entropy

    def update_inputs(self, safety: "SafetyState", obs: Tensor, record: Tensor | None) -> UpdateInputs:
        """The safe boxes of the whole batch, once per update (no QP on the action: no hint):
        the rollout's own (`record`, (B, 5) `SafeBox.packed`) where it kept them, else
        recomputed from the states (the same numbers: a box depends on its state alone)."""
        if record is not None:
            return UpdateInputs(None, None, SafeBox.unpacked(record).to(obs.device))
        return UpdateInputs(None, None, self.cbf_geometry(safety, obs))

    def rollout_record(self, out: ActorOutput) -> Tensor | None:
        """The step's safe boxes, (B, 5) float64 `SafeBox.packed` (the update scores the stored
        sample on them instead of recomputing every box of the batch)."""
        return out.info["safe_box"]

    def rollout_step_sums(self, out: ActorOutput) -> Tensor:
        """SAFETY_LAYER_METRICS, then the sums of this step's box widths (high - low of the boxes
        of this very step, in info) as fractions of the action range, (2,) v and w."""
        full = self.high - self.low  # the action box (2,)
        width = (out.info["box_high"] - out.info["box_low"]) / full.to(out.info["box_low"].dtype)  # (B, 2)
        return _safety_layer_sums(out.info, sums=tuple(width.double().sum(dim=0)))


class UnconstrainedBeta(Actor):
    """A CBFBetaActor's policy over the whole action box (no safe box): what `SafetyFilter`
    wraps for the deployment arm ``cbf_beta_rcbf``. Same forward signature; info {}."""

    def __init__(self, actor: CBFBetaActor):
        super().__init__()
        self.actor = actor

    def forward(self, obs: Tensor, safety: "SafetyState | None" = None, deterministic: bool = False) -> ActorOutput:
        return self.actor.forward_unconstrained(obs, deterministic=deterministic)

    def views(self) -> CBFBetaActor:
        """The CBF-Beta actor this re-reads (filters over two such views stack: `SafetyFilter.stacks_with`)."""
        return self.actor


__all__ = ["SAMPLE_EPS", "SafeBox", "safe_box", "beta_log_prob", "CBFBetaActor", "UnconstrainedBeta"]
