"""QP solver speed: the exact active-set solver against qpth on the same CBF-structured batches.

    python benchmarks/qp_speed.py [--batch-sizes 1 16 64 256 1024] [--obstacles 4]
                                  [--repeats 20] [--qpth-repeats 5] [--qpth-max-batch 1024]
                                  [--dtype float64] [--threads 1] [--device cpu] [--clock wall]

Both solvers run in this one process on identical problems (`model.qp.cbf_benchmark_problems`:
n = 2, m = 8 + obstacles rows: 4 control bounds, 4 walls, obstacle rows with some masked),
interleaved round by round so that machine noise hits both alike; each entry is the median over
rounds of `model.qp.time_solver` (which the qp_benchmark stage imports too). Prints a table of
forward and forward+backward times and the qpth / exact ratio per batch size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.qp import cbf_benchmark_problems, solve_qp, time_solver  # noqa: E402


def measure(batch_sizes, num_obstacles, repeats, qpth_repeats, qpth_max_batch, dtype, device, rounds=3, clock="wall"):
    """Rows of dicts: batch, mode, exact_ms, qpth_ms (None above qpth_max_batch), ratio,
    plus how many qpth answers were rejected (solver_ok False) on that batch."""
    rows = []
    for batch in batch_sizes:
        H, f, A, b, mask = cbf_benchmark_problems(batch, num_obstacles, dtype=dtype, device=device, seed=batch)
        run_qpth = batch <= qpth_max_batch
        rejected = None
        if run_qpth:
            rejected = int((~solve_qp(H, f, A, b, backend="qpth", mask=mask).solver_ok).sum())
        for backward in (False, True):
            exact_t, qpth_t = [], []
            for _ in range(rounds):  # interleave the two solvers
                exact_t.append(time_solver("exact", H, f, A, b, mask, backward=backward,
                                           repeats=max(1, repeats // rounds), warmup=2, clock=clock))
                if run_qpth:
                    qpth_t.append(time_solver("qpth", H, f, A, b, mask, backward=backward,
                                              repeats=max(1, qpth_repeats // rounds), warmup=1, clock=clock))
            exact_ms = statistics.median(exact_t) * 1e3
            qpth_ms = statistics.median(qpth_t) * 1e3 if run_qpth else None
            rows.append(dict(batch=batch, mode="fwd+bwd" if backward else "fwd", exact_ms=exact_ms, qpth_ms=qpth_ms,
                             ratio=qpth_ms / exact_ms if run_qpth else None, qpth_rejected=rejected))
    return rows


def format_table(rows) -> str:
    lines = [f"{'batch':>6} {'mode':>8} {'exact ms':>10} {'qpth ms':>10} {'qpth/exact':>11} {'qpth rejected':>14}"]
    for r in rows:
        qpth = f"{r['qpth_ms']:10.3f}" if r["qpth_ms"] is not None else f"{'skipped':>10}"
        ratio = f"{r['ratio']:10.1f}x" if r["ratio"] is not None else f"{'-':>11}"
        rejected = f"{r['qpth_rejected']:>14}" if r["qpth_rejected"] is not None else f"{'-':>14}"
        lines.append(f"{r['batch']:>6} {r['mode']:>8} {r['exact_ms']:10.3f} {qpth} {ratio} {rejected}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--obstacles", type=int, default=4, help="obstacle rows (m = 8 + this)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of the exact solver")
    parser.add_argument("--qpth-repeats", type=int, default=6, help="timed calls of qpth (slow)")
    parser.add_argument("--qpth-max-batch", type=int, default=1024, help="skip qpth above this batch")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier on a shared machine (CPU device only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both solvers (1: small ops, fair on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here; accepted: cpu")
    rows = measure(args.batch_sizes, args.obstacles, args.repeats, args.qpth_repeats, args.qpth_max_batch,
                   getattr(torch, args.dtype), args.device, clock=args.clock)
    print(f"QP solve, n = 2, m = {8 + args.obstacles} rows, {args.dtype}, {args.device}, "
          f"{torch.get_num_threads()} thread(s); median {args.clock}-clock ms per call")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
