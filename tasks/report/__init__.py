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

The package, one purpose per module (imported in this order, none imports a later one)::

    inputs.py      reading and validating the inputs above (TrainCell, EvalCell, Inputs)
    formatting.py  how numbers, arm names and markdown tables are printed
    provenance.py  hardware, git commit, packages, params overrides, reproduce commands
    numbers.py     numbers the text and the figures share (across-seed rows, QP medians)
    figures.py     the PNG figures, rendered to bytes
    sections.py    summary, setup, results and QP benchmark sections
    reference.py   our numbers beside the reference project's (data/reference_phase25.json)
    verdict.py     the decision section: outcome A-D, verdict, gates, targets, matrix
    document.py    the whole report in reading order (and the report_* sections it embeds)

This file holds the stage entry `run` (the registry calls `tasks.report:run`) and re-exports
the names other modules import from `tasks.report`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tasks import io
from tasks.params import Params

# Re-exported: tasks/report_*.py, tests/ and benchmarks import these from `tasks.report`.
from tasks.report.document import render
from tasks.report.figures import (  # noqa: F401
    ARM_COLOURS,
    _figure_bytes,
    _pyplot,
    figure_learning_curves,
    figure_min_margin,
    figure_outcome_rates,
    figure_performance_profile,
    figure_qp_speed,
    figure_trajectories,
    seed_band,
)
from tasks.report.formatting import (  # noqa: F401
    ARM_LABELS,
    arm_label,
    fmt_metric,
    fmt_number_ci,
    fmt_pp_ci,
    fmt_rate,
    fmt_rate_ci,
    fmt_seconds,
    md_table,
    triple,
)
from tasks.report.inputs import (  # noqa: F401
    EvalCell,
    Inputs,
    TrainCell,
    _read_tsv_curve,
    read_compare_metrics,
    read_compare_summary,
    read_eval_cell,
    read_inputs,
    read_train_cell,
)
from tasks.report.numbers import across_seed_rows, all_episodes, arms_present  # noqa: F401
from tasks.report.provenance import default_params, git_state, params_overrides, reproduce_commands  # noqa: F401
from tasks.report.reference import load_reference  # noqa: F401
from tasks.report.sections import _stage_times, qp_section, qp_summary  # noqa: F401
from tasks.report.verdict import decision_section, outcome_analysis, test_range_looks, training_overhead  # noqa: F401

log = logging.getLogger(__name__)

REPORT_PATH = Path("reports/decision_report.md")
FIGURES_DIR = Path("reports/figures")


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
