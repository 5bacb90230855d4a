"""Env-steps per second: our batched vector env against gymnasium's SyncVectorEnv, side by side.

Three ways to step N pursuit-evasion games with uniformly random pursuer actions:

- ``core``: the core directly (the zero-copy path training uses): on the CPU its arithmetic runs in
  numba loops (`env/compiled.py`, the default), and ``core torch`` is the same core with
  ``compiled = False`` (the torch code, which CUDA runs; the same bits),
- ``vector``: `PursuitEvasionVectorEnv` through gymnasium's numpy VectorEnv API,
- ``sync``: ``gymnasium.vector.SyncVectorEnv`` over N single `PursuitEvasionEnv` (same-step
  autoreset), the usual way to vectorise an env that has no native batch.

Actions are drawn before timing (a bank of random action batches, cycled). All three run in
one process, one after another per N, so the ratios compare like with like on a noisy machine.
SyncVectorEnv is capped to a few thousand env steps per N (at N = 4096 that is a few steps).

    python benchmarks/env_throughput.py            # N in 1, 64, 1024, 4096
    python benchmarks/env_throughput.py --quick    # fewer steps
    python benchmarks/env_throughput.py --threads 2 --sizes 1024 4096
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # Pinned numerics, as training runs (tasks/numerics.py): set before torch, numpy and numba
    # load; among others it holds OpenBLAS and OpenMP to one thread, so the timings are per core.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tasks import numerics as _numerics

    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:]))

import gymnasium
import numpy as np
import torch

from env import PursuitEvasionCore, PursuitEvasionEnv, PursuitEvasionVectorEnv
from tasks.params import EnvParams

ACTION_BANK = 16


def _rate(step, total_env_steps_per_call: int, min_seconds: float, max_calls: int) -> tuple[float, float]:
    """Env-steps/s of calling `step()` repeatedly for about `min_seconds` (or `max_calls`):
    (per wall-clock second, per second of this process's CPU time)."""
    step()  # warm-up (allocations, first autoresets)
    calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or calls >= max_calls:
            cpu = max(time.process_time() - start_cpu, 1e-9)
            return calls * total_env_steps_per_call / elapsed, calls * total_env_steps_per_call / cpu


def bench_core(params: EnvParams, n: int, min_seconds: float, max_calls: int, compiled: bool = True) -> tuple[float, float]:
    core = PursuitEvasionCore(params, num_envs=n)
    core.compiled = compiled
    g = torch.Generator().manual_seed(0)
    low = torch.tensor([0.0, -params.pursuer_w_max])
    high = torch.tensor([params.pursuer_v_max, params.pursuer_w_max])
    bank = [low + torch.rand(n, 2, generator=g) * (high - low) for _ in range(ACTION_BANK)]
    counter = iter(range(1 << 62))
    return _rate(lambda: core.step(bank[next(counter) % ACTION_BANK]), n, min_seconds, max_calls)


def _numpy_bank(space: gymnasium.spaces.Box, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(space.low, space.high, size=(n, 2)).astype(np.float32) for _ in range(ACTION_BANK)]


def bench_vector(params: EnvParams, n: int, min_seconds: float, max_calls: int) -> tuple[float, float]:
    envs = PursuitEvasionVectorEnv(num_envs=n, params=params)
    envs.reset(seed=0)
    bank = _numpy_bank(envs.single_action_space, n)
    counter = iter(range(1 << 62))
    return _rate(lambda: envs.step(bank[next(counter) % ACTION_BANK]), n, min_seconds, max_calls)


def bench_sync(params: EnvParams, n: int, min_seconds: float, max_env_steps: int) -> tuple[float, float]:
    envs = gymnasium.vector.SyncVectorEnv(
        [lambda: PursuitEvasionEnv(params) for _ in range(n)], autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP
    )
    envs.reset(seed=0)
    bank = _numpy_bank(envs.single_action_space, n)
    counter = iter(range(1 << 62))
    return _rate(lambda: envs.step(bank[next(counter) % ACTION_BANK]), n, min_seconds, max(1, max_env_steps // n))


def main(argv: list[str] | None = None) -> None:
    from side_by_side import cpu_model  # benchmarks/ is on sys.path when a script of it runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024, 4096], help="num_envs values")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisier figures)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    parser.add_argument("--evader", choices=["random", "flee"], default="random")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = EnvParams(evader_policy=args.evader)
    seconds = 0.3 if args.quick else 2.0
    max_calls = 200 if args.quick else 5000
    sync_steps = 2_000 if args.quick else 20_000

    print(f"pursuit-evasion env throughput (env-steps/s), {cpu_model()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, evader {args.evader}, {params.num_obstacles} obstacles, random pursuer actions")
    print("wall: per wall-clock second; cpu: per second of this process's CPU time (less hurt by a busy machine)")
    header = (f"{'num_envs':>8} | {'core wall':>11} | {'core cpu':>11} | {'core torch':>11} | {'core/torch':>10} | "
              f"{'vector wall':>11} | {'vector cpu':>11} | {'sync wall':>9} | {'sync cpu':>9} | {'core/sync':>9} | "
              f"{'vector/sync':>11}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        core = bench_core(params, n, seconds, max_calls)
        core_torch = bench_core(params, n, seconds, max_calls, compiled=False)
        vector = bench_vector(params, n, seconds, max_calls)
        sync = bench_sync(params, n, seconds, sync_steps)
        print(
            f"{n:>8} | {core[0]:>11,.0f} | {core[1]:>11,.0f} | {core_torch[0]:>11,.0f} | {core[0] / core_torch[0]:>9.2f}x | "
            f"{vector[0]:>11,.0f} | {vector[1]:>11,.0f} | "
            f"{sync[0]:>9,.0f} | {sync[1]:>9,.0f} | {core[0] / sync[0]:>8.1f}x | {vector[0] / sync[0]:>10.1f}x",
            flush=True,
        )
    print("ratios are wall-clock rates measured side by side in this run")


if __name__ == "__main__":
    main()
