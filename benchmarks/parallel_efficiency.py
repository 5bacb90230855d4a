"""Parallel efficiency of training cells: each cell's env-steps/s beside others vs alone.

    python benchmarks/parallel_efficiency.py                          # baseline, 2 cells, 6 iterations
    python benchmarks/parallel_efficiency.py --algo barriernet --cells 2 --affinity

One child process per cell (as a Dask worker runs one cell), each with one torch thread, the
pinned numerics and its own Trainer (seeds 0, 1, ...), warmed up by one iteration before any
timing. First one child runs `--iterations` iterations alone; then `--cells` children start
together on a signal and run the same. Efficiency = a cell's env-steps/s beside the others /
the solo rate; issue 17 asks >= 85 % for two cells on two cores. `--affinity` pins child i to
CPU i (os.sched_setaffinity) to tell scheduler migrations apart from shared-core effects (SMT
siblings or a host that overcommits its virtual CPUs show up as low efficiency either way).

Printed with the CPU model, the CPU count and the load average: a shared or virtual machine
can look very different from one run to the next, so repeat it before drawing conclusions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # its sibling, also when loaded by file path
from side_by_side import ALGOS, REPO, cpu_model  # noqa: E402

CHILD = r"""
import json, os, sys, time
from tasks import numerics
numerics.apply("pinned")
import torch
from tasks.params import load_params
from tasks.train import Trainer

algo, seed, iterations, core = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if core >= 0:
    os.sched_setaffinity(0, {core})
torch.set_num_threads(1)
params = load_params(overrides=json.loads(sys.argv[5]))
trainer = Trainer(params, algo, seed)
trainer.train_one_update()  # warm-up
print("ready", flush=True)
sys.stdin.readline()  # the start signal
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(iterations):
    trainer.train_one_update()
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
steps = iterations * params.train.num_envs * params.train.rollout_steps
print(json.dumps({"sps": steps / wall, "cpu_sps": steps / cpu, "wall": wall}), flush=True)
"""


def run_cells(algo: str, cells: int, iterations: int, affinity: bool, overrides: dict) -> list[dict]:
    """Start `cells` children (seeds 0..cells-1), release them together, return their rates."""
    procs = []
    for i in range(cells):
        core = i % (os.cpu_count() or 1) if affinity else -1
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CHILD, algo, str(i), str(iterations), str(core), json.dumps(overrides)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a {algo} child failed to start; its stderr is above")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.stdout.readline()) for proc in procs]
    for proc in procs:
        proc.wait(60)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="baseline", choices=ALGOS)
    parser.add_argument("--cells", type=int, default=2, help="cells side by side (default 2)")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per cell (default 6)")
    parser.add_argument("--affinity", action="store_true", help="pin child i to CPU i")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.iterations < 1:
        parser.error(f"--cells {args.cells} --iterations {args.iterations}: accepted: both >= 1")
    overrides = {"train.torch_threads": 1}
    load = os.getloadavg()[0]
    solo = run_cells(args.algo, 1, args.iterations, args.affinity, overrides)[0]
    together = run_cells(args.algo, args.cells, args.iterations, args.affinity, overrides)
    print(f"parallel efficiency, {args.algo}, {args.iterations} iterations per cell, one torch thread per cell, "
          f"affinity {'pinned' if args.affinity else 'free'}; {cpu_model()}, {os.cpu_count()} CPUs; load average "
          f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    head = f"{'run':<18} | {'env-steps/s':>11} | {'steps/CPU-s':>11} | {'efficiency':>10}"
    print(head)
    print("-" * len(head))
    print(f"{'solo':<18} | {solo['sps']:>11,.0f} | {solo['cpu_sps']:>11,.0f} | {'100 %':>10}")
    for i, cell in enumerate(together):
        print(f"{f'cell {i} of {args.cells}':<18} | {cell['sps']:>11,.0f} | {cell['cpu_sps']:>11,.0f} | "
              f"{100 * cell['sps'] / solo['sps']:>8.0f} %")
    mean = sum(c["sps"] for c in together) / len(together) / solo["sps"]
    print(f"mean efficiency {100 * mean:.0f} % (issue 17 target >= 85 % for 2 cells on 2 cores)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
