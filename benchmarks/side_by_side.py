"""Training throughput of this checkout against another commit, side by side in one run.

    python benchmarks/train_throughput.py --against 4f49af4            # the default batch
    python benchmarks/side_by_side.py 4f49af4 --rounds 48 --processes 4 --algos baseline barriernet

The other commit's tracked files are unpacked (`git archive`) under `.cache/snapshots/<commit>`
(git-ignored, kept for the next run). A pair of long-lived child processes, one per checkout, each
import their own code with the pinned numerics, build a `tasks.train.Trainer` per algorithm from
their own params.yaml (the same budget overrides in both) and run one warm-up iteration. Then the
parent alternates: one iteration of every algorithm in one checkout, then in the other, round
after round, the first side swapping every round (old-new, new-old, ...). Drifts in the machine's
load therefore reach both sides alike, and so does any edge of going first or second in a round.
Only one child computes at a time, and both are pinned to the same CPU (`shared_cpu`): on separate
CPUs the child started second ran 2-7 % faster in A/A runs (this checkout against HEAD), whichever
checkout it held. Use an even number of rounds.

`--processes P` (default 4) runs P such pairs one after another, the rounds split between them
and the pair's first-started side alternating. Why: a child process keeps its own speed for its
whole life, a few percent either way (same-code A/A pairs read 0.95-1.04x, each with a round-level
interval that left out 1; docs/MEASUREMENTS.md), so only several processes per side show that
spread, and the printed interval is then a t interval over the pairs (`speed_ratio`).

Printed: per algorithm, env-steps per wall second and per CPU second of each side and the ratio
(new / old) with its 95 % interval, with the CPU model and the load average. The wall-clock figure
is the measure; the CPU-second figure approximates an idle core on a shared machine.
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
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds, summed over the rounds
    per_round: dict[str, list[float]] = field(default_factory=dict)  # each round's wall seconds

    def round(self) -> None:
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.label} child ({self.root}) died; its stderr is above")
        for algo, (wall, cpu) in json.loads(line).items():
            self.cpu[algo] = self.cpu.get(algo, 0.0) + cpu
            self.per_round.setdefault(algo, []).append(wall)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(60)


def speed_ratio(reference: list[list[float]], candidate: list[list[float]], confidence: float = 0.95,
                draws: int = 4000, seed: int = 0) -> tuple[float, float, float, str]:
    """The candidate's speed relative to the reference's, total reference seconds / total candidate
    seconds, and an interval. reference, candidate: per child process, its per-round seconds (paired:
    the same processes' same rounds). Returns (ratio, low, high, what the interval resamples).

    Why per process: each child process keeps its own speed for its whole life (its memory
    layout, hash seeds, what shares cache sets with what), a few percent either way: same-code
    A/A pairs on a 2-core EPYC read 0.95-1.04x with round-level intervals that left out 1 (docs/
    MEASUREMENTS.md). So with two or more process pairs the interval is a t interval over the
    pairs' log ratios, which that spread enters. With one pair only the rounds can be resampled
    (a percentile bootstrap, a round's two sides together, so a drift that slows a whole round
    cancels): that interval leaves the process spread out, and says so."""
    import numpy as np
    from scipy import stats

    if len(reference) != len(candidate) or not reference or any(
            len(a) != len(b) or not a for a, b in zip(reference, candidate)):
        raise ValueError("speed_ratio takes per-process lists of per-round seconds, the same shape on both sides; got "
                         f"{[len(a) for a in reference]} and {[len(b) for b in candidate]}")
    ratio = sum(map(sum, reference)) / sum(map(sum, candidate))
    tail = (1 - confidence) / 2
    if len(reference) == 1:
        a, b = np.asarray(reference[0], float), np.asarray(candidate[0], float)
        picks = np.random.default_rng(seed).integers(0, a.size, size=(draws, a.size))
        low, high = np.quantile(a[picks].sum(1) / b[picks].sum(1), (tail, 1 - tail))
        return ratio, float(low), float(high), "rounds of one process pair (leaves out the process-to-process spread)"
    logs = np.log([sum(a) / sum(b) for a, b in zip(reference, candidate)])
    half = stats.t.ppf(1 - tail, logs.size - 1) * logs.std(ddof=1) / np.sqrt(logs.size)
    centre = logs.mean()
    return ratio, float(np.exp(centre - half)), float(np.exp(centre + half)), f"{logs.size} process pairs (t interval)"


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
            snapshots: Path | None = None, processes: int = 1) -> str:
    """Run both checkouts round-robin in `processes` successive pairs of child processes (the one
    started first alternating), `rounds` rounds in all, split evenly (at least 2 per pair); return
    the printed table."""
    if processes < 1 or rounds < 1:
        raise SystemExit(f"processes={processes}, rounds={rounds}; accepted: both >= 1")
    per_pair = max(2, -(-rounds // processes))
    per_pair += per_pair % 2  # ABBA needs an even count
    old_root = snapshot(against, snapshots)
    old_rounds, new_rounds, cpu = {a: [] for a in algos}, {a: [] for a in algos}, {"old": {}, "new": {}}
    loads = []
    for pair in range(processes):
        labels = ((f"old ({against})", old_root), ("new (this checkout)", REPO))
        started = [start(label, root, algos, overrides, threads) for label, root in (labels if pair % 2 == 0
                                                                                     else labels[::-1])]
        old, new = started if pair % 2 == 0 else started[::-1]
        try:
            for side in started:
                ready(side)
            if old.info["batch"] != new.info["batch"]:
                raise SystemExit(f"the two checkouts' batches differ ({old.info['batch']} vs {new.info['batch']}); "
                                 "pass the same train.num_envs and train.rollout_steps with --set")
            for index in range(per_pair):
                # ABBA: the side that goes first swaps every round, so whatever favours the first (or
                # second) turn of a round -- caches, clocks, the other child just gone idle -- reaches both
                for side in ((old, new) if index % 2 == 0 else (new, old)):
                    side.round()
                loads.append(os.getloadavg()[0])
        finally:
            old.close()
            new.close()
        for algo in algos:
            old_rounds[algo].append(old.per_round[algo])
            new_rounds[algo].append(new.per_round[algo])
            for name, side in (("old", old), ("new", new)):
                cpu[name][algo] = cpu[name].get(algo, 0.0) + side.cpu[algo]
    batch = new.info["batch"]
    steps = processes * per_pair * batch
    head = (f"{'algorithm':<11} | {'old steps/s':>11} | {'new steps/s':>11} | {'ratio':>6} | {'95 % CI':>14} | "
            f"{'old steps/CPU-s':>15} | {'new steps/CPU-s':>15} | {'CPU ratio':>9}")
    lines = [
        f"training throughput, {against} vs this checkout: {processes} pair(s) of child processes x {per_pair} "
        f"alternating rounds (ABBA order) of {batch} env-steps per algorithm, warm-up excluded; {cpu_model()}, "
        f"{os.cpu_count()} CPUs, {threads} torch thread(s), children on CPU(s) old {old.info.get('cpus')} / new "
        f"{new.info.get('cpus')}; numerics old {old.info['numerics']} / new {new.info['numerics']}; torch "
        f"{new.info['torch']}; load average {min(loads):.2f}-{max(loads):.2f}",
        head, "-" * len(head),
    ]
    resampled = ""
    for algo in algos:
        o_wall, n_wall = sum(map(sum, old_rounds[algo])), sum(map(sum, new_rounds[algo]))
        o_cpu, n_cpu = steps / cpu["old"][algo], steps / cpu["new"][algo]
        _, low, high, resampled = speed_ratio(old_rounds[algo], new_rounds[algo])
        interval = f"[{low:.2f}, {high:.2f}]"
        lines.append(f"{algo:<11} | {steps / o_wall:>11,.0f} | {steps / n_wall:>11,.0f} | {o_wall / n_wall:>5.2f}x | "
                     f"{interval:>14} | {o_cpu:>15,.0f} | {n_cpu:>15,.0f} | {n_cpu / o_cpu:>8.2f}x")
    lines.append(f"95 % CI over {resampled}")
    if "baseline" in algos:
        ratios = []
        for a in algos:
            if a != "baseline":
                ratio, low, high, _ = speed_ratio(new_rounds["baseline"], new_rounds[a])
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
    parser.add_argument("--rounds", type=int, default=8,
                        help="alternating rounds in all (one iteration per algorithm each), split over the process pairs")
    parser.add_argument("--processes", type=int, default=4,
                        help="successive pairs of child processes (>= 2 gives an interval with the process spread in it)")
    parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1: per core)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override for both checkouts (repeatable)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.processes < 1:
        parser.error(f"--rounds {args.rounds}, --processes {args.processes}: accepted: both >= 1")
    print(compare(args.against, args.algos, args.rounds, parse_sets(args.overrides), args.threads,
                  processes=args.processes), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
