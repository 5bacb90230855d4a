"""The whole report: every section and figure in reading order."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from tasks.artifacts import SUMMARY_PATH, StageInputError
from tasks.params import Params
from tasks.report.figures import (
    ARM_COLOURS,
    FIGURE_CAPTIONS,
    figure_learning_curves,
    figure_min_margin,
    figure_outcome_rates,
    figure_performance_profile,
    figure_qp_speed,
    figure_trajectories,
)
from tasks.report.formatting import fmt_seconds, md_table
from tasks.report.inputs import Inputs
from tasks.report.numbers import across_seed_rows, arms_present
from tasks.report.provenance import _numerics_line, _provenance_section, git_state, hardware, params_overrides
from tasks.report.reference import _reference_section
from tasks.report.sections import (
    REPORT_SECONDS_SLOT,
    _budget_table,
    _per_algo_settings,
    _results_tables,
    _scenario_table,
    _stage_times,
    qp_section,
    qp_summary,
    summary_paragraph,
)
from tasks.report.verdict import decision_section


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
    md += ["### Time of each stage", "",
           "Train, evaluate and scenarios add up their cells' wall times; the cells run side by side on the Dask "
           "workers, so these sums exceed the stages' wall time.", "",
           _stage_times(inputs, None, workdir), ""]

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
    text = "\n".join(md).replace(REPORT_SECONDS_SLOT, fmt_seconds(time.perf_counter() - started))
    return text, figures
