"""The `qp_benchmark` stage: the exact active-set QP solver against qpth on CBF problems, and
the exact discrete-time CBF (model/dcbf_exact.py) against its first-order rows.

Problems
--------
Real safety-layer problems, not synthetic ones: for every obstacle count K in
``qp_benchmark.obstacle_counts`` (``env.num_obstacles`` overridden to K) a `PursuitEvasionCore`
is stepped with uniformly random pursuer actions (the env's own evader policy), and its
`SafetyState` is snapshotted every few steps after a burn-in. Each state gives the CBF rows of
`model.cbf.cbf_rows` at the fixed gamma ``cbf.filter_gamma`` (form ``cbf.form``), and a random
reference action u_ref (drawn a quarter beyond the action bounds on each side, so the bound rows
are active too) gives the cost ``H = diag(cbf.action_weights)``, ``f = -H u_ref``. A batch of size
B is the first B problems of the pool, so smaller batches are prefixes of larger ones. The pool
is built once in float64 on the CPU and cast/moved for each (device, dtype) cell.

The dcbf_exact section uses the same pools: the pool keeps its `SafetyState` (``CBFProblems.safety``),
and each state's u_ref is the proposal projected at gamma ``cbf.filter_gamma`` by two methods,
both on the exact QP backend: ``dcbf_first_order``, one `solve_qp` on the first-order ``dcbf`` rows
of `model.cbf.cbf_rows` (building the rows included in its time), and ``dcbf_exact``,
`exact_dcbf_action` (re-linearised QPs until ``h(q+) >= (1 - gamma) h(q)`` holds on the exact arc
step, at most ``cbf.exact_max_iters``, then a line search toward the stop action). It is not one
QP, hence its own section and file.

Timing
------
For each (device, dtype, K, batch size, pass) cell, the exact solver and qpth are timed side by
side on the same tensors, interleaved call by call (their order alternating), so machine noise
hits both: ``qp_benchmark.warmup`` untimed calls each, then up to ``qp_benchmark.repeats`` timed
calls each; the median is reported. Before any timing, each backend is called once per device
(untimed) so that one-time costs (imports, CUDA context, caches) never enter a median. Pass
"forward" runs under ``torch.no_grad()``; "forward+backward" solves with H, f, A, b requiring
grad and runs ``u.sum().backward()``. CUDA is synchronised around every timed call. A cell stops
repeating early once it has spent ``CELL_BUDGET_S`` seconds (at least one timed call each; the
``repeats`` column says how many ran), which keeps large batches affordable. qpth is skipped above
``qp_benchmark.qpth_max_batch``.
The dcbf_exact section times its two methods the same way (interleaved, same warm-up, repeats
and ``CELL_BUDGET_S``, primed once per device), for every device, dtype, obstacle count, batch
size and pass; its backward pass differentiates through u_ref (a leaf requiring grad) and runs
``u.sum().backward()``. Its cells run after the QP cells of each obstacle count, so those time as
before.
qpth's time is that of ``solve_qp(..., backend="qpth")`` as the project uses it: qpth plus its
KKT acceptance check and the exact re-solve of the answers that check rejects. Torch runs on
``BENCH_THREADS`` intra-op threads during the stage (restored afterwards).

Accuracy (deterministic)
------------------------
Every problem is also solved one by one, in float64 on the CPU, by an independent solver
(quadprog's dual active-set method, real rows only); a problem quadprog calls inconsistent is
infeasible. ``max_deviation`` is ``max |u - u_ref|_inf`` over the problems the reference solves;
``solved_fraction`` the share of the batch with ``feasible`` True and a finite u;
``solver_ok_fraction`` the share the backend answered itself (qpth: answers that passed the KKT
check; the rest were re-solved by the exact solver). Without quadprog, each backend is checked
against the other (float64, CPU) and the ``reference`` column says so.

dcbf_exact section (`dcbf_step_counts`): each method's action (clipped to the action box, as the
env clips it) is stepped on the env's exact arc step (`model.dcbf_exact.next_lookahead_point`) in
float64 from the states as the method saw them, and the barriers recomputed there. Per (method,
device, dtype, obstacles, batch) it counts ``decay_violations_feasible`` (flagged feasible yet some
``h(q+) < (1 - gamma) h(q) - tol``, tol as dcbf_exact documents it: 1e-9 in float64, 1e-6 x the
size of h's terms in float32), ``next_barrier_negative`` (some ``h(q+) < -tol``), ``infeasible``
(flagged so), ``start_negative`` (some ``h(q) < 0`` already: often no safe action exists),
``line_search`` (dcbf_exact answers from its line search) and ``mean_qp_rounds`` (QPs per element;
1 for the first-order method).

Outputs (atomic writes)::

    results/qp_benchmark/table.csv       one row per (backend, pass, device, dtype, obstacles,
                                         batch_size): TABLE_COLUMNS; speedup_vs_qpth = qpth's
                                         median / exact's on exact rows (empty elsewhere);
                                         cpu_ms: median CPU time of this process per call (on a
                                         loaded machine, less noisy than wall time; on CUDA only
                                         the host's share)
    results/qp_benchmark/metrics.json    deterministic numbers only (no timings): problem counts,
                                         max deviations, solved fractions, devices run / skipped;
                                         key ``dcbf_exact``: the section's counts per method,
                                         device, dtype, obstacles and batch, with gamma, max
                                         iterations and tolerances
    results/qp_benchmark/dcbf_exact.csv  one row per (method, pass, device, dtype, obstacles,
                                         batch_size): DCBF_COLUMNS (median_ms, per_problem_us,
                                         cpu_ms, repeats, the counts above);
                                         cost_vs_first_order = dcbf_exact's median / the
                                         first-order median on dcbf_exact rows (empty elsewhere)
    results/qp_benchmark/speedups.json   the headline speed-ups (exact vs qpth,
                                         forward+backward, CPU, float64, batch 1 and 256); not a
                                         metric: timings differ run to run
    results/qp_benchmark/speed.png       per-problem time vs batch size, log-log, one line per
                                         backend x pass (float64, CPU), one panel per obstacle count
"""

from __future__ import annotations

import io as _stdio
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError
from torch import Tensor

from tasks import io
from tasks.artifacts import QP_BENCHMARK_DIR
from tasks.params import CBFParams, EnvParams, Params

__all__ = [
    "OUT_DIR",
    "TABLE_PATH",
    "METRICS_PATH",
    "SPEEDUPS_PATH",
    "PLOT_PATH",
    "DCBF_EXACT_PATH",
    "TABLE_COLUMNS",
    "DCBF_COLUMNS",
    "DCBF_METHODS",
    "BACKENDS",
    "PASSES",
    "HEADLINE_BATCHES",
    "CBFProblems",
    "build_problems",
    "reference_solutions",
    "quadprog_solve",
    "cbf_benchmark_problems",
    "time_solver",
    "dcbf_step_counts",
    "run",
]

OUT_DIR = Path(QP_BENCHMARK_DIR)
TABLE_PATH = OUT_DIR / "table.csv"
METRICS_PATH = OUT_DIR / "metrics.json"
SPEEDUPS_PATH = OUT_DIR / "speedups.json"
PLOT_PATH = OUT_DIR / "speed.png"
DCBF_EXACT_PATH = OUT_DIR / "dcbf_exact.csv"

BACKENDS = ("exact", "qpth")
PASSES = ("forward", "forward+backward")
TABLE_COLUMNS = (
    "backend", "pass", "device", "dtype", "obstacles", "batch_size", "median_ms", "per_problem_us",
    "max_deviation", "solved_fraction", "speedup_vs_qpth", "solver_ok_fraction", "repeats", "reference",
    "cpu_ms",
)
# The dcbf_exact section: the first-order discrete CBF (one QP) against the exact one (iterated).
DCBF_METHODS = ("dcbf_first_order", "dcbf_exact")
DCBF_COUNTS = (
    "decay_violations_feasible", "next_barrier_negative", "infeasible", "start_negative", "line_search",
    "mean_qp_rounds",
)
DCBF_COLUMNS = (
    "method", "pass", "device", "dtype", "obstacles", "batch_size", "median_ms", "per_problem_us", "cpu_ms",
    "repeats", "cost_vs_first_order", *DCBF_COUNTS,
)
HEADLINE_BATCHES = (1, 256)
# The targets for exact vs qpth, forward+backward, CPU (speed-up at batch size).
TARGETS = {1: 30.0, 256: 20.0}

# Wall-clock budget of one timing cell (both backends together); see the module docstring.
CELL_BUDGET_S = 10.0
# Intra-op threads while timing. One thread: these are tiny ops, and on a shared machine more
# threads than free cores slow both solvers 5-10x (measured on 2 loaded cores: qpth at batch 4
# 0.1 s with 1 thread, 1-2 s with 2). The caller's setting is restored afterwards.
BENCH_THREADS = 1
# State collection: envs stepped side by side, steps before the first snapshot, steps between.
MAX_ENVS = 256
BURN_IN_STEPS = 20
SNAPSHOT_EVERY = 10
PROBLEM_SEED = 0
# u_ref is drawn from the action box widened by this fraction of its width on each side.
REFERENCE_ACTION_OVERSHOOT = 0.25
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class CBFProblems(NamedTuple):
    """A pool of CBF-QPs ``min 1/2 u'Hu + f'u s.t. A u <= b`` (rows where mask) from env states.

    H (P, 2, 2), f (P, 2), A (P, m, 2), b (P, m), mask (P, m) bool, u_ref (P, 2), h (P, K + 4);
    float64, CPU; m = K + 8. safety: the env states the rows come from (`env.core.SafetyState`:
    pursuer (P, 3), obstacle_centres (P, K, 2), obstacle_radii (P, K), obstacle_mask (P, K)),
    for the dcbf_exact section, which re-linearises at each proposal instead of using fixed rows.
    """

    H: Tensor
    f: Tensor
    A: Tensor
    b: Tensor
    mask: Tensor
    u_ref: Tensor
    h: Tensor
    safety: Any = None

    def head(self, count: int, device: str = "cpu", dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
        """(H, f, A, b, mask) of the first `count` problems on `device` in `dtype`."""
        floats = (x[:count].to(device=device, dtype=dtype) for x in (self.H, self.f, self.A, self.b))
        return (*floats, self.mask[:count].to(device))

    def safety_head(self, count: int, device: str = "cpu", dtype: torch.dtype = torch.float64):
        """The SafetyState of the first `count` problems on `device`, floats in `dtype`."""
        return type(self.safety)(*(
            x[:count].to(device=device, dtype=dtype) if x.is_floating_point() else x[:count].to(device)
            for x in self.safety
        ))


# ----------------------------------------------------------------------------------------------
# synthetic CBF-shaped problems and a one-backend timer (benchmarks/qp_speed.py,
# benchmarks/gpu_throughput.py and the solver's tests; the stage itself uses env states)


def cbf_benchmark_problems(batch: int, num_obstacles: int = 2, dtype=torch.float64, device="cpu", seed: int = 0,
                           v_max: float = 1.0, w_max: float = 2.84, arena_size: float = 20.0,
                           lookahead: float = 0.2, dt: float = 0.05, gamma: float = 0.2) -> tuple[Tensor, ...]:
    """Random CBF-structured QPs shaped like the unicycle safety layer (n = 2, u = (v, w)).

    All problems are feasible (u = 0 satisfies every row), as for a safe state.
    Rows: 4 control bounds (0 <= v <= v_max, |w| <= w_max), 4 walls and `num_obstacles` circles,
    each a discrete-time CBF row on the look-ahead point p_l = p + l (cos t, sin t) linearised:
    -dt grad h(p_l)' J u <= gamma h, J = R(t) diag(1, l). Obstacles are masked out at random
    (about one in four) to exercise masks. Cost: weights (1, 0.1), nominal action u_nom drawn
    partly outside the bounds: H = diag(w), f = -H u_nom.
    Returns H (B,2,2), f (B,2), A (B,m,2), b (B,m), mask (B,m) with m = 8 + num_obstacles.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    half = arena_size / 2
    pos = (rand(batch, 2) * 2 - 1) * (half - 0.5)
    theta = (rand(batch) * 2 - 1) * math.pi
    look = pos + lookahead * torch.stack([theta.cos(), theta.sin()], -1)
    # J maps (v, w) to the look-ahead point's velocity
    J = torch.stack([torch.stack([theta.cos(), -lookahead * theta.sin()], -1),
                     torch.stack([theta.sin(), lookahead * theta.cos()], -1)], -2)  # (B, 2, 2)
    rows, rhs = [], []
    eye = torch.eye(2, dtype=torch.float64)
    for sign, limit in ((1.0, v_max), (-1.0, 0.0)):
        rows.append((sign * eye[0]).expand(batch, 2))
        rhs.append(torch.full((batch,), limit, dtype=torch.float64))
    for sign in (1.0, -1.0):
        rows.append((sign * eye[1]).expand(batch, 2))
        rhs.append(torch.full((batch,), w_max, dtype=torch.float64))
    margin = half - 0.25
    for axis in (0, 1):
        for sign in (1.0, -1.0):  # h = margin - sign * p_l[axis] >= 0
            h = margin - sign * look[:, axis]
            grad = torch.zeros(batch, 2, dtype=torch.float64)
            grad[:, axis] = -sign
            rows.append(-dt * (grad[:, None, :] @ J)[:, 0])
            rhs.append(gamma * h)
    obstacle_mask = []
    for _ in range(num_obstacles):
        # radius 0.3..1.0 (+ body and margin), the look-ahead point 0.05..2.55 m outside it:
        # h > 0, so u = 0 satisfies every row and the problem is feasible
        direction = (rand(batch) * 2 - 1) * math.pi
        radius = 0.3 + 0.7 * rand(batch) + 0.25
        dist = radius + 0.05 + 2.5 * rand(batch)
        centre = look + dist[:, None] * torch.stack([direction.cos(), direction.sin()], -1)
        diff = look - centre
        h = diff.norm(dim=-1) - radius
        grad = diff / diff.norm(dim=-1, keepdim=True)
        rows.append(-dt * (grad[:, None, :] @ J)[:, 0])
        rhs.append(gamma * h)
        obstacle_mask.append(rand(batch) > 0.25)
    A = torch.stack(rows, 1)
    b = torch.stack(rhs, 1)
    mask = torch.cat([torch.ones(batch, 8, dtype=torch.bool)] + [om[:, None] for om in obstacle_mask], 1)
    weights = torch.tensor([1.0, 0.1], dtype=torch.float64)
    H = torch.diag_embed(weights.expand(batch, 2)).clone()
    u_nom = torch.stack([rand(batch) * 1.6 * v_max - 0.3 * v_max, (rand(batch) * 2 - 1) * 1.3 * w_max], -1)
    f = -(H @ u_nom[..., None])[..., 0]
    return tuple(x.to(device=device, dtype=dtype) for x in (H, f, A, b)) + (mask.to(device),)


def time_solver(backend: str, H: Tensor, f: Tensor, A: Tensor, b: Tensor, mask: Tensor | None = None,
                backward: bool = False, repeats: int = 20, warmup: int = 3, clock: str = "wall") -> float:
    """Median time (seconds) of one `solve_qp` call (plus `u.sum().backward()` if backward) on
    this batch, after `warmup` untimed calls. clock: "wall" (time.perf_counter) or "cpu" (this
    process's CPU time, time.process_time: steadier on a busy machine, meaningful with one
    torch thread on CPU only). CUDA work is synchronised before each reading."""
    from model.qp import solve_qp

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}; accepted: repeats >= 1, warmup >= 0")
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    if clock not in clocks:
        raise ValueError(f"clock={clock!r}; accepted: {', '.join(map(repr, clocks))}")
    now = clocks[clock]
    cuda = f.device.type == "cuda"
    leaves = [x.detach().clone().requires_grad_(backward) for x in (H, f, A, b)]
    times = []
    for i in range(warmup + repeats):
        for leaf in leaves:
            leaf.grad = None
        if cuda:
            torch.cuda.synchronize(f.device)
        start = now()
        if backward:
            solve_qp(*leaves, backend=backend, mask=mask).u.sum().backward()
        else:
            with torch.no_grad():
                solve_qp(*leaves, backend=backend, mask=mask)
        if cuda:
            torch.cuda.synchronize(f.device)
        if i >= warmup:
            times.append(now() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# problems from real env states


def _env_with_obstacles(env: EnvParams, num_obstacles: int) -> EnvParams:
    try:
        return EnvParams.model_validate({**env.model_dump(), "num_obstacles": num_obstacles})
    except ValidationError as exc:
        raise ValueError(
            f"qp_benchmark.obstacle_counts has {num_obstacles}, which the scenario cannot hold: "
            f"{exc.errors()[0]['msg']}; accepted: counts env.num_obstacles accepts (0..8, placeable in the arena)"
        ) from None


def build_problems(env: EnvParams, cbf: CBFParams, num_obstacles: int, count: int,
                   seed: int = PROBLEM_SEED) -> CBFProblems:
    """`count` CBF-QPs from states of a randomly driven env with `num_obstacles` obstacles.

    Deterministic in (env, cbf, num_obstacles, count, seed). See the module docstring.
    """
    from env.core import PursuitEvasionCore
    from model.cbf import cbf_rows

    if count < 1:
        raise ValueError(f"count={count}; accepted: >= 1 problems")
    env_k = _env_with_obstacles(env, num_obstacles)
    num_envs = min(count, MAX_ENVS)
    snapshots = math.ceil(count / num_envs)
    core = PursuitEvasionCore(env_k, num_envs=num_envs, dtype=torch.float64)
    core.seed([seed * 1_000_003 + i for i in range(num_envs)])
    core.reset()
    generator = torch.Generator().manual_seed(seed)
    v_max, w_max = env_k.pursuer_v_max, env_k.pursuer_w_max
    low = torch.tensor([0.0, -w_max], dtype=torch.float64)
    high = torch.tensor([v_max, w_max], dtype=torch.float64)

    def uniform(rows: int, lo: Tensor, hi: Tensor) -> Tensor:
        return lo + (hi - lo) * torch.rand(rows, 2, generator=generator, dtype=torch.float64)

    states = []
    for step in range(BURN_IN_STEPS + SNAPSHOT_EVERY * (snapshots - 1) + 1):
        if step >= BURN_IN_STEPS and (step - BURN_IN_STEPS) % SNAPSHOT_EVERY == 0:
            states.append([x.clone() for x in core.safety_state()])
        if len(states) == snapshots:
            break
        core.step(uniform(num_envs, low, high))
    safety = type(core.safety_state())(*(torch.cat(parts)[:count] for parts in zip(*states)))

    rows = cbf_rows(safety, env_k, cbf, cbf.filter_gamma)
    widen = REFERENCE_ACTION_OVERSHOOT * (high - low)
    u_ref = uniform(count, low - widen, high + widen)
    weights = torch.tensor(cbf.action_weights, dtype=torch.float64)
    H = torch.diag_embed(weights.expand(count, 2)).contiguous()
    f = -(H @ u_ref[..., None])[..., 0]
    return CBFProblems(H, f, rows.A.contiguous(), rows.b.contiguous(), rows.mask.contiguous(), u_ref, rows.h,
                       safety)


# ----------------------------------------------------------------------------------------------
# the independent reference


def quadprog_solve(H: Tensor, f: Tensor, A: Tensor, b: Tensor, mask: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Solve each problem alone with quadprog (float64, real rows only).

    Returns u (P, n) float64 (NaN where infeasible) and feasible (P,) bool. Raises ImportError
    when quadprog is not installed.
    """
    import quadprog

    H, f, A, b = (x.detach().to("cpu", torch.float64).numpy() for x in (H, f, A, b))
    mask = mask.detach().cpu().numpy()
    u = np.full(f.shape, np.nan)
    feasible = np.zeros(f.shape[0], dtype=bool)
    for i in range(f.shape[0]):
        rows = mask[i]
        # quadprog: min 1/2 x'Gx - a'x  s.t.  C'x >= c
        G = np.ascontiguousarray(0.5 * (H[i] + H[i].T))
        C = np.ascontiguousarray(-A[i][rows].T)
        c = np.ascontiguousarray(-b[i][rows])
        try:
            u[i] = quadprog.solve_qp(G, -f[i], C, c, 0)[0]
            feasible[i] = True
        except ValueError as exc:  # "constraints are inconsistent, no solution"
            if "inconsistent" not in str(exc):
                raise
    return u, feasible


def reference_solutions(problems: CBFProblems, qpth_limit: int) -> dict[str, Any]:
    """Reference u for each backend's rows: quadprog, else the other backend (float64, CPU).

    Returns {backend: (name, u (P', 2) numpy, feasible (P',) numpy)}; P' <= P is the number of
    problems the reference covers (the qpth reference stops at `qpth_limit`).
    """
    P = problems.f.shape[0]
    try:
        u, feasible = quadprog_solve(problems.H, problems.f, problems.A, problems.b, problems.mask)
        return {backend: ("quadprog", u, feasible) for backend in BACKENDS}
    except ImportError:
        from model.qp import solve_qp

        refs = {}
        for backend, other, count in (("exact", "qpth", min(P, qpth_limit)), ("qpth", "exact", P)):
            with torch.no_grad():
                sol = solve_qp(*problems.head(count)[:4], backend=other, mask=problems.mask[:count])
            u = sol.u.numpy().copy()
            feasible = sol.feasible.numpy() & np.isfinite(u).all(-1)
            refs[backend] = (other, u, feasible)
        return refs


def _accuracy(u: Tensor, feasible: Tensor, solver_ok: Tensor | None, reference) -> dict[str, Any]:
    _, u_ref, ref_feasible = reference
    u = u.detach().to("cpu", torch.float64).numpy()
    finite = np.isfinite(u).all(-1)
    solved = feasible.detach().cpu().numpy() & finite
    covered = min(len(u), len(u_ref))
    compare = ref_feasible[:covered]
    deviation = np.abs(u[:covered][compare] - u_ref[:covered][compare])
    max_deviation = float(deviation.max()) if deviation.size else math.nan
    if compare.any() and not np.isfinite(deviation).all():
        max_deviation = math.inf
    ok = solved if solver_ok is None else solver_ok.detach().cpu().numpy()
    return {
        "max_deviation": max_deviation,
        "solved_fraction": float(solved.mean()),
        "solver_ok_fraction": float(ok.mean()),
        "compared": int(compare.sum()),
        "problems": len(u),
    }


# ----------------------------------------------------------------------------------------------
# timing


def _solver_call(backend: str, inputs: tuple[Tensor, ...], backward: bool) -> Callable[[], Any]:
    """One timed call: solve (and backpropagate) on fresh leaves, as a closure."""
    from model.qp import solve_qp

    H, f, A, b, mask = inputs
    leaves = [x.detach().clone().requires_grad_(backward) for x in (H, f, A, b)]

    def call():
        if backward:
            for leaf in leaves:
                leaf.grad = None
            solution = solve_qp(*leaves, backend=backend, mask=mask)
            solution.u.sum().backward()
        else:
            with torch.no_grad():
                solution = solve_qp(*leaves, backend=backend, mask=mask)
        return solution

    return call


class CellTiming(NamedTuple):
    wall: dict[str, float]  # median wall-clock seconds per call, per backend
    cpu: dict[str, float]  # median CPU seconds of this process per call, per backend
    rounds: int  # timed calls per backend
    first: dict[str, Any]  # the first solution of each backend


def _time_side_by_side(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int, cuda: bool,
                       budget_s: float = CELL_BUDGET_S) -> CellTiming:
    """Interleave the calls (order alternating), `warmup` untimed rounds, then up to `repeats`
    timed rounds (fewer once `budget_s` is spent; at least one)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, Any] = {}
    started = time.perf_counter()
    rounds = 0
    for round_index in range(warmup + repeats):
        timed = round_index >= warmup
        if timed and rounds >= 1 and time.perf_counter() - started > budget_s:
            break
        if not timed and time.perf_counter() - started > budget_s / 2:
            continue  # skip the rest of the warm-up of a very slow cell
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            if cuda:
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            solution = calls[name]()
            if cuda:
                torch.cuda.synchronize()
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
            first.setdefault(name, solution)
            if timed:
                times[name].append(elapsed)
                cpu_times[name].append(cpu_elapsed)
        rounds += timed
    median = lambda samples: {name: statistics.median(values) for name, values in samples.items()}  # noqa: E731
    return CellTiming(median(times), median(cpu_times), rounds, first)


# ----------------------------------------------------------------------------------------------
# the dcbf_exact section: the exact discrete-time CBF against its first-order rows


class DCBFAnswer(NamedTuple):
    """One method's answer: u (B, 2), feasible (B,) bool, rounds (B,) int64 (QPs solved per element;
    None for the first-order method: one QP), line_search (B,) bool (None for the first-order method)."""

    u: Tensor
    feasible: Tensor
    rounds: Tensor | None
    line_search: Tensor | None


def _dcbf_cbf(cbf: CBFParams) -> CBFParams:
    """cbf with form "dcbf" and the exact QP backend: both methods then solve with the same solver,
    so the cost ratio is that of the iteration, not of a backend."""
    return cbf.model_copy(update={"form": "dcbf", "qp_backend": "exact"})


def _dcbf_call(method: str, safety, u_ref: Tensor, env: EnvParams, cbf: CBFParams, backward: bool
               ) -> Callable[[], DCBFAnswer]:
    """One timed call of `method` on the states `safety` (B states) and proposals u_ref (B, 2), as a
    closure. Both methods start from the SafetyState and u_ref, so the first-order call includes
    building its rows (`cbf_rows`), as the exact call includes its linearisations. Backward:
    u_ref is a leaf requiring grad and the call runs ``u.sum().backward()``."""
    from model.cbf import cbf_rows
    from model.dcbf_exact import exact_dcbf_action
    from model.qp import solve_qp

    leaf = u_ref.detach().clone().requires_grad_(backward)
    weights = u_ref.new_tensor(cbf.action_weights)
    H = torch.diag(weights).expand(u_ref.shape[0], 2, 2)
    gamma = cbf.filter_gamma

    def solve() -> DCBFAnswer:
        if method == "dcbf_first_order":
            rows = cbf_rows(safety, env, cbf, gamma, form="dcbf")
            solution = solve_qp(H, -leaf * weights, rows.A, rows.b, backend="exact", mask=rows.mask)
            return DCBFAnswer(solution.u, solution.feasible, None, None)
        solution = exact_dcbf_action(safety, env, cbf, gamma, leaf)
        return DCBFAnswer(solution.u, solution.feasible, solution.rounds, solution.line_search)

    def call() -> DCBFAnswer:
        if backward:
            leaf.grad = None
            answer = solve()
            answer.u.sum().backward()
            return answer
        with torch.no_grad():
            return solve()

    return call


def dcbf_step_counts(answer: DCBFAnswer, safety, env: EnvParams, cbf: CBFParams) -> dict[str, Any]:
    """Step the true dynamics with the answer's action and count, over the B elements:

    decay_violations_feasible: flagged feasible, yet some barrier has
        ``h(q+) < (1 - gamma) h(q) - tol`` (gamma = cbf.filter_gamma);
    next_barrier_negative: some barrier has ``h(q+) < -tol`` (feasible or not);
    infeasible: flagged infeasible; start_negative: some ``h(q) < 0`` already;
    line_search: answers from dcbf_exact's line search toward the stop action;
    mean_qp_rounds: QPs solved per element (1 for the first-order method).

    safety: the states as the method saw them (its dtype and device). The step is the env's arc
    step (`model.dcbf_exact.next_lookahead_point`, `env.core.unicycle_step`) in float64 on the CPU
    from those states, with the action clipped to the action box as the env clips it. tol is
    dcbf_exact's: 1e-9 (float64 answers) or 1e-6 x the size of the numbers in h (float32).
    """
    from model.cbf import barriers_at, virtual_point
    from model.dcbf_exact import FLOAT32_RTOL, FLOAT64_TOL, _size_of_h, next_lookahead_point

    state = type(safety)(*(x.detach().to("cpu", torch.float64) if x.is_floating_point() else x.detach().cpu()
                           for x in safety))
    u = answer.u.detach().to("cpu", torch.float64)
    low = u.new_tensor([0.0, -env.pursuer_w_max])
    high = u.new_tensor([env.pursuer_v_max, env.pursuer_w_max])
    u = torch.maximum(torch.minimum(u, high), low)
    d, gamma = cbf.lookahead, cbf.filter_gamma
    h_now, _, present = barriers_at(virtual_point(state.pursuer, d), state, env, d)
    q_next = next_lookahead_point(state.pursuer, u, d, env.dt)
    h_next, _, _ = barriers_at(q_next, state, env, d)
    if answer.u.dtype == torch.float64:
        tol: Tensor | float = FLOAT64_TOL
    else:  # the same relative rule as dcbf_exact's feasible flag
        tol = FLOAT32_RTOL * _size_of_h(q_next, state, env, d, 0.0)
    decay_bad = ((h_next < (1.0 - gamma) * h_now - tol) & present).any(-1)
    negative_next = ((h_next < -tol) & present).any(-1)
    feasible = answer.feasible.detach().cpu()
    rounds = 1.0 if answer.rounds is None else float(answer.rounds.double().mean())
    return {
        "decay_violations_feasible": int((decay_bad & feasible).sum()),
        "next_barrier_negative": int(negative_next.sum()),
        "infeasible": int((~feasible).sum()),
        "start_negative": int(((h_now < 0) & present).any(-1).sum()),
        "line_search": 0 if answer.line_search is None else int(answer.line_search.sum()),
        "mean_qp_rounds": round(rounds, 9),
    }


def _dcbf_section(problems: CBFProblems, env_k: EnvParams, cbf: CBFParams, obstacles: int, devices: list[str],
                  dtypes: list[str], batch_sizes: list[int], bench, primed: set[str],
                  counts: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Time and count both DCBF_METHODS on this pool's states for every (device, dtype, batch, pass);
    returns the dcbf_exact.csv rows and fills `counts` per (method, device, dtype, obstacles, batch)."""
    cbf = _dcbf_cbf(cbf)
    rows = []
    for device in devices:
        if device not in primed:  # one-time costs stay untimed, as for the QP cells
            for method in DCBF_METHODS:
                _dcbf_call(method, problems.safety_head(1, device), problems.u_ref[:1].to(device), env_k, cbf, True)()
            primed.add(device)
        cuda = device == "cuda"
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for batch in batch_sizes:
                safety = problems.safety_head(batch, device, dtype)
                u_ref = problems.u_ref[:batch].to(device=device, dtype=dtype)
                for pass_name in PASSES:
                    calls = {m: _dcbf_call(m, safety, u_ref, env_k, cbf, pass_name != "forward") for m in DCBF_METHODS}
                    timing = _time_side_by_side(calls, bench.repeats, bench.warmup, cuda)
                    medians = timing.wall
                    for method in DCBF_METHODS:
                        key = (method, device, dtype_name, obstacles, batch)
                        if key not in counts:  # u is the same in both passes
                            counts[key] = dcbf_step_counts(timing.first[method], safety, env_k, cbf)
                        cost = math.nan
                        if method == "dcbf_exact":
                            cost = medians["dcbf_exact"] / medians["dcbf_first_order"]
                        rows.append({
                            "method": method, "pass": pass_name, "device": device, "dtype": dtype_name,
                            "obstacles": obstacles, "batch_size": batch,
                            "median_ms": medians[method] * 1e3, "per_problem_us": medians[method] * 1e6 / batch,
                            "cpu_ms": timing.cpu[method] * 1e3, "repeats": timing.rounds,
                            "cost_vs_first_order": cost, **counts[key],
                        })
    return rows


def _dcbf_metrics(counts: dict[tuple, dict[str, Any]], cbf: CBFParams) -> dict[str, Any]:
    """The deterministic part of the section (no timings): counts per method, device, dtype,
    obstacle count and batch size, and the settings they were counted with."""
    from model.dcbf_exact import FLOAT32_RTOL, FLOAT64_TOL

    per_cell: dict[str, Any] = {}
    for (method, device, dtype, obstacles, batch), cell in sorted(counts.items(), key=str):
        per_cell.setdefault(method, {}).setdefault(device, {}).setdefault(dtype, {}).setdefault(
            f"obstacles_{obstacles}", {})[f"batch_{batch}"] = {"problems": batch, **cell}
    return {
        "gamma": cbf.filter_gamma,
        "exact_max_iters": cbf.exact_max_iters,
        "tolerance_float64": FLOAT64_TOL,
        "tolerance_float32_relative": FLOAT32_RTOL,
        "counts": per_cell,
    }


# ----------------------------------------------------------------------------------------------
# the stage


def _check(params: Params) -> tuple[list[int], list[str], dict[str, str]]:
    bench = params.qp_benchmark
    bad = [b for b in bench.batch_sizes if b < 1]
    if bad:
        raise ValueError(f"qp_benchmark.batch_sizes={bench.batch_sizes} has {bad}; accepted: integers >= 1")
    devices, skipped = [], {}
    for device in dict.fromkeys(bench.devices):
        if device == "cuda" and not torch.cuda.is_available():
            skipped[device] = "CUDA not available (torch.cuda.is_available() is False)"
        else:
            devices.append(device)
    if not devices:
        raise ValueError(
            f"qp_benchmark.devices={bench.devices}: none is available here ({'; '.join(skipped.values())}); "
            "accepted: a list including 'cpu'"
        )
    return sorted(set(bench.batch_sizes)), devices, skipped


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Benchmark exact vs qpth (and dcbf_exact vs its first-order rows) and write the outputs of
    the module docstring under `workdir`.

    Returns {"table", "metrics", "speedups", "plot", "dcbf_exact": paths, "speedups_headline": {...},
    "devices_run": [...], "devices_skipped": {...}}.
    """
    workdir = Path(workdir)
    batch_sizes, devices, skipped = _check(params)
    threads = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        return _run(params, workdir, batch_sizes, devices, skipped)
    finally:
        torch.set_num_threads(threads)


def _run(params: Params, workdir: Path, batch_sizes: list[int], devices: list[str],
         skipped: dict[str, str]) -> dict[str, Any]:
    bench = params.qp_benchmark
    obstacle_counts = list(dict.fromkeys(bench.obstacle_counts))
    dtypes = list(dict.fromkeys(bench.dtypes))
    pool_size = max(batch_sizes)

    rows: list[dict[str, Any]] = []
    problem_info: dict[str, Any] = {}
    accuracy: dict[tuple, dict[str, Any]] = {}
    primed: set[str] = set()
    dcbf_rows: list[dict[str, Any]] = []
    dcbf_counts: dict[tuple, dict[str, Any]] = {}
    dcbf_primed: set[str] = set()
    for obstacles in obstacle_counts:
        problems = build_problems(params.env, params.cbf, obstacles, pool_size)
        for device in devices:
            if device not in primed:  # one-time costs (qpth imports cvxpy: seconds) stay untimed
                for backend in BACKENDS:
                    _solver_call(backend, problems.head(1, device), backward=True)()
                primed.add(device)
        references = reference_solutions(problems, bench.qpth_max_batch)
        ref_name, _, ref_feasible = references["exact"]
        problem_info[f"obstacles_{obstacles}"] = {
            "problems": pool_size,
            "rows": int(problems.A.shape[1]),
            "real_rows_mean": round(float(problems.mask.double().sum(-1).mean()), 6),
            "reference_feasible": int(ref_feasible.sum()) if ref_name == "quadprog" else None,
            # states whose look-ahead barrier is already negative (often no safe action exists)
            "negative_barrier_states": int((problems.h < 0).any(-1).sum()),
        }
        for device in devices:
            cuda = device == "cuda"
            for dtype_name in dtypes:
                for batch in batch_sizes:
                    inputs = problems.head(batch, device, DTYPES[dtype_name])
                    backends = [b for b in BACKENDS if b == "exact" or batch <= bench.qpth_max_batch]
                    for pass_name in PASSES:
                        calls = {b: _solver_call(b, inputs, pass_name != "forward") for b in backends}
                        timing = _time_side_by_side(calls, bench.repeats, bench.warmup, cuda)
                        medians = timing.wall
                        for backend in backends:
                            key = (backend, device, dtype_name, obstacles, batch)
                            if key not in accuracy:  # u is the same in both passes
                                sol = timing.first[backend]
                                accuracy[key] = _accuracy(sol.u, sol.feasible, sol.solver_ok, references[backend])
                            acc = accuracy[key]
                            speedup = math.nan
                            if backend == "exact" and "qpth" in medians:
                                speedup = medians["qpth"] / medians["exact"]
                            rows.append({
                                "backend": backend, "pass": pass_name, "device": device, "dtype": dtype_name,
                                "obstacles": obstacles, "batch_size": batch,
                                "median_ms": medians[backend] * 1e3,
                                "per_problem_us": medians[backend] * 1e6 / batch,
                                "max_deviation": acc["max_deviation"], "solved_fraction": acc["solved_fraction"],
                                "speedup_vs_qpth": speedup, "solver_ok_fraction": acc["solver_ok_fraction"],
                                "repeats": timing.rounds, "reference": references[backend][0],
                                "cpu_ms": timing.cpu[backend] * 1e3,
                            })
        # after the QP cells, so that their timings run exactly as without this section
        dcbf_rows += _dcbf_section(problems, _env_with_obstacles(params.env, obstacles), params.cbf, obstacles,
                                   devices, dtypes, batch_sizes, bench, dcbf_primed, dcbf_counts)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    reference_name = "quadprog" if ref_name == "quadprog" else "the other backend (quadprog not installed)"
    metrics = _metrics(accuracy, problem_info, devices, skipped, reference_name)
    metrics["dcbf_exact"] = _dcbf_metrics(dcbf_counts, _dcbf_cbf(params.cbf))
    dcbf_table = pd.DataFrame(dcbf_rows, columns=list(DCBF_COLUMNS))
    speedups = _speedups(table, obstacle_counts)

    out = {name: workdir / path for name, path in
           (("table", TABLE_PATH), ("metrics", METRICS_PATH), ("speedups", SPEEDUPS_PATH), ("plot", PLOT_PATH))}
    png = _plot(table, obstacle_counts)
    io.write_csv(out["table"], table)
    io.write_csv(workdir / DCBF_EXACT_PATH, dcbf_table)
    io.write_text(out["metrics"], json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    io.write_text(out["speedups"], json.dumps(speedups, indent=2, sort_keys=True, allow_nan=False) + "\n")
    with io.atomic_path(out["plot"]) as tmp:
        tmp.write_bytes(png)
    return {**{k: str(v) for k, v in out.items()}, "dcbf_exact": str(workdir / DCBF_EXACT_PATH),
            "speedups_headline": speedups["speedup_vs_qpth"],
            "devices_run": devices, "devices_skipped": skipped}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _metrics(accuracy, problem_info, devices, skipped, reference_name) -> dict[str, Any]:
    """Deterministic numbers only: the same problems and solvers give the same file."""
    per_cell: dict[str, Any] = {}
    largest: dict[tuple, int] = {}
    for (backend, device, dtype, obstacles, batch), acc in accuracy.items():
        cell = (backend, device, dtype, obstacles)
        largest[cell] = max(batch, largest.get(cell, 0))
    for cell, batch in sorted(largest.items(), key=str):
        backend, device, dtype, obstacles = cell
        batches = [acc for key, acc in accuracy.items() if key[:4] == cell]
        deviations = [acc["max_deviation"] for acc in batches if not math.isnan(acc["max_deviation"])]
        top = accuracy[(*cell, batch)]
        per_cell.setdefault(backend, {}).setdefault(device, {}).setdefault(dtype, {})[f"obstacles_{obstacles}"] = {
            # over every batch size run (problems are prefixes of one pool)
            "max_deviation": _json_number(max(deviations)) if deviations else None,
            # at the largest batch run, which holds every smaller one
            "solved_fraction": top["solved_fraction"],
            "solver_ok_fraction": top["solver_ok_fraction"],
            "problems": top["problems"],
            "compared": top["compared"],
        }
    headline = {}
    for backend, by_device in per_cell.items():
        values = [cell["max_deviation"] for by_dtype in by_device.values()
                  for cell in by_dtype.get("float64", {}).values() if cell["max_deviation"] is not None]
        headline[f"{backend}_max_deviation_float64"] = max(values) if values else None
    return {
        "reference_solver": reference_name,
        "devices_run": devices,
        "devices_skipped": skipped,
        "problems": problem_info,
        "accuracy": per_cell,
        **headline,
    }


def _speedups(table: pd.DataFrame, obstacle_counts: list[int]) -> dict[str, Any]:
    """Headline exact-vs-qpth speed-ups (forward+backward, CPU, float64): timings, not metrics."""
    chosen = table[(table["pass"] == "forward+backward") & (table["device"] == "cpu") & (table["dtype"] == "float64")]
    keys = ["obstacles", "batch_size"]
    exact = chosen[chosen["backend"] == "exact"].set_index(keys)
    qpth = chosen[chosen["backend"] == "qpth"].set_index(keys)
    cpu_ratio = (qpth["cpu_ms"] / exact["cpu_ms"]).dropna()
    headline: dict[str, Any] = {}
    every: dict[str, Any] = {}
    cpu_every: dict[str, Any] = {}
    for obstacles in obstacle_counts:
        mine = exact[exact.index.get_level_values("obstacles") == obstacles]
        by_batch = {int(batch): _json_number(float(s)) for (_, batch), s in mine["speedup_vs_qpth"].items()}
        every[f"obstacles_{obstacles}"] = {f"batch_{b}": s for b, s in by_batch.items()}
        headline[f"obstacles_{obstacles}"] = {f"batch_{b}": by_batch.get(b) for b in HEADLINE_BATCHES}
        cpu_every[f"obstacles_{obstacles}"] = {f"batch_{int(batch)}": float(r) for (k, batch), r in cpu_ratio.items()
                                               if k == obstacles}
    return {
        "pass": "forward+backward", "device": "cpu", "dtype": "float64",
        "speedup_vs_qpth": headline,
        "speedup_vs_qpth_all_batches": every,
        # the same ratio in CPU time of this process: less sensitive to other processes
        # preempting ours on a loaded machine (short calls suffer most from that)
        "cpu_time_speedup_vs_qpth_all_batches": cpu_every,
        "targets": {f"batch_{b}": t for b, t in TARGETS.items()},
        "torch_threads": torch.get_num_threads(),
        "note": "qpth median time / exact median time, measured side by side in one run; "
                "machine-dependent, so not a DVC metric",
    }


def _plot(table: pd.DataFrame, obstacle_counts: list[int]) -> bytes:
    """PNG bytes: per-problem time vs batch size, log-log, one panel per obstacle count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = "cpu" if (table["device"] == "cpu").any() else table["device"].iloc[0]
    dtype = "float64" if (table["dtype"] == "float64").any() else table["dtype"].iloc[0]
    shown = table[(table["device"] == device) & (table["dtype"] == dtype)]
    fig, axes = plt.subplots(1, len(obstacle_counts), figsize=(5.5 * len(obstacle_counts), 4.2), squeeze=False)
    styles = {("exact", "forward"): ("tab:blue", "--"), ("exact", "forward+backward"): ("tab:blue", "-"),
              ("qpth", "forward"): ("tab:red", "--"), ("qpth", "forward+backward"): ("tab:red", "-")}
    for ax, obstacles in zip(axes[0], obstacle_counts):
        panel = shown[shown["obstacles"] == obstacles]
        for (backend, pass_name), (color, line) in styles.items():
            line_rows = panel[(panel["backend"] == backend) & (panel["pass"] == pass_name)].sort_values("batch_size")
            if len(line_rows):
                ax.plot(line_rows["batch_size"], line_rows["per_problem_us"], line, marker="o", color=color,
                        label=f"{backend}, {pass_name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (problems per call)")
        ax.set_ylabel("time per problem (µs)")
        ax.set_title(f"{obstacles} obstacles ({obstacles + 8} rows)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CBF-QP solve time: exact vs qpth ({dtype}, {device}, median)")
    fig.tight_layout()
    buffer = _stdio.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
