"""QP solver speed: the exact active-set solver against qpth on the same CBF-structured batches.

    python benchmarks/qp_speed.py [--batch-sizes 1 16 64 256 1024] [--obstacles 4]
                                  [--repeats 20] [--qpth-repeats 5] [--qpth-max-batch 1024]
                                  [--dtype float64] [--threads 1] [--device cpu] [--clock wall]
                                  [--against DIR [--ab-rounds 3]]

Both solvers run in this one process on identical problems (`tasks.qp_benchmark.cbf_benchmark_problems`:
n = 2, m = 8 + obstacles rows: 4 control bounds, 4 walls, obstacle rows with some masked),
interleaved round by round so that machine noise hits both alike; each entry is the median over
rounds of `tasks.qp_benchmark.time_solver`. Prints a table of forward and forward+backward times
and the qpth / exact ratio per batch size.

--against DIR compares this checkout with another one (e.g. `git worktree add DIR HEAD~1`): the
two checkouts' own `benchmarks/qp_speed.py` run as subprocesses with the same arguments, in
alternating order, --ab-rounds times each; the table gives each one's median ratio per batch
size and pass, and the change of this checkout's ratio in percent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    # Pinned numerics, as training runs (tasks/numerics.py): set before torch, numpy and numba
    # load; among others it holds OpenBLAS and OpenMP to one thread, so the timings are per core.
    from tasks import numerics as _numerics

    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:]))

import torch  # noqa: E402

from model.qp import solve_qp  # noqa: E402
from tasks.qp_benchmark import cbf_benchmark_problems, time_solver  # noqa: E402


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


def parse_table(text: str) -> dict[tuple[int, str], float]:
    """{(batch, mode): qpth/exact ratio} from the table `format_table` prints (rows without qpth skipped)."""
    ratios = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].isdigit() and parts[4].endswith("x"):
            ratios[(int(parts[0]), parts[1])] = float(parts[4][:-1])
    return ratios


def compare_checkouts(against: Path, argv: list[str], rounds: int) -> list[dict]:
    """Run this checkout's and `against`'s qp_speed.py alternately `rounds` times each with argv;
    rows of dicts: batch, mode, ratio (this, median), against_ratio (median), change_pct."""
    here = Path(__file__).resolve().parent.parent
    runs: dict[str, list[dict]] = {"this": [], "against": []}
    for r in range(rounds):
        order = [("this", here), ("against", against)]
        for name, root in order if r % 2 == 0 else order[::-1]:
            env = {**os.environ, "PYTHONPATH": str(root)}
            done = subprocess.run([sys.executable, str(root / "benchmarks" / "qp_speed.py"), *argv], cwd=root,
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"qp_speed.py in {root} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            runs[name].append(parse_table(done.stdout))
    rows = []
    for key in sorted(runs["this"][0]):
        this = statistics.median(run[key] for run in runs["this"])
        other = statistics.median(run[key] for run in runs["against"])
        rows.append(dict(batch=key[0], mode=key[1], ratio=this, against_ratio=other,
                         change_pct=100 * (this / other - 1)))
    return rows


def format_comparison(rows) -> str:
    lines = [f"{'batch':>6} {'mode':>8} {'qpth/exact':>11} {'against':>9} {'change':>8}"]
    for r in rows:
        lines.append(f"{r['batch']:>6} {r['mode']:>8} {r['ratio']:10.1f}x {r['against_ratio']:8.1f}x "
                     f"{r['change_pct']:+7.1f}%")
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
    parser.add_argument("--against", type=Path, default=None,
                        help="another checkout: compare its qpth/exact ratios with this one's (see above)")
    parser.add_argument("--ab-rounds", type=int, default=3, help="with --against: runs of each checkout")
    args = parser.parse_args(argv)
    if args.against is not None:
        if not (args.against / "benchmarks" / "qp_speed.py").is_file():
            parser.error(f"--against {args.against}: no benchmarks/qp_speed.py there; accepted: a checkout of this repo")
        if args.ab_rounds < 1:
            parser.error(f"--ab-rounds {args.ab_rounds}; accepted: >= 1")
        raw = list(sys.argv[1:] if argv is None else argv)
        forwarded = []
        skip = False
        for item in raw:  # the same arguments minus --against/--ab-rounds
            if skip:
                skip = False
                continue
            if item in ("--against", "--ab-rounds"):
                skip = True
                continue
            if item.startswith(("--against=", "--ab-rounds=")):
                continue
            forwarded.append(item)
        rows = compare_checkouts(args.against.resolve(), forwarded, args.ab_rounds)
        print(f"qpth/exact ratio, this checkout against {args.against} (median of {args.ab_rounds} runs each)")
        print(format_comparison(rows))
        return rows
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
