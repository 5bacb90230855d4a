"""Training throughput of this checkout against another commit, side by side in one run.

    python benchmarks/train_throughput.py --against 4f49af4            # the default batch, 6 rounds
    python benchmarks/side_by_side.py 4f49af4 --rounds 10 --algos baseline barriernet

The other commit's tracked files are unpacked (`git archive`) under `.cache/snapshots/<commit>`
(git-ignored, kept for the next run). Two long-lived child processes, one per checkout, each import their own
code with the pinned numerics, build a `tasks.train.Trainer` per algorithm from their own
params.yaml (the same budget overrides in both) and run one warm-up iteration. Then the parent
alternates: one iteration of every algorithm in one checkout, then in the other, round after
round, the first side swapping every round (old-new, new-old, ...). Drifts in the machine's load
therefore reach both sides alike, and so does any edge of going first or second in a round. Only
one child computes at a time, and both are pinned to the same CPU (`shared_cpu`): on separate CPUs
the child started second ran 2-7 % faster in A/A runs (this checkout against HEAD), whichever
checkout it held; pinned together, two A/A runs of 12 rounds read 0.98-1.03x and 0.96-1.07x,
neither side favoured. So a ratio within about 7 % of 1 is noise here. Use an even number of rounds.

Printed: per algorithm, env-steps per wall second and per CPU second of each side and the ratio
(new / old) with a 95 % interval (`speed_ratio`: a bootstrap over the paired rounds), with the
CPU model and the load average. The wall-clock figure is the measure; the
CPU-second figure approximates an idle core on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALGOS = ("baseline", "barriernet", "cbf_beta", "shielded")

# The child: reads "round" lines on stdin, answers one JSON line per round. Written against the
# oldest interface it must run (Trainer(params, algo, seed).train_one_update(), load_params with
# overrides), so it runs unchanged in any commit since the train stage took that shape.
CHILD = r"""
import json, os, sys, time
if os.environ.get("SIDE_BY_SIDE_CPU"):  # before torch starts any thread
    os.sched_setaffinity(0, {int(os.environ["SIDE_BY_SIDE_CPU"])})
cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
try:
    from tasks import numerics
    numerics.apply("pinned")
    mode = "pinned"
except ImportError:  # a commit before the pinned numerics
    mode = "host default"
import torch
from tasks.params import load_params
from tasks.train import Trainer

algos, overrides, threads = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
params = load_params(overrides=overrides)
trainers = {}
for algo in algos:
    trainers[algo] = Trainer(params, algo, 0)
    trainers[algo].train_one_update()  # warm-up: allocations, lazy init, JIT caches
batch = params.train.num_envs * params.train.rollout_steps
print(json.dumps({"ready": True, "batch": batch, "numerics": mode, "torch": torch.__version__, "cpus": cpus}),
      flush=True)
for line in sys.stdin:
    if line.strip() != "round":
        break
    out = {}
    for algo, trainer in trainers.items():
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train_one_update()
        out[algo] = [time.perf_counter() - wall, time.process_time() - cpu]
    print(json.dumps(out), flush=True)
"""


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def snapshot(commit: str, root: Path | None = None) -> Path:
    """The tracked files of `commit`, unpacked once under `root` (default .cache/snapshots/, git-ignored).

    `git archive` rather than `git worktree add`: a plain copy registers nothing in .git, and a
    half-written snapshot is never reused (it is unpacked beside and renamed into place)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{commit}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"--against {commit!r}: not a commit of this repository ({sha.stderr.strip()})")
    sha = sha.stdout.strip()
    path = (root or REPO / ".cache" / "snapshots") / sha[:12]
    if not path.is_dir():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        partial.rename(path)
    return path


@dataclass
class Side:
    """One checkout's child process and its accumulated per-algorithm times."""

    label: str
    root: Path
    proc: subprocess.Popen
    info: dict
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    per_round: dict[str, list[float]] = field(default_factory=dict)  # each round's wall seconds

    def round(self) -> None:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.label} child ({self.root}) died; its stderr is above")
        for algo, (wall, cpu) in json.loads(line).items():
            self.wall[algo] = self.wall.get(algo, 0.0) + wall
            self.cpu[algo] = self.cpu.get(algo, 0.0) + cpu
            self.per_round.setdefault(algo, []).append(wall)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(60)


def speed_ratio(reference: list[float], candidate: list[float], confidence: float = 0.95, draws: int = 4000,
                seed: int = 0) -> tuple[float, float, float]:
    """The candidate's speed relative to the reference's, sum(reference) / sum(candidate), from two
    lists of per-round seconds (the same rounds, paired), and its percentile bootstrap interval:
    rounds resampled with replacement, both columns of a round together, so a drift of the
    machine that slows a whole round cancels in each pair. It treats rounds as independent, which
    a slow phase spanning many rounds is not: read it as a floor on the uncertainty. Returns
    (ratio, low, high)."""
    import numpy as np

    a, b = np.asarray(reference, float), np.asarray(candidate, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"speed_ratio takes two equal-length lists of per-round seconds; got {a.shape} and {b.shape}")
    picks = np.random.default_rng(seed).integers(0, a.size, size=(draws, a.size))
    resampled = a[picks].sum(1) / b[picks].sum(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, (tail, 1 - tail))
    return float(a.sum() / b.sum()), float(low), float(high)


def shared_cpu() -> int | None:
    """The one CPU both children run on (the last this process may use), or None where the OS
    cannot pin. Only one child computes at a time, so they never compete for it; on separate
    CPUs the child started second ran 2-7 % faster in A/A runs on a 2-core VM, whichever
    checkout it held."""
    return max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def start(label: str, root: Path, algos: list[str], overrides: dict, threads: int) -> Side:
    """Launch a checkout's child; `ready` waits for its warm-up (both sides start together)."""
    cpu = shared_cpu() if threads == 1 else None  # more threads than one CPU would only queue
    env = {**os.environ, "PYTHONPATH": str(root), **({"SIDE_BY_SIDE_CPU": str(cpu)} if cpu is not None else {})}
    # absolute: the child runs in the checkout, where a relative interpreter path (".venv/bin/python"
    # when the venv is on PATH by a relative entry) would not resolve
    python = os.path.abspath(sys.executable)
    proc = subprocess.Popen([python, "-c", CHILD, json.dumps(algos), json.dumps(overrides), str(threads)],
                            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return Side(label, root, proc, {})


def ready(side: Side) -> None:
    line = side.proc.stdout.readline()
    if not line:
        raise SystemExit(f"the {side.label} child ({side.root}) failed to start; its stderr is above")
    side.info = json.loads(line)


def compare(against: str, algos: list[str], rounds: int, overrides: dict, threads: int = 1,
            snapshots: Path | None = None) -> str:
    """Run both checkouts round-robin; return the printed table."""
    old_root = snapshot(against, snapshots)
    old = start(f"old ({against})", old_root, algos, overrides, threads)
    new = start("new (this checkout)", REPO, algos, overrides, threads)
    loads = []
    try:
        ready(old)
        ready(new)
        if old.info["batch"] != new.info["batch"]:
            raise SystemExit(f"the two checkouts' batches differ ({old.info['batch']} vs {new.info['batch']}); "
                             "pass the same train.num_envs and train.rollout_steps with --set")
        for index in range(rounds):
            # ABBA: the side that goes first swaps every round, so whatever favours the first (or
            # second) turn of a round -- caches, clocks, the other child just gone idle -- reaches both
            for side in ((old, new) if index % 2 == 0 else (new, old)):
                side.round()
            loads.append(os.getloadavg()[0])
    finally:
        old.close()
        new.close()
    steps = rounds * new.info["batch"]
    head = (f"{'algorithm':<11} | {'old steps/s':>11} | {'new steps/s':>11} | {'ratio':>6} | {'95 % CI':>14} | "
            f"{'old steps/CPU-s':>15} | {'new steps/CPU-s':>15} | {'CPU ratio':>9}")
    lines = [
        f"training throughput, {against} vs this checkout: {rounds} alternating rounds (ABBA order) of {steps // rounds} "
        f"env-steps per algorithm, warm-up excluded; {cpu_model()}, {os.cpu_count()} CPUs, {threads} torch "
        f"thread(s), children on CPU(s) old {old.info.get('cpus')} / new {new.info.get('cpus')}; numerics old {old.info['numerics']} / new "
        f"{new.info['numerics']}; torch {new.info['torch']}; "
        f"load average {min(loads):.2f}-{max(loads):.2f}",
        head, "-" * len(head),
    ]
    for algo in algos:
        o_sps, n_sps = steps / old.wall[algo], steps / new.wall[algo]
        o_cpu, n_cpu = steps / old.cpu[algo], steps / new.cpu[algo]
        _, low, high = speed_ratio(old.per_round[algo], new.per_round[algo])
        interval = f"[{low:.2f}, {high:.2f}]"
        lines.append(f"{algo:<11} | {o_sps:>11,.0f} | {n_sps:>11,.0f} | {n_sps / o_sps:>5.2f}x | {interval:>14} | "
                     f"{o_cpu:>15,.0f} | {n_cpu:>15,.0f} | {n_cpu / o_cpu:>8.2f}x")
    lines.append("95 % CI: percentile bootstrap over rounds, each round's old and new seconds resampled together "
                 "(rounds taken as independent: a floor on the uncertainty)")
    if "baseline" in new.wall:
        ratios = []
        for a in algos:
            if a != "baseline":
                ratio, low, high = speed_ratio(new.per_round["baseline"], new.per_round[a])
                ratios.append(f"{a} {ratio:.2f}x [{low:.2f}, {high:.2f}]")
        lines.append("new checkout, env-steps/s relative to the baseline's in the same rounds (issue 17 target >= 0.9x; "
                     f"95 % CI as above): {', '.join(ratios)}")
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict:
    """KEY=VALUE (VALUE as JSON when it parses, else a string) -> {key: value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.num_envs=256")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("against", help="the commit to compare with (its files unpacked under .cache/snapshots/)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds (one iteration per algorithm each)")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1: per core)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override for both checkouts (repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: accepted: >= 1")
    print(compare(args.against, args.algos, args.rounds, parse_sets(args.overrides), args.threads), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
