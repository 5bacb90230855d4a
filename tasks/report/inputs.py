"""Reading and validating the report's inputs, before anything is written.

Every required file is checked for the keys and columns the report uses; all problems are
collected into one ``StageInputError`` naming the files, so a bad input leaves the previous
report intact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.artifacts import (
    EPISODES_FILE,
    KNOWN_ARMS,
    METRICS_PATH,
    QP_METRICS_PATH,
    QP_TABLE_PATH,
    SUMMARY_PATH,
    TIMING_FILE,
    TRAJECTORY_FILE,
    VERDICTS,
    StageInputError,
    eval_dir,
    read_episode_table,
    model_path,
    train_curve_path,
    train_summary_path,
)
from tasks.params import Params

# Metrics shown per arm: (summary.csv column, label, kind) with kind "rate" (shown in %) or "ms".
RESULT_METRICS: tuple[tuple[str, str, str], ...] = (
    ("capture_rate", "capture", "rate"),
    ("collision_rate", "collision", "rate"),
    ("episode_violation_rate", "episodes with a body-barrier violation", "rate"),
    ("cbf_violation_rate", "body-barrier violation steps", "rate"),
    ("enforced_violation_rate", "enforced (look-ahead) barrier violation steps", "rate"),
    ("intervention_rate", "QP intervention", "rate"),
    ("mean_correction", "QP correction per step (normalised units)", "number"),
    ("infeasible_rate", "QP infeasible", "rate"),
    ("capture_steps", "steps to capture (captured episodes)", "steps"),
    ("decision_ms", "decision (ms)", "ms"),
)
# How evaluate times a decision (tasks/evaluate.py: play_groups): the report says it wherever it shows one
DECISION_TIMING = ("wall time of each batched policy call divided by the rows it served: the arm's live dev and "
                   "test episodes, and for a post-hoc filter those of every filter stacked into the same call, e.g. "
                   "the filter sweep's configurations of its form and margin; a larger call spreads its fixed cost "
                   "over more rows, so decision times compare arms only roughly")
UNDEFINED_WHEN_EMPTY = ("capture_steps",)  # a mean over captured episodes: none captured, no mean
SUMMARY_REQUIRED = ("arm", "seed", "aggregate", "seeds", "episodes", "steps") + tuple(
    f"{name}{suffix}" for name, _, _ in RESULT_METRICS for suffix in ("", "_low", "_high")
) + ("timeout_rate", "timeout_rate_low", "timeout_rate_high")


@dataclass
class TrainCell:
    algo: str
    seed: int
    summary: dict[str, Any]
    model_md5: str
    model_path: Path
    curves: dict[str, pd.DataFrame]  # metric -> DataFrame(step, value), finite values only


@dataclass
class EvalCell:
    algo: str
    seed: int
    episodes: pd.DataFrame
    trajectory: dict[str, np.ndarray] | None
    wall_seconds: float | None
    single_decision_ms: dict[str, float] | None = None  # {arm: ms}: tasks.evaluate.single_decision_ms


@dataclass
class Inputs:
    metrics: dict[str, Any]
    summary: pd.DataFrame
    train: list[TrainCell]
    evals: list[EvalCell]
    qp_table: pd.DataFrame | None
    qp_metrics: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)  # what was missing but not fatal

    def single_decision_ms(self, arm: str) -> tuple[float, int] | None:
        """(median over seeds of `arm`'s one-state decision time in ms, seeds that timed it), or None
        where no evaluate cell timed it (`tasks.evaluate.single_decision_ms`: wall clock, this machine)."""
        times = [c.single_decision_ms[arm] for c in self.evals if c.single_decision_ms and arm in c.single_decision_ms]
        return (float(np.median(times)), len(times)) if times else None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise StageInputError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StageInputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_compare_metrics(path: Path) -> dict[str, Any]:
    """results/compare/metrics.json, checked for the keys the report uses."""
    data = _read_json(path, "compare metrics (written by the compare stage)")
    decision = data.get("decision")
    if not isinstance(decision, dict) or decision.get("verdict") not in VERDICTS:
        found = decision.get("verdict") if isinstance(decision, dict) else decision
        raise StageInputError(f"{path}: 'decision.verdict' is {found!r}; accepted: one of {list(VERDICTS)}")
    if not isinstance(decision.get("reasons", []), list):
        raise StageInputError(f"{path}: 'decision.reasons' must be a list of strings")
    for key in ("arms", "safety"):
        if not isinstance(data.get(key), dict):
            raise StageInputError(f"{path}: '{key}' must be an object (arm -> numbers); found {data.get(key)!r}")
    if not isinstance(data.get("sequence"), list):
        raise StageInputError(f"{path}: 'sequence' must be a list of test steps; found {data.get('sequence')!r}")
    return data


def read_compare_summary(path: Path) -> pd.DataFrame:
    """results/compare/summary.csv with the columns the report uses (seed kept as text)."""
    if not path.is_file():
        raise StageInputError(f"{path}: compare summary not found (written by the compare stage)")
    try:
        table = pd.read_csv(path, dtype={"seed": str, "arm": str, "aggregate": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageInputError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in SUMMARY_REQUIRED if c not in table.columns]
    if missing:
        raise StageInputError(f"{path}: missing columns {missing}; expected at least {list(SUMMARY_REQUIRED)}")
    if table.empty:
        raise StageInputError(f"{path}: has no rows")
    bad_arms = sorted(set(table["arm"]) - set(KNOWN_ARMS))
    if bad_arms:
        raise StageInputError(f"{path}: unknown arms {bad_arms}; accepted: {list(KNOWN_ARMS)}")
    numeric = [c for c in SUMMARY_REQUIRED if c not in ("arm", "seed", "aggregate")]
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        # Intervals may be NaN (e.g. Wilson of zero steps); the estimates must be numbers, except
        # the mean steps to capture of an arm that never captured (printed as n/a).
        if not column.endswith(("_low", "_high")) and column not in UNDEFINED_WHEN_EMPTY and values.isna().any():
            raise StageInputError(f"{path}: column '{column}' must hold numbers; found {table[column].tolist()[:3]}")
        table[column] = values
    if not ((table["seed"] == "all") & (table["aggregate"] == "mean")).any():
        raise StageInputError(f"{path}: has no seed='all', aggregate='mean' rows (the across-seed results)")
    return table


def _read_tsv_curve(path: Path, metric: str) -> pd.DataFrame | None:
    """A DVCLive tsv (columns step, <metric>) -> DataFrame(step, value) of finite points, or None."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageInputError(f"{path}: not a readable DVCLive tsv ({exc})") from None
    if "step" not in table.columns or metric not in table.columns:
        raise StageInputError(f"{path}: expected columns ['step', '{metric}'], found {list(table.columns)}")
    curve = pd.DataFrame({"step": pd.to_numeric(table["step"], errors="coerce"),
                          "value": pd.to_numeric(table[metric], errors="coerce")})
    curve = curve[np.isfinite(curve["step"]) & np.isfinite(curve["value"])]
    return curve.sort_values("step").reset_index(drop=True)


def md5_of(path: Path) -> str:
    """The md5 of a file's content: what DVC records for an output file."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CURVE_METRICS = ("capture_rate", "episode_return")
SAFETY_CURVES = ("collision_rate", "episodes")  # training-time safety (optional: older runs lack them)


def read_train_cell(workdir: Path, algo: str, seed: int) -> TrainCell:
    summary_path = train_summary_path(workdir, algo, seed)
    summary = _read_json(summary_path, "training summary (written by the train stage)")
    for key in ("total_steps", "wall_seconds"):
        if not isinstance(summary.get(key), (int, float)):
            raise StageInputError(f"{summary_path}: '{key}' must be a number; found {summary.get(key)!r}")
    if summary.get("algo", algo) != algo or summary.get("seed", seed) != seed:
        raise StageInputError(
            f"{summary_path}: holds algo={summary.get('algo')!r} seed={summary.get('seed')!r}; expected {algo!r} {seed}"
        )
    checkpoint = model_path(workdir, algo, seed)
    if not checkpoint.is_file() or checkpoint.stat().st_size == 0:
        raise StageInputError(f"{checkpoint}: checkpoint {'is empty' if checkpoint.is_file() else 'not found'}")
    curves = {}
    for metric in CURVE_METRICS + SAFETY_CURVES:
        curve = _read_tsv_curve(train_curve_path(workdir, algo, seed, f"rollout/{metric}"), metric)
        if curve is not None:
            curves[metric] = curve
    return TrainCell(algo, seed, summary, md5_of(checkpoint), checkpoint, curves)


def read_eval_cell(workdir: Path, algo: str, seed: int, arms: list[str], need_trajectory: bool) -> EvalCell:
    cell_dir = eval_dir(workdir, algo, seed)
    episodes = read_episode_table(cell_dir / EPISODES_FILE, algo, seed)
    episodes = episodes[episodes["arm"].isin(arms)].reset_index(drop=True)
    trajectory = None
    traj_path = cell_dir / TRAJECTORY_FILE
    if need_trajectory:
        if not traj_path.is_file():
            raise StageInputError(f"{traj_path}: trajectory file not found (written by the evaluate stage)")
        try:
            with np.load(traj_path, allow_pickle=False) as data:
                trajectory = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise StageInputError(f"{traj_path}: not a readable .npz ({exc})") from None
        for key in ("obstacle_centres", "obstacle_radii"):
            if key not in trajectory:
                raise StageInputError(f"{traj_path}: key '{key}' missing; found {sorted(trajectory)}")
        for key, value in trajectory.items():
            if key.endswith(("/pursuer", "/evader")) and (value.ndim != 2 or value.shape[1] != 2):
                raise StageInputError(f"{traj_path}: '{key}' has shape {value.shape}; expected (T, 2)")
    wall, single_ms = None, None
    timing_path = cell_dir / TIMING_FILE
    if timing_path.exists():
        timing = _read_json(timing_path, "evaluation timing")
        wall = timing.get("wall_seconds") if isinstance(timing.get("wall_seconds"), (int, float)) else None
        single = timing.get("single_decision_ms")
        if isinstance(single, dict) and all(isinstance(v, (int, float)) for v in single.values()):
            single_ms = {str(k): float(v) for k, v in single.items()}
    return EvalCell(algo, seed, episodes, trajectory, wall, single_ms)


def read_qp_benchmark(workdir: Path) -> tuple[pd.DataFrame | None, dict[str, Any] | None, list[str]]:
    """The QP benchmark table and metrics; missing files are noted, unreadable ones raise."""
    notes = []
    table_path, metrics_path = workdir / QP_TABLE_PATH, workdir / QP_METRICS_PATH
    table = None
    if table_path.is_file():
        try:
            table = pd.read_csv(table_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise StageInputError(f"{table_path}: not a readable CSV ({exc})") from None
    else:
        notes.append(f"QP benchmark not run: {QP_TABLE_PATH} is absent")
    metrics = _read_json(metrics_path, "QP benchmark metrics") if metrics_path.is_file() else None
    return table, metrics, notes


def read_inputs(params: Params, workdir: Path) -> Inputs:
    """Read and check every input; all problems are collected into one StageInputError."""
    problems: list[str] = []

    def attempt(fn, *args):
        try:
            return fn(*args)
        except StageInputError as exc:
            problems.append(str(exc))
            return None

    metrics = attempt(read_compare_metrics, workdir / METRICS_PATH)
    summary = attempt(read_compare_summary, workdir / SUMMARY_PATH)
    algos, seeds = list(params.train.algos), list(params.train.seeds)
    train = [attempt(read_train_cell, workdir, a, s) for a in algos for s in seeds]
    arms = list(params.eval.arms)
    evals = [attempt(read_eval_cell, workdir, a, s, arms, s == seeds[0]) for a in algos for s in seeds]
    qp = attempt(read_qp_benchmark, workdir)
    if problems:
        raise StageInputError("report: bad inputs:\n  " + "\n  ".join(problems))
    qp_table, qp_metrics, notes = qp
    return Inputs(metrics, summary, train, evals, qp_table, qp_metrics, notes)
