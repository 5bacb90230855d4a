"""Our numbers beside the reference project's published ones (its "Phase 2.5" table).

The published numbers are data, not code: data/reference_phase25.json (see its "source").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.artifacts import ALGO_OF_ARM, ARMS, ARMS_WITHOUT_QP
from tasks.params import Params
from tasks.report.formatting import arm_label, fmt_number_ci, fmt_rate_ci, fmt_seconds, md_table
from tasks.report.inputs import DECISION_TIMING, Inputs
from tasks.report.numbers import _equal_budgets, across_seed_rows

# The reference project's published table: data, not code (its "source" field says where from).
REFERENCE_PATH = Path(__file__).resolve().parent.parent.parent / "data" / "reference_phase25.json"


def _form_sentence(form: str) -> str:
    """What the training's CBF form is, against the reference's rows (model/cbf.py's forms)."""
    if form == "dcbf":
        return ("Its rows are the first-order discrete-time ones (form 'dcbf'): the same rows as the continuous-time "
                "form at rate gamma / dt, as their \"DCBF\" row, so neither makes the exact next step safe; "
                "form 'dcbf_exact' (a post-hoc filter here) re-solves on the exact step.")
    if form == "ct":
        return "Its rows are the continuous-time ones (form 'ct'), gamma a rate in 1/s."
    return f"Its CBF form is '{form}' (model/cbf.py)."


def load_reference(path: Path = REFERENCE_PATH) -> dict[str, dict[str, str | None]]:
    """metric -> arm -> their published cell (text as they printed it; None: not reported)."""
    data = json.loads(Path(path).read_text())
    return {row["metric"]: dict(row["values"]) for row in data["rows"]}


# Their rows in the order the report prints them, with our label for each.
REFERENCE_ROWS = (
    ("capture_rate", "capture rate"),
    ("cbf_violation_rate", "CBF-violation steps (body barrier h < 0)"),
    ("intervention_rate", "QP intervention rate"),
    ("decision_ms", "inference per step"),
    ("training", "training budget"),
)


def _reference_section(inputs: Inputs, params: Params, arms: list[str]) -> str:
    rows_by_arm = across_seed_rows(inputs.summary)
    steps = sorted({int(c.summary["total_steps"]) for c in inputs.train})
    walls = {algo: [float(c.summary["wall_seconds"]) for c in inputs.train if c.algo == algo]
             for algo in params.train.algos}
    reference = load_reference()
    table = []
    for key, label in REFERENCE_ROWS:
        for arm in ARMS:
            theirs = reference[key].get(arm) or "-"
            if key == "training":
                algo = ALGO_OF_ARM[arm]
                if algo not in walls or not walls[algo]:
                    ours = "not trained"
                else:
                    ours = (f"{steps[0]:,} steps x {len(walls[algo])} seed(s), "
                            f"{fmt_seconds(np.mean(walls[algo]))} per seed"
                            + ("" if arm == algo else f" (the {algo} checkpoints, trained once)"))
            elif arm not in rows_by_arm or arm not in arms:
                ours = "not evaluated"
            elif key == "intervention_rate" and arm in ARMS_WITHOUT_QP:
                ours = "- (no QP)"
            elif key == "decision_ms":
                row = rows_by_arm[arm]
                batched = fmt_number_ci(row[key], row[f"{key}_low"], row[f"{key}_high"]) + " ms batched"
                single = inputs.single_decision_ms(arm)
                ours = (f"{single[0]:.3f} ms one state per call (median of {single[1]} seed(s)); {batched}"
                        if single else batched)
            else:
                row = rows_by_arm[arm]
                ours = fmt_rate_ci(row[key], row[f"{key}_low"], row[f"{key}_high"])
            table.append([label, arm_label(arm, params), theirs, ours])
    notes = [
        "What differs: they used one seed and 200 episodes (100 for the DCBF filter), no intervals, and unequal "
        f"budgets (324 K steps for BarrierNet, 1 M for the baseline); we train every algorithm for the same "
        f"{'budget' if _equal_budgets(inputs) else 'budget (NOT here: see the setup table)'} on "
        f"{len(params.train.seeds)} seed(s), evaluate every arm on the same paired episodes "
        f"({params.eval.test_episodes} held-out test episodes per seed; tuning used {params.eval.dev_episodes} dev "
        "episodes) and give intervals that include training-seed and shared-scenario variance (decision ms: a t "
        "interval over seeds only; a step rate with no event in any step: the Wilson bound on the pooled steps "
        "alone, which counts correlated steps as independent, so it is descriptive).",
        "Two facts about their numbers (DESIGN.md): their \"DCBF\" row is the continuous-time row at rate "
        "gamma / dt, so their two filters differ only by a 20x rate, not by a discrete-time condition; and their "
        "baseline's 100 % capture had the walls as clamps, where here touching a wall ends the episode as a "
        "collision, so the capture and collision rows are not one to one.",
        "Our BarrierNet learns its class-K gamma, keeps the QP inside the PPO update "
        f"(update mode '{params.barriernet.update_mode}'), masks absent constraints instead of zero rows, and "
        "detects infeasibility from the solution rather than from exceptions. "
        + _form_sentence(params.cbf.form),
        "Inference per step: theirs is one decision on their machine; ours first is one decision too (each arm "
        "acts on the first dev start states one at a time, arms taking turns: `tasks.evaluate.single_decision_ms`, the "
        "median per seed, then over seeds), on the hardware in the setup table, so the ratios between arms "
        "compare and the absolute numbers differ by machine as well; second, the batched evaluation time per "
        "decision (" + DECISION_TIMING + ").",
    ]
    if params.train.total_steps < 1_000_000 or params.eval.test_episodes < params.decision.min_test_episodes:
        notes.append(f"This run is smaller than the study (train.total_steps = {params.train.total_steps:,}, "
                     f"eval.test_episodes = {params.eval.test_episodes}): its numbers test the pipeline, they do not "
                     "answer the research question.")
    return md_table(["metric", "arm", "reference (Phase 2.5)", "ours"], table) + "\n\n" + "\n".join(
        f"- {n}" for n in notes) + "\n"
