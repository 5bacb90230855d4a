"""The equal-effort tuning study (issue 15 item 7): `python -m tasks tune`.

Why
---
The baseline and BarrierNet were tuned by hand in the reference project; the newer algorithms
ran on settings tuned for others. A comparison is fair only if every algorithm gets the same
tuning effort, judged by the same rule on episodes that the verdict never reads.

The study (params section ``tuning``)
-------------------------------------
- Every algorithm in ``tuning.algos`` trains ``len(tuning.learning_rates) x len(its exploration
  values)`` configurations (``tuning.exploration.<algo>``: BarrierNet's fixed exploration std, the
  Gaussian policies' initial log-std, CBF-Beta's entropy bonus; params validation makes every
  algorithm's list the same length), each on every seed of ``tuning.seeds`` (apart from
  ``train.seeds``: the study's models are not the evaluated ones), for ``tuning.total_steps`` env
  steps. Every other setting is the shared one of params.yaml. Budget per algorithm:
  configurations x seeds x total_steps env steps, the same for all.
- Each model plays its own arm (deterministic actions) on the DEV episodes (``eval.dev_seed_base``,
  ``eval.dev_episodes``); the test split is never played here.
- One rule for all (``tuning.rule``): score = dev capture rate - dev collision rate, averaged over
  the tuning seeds; the highest wins; ties go to the earlier configuration (the first values are
  the shared defaults, so a tie keeps the defaults).
- The baseline's post-hoc filter, once: every configuration of ``eval.filter_sweep`` plays the
  dev episodes on the chosen baseline configuration's models; the dev rows are pooled over the
  tuning seeds and the sweep's own rule (`tasks.evaluate.select_filter`) picks ONE configuration
  for every evaluated seed (``eval.tuned_filter``).

Outputs (atomic writes; the study's models stay under ``runs/tuning/``, not committed)::

    results/tuning/cells.csv         one row per (algo, configuration, seed): the settings, dev
                                     rates, score, training wall time
    results/tuning/filter_sweep.csv  the pooled dev sweep of the chosen baseline
    results/tuning/choice.json       budget, rule, the chosen settings per algorithm (the
                                     ``train.per_algo`` values) and ``eval.tuned_filter``, provenance
    reports/tuning/tuning_report.md  the study's own report (+ tuning_scores.png beside it);
                                     `python -m tasks tune --report-only` re-renders it from results/tuning

The study does not edit params.yaml (its comments are the documentation): copy the printed
``train.per_algo`` and ``eval.tuned_filter`` blocks into it; tests/test_tuning.py checks that the
committed params equal results/tuning/choice.json.

Cells run in ``tuning.workers`` processes; a finished cell keeps its dev result
(``runs/tuning/<cell>/dev.json``, keyed by the cell's training-config hash), and an unfinished one
resumes from its training checkpoint, so a rerun after a crash continues.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import io
# The study's report and the choice's params.yaml lines belong to the report (tasks/report_tuning.py),
# which the decision report also embeds: the report never imports this module, this module imports it.
from tasks.params import ExplorationGrid, Params, params_hash, training_config, validate_params
from tasks.report_tuning import FIGURE_PATH, REPORT_PATH, committed_matches, params_snippet  # noqa: F401

log = logging.getLogger(__name__)

RESULTS_DIR = Path("results/tuning")
CELLS_PATH = RESULTS_DIR / "cells.csv"
SWEEP_PATH = RESULTS_DIR / "filter_sweep.csv"
CHOICE_PATH = RESULTS_DIR / "choice.json"
# apart from the report stage's outputs (DVC empties reports/figures before each report run)
RUNS_DIR = Path("runs/tuning")
CELL_COLUMNS = ("algo", "config", "learning_rate", "knob", "value", "seed", "dev_episodes", "capture_rate",
                "collision_rate", "score", "train_wall_seconds", "env_steps")


# ---------------------------------------------------------------------------------------------
# the grid


def configurations(params: Params, algo: str) -> list[dict[str, Any]]:
    """The study's configurations of `algo` in order (index 0: the first learning rate with the first
    exploration value): each a ``train.per_algo.<algo>`` mapping."""
    knob = ExplorationGrid.KNOB[algo]
    values = getattr(params.tuning.exploration, algo)
    return [{"learning_rate": float(lr), knob: value} for lr in params.tuning.learning_rates for value in values]


def cell_params(params: Params, algo: str, config: dict[str, Any], seed: int) -> Params:
    """The params of one study cell: the shared ones, `config` as this algorithm's settings,
    tuning.total_steps steps, one seed. Validated (a bad tuning section fails here, before work)."""
    raw = params.to_dict()
    raw["train"].update(total_steps=params.tuning.total_steps, seeds=[seed], algos=[algo],
                        per_algo={algo: config})
    return validate_params(raw, source=f"tuning cell {algo} {config} seed {seed}")


def plan(params: Params) -> list[dict[str, Any]]:
    """Every cell of the study: {algo, config (index), settings, seed, params (dict)}; all validated."""
    cells = []
    for algo in params.tuning.algos:
        for index, config in enumerate(configurations(params, algo)):
            for seed in params.tuning.seeds:
                cell = cell_params(params, algo, config, seed)
                cells.append({"algo": algo, "config": index, "settings": config, "seed": seed,
                              "params": cell.to_dict(), "key": params_hash(training_config(cell, algo, seed))})
    return cells


def _cell_dir(root: Path, cell: dict[str, Any]) -> Path:
    return root / RUNS_DIR / f"{cell['algo']}-c{cell['config']}-s{cell['seed']}"


# ---------------------------------------------------------------------------------------------
# one cell (runs in a worker process)


def dev_rates(policy, obs_rms, params: Params) -> dict[str, Any]:
    """Play `policy` on every dev episode: {episodes, capture_rate, collision_rate}."""
    from tasks.evaluate import play_episodes

    rows = play_episodes(policy, obs_rms, params, list(range(params.eval.dev_episodes)), None, "dev")[0]
    outcomes = pd.Series([r["outcome"] for r in rows])
    return {"episodes": len(rows), "capture_rate": float(outcomes.eq("capture").mean()),
            "collision_rate": float(outcomes.eq("collision").mean())}


def run_cell(cell: dict[str, Any], root: str) -> dict[str, Any]:
    """Train one cell (resuming if a checkpoint exists), play it on the dev episodes, return its row."""
    import torch

    from tasks import train
    from tasks.artifacts import model_path
    from tasks.artifacts.policy import build_policy, load_trained

    root_path = Path(root)
    out = _cell_dir(root_path, cell)
    done = out / "dev.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("key") == cell["key"]:
            return record["row"]
    params = Params.model_validate(cell["params"])
    torch.set_num_threads(1)
    summary = train.run(params, workdir=out, algo=cell["algo"], seed=cell["seed"])
    actor, _, obs_rms, _ = load_trained(model_path(out, cell["algo"], cell["seed"]), params)
    policy = build_policy(cell["algo"], actor, params)
    policy.eval()
    rates = dev_rates(policy, obs_rms, params)
    knob = ExplorationGrid.KNOB[cell["algo"]]
    row = {
        "algo": cell["algo"], "config": cell["config"], "learning_rate": cell["settings"]["learning_rate"],
        "knob": knob, "value": json.dumps(cell["settings"][knob]), "seed": cell["seed"],
        "dev_episodes": rates["episodes"], "capture_rate": rates["capture_rate"],
        "collision_rate": rates["collision_rate"], "score": rates["capture_rate"] - rates["collision_rate"],
        "train_wall_seconds": float(summary["wall_seconds"]), "env_steps": int(summary["total_steps"]),
    }
    io.write_json(done, {"key": cell["key"], "row": row})
    return row


# ---------------------------------------------------------------------------------------------
# the rule


def choose(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (algo, config): mean dev rates and score over seeds, ``chosen`` True for the
    highest mean score per algorithm (ties: the lower config index). Refuses a table whose
    algorithms had unequal budgets (configurations x seeds)."""
    budget = cells.groupby("algo").size()
    if budget.nunique() != 1:
        raise ValueError(f"unequal tuning budgets (cells per algorithm): {budget.to_dict()}; accepted: equal")
    keys = ["algo", "config", "learning_rate", "knob", "value"]
    means = cells.groupby(keys, sort=False).agg(
        seeds=("seed", "size"), capture_rate=("capture_rate", "mean"), collision_rate=("collision_rate", "mean"),
        score=("score", "mean"), score_min=("score", "min"), score_max=("score", "max"),
    ).reset_index()
    means["chosen"] = False
    for _, group in means.groupby("algo", sort=False):
        best = group.sort_values(["score", "config"], ascending=[False, True]).index[0]
        means.loc[best, "chosen"] = True
    return means


def pooled_filter_choice(sweeps: pd.DataFrame, params: Params) -> dict[str, Any]:
    """Pool per-seed dev sweep rows (same configuration) and apply the sweep's rule once."""
    from tasks.evaluate import select_filter
    from tasks.stats import wilson_interval

    keys = ["form", "gamma", "robust_margin"]
    pooled = []
    for (form, gamma, margin), group in sweeps.groupby(keys, sort=False):
        n, steps = int(group["episodes"].sum()), int(group["steps"].sum())
        collisions = int(round(float((group["collision_rate"] * group["episodes"]).sum())))
        per_step = lambda col: float((group[col] * group["steps"]).sum()) / max(steps, 1)  # noqa: E731
        pooled.append({
            "form": form, "gamma": float(gamma), "robust_margin": float(margin), "split": "dev", "episodes": n,
            "steps": steps, "capture_rate": float((group["capture_rate"] * group["episodes"]).sum()) / n,
            "collision_rate": collisions / n,
            "collision_upper": float(wilson_interval(collisions, n, params.eval.filter_sweep.confidence)[1]),
            "intervention_rate": per_step("intervention_rate"), "infeasible_rate": per_step("infeasible_rate"),
            "cbf_violation_rate": per_step("cbf_violation_rate"),
        })
    table = pd.DataFrame(pooled)
    return {"table": table, "choice": select_filter(table, params.eval.filter_sweep.max_collision_upper)}


def _sweep_baseline(root: Path, cell: dict[str, Any]) -> pd.DataFrame:
    from tasks.artifacts import model_path
    from tasks.artifacts.policy import load_trained
    from tasks.evaluate import sweep_filters

    params = Params.model_validate(cell["params"])
    actor, _, obs_rms, _ = load_trained(model_path(_cell_dir(root, cell), "baseline", cell["seed"]), params)
    return sweep_filters(actor, obs_rms, params).assign(seed=cell["seed"])


# ---------------------------------------------------------------------------------------------
# the study


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Run the whole study under `root` and write the outputs of the module docstring."""
    from tasks.report.provenance import cpu_model, git_state

    root = Path(root)
    cells = plan(params)  # validates every cell's params before any work
    started = time.perf_counter()
    workers = min(params.tuning.workers, len(cells))
    log.info("tuning study: %d cells (%d algorithms x %d configurations x %d seeds), %d steps each, %d workers",
             len(cells), len(params.tuning.algos), len(cells) // len(params.tuning.algos) // len(params.tuning.seeds),
             len(params.tuning.seeds), params.tuning.total_steps, workers)
    rows = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, cell, str(root)) for cell in cells]
        for future in futures:
            rows.append(future.result())
            log.info("tuning cell done: %s", rows[-1])
    table = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    means = choose(table)

    tuned_filter, sweep_table = None, pd.DataFrame()
    if "baseline" in params.tuning.algos and params.eval.filter_sweep.enabled:
        best = int(means[(means["algo"] == "baseline") & means["chosen"]]["config"].iloc[0])
        chosen_cells = [c for c in cells if c["algo"] == "baseline" and c["config"] == best]
        with ProcessPoolExecutor(max_workers=min(workers, len(chosen_cells)), mp_context=get_context("spawn")) as pool:
            sweeps = pd.concat(list(pool.map(_sweep_baseline, [root] * len(chosen_cells), chosen_cells)),
                               ignore_index=True)
        pooled = pooled_filter_choice(sweeps, params)
        sweep_table = pooled["table"]
        choice = pooled["choice"]
        tuned_filter = {"form": choice["form"], "gamma": float(choice["gamma"]),
                        "robust_margin": float(choice["robust_margin"])}

    per_algo = {}
    for row in means[means["chosen"]].itertuples():
        per_algo[row.algo] = configurations(params, row.algo)[row.config]
    wall = time.perf_counter() - started
    choice = {
        "rule": params.tuning.rule,
        "budget": {
            "algorithms": list(params.tuning.algos), "seeds": list(params.tuning.seeds),
            "configurations_per_algorithm": len(configurations(params, params.tuning.algos[0])),
            "steps_per_cell": params.tuning.total_steps,
            "env_steps_per_algorithm": len(configurations(params, params.tuning.algos[0]))
            * len(params.tuning.seeds) * params.tuning.total_steps,
            "dev_episodes_per_cell": params.eval.dev_episodes,
            "learning_rates": list(params.tuning.learning_rates),
            "exploration": params.tuning.exploration.model_dump(),
        },
        "per_algo": per_algo,
        "tuned_filter": tuned_filter,
        "provenance": {"cpu": cpu_model(), "cores": os.cpu_count(), "workers": workers, "wall_seconds": round(wall, 1),
                       "git_commit": git_state(root)["commit"] or "unknown",
                       "params_hash": params_hash(params.to_dict()), "learner": params.train.learner},
    }
    io.write_csv(root / CELLS_PATH, table)
    if len(sweep_table):
        io.write_csv(root / SWEEP_PATH, sweep_table)
    io.write_json(root / CHOICE_PATH, choice)
    from tasks.report_tuning import write_report

    write_report(root, table, means, sweep_table, choice, params)
    return choice


def render_report(params: Params, root: str | Path = ".") -> Path:
    """Re-render the study's report from its committed results (no training)."""
    from tasks.report_tuning import write_report

    root = Path(root)
    for path in (CELLS_PATH, CHOICE_PATH):
        if not (root / path).is_file():
            raise FileNotFoundError(f"{root / path} is missing; run `python -m tasks tune` first")
    cells = pd.read_csv(root / CELLS_PATH)
    sweep = pd.read_csv(root / SWEEP_PATH) if (root / SWEEP_PATH).is_file() else pd.DataFrame()
    return write_report(root, cells, choose(cells), sweep, json.loads((root / CHOICE_PATH).read_text()), params)
