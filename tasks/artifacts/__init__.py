"""The contract between the pipeline's stages: where each stage's results lie and what they hold.

A *stage* is a module the stage registry (tasks/registry.py) runs: ``tasks.qp_benchmark``,
``tasks.train``, ``tasks.evaluate``, ``tasks.scenarios``, ``tasks.compare``, ``tasks.headline``
and the report (``tasks.report`` with its package and the ``tasks.report_*`` sections it embeds).
Stages talk to each other only through files, and this package is where those files are named and
described: the results layout, the episode tables' columns, the outcome and arm vocabularies,
the errors a stage raises on a bad input, and (``tasks.artifacts.policy``) loading a trained policy.

Everything else in ``tasks/`` is a library a stage may import (params, io, stats, numerics, the
decision protocol, gpu, code_deps, the scenario catalogue) or a front door that runs stages
(registry, ``__main__``, the tuning study); ``flows/`` is the Prefect front door. Stages, the
registry, the report and the flows import this package and never each other
(tests/test_artifacts.py checks the imports).

This module stays light (pathlib, pandas, numpy): DVC's code deps of a stage are its import
closure (tasks/code_deps.py), so the compare and headline stages must not pull in the model.
Loading a checkpoint needs torch and the actors and lives in ``tasks.artifacts.policy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

__all__ = [
    "ALGO_OF_ARM", "ARMS", "ARMS_OF_ALGO", "ARMS_WITHOUT_QP", "CANDIDATE_ARM", "REFERENCE_ARM", "OUTCOMES", "SPLITS",
    "KNOWN_ARMS",
    "EPISODE_COLUMNS", "SCENARIO_EPISODE_COLUMNS", "VERDICTS",
    "StageInputError", "CheckpointError",
    "CELL", "cell_name", "train_dir", "model_path", "train_summary_path", "train_curve_path", "eval_dir", "episodes_path",
    "scenarios_dir", "stage_timing_path", "read_episode_table",
]

# ---------------------------------------------------------------------------------------------
# Vocabulary: arms, the algorithm each arm needs, outcomes, splits, verdicts

ALGO_OF_ARM: Mapping[str, str] = {
    "barriernet": "barriernet",
    "baseline": "baseline",
    "baseline_ct_filter": "baseline",
    "baseline_dcbf_filter": "baseline",
    "barriernet_rcbf": "barriernet",
    "cbf_beta": "cbf_beta",
    "cbf_beta_rcbf": "cbf_beta",
    "shielded": "shielded",
    "baseline_tuned_filter": "baseline",
}
"""Every arm, in report order, and the trained algorithm (model/actors.py ALGOS) it plays: an arm
is the algorithm's policy itself or that policy behind a post-hoc safety filter."""

ARMS: tuple[str, ...] = tuple(ALGO_OF_ARM)
# Every arm the pipeline knows, in report order (the name compare and the report always used).
KNOWN_ARMS = ARMS
ARMS_OF_ALGO: dict[str, tuple[str, ...]] = {
    algo: tuple(arm for arm in ARMS if ALGO_OF_ARM[arm] == algo) for algo in dict.fromkeys(ALGO_OF_ARM.values())
}
"""The arms one trained (algo, seed) cell is evaluated as, in evaluation order."""

ARMS_WITHOUT_QP: frozenset[str] = frozenset({"baseline"})
"""Arms whose actions pass through no QP (the baseline's policy alone): their QP columns
(interventions, corrections, infeasible steps) are zero by construction, not measured."""
REFERENCE_ARM = "baseline"  # what the candidate is compared against
CANDIDATE_ARM = "barriernet"  # the approach under test
OUTCOMES: tuple[str, ...] = ("capture", "collision", "timeout")
"""How an episode ends (episodes.csv column ``outcome``)."""
SPLITS = ("dev", "test")
"""Episode splits: dev episodes serve choices, test episodes the headline and the verdict."""
VERDICTS = ("BETTER", "EQUIVALENT", "WORSE", "INCONCLUSIVE", "NO_ALTERNATIVE", "FAILS_STEP_1", "NOT_COMPARABLE")
"""compare's ``decision.verdict`` in results/compare/metrics.json."""

# ---------------------------------------------------------------------------------------------
# Episode tables

EPISODE_COLUMNS: tuple[str, ...] = (
    "arm",
    "algo",
    "seed",
    "split",
    "episode",
    "env_seed",
    "outcome",
    "length",
    "return",
    "min_h",
    "cbf_violation_steps",
    "enforced_violation_steps",
    "correction_sum",
    "interventions",
    "infeasible_steps",
    "decision_ms",
)
"""results/eval/<cell>/episodes.csv (written by evaluate, read by compare and the report): one row
per (arm, split, episode)."""

SCENARIO_EPISODE_COLUMNS: tuple[str, ...] = (
    "arm", "algo", "seed", "scenario", "episode", "env_seed", "outcome", "length", "min_h",
    "cbf_violation_steps", "interventions", "infeasible_steps", "correction",
)  # fmt: skip
"""results/scenarios/<cell>/episodes.csv: one row per (arm, scenario, episode); correction is the
mean |executed - proposal| (v, w) over the episode's steps."""

_INT_COLUMNS = ("seed", "episode", "env_seed", "length", "cbf_violation_steps", "enforced_violation_steps",
                "interventions", "infeasible_steps")
_FLOAT_COLUMNS = ("return", "min_h", "correction_sum", "decision_ms")
_STEP_COUNT_COLUMNS = ("cbf_violation_steps", "enforced_violation_steps", "interventions", "infeasible_steps")

# ---------------------------------------------------------------------------------------------
# Errors


class StageInputError(ValueError):
    """A stage input file is missing or malformed; the message names the file and the problem."""


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not belong to this configuration."""


# ---------------------------------------------------------------------------------------------
# The results layout. The templates hold `{algo}` and `{seed}` for matrix cells: the registry
# declares them as they are (it turns them into dvc.yaml's `${item.*}`), stages format them.

CELL = "{algo}-s{seed}"
RESULTS = "results"
TRAIN_CELL = f"{RESULTS}/train/{CELL}"
MODEL = f"{TRAIN_CELL}/model.pt"  # final weights + observation normaliser
TRAIN_SUMMARY = f"{TRAIN_CELL}/summary.json"  # budget, wall time, last-window rates
TRAIN_CURVES = f"{TRAIN_CELL}/live/plots/metrics"  # DVCLive curves, <name>.tsv (name like rollout/capture_rate)
EVAL_CELL = f"{RESULTS}/eval/{CELL}"
SCENARIOS_CELL = f"{RESULTS}/scenarios/{CELL}"
EVAL_ROOT = f"{RESULTS}/eval"
TRAIN_ROOT = f"{RESULTS}/train"
SCENARIOS_ROOT = f"{RESULTS}/scenarios"
QP_BENCHMARK_DIR = f"{RESULTS}/qp_benchmark"
COMPARE_DIR = f"{RESULTS}/compare"
TUNING_DIR = f"{RESULTS}/tuning"

# Files inside a cell folder
EPISODES_FILE = "episodes.csv"
TRAJECTORY_FILE = "trajectory.npz"  # evaluate: the drawn test episode of every arm
TIMING_FILE = "timing.json"  # a stage's or a cell's wall time (never part of the deterministic outputs)
SWEEP_FILE = "filter_sweep.csv"  # evaluate: the post-hoc filter sweep on dev episodes
CHOICE_FILE = "filter_choice.json"  # evaluate: the tuned filter's configuration
SKIPPED_FILE = "skipped.json"  # scenarios: a cell whose seed is not in scenarios.seeds
BEHAVIOUR_FILE = "behaviour.csv"  # scenarios: smoothness, steering vs braking per (arm, scenario)
SCENARIO_TRAJECTORIES_FILE = "trajectories.npz"  # scenarios: episode 0 of every (scenario, arm)
HEATMAPS_FILE = "heatmaps.npz"  # scenarios: per-arm occupancy, margin, correction and action grids

# Single files, relative to the workdir
SUMMARY_PATH = Path(f"{COMPARE_DIR}/summary.csv")
METRICS_PATH = Path(f"{COMPARE_DIR}/metrics.json")
COMPARE_TIMING_PATH = Path(f"{COMPARE_DIR}/{TIMING_FILE}")
HEADLINE_PATH = Path(f"{RESULTS}/headline.json")
QP_TABLE_PATH = Path(f"{QP_BENCHMARK_DIR}/table.csv")
QP_METRICS_PATH = Path(f"{QP_BENCHMARK_DIR}/metrics.json")
TUNING_CHOICE_PATH = Path(f"{TUNING_DIR}/choice.json")  # the tuning study's budget and choice (in git)


def cell_name(algo: str, seed: int) -> str:
    """The folder name of one (algorithm, training seed) cell, e.g. ``barriernet-s0``."""
    return CELL.format(algo=algo, seed=seed)


def train_dir(workdir: str | Path, algo: str, seed: int) -> Path:
    """``<workdir>/results/train/<algo>-s<seed>``: the train stage's outputs for one cell."""
    return Path(workdir) / TRAIN_CELL.format(algo=algo, seed=seed)


def model_path(workdir: str | Path, algo: str, seed: int) -> Path:
    """The trained model of one cell (what evaluate and scenarios load)."""
    return Path(workdir) / MODEL.format(algo=algo, seed=seed)


def train_summary_path(workdir: str | Path, algo: str, seed: int) -> Path:
    """The train stage's summary of one cell (budget, wall time, last-window rates, fallbacks)."""
    return Path(workdir) / TRAIN_SUMMARY.format(algo=algo, seed=seed)


def train_curve_path(workdir: str | Path, algo: str, seed: int, name: str) -> Path:
    """One DVCLive curve of a train cell; `name` like ``rollout/capture_rate`` (columns step, metric)."""
    return Path(workdir) / TRAIN_CURVES.format(algo=algo, seed=seed) / f"{name}.tsv"


def eval_dir(workdir: str | Path, algo: str, seed: int) -> Path:
    """``<workdir>/results/eval/<algo>-s<seed>``: the evaluate stage's outputs for one cell."""
    return Path(workdir) / EVAL_CELL.format(algo=algo, seed=seed)


def episodes_path(workdir: str | Path, algo: str, seed: int) -> Path:
    """Where the evaluate stage writes the episode table of one (algo, training seed)."""
    return eval_dir(workdir, algo, seed) / EPISODES_FILE


def scenarios_dir(workdir: str | Path, algo: str, seed: int) -> Path:
    """``<workdir>/results/scenarios/<algo>-s<seed>``: the scenarios stage's outputs for one cell."""
    return Path(workdir) / SCENARIOS_CELL.format(algo=algo, seed=seed)


def stage_timing_path(workdir: str | Path, stage: str) -> Path:
    """``results/<stage>/timing.json``: the wall time the registry records for a non-matrix stage."""
    return Path(workdir) / RESULTS / stage / TIMING_FILE


# ---------------------------------------------------------------------------------------------
# Reading and validating an episode table


def read_episode_table(path: str | Path, algo: str | None = None, seed: int | None = None) -> pd.DataFrame:
    """Read one ``episodes.csv`` and check its columns, types and ranges.

    Returns a DataFrame with exactly EPISODE_COLUMNS (extra columns are dropped), integer
    columns as int64, float columns as float64, and arm/algo/outcome as str. When ``algo`` /
    ``seed`` are given, every row must carry them. Raises StageInputError naming the file and
    every bad column.
    """
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"{path}: episode table not found (written by the evaluate stage)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageInputError(f"{path}: not a readable CSV ({exc})") from None

    missing = [c for c in EPISODE_COLUMNS if c not in table.columns]
    if missing:
        raise StageInputError(
            f"{path}: missing columns {missing}; expected columns {list(EPISODE_COLUMNS)}, found {list(table.columns)}"
        )
    if table.empty:
        raise StageInputError(f"{path}: has no episode rows")

    problems: list[str] = []
    out = pd.DataFrame(index=table.index)
    for column in _INT_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            problems.append(f"column '{column}' must hold integers; bad values {_examples(table[column][bad])}")
            continue
        out[column] = values.astype("int64")
    for column in _FLOAT_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna()  # min_h may be +inf (no barrier ever active); NaN is never valid
        if column != "min_h":
            bad |= ~np.isfinite(values)
        if bad.any():
            problems.append(f"column '{column}' must hold numbers; bad values {_examples(table[column][bad])}")
            continue
        out[column] = values.astype("float64")
    for column, accepted in (("arm", KNOWN_ARMS), ("outcome", OUTCOMES), ("split", SPLITS), ("algo", None)):
        values = table[column].astype(str).str.strip()
        if accepted is not None:
            bad = ~values.isin(accepted)
            if bad.any():
                problems.append(f"column '{column}' has {_examples(table[column][bad])}; accepted: {list(accepted)}")
                continue
        out[column] = values.astype(object)

    # Ranges only once the types are right.
    if not problems:
        if (out["length"] < 1).any():
            problems.append(f"column 'length' must be >= 1; bad values {_examples(out['length'][out['length'] < 1])}")
        if (out["episode"] < 0).any():
            problems.append("column 'episode' must be >= 0")
        for column in _STEP_COUNT_COLUMNS:
            bad = (out[column] < 0) | (out[column] > out["length"])
            if bad.any():
                problems.append(f"column '{column}' must lie in [0, length]; {int(bad.sum())} rows do not")
        if (out["decision_ms"] < 0).any():
            problems.append("column 'decision_ms' must be >= 0")
        duplicated = out.duplicated(["arm", "split", "episode"])
        if duplicated.any():
            pairs = list(out.loc[duplicated, ["arm", "split", "episode"]].itertuples(index=False, name=None))[:3]
            problems.append(f"(arm, split, episode) rows appear twice, e.g. {pairs}; "
                            "accepted: one row per (arm, split, episode)")
        if algo is not None and (out["algo"] != algo).any():
            problems.append(f"column 'algo' has {_examples(out['algo'][out['algo'] != algo])}; expected '{algo}'")
        if seed is not None and (out["seed"] != seed).any():
            problems.append(f"column 'seed' has {_examples(out['seed'][out['seed'] != seed])}; expected {seed}")
    if problems:
        raise StageInputError(f"{path}: " + "; ".join(problems))
    return out[list(EPISODE_COLUMNS)].reset_index(drop=True)


def _examples(values: pd.Series, k: int = 3) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values.drop_duplicates().head(k)]
