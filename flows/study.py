"""The Prefect flow `study`: a grid of overrides run as one flow, each grid point a DVC experiment.

    study(grid={"env.num_obstacles": [2, 4], "cbf.form": ["dcbf", "dcbf_exact"]},
          overrides={"train.total_steps": 200000})

* Every grid point (the cartesian product of `grid`, on top of `overrides`) is validated with the
  params schema before any work starts; a bad key or value names the grid point, the key and what
  is accepted.
* Each point is an experiment checkout ``runs/<study>-<i>/`` (flows/experiments.py) recorded as
  the DVC experiment ``<study>-<i>``.
* The training cells of the whole grid go to one task runner (Dask, `matrix_task_runner`) together;
  points that share a training configuration train it once, and a cell already published to the
  workspace's cell store (flows/cells.py: same training params, same code) is copied, not trained.
* The study report ``reports/studies/<study>.md`` (and its table, ``<study>.csv``) sets the
  verdicts and each arm's test capture and collision rates with their 95 % intervals side by side;
  it is also attached to the flow run as a markdown artifact.

Run it once without a deployment: ``python -m flows.study --grid env.num_obstacles=[2,4] ...``.
"""

from __future__ import annotations

import argparse
import csv
import io as text_io
import itertools
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping, Sequence

if __name__ == "__main__":  # pin the numerics before flows.pipeline loads torch
    from tasks import numerics as _numerics

    _workspace = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--workspace"), None)
    _numerics.apply(_numerics.mode_from_argv(sys.argv[1:], os.path.join(_workspace, "params.yaml") if _workspace else None))

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import experiments
from flows import pipeline
from flows.lock import workspace_lock
from tasks import numerics
from tasks.params import ParamsError, load_params

STUDIES_DIR = Path("reports") / "studies"
METRICS_PATH = "results/compare/metrics.json"
HEADLINE_PATH = "results/headline.json"
RATES = (("capture", "capture_rate"), ("collision", "collision_rate"))


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every grid point, in order: the cartesian product of the grid's value lists.

    Raises ParamsError for an empty grid or a key whose values are not a non-empty list."""
    if not isinstance(grid, Mapping) or not grid:
        raise ParamsError(f"study grid {grid!r}: accepted: a mapping of params keys to lists of values, "
                          "e.g. {\"env.num_obstacles\": [2, 4]}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamsError(f"study grid key '{key}': {values!r} is not a list of values; accepted: a non-empty "
                              f"list, e.g. {{\"{key}\": [{json.dumps(values)}]}}")
    keys = list(grid)
    return [dict(zip(keys, combination)) for combination in itertools.product(*(grid[k] for k in keys))]


def validate_grid(workspace: Path, grid: Mapping[str, Sequence[Any]],
                  overrides: Mapping[str, Any] | None = None) -> list[tuple[dict[str, Any], Any]]:
    """[(grid point, its validated Params)] for every point; ParamsError naming the point, the key and
    what is accepted at the first bad one. Nothing is written."""
    overrides = dict(overrides or {})
    points = expand_grid(grid)
    both = sorted(set(grid) & set(overrides))
    if both:
        raise ParamsError(f"study: {', '.join(both)} in both the grid and the overrides; accepted: each key in one "
                          "of them")
    validated = []
    for point in points:
        try:
            params = load_params(Path(workspace) / "params.yaml", {**overrides, **point})
        except ParamsError as exc:
            raise ParamsError(f"study grid point {json.dumps(point)}: {exc}") from None
        validated.append((point, params))
    return validated


# ---------------------------------------------------------------------------------------------
# The study report


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _outcome(metrics: Mapping[str, Any]) -> str:
    outcome = metrics.get("outcome")
    if isinstance(outcome, Mapping):
        outcome = outcome.get("letter")
    return str(outcome) if outcome else ""


def study_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (grid point, arm) from each point's results/compare/metrics.json:
    experiment, the grid values, verdict, outcome, verdict_code, arm, and per rate its value and
    95 % interval. `points`: [{"experiment", "grid", "workdir"}]."""
    rows = []
    for point in points:
        workdir = Path(point["workdir"])
        metrics = _read_json(workdir / METRICS_PATH)
        headline = _read_json(workdir / HEADLINE_PATH)
        decision = metrics.get("decision") or {}
        arms = metrics.get("arms") or {}
        common = {"experiment": point["experiment"], **point["grid"],
                  "verdict": decision.get("verdict", "missing"), "outcome": _outcome(metrics),
                  "verdict_code": headline.get("verdict_code", decision.get("verdict_code"))}
        for arm, values in (arms.items() if isinstance(arms, Mapping) else []):
            row = {**common, "arm": arm}
            for _, field in RATES:
                for suffix in ("", "_low", "_high"):
                    row[field + suffix] = values.get(field + suffix)
            rows.append(row)
        if not arms:
            rows.append({**common, "arm": ""})
    return rows


def _rate(row: Mapping[str, Any], field: str) -> str:
    value, low, high = (row.get(field + s) for s in ("", "_low", "_high"))
    if value is None:
        return "-"
    interval = f" [{100 * low:.2f}, {100 * high:.2f}]" if low is not None and high is not None else ""
    return f"{100 * value:.2f} %{interval}"


def render_report(name: str, grid: Mapping[str, Sequence[Any]], overrides: Mapping[str, Any],
                  rows: list[dict[str, Any]], cell_counts: Mapping[str, int]) -> str:
    """The study report in markdown: the grid, then verdicts, capture and collision per grid point."""
    keys = list(grid)
    experiments_seen: list[str] = []
    by_point: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["experiment"] not in by_point:
            experiments_seen.append(row["experiment"])
        by_point.setdefault(row["experiment"], []).append(row)
    arms: list[str] = []
    for row in rows:
        if row["arm"] and row["arm"] not in arms:
            arms.append(row["arm"])

    def head(columns: list[str]) -> list[str]:
        return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def grid_cells(first: Mapping[str, Any]) -> list[str]:
        return [f"`{first['experiment']}`"] + [f"`{json.dumps(first[k])}`" for k in keys]

    lines = [f"# Study `{name}`", ""]
    axes = " x ".join(f"`{k}` in {json.dumps(list(v))}" for k, v in grid.items())
    lines += [f"Grid: {axes}; {len(by_point)} grid points, each a DVC experiment "
              "(`dvc exp show`; `dvc exp apply NAME` restores one, `dvc repro` then has nothing to do)."]
    lines += [f"Base overrides: `{json.dumps(dict(overrides))}`." if overrides else "Base overrides: none."]
    lines += [f"Training cells: {cell_counts.get('trained', 0)} trained, {cell_counts.get('shared', 0)} shared with "
              f"another grid point, {cell_counts.get('reused', 0)} reused from the cell store (same training "
              "params and code).", ""]
    lines += ["## Verdicts", ""] + head(["experiment", *keys, "verdict", "outcome"])
    for experiment in experiments_seen:
        first = by_point[experiment][0]
        lines.append("| " + " | ".join(grid_cells(first) + [f"**{first['verdict']}**", first["outcome"] or "-"]) + " |")
    for label, field in RATES:
        lines += ["", f"## Test {label} rate per arm (95 % interval over training seeds and test scenarios)", ""]
        lines += head(["experiment", *keys, *[f"`{arm}`" for arm in arms]])
        for experiment in experiments_seen:
            per_arm = {row["arm"]: row for row in by_point[experiment]}
            values = [_rate(per_arm[arm], field) if arm in per_arm else "-" for arm in arms]
            lines.append("| " + " | ".join(grid_cells(by_point[experiment][0]) + values) + " |")
    lines += ["", f"Numbers from each experiment's `{METRICS_PATH}`; the table as CSV beside this file. "
              "Intervals are the decision report's (docs/DECISION.md); grid points are separate "
              "experiments, so no correction for multiple comparisons across the grid is applied.", ""]
    return "\n".join(lines)


def write_report(workspace: Path, name: str, markdown: str, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """reports/studies/<name>.md and .csv in the workspace (written whole, then renamed)."""
    folder = Path(workspace) / STUDIES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    report, table = folder / f"{name}.md", folder / f"{name}.csv"
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
    for path, text in ((report, markdown), (table, buffer.getvalue())):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return report, table


# ---------------------------------------------------------------------------------------------
# The flow


# validate_parameters=False: the grid is checked by validate_grid, whose errors name the key and what is accepted.
@flow(name="study", persist_result=False, log_prints=True, validate_parameters=False)
def study(grid: dict[str, list[Any]], overrides: dict[str, Any] | None = None, workspace: str | None = None,
          name: str | None = None) -> dict[str, Any]:
    """Run the pipeline for every point of `grid` (dotted params key -> list of values) on top of
    `overrides`, each point a DVC experiment ``<name>-<i>`` (i from 1, in grid order); then the
    study report.

    Args:
        grid: e.g. {"env.num_obstacles": [2, 4], "cbf.form": ["dcbf", "dcbf_exact"]}.
        overrides: dotted params key -> value for every point (not a grid key).
        workspace: the DVC workspace holding params.yaml and dvc.yaml (default: this repo).
        name: the study's name (default: the flow run's name); letters, digits, '.', '_', '-'.

    Returns {"study", "report", "table", "points": [{"experiment", "grid", "workdir", "verdict"}],
    "cells": {"trained", "shared", "reused"}}.
    """
    logger = get_run_logger()
    workspace_dir = Path(workspace).resolve() if workspace else pipeline.REPO_ROOT
    overrides = dict(overrides or {})
    validated = validate_grid(workspace_dir, grid, overrides)  # every point, before any work
    for _, params in validated:
        numerics.require(params.numerics.mode)
    if any(params.orchestration.dvc_push for _, params in validated):
        pipeline.default_remote(workspace_dir)
    run_name = pipeline._run_name()
    study_name = experiments.valid_name(name or run_name)
    logger.info("study %s: %d grid points", study_name, len(validated))

    points = []
    for index, (point, params) in enumerate(validated, start=1):
        experiment = f"{study_name}-{index}"
        checkout = experiments.prepare(workspace_dir, experiment, {**overrides, **point})
        points.append(pipeline.Point(experiment, params, checkout))
    with ExitStack() as locks:
        for point in points:
            locks.enter_context(workspace_lock(point.workdir, flow_run=run_name))
        done = pipeline.run_points(points, cell_store=workspace_dir, reuse_cells=True)
        recorded = {point.name: pipeline.record_experiment_task(workspace_dir, point.workdir, point.name)
                    for point in points}
        if any(point.params.orchestration.dvc_push for point in points):
            for point in points:
                pipeline.dvc_push_task(point.workdir)

    counts = {"trained": 0, "shared": 0, "reused": 0}
    for point in points:
        for cell in done[point.name]["cells"].values():
            reused = cell["train"].get("reused_from_store")
            counts["reused" if reused else "shared" if reused is False else "trained"] += 1
    described = [{"experiment": point.name, "grid": grid_point, "workdir": str(point.workdir)}
                 for point, (grid_point, _) in zip(points, validated)]
    rows = study_rows(described)
    markdown = render_report(study_name, grid, overrides, rows, counts)
    report, table = write_report(workspace_dir, study_name, markdown, rows)
    create_markdown_artifact(markdown, key=f"study-{pipeline._artifact_key(study_name)}",
                             description=f"study report ({report})")
    create_table_artifact(rows, key=f"study-table-{pipeline._artifact_key(study_name)}",
                          description=f"study table ({table})")
    print(f"study report: {report}")
    for entry in described:
        entry["verdict"] = next((r["verdict"] for r in rows if r["experiment"] == entry["experiment"]), None)
        entry["recorded"] = recorded[entry["experiment"]]
    return {"study": study_name, "report": str(report), "table": str(table), "points": described, "cells": counts}


def main(argv: list[str] | None = None) -> int:
    from tasks.params import parse_override

    parser = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2,...]",
                        help="a grid axis, YAML-typed list (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for every grid point (repeatable)")
    parser.add_argument("--name", default=None, help="the study's name (default: the flow run's)")
    parser.add_argument("--workspace", default=None, help="DVC workspace with params.yaml (default: this repo)")
    args = parser.parse_args(argv)
    try:
        grid = dict(parse_override(text) for text in args.grid)
        overrides = dict(parse_override(text) for text in args.overrides)
        validate_grid(Path(args.workspace or pipeline.REPO_ROOT), grid, overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = study(grid=grid, overrides=overrides or None, workspace=args.workspace, name=args.name)
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
