"""Parallel efficiency of training cells: each cell's env-steps/s beside others vs alone.

    python benchmarks/parallel_efficiency.py                          # baseline, 2 cells, 6 iterations
    python benchmarks/parallel_efficiency.py --algo barriernet --cells 2 --affinity
    python benchmarks/parallel_efficiency.py --dask     # also inside Dask workers, as the flow runs cells

One child process per cell (as a Dask worker runs one cell), each with one torch thread, the
pinned numerics and its own Trainer (seeds 0, 1, ...), warmed up by one iteration before any
timing. First one child runs `--iterations` iterations alone; then `--cells` children start
together on a signal and run the same. Efficiency = a cell's env-steps/s beside the others /
the solo rate; issue 17 asks >= 85 % for two cells on two cores. `--affinity` pins child i to
CPU i (os.sched_setaffinity) to tell scheduler migrations apart from shared-core effects (SMT
siblings or a host that overcommits its virtual CPUs show up as low efficiency either way).

`--dask` adds the same side-by-side cells inside the workers of a local Dask cluster made as the
flow makes its own (`flows.pipeline.matrix_task_runner`: processes, one thread each), twice: with
Dask's stock nanny environment (MALLOC_TRIM_THRESHOLD_=65536) and with the flow's
(`_keep_glibc_malloc_defaults_in_workers`); efficiency is again against the bare solo rate. Each
runs in a fresh process, so one cluster's nanny cannot leave its variable to the other.

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

DASK_CHILD = r"""
import json, sys
from tasks import numerics
numerics.apply("pinned")
from distributed import Client, Event, LocalCluster
from flows.pipeline import LOOPBACK_CLUSTER

algo, cells, iterations, mode, overrides = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                            json.loads(sys.argv[5]))
if mode == "flow":
    from flows.pipeline import _keep_glibc_malloc_defaults_in_workers
    _keep_glibc_malloc_defaults_in_workers()


def cell(seed):
    import os, time
    import torch
    from distributed import Event
    from tasks.params import load_params
    from tasks.train import Trainer
    torch.set_num_threads(1)
    params = load_params(overrides=overrides)
    trainer = Trainer(params, algo, seed)
    trainer.train_one_update()  # warm-up
    Event(f"ready-{seed}").set()
    Event("go").wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        trainer.train_one_update()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    steps = iterations * params.train.num_envs * params.train.rollout_steps
    return {"sps": steps / wall, "cpu_sps": steps / cpu, "wall": wall,
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")}


with LocalCluster(n_workers=cells, threads_per_worker=1, **LOOPBACK_CLUSTER) as cluster, Client(cluster) as client:
    futures = [client.submit(cell, seed, pure=False) for seed in range(cells)]
    for seed in range(cells):
        Event(f"ready-{seed}", client=client).wait()
    Event("go", client=client).set()
    print("RESULT " + json.dumps([future.result() for future in futures]), flush=True)
"""
QUICK = {"train.num_envs": 8, "train.rollout_steps": 16, "train.num_minibatches": 2, "train.update_epochs": 1}
DASK_MODES = {"dask-stock": "Dask's stock nanny", "flow": "the flow's workers"}


def run_dask_cells(algo: str, cells: int, iterations: int, mode: str, overrides: dict) -> list[dict]:
    """`cells` cells released together inside a fresh local Dask cluster; mode: a DASK_MODES key."""
    done = subprocess.run([sys.executable, "-c", DASK_CHILD, algo, str(cells), str(iterations), mode,
                           json.dumps(overrides)], cwd=REPO, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the Dask run ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


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
    parser.add_argument("--dask", action="store_true", help="also inside local Dask workers (stock and the flow's)")
    parser.add_argument("--quick", action="store_true", help="a tiny batch (a smoke test; the rates mean little)")
    args = parser.parse_args(argv)
    if args.cells < 1 or args.iterations < 1:
        parser.error(f"--cells {args.cells} --iterations {args.iterations}: accepted: both >= 1")
    overrides = {"train.torch_threads": 1, **(QUICK if args.quick else {})}
    load = os.getloadavg()[0]
    solo = run_cells(args.algo, 1, args.iterations, args.affinity, overrides)[0]
    together = run_cells(args.algo, args.cells, args.iterations, args.affinity, overrides)
    in_dask = {mode: run_dask_cells(args.algo, args.cells, args.iterations, mode, overrides)
               for mode in DASK_MODES} if args.dask else {}
    print(f"parallel efficiency, {args.algo}, {args.iterations} iterations per cell, one torch thread per cell, "
          f"affinity {'pinned' if args.affinity else 'free'}; {cpu_model()}, {os.cpu_count()} CPUs; load average "
          f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    head = f"{'run':<46} | {'env-steps/s':>11} | {'steps/CPU-s':>11} | {'efficiency':>10}"
    print(head)
    print("-" * len(head))
    print(f"{'solo, bare process':<46} | {solo['sps']:>11,.0f} | {solo['cpu_sps']:>11,.0f} | {'100 %':>10}")
    groups = {"bare processes": together}
    groups.update({f"{label} (MALLOC_TRIM_THRESHOLD_ {cells[0]['malloc_trim']})": cells
                   for (mode, label), cells in zip(DASK_MODES.items(), in_dask.values())})
    for name, cells in groups.items():
        for i, cell in enumerate(cells):
            print(f"{f'{name}: cell {i} of {args.cells}':<46} | {cell['sps']:>11,.0f} | {cell['cpu_sps']:>11,.0f} | "
                  f"{100 * cell['sps'] / solo['sps']:>8.0f} %")
    for name, cells in groups.items():
        mean = sum(c["sps"] for c in cells) / len(cells) / solo["sps"]
        print(f"{name}: mean efficiency {100 * mean:.0f} % (issue 17 target >= 85 % for 2 cells on 2 cores)")
    if in_dask:
        stock, flow = (sum(c["sps"] for c in cells) for cells in in_dask.values())
        print(f"the flow's workers / Dask's stock nanny: {flow / stock:.2f}x env-steps/s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
