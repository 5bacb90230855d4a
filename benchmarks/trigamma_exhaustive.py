"""Compare `model.numpy_learner.trigamma` with scipy's float32 `polygamma(1, x)` on EVERY float32 in
[low, high) (default [1, 3.4e38): the whole range CBF-Beta's concentrations can take) and print
how many differ, with the first few. About 70 s on a 2-core AMD EPYC for the default range.

    python benchmarks/trigamma_exhaustive.py
    python benchmarks/trigamma_exhaustive.py --low 1 --high 2
"""

from __future__ import annotations

import argparse
import time


def compare(low: float, high: float, chunk: int = 1 << 22) -> tuple[int, int, list[tuple[float, float, float]]]:
    """(values compared, values that differ, up to 10 of (x, scipy's, ours))."""
    import numpy as np
    from scipy import special

    from model.numpy_learner import trigamma

    # float32 bit patterns of positive floats increase with their value: walk them in chunks
    start, stop = (int(np.float32(v).view(np.int32)) for v in (low, high))
    total, differ, examples = 0, 0, []
    for first in range(start, stop, chunk):
        x = np.arange(first, min(first + chunk, stop), dtype=np.int32).view(np.float32)
        ours, theirs = trigamma(x), special.polygamma(1, x)
        bad = ours != theirs
        total, differ = total + x.size, differ + int(bad.sum())
        examples += list(zip(x[bad].tolist(), theirs[bad].tolist(), ours[bad].tolist()))[:10 - len(examples)]
    return total, differ, examples


def main(argv: list[str] | None = None) -> None:
    from tasks import numerics

    numerics.apply("pinned")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=float, default=1.0, help="first float32 compared (>= 1)")
    parser.add_argument("--high", type=float, default=float(3.4e38), help="end of the range (exclusive)")
    args = parser.parse_args(argv)
    if not 1.0 <= args.low < args.high:
        parser.error(f"--low {args.low} --high {args.high}: need 1 <= low < high")
    from tasks.report.provenance import cpu_model

    started = time.perf_counter()
    total, differ, examples = compare(args.low, args.high)
    print(f"trigamma vs scipy.special.polygamma(1, x), every float32 in [{args.low:g}, {args.high:g}): "
          f"{total:,} values, {differ:,} differ ({time.perf_counter() - started:.0f} s, {cpu_model()})")
    for x, theirs, ours in examples:
        print(f"  x={x!r}: scipy {theirs!r}, ours {ours!r}")


if __name__ == "__main__":
    main()
