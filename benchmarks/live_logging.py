"""The training loop's DVCLive logging: every point synced against syncs at checkpoints only.

`tasks.train._log_point` appends one row to every curve file per logged update; `sync` also calls
`Live.next_step`, which in dvclive 3.49 rereads every curve file of the run (`_get_live_data`,
whether or not Studio is set up), so a run that syncs every update pays for all its earlier rows
again each time: the cost per update grows with the run. The training loop syncs only where it
writes a checkpoint (`train.checkpoint_every`) and on the last point; a finished run leaves the
same files either way (tests/test_train.py).

Both ways log the same records (the metric names of one real training update of `--algo`,
global_step advancing by the batch) into fresh directories, one after the other, alternating
which goes first, `--repeats` times; printed: the median milliseconds per update of each and
their ratio, per run length, with the CPU.

    python benchmarks/live_logging.py                          # 123 and 615 updates (1 M and 5 M steps)
    python benchmarks/live_logging.py --updates 123 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tasks import numerics as _numerics

    _numerics.apply("pinned")

sys.path.insert(0, str(Path(__file__).parent))  # its sibling, also when loaded by file path
from side_by_side import cpu_model  # noqa: E402


def one_record(algo: str) -> dict[str, float]:
    """The stats of one real (tiny) training update of `algo`, as the training loop logs them."""
    from tasks.params import load_params
    from tasks.train import Trainer

    params = load_params(overrides={"train.num_envs": 8, "train.rollout_steps": 16, "train.num_minibatches": 2,
                                    "train.update_epochs": 1, "train.total_steps": 8 * 16 * 2})
    trainer = Trainer(params, algo, 0)
    return {"global_step": 0.0, **trainer.train_one_update()}


def log_run(record: dict[str, float], updates: int, batch: int, sync_every: int | None, root: Path) -> float:
    """Seconds to log `updates` points through `_log_point` into a fresh Live under root;
    sync_every None: every point synced (what the loop did before), else every sync_every-th
    and the last."""
    from tasks.train import _live_logger, _log_point

    live = _live_logger(root)
    started = time.perf_counter()
    for update in range(1, updates + 1):
        point = {**record, "global_step": float(update * batch)}
        sync = sync_every is None or update % sync_every == 0 or update == updates
        _log_point(live, point, sync=sync)
    live.end()
    return time.perf_counter() - started


def measure(record, updates: int, batch: int, checkpoint_every: int, repeats: int) -> tuple[float, float]:
    """Median ms per update of (every point synced, synced at checkpoints), alternating order."""
    every, sparse = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = [("every", None), ("sparse", checkpoint_every)]
            for name, sync_every in order if r % 2 == 0 else order[::-1]:
                seconds = log_run(record, updates, batch, sync_every, Path(tmp) / f"{name}-{r}")
                (every if sync_every is None else sparse).append(seconds * 1e3 / updates)
    return statistics.median(every), statistics.median(sparse)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, nargs="+", default=[123, 615],
                        help="run lengths in updates (default: 1 M and 5 M env-steps at 8,192 per update)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way per length (median)")
    parser.add_argument("--algo", default="barriernet", help="whose metric names to log (default barriernet)")
    return parser


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    from tasks.params import load_params

    args = build_parser().parse_args(argv)
    if min(args.updates) < 1 or args.repeats < 1:
        raise SystemExit(f"--updates {args.updates} --repeats {args.repeats}: accepted: integers >= 1")
    tp = load_params().train
    record = one_record(args.algo)
    rows = [(n, *measure(record, n, tp.batch_size, tp.checkpoint_every, args.repeats)) for n in args.updates]
    print(f"DVCLive logging of {len(record) - 1} metrics ({args.algo}) per update; sync at checkpoints = every "
          f"{tp.checkpoint_every} updates and the last; median of {args.repeats}; {cpu_model()}")
    print(f"{'updates':>8} | {'every point synced ms/update':>28} | {'at checkpoints ms/update':>24} | ratio")
    for n, every, sparse in rows:
        print(f"{n:>8} | {every:>28.2f} | {sparse:>24.2f} | {every / sparse:.1f}x")
    return rows


if __name__ == "__main__":
    main()
