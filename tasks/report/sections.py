"""The markdown of the summary, setup, results and QP benchmark sections."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tasks.artifacts import CANDIDATE_ARM, REFERENCE_ARM, SCENARIOS_ROOT, TIMING_FILE, stage_timing_path
from tasks.params import Params
from tasks.report.formatting import (
    is_finite_number,
    arm_label,
    fmt_interval_pp,
    fmt_metric,
    fmt_number_ci,
    fmt_rate,
    fmt_rate_ci,
    fmt_seconds,
    md_table,
    triple,
)
from tasks.report.inputs import DECISION_TIMING, Inputs, RESULT_METRICS
from tasks.report.numbers import across_seed_rows, qp_pivot
from tasks.stats import iqm_trims


def _decision_time_clause(inputs: Inputs, cand: dict, ref: dict) -> str:
    """How long BarrierNet's decision took against the baseline's: one state per call (the
    reference's "inference per step") where the evaluate cells timed it, then the batched
    evaluation's time per row, which divides a call over thousands of states."""
    batched = f"{float(cand['decision_ms']):.3f} ms against {float(ref['decision_ms']):.3f} ms per state"
    ours, theirs = inputs.single_decision_ms(CANDIDATE_ARM), inputs.single_decision_ms(REFERENCE_ARM)
    if ours is None or theirs is None:
        return f"a decision in the batched evaluation took {batched}"
    return (f"one decision (one state per call, median over seeds) took {ours[0]:.3f} ms against "
            f"{theirs[0]:.3f} ms for the baseline (batched evaluation: {batched})")


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
            f"and violated its body barrier (h < 0) on {fmt_rate(cand['cbf_violation_rate'])} of steps against "
            f"{fmt_rate(ref['cbf_violation_rate'])}."
        )
        parts.append(
            f"Its QP changed the action on {fmt_rate(cand['intervention_rate'])} of steps (infeasible on "
            f"{fmt_rate(cand['infeasible_rate'])}), and {_decision_time_clause(inputs, cand, ref)}."
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


def _cpu_time(summary: dict) -> str:
    """A cell's training CPU time and its share of the wall time ("12.0 s (94 %)"). With one torch
    thread and the update on the CPU (the default), a share well below 100 % is time the cell
    waited for a core; on a GPU waiting for the device lowers it too, and with more threads it can
    exceed 100 %. "not recorded" for a summary without it (written before cells recorded it)."""
    cpu, wall = summary.get("cpu_seconds"), summary.get("wall_seconds")
    if not is_finite_number(cpu):
        return "not recorded"
    share = f" ({100 * float(cpu) / float(wall):.0f} %)" if is_finite_number(wall) and float(wall) > 0 else ""
    return fmt_seconds(cpu) + share


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
            fmt_seconds(s["wall_seconds"]), _cpu_time(s), f"{sps:,.0f}" if is_finite_number(sps) else "n/a", fb_text,
            f"{s.get('rollout_device', '?')} / {s.get('update_device', '?')}"
            + (f" ({s['learner']})" if s.get("learner") else ""),
            s.get("resumed_from_update") if s.get("resumed_from_update") is not None else "no",
        ])
    return md_table(["algo", "seed", "budget (train.total_steps)", "env steps done", "updates", "wall time",
                     "CPU time (share of wall)", "env steps/s", "minibatch fallback (size used)",
                     "rollout / update device (learner)", "resumed from update"],
                    rows)


def _wall_in(path: Path) -> float | None:
    """The wall_seconds a timing.json records, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text()).get("wall_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _recorded_wall(workdir: Path, stage: str) -> float | None:
    """Wall seconds a stage recorded in results/<stage>/timing.json (tasks/registry.py), if any."""
    return _wall_in(stage_timing_path(workdir, stage))


def _sum_of_cells(n: int) -> str:
    return f"sum of {n} cell" + ("" if n == 1 else "s")


def _scenario_cell_walls(workdir: Path) -> dict[str, float]:
    """Wall seconds of the scenario cells that played (results/scenarios/<cell>/timing.json), by
    cell name; cells outside scenarios.seeds wrote skipped.json instead and are left out."""
    walls = {path.parent.name: _wall_in(path)
             for path in sorted((Path(workdir) / SCENARIOS_ROOT).glob(f"*/{TIMING_FILE}"))}
    return {name: wall for name, wall in walls.items() if wall is not None}


# Where the report's own row goes while the rest of the report is still being drawn: the report
# section order puts the stage table before the figures and GIFs that take most of the stage's
# time, so render() fills this in last (see `_stage_times`).
REPORT_SECONDS_SLOT = "\x00report-seconds\x00"


def _stage_times(inputs: Inputs, render_seconds: float | None, workdir: Path | None = None) -> str:
    """Markdown table: each stage's time. Train, evaluate and scenarios are the sums of their cells' wall
    times; the cells run side by side on the Dask workers, so a sum exceeds the stage's wall time.

    `render_seconds=None` leaves REPORT_SECONDS_SLOT in the report's row, for the caller to replace
    once every figure is drawn."""
    rows = []
    train_total = sum(float(c.summary["wall_seconds"]) for c in inputs.train)
    rows.append(["train", f"{fmt_seconds(train_total)} ({_sum_of_cells(len(inputs.train))})",
                 ", ".join(f"{c.algo}-s{c.seed}: {fmt_seconds(c.summary['wall_seconds'])}" for c in inputs.train)])
    eval_walls = [c.wall_seconds for c in inputs.evals]
    known = [w for w in eval_walls if w is not None]
    rows.append(["evaluate", f"{fmt_seconds(sum(known))} ({_sum_of_cells(len(known))})"
                 + ("" if len(known) == len(eval_walls) else " (incomplete)") if known else "not recorded",
                 ", ".join(f"{c.algo}-s{c.seed}: {fmt_seconds(c.wall_seconds)}" for c in inputs.evals)])
    scenario_walls = _scenario_cell_walls(workdir) if workdir is not None else {}
    rows.append(["scenarios", f"{fmt_seconds(sum(scenario_walls.values()))} ({_sum_of_cells(len(scenario_walls))})"
                 if scenario_walls else "not recorded",
                 ", ".join(f"{name}: {fmt_seconds(wall)}" for name, wall in scenario_walls.items())])
    qp_wall = _recorded_wall(workdir, "qp_benchmark") if workdir is not None else None
    rows.append(["qp_benchmark", fmt_seconds(qp_wall) if qp_wall is not None else (
        "not recorded" if inputs.qp_table is not None else "not run"), ""])
    compare_wall = _recorded_wall(workdir, "compare") if workdir is not None else None
    rows.append(["compare", fmt_seconds(compare_wall) if compare_wall is not None else "not recorded", ""])
    headline_wall = _recorded_wall(workdir, "headline") if workdir is not None else None
    rows.append(["headline", fmt_seconds(headline_wall) if headline_wall is not None else "not recorded", ""])
    rows.append(["report", REPORT_SECONDS_SLOT if render_seconds is None else fmt_seconds(render_seconds),
                 "this rendering: reading the results and drawing every table, figure and GIF, up to "
                 "writing the files"])
    return md_table(["stage", "time", "per cell"], rows)


def interval_methods_sentence(methods: dict[str, str]) -> str:
    """The across-seed table's columns grouped by the interval method `compare` recorded for each
    (metrics.json's interval_methods), e.g. "capture, collision: <method>; QP intervention, ...:
    <method>"; columns without a recorded method are left out."""
    columns = [(name, label) for name, label, _ in RESULT_METRICS] + [("mean_return", "mean return")]
    groups: dict[str, list[str]] = {}
    for name, label in columns:
        if name in methods:
            groups.setdefault(methods[name], []).append(label)
    return "; ".join(f"{', '.join(labels)}: {method}" for method, labels in groups.items())


def _results_tables(inputs: Inputs, params: Params, arms: list[str], conf: float) -> str:
    level = f"{100 * conf:g} %"
    rows = across_seed_rows(inputs.summary)
    header = ["arm", "seeds", "episodes"] + [label for _, label, _ in RESULT_METRICS] + ["mean return"]
    table = []
    for arm in arms:
        row = rows[arm]
        table.append([arm_label(arm, params), int(row["seeds"]), int(row["episodes"])]
                     + [fmt_metric(kind, row, name, arm) for name, _, kind in RESULT_METRICS]
                     + [fmt_number_ci(row["mean_return"], row.get("mean_return_low"), row.get("mean_return_high"), 1)
                        if "mean_return" in row else "n/a"])
    methods = inputs.metrics.get("interval_methods") or {}
    text = [f"### Across seeds (test split; {level} intervals; episode rates, return and decision ms: the mean of the "
            "seeds' values; step rates, QP correction and steps to capture: the ratio of sums pooled over seeds)", "",
            md_table(header, table), "",
            "What each interval estimated or resampled: " + interval_methods_sentence(methods) + ".", "",
            f"Decision (ms): {DECISION_TIMING}.", ""]
    seeds = int(max((r["seeds"] for r in rows.values()), default=1))
    if iqm_trims(seeds):  # scipy's IQM trims int(0.25 * seeds) from each end
        iqm = across_seed_rows(inputs.summary, "iqm")
        text += [f"Interquartile mean across seeds ({level} interval: {methods.get('iqm', 'stratified bootstrap')}):",
                 "",
                 md_table(["arm"] + [label for _, label, _ in RESULT_METRICS],
                          [[arm_label(a, params)] + [fmt_metric(k, iqm[a], n, a) for n, _, k in RESULT_METRICS]
                           for a in arms if a in iqm]), ""]
    else:
        text += [f"(With {seeds} seed(s) the interquartile mean across seeds equals the mean: it trims "
                 "int(0.25 x seeds) seeds from each end.)", ""]
    per_seed = inputs.summary[inputs.summary["aggregate"] == "per_seed"]
    ps_rows = []
    for arm in arms:
        for _, row in per_seed[per_seed["arm"] == arm].iterrows():
            ps_rows.append([arm_label(arm, params), row["seed"], int(row["episodes"]), int(row["steps"])]
                           + [fmt_metric(kind, row, name, arm) for name, _, kind in RESULT_METRICS])
    bootstrapped = ", ".join(label for name, label, kind in RESULT_METRICS if kind != "rate")
    text += [f"### Per seed ({level} Wilson intervals; {bootstrapped}: percentile bootstrap over the seed's "
             "episodes)", "",
             "Capture and collision intervals are over episodes; step rates are over steps, which are "
             "correlated within an episode, so their intervals are too narrow: read them as descriptive.", "",
             md_table(["arm", "seed", "episodes", "steps"] + [label for _, label, _ in RESULT_METRICS], ps_rows), ""]

    return "\n".join(text)


def _worst_deviations(table: pd.DataFrame) -> list[str]:
    """["exact float32 4.9e-06", ...]: the QP table's largest max_deviation per backend and dtype
    (float32's error is not float64's; per backend alone where the table has no dtype column)."""
    keys = ["backend"] + (["dtype"] if "dtype" in table.columns else [])
    worst = table.groupby(keys)["max_deviation"].max()
    return [" ".join(map(str, key if isinstance(key, tuple) else (key,))) + f" {value:.2g}"
            for key, value in worst.items()]


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
    rows = rows[rows[ratio].map(is_finite_number)] if ratio in rows.columns else rows.iloc[0:0]
    if not len(rows):
        return "The QP benchmark table is in the appendix."
    by_batch = rows.groupby("batch_size")[ratio].median()
    small, large = int(by_batch.index.min()), int(by_batch.index.max())
    accuracy = ""
    if "max_deviation" in table.columns:
        accuracy = "; largest deviation from the independent reference (any pass and batch): " + ", ".join(
            _worst_deviations(table))
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
                    + [f"{row[b]:.3f}" if is_finite_number(row[b]) else "-" for b in backends]
                    + [f"{row[c]:.2f}x" if is_finite_number(row[c]) else "-" for c in ratio_columns])
    lines += ["Median time per batched solve; speed-up = other backend's median / "
              f"{reference}'s median, measured side by side in one run.", "", md_table(header, rows), ""]
    lines += qp_accuracy_lines(table)
    missing = [c for c in ("pass", "device", "dtype", "obstacles", "max_deviation", "solved_fraction")
               if c not in table.columns]
    if missing:
        lines += [f"(table.csv has no column(s) {missing}.)", ""]
    return "\n".join(lines)


def qp_accuracy_lines(table: pd.DataFrame) -> list[str]:
    """The QP table's accuracy columns in words (tasks/qp_benchmark.py defines them): the largest
    deviation from the reference solution per backend and dtype (float32's error is not float64's);
    the share of each batch returned feasible, which describes the problem pool (some problems have
    no feasible point) and is compared at the batches both backends ran; and how much of
    qpth's answer was its own (its KKT check's rejects are re-solved by the exact solver)."""
    lines = []
    reference = f"the {table['reference'].iloc[0]} solution" if "reference" in table.columns else "the reference solution"
    if "max_deviation" in table.columns:
        lines.append(f"Largest deviation from {reference} (max |u - u_ref|): " + "; ".join(_worst_deviations(table))
                     + ".")
    if "solved_fraction" in table.columns:
        lowest = table.groupby("backend").agg(low=("solved_fraction", "min"), batch=("batch_size", "max"))
        text = "Share of each batch returned feasible (some of the stage's problems have no feasible point): lowest " + \
            ", ".join(f"{b} {r.low:.3g} (batches up to {int(r.batch):,})" for b, r in lowest.iterrows())
        shared = [c for c in ("pass", "device", "dtype", "obstacles", "batch_size") if c in table.columns]
        if len(lowest) == 2:
            pairs = table.pivot_table(index=shared, columns="backend", values="solved_fraction").dropna()
            differ = int((pairs.iloc[:, 0] != pairs.iloc[:, 1]).sum())
            text += (f"; at the {len(pairs)} settings both ran, " + ("they agree" if not differ else
                                                                      f"they differ at {differ}"))
        lines.append(text + ".")
    if "solver_ok_fraction" in table.columns and (table["backend"] == "qpth").any():
        own = table.loc[table["backend"] == "qpth", "solver_ok_fraction"]
        lines.append(f"qpth answered {100 * own.min():.0f} to {100 * own.max():.0f} % of each batch itself; its KKT "
                     "check rejected the rest, which the exact solver re-solved, so qpth's times and deviations "
                     "include that re-solve.")
    return ["Accuracy: " + " ".join(lines), ""] if lines else []


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
