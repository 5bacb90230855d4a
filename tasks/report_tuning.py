"""The tuning study's own report (reports/tuning/tuning_report.md) and the decision report's budget line.

Reads only what tasks/tuning.py wrote (results/tuning/): dev numbers of the study's own models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import io
from tasks.artifacts import TUNING_CHOICE_PATH
from tasks.params import ExplorationGrid, Params

CHOICE_PATH = TUNING_CHOICE_PATH
REPORT_PATH = Path("reports/tuning/tuning_report.md")
FIGURE_PATH = Path("reports/tuning/tuning_scores.png")
CAPTION = ("Tuning study on dev episodes: each point is one (configuration, tuning seed), the bar the mean over "
           "seeds of the score (dev capture rate - dev collision rate); the red bar is the configuration the rule "
           "chose per algorithm. Every algorithm had the same number of configurations, seeds and env steps.")


def _pct(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{100 * float(x):.1f} %"


def figure(cells: pd.DataFrame, means: pd.DataFrame) -> bytes:
    """One panel per algorithm: score per configuration (bars: mean over seeds, dots: seeds)."""
    from tasks.report import _figure_bytes, _pyplot

    plt = _pyplot()
    algos = list(dict.fromkeys(means["algo"]))
    fig, axes = plt.subplots(1, len(algos), figsize=(3.2 * len(algos), 3.2), sharey=True, squeeze=False)
    for ax, algo in zip(axes[0], algos):
        group = means[means["algo"] == algo]
        x = np.arange(len(group))
        ax.bar(x, group["score"], color=["tab:red" if c else "tab:gray" for c in group["chosen"]], alpha=0.6)
        for i, config in enumerate(group["config"]):
            seeds = cells[(cells["algo"] == algo) & (cells["config"] == config)]
            ax.scatter(np.full(len(seeds), i), seeds["score"], color="black", s=12, zorder=3)
        short = {"exploration_std": "std", "init_log_std": "log-std", "ent_coef": "entropy"}
        labels = [f"lr {r.learning_rate:g}\n{short.get(r.knob, r.knob)} {r.value}" for r in group.itertuples()]
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(algo, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("dev capture - dev collision")
    fig.suptitle("Equal-effort tuning study (dev episodes; red: chosen)", fontsize=10)
    fig.tight_layout()
    return _figure_bytes(fig)


def write_report(root: Path, cells: pd.DataFrame, means: pd.DataFrame, sweep: pd.DataFrame,
                 choice: dict[str, Any], params: Params) -> Path:
    """Write reports/tuning/tuning_report.md and its figure under `root`; returns the report's path."""
    from tasks.report import md_table

    budget, prov = choice["budget"], choice["provenance"]
    evaluated_steps = params.train.num_updates * params.train.batch_size
    study_learner = _study_learner(choice)
    png = figure(cells, means)
    with io.atomic_path(root / FIGURE_PATH) as tmp:
        tmp.write_bytes(png)
    rows = [[r.algo, r.config, f"{r.learning_rate:g}", f"{r.knob} = {r.value}", r.seeds, _pct(r.capture_rate),
             _pct(r.collision_rate), f"{r.score:+.3f} [{r.score_min:+.3f}, {r.score_max:+.3f}]",
             "**chosen**" if r.chosen else ""] for r in means.itertuples()]
    md = [
        "# Equal-effort tuning study", "",
        "Every algorithm got the same tuning budget, judged by one rule on dev episodes (issue 15 item 7). "
        "The chosen settings are committed in `params.yaml` (`train.per_algo`, `eval.tuned_filter`); "
        "`tests/test_tuning.py` checks that they equal `results/tuning/choice.json`; the decision report states "
        "this budget.", "",
        "## Budget", "",
        f"- per algorithm: {budget['configurations_per_algorithm']} configurations (learning rate "
        f"{budget['learning_rates']} x its exploration knob) x {len(budget['seeds'])} tuning seeds "
        f"{budget['seeds']} x {budget['steps_per_cell']:,} env steps = {budget['env_steps_per_algorithm']:,} env "
        f"steps, and {budget['dev_episodes_per_cell']} dev episodes per model;",
        "- exploration knobs: " + "; ".join(f"{a}: {v}" for a, v in budget["exploration"].items()) + " (first value: "
        "the shared default);",
        f"- the tuning seeds are apart from the evaluated `train.seeds` {list(params.train.seeds)}: the evaluated "
        f"models train with the settings `params.yaml` commits, to `train.total_steps` {params.train.total_steps:,} "
        f"({evaluated_steps:,} env steps run: {params.train.num_updates} whole updates of {params.train.batch_size:,});",
        f"- the study's runs are shorter than the evaluated ones ({budget['steps_per_cell'] / evaluated_steps:.0%} of "
        "their env steps): a setting that learns fast early is favoured. That is the study's known bias;",
        (f"- the study and the evaluated models trained with the same learner (`train.learner: {study_learner}`)."
         if study_learner == params.train.learner else
         f"- the study trained with the {study_learner} learner, the evaluated models with the "
         f"{params.train.learner} learner (`train.learner`): the same algorithm with other floating-point bits, so "
         "today's code would not reproduce the study's dev numbers exactly; the choice was made on the numbers "
         "below."), "",
        "## Rule", "",
        "score = dev capture rate - dev collision rate of the model's own arm (deterministic actions), averaged over "
        "the tuning seeds; the highest mean wins, ties go to the earlier configuration (the defaults come first). "
        "No test episode was played.", "",
        "## Results (dev)", "",
        md_table(["algo", "config", "learning rate", "exploration", "seeds", "capture", "collision",
                  "score mean [min, max over seeds]", ""], rows), "",
        "![tuning_scores](tuning_scores.png)", "", f"*{CAPTION}*", "",
    ]
    if choice["tuned_filter"] is not None and len(sweep):
        fs = params.eval.filter_sweep
        t = choice["tuned_filter"]
        # in the rule's order: capture first, then fewer interventions (the rule's tie-break)
        ordered = sweep.sort_values(["capture_rate", "intervention_rate"], ascending=[False, True])
        sweep_rows = [[r.form, f"{r.gamma:g}", f"{r.robust_margin:g}", r.episodes, _pct(r.capture_rate),
                       _pct(r.collision_rate), _pct(r.collision_upper), f"{100 * r.intervention_rate:.2f} %"]
                      for r in ordered.itertuples()]
        md += [
            "## The baseline's post-hoc filter (chosen once)", "",
            f"Every `eval.filter_sweep` configuration on the chosen baseline configuration's {len(budget['seeds'])} "
            "models, dev episodes pooled over the tuning seeds. Rule: the highest dev capture among configurations "
            f"whose pooled dev collision Wilson upper bound ({fs.confidence:g}) is at most {100 * fs.max_collision_upper:g} % "
            "(ties: fewer interventions, then grid order). "
            f"Chosen: **{t['form']}, gamma {t['gamma']:g}, margin {t['robust_margin']:g} m**, played by arm "
            "`baseline_tuned_filter` for every evaluated seed.", "",
            md_table(["form", "gamma", "margin", "episodes", "capture", "collision", "collision upper", "intervention"],
                     sweep_rows), "",
        ]
    md += [
        "## Committed settings", "",
        "```yaml", params_snippet(choice), "```", "",
        "## Provenance", "",
        f"- command: `python -m tasks tune` (code commit {prov['git_commit'][:12]} when the study ended, params hash "
        f"{prov['params_hash']})",
        f"- CPU: {prov['cpu']}, {prov['cores']} cores, {prov['workers']} workers; wall time "
        f"{prov['wall_seconds'] / 60:.1f} min", "",
    ]
    return io.write_text(root / REPORT_PATH, "\n".join(md))


def _study_learner(choice: dict[str, Any]) -> str:
    """The `train.learner` a study trained with: recorded in its provenance since that key exists;
    a study recorded before then trained with torch's learner, the only one there was."""
    return choice.get("provenance", {}).get("learner", "torch")


def budget_line(workdir: Path, params: Params) -> str:
    """One paragraph for the decision report: the study's budget and what it chose, or that no
    study stands behind these settings."""
    # A run with overrides writes under runs/<name>/; the study's choice stays at the repository's root.
    candidates = [Path(workdir) / CHOICE_PATH, Path(__file__).resolve().parent.parent / CHOICE_PATH]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return ("**Tuning budget:** no tuning study on record (`results/tuning/choice.json` is missing): the "
                "settings above are params.yaml's, not a study's choice.")
    choice = json.loads(path.read_text())
    b = choice["budget"]
    mismatch = committed_matches(params, choice)
    def settings(values: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in values.items())

    chosen = "; ".join(f"{a}: {settings(s)}" for a, s in choice["per_algo"].items())
    text = (f"**Tuning budget (equal for every algorithm):** {b['configurations_per_algorithm']} configurations x "
            f"{len(b['seeds'])} seeds x {b['steps_per_cell']:,} env steps = {b['env_steps_per_algorithm']:,} env steps "
            f"per algorithm, judged on dev episodes by one rule ({choice['rule']}); chosen: {chosen}"
            + (f"; the baseline's post-hoc filter (arm baseline_tuned_filter): {settings(choice['tuned_filter'])}"
               if choice["tuned_filter"] else "")
            + ". See the [tuning report](tuning/tuning_report.md).")
    study_learner = _study_learner(choice)
    if study_learner != params.train.learner:
        text += (f" The study trained with the {study_learner} learner, these models with the {params.train.learner} "
                 "learner: the same algorithm, other floating-point bits.")
    if mismatch:
        text += " **The params of this run differ from the study's choice:** " + "; ".join(mismatch) + "."
    return text


def params_snippet(choice: dict[str, Any]) -> str:
    """The params.yaml lines that commit a study's choice."""
    def flow(mapping: dict[str, Any]) -> str:  # a YAML flow mapping: {learning_rate: 0.001, ...}
        return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in mapping.items()) + "}"

    lines = ["train:", "  per_algo:"]
    for algo, settings in choice["per_algo"].items():
        lines.append(f"    {algo}: {flow(settings)}")
    if choice["tuned_filter"]:
        lines += ["eval:", f"  tuned_filter: {flow(choice['tuned_filter'])}"]
    return "\n".join(lines)


def committed_matches(params: Params, choice: dict[str, Any]) -> list[str]:
    """Differences between params (train.per_algo, eval.tuned_filter) and a study's choice ([] if none)."""
    problems = []
    for algo in ExplorationGrid.KNOB:
        settings = {k: v for k, v in getattr(params.train.per_algo, algo).model_dump().items() if v is not None}
        wanted = choice["per_algo"].get(algo, {})
        if json.dumps(settings, sort_keys=True) != json.dumps(wanted, sort_keys=True):
            problems.append(f"train.per_algo.{algo} = {settings}, the study chose {wanted}")
    fixed = params.eval.tuned_filter.model_dump() if params.eval.tuned_filter is not None else None
    if json.dumps(fixed, sort_keys=True) != json.dumps(choice["tuned_filter"], sort_keys=True):
        problems.append(f"eval.tuned_filter = {fixed}, the study chose {choice['tuned_filter']}")
    return problems
