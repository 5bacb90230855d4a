"""Stage `report`: the markdown decision report and its PNG figures.

Inputs (all read and validated before anything is written, so a bad input leaves the previous
report intact)::

    results/compare/metrics.json                  verdict, headline numbers, paired differences
    results/compare/summary.csv                   per-(arm, seed) rows and seed="all" rows
    results/eval/<algo>-s<seed>/episodes.csv      per-episode tables (min_h distribution)
    results/eval/<algo>-s<seed>/trajectory.npz    the drawn episode, first training seed
    results/eval/<algo>-s<seed>/timing.json       eval wall time (optional: older runs lack it)
    results/train/<algo>-s<seed>/summary.json     budget, wall time, minibatch fallback
    results/train/<algo>-s<seed>/model.pt         checkpoint (only hashed: md5, as DVC records)
    results/train/<algo>-s<seed>/live/plots/metrics/rollout/{capture_rate,episode_return}.tsv
    results/qp_benchmark/{table.csv, metrics.json} (a missing file or column is reported, not fatal)

Outputs::

    reports/decision_report.md
    reports/figures/{learning_curves,outcome_rates,qp_speed,trajectories,min_safety_margin}.png

A missing or malformed required input raises ``StageInputError`` naming the file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io as _bytes_io
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import decision as protocol
from tasks import io
from tasks.compare import (
    CANDIDATE_ARM,
    KNOWN_ARMS,
    METRICS_PATH,
    REFERENCE_ARM,
    SUMMARY_PATH,
    VERDICTS,
    StageInputError,
    read_episode_table,
)
from tasks.stats import iqm_trims, seed_t_interval
from tasks.params import ARMS, DEFAULT_PARAMS_PATH, Params, load_params, params_hash

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_PATH = Path("reports/decision_report.md")
FIGURES_DIR = Path("reports/figures")
QP_TABLE_PATH = Path("results/qp_benchmark/table.csv")
QP_METRICS_PATH = Path("results/qp_benchmark/metrics.json")

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
    ("capture_steps", "steps to capture (captured episodes)", "number"),
    ("decision_ms", "decision (ms)", "ms"),
)
UNDEFINED_WHEN_EMPTY = ("capture_steps",)  # a mean over captured episodes: none captured, no mean
SUMMARY_REQUIRED = ("arm", "seed", "aggregate", "seeds", "episodes", "steps") + tuple(
    f"{name}{suffix}" for name, _, _ in RESULT_METRICS for suffix in ("", "_low", "_high")
) + ("timeout_rate", "timeout_rate_low", "timeout_rate_high")

ARM_LABELS = {
    "barriernet": "BarrierNet PPO",
    "baseline": "Baseline PPO",
    "baseline_ct_filter": "Baseline + CT-CBF filter",
    "baseline_dcbf_filter": "Baseline + DCBF filter",
}
ARM_COLOURS = {
    "barriernet": "tab:blue",
    "baseline": "tab:orange",
    "baseline_ct_filter": "tab:green",
    "baseline_dcbf_filter": "tab:red",
}
ALGO_OF_ARM = {"barriernet": "barriernet", "baseline": "baseline",
               "baseline_ct_filter": "baseline", "baseline_dcbf_filter": "baseline",
               "barriernet_rcbf": "barriernet", "cbf_beta": "cbf_beta", "cbf_beta_rcbf": "cbf_beta",
               "shielded": "shielded", "baseline_tuned_filter": "baseline"}

# The reference project's published table (DESIGN.md, "Their published results"; source:
# github.com/shoaib6174/safe-rl-pe docs/phases/phase2_5_decision_report.md). None: not reported.
REFERENCE_RESULTS: dict[str, dict[str, str | None]] = {
    "capture_rate": {"barriernet": "2.0 %", "baseline": "100 %", "baseline_ct_filter": "91.5 %",
                     "baseline_dcbf_filter": "100 % (100 episodes)"},
    "cbf_violation_rate": {"barriernet": "7.56 %", "baseline": "6.07 %", "baseline_ct_filter": "6.84 %",
                           "baseline_dcbf_filter": "3.57 %"},
    "intervention_rate": {"barriernet": "88.2 %", "baseline": None, "baseline_ct_filter": "44.5 %",
                          "baseline_dcbf_filter": "6.6 %"},
    "decision_ms": {"barriernet": "5.42 ms", "baseline": "0.18 ms", "baseline_ct_filter": "0.46 ms",
                    "baseline_dcbf_filter": None},
    "training": {"barriernet": "324 K steps, hours on an RTX 5090",
                 "baseline": "1 M steps, 14 min (Stable-Baselines3)",
                 "baseline_ct_filter": "the baseline's training", "baseline_dcbf_filter": "the baseline's training"},
}
REFERENCE_ROWS = (
    ("capture_rate", "capture rate"),
    ("cbf_violation_rate", "CBF-violation steps"),
    ("intervention_rate", "QP intervention rate"),
    ("decision_ms", "inference per step"),
    ("training", "training budget"),
)
PACKAGES = ("torch", "qpth", "gymnasium", "prefect", "dvc", "dvclive", "numpy", "pandas", "scipy", "matplotlib")


# ---------------------------------------------------------------------------------------------
# Reading and validating the inputs


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


@dataclass
class Inputs:
    metrics: dict[str, Any]
    summary: pd.DataFrame
    train: list[TrainCell]
    evals: list[EvalCell]
    qp_table: pd.DataFrame | None
    qp_metrics: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)  # what was missing but not fatal


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
    cell_dir = workdir / "results" / "train" / f"{algo}-s{seed}"
    summary_path = cell_dir / "summary.json"
    summary = _read_json(summary_path, "training summary (written by the train stage)")
    for key in ("total_steps", "wall_seconds"):
        if not isinstance(summary.get(key), (int, float)):
            raise StageInputError(f"{summary_path}: '{key}' must be a number; found {summary.get(key)!r}")
    if summary.get("algo", algo) != algo or summary.get("seed", seed) != seed:
        raise StageInputError(
            f"{summary_path}: holds algo={summary.get('algo')!r} seed={summary.get('seed')!r}; expected {algo!r} {seed}"
        )
    model_path = cell_dir / "model.pt"
    if not model_path.is_file() or model_path.stat().st_size == 0:
        raise StageInputError(f"{model_path}: checkpoint {'is empty' if model_path.is_file() else 'not found'}")
    curves = {}
    for metric in CURVE_METRICS + SAFETY_CURVES:
        curve = _read_tsv_curve(cell_dir / "live" / "plots" / "metrics" / "rollout" / f"{metric}.tsv", metric)
        if curve is not None:
            curves[metric] = curve
    return TrainCell(algo, seed, summary, md5_of(model_path), model_path, curves)


def read_eval_cell(workdir: Path, algo: str, seed: int, arms: list[str], need_trajectory: bool) -> EvalCell:
    cell_dir = workdir / "results" / "eval" / f"{algo}-s{seed}"
    episodes = read_episode_table(cell_dir / "episodes.csv", algo, seed)
    episodes = episodes[episodes["arm"].isin(arms)].reset_index(drop=True)
    trajectory = None
    traj_path = cell_dir / "trajectory.npz"
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
    wall = None
    timing_path = cell_dir / "timing.json"
    if timing_path.exists():
        timing = _read_json(timing_path, "evaluation timing")
        wall = timing.get("wall_seconds") if isinstance(timing.get("wall_seconds"), (int, float)) else None
    return EvalCell(algo, seed, episodes, trajectory, wall)


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


# ---------------------------------------------------------------------------------------------
# Formatting


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def fmt_rate(x: Any) -> str:
    return f"{100 * float(x):.2f} %" if _finite(x) else "n/a"


def _pct(x: float) -> str:
    """A percentage with 2 decimals, or 2 significant digits when that would print a positive bound as 0.00."""
    value = 100 * float(x)
    return f"{value:.2g}" if 0 < abs(value) < 0.005 else f"{value:.2f}"


def fmt_rate_ci(est: Any, low: Any, high: Any) -> str:
    if not _finite(est):
        return "n/a"
    if not (_finite(low) and _finite(high)):
        return fmt_rate(est)
    if float(low) == float(high):  # a degenerate resampling interval says nothing: do not print it as one
        return f"{100 * float(est):.2f} % (no interval: every resample gave the same value)"
    return f"{100 * float(est):.2f} % [{_pct(low)}, {_pct(high)}]"


def fmt_ms_ci(est: Any, low: Any, high: Any) -> str:
    if not _finite(est):
        return "n/a"
    if not (_finite(low) and _finite(high)):
        return f"{float(est):.3f}"
    return f"{float(est):.3f} [{float(low):.3f}, {float(high):.3f}]"


def fmt_pp_ci(est: Any, low: Any, high: Any) -> str:
    if not _finite(est):
        return "n/a"
    text = f"{100 * float(est):+.2f} pp"
    if _finite(low) and _finite(high):
        text += f" [{100 * float(low):+.2f}, {100 * float(high):+.2f}]"
    return text


def triple(row: pd.Series | dict, name: str) -> tuple[Any, Any, Any]:
    """(estimate, low, high) of `name` in a summary row or metrics.json entry."""
    return row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")


def fmt_metric(kind: str, row: pd.Series | dict, name: str) -> str:
    est, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    return fmt_rate_ci(est, low, high) if kind == "rate" else fmt_ms_ci(est, low, high)


def fmt_seconds(seconds: Any) -> str:
    if not _finite(seconds):
        return "not recorded"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def arm_label(arm: str, params: Params) -> str:
    if arm == "baseline_dcbf_filter":
        return f"Baseline + DCBF filter (gamma {params.cbf.filter_gamma:g})"
    if arm == "baseline_ct_filter":
        return f"Baseline + CT-CBF filter (gamma {params.cbf.filter_gamma:g})"
    rcbf = f"RCBF-QP filter ({params.cbf.form}, gamma {params.cbf.filter_gamma:g}, margin {params.cbf.robust_margin:g} m)"
    if arm == "barriernet_rcbf":
        return f"BarrierNet + {rcbf}"
    if arm == "cbf_beta":
        return "CBF-Beta PPO (safe box)"
    if arm == "cbf_beta_rcbf":
        return f"CBF-Beta policy, unconstrained + {rcbf}"
    if arm == "baseline_tuned_filter":
        return "Baseline + tuned filter (eval.filter_sweep's rule, chosen on dev)"
    if arm == "shielded":
        return f"Shielded PPO ({params.cbf.form} filter in training, gamma {params.cbf.filter_gamma:g})"
    return ARM_LABELS.get(arm, arm)


# ---------------------------------------------------------------------------------------------
# Hardware and provenance


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # torch missing or broken: the report still renders
        info["torch_threads"] = None
        info["cuda"] = None
        log.warning("torch unavailable for the hardware table: %s", exc)
    return info


def _numerics_line(params: Params) -> str:
    """The numerics mode this report and (from their summaries) the training cells ran with."""
    from tasks import numerics

    info = numerics.describe()
    line = (f"numerics.mode = {params.numerics.mode}; this process: {info['mode']}, pinned ISA {info['pinned_isa']}, "
            f"ATen {info.get('aten_capability', '?')}, MKL_CBWR {info['MKL_CBWR']}")
    if params.numerics.mode == "pinned":
        line += " (the same weights and episodes on any x86-64 CPU with AVX2: tasks/numerics.py)"
    return line


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None, "changed": n}; tolerates a missing git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                                timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": None}
    changed = [line for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed": len(changed)}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def default_params() -> Params:
    """The params `dvc repro` would use: params.yaml (the schema defaults if it is unreadable)."""
    try:
        return load_params(DEFAULT_PARAMS_PATH)
    except Exception:  # noqa: BLE001 - an unreadable params.yaml: compare with the schema defaults
        return Params()


def params_overrides(params: Params, reference: Params | None = None) -> dict[str, Any]:
    """Dotted key -> value where `params` differs from params.yaml."""
    ours = _flatten(params.to_dict())
    theirs = _flatten((reference or default_params()).to_dict())
    return {key: value for key, value in ours.items() if theirs.get(key, object()) != value}


def _yaml_value(value: Any) -> str:
    """A value as `--set key=value` takes it (YAML-typed; JSON is YAML)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _assignment(key: str, value: Any) -> str:
    """`key=value`, quoted for a POSIX shell (brackets in lists would glob)."""
    return shlex.quote(f"{key}={_yaml_value(value)}")


def reproduce_commands(params: Params, workdir: Path, overrides: dict[str, Any]) -> list[str]:
    if not overrides:
        return [
            "dvc repro                      # rebuilds every stage whose inputs changed, then this report",
            "prefect deployment run train-and-eval/local   # the same through Prefect (needs `python flows/serve.py`)",
        ]
    sets = " ".join(f"--set {_assignment(key, value)}" for key, value in sorted(overrides.items()))
    where = f"--workdir {shlex.quote(str(workdir))}"
    commands = [f"python -m tasks {stage} {where} {sets}"
                for stage in ("qp_benchmark", "train", "evaluate", "compare", "report")]
    commands.append("# or through Prefect (writes to runs/<flow-run-name>/, leaves the tracked outputs alone):")
    commands.append("prefect deployment run train-and-eval/local --params "
                    + shlex.quote(json.dumps({"overrides": dict(sorted(overrides.items()))})))
    commands.append("# or as a DVC experiment in the workspace:")
    commands.append("dvc exp run " + " ".join(f"-S {_assignment(k, v)}" for k, v in sorted(overrides.items())))
    return commands


# ---------------------------------------------------------------------------------------------
# Numbers the text and figures share


def across_seed_rows(summary: pd.DataFrame, aggregate: str = "mean") -> dict[str, pd.Series]:
    rows = summary[(summary["seed"] == "all") & (summary["aggregate"] == aggregate)]
    return {row["arm"]: row for _, row in rows.iterrows()}


def arms_present(summary: pd.DataFrame, params: Params) -> list[str]:
    present = set(summary["arm"])
    return [arm for arm in KNOWN_ARMS if arm in present and arm in params.eval.arms]


def all_episodes(inputs: Inputs) -> pd.DataFrame:
    """The TEST rows of every eval cell: every figure and table of results reads the held-out split."""
    episodes = pd.concat([cell.episodes for cell in inputs.evals], ignore_index=True)
    return episodes[episodes["split"] == "test"].reset_index(drop=True)


def qp_pivot(table: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    """Median ms per backend side by side for each setting, with the speed-up ratio.

    Returns (pivot, reference backend) or (None, None) when the needed columns are absent.
    The ratio is other backend's median / the reference backend's ("exact" if present).
    """
    if not {"backend", "batch_size", "median_ms"} <= set(table.columns):
        return None, None
    keys = [c for c in ("pass", "device", "dtype", "obstacles") if c in table.columns]
    backends = list(dict.fromkeys(table["backend"].astype(str)))
    reference = "exact" if "exact" in backends else backends[0]
    frame = table.copy()
    frame["backend"] = frame["backend"].astype(str)
    pivot = frame.pivot_table(index=keys + ["batch_size"], columns="backend", values="median_ms", aggfunc="median")
    pivot = pivot.reset_index()
    for other in backends:
        if other != reference and other in pivot.columns and reference in pivot.columns:
            pivot[f"{other}/{reference}"] = pivot[other] / pivot[reference]
    return pivot, reference


# ---------------------------------------------------------------------------------------------
# Figures (rendered to bytes first; written only when all are done)


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def seed_band(curves: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Seeds' curves -> (steps, mean, min, max, seeds counted) over the union of logged steps.

    At each step only the seeds that logged a point there count: nothing is interpolated. (Seeds
    with equal budgets log at the same steps; a seed misses a point when no episode ended in
    that window, since a rate over no episodes is not a number.)
    """
    curves = [c for c in curves if len(c)]
    if not curves:
        return None
    table = pd.concat([c.assign(seed_index=i) for i, c in enumerate(curves)])
    grouped = table.groupby("step")["value"]
    stats = grouped.agg(["mean", "min", "max", "count"]).sort_index()
    return (stats.index.to_numpy(float), stats["mean"].to_numpy(float), stats["min"].to_numpy(float),
            stats["max"].to_numpy(float), stats["count"].to_numpy(int))


def figure_learning_curves(inputs: Inputs, params: Params) -> bytes:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    titles = {"capture_rate": "capture rate (training rollouts)",
              "episode_return": "episode return (training rollouts)"}
    for ax, metric in zip(axes, CURVE_METRICS):
        drawn = 0
        for algo in params.train.algos:
            cells = [c for c in inputs.train if c.algo == algo and metric in c.curves]
            band = seed_band([c.curves[metric] for c in cells])
            if band is None:
                continue
            steps, mean, lo, hi, count = band
            colour = ARM_COLOURS.get(algo)
            n = len(cells)
            ax.plot(steps, mean, color=colour, marker="o" if len(steps) < 15 else None, ms=3,
                    label=f"{ARM_LABELS.get(algo, algo)} (mean of {n} seed{'s' if n != 1 else ''})")
            partial = count < n
            if partial.any():  # steps where some seed logged nothing: the mean is of fewer seeds
                ax.plot(steps[partial], mean[partial], ls="none", marker="o", ms=8, mfc="white", mec=colour,
                        label=f"{ARM_LABELS.get(algo, algo)}: fewer seeds logged here")
            if n > 1:
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
                for cell in cells:  # the seeds' own points, faint
                    ax.plot(cell.curves[metric]["step"], cell.curves[metric]["value"], ls="none", marker=".",
                            ms=4, color=colour, alpha=0.5)
            drawn += 1
        ax.set_title(titles[metric])
        ax.set_xlim(left=0)
        ax.set_xlabel("env steps")
        ax.set_ylabel(metric.replace("_", " "))
        if metric == "capture_rate":
            ax.set_ylim(-0.03, 1.03)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no episode ended during training:\nno points logged", ha="center", va="center",
                    transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.suptitle("Learning curves: line = mean across seeds, band = min..max across seeds, dots = single seeds")
    return _figure_bytes(fig)


def figure_outcome_rates(summary: pd.DataFrame, arms: list[str], params: Params, confidence: float) -> bytes:
    plt = _pyplot()
    rows = across_seed_rows(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = [
        (axes[0], [("capture_rate", "capture"), ("collision_rate", "collision"), ("timeout_rate", "timeout")],
         "episode outcomes (share of episodes)"),
        (axes[1], [("cbf_violation_rate", "CBF-violation steps"), ("intervention_rate", "QP intervention"),
                   ("infeasible_rate", "QP infeasible")], "step rates (share of steps)"),
    ]
    width = 0.8 / max(len(arms), 1)
    for ax, metrics, title in panels:
        x = np.arange(len(metrics))
        for i, arm in enumerate(arms):
            row = rows[arm]
            est = np.array([row[m] for m, _ in metrics], float)
            low = np.array([row[f"{m}_low"] for m, _ in metrics], float)
            high = np.array([row[f"{m}_high"] for m, _ in metrics], float)
            err = np.vstack([np.clip(est - low, 0, None), np.clip(high - est, 0, None)])
            err = np.nan_to_num(err)
            ax.bar(x + (i - (len(arms) - 1) / 2) * width, 100 * est, width, yerr=100 * err, capsize=3,
                   color=ARM_COLOURS.get(arm), label=arm_label(arm, params))
        ax.set_xticks(x, [label for _, label in metrics])
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(arms), 4), fontsize=8, bbox_to_anchor=(0.5, -0.06))
    seeds = int(max((r["seeds"] for r in rows.values()), default=1))
    fig.suptitle(f"Outcome rates per arm: mean over {seeds} seed(s), bars = {100 * confidence:g} % "
                 "stratified bootstrap interval")
    return _figure_bytes(fig)


def figure_qp_speed(table: pd.DataFrame) -> bytes | None:
    if not {"backend", "batch_size", "median_ms"} <= set(table.columns):
        return None
    plt = _pyplot()
    passes = list(dict.fromkeys(table["pass"].astype(str))) if "pass" in table.columns else [None]
    fig, axes = plt.subplots(1, len(passes), figsize=(6 * len(passes), 4.2), squeeze=False)
    keys = [c for c in ("backend", "device", "dtype", "obstacles") if c in table.columns]
    styles = {"float64": "-", "float32": "--"}
    obstacle_markers = {}
    if "obstacles" in table.columns:
        obstacle_markers = {k: m for k, m in zip(sorted(table["obstacles"].unique()), "os^Dv<>p")}
    for ax, pass_name in zip(axes[0], passes):
        part = table if pass_name is None else table[table["pass"].astype(str) == pass_name]
        for key, group in part.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            setting = dict(zip(keys, key))
            group = group.sort_values("batch_size")
            backend = str(setting["backend"])
            colour = "tab:blue" if backend == "exact" else "tab:orange" if backend == "qpth" else None
            label = " ".join(f"K={v}" if k == "obstacles" else str(v) for k, v in setting.items())
            marker = obstacle_markers.get(setting.get("obstacles"), "o")
            ax.plot(group["batch_size"], group["median_ms"], styles.get(str(setting.get("dtype")), "-"),
                    color=colour, marker=marker, ms=4, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (QPs solved together)")
        ax.set_ylabel("median time per batch (ms)")
        ax.set_title(f"pass: {pass_name}" if pass_name else "QP solve")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("QP solver speed by batch size (log-log; lower is faster)")
    return _figure_bytes(fig)


def trajectory_arms(inputs: Inputs, params: Params) -> tuple[dict[str, np.ndarray], list[str]]:
    """Merge the first seed's trajectory files (one per algo) -> (arrays, notes)."""
    first_seed = params.train.seeds[0]
    merged: dict[str, np.ndarray] = {}
    notes = []
    for cell in inputs.evals:
        if cell.seed != first_seed or cell.trajectory is None:
            continue
        for key, value in cell.trajectory.items():
            if key.startswith("obstacle") and key in merged:
                if merged[key].shape != value.shape or not np.allclose(merged[key], value):
                    notes.append(f"obstacles in {cell.algo}-s{cell.seed} differ from the other cell's")
                continue
            merged[key] = value
    return merged, notes


def figure_trajectories(inputs: Inputs, params: Params, arms: list[str]) -> tuple[bytes, list[str]]:
    plt = _pyplot()
    from matplotlib.patches import Circle, Rectangle

    data, notes = trajectory_arms(inputs, params)
    episode = params.eval.trajectory_episode
    seed = params.train.seeds[0]
    episodes = all_episodes(inputs)
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    half = params.env.arena_size / 2
    ax.add_patch(Rectangle((-half, -half), 2 * half, 2 * half, fill=False, color="black", lw=1.5))
    margin = params.env.robot_radius + params.env.safety_margin
    for centre, radius in zip(np.atleast_2d(data.get("obstacle_centres", np.zeros((0, 2)))),
                              np.atleast_1d(data.get("obstacle_radii", np.zeros(0)))):
        if not np.all(np.isfinite(centre)) or not np.isfinite(radius) or radius <= 0:
            continue  # absent obstacle slots
        ax.add_patch(Circle(centre, radius, color="dimgray", alpha=0.7))
        ax.add_patch(Circle(centre, radius + margin, fill=False, ls=":", color="dimgray"))
    drawn = [arm for arm in arms if f"{arm}/pursuer" in data]
    evaders = {arm: data[f"{arm}/evader"] for arm in drawn if f"{arm}/evader" in data}
    # A random evader ignores the pursuer, so every arm meets the same evader path (each cut where
    # its episode ended): then draw it once; a reacting evader gets one path per arm.
    longest = max(evaders.values(), key=len) if evaders else None
    shared = longest is not None and all(np.allclose(path, longest[: len(path)]) for path in evaders.values())
    if shared:
        ax.plot(longest[:, 0], longest[:, 1], color="black", lw=1.0, ls="--", alpha=0.7,
                label="evader (the same path for every arm)")
    for rank, arm in enumerate(drawn):
        pursuer, evader = data[f"{arm}/pursuer"], evaders.get(arm)
        row = episodes[(episodes["arm"] == arm) & (episodes["seed"] == seed) & (episodes["episode"] == episode)]
        outcome = f"{row['outcome'].iloc[0]} after {int(row['length'].iloc[0])} steps" if len(row) else "?"
        colour = ARM_COLOURS.get(arm)
        # Earlier arms wider underneath, so coinciding paths stay visible.
        ax.plot(pursuer[:, 0], pursuer[:, 1], color=colour, lw=1.4 + 1.2 * (len(drawn) - 1 - rank), alpha=0.9,
                label=f"{arm_label(arm, params)}: {outcome}")
        if evader is not None:
            if not shared:
                ax.plot(evader[:, 0], evader[:, 1], color=colour, lw=0.9, ls="--", alpha=0.8)
            ax.plot(*evader[-1], marker="s", color=colour, ms=6, mec="black", ls="none")
        ax.plot(*pursuer[-1], marker="X" if "collision" in outcome else "o", color=colour, ms=9, mec="black",
                ls="none")
    if drawn:
        first = drawn[0]
        ax.plot(*data[f"{first}/pursuer"][0], marker="^", color="black", ms=10, ls="none", label="pursuer start")
        if first in evaders:
            ax.plot(*evaders[first][0], marker="*", color="black", ms=13, ls="none", label="evader start")
        ax.plot([], [], marker="o", color="gray", mec="black", ls="none", label="pursuer end (X: collision)")
        ax.plot([], [], marker="s", color="gray", mec="black", ls="none", label="evader at the arm's episode end")
    else:
        ax.text(0, 0, "no trajectory recorded", ha="center")
    ax.set_xlim(-half - 0.5, half + 0.5)
    ax.set_ylim(-half - 0.5, half + 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.2)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Test episode {episode} (env seed {params.eval.test_seed_base + episode}), training seed {seed}\n"
                 "solid: pursuer, dashed: evader, grey: obstacles, dotted: barrier boundary h = 0")
    return _figure_bytes(fig), notes


def figure_min_margin(inputs: Inputs, arms: list[str], params: Params) -> bytes:
    """One histogram panel per arm (shared axes), so arms never hide each other."""
    plt = _pyplot()
    episodes = all_episodes(inputs)
    finite = episodes[np.isfinite(episodes["min_h"])]
    values = finite["min_h"].to_numpy(float)
    lo, hi = (min(values.min(), -0.05), max(values.max(), 0.05)) if len(values) else (-1.0, 1.0)
    bins = np.linspace(lo, hi, 49)
    fig, axes = plt.subplots(max(len(arms), 1), 1, figsize=(8, 1.6 + 1.3 * max(len(arms), 1)), sharex=True,
                             sharey=True, squeeze=False)
    for ax, arm in zip(axes[:, 0], arms):
        arm_values = finite.loc[finite["arm"] == arm, "min_h"].to_numpy(float)
        never = int(((episodes["arm"] == arm) & ~np.isfinite(episodes["min_h"])).sum())
        below = int((arm_values < 0).sum())
        total = len(arm_values) + never
        ax.hist(arm_values[arm_values < 0], bins=bins, color="black", alpha=0.85)
        ax.hist(arm_values[arm_values >= 0], bins=bins, color=ARM_COLOURS.get(arm), alpha=0.85)
        ax.axvline(0.0, color="black", lw=1.2, ls="--")
        note = f"; {never} with no barrier in reach" if never else ""
        ax.set_title(f"{arm_label(arm, params)}: {below}/{total} episodes below 0 (black){note}", fontsize=9,
                     loc="left")
        ax.set_ylabel("episodes")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("minimum barrier value min_h over the episode (m); dashed line h = 0, left of it the "
                           "CBF was violated")
    fig.suptitle("Distribution of the minimum safety margin per episode, one panel per arm (all seeds)")
    fig.tight_layout()
    return _figure_bytes(fig)


# ---------------------------------------------------------------------------------------------
# The markdown


def _equal_budgets(inputs: Inputs) -> bool:
    return len({int(c.summary["total_steps"]) for c in inputs.train}) == 1


def summary_paragraph(inputs: Inputs, params: Params, arms: list[str]) -> str:
    metrics = inputs.metrics
    rows = across_seed_rows(inputs.summary)
    conf = metrics.get("confidence", params.decision.confidence)
    steps = sorted({int(c.summary["total_steps"]) for c in inputs.train})
    budget = f"{steps[0]:,} env steps" if len(steps) == 1 else f"{steps[0]:,} to {steps[-1]:,} env steps (UNEQUAL)"
    seeds = list(params.train.seeds)
    parts = [
        f"Each algorithm ({', '.join(params.train.algos)}) was trained for {budget} on each of "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}) and every arm played "
        f"the same {params.eval.test_episodes} held-out test episodes per seed (numbers below; "
        f"{params.eval.dev_episodes} dev episodes served only the choices); intervals are {100 * conf:g} %."
    ]
    cand, ref = rows.get(CANDIDATE_ARM), rows.get(REFERENCE_ARM)
    h1 = next((s for s in metrics.get("sequence", []) if s.get("id") == "H1"), {})
    if cand is not None and ref is not None:
        parts.append(
            f"BarrierNet captured {fmt_rate_ci(*triple(cand, 'capture_rate'))} "
            f"of episodes against {fmt_rate(ref['capture_rate'])} for the baseline (difference "
            f"{fmt_interval_pp(h1.get('capture_diff'))}); "
            f"it collided in {fmt_rate(cand['collision_rate'])} against {fmt_rate(ref['collision_rate'])} "
            f"({fmt_interval_pp(h1.get('collision_diff'))}) "
            f"and violated a CBF on {fmt_rate(cand['cbf_violation_rate'])} of steps against "
            f"{fmt_rate(ref['cbf_violation_rate'])}."
        )
        parts.append(
            f"Its QP changed the action on {fmt_rate(cand['intervention_rate'])} of steps (infeasible on "
            f"{fmt_rate(cand['infeasible_rate'])}), and a decision took {float(cand['decision_ms']):.3f} ms against "
            f"{float(ref['decision_ms']):.3f} ms for the baseline."
        )
    else:
        missing = [a for a in (CANDIDATE_ARM, REFERENCE_ARM) if a not in rows]
        parts.append(f"The arm(s) {missing} were not evaluated, so BarrierNet cannot be compared with the baseline.")
    filters = [a for a in ("baseline_ct_filter", "baseline_dcbf_filter") if a in rows]
    if filters:
        parts.append("The post-hoc filters on the baseline: " + "; ".join(
            f"{arm_label(a, params)} captured {fmt_rate(rows[a]['capture_rate'])}, collided in "
            f"{fmt_rate(rows[a]['collision_rate'])} and intervened on {fmt_rate(rows[a]['intervention_rate'])} of steps"
            for a in filters) + ".")
    parts.append(f"The fixed sequence says **{metrics['decision']['verdict']}** (its reasons are listed under the "
                 "verdict above).")
    if params.train.total_steps < 1_000_000 or params.eval.test_episodes < params.decision.min_test_episodes:
        parts.append(f"This is a small run (train.total_steps = {params.train.total_steps:,}, eval.test_episodes = "
                     f"{params.eval.test_episodes}; the study uses 1 M and >= {params.decision.min_test_episodes}): it "
                     "exercises the pipeline, it does not answer the research question.")
    return " ".join(parts)


def _scenario_table(params: Params) -> str:
    e = params.env
    rows = [
        ["arena", f"{e.arena_size:g} m x {e.arena_size:g} m, walls are hard limits"],
        ["obstacles", f"{e.num_obstacles} circles, radius in [{e.obstacle_radius_min:g}, {e.obstacle_radius_max:g}] m, "
                      f">= {e.obstacle_clearance:g} m clearance at start; {e.observed_obstacles} observed"],
        ["robots", f"unicycles, radius {e.robot_radius:g} m; pursuer v in [0, {e.pursuer_v_max:g}] m/s, "
                   f"w in [-{e.pursuer_w_max:g}, {e.pursuer_w_max:g}] rad/s"],
        ["evader", f"policy '{e.evader_policy}', v <= {e.evader_v_max:g} m/s, |w| <= {e.evader_w_max:g} rad/s"],
        ["time", f"dt = {e.dt:g} s, {e.max_steps} steps per episode"],
        ["start", f"pursuer-evader distance in [{e.start_distance_min:g}, {e.start_distance_max:g}] m; the pursuer "
                  f"and the point {e.start_margin:g} m ahead of it start {e.start_margin:g} m beyond the barrier margin "
                  "(not in the reference: every enforced barrier >= 0 at step 0)"],
        ["capture / timeout / collision", f"distance <= {e.capture_radius:g} m: {e.capture_reward:+g}; timeout: "
                                          f"no penalty (the reference paid -50; time is not observed); collision "
                                          f"{e.collision_penalty:+g}"],
        ["shaping", f"potential-based at discount {e.discount:g}, k (g Phi(s') - Phi(s)), Phi(terminal) = 0 (the "
                    f"reference: k (d_prev - d)): distance k = {e.distance_shaping:g}, Phi = -d; proximity (not in the "
                    f"reference) k = {e.proximity_shaping:g}, Phi = -sum max(0, 1 - clearance / "
                    f"{e.proximity_range:g} m) over obstacles and walls"],
        ["barrier", f"h = clearance - (robot radius + safety margin {e.safety_margin:g} m); CBF form "
                    f"'{params.cbf.form}', QP backend '{params.cbf.qp_backend}', filter gamma {params.cbf.filter_gamma:g}"],
        ["BarrierNet", f"update mode '{params.barriernet.update_mode}', learned gamma in "
                       f"[{params.barriernet.gamma_min:g}, {params.barriernet.gamma_max:g}]"],
    ]
    return md_table(["scenario", "value"], rows)


def _budget_table(inputs: Inputs, params: Params) -> str:
    rows = []
    for cell in inputs.train:
        s = cell.summary
        planned, used = s.get("planned_minibatch_size"), s.get("minibatch_size")
        fallback = bool(s.get("minibatch_fallback")) or (planned is not None and used is not None and planned != used)
        fb_text = f"YES: {used} instead of {planned}" if fallback else f"no ({used})"
        sps = s.get("env_steps_per_second")
        rows.append([
            cell.algo, cell.seed, f"{params.train.total_steps:,}", f"{int(s['total_steps']):,}", s.get("updates", "?"),
            fmt_seconds(s["wall_seconds"]), f"{sps:,.0f}" if _finite(sps) else "n/a", fb_text,
            f"{s.get('rollout_device', '?')} / {s.get('update_device', '?')}",
            s.get("resumed_from_update") if s.get("resumed_from_update") is not None else "no",
        ])
    return md_table(["algo", "seed", "budget (train.total_steps)", "env steps done", "updates", "wall time",
                     "env steps/s", "minibatch fallback (size used)", "rollout / update device", "resumed from update"],
                    rows)


def _recorded_wall(workdir: Path, stage: str) -> float | None:
    """Wall seconds a stage recorded in results/<stage>/timing.json (tasks/registry.py), if any."""
    path = Path(workdir) / "results" / stage / "timing.json"
    try:
        value = json.loads(path.read_text()).get("wall_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _stage_times(inputs: Inputs, render_seconds: float, workdir: Path | None = None) -> str:
    rows = []
    train_total = sum(float(c.summary["wall_seconds"]) for c in inputs.train)
    rows.append(["train", fmt_seconds(train_total),
                 ", ".join(f"{c.algo}-s{c.seed}: {fmt_seconds(c.summary['wall_seconds'])}" for c in inputs.train)])
    eval_walls = [c.wall_seconds for c in inputs.evals]
    known = [w for w in eval_walls if w is not None]
    rows.append(["evaluate", fmt_seconds(sum(known)) + ("" if len(known) == len(eval_walls) else " (incomplete)")
                 if known else "not recorded",
                 ", ".join(f"{c.algo}-s{c.seed}: {fmt_seconds(c.wall_seconds)}" for c in inputs.evals)])
    qp_wall = _recorded_wall(workdir, "qp_benchmark") if workdir is not None else None
    rows.append(["qp_benchmark", fmt_seconds(qp_wall) if qp_wall is not None else (
        "not recorded" if inputs.qp_table is not None else "not run"), ""])
    compare_wall = _recorded_wall(workdir, "compare") if workdir is not None else None
    rows.append(["compare", fmt_seconds(compare_wall) if compare_wall is not None else "not recorded", ""])
    rows.append(["report", fmt_seconds(render_seconds), "this rendering, before writing"])
    return md_table(["stage", "wall time", "per cell"], rows)


def _results_tables(inputs: Inputs, params: Params, arms: list[str], conf: float) -> str:
    level = f"{100 * conf:g} %"
    rows = across_seed_rows(inputs.summary)
    header = ["arm", "seeds", "episodes"] + [label for _, label, _ in RESULT_METRICS] + ["mean return"]
    table = []
    for arm in arms:
        row = rows[arm]
        table.append([arm_label(arm, params), int(row["seeds"]), int(row["episodes"])]
                     + [fmt_metric(kind, row, name) for name, _, kind in RESULT_METRICS]
                     + [fmt_ms_ci(row["mean_return"], row.get("mean_return_low"), row.get("mean_return_high"))
                        if "mean_return" in row else "n/a"])
    methods = inputs.metrics.get("interval_methods") or {}
    text = [f"### Across seeds (test split; mean of the seeds' values, {level} intervals)", "",
            md_table(header, table), "",
            "What each interval estimated or resampled: " + "; ".join(
                f"{label}: {methods[name]}" for name, label, _ in (("capture_rate", "capture", ""),
                                                                  ("cbf_violation_rate", "step rates", ""),
                                                                  ("decision_ms", "return and decision ms", ""))
                if name in methods) + ".", ""]
    seeds = int(max((r["seeds"] for r in rows.values()), default=1))
    if iqm_trims(seeds):  # scipy's IQM trims int(0.25 * seeds) from each end
        iqm = across_seed_rows(inputs.summary, "iqm")
        text += [f"Interquartile mean across seeds ({level} interval: {methods.get('iqm', 'stratified bootstrap')}):",
                 "",
                 md_table(["arm"] + [label for _, label, _ in RESULT_METRICS],
                          [[arm_label(a, params)] + [fmt_metric(k, iqm[a], n) for n, _, k in RESULT_METRICS]
                           for a in arms if a in iqm]), ""]
    else:
        text += [f"(With {seeds} seed(s) the interquartile mean across seeds equals the mean: it trims "
                 "int(0.25 x seeds) seeds from each end.)", ""]
    per_seed = inputs.summary[inputs.summary["aggregate"] == "per_seed"]
    ps_rows = []
    for arm in arms:
        for _, row in per_seed[per_seed["arm"] == arm].iterrows():
            ps_rows.append([arm_label(arm, params), row["seed"], int(row["episodes"]), int(row["steps"])]
                           + [fmt_metric(kind, row, name) for name, _, kind in RESULT_METRICS])
    text += [f"### Per seed ({level} Wilson intervals; decision ms: bootstrap over episodes)", "",
             "Capture and collision intervals are over episodes; step rates are over steps, which are "
             "correlated within an episode, so their intervals are too narrow: read them as descriptive.", "",
             md_table(["arm", "seed", "episodes", "steps"] + [label for _, label, _ in RESULT_METRICS], ps_rows), ""]

    return "\n".join(text)


def qp_summary(table: pd.DataFrame | None) -> str:
    """One line for the report's body: the exact solver's speed-up over qpth, forward+backward on the
    CPU in float64 at the smallest and largest batch both ran, and the accuracy; the full table is
    the appendix's."""
    if table is None:
        return "QP benchmark not run: `results/qp_benchmark/table.csv` is absent."
    pivot, reference = qp_pivot(table)
    if pivot is None or "qpth" not in pivot.columns:
        return "The QP benchmark table is in the appendix (no qpth column to summarise)."
    rows = pivot
    for key, value in (("pass", "forward+backward"), ("device", "cpu"), ("dtype", "float64")):
        if key in rows.columns:
            rows = rows[rows[key] == value]
    ratio = f"qpth/{reference}"
    rows = rows[rows[ratio].map(_finite)] if ratio in rows.columns else rows.iloc[0:0]
    if not len(rows):
        return "The QP benchmark table is in the appendix."
    by_batch = rows.groupby("batch_size")[ratio].median()
    small, large = int(by_batch.index.min()), int(by_batch.index.max())
    accuracy = ""
    if "max_deviation" in table.columns:
        worst = table.groupby("backend")["max_deviation"].max()
        accuracy = "; largest deviation from the independent reference: " + ", ".join(
            f"{b} {v:.2g}" for b, v in worst.items())
    return (f"The {reference} solver is {by_batch[small]:.0f}x faster than qpth at batch {small} and "
            f"{by_batch[large]:.0f}x at batch {large} (forward+backward, CPU, float64, median over obstacle counts, "
            f"measured side by side){accuracy}. Every timing is in the appendix.")


def qp_section(table: pd.DataFrame | None) -> str:
    """The QP benchmark section: the pivot of table.csv, or what the table holds when columns are missing."""
    if table is None:
        return "QP benchmark not run: `results/qp_benchmark/table.csv` is absent.\n"
    pivot, reference = qp_pivot(table)
    lines = []
    if pivot is None:
        lines += [f"The QP table lacks the columns needed for the pivot (backend, batch_size, median_ms); "
                  f"its columns are {list(table.columns)}. As recorded:", "",
                  md_table(list(table.columns), table.astype(str).values.tolist()), ""]
        return "\n".join(lines)
    ratio_columns = [c for c in pivot.columns if isinstance(c, str) and c.endswith(f"/{reference}")]
    backends = [c for c in pivot.columns if c not in ratio_columns and c not in
                ("pass", "device", "dtype", "obstacles", "batch_size")]
    keys = [c for c in ("pass", "device", "dtype", "obstacles") if c in pivot.columns]
    header = keys + ["batch"] + [f"{b} median ms" for b in backends] + [
        f"speed-up of {reference} over {c.split('/')[0]} (x)" for c in ratio_columns]
    rows = []
    for _, row in pivot.iterrows():
        rows.append([row[k] for k in keys] + [int(row["batch_size"])]
                    + [f"{row[b]:.3f}" if _finite(row[b]) else "-" for b in backends]
                    + [f"{row[c]:.2f}x" if _finite(row[c]) else "-" for c in ratio_columns])
    lines += ["Median time per batched solve; speed-up = other backend's median / "
              f"{reference}'s median, measured side by side in one run.", "", md_table(header, rows), ""]
    extra = [c for c in ("max_deviation", "solved_fraction") if c in table.columns]
    if extra:
        summary = table.groupby("backend")[extra].agg({c: ("max" if c == "max_deviation" else "min") for c in extra})
        lines += ["Accuracy: " + "; ".join(
            f"{backend}: " + ", ".join(
                f"{'largest deviation from the reference solution' if c == 'max_deviation' else 'lowest solved fraction'}"
                f" {row[c]:.3g}" for c in extra)
            for backend, row in summary.iterrows()), ""]
    missing = [c for c in ("pass", "device", "dtype", "obstacles", "max_deviation", "solved_fraction")
               if c not in table.columns]
    if missing:
        lines += [f"(table.csv has no column(s) {missing}.)", ""]
    return "\n".join(lines)


def _reference_section(inputs: Inputs, params: Params, arms: list[str]) -> str:
    rows_by_arm = across_seed_rows(inputs.summary)
    steps = sorted({int(c.summary["total_steps"]) for c in inputs.train})
    walls = {algo: [float(c.summary["wall_seconds"]) for c in inputs.train if c.algo == algo]
             for algo in params.train.algos}
    table = []
    for key, label in REFERENCE_ROWS:
        for arm in ARMS:
            theirs = REFERENCE_RESULTS[key].get(arm) or "-"
            if key == "training":
                algo = ALGO_OF_ARM[arm]
                if algo not in walls or not walls[algo]:
                    ours = "not trained"
                else:
                    ours = (f"{steps[0]:,} steps x {len(walls[algo])} seed(s), "
                            f"{fmt_seconds(np.mean(walls[algo]))} per seed"
                            + ("" if arm == algo else " (the baseline's training)"))
            elif arm not in rows_by_arm or arm not in arms:
                ours = "not evaluated"
            elif key == "intervention_rate" and arm == "baseline":
                ours = "- (no QP)"
            else:
                row = rows_by_arm[arm]
                ours = fmt_ms_ci(row[key], row[f"{key}_low"], row[f"{key}_high"]) + " ms" if key == "decision_ms" \
                    else fmt_rate_ci(row[key], row[f"{key}_low"], row[f"{key}_high"])
            table.append([label, arm_label(arm, params), theirs, ours])
    notes = [
        "What differs: they used one seed and 200 episodes (100 for the DCBF filter), no intervals, and unequal "
        f"budgets (324 K steps for BarrierNet, 1 M for the baseline); we train every algorithm for the same "
        f"{'budget' if _equal_budgets(inputs) else 'budget (NOT here: see the setup table)'} on "
        f"{len(params.train.seeds)} seed(s), evaluate every arm on the same paired episodes "
        f"({params.eval.test_episodes} held-out test episodes per seed; tuning used {params.eval.dev_episodes} dev "
        "episodes) and give intervals that include training-seed and shared-scenario variance.",
        "Our BarrierNet learns its class-K gamma, keeps the QP inside the PPO update "
        f"(update mode '{params.barriernet.update_mode}'), uses a discrete-time CBF that accounts for dt "
        f"(form '{params.cbf.form}'), masks absent constraints instead of zero rows, and detects infeasibility "
        "from the solution rather than from exceptions.",
        "Inference per step: ours is the batched evaluation time per decision (all episodes of a chunk side by "
        "side), on the hardware in the setup table; theirs is per single decision on their machine, so the ratio "
        "between arms is more comparable than the absolute numbers.",
    ]
    if params.train.total_steps < 1_000_000 or params.eval.test_episodes < params.decision.min_test_episodes:
        notes.append(f"This run is smaller than the study (train.total_steps = {params.train.total_steps:,}, "
                     f"eval.test_episodes = {params.eval.test_episodes}): its numbers test the pipeline, they do not "
                     "answer the research question.")
    return md_table(["metric", "arm", "reference (Phase 2.5)", "ours"], table) + "\n\n" + "\n".join(
        f"- {n}" for n in notes) + "\n"


def _provenance_section(inputs: Inputs, params: Params, workdir: Path, hw: dict[str, Any],
                        git: dict[str, Any], overrides: dict[str, Any]) -> str:
    if git["commit"] is None:
        git_text = "not a git checkout (or git missing): commit unknown"
    else:
        git_text = f"`{git['commit']}`" + (f", DIRTY ({git['changed']} changed/untracked paths)" if git["dirty"]
                                           else ", clean")
    lines = [
        f"- git commit: {git_text}",
        f"- params hash: `{params_hash(params.to_dict())}` (sha256 of the validated params, first 16 hex digits)",
        "- params differing from params.yaml: " + (", ".join(f"`{k}={_yaml_value(v)}`" for k, v in
                                                            sorted(overrides.items())) if overrides else "none"),
        f"- device: {hw['cpu']} ({hw['cpu_count']} logical CPUs); CUDA: {hw['cuda'] or 'none'}",
        "",
        "Checkpoints (md5 of the file content, which is what DVC records in dvc.lock):",
        "",
        md_table(["checkpoint", "md5", "bytes"],
                 [[_shown_path(c.model_path, workdir), f"`{c.model_md5}`", c.model_path.stat().st_size]
                  for c in inputs.train]),
        "",
        "Packages: " + ", ".join(f"{name} {version}" for name, version in package_versions().items()),
        "",
        "Reproduce this report:",
        "",
        "```",
        *reproduce_commands(params, workdir, overrides),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _shown_path(path: Path, workdir: Path) -> str:
    return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else str(path)


FIGURE_CAPTIONS = {
    "learning_curves": "Learning curves: training-rollout capture rate and episode return against env steps, "
                       "one line per algorithm (mean across the seeds that logged a point at that step), "
                       "band = min..max across seeds, dots = single seeds, open circles = steps where fewer seeds "
                       "logged a point (a rate is logged only when an episode ended in that rollout window).",
    "outcome_rates": "Outcome rates per arm (mean across seeds) with {level} stratified-bootstrap interval bars: "
                     "episode outcomes (left) and step rates (right).",
    "qp_speed": "QP solver speed: median time per batched solve against batch size, log-log, per backend, "
                "dtype (solid float64, dashed float32) and obstacle count.",
    "trajectories": "One evaluation episode played by every arm (same start, obstacles and evader randomness): "
                    "pursuer paths solid, evader paths dashed, obstacles grey with the barrier boundary dotted.",
    "performance_profile": "Performance profile over training seeds (test split): left, the share of seeds whose "
                           "capture rate exceeds tau; right, each seed's capture rate per arm.",
    "min_safety_margin": "Distribution of each episode's minimum barrier value min_h, one panel per arm (all "
                         "seeds); the dashed line at 0 is the barrier boundary, episodes left of it (black) "
                         "violated the CBF.",
}


# ---------------------------------------------------------------------------------------------
# The decision: outcome A-D, verdict, gates, targets, matrix (tasks.decision's rules; the
# wall-clock inputs are computed here, never in results/compare/metrics.json)


def _mean_wall(inputs: Inputs, algo: str) -> float | None:
    walls = [float(c.summary["wall_seconds"]) for c in inputs.train if c.algo == algo]
    return float(np.mean(walls)) if walls else None


def training_overhead(inputs: Inputs) -> tuple[float | None, str]:
    """BarrierNet's mean training wall clock / CBF-Beta's (the baseline's when CBF-Beta was not
    trained, said so). Machine-dependent: the report shows it, metrics.json never holds it."""
    bn = _mean_wall(inputs, "barriernet")
    for against in ("cbf_beta", "baseline"):
        other = _mean_wall(inputs, against)
        if bn is not None and other:
            note = "" if against == "cbf_beta" else " (CBF-Beta not trained: against the baseline PPO instead)"
            return bn / other, f"BarrierNet / {against} mean training wall clock{note}"
    return None, "not measurable (BarrierNet or its comparator was not trained)"


def outcome_analysis(inputs: Inputs, params: Params, overhead: float | None) -> dict[str, Any]:
    """Outcome A-D, the decision matrix and its inputs at a given training-overhead ratio."""
    d, m = params.decision, inputs.metrics
    safety, arms = m.get("safety") or {}, m.get("arms") or {}
    hybrid, gap_a = m.get("hybrid"), m.get("gap")
    base_capture = (arms.get(REFERENCE_ARM) or {}).get("capture_rate")
    safe = {x: (safety[arm]["unsafe"] <= d.max_unsafe_episodes) if arm in safety else None
            for x, arm in protocol.APPROACH_ARMS.items()}
    measures: dict[str, dict[str, float | None]] = {}
    for x, arm in protocol.APPROACH_ARMS.items():
        if arm not in safety:
            continue
        capture = (arms.get(arm) or {}).get("capture_rate")
        gap = {"A": (gap_a or {}).get("gap"), "B": 0.0, "C": ((hybrid or {}).get("gap") or {}).get("gap")}[x]
        mechanisms, differentiable = protocol.APPROACH_STRUCTURE[x]
        measures[x] = {
            "gap": gap,
            "safety": safety[arm]["upper"],
            "task": (base_capture - capture) / base_capture if base_capture and capture is not None else None,
            "training_speed": 1.0 if x == "A" else overhead,
            "complexity": mechanisms + (1 if differentiable else 0),
        }
    matrix = protocol.matrix_scores(measures, d.weights)
    facts = protocol.OutcomeFacts(safe=safe, gap_a=gap_a, overhead=overhead,
                                  totals={x: row["total"] for x, row in matrix.items()},
                                  hybrid_noninferior=(hybrid or {}).get("capture_noninferior"))
    return {"outcome": protocol.choose_outcome(facts, d), "matrix": matrix, "measures": measures, "safe": safe}


def plateau_of(inputs: Inputs, params: Params) -> dict[str, Any] | None:
    curves = [c.curves["capture_rate"] for c in inputs.train if c.algo == "barriernet" and "capture_rate" in c.curves]
    return protocol.plateau_test(curves, params.decision) if curves else None


def training_safety(inputs: Inputs, params: Params) -> list[list[Any]]:
    """Per algorithm: cumulative training collisions and the mean training collision rate, with a
    t interval over seeds (>= 2 seeds)."""
    rows = []
    conf = params.decision.confidence
    for algo in params.train.algos:
        cells = [c for c in inputs.train if c.algo == algo and "collision_rate" in c.curves]
        if not cells:
            rows.append([algo, "no collision curve logged", "", ""])
            continue
        values = [protocol.training_collisions(c.curves["collision_rate"], c.curves.get("episodes")) for c in cells]
        texts = []
        for key, fmt in (("collisions", "{:,.0f}"), ("mean_rate", "{:.2%}")):
            xs = np.array([v[key] for v in values if key in v], float)
            if not len(xs):
                texts.append("not logged")
            elif len(xs) >= 2:
                ci = seed_t_interval(xs, conf)
                texts.append(f"{fmt.format(ci.estimate)} [{fmt.format(max(ci.low, 0.0))}, {fmt.format(ci.high)}]")
            else:
                texts.append(fmt.format(xs[0]) + " (one seed: no interval)")
        rows.append([algo, len(cells), *texts])
    return rows


def test_range_looks(metrics: dict[str, Any], repo: Path = REPO_ROOT) -> str:
    """How many committed versions of results/compare/metrics.json evaluated this test range
    (counted from `git log` now); "unknown" outside git."""
    current = metrics.get("test_split")
    try:
        shas = subprocess.run(["git", "log", "--format=%H", "--", str(METRICS_PATH)], cwd=repo, capture_output=True,
                              text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    count = 0
    for sha in shas[:500]:
        try:
            text = subprocess.run(["git", "show", f"{sha}:{METRICS_PATH}"], cwd=repo, capture_output=True, text=True,
                                  timeout=60, check=True).stdout
            if json.loads(text).get("test_split") == current:
                count += 1
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError, AttributeError):
            continue
    return str(count)


def fmt_p(p: Any) -> str:
    if not _finite(p):
        return "n/a"
    return "< 0.0001" if float(p) < 1e-4 else f"{float(p):.4f}"


def fmt_interval_pp(ci: dict[str, Any] | None) -> str:
    if not ci:
        return "n/a"
    return fmt_pp_ci(ci.get("estimate"), ci.get("low"), ci.get("high"))


def _sequence_table(steps: list[dict[str, Any]], params: Params) -> str:
    d = params.decision
    rows = []
    for step in steps:
        status = "confirmatory" if step.get("confirmatory") else "exploratory"
        if step["kind"] == "vs_baseline":
            hypothesis = (f"{step['arm']} vs {step['against']}: collision cut >= {100 * d.min_collision_reduction:g} pp "
                          f"and capture non-inferior (margin {100 * d.noninferiority_margin:g} pp)")
            result = ("rejected: shown" if step["rejected"] else
                      "not rejected: " + ", ".join(x for x, ok in (("collision cut", step["collision_reduction_shown"]),
                                                                   ("non-inferiority",
                                                                    step["capture_noninferior_shown"])) if not ok)
                      + " not shown")
            p_text = (f"cut {fmt_p(step['p_collision_reduction'])}; non-inferior {fmt_p(step['p_capture_noninferior'])}"
                      f"; IUT {fmt_p(step['p'])}")
        else:
            hypothesis = f"{step['arm']} vs {step['against']} (best alternative, chosen on dev): capture"
            result = step["answer"]
            p_text = (f"better {fmt_p(step['p_better'])}; worse {fmt_p(step['p_worse'])}; equivalent (TOST) "
                      f"{fmt_p(step['p_equivalent'])}")
        capture = step.get("capture") or {}
        rows.append([step["id"], status, hypothesis, fmt_interval_pp(step.get("capture_diff")),
                     fmt_interval_pp(step.get("collision_diff")), p_text,
                     fmt_p(capture.get("mcnemar_bonferroni_min")), fmt_p(capture.get("permutation")), result])
    return md_table(["step", "status", "hypothesis (test split)", "capture difference", "collision difference",
                     "one-sided p (t, crossed variance)", "McNemar capture (min x seeds)",
                     "seed permutation capture", "result"], rows)


def _matrix_table(analysis: dict[str, Any], params: Params) -> str:
    w = params.decision.weights
    rows = []
    for x, row in analysis["matrix"].items():
        measured = analysis["measures"][x]
        cells = []
        for criterion in w:
            value = measured.get(criterion)
            shown = ("n/a" if value is None else f"{value:.2f}x" if criterion == "training_speed" else
                     f"{value:g} parts" if criterion == "complexity" else f"{100 * value:.2f} %")
            cells.append(f"{row[criterion] if row[criterion] is not None else '-'} ({shown})")
        total = row["total"]
        rows.append([f"{x}: {protocol.APPROACH_NAMES[x]}", *cells, f"{total:.2f}" if total is not None else "incomplete"])
    return md_table(["approach", *(f"{c} ({w[c]:g})" for c in w), "weighted total (1-5)"], rows)


def _targets_table(inputs: Inputs, params: Params, analysis: dict[str, Any], overhead: float | None) -> str:
    d, m = params.decision, inputs.metrics
    letter = analysis["outcome"].letter
    measured = analysis["measures"].get(letter, {})
    bn = (m.get("arms") or {}).get(protocol.CANDIDATE_ARM) or {}
    chosen_arm = protocol.APPROACH_ARMS.get(letter)
    unsafe = (m.get("safety") or {}).get(chosen_arm) if chosen_arm else None

    def grade(value, goal, stretch):
        if value is None:
            return "not measured"
        return "stretch met" if value < stretch else "goal met" if value < goal else "missed"

    rows = [
        ["train-deploy gap of the chosen approach", f"< {100 * d.gap_goal:g} %", f"< {100 * d.gap_stretch:g} %",
         "n/a" if measured.get("gap") is None else f"{100 * measured['gap']:.2f} %",
         grade(measured.get("gap"), d.gap_goal, d.gap_stretch)],
        ["unsafe test episodes (collision or body-barrier violation)", "0 %", "0 %",
         "n/a" if unsafe is None else f"{unsafe['unsafe']}/{unsafe['episodes']} (95 % upper {protocol.percent(unsafe['upper'])})",
         "n/a" if unsafe is None else ("met" if unsafe["unsafe"] == 0 else "missed")],
        ["task: relative capture loss vs the baseline", f"< {100 * d.task_goal:g} %", f"< {100 * d.task_stretch:g} %",
         "n/a" if measured.get("task") is None else f"{100 * measured['task']:+.2f} %",
         grade(measured.get("task"), d.task_goal, d.task_stretch)],
        ["BarrierNet training overhead (wall clock)", f"< {d.overhead_goal:g}x", f"< {d.overhead_stretch:g}x",
         "n/a" if overhead is None else f"{overhead:.2f}x", grade(overhead, d.overhead_goal, d.overhead_stretch)],
        ["BarrierNet QP-infeasible steps", f"< {100 * d.infeasible_goal:g} %", f"< {100 * d.infeasible_stretch:g} %",
         fmt_rate_ci(*triple(bn, "infeasible_rate")) if bn else "n/a",
         grade(bn.get("infeasible_rate"), d.infeasible_goal, d.infeasible_stretch) if bn else "not measured"],
    ]
    return md_table(["target", "goal", "stretch", "measured (test)", "status"], rows)


def decision_section(inputs: Inputs, params: Params) -> tuple[str, str]:
    """(the outcome headline + verdict markdown, the outcome letter)."""
    d, m = params.decision, inputs.metrics
    conf = float(m.get("confidence", d.confidence))
    overhead, overhead_text = training_overhead(inputs)
    analysis = outcome_analysis(inputs, params, overhead)
    outcome = analysis["outcome"]
    steps = m.get("sequence") or []
    seeds, test_n = list(params.train.seeds), params.eval.test_episodes
    safety = m.get("safety") or {}
    lines = [f"## Outcome {outcome.letter}: {protocol.APPROACH_NAMES[outcome.letter]}", ""]
    lines += [f"- {r}" for r in outcome.reasons]
    if overhead is not None:
        changes = []
        for factor in (0.8, 1.2):
            other = outcome_analysis(inputs, params, overhead * factor)["outcome"].letter
            changes.append(f"{factor:g}x the ratio ({overhead * factor:.2f}x): outcome {other}")
        same = all(c.endswith(f"outcome {outcome.letter}") for c in changes)
        lines.append(f"- training overhead {overhead:.2f}x ({overhead_text}; measured on this machine, so it is kept "
                     f"out of metrics.json). Within +/- 20 %: {'; '.join(changes)} -> the outcome "
                     + ("does not change." if same else "CHANGES: it rests on the wall-clock ratio."))
    if test_n < d.min_test_episodes:
        lines.append(f"- **Pipeline check, not a study:** eval.test_episodes = {test_n} is below "
                     f"decision.min_test_episodes = {d.min_test_episodes} (issue 16 asks for >= 400 held-out scenarios).")
    verdict = m["decision"]
    lines += ["", f"## Verdict: **{verdict['verdict']}**", ""]
    lines += [f"- {r}" for r in verdict.get("reasons", [])]
    zero = [f"{arm} {s['unsafe']}/{s['episodes']} (95 % upper bound {protocol.percent(s['upper'])})"
            for arm, s in safety.items()]
    cost = []
    for algo in params.train.algos:
        wall = _mean_wall(inputs, algo)
        sps_ = [c.summary.get("env_steps_per_second") for c in inputs.train if c.algo == algo]
        sps_ = [x for x in sps_ if _finite(x)]
        cost.append(f"{algo} {fmt_seconds(wall)} per seed" + (f" ({np.mean(sps_):,.0f} env steps/s)" if sps_ else ""))
    lines += ["", (f"Population: policies trained by these algorithms at this budget ({params.train.total_steps:,} env "
                   f"steps) and these hyper-parameters, {len(seeds)} training seeds ({', '.join(map(str, seeds))}), "
                   f"judged on {test_n} held-out test scenarios (env seeds {params.eval.test_seed_base}.."
                   f"{params.eval.test_seed_base + test_n - 1}) played by every arm and seed. Tuning and every choice "
                   f"(the best alternative below) used only the dev split ({params.eval.dev_episodes} scenarios from "
                   f"env seed {params.eval.dev_seed_base}): choices cite dev numbers only. Unsafe test episodes "
                   f"(collision or body-barrier violation): {'; '.join(zero) or 'none evaluated'}. Training compute: "
                   f"{'; '.join(cost)}. Family-wise error of the fixed sequence <= {100 * (1 - conf) / 2:g} % one-sided "
                   f"(each test at (1 - {conf:g}) / 2); margins: collision cut >= {100 * d.min_collision_reduction:g} pp, "
                   f"non-inferiority {100 * d.noninferiority_margin:g} pp, equivalence +/- {100 * d.equivalence_margin:g} pp."),
              "", f"Committed default runs that evaluated this test range: {test_range_looks(m)} (counted from "
                  "`git log -- results/compare/metrics.json` at report time).", ""]
    lines += ["### The fixed sequence (test split)", "",
              "Each step is confirmatory only if every step before it was rejected; p-values: the one-sided t "
              "p-values behind each interval (crossed seed x scenario variance; family: the fixed sequence, no "
              "adjustment needed), exact McNemar on paired captures within each seed (family: the seeds of that "
              "comparison, Bonferroni: the smallest p times the seeds), and an exact seed-level permutation test "
              "(family: the fixed sequence; with 5 seeds its smallest possible two-sided p is 2/32 paired or 2/252 "
              "unpaired).", "", _sequence_table(steps, params) if steps else "No step could run.", ""]
    choice = m.get("alternative_choice") or {}
    rows = [[c["arm"], c["dev_episodes"], fmt_rate(c["dev_capture"]), fmt_rate(c["dev_collision"]),
             f"{100 * c['dev_collision_upper']:.2f} %", "yes" if c["qualifies"] else "no",
             "**chosen**" if c["arm"] == choice.get("chosen") else ""] for c in choice.get("candidates", [])]
    lines += ["### The best alternative, chosen on dev", "",
              f"Rule `decision.alternative_rule = {d.alternative_rule}`: among `decision.alternatives` present, those "
              f"whose dev collision rate has a Clopper-Pearson upper bound <= {100 * d.alternative_max_collision:g} % "
              "qualify; the highest dev capture wins. These are DEV numbers, shown only to explain the choice.", "",
              md_table(["arm", "dev episodes", "dev capture", "dev collision", "dev collision upper bound", "qualifies",
                        ""], rows) if rows else "No alternative arm was evaluated.", ""]
    plateau = plateau_of(inputs, params)
    chosen_arm = protocol.APPROACH_ARMS.get(outcome.letter)
    matrix_complete = bool(analysis["matrix"]) and all(r["total"] is not None for r in analysis["matrix"].values())
    gate_rows = protocol.gates(
        gap_a=m.get("gap"), barriernet_present=protocol.CANDIDATE_ARM in safety,
        chosen_unsafe=safety.get(chosen_arm) if chosen_arm else None, outcome=outcome,
        matrix_complete=matrix_complete, p_values_complete=bool(steps) and all(_finite(s.get("p")) for s in steps),
        plateau=plateau, decision=d)
    lines += ["### Gates PG-01..PG-05", "", md_table(["gate", "status", "evidence"],
                                                    [[g["gate"], g["status"], g["evidence"]] for g in gate_rows]), ""]
    lines += ["### Target metrics", "", _targets_table(inputs, params, analysis, overhead), ""]
    lines += ["### Decision matrix", "",
              "Scores 5..1 from measured numbers (lower is better): gap <= 2 / 5 / 10 / 20 %; safety = the 95 % upper "
              "bound of unsafe test episodes <= 1 / 2 / 5 / 10 %; task = relative capture loss vs the baseline <= 1 / "
              "5 / 10 / 20 %; training speed = wall clock / CBF-Beta's <= 1.5 / 3 / 5 / 10x; complexity = safety "
              "mechanisms across training and deployment + 1 for a differentiable QP (2 parts -> 5, 3 -> 4, ...). "
              "BarrierNet's gap is 0 by construction; the hybrid's is BarrierNet vs BarrierNet + RCBF on the same "
              "checkpoints.", "",
              _matrix_table(analysis, params) if analysis["matrix"] else "No Phase 2.5 approach was evaluated.", ""]
    gap, hybrid = m.get("gap"), m.get("hybrid")
    extra = []
    if gap:
        extra.append(f"CBF-Beta train-deploy gap (cbf_beta vs cbf_beta_rcbf, same checkpoints, test): "
                     + ("undefined: " + gap.get("note", "") if gap.get("gap") is None else
                        f"{100 * gap['gap']:.2f} % [{100 * gap['low']:.2f}, {100 * gap['high']:.2f}] ({gap['method']})"))
    else:
        extra.append("CBF-Beta train-deploy gap: not measured (arms cbf_beta / cbf_beta_rcbf not evaluated).")
    if hybrid:
        extra.append(f"The hybrid (BarrierNet + RCBF filter) vs BarrierNet: capture {fmt_interval_pp(hybrid['capture_diff'])}, "
                     f"unsafe episodes {fmt_interval_pp(hybrid['unsafe_diff'])}.")
    lines += [f"- {e}" for e in extra] + [""]
    power = m.get("power") or {}
    if power.get("seed_sd_capture"):
        lines += ["### Power", "",
                  f"Seed-level SD of test capture (pooled within arms): {100 * power['seed_sd_capture']:.2f} pp. With "
                  f"{power['seeds']} seeds per arm the minimum detectable difference at 80 % power is "
                  + (f"{100 * power['mdd_80']:.2f} pp" if power.get("mdd_80") else "n/a")
                  + f"; detecting 1 pp needs about {power.get('seeds_for_1pp') or 'n/a'} seeds per arm "
                    f"({power.get('method', '')}).", ""]
    else:
        lines += ["### Power", "", "Not estimable: fewer than 2 seeds per arm.", ""]
    run_level = m.get("run_level") or []
    if run_level:
        lines += ["### Probability of improvement (run level) and paired-episode win rate", "",
                  md_table(["arm", "against", "P(seed score > other's) [95 %]", "paired-episode win rate [95 %]"],
                           [[r["arm"], r["against"], fmt_rate_ci(*triple(r, "probability_of_improvement")),
                             fmt_rate_ci(*triple(r, "paired_win_rate"))] for r in run_level]),
                  "", f"{run_level[0]['probability_of_improvement_method']}; win rate: "
                      f"{run_level[0]['paired_win_rate_method']}.", ""]
    lines += ["### Training-time safety", "",
              "Cumulative training collisions (sum over logged windows of collision rate x episodes ended) and the "
              "mean training collision rate (area under the collision-rate curve / env steps), from the train cells' "
              f"DVCLive curves; {100 * conf:g} % t interval over seeds.", "",
              md_table(["algorithm", "seeds", "training collisions", "mean training collision rate"],
                       training_safety(inputs, params)), ""]
    return "\n".join(lines), outcome.letter


def figure_performance_profile(inputs: Inputs, arms: list[str], params: Params) -> bytes:
    """Per-seed test capture per arm: a performance profile (share of runs scoring above tau) and the runs."""
    plt = _pyplot()
    episodes = all_episodes(inputs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for arm in arms:
        rates = episodes[episodes["arm"] == arm].groupby("seed")["outcome"].apply(lambda o: (o == "capture").mean())
        values = np.sort(rates.to_numpy(float))
        if not len(values):
            continue
        taus = np.linspace(max(0.0, values.min() - 0.05), min(1.0, values.max() + 0.02), 200)
        axes[0].plot(taus, [(values > t).mean() for t in taus], color=ARM_COLOURS.get(arm), label=arm_label(arm, params))
        y = arms.index(arm) + np.linspace(-0.15, 0.15, len(values))
        axes[1].plot(100 * values, y, "o", color=ARM_COLOURS.get(arm))
    axes[0].set_xlabel("test capture rate tau")
    axes[0].set_ylabel("share of training seeds with capture > tau")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    axes[1].set_yticks(range(len(arms)), [arm_label(a, params) for a in arms], fontsize=7)
    axes[1].set_xlabel("test capture rate of each training seed (%)")
    axes[1].grid(alpha=0.3)
    fig.suptitle("Performance profile over training seeds (test split): one point per seed")
    return _figure_bytes(fig)


def render(inputs: Inputs, params: Params, workdir: Path, started: float) -> tuple[str, dict[str, bytes]]:
    """The markdown text and the figures (name -> PNG bytes)."""
    arms = arms_present(inputs.summary, params)
    missing_arms = [a for a in arms if a not in across_seed_rows(inputs.summary)]
    if missing_arms:
        raise StageInputError(f"{workdir / SUMMARY_PATH}: arms {missing_arms} have no seed='all' mean row")
    conf = float(inputs.metrics.get("confidence", params.decision.confidence))
    level = f"{100 * conf:g} %"

    figures: dict[str, bytes] = {
        "learning_curves": figure_learning_curves(inputs, params),
        "outcome_rates": figure_outcome_rates(inputs.summary, arms, params, conf),
    }
    if inputs.qp_table is not None:
        qp_png = figure_qp_speed(inputs.qp_table)
        if qp_png is not None:
            figures["qp_speed"] = qp_png
    figures["trajectories"], trajectory_notes = figure_trajectories(inputs, params, arms)
    figures["min_safety_margin"] = figure_min_margin(inputs, arms, params)
    figures["performance_profile"] = figure_performance_profile(inputs, arms, params)

    hw = hardware()
    git = git_state()
    overrides = params_overrides(params)
    decision = inputs.metrics["decision"]
    verdict = decision["verdict"]
    seeds = list(params.train.seeds)
    steps = sorted({int(c.summary["total_steps"]) for c in inputs.train})
    fallback_cells = [f"{c.algo}-s{c.seed}" for c in inputs.train
                      if c.summary.get("minibatch_fallback") or (
                          c.summary.get("planned_minibatch_size") not in (None, c.summary.get("minibatch_size")))]

    decision_md, _ = decision_section(inputs, params)
    from tasks.report_spread import section as spread_section  # issue 13: the cross-machine spread

    md = ["# Decision report: BarrierNet PPO vs the baseline and the best safe alternative", "", decision_md,
          spread_section(inputs.metrics, params), "",
          "## Summary", "", summary_paragraph(inputs, params, arms), ""]
    if inputs.notes or trajectory_notes:
        md += ["Notes: " + "; ".join(inputs.notes + trajectory_notes) + ".", ""]

    from tasks.report_tuning import budget_line as tuning_budget_line  # issue 15 item 7

    md += ["## Setup", "", "### Scenario", "", _scenario_table(params), ""]
    md += ["### Budgets, seeds and evaluation", "",
           f"- training budget: train.total_steps = {params.train.total_steps:,} env steps per algorithm and seed; "
           + ("equal budgets: every cell ran " + f"{steps[0]:,} env steps" if len(steps) == 1 else
              f"UNEQUAL budgets: cells ran {', '.join(f'{s:,}' for s in steps)} env steps"),
           f"- PPO: {params.train.num_envs} envs x {params.train.rollout_steps} steps per rollout, "
           f"{params.train.num_minibatches} minibatches, {params.train.update_epochs} epochs; "
           + _per_algo_settings(params),
           "- " + tuning_budget_line(workdir, params),
           f"- training seeds: {seeds}; evaluation: {params.eval.test_episodes} held-out test episodes per (arm, seed) "
           f"on env seeds {params.eval.test_seed_base}..{params.eval.test_seed_base + params.eval.test_episodes - 1} "
           f"and {params.eval.dev_episodes} dev episodes on {params.eval.dev_seed_base}.."
           f"{params.eval.dev_seed_base + params.eval.dev_episodes - 1} (the same for every arm), deterministic actions; "
           "choices cite dev numbers only, results cite test numbers only",
           "- minibatch fallback (out-of-memory retry with a smaller minibatch): "
           + (f"YES, in {', '.join(fallback_cells)}" if fallback_cells else "none: every cell used its planned minibatch"),
           "", _budget_table(inputs, params), ""]
    md += ["### Hardware (the machine that rendered this report; training devices are in the table above)", "",
           md_table(["item", "value"], [
               ["CPU", f"{hw['cpu']} ({hw['cpu_count']} logical CPUs)"],
               ["torch threads", f"{hw['torch_threads']} in this process; training used train.torch_threads = "
                                 f"{params.train.torch_threads}"],
               ["CUDA device", hw["cuda"] or "none"],
               ["platform", f"{hw['platform']}, Python {hw['python']}"],
               ["numerics", _numerics_line(params)],
           ]), ""]
    md += ["### Wall time of each stage", "", _stage_times(inputs, time.perf_counter() - started, workdir), ""]

    md += ["## Results per arm", "", _results_tables(inputs, params, arms, conf)]
    from tasks.report_dcbf_exact import dcbf_exact_section  # issue 14: the exact DCBF's cost and invariance

    try:
        dcbf_md = dcbf_exact_section(workdir)
    except (FileNotFoundError, ValueError) as exc:  # an older benchmark: say so, keep the rest of the report
        dcbf_md = f"(No dcbf_exact section: {exc}.)"
    md += ["## QP benchmark", "", qp_summary(inputs.qp_table), "", dcbf_md]

    md += ["## Figures", ""]
    for index, name in enumerate(figures, start=1):
        caption = FIGURE_CAPTIONS[name].format(level=level)
        md += [f"![{name}](figures/{name}.png)", "", f"*Figure {index}. {caption}*", ""]
    if "qp_speed" not in figures:
        md += ["(No QP speed figure: the QP benchmark table is absent or lacks backend/batch_size/median_ms.)", ""]

    from tasks.report_sweep import section as sweep_section  # issue 15: the filter sweep on dev episodes

    # The sweep section places the trained arms by their DEV rows (what the choice could see).
    every_split = pd.concat([cell.episodes for cell in inputs.evals], ignore_index=True)
    sweep_md, sweep_figures = sweep_section(params, workdir, every_split, ARM_COLOURS)
    figures.update(sweep_figures)
    md += [sweep_md]
    from tasks.report_diagnostics import section as diagnostics_section  # issue 18: gradients, red flags

    diagnostics_md, diagnostics_figures = diagnostics_section(workdir, params.train.algos, params.train.seeds,
                                                              ARM_COLOURS)
    figures.update(diagnostics_figures)
    md += [diagnostics_md]
    md += ["## Our numbers beside the reference project's (Phase 2.5)", "", _reference_section(inputs, params, arms)]
    from tasks.report_scenarios import section as scenario_section  # issue 18: tables, figures, GIFs

    md += [scenario_section(params, workdir)]
    md += ["## Provenance", "", _provenance_section(inputs, params, workdir, hw, git, overrides)]
    md += ["## Appendix: QP benchmark timings", "", qp_section(inputs.qp_table)]
    return "\n".join(md), figures


def _per_algo_settings(params: Params) -> str:
    """Each trained algorithm's learning rate and exploration setting (train.per_algo applied)."""
    parts = []
    for algo in params.train.algos:
        p = params.for_algo(algo)
        knob = {"barriernet": f"exploration std {p.barriernet.exploration_std}",
                "cbf_beta": f"entropy coefficient {p.train.ent_coef:g}"}.get(
            algo, f"initial log-std {p.train.init_log_std:g}")
        parts.append(f"{algo}: learning rate {p.train.learning_rate:g}, {knob}")
    return "; ".join(parts)


def run(params: Params, workdir: str | Path = ".") -> dict[str, Any]:
    """Write reports/decision_report.md and reports/figures/*.png under `workdir`.

    Returns {"report": path, "figures": [paths], "verdict": str}. Raises StageInputError, with
    nothing written, when a required input is missing or malformed.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    inputs = read_inputs(params, workdir)
    text, figures = render(inputs, params, workdir, started)

    figure_dir = workdir / FIGURES_DIR
    paths = []
    for name, png in figures.items():
        path = figure_dir / f"{name}.png"
        with io.atomic_path(path) as tmp:
            tmp.write_bytes(png)
        paths.append(path)
    for stale in figure_dir.glob("*.png"):  # figures an earlier report had and this one has not
        if stale not in paths:
            stale.unlink()
    report_path = io.write_text(workdir / REPORT_PATH, text)
    verdict = inputs.metrics["decision"]["verdict"]
    log.info("report %s: verdict %s, %d figures", report_path, verdict, len(paths))
    return {"report": str(report_path), "figures": [str(p) for p in paths], "verdict": verdict}
