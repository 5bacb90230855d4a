"""Does a policy trained by one learner learn what one trained by the other learned? Held-out rates, per seed.

    python benchmarks/numpy_learning.py --algo baseline               # seeds 0-4, ~4 min on one core
    python benchmarks/numpy_learning.py --algo barriernet --learner torch --seeds 0 1 2 3 4
    python benchmarks/numpy_learning.py --algo baseline --quick       # tiny budgets (a smoke test)

`train.learner` chooses between torch's update (autograd, Adam) and the same algorithm as
whole-array NumPy calls (`model/numpy_learner.py`, with the rollout's forwards in NumPy too,
`model/numpy_rollout.py`). They compute other bits (OpenBLAS products, Eigen's rational tanh),
so issue 17 asks that they give the same final capture and collision rates within the seed
intervals. This trains each seed's cell with the default params and the other learner (`--learner`,
by default the one params.yaml does not use) through `tasks.train.run`, in a throw-away workdir
and state directory under ``.cache/numpy_learning/`` (so no checkpoint of the real training is
resumed), evaluates it with `tasks.evaluate.run` on the same held-out test episodes (env seeds
``eval.test_seed_base`` +), its own arm only, and sets each seed's test capture and collision
rates beside those of the committed cell (``results/eval/<algo>-s<seed>``, trained by
params.yaml's learner).

Printed: the CPU, a table per seed, the mean over the seeds of each learner with a t interval
over the seeds (training seeds resampled; the test episodes are the same for both), and the
paired difference (this run - committed) with its t interval. Nothing here changes training or
the committed results.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo (tasks, model)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side

from tasks import numerics  # noqa: E402  (before torch: the pinned environment)

numerics.apply(numerics.mode_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from tasks.params import load_params  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUICK = {"train.total_steps": 4096, "train.num_envs": 32, "train.rollout_steps": 16, "eval.test_episodes": 16,
         "eval.dev_episodes": 8, "eval.num_envs": 64}


def test_rates(episodes_csv: Path, arm: str) -> tuple[float, float, int]:
    """(capture rate, collision rate, episodes) of `arm` on the test split of an episodes.csv."""
    with open(episodes_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["arm"] == arm and r["split"] == "test"]
    if not rows:
        raise SystemExit(f"{episodes_csv}: no test episodes of arm {arm!r}")
    return (sum(r["outcome"] == "capture" for r in rows) / len(rows),
            sum(r["outcome"] == "collision" for r in rows) / len(rows), len(rows))


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t interval over the values (seeds); a single value gets (v, nan, nan)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()), math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def zero_upper(episodes: int, confidence: float = 0.95) -> float:
    """The exact (Clopper-Pearson) upper bound of a rate with no event in `episodes` episodes."""
    return 1.0 - ((1.0 - confidence) / 2) ** (1.0 / episodes)


def train_and_evaluate(algo: str, seed: int, overrides: dict, workdir: Path, learner: str) -> dict:
    """Train one cell with `learner` and evaluate it, in `workdir`; returns its test rates, the
    learner its training summary records, and the training time."""
    import json

    from tasks import evaluate, train

    params = load_params(overrides={"eval.arms": [algo], "eval.filter_sweep.enabled": False,
                                    "train.learner": learner, **overrides})
    start = time.perf_counter()
    train.run(params, workdir, algo, seed)
    trained = time.perf_counter() - start
    evaluate.run(params, workdir, algo, seed)
    capture, collision, episodes = test_rates(workdir / "results" / "eval" / f"{algo}-s{seed}" / "episodes.csv", algo)
    summary = json.loads((workdir / "results" / "train" / f"{algo}-s{seed}" / "summary.json").read_text())
    return {"capture": capture, "collision": collision, "episodes": episodes, "train_s": trained,
            "learner": summary["learner"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="baseline", choices=("baseline", "barriernet", "cbf_beta", "shielded"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test (no committed cell to compare)")
    parser.add_argument("--learner", choices=("torch", "numpy"), default=None,
                        help="the learner to train with (default: the one params.yaml does not use)")
    parser.add_argument("--workdir", default=str(REPO / ".cache" / "numpy_learning"), help="throw-away outputs")
    args = parser.parse_args(argv)
    from side_by_side import cpu_model

    import torch

    torch.set_num_threads(1)
    root = Path(args.workdir) / args.algo
    if root.exists():
        shutil.rmtree(root)
    overrides = QUICK if args.quick else {}
    committed_learner = load_params().train.learner
    learner = args.learner or {"torch": "numpy", "numpy": "torch"}[committed_learner]
    ours_name, theirs_name = f"{learner} learner", f"committed ({committed_learner})"
    print(f"{cpu_model()}, numerics {os.environ.get(numerics.MARKER)}, {args.algo}, seeds {args.seeds}, "
          f"trained by the {learner} learner against the committed cells ({committed_learner} learner)"
          + (" [--quick: tiny budgets, rates are not meaningful]" if args.quick else ""))
    rows = []
    saved_state_dir = os.environ.get("BARRIERNET_STATE_DIR")
    os.environ["BARRIERNET_STATE_DIR"] = str(root / "state")  # never resume the real training's checkpoints
    try:
        for seed in args.seeds:
            ours = train_and_evaluate(args.algo, seed, overrides, root, learner)
            committed = REPO / "results" / "eval" / f"{args.algo}-s{seed}" / "episodes.csv"
            theirs = test_rates(committed, args.algo) if committed.is_file() and not args.quick else (math.nan,) * 3
            rows.append({"seed": seed, **ours, "committed_capture": theirs[0], "committed_collision": theirs[1]})
    finally:
        if saved_state_dir is None:
            os.environ.pop("BARRIERNET_STATE_DIR", None)
        else:
            os.environ["BARRIERNET_STATE_DIR"] = saved_state_dir
    print("\nheld-out test episodes, the algorithm's own arm (no filter)")
    print(f"| seed | episodes | capture, {ours_name} | capture, {theirs_name} | collision, {ours_name} | "
          f"collision, {theirs_name} | training s | learner (its summary) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['episodes']} | {r['capture']:.1%} | {r['committed_capture']:.1%} | "
              f"{r['collision']:.1%} | {r['committed_collision']:.1%} | {r['train_s']:.0f} | {r['learner']} |")
    summary = {}
    print(f"\nover the {len(rows)} seeds: mean [95 % t interval over the training seeds; the test episodes are shared]")
    print(f"| rate | {ours_name} | {theirs_name} | this run - committed, paired by seed |\n|---|---|---|---|")
    for rate in ("capture", "collision"):
        ours, theirs = [r[rate] for r in rows], [r[f"committed_{rate}"] for r in rows]
        a, b, d = t_interval(ours), t_interval(theirs), t_interval([x - y for x, y in zip(ours, theirs)])
        summary[rate] = {"ours": a, "committed": b, "difference": d}
        cells = []
        for values, (mean, low, high) in ((ours, a), (theirs, b)):
            if not any(values):  # no event at all: the pooled exact upper bound, never [0, 0]
                pooled = sum(r["episodes"] for r in rows)
                cells.append(f"0 of {pooled} episodes (upper bound {zero_upper(pooled):.2%})")
            else:
                cells.append(f"{mean:.1%} [{low:.1%}, {high:.1%}]")
        paired = ("none on either side" if not any(ours) and not any(theirs)
                  else f"{d[0]:+.1%} [{d[1]:+.1%}, {d[2]:+.1%}]")
        print(f"| {rate} | {cells[0]} | {cells[1]} | {paired} |")
    return {"rows": rows, "summary": summary, "learner": learner}


if __name__ == "__main__":
    main()
