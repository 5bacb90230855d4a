"""The report's filter-sweep section: every post-hoc filter configuration on DEV episodes, the
Pareto view of capture against collision and against intervention, the trained arms placed on it,
and the configuration the rule chose (issue 15 item 5).

Everything here reads dev numbers: the sweep (tasks/evaluate.py `sweep_filters`) plays dev
episodes only, and the trained arms are placed by their dev rows, so the figure shows what the
choice could see. The chosen configuration's test numbers are in the results table as arm
``baseline_tuned_filter``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.artifacts import CHOICE_FILE, SWEEP_FILE, eval_dir
from tasks.params import Params

CAPTION = ("Filter sweep on dev episodes (the choice never saw a test episode). Each small marker is one post-hoc "
           "filter configuration (form, gamma, robust margin) on one checkpoint family, averaged over training seeds; "
           "filled markers are Pareto-efficient within their checkpoint family, all forms together (no other "
           "configuration on the same checkpoints has at least the capture and at most the collision, resp. "
           "intervention, and is better in one); the trained arms are placed by their own dev episodes; the ring marks the "
           "configuration the rule chose for the baseline.")


def read_sweeps(params: Params, workdir: Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """All sweep rows with their (algo, seed), and the baseline's per-seed choices."""
    frames, choices = [], []
    for algo in params.eval.filter_sweep.algos:
        if algo not in params.train.algos:
            continue
        for seed in params.train.seeds:
            cell = eval_dir(workdir, algo, seed)
            if (cell / SWEEP_FILE).is_file():
                frames.append(pd.read_csv(cell / SWEEP_FILE).assign(algo=algo, seed=seed))
            if (cell / CHOICE_FILE).is_file():
                choices.append({"seed": seed, **json.loads((cell / CHOICE_FILE).read_text())})
    sweeps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(sweeps) and set(sweeps["split"]) != {"dev"}:
        raise ValueError(f"filter sweep tables hold splits {sorted(set(sweeps['split']))}; accepted: dev only")
    return sweeps, choices


def configuration_means(sweeps: pd.DataFrame) -> pd.DataFrame:
    """One row per (algo, form, gamma, robust_margin): dev rates averaged over training seeds."""
    keys = ["algo", "form", "gamma", "robust_margin"]
    rates = ["capture_rate", "collision_rate", "intervention_rate", "infeasible_rate", "collision_upper"]
    return sweeps.groupby(keys, sort=False)[rates].mean().reset_index().assign(
        seeds=sweeps.groupby(keys, sort=False).size().to_numpy())


def pareto_mask(gain: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """(n,) bool: points no other point dominates (>= gain and <= cost, one of them strictly)."""
    gain, cost = np.asarray(gain, float), np.asarray(cost, float)
    dominated = ((gain[None, :] >= gain[:, None]) & (cost[None, :] <= cost[:, None])
                 & ((gain[None, :] > gain[:, None]) | (cost[None, :] < cost[:, None]))).any(axis=1)
    return ~dominated


def efficient_in_family(means: pd.DataFrame, cost: str) -> pd.Series:
    """(rows of `means`,) bool: the configuration is Pareto-efficient (capture up, `cost` down)
    among every configuration of its checkpoint family (`algo`), whatever its form: a filter of one
    form dominated by one of another form is not efficient."""
    efficient = pd.Series(False, index=means.index)
    for _, group in means.groupby("algo", sort=False):
        efficient[group.index] = pareto_mask(group["capture_rate"], group[cost])
    return efficient


def arm_dev_points(episodes: pd.DataFrame) -> pd.DataFrame:
    """Dev capture, collision and intervention of each trained arm (pooled over seeds)."""
    dev = episodes[episodes["split"] == "dev"]
    if dev.empty:
        return pd.DataFrame(columns=["arm", "capture_rate", "collision_rate", "intervention_rate"])
    grouped = dev.groupby("arm")
    return pd.DataFrame({
        "capture_rate": grouped["outcome"].apply(lambda s: float((s == "capture").mean())),
        "collision_rate": grouped["outcome"].apply(lambda s: float((s == "collision").mean())),
        "intervention_rate": grouped["interventions"].sum() / grouped["length"].sum(),
    }).reset_index()


def figure_pareto(means: pd.DataFrame, arms: pd.DataFrame, chosen: dict[str, Any] | None, colours: dict[str, str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.5, 4.6))
    FigureCanvasAgg(fig)
    panels = [("collision_rate", "collision rate (dev)"),
              ("intervention_rate", "intervention rate (dev; the safety layer changed the action)")]
    markers = {"dcbf": "o", "ct": "s", "dcbf_exact": "^"}
    family_colour = {"baseline": "tab:orange", "cbf_beta": "tab:purple"}
    for index, (cost, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, index + 1)
        in_family = efficient_in_family(means, cost)
        for (algo, form), group in means.groupby(["algo", "form"], sort=False):
            efficient = in_family[group.index].to_numpy()
            colour = family_colour.get(algo, "tab:gray")
            ax.scatter(group[cost][~efficient], group["capture_rate"][~efficient], s=26, marker=markers.get(form, "o"),
                       facecolors="none", edgecolors=colour, alpha=0.8)
            ax.scatter(group[cost][efficient], group["capture_rate"][efficient], s=34, marker=markers.get(form, "o"),
                       color=colour, label=f"{algo} + filter ({form})" if index == 0 else None)
        for _, row in arms.iterrows():  # named in the right panel's legend: labels beside them overlapped
            ax.scatter(row[cost], row["capture_rate"], s=90, marker="*", color=colours.get(row["arm"], "black"),
                       edgecolors="black", linewidths=0.5, zorder=5, label=row["arm"] if index == 1 else None)
        if chosen is not None:
            pick = means[(means["algo"] == "baseline") & (means["form"] == chosen["form"])
                         & np.isclose(means["gamma"], chosen["gamma"]) & np.isclose(means["robust_margin"], chosen["robust_margin"])]
            if len(pick):
                ax.scatter(pick[cost], pick["capture_rate"], s=220, facecolors="none", edgecolors="red", linewidths=1.5,
                           zorder=6, label="chosen (baseline_tuned_filter)" if index == 0 else None)
        ax.set_xlabel(label)
        ax.set_ylabel("capture rate (dev)")
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=7, loc="lower right")
        elif ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="trained arms (dev)",
                      title_fontsize=7)
    fig.suptitle("Post-hoc filter sweep on dev episodes: capture against collision and intervention (stars: trained arms)",
                 fontsize=10)
    fig.tight_layout()
    from tasks.report import _figure_bytes

    return _figure_bytes(fig)


def _fmt(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{100 * float(x):.2f} %"


def section(params: Params, workdir: Path, episodes: pd.DataFrame, colours: dict[str, str]) -> tuple[str, dict[str, bytes]]:
    """Markdown for the sweep and its figure ({} when no sweep ran)."""
    from tasks.report import md_table

    sweeps, choices = read_sweeps(params, workdir)
    if sweeps.empty:
        return ("## Filter sweep (dev episodes)\n\nNo filter sweep in this run "
                "(eval.filter_sweep.enabled is false or its algorithms were not trained).\n"), {}
    means = configuration_means(sweeps)
    fs = params.eval.filter_sweep
    counts = {}
    for _, choice in pd.DataFrame(choices).iterrows() if choices else []:
        key = (choice["form"], float(choice["gamma"]), float(choice["robust_margin"]))
        counts[key] = counts.get(key, 0) + 1
    chosen = None
    if counts:
        form, gamma, margin = max(counts, key=counts.get)
        chosen = {"form": form, "gamma": gamma, "robust_margin": margin}
    baseline = means[means["algo"] == "baseline"].sort_values("capture_rate", ascending=False)
    rows = [[r.form, f"{r.gamma:g}", f"{r.robust_margin:g}", _fmt(r.capture_rate), _fmt(r.collision_rate),
             _fmt(r.collision_upper), _fmt(r.intervention_rate), _fmt(r.infeasible_rate)]
            for r in baseline.itertuples()]
    figure = figure_pareto(means, arm_dev_points(episodes), chosen, colours)
    rule = (f"Rule (eval.filter_sweep): the highest dev capture among configurations whose dev collision Wilson upper "
            f"bound is at most {100 * fs.max_collision_upper:g} %.")
    fixed = params.eval.tuned_filter
    if fixed is not None:
        choice_md = [
            f"{rule} The arm `baseline_tuned_filter` plays one configuration for every seed, `eval.tuned_filter` = "
            f"{fixed.form}, gamma {fixed.gamma:g}, margin {fixed.robust_margin:g} m: the tuning study chose it once, "
            "by this rule on the dev episodes of its own baseline models (seeds apart from the evaluated ones; "
            "[tuning report](tuning/tuning_report.md)). The sweep below, on the evaluated checkpoints, is shown for "
            "sensitivity and chose nothing. No test episode entered any choice.", "",
        ]
    else:
        choice_rows = [[c["seed"], c["form"], f"{float(c['gamma']):g}", f"{float(c['robust_margin']):g}",
                        _fmt(c["capture_rate"]), _fmt(c["collision_upper"]),
                        "yes" if c.get("qualified") else "no (fallback)"] for c in choices]
        choice_md = [
            f"{rule} `eval.tuned_filter` is unset, so each training seed chose on its own dev episodes, then played "
            "its choice on the test episodes as arm `baseline_tuned_filter`. No test episode entered the choice (the "
            "sweep's code path fixes the dev split).", "",
            "Chosen configuration per baseline seed:", "",
            md_table(["seed", "form", "gamma", "margin", "dev capture", "dev collision upper bound", "rule met"],
                     choice_rows), "",
        ]
    swept = list(dict.fromkeys(means["algo"]))  # the checkpoint families the sweep played, in its order
    md = [
        "## Filter sweep (dev episodes)", "",
        f"{len(means[['form', 'gamma', 'robust_margin']].drop_duplicates())} configurations ({', '.join(fs.forms)} x "
        f"gamma {fs.gammas} x robust margin {fs.robust_margins} m) on each of the "
        f"{', '.join(swept)} checkpoints ({len(means)} in all), {params.eval.dev_episodes} dev episodes per "
        "(configuration, seed).", "",
        *choice_md,
        "Every configuration on the baseline checkpoints (dev, mean over seeds), best capture first:", "",
        md_table(["form", "gamma", "margin", "capture", "collision", "collision upper (mean)", "intervention",
                  "infeasible"], rows), "",
        "![filter_sweep_pareto](figures/filter_sweep_pareto.png)", "", f"*{CAPTION}*", "",
    ]
    return "\n".join(md), {"filter_sweep_pareto": figure}
