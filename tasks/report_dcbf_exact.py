"""The report's dcbf_exact section: its cost over the first-order DCBF and its one-step safety.

Reads results/qp_benchmark/dcbf_exact.csv (timings and counts) and the ``dcbf_exact`` key of
results/qp_benchmark/metrics.json (the gamma and tolerances the counts used), both written by the
qp_benchmark stage (tasks/qp_benchmark.py), and renders one markdown section.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from tasks.artifacts import QP_BENCHMARK_DIR, QP_METRICS_PATH

__all__ = ["dcbf_exact_section"]

# The stage's columns, written out here rather than imported: importing tasks.qp_benchmark would
# make the report depend on (and load) the benchmark's code. Paths: tasks/artifacts.py.
DCBF_EXACT_PATH = Path(f"{QP_BENCHMARK_DIR}/dcbf_exact.csv")
METRICS_PATH = QP_METRICS_PATH
DCBF_COLUMNS = (
    "method", "pass", "device", "dtype", "obstacles", "batch_size", "per_problem_us", "cost_vs_first_order",
    "decay_violations_feasible", "next_barrier_negative", "infeasible", "start_negative", "mean_qp_rounds",
)

PASS = "forward+backward"
DEVICE = "cpu"
DTYPES = ("float64", "float32")


def _read(workdir: Path) -> tuple[pd.DataFrame, dict]:
    csv_path, metrics_path = workdir / DCBF_EXACT_PATH, workdir / METRICS_PATH
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} is missing; run the qp_benchmark stage (python -m tasks qp_benchmark) first"
        )
    table = pd.read_csv(csv_path)
    missing = [c for c in DCBF_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path} lacks columns {missing}; rerun the qp_benchmark stage")
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} is missing; run the qp_benchmark stage (python -m tasks qp_benchmark) first"
        )
    metrics = json.loads(metrics_path.read_text())
    if "dcbf_exact" not in metrics:
        raise ValueError(f"{metrics_path} has no 'dcbf_exact' key; rerun the qp_benchmark stage")
    return table, metrics["dcbf_exact"]


def _us(value: float) -> str:
    return "-" if not math.isfinite(value) else (f"{value:.0f}" if value >= 100 else f"{value:.1f}")


def dcbf_exact_section(workdir: Path) -> str:
    """Markdown: what is timed and counted, then one table (CPU, forward+backward, float64 and
    float32; one row per obstacle count x batch size) of both methods' per-problem time, the cost
    ratio and the one-step violation / infeasible counts. Raises FileNotFoundError naming
    results/qp_benchmark/dcbf_exact.csv (or metrics.json) when it is missing."""
    workdir = Path(workdir)
    table, settings = _read(workdir)
    shown = table[(table["pass"] == PASS) & (table["device"] == DEVICE)]
    keys = ["dtype", "obstacles", "batch_size"]
    first = shown[shown["method"] == "dcbf_first_order"].set_index(keys)
    exact = shown[shown["method"] == "dcbf_exact"].set_index(keys)
    gamma = settings["gamma"]
    lines = [
        "## The exact discrete-time CBF (dcbf_exact): cost and one-step safety",
        "",
        f"From `{DCBF_EXACT_PATH.as_posix()}` (counts also in `{METRICS_PATH.as_posix()}`, key `dcbf_exact`), "
        "written by the qp_benchmark stage. On the stage's env states and random proposals u_ref, "
        f"gamma = {gamma}, two safety layers are timed side by side (median of interleaved calls, "
        "forward and backward through u_ref): **first order**, one exact-solver QP on the first-order "
        "`dcbf` rows (building the rows included), and **dcbf_exact**, which re-linearises on the "
        f"exact arc step and re-solves (at most {settings['exact_max_iters']} QPs, then a line search "
        "toward the stop action). Each returned action is then stepped on the env's exact arc dynamics "
        "(float64) and counted: *decay viol.*: flagged feasible yet h(q+) < (1 - gamma) h(q) beyond "
        f"the tolerance ({settings['tolerance_float64']:g} in float64, "
        f"{settings['tolerance_float32_relative']:g} x the size of h's terms in float32); "
        "*h(q+) < 0*: any barrier negative after the step; *infeasible*: flagged so; "
        "*start h < 0*: states already outside the safe set (no safe action need exist). "
        "Counts are first order / dcbf_exact. CPU, forward+backward.",
        "",
        "| dtype | obstacles | batch | first order (µs/problem) | dcbf_exact (µs/problem) | cost ratio "
        "| decay viol. | h(q+) < 0 | infeasible | start h < 0 | QPs per problem |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = 0
    for dtype in DTYPES:
        for (_, obstacles, batch), row in exact[exact.index.get_level_values("dtype") == dtype].sort_index().iterrows():
            key = (dtype, obstacles, batch)
            if key not in first.index:
                continue
            fo = first.loc[key]
            lines.append(
                f"| {dtype} | {obstacles} | {batch} | {_us(fo['per_problem_us'])} | {_us(row['per_problem_us'])} "
                f"| {row['cost_vs_first_order']:.2f} "
                f"| {int(fo['decay_violations_feasible'])} / {int(row['decay_violations_feasible'])} "
                f"| {int(fo['next_barrier_negative'])} / {int(row['next_barrier_negative'])} "
                f"| {int(fo['infeasible'])} / {int(row['infeasible'])} | {int(row['start_negative'])} "
                f"| {row['mean_qp_rounds']:.2f} |"
            )
            rows += 1
    if rows == 0:
        lines.append(f"| (no {DEVICE} {PASS} rows in {DCBF_EXACT_PATH.as_posix()}) | | | | | | | | | | |")
    return "\n".join(lines) + "\n"
