"""GPU benchmark (run where a CUDA device exists; exits cleanly, saying so, elsewhere).

One run, two printed tables:
1. training env-steps/s of BarrierNet (through_qp) and the baseline in four placements:
   all-CPU (rollout + update on cpu, torch's learner), all-CPU with the NumPy learner (the
   default params), hybrid (rollout cpu, update cuda, torch's learner: `train.learner=torch`
   with a GPU) and all-GPU (env, QP and policy on cuda), measured in alternating rounds so drift
   hits all;
2. qpth vs the exact solver on CUDA by batch size (forward+backward, float64 and float32),
   same problems, same run.

    python benchmarks/gpu_throughput.py [--iterations 3] [--num-envs 256 1024 4096] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    # Pinned numerics, as training runs (tasks/numerics.py): set before torch, numpy and numba
    # load; among others it holds OpenBLAS and OpenMP to one thread, so the CPU timings are per core.
    from tasks import numerics as _numerics

    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:]))

import torch  # noqa: E402

PLACEMENTS = {  # name -> (rollout_device, update_device, train.learner)
    "all-CPU": ("cpu", "cpu", "torch"),
    "all-CPU, NumPy learner": ("cpu", "cpu", "numpy"),
    "hybrid": ("cpu", "cuda", "torch"),
    "all-GPU": ("cuda", "cuda", "torch"),
}


def training_rates(num_envs: int, iterations: int, algos: list[str]) -> dict[tuple[str, str], float]:
    from tasks.params import load_params
    from tasks.train import Trainer

    os.environ.setdefault("BARRIERNET_STATE_DIR", tempfile.mkdtemp(prefix="gpu-bench-"))
    trainers = {}
    for algo in algos:
        for name, (rollout, update, learner) in PLACEMENTS.items():
            params = load_params(overrides={"train.num_envs": num_envs, "train.rollout_device": rollout,
                                            "train.update_device": update, "train.learner": learner,
                                            "train.seeds": [0]})
            trainer = Trainer(params, algo, 0)
            trainer.train_one_update()  # warm-up: allocations, cuDNN/cuBLAS handles
            trainers[(algo, name)] = [trainer, 0.0, 0]
    for _ in range(iterations):  # alternate so machine drift hits every placement alike
        for key, entry in trainers.items():
            trainer = entry[0]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.train_one_update()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            entry[1] += time.perf_counter() - started
            entry[2] += trainer.params.train.batch_size
    return {key: steps / seconds for key, (_, seconds, steps) in trainers.items()}


def qp_rates(batch_sizes: list[int], repeats: int) -> list[tuple[str, int, float, float]]:
    from tasks.qp_benchmark import cbf_benchmark_problems, time_solver

    rows = []
    for dtype in (torch.float64, torch.float32):
        for batch in batch_sizes:
            H, f, A, b, mask = cbf_benchmark_problems(batch, 2, dtype=dtype, device="cuda")
            exact = time_solver("exact", H, f, A, b, mask, backward=True, repeats=repeats, warmup=2)
            qpth = time_solver("qpth", H, f, A, b, mask, backward=True, repeats=repeats, warmup=2)
            rows.append((str(dtype).removeprefix("torch."), batch, exact, qpth))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device on this machine (torch.cuda.is_available() is False); skipped.")
        return 0
    if args.quick:
        args.iterations, args.num_envs, args.batch_sizes, args.repeats = 1, [64], [1, 64], 2
    torch.set_num_threads(1)
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("\ntraining env-steps/s (rollout + update), warm-up excluded")
    header = f"{'algo':12s} {'num_envs':>8s} " + " ".join(f"{name:>22s}" for name in PLACEMENTS) + "  hybrid/CPU  GPU/CPU"
    print(header)
    print("-" * len(header))
    for num_envs in args.num_envs:
        rates = training_rates(num_envs, args.iterations, ["barriernet", "baseline"])
        for algo in ("barriernet", "baseline"):
            r = {name: rates[(algo, name)] for name in PLACEMENTS}
            print(f"{algo:12s} {num_envs:8d} " + " ".join(f"{r[name]:22,.0f}" for name in PLACEMENTS)
                  + f"  {r['hybrid'] / r['all-CPU']:9.2f}x {r['all-GPU'] / r['all-CPU']:7.2f}x")
    print("\nQP forward+backward on CUDA, median ms per call")
    print(f"{'dtype':8s} {'batch':>6s} {'exact ms':>9s} {'qpth ms':>9s} {'qpth/exact':>10s}")
    for dtype, batch, exact, qpth in qp_rates(args.batch_sizes, args.repeats):
        print(f"{dtype:8s} {batch:6d} {1000 * exact:9.3f} {1000 * qpth:9.3f} {qpth / exact:9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
