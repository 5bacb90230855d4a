"""Evaluation speed: a cell's evaluation with its ended episodes dropped from the batch vs kept,
side by side in one run.

    python benchmarks/eval_throughput.py                   # every algorithm, seed 0, the committed checkpoints
    python benchmarks/eval_throughput.py --algos barriernet --rounds 3
    python benchmarks/eval_throughput.py --quick           # tiny freshly trained cells, short episodes (a smoke test)

For each algorithm, `tasks.evaluate.run` evaluates the cell's checkpoint
(``results/train/<algo>-s<seed>/model.pt`` of this checkout, read only; the outputs go to a
temporary folder) once per round in each of two ways: ``dropped``, with
`tasks.evaluate.COMPACT_FRACTION` at its value (a batched env drops its ended episodes as it goes,
the default), and ``kept``, with it at infinity (every env is stepped until the longest episode of
its batch ends: evaluation before the change). The two alternate round after round, so drifts in
the machine's load reach both alike.

Printed: per algorithm, the fastest wall seconds of each way, the ratio kept / dropped, the mean
episode length of the cell's episodes against `env.max_steps`, and whether both ways gave the same
episode rows (``decision_ms`` aside: it is a timing); the CPU model heads the table. The whole
cell is timed: the filter sweep (dev episodes) and every arm on both splits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run as a script

from side_by_side import ALGOS, REPO, cpu_model, parse_sets  # noqa: E402

QUICK_OVERRIDES = {
    "train.total_steps": 8192, "eval.dev_episodes": 12, "eval.test_episodes": 20, "env.max_steps": 120,
    "eval.filter_sweep.gammas": [0.2], "eval.filter_sweep.robust_margins": [0.0],
}  # fmt: skip
"""--quick: one PPO iteration per cell (trained here), few and short episodes, a two-filter sweep."""


def _episodes_without_timing(workdir: Path, algo: str, seed: int):
    import pandas as pd

    from tasks.artifacts import EPISODES_FILE, eval_dir

    return pd.read_csv(eval_dir(workdir, algo, seed) / EPISODES_FILE).drop(columns="decision_ms")


def measure(algos: list[str], rounds: int, seed: int, overrides: dict, quick: bool) -> list[dict]:
    """Time `tasks.evaluate.run` per algorithm, dropped vs kept, alternating; returns one row per
    algorithm: {algo, dropped_s, kept_s, ratio, mean_length, max_steps, same_rows}."""
    from tasks import evaluate, numerics
    from tasks.artifacts import model_path
    from tasks.params import load_params

    params = load_params(overrides={**(QUICK_OVERRIDES if quick else {}), **overrides})
    numerics.require(params.numerics.mode)
    default_fraction = evaluate.COMPACT_FRACTION
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        work = Path(tmp)
        for algo in algos:
            checkpoint = model_path(work, algo, seed)
            if quick:  # a fresh one-iteration cell: a clean clone has no checkpoints (DVC outputs)
                from tasks import train

                saved = os.environ.get("BARRIERNET_STATE_DIR")
                os.environ["BARRIERNET_STATE_DIR"] = str(work / "train-state")  # not the repo's .cache
                try:
                    train.run(params, work, algo, seed)
                finally:
                    if saved is None:
                        del os.environ["BARRIERNET_STATE_DIR"]
                    else:
                        os.environ["BARRIERNET_STATE_DIR"] = saved
            else:
                committed = model_path(REPO, algo, seed)
                if not committed.exists():
                    raise SystemExit(f"no checkpoint {committed}: run the main job (bash scripts/main.sh) or "
                                     "`dvc pull` first, or use --quick")
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(committed, checkpoint)
            seconds: dict[str, list[float]] = {"dropped": [], "kept": []}
            tables = {}
            try:
                for _ in range(rounds):
                    for way, fraction in (("kept", float("inf")), ("dropped", default_fraction)):
                        evaluate.COMPACT_FRACTION = fraction
                        started = time.perf_counter()
                        evaluate.run(params, work, algo, seed)
                        seconds[way].append(time.perf_counter() - started)
                        tables[way] = _episodes_without_timing(work, algo, seed)
            finally:
                evaluate.COMPACT_FRACTION = default_fraction
            dropped, kept = min(seconds["dropped"]), min(seconds["kept"])
            rows.append({
                "algo": algo, "dropped_s": dropped, "kept_s": kept, "ratio": kept / dropped,
                "mean_length": float(tables["dropped"]["length"].mean()), "max_steps": params.env.max_steps,
                "same_rows": bool(tables["dropped"].equals(tables["kept"])),
            })  # fmt: skip
    return rows


def table(rows: list[dict], rounds: int) -> str:
    lines = [f"CPU: {cpu_model()}; {os.cpu_count()} CPUs; fastest of {rounds} round(s) each; load average "
             f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else f"CPU: {cpu_model()}",
             "",
             "| algo | kept (s) | dropped (s) | kept / dropped | mean episode length / max | same episode rows |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['kept_s']:.2f} | {r['dropped_s']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['mean_length']:.0f} / {r['max_steps']} | {'yes' if r['same_rows'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--rounds", type=int, default=2, help="evaluations of each way per algorithm (>= 1)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed whose checkpoint is evaluated")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override for both ways, e.g. eval.test_episodes=100")
    parser.add_argument("--quick", action="store_true", help="tiny freshly trained cells, few short episodes")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: accepted: an integer >= 1")
    rows = measure(args.algos, args.rounds, args.seed, parse_sets(args.overrides), args.quick)
    print(table(rows, args.rounds))
    return rows


if __name__ == "__main__":
    from tasks import numerics as _numerics

    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:]))
    main()
