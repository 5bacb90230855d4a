"""The decision section: outcome A-D, verdict, gates, targets, matrix (tasks.decision's rules; the
wall-clock inputs are computed here, never in results/compare/metrics.json).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tasks import decision as protocol
from tasks import stats
from tasks.artifacts import METRICS_PATH, REFERENCE_ARM
from tasks.params import Params
from tasks.report.formatting import (
    is_finite_number,
    fmt_interval_pp,
    fmt_p,
    fmt_rate,
    fmt_rate_ci,
    fmt_seconds,
    md_table,
    triple,
)
from tasks.report.inputs import Inputs
from tasks.report.provenance import REPO_ROOT
from tasks.stats import rate_interval, seed_t_interval


def _mean_seconds(inputs: Inputs, algo: str, key: str = "wall_seconds") -> float | None:
    """The mean over `algo`'s cells of their summaries' `key` (wall_seconds, or cpu_seconds); None
    without cells, or where a cell's summary lacks the number (written before it was recorded)."""
    cells = [c for c in inputs.train if c.algo == algo]
    values = [c.summary.get(key) for c in cells]
    if not cells or not all(is_finite_number(v) for v in values):
        return None
    return float(np.mean([float(v) for v in values]))


def training_overhead(inputs: Inputs, key: str = "wall_seconds") -> tuple[float | None, str]:
    """BarrierNet's mean training wall clock / CBF-Beta's (the baseline's when CBF-Beta was not
    trained, said so); key="cpu_seconds": the same on the training processes' CPU time.
    Machine-dependent: the report shows it, metrics.json never holds it."""
    bn = _mean_seconds(inputs, "barriernet", key)
    clock = "wall clock" if key == "wall_seconds" else "CPU time"
    for against in ("cbf_beta", "baseline"):
        if not any(c.algo == against for c in inputs.train):
            continue
        other = _mean_seconds(inputs, against, key)
        if bn is not None and other:
            note = "" if against == "cbf_beta" else " (CBF-Beta not trained: against the baseline PPO instead)"
            return bn / other, f"BarrierNet / {against} mean training {clock}{note}"
        break
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


def overhead_range(inputs: Inputs, params: Params, overhead: float) -> dict[str, Any]:
    """The training overheads that give the same outcome as the measured one.

    The outcome reads the overhead only through the plan rule's `decision.overhead_goal` (is it
    exceeded?) and the training-speed score's bounds (`tasks.decision.SCORE_BOUNDS`: at most
    1.5 / 3 / 5 / 10x?), so it is constant on each interval (b_i, b_i+1] between those breakpoints;
    one evaluation per interval finds exactly where it changes. A wall-clock ratio moves between
    runs and machines; this says how far it may move before the answer does. Returns {"letter", "low", "high" (None: unbounded; the
    range is (low, high]), "below", "above" (the outcome just outside it, or None)}."""
    bounds = sorted({*protocol.SCORE_BOUNDS["training_speed"], float(params.decision.overhead_goal)})
    # interval i is (bounds[i - 1], bounds[i]] (bounds[-1] = 0, the last one unbounded); its right
    # end is in it, and twice the largest bound stands for the unbounded one
    ends = [*bounds, 2 * bounds[-1]]
    letters = [outcome_analysis(inputs, params, end)["outcome"].letter for end in ends]
    here = next((i for i, b in enumerate(bounds) if overhead <= b), len(bounds))
    letter = letters[here]
    first, last = here, here
    while first > 0 and letters[first - 1] == letter:
        first -= 1
    while last < len(bounds) and letters[last + 1] == letter:
        last += 1
    return {"letter": letter, "low": bounds[first - 1] if first else None,
            "high": bounds[last] if last < len(bounds) else None,
            "below": letters[first - 1] if first else None, "above": letters[last + 1] if last < len(bounds) else None}


ROBUSTNESS_FACTORS = (0.5, 0.8, 1.25, 2.0)  # multiples of the measured overhead the report tries


def overhead_range_text(span: dict[str, Any], overhead: float) -> str:
    """`overhead_range`'s answer in words, then whether the outcome holds at each of
    ROBUSTNESS_FACTORS times the measured `overhead`: "any overhead up to 10x gives outcome B
    (above 10x: A); so also at 0.5x, 0.8x, 1.25x and 2x the measured ratio"."""
    low, high, letter = span["low"], span["high"], span["letter"]
    where = ("any overhead" if low is None and high is None else f"any overhead up to {high:g}x" if low is None
             else f"any overhead above {low:g}x" if high is None else f"any overhead above {low:g}x up to {high:g}x")
    beyond = [text for text in (f"at or below {low:g}x: {span['below']}" if low is not None else "",
                                f"above {high:g}x: {span['above']}" if high is not None else "") if text]
    inside = [(low is None or overhead * f > low) and (high is None or overhead * f <= high) for f in ROBUSTNESS_FACTORS]
    same, other = ([f"{f:g}x" for f, ok in zip(ROBUSTNESS_FACTORS, inside) if ok is flag] for flag in (True, False))

    def listed(xs: list[str]) -> str:
        return f"{', '.join(xs[:-1])} and {xs[-1]}" if len(xs) > 1 else xs[0]

    moved = (f"so also at {listed(same)} the measured ratio" if not other else
             (f"so at {listed(same)} the measured ratio too, but not at {listed(other)}" if same else
              f"so not at {listed(other)} the measured ratio") + ": it rests on the wall-clock ratio")
    return f"{where} gives outcome {letter}" + (f" ({'; '.join(beyond)})" if beyond else "") + f"; {moved}"


def plateau_of(inputs: Inputs, params: Params) -> dict[str, Any] | None:
    curves = [c.curves["capture_rate"] for c in inputs.train if c.algo == "barriernet" and "capture_rate" in c.curves]
    return protocol.plateau_test(curves, params.decision) if curves else None


def _count_ci(estimate: float, low: float, high: float) -> str:
    """A mean count per seed with its interval: "395 [365, 425]"."""
    return f"{estimate:,.0f} [{low:,.0f}, {high:,.0f}]"


def training_safety(inputs: Inputs, params: Params) -> list[list[Any]]:
    """Per algorithm: cumulative training collisions and the mean training collision rate, with a
    t interval over seeds (>= 2 seeds); where no seed collided, the rate's Clopper-Pearson upper
    bound on the pooled training episodes (a zero count gets a bound, not [0, 0])."""
    rows = []
    conf = params.decision.confidence
    for algo in params.train.algos:
        cells = [c for c in inputs.train if c.algo == algo and "collision_rate" in c.curves]
        if not cells:
            rows.append([algo, "no collision curve logged", "", ""])
            continue
        values = [protocol.training_collisions(c.curves["collision_rate"], c.curves.get("episodes")) for c in cells]
        if all(v.get("collisions") == 0.0 and "episodes" in v for v in values):
            # every seed collision-free: a t interval over seeds would be [0, 0]; the pooled
            # training episodes give the rate a Clopper-Pearson upper bound instead
            episodes = int(round(sum(v["episodes"] for v in values)))
            upper = rate_interval(0, episodes, conf, "clopper_pearson").high
            rows.append([algo, len(cells), f"0 (none in {episodes:,} training episodes, all seeds)",
                         f"{fmt_rate(0.0)} ({100 * conf:g} % upper bound {fmt_rate(upper)}: Clopper-Pearson, "
                         f"0 of {episodes:,} pooled training episodes)"])
            continue
        texts = []
        for key, fmt, fmt_ci in (("collisions", "{:,.0f}".format, _count_ci), ("mean_rate", fmt_rate, fmt_rate_ci)):
            xs = np.array([v[key] for v in values if key in v], float)
            if not len(xs):
                texts.append("not logged")
            elif not xs.any():  # zeros without an episode count (older curves): nothing to bound the rate by
                texts.append(f"{fmt(0.0)} (no collision; no episode count logged, so no bound)")
            elif len(xs) >= 2:
                ci = seed_t_interval(xs, conf)
                texts.append(fmt_ci(ci.estimate, max(ci.low, 0.0), ci.high))
            else:
                texts.append(fmt(xs[0]) + " (one seed: no interval)")
        if all("collisions" in v and "episodes" in v for v in values) and len(values) >= 2:
            # the per-seed mean beside the pooled count, so neither reads as the other
            collisions, episodes = (sum(v[k] for v in values) for k in ("collisions", "episodes"))
            texts[0] += f" per seed ({collisions:,.0f} in {episodes:,.0f} training episodes, all seeds)"
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


def _smallest_permutation_p(seeds: int) -> str:
    """What the seed-level permutation test (`tasks.stats.seed_permutation_test`) can reach with
    `seeds` seeds per arm: its smallest two-sided p is 2 / 2^n over the sign flips of n paired
    differences and 2 / C(2n, n) over the relabellings of two arms of n seeds (5 seeds: 2/32 and
    2/252) while it enumerates them; beyond PERMUTATION_MAX_EXACT relabellings it draws
    PERMUTATION_RESAMPLES of them, and its smallest p is 1 / (1 + that)."""
    if seeds < 2:
        return f"with {seeds} seed per arm it cannot run"

    def smallest(count: int) -> str:
        if count <= stats.PERMUTATION_MAX_EXACT:
            return f"2/{count:,}"
        return f"1/{1 + stats.PERMUTATION_RESAMPLES:,} (random relabellings)"
    return (f"with {seeds} seeds its smallest possible two-sided p is {smallest(2 ** seeds)} paired or "
            f"{smallest(math.comb(2 * seeds, seeds))} unpaired")


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
            if not step["capture_noninferior_shown"] and "seeds_for_noninferiority" in step:
                needed = step["seeds_for_noninferiority"]
                result += (f" (about {needed} seeds per arm for 80 % power)" if needed else
                           f" ({step.get('seeds_for_noninferiority_note')})")
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
                     "one-sided p (read off the interval)", "McNemar capture (min x seeds)",
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
        cpu, _ = training_overhead(inputs, "cpu_seconds")
        on_cpu = "" if cpu is None else (f"; {cpu:.2f}x on the training processes' CPU time, which leaves out time "
                                         "spent waiting for a core")
        lines.append(f"- training overhead {overhead:.2f}x ({overhead_text}{on_cpu}; measured on this machine, so it is "
                     f"kept out of metrics.json; it moves between runs). The outcome reads it only through the plan "
                     f"rule's {params.decision.overhead_goal:g}x and the training-speed score's bounds: "
                     f"{overhead_range_text(overhead_range(inputs, params, overhead), overhead)}.")
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
        wall = _mean_seconds(inputs, algo)
        sps_ = [c.summary.get("env_steps_per_second") for c in inputs.train if c.algo == algo]
        sps_ = [x for x in sps_ if is_finite_number(x)]
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
              "Each step is confirmatory only if every step before it was rejected; p-values: one-sided p read off "
              "each interval's bound (its half-width taken as a t statistic's at the Satterthwaite df, so p < (1 - "
              "confidence) / 2 exactly when the bound clears the threshold; the intervals: crossed seed x scenario "
              "variance, generalized pivotal, widened to the score interval where events are few; family: the fixed "
              "sequence, no adjustment needed), exact McNemar on paired captures within each seed (family: the seeds of that "
              "comparison, Bonferroni: the smallest p times the seeds), and an exact seed-level permutation test "
              f"(family: the fixed sequence; {_smallest_permutation_p(len(seeds))}). Where non-inferiority is not "
              "shown, the result names the seeds per arm a study would need for 80 % power at the margin if the true "
              "difference were 0, on these test scenarios (a planning number from the variance components of that "
              "comparison's interval: seed, scenario and their interaction, which more seeds do not shrink; a plug-in "
              "estimate from this run's few seeds per arm, so itself uncertain).", "",
              _sequence_table(steps, params) if steps else "No step could run.", ""]
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
        matrix_complete=matrix_complete, p_values_complete=bool(steps) and all(is_finite_number(s.get("p")) for s in steps),
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
                    f"({power.get('method', '')}). This seed-level model leaves out the arm x scenario "
                    "interaction, which more seeds do not shrink: the fixed sequence's own planning numbers (the seeds "
                    "a step would need) use the variance components of that step's interval instead.", ""]
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
              "Cumulative training collisions of each seed (sum over logged windows of collision rate x episodes "
              "ended; shown as their mean over seeds with its interval in brackets, the total over seeds in "
              "parentheses) and each seed's mean training collision rate "
              "(area under the windowed collision-rate curve / env steps: a time average of the windows' shares, not "
              f"collisions / episodes), from the train cells' DVCLive curves; {100 * conf:g} % t interval over seeds "
              "(an algorithm with no training collision: the Clopper-Pearson upper bound of its rate on the pooled "
              "training episodes).", "",
              md_table(["algorithm", "seeds", "training collisions (mean per seed)", "mean training collision rate"],
                       training_safety(inputs, params)), ""]
    return "\n".join(lines), outcome.letter
