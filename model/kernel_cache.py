"""Compile every numba loop of `model/` and `env/` into numba's on-disk cache, ahead of the workers.

Why: each loop is compiled (`cache=True`) the first time a process calls it with a new argument
type, 1-5 s per signature here (`solve_batch` alone: 2.8 s float64, 5.0 s float32, on a 2-core
AMD EPYC). On a fresh clone nothing is cached yet, so both Dask workers of the main job compile
the same 50 signatures at the start of their first cells (the warm-up takes about 24 s of one
core here). `scripts/main.sh` runs `python -m tasks warm-kernels` in the background while the
Prefect server starts (a wait that leaves one core idle); the workers then load the machine code
from the cache.

How: each loop is called once per argument type the pipeline gives it, on a batch of zero
elements (the loop body never runs; numba compiles and caches by type alone). The types are
those a cold main job leaves in the cache (its `.nbi` index files): float32 and float64 for the
QP's solve and backward, the CBF rows and the env's loops (`env/compiled.py`), float64 for
CBF-Beta's box, float32 for the tanh, BarrierNet's loops of the NumPy learner and rollout and
the shield's rollout tail.
Every array is C-contiguous and writable, as the callers hand them to the loops.
tests/test_kernel_cache.py checks, with a fresh cache, that a training iteration of every
algorithm, a float64 QP solve and a step from a hand-set state compile nothing the warm-up did not.

The numerics mode must be applied before numba loads (`python -m tasks warm-kernels` does),
since numba keys its cache by the target CPU it compiles for: a warm-up for another target
compiles code no worker loads.
"""

from __future__ import annotations

import time

import numpy as np

DTYPES = (np.float32, np.float64)
"""The float types of the QP, CBF-row and env loops: training runs float32, the QP benchmark (its
env and its rows) float64."""


def _qp_loops(dtype: type) -> None:
    from model.qp.common import FEAS_TOL, SINGULAR_TOL, TIE_REL
    from model.qp.cpu_n2_kernels import allocate_outputs, backward_batch, solve_batch

    import torch

    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    tolerances = (FEAS_TOL[torch_dtype], TIE_REL[torch_dtype], SINGULAR_TOL[torch_dtype])
    batch, m = 0, 1
    out = allocate_outputs(batch, m)
    solve_batch(np.empty((batch, 2, 2), dtype), np.empty((batch, 2), dtype), np.empty((batch, m, 2), dtype),
                np.empty((batch, m), dtype), np.empty((batch, m), np.bool_), True, np.full((1, 2), -1, np.int64),
                False, *tolerances, *out)
    u, lam, _, Y, K, active, inv_norm, _, _ = out
    as_dtype = [x.astype(dtype) for x in (u, lam, Y, K)]
    backward_batch(np.empty((batch, 2), dtype), *as_dtype, active, inv_norm.astype(dtype),
                   np.empty((batch, 2, 2), dtype), np.empty((batch, 2), dtype), np.empty((batch, m, 2), dtype),
                   np.empty((batch, m), dtype))


def _cbf_loops(dtype: type) -> None:
    from model.cbf import _barriers_kernel, _geometry_kernel, _rows_kernel

    batch, obstacles = 0, 2
    barriers = obstacles + 4
    centres, radii = np.empty((batch, obstacles, 2), dtype), np.empty((batch, obstacles), dtype)
    present, consts = np.empty((batch, obstacles), np.bool_), np.zeros(6, dtype)
    h, grad, mask = np.empty((batch, barriers), dtype), np.empty((batch, barriers, 2), dtype), np.empty((batch, barriers), np.bool_)
    _barriers_kernel(np.empty((batch, 2), dtype), centres, radii, present, consts, h, grad, mask)
    _geometry_kernel(np.empty((batch, 3), dtype), np.empty(batch, dtype), np.empty(batch, dtype), centres, radii,
                     present, consts, np.empty((batch, barriers + 4, 2), dtype), h, grad, mask)
    _rows_kernel(np.empty((batch, 3), dtype), np.empty(batch, dtype), np.empty(batch, dtype), centres, radii, present,
                 consts, np.empty((batch, barriers), dtype), dtype(0.05), True, np.zeros(4, dtype), np.zeros((4, 2), dtype),
                 np.empty((batch, barriers + 4, 2), dtype), np.empty((batch, barriers + 4), dtype), h, grad, mask,
                 np.empty((batch, barriers + 4), np.bool_))


def _env_loops(dtype: type) -> None:
    from env.compiled import observe_kernel, proximity_terms_kernel, shaping_kernel

    envs, obstacles, observed = 0, 2, 2
    row, rows, present = np.empty(envs, dtype), np.empty((obstacles, envs), dtype), np.empty((obstacles, envs), np.bool_)
    proximity_terms_kernel(row, row, rows, rows, present, np.ones(5, dtype), np.empty((obstacles + 4, envs), dtype))
    shaping_kernel(row, row, row, row, np.empty(envs, np.bool_), np.ones(6, dtype), np.empty(envs, dtype))
    observe_kernel(np.empty((5, 2, envs), dtype), np.empty((3, obstacles, envs), dtype), np.empty((obstacles, envs), np.bool_),
                   np.empty((2, envs), dtype), np.empty((2, envs), dtype), np.empty(envs, dtype),
                   np.empty((obstacles, envs), dtype), np.ones((2, 2), dtype), np.ones(10, dtype), observed,
                   np.empty((envs, 19 + 3 * observed), dtype))
    _start_loops(dtype)
    _step_loops(dtype)


def _step_loops(dtype: type) -> None:
    from env import compiled

    envs, obstacles = 0, 2
    ints, row, rows = np.empty(envs, np.int64), np.empty(envs, dtype), np.empty((2, envs), dtype)
    planes, present = np.empty((obstacles, envs), dtype), np.empty((obstacles, envs), np.bool_)
    robots, obstacle_rows = np.empty((5, 2, envs), dtype), np.empty((3, obstacles, envs), dtype)
    compiled.arc_inputs_kernel(np.empty((envs, 2), dtype), ints, ints, np.empty(2, np.int64), np.ones(5, np.int64),
                               dtype(1.0), np.empty((0, envs), dtype), True, np.ones(8, dtype), rows, rows, rows, rows, rows)
    compiled.arc_kernel(rows, rows, rows, rows, rows, rows, rows, rows, np.ones(3, dtype), rows, rows, rows)
    compiled.confine_start_kernel(row, row, obstacle_rows, np.ones(1, dtype), row, row, planes, planes)
    compiled.confine_push_kernel(planes, planes, planes, obstacle_rows, present, np.ones(4, dtype), planes, planes, planes)
    compiled.confine_move_kernel(row, row, row, row, obstacle_rows, np.ones(1, dtype), row, row, planes, planes)
    compiled.new_state_kernel(rows, rows, row, row, planes, planes, present, robots, rows, rows, rows, obstacle_rows,
                              np.ones(2, dtype), robots, row, row, planes, planes)
    compiled.events_kernel(robots, row, planes, obstacle_rows, present, ints, 1, np.ones(9, dtype),
                           np.empty((envs, obstacles + 4), dtype), *(np.empty(envs, np.bool_) for _ in range(3)), row)


def _start_loops(dtype: type) -> None:
    from env import compiled

    envs, candidates, draws = 0, 64, 7 + 3 * 64 * 2
    ints, row, rows = np.empty(envs, np.int64), np.empty(envs, dtype), np.empty((2, envs), dtype)
    draw, robots = np.empty((draws, envs), dtype), np.empty((5, 2, envs), dtype)
    compiled.start_draws_kernel(ints, ints, ints, np.empty(draws, np.int64), np.ones(4, np.int64), dtype(1.0),
                                np.ones(6, dtype), ints, draw, row, row)
    compiled.start_angles_kernel(draw, row, np.ones(5, dtype), row, rows)
    compiled.start_robots_kernel(draw, row, rows, row, row, row, row, np.ones(4, dtype), robots, rows)
    plane, pair = np.empty((candidates, envs), dtype), np.empty((2, candidates, envs), dtype)
    obstacles = np.empty((3, 2, envs), dtype)
    compiled.obstacle_candidates_kernel(draw, 0, robots, rows, obstacles, np.ones(7, dtype), plane, plane, plane, pair,
                                        pair, plane, plane, pair[:0], pair[:0])
    compiled.obstacle_choice_kernel(0, plane, plane, plane, pair, plane, pair[:0], np.ones(2, dtype), obstacles,
                                    np.empty(envs, np.bool_))


def _cbf_beta_loops() -> None:
    from model.cbf_beta import _boxes_kernel, _empty_beyond_round_off, _pushed_right_sides

    batch, m, rungs = 0, 1, 1
    A, b, mask = np.empty((batch, m, 2)), np.empty((batch, m)), np.empty((batch, m), np.bool_)
    _pushed_right_sides(A, b, np.ones(2), np.zeros(rungs), np.empty((rungs * batch, m)))
    _empty_beyond_round_off(A, b, mask, 0.0, 0.0, 0.0, 0.0, np.empty(batch, np.bool_))
    _boxes_kernel(A, b, mask, np.empty((rungs, batch, 2)), np.empty((rungs, batch), np.bool_), np.zeros(2),
                  np.ones(2), 1, 0.0, np.empty((batch, 2)), np.empty((batch, 2)))


def _learner_loops() -> None:
    """BarrierNet's loops of the NumPy learner and rollout, and the shield's rollout tail (float32
    only: their dtype)."""
    from model.numpy_learner import (_barrier_right_sides, _barriernet_head_grads, _barriernet_head_values,
                                     _barriernet_raw_grads, _clamped_gaussian_log_prob)
    from model.numpy_rollout import _barriernet_rollout_tail, _shielded_rollout_tail

    batch, barriers, f32 = 0, 6, np.float32
    pair, vector = np.empty((batch, 2), f32), np.ones(2, f32)
    _clamped_gaussian_log_prob(pair, vector, vector, pair, vector, vector, pair, pair, np.empty(batch, f32))
    # the upstream gradient arrives as a (B, 1) view of a (B,) vector, as loss_and_grad hands it
    _barriernet_head_grads(np.empty(batch, f32)[:, None], pair, vector, pair, pair)
    rows = np.empty((batch, barriers), f32)
    present = np.empty((batch, barriers), np.bool_)
    _barriernet_raw_grads(pair, np.empty((batch, barriers + 4), f32), rows, present, rows, pair, vector, vector,
                          f32(1.0), f32(0.05), pair, pair, rows)
    _barriernet_head_values(pair, rows, vector, vector, f32(0.1), f32(0.9), pair, rows, rows)
    _barrier_right_sides(rows, rows, present, np.empty((batch, 4), f32), f32(0.05), np.empty((batch, barriers + 4), f32))
    row = np.empty(batch, f32)
    _barriernet_rollout_tail(pair, pair, pair, pair, pair, vector, vector, vector, vector, vector, vector, f32(0.01),
                             rows, present, pair, row, pair, row, np.empty(batch, np.bool_), rows)
    _shielded_rollout_tail(pair, pair, vector, vector, vector, f32(0.01), rows, present, pair, row,
                           np.empty(batch, np.bool_), rows)


def warm() -> dict[str, float]:
    """Compile (or load from the cache) every loop for every argument type the pipeline uses.
    Returns {part: seconds}."""
    seconds = {}
    started = time.perf_counter()
    import model.numpy_learner  # noqa: F401  (rational_tanh, trigamma: their one signature each compiles at import)

    seconds["tanh"] = time.perf_counter() - started
    started = time.perf_counter()
    _learner_loops()
    seconds["learner float32"] = time.perf_counter() - started
    for dtype in DTYPES:
        for name, part in (("qp", _qp_loops), ("cbf", _cbf_loops), ("env", _env_loops)):
            started = time.perf_counter()
            part(dtype)
            seconds[f"{name} {np.dtype(dtype).name}"] = time.perf_counter() - started
    started = time.perf_counter()
    _cbf_beta_loops()
    seconds["cbf_beta float64"] = time.perf_counter() - started
    return seconds
