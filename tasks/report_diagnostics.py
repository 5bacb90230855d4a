"""The report's training-diagnostics section and the plan's gradient red flags (issue 18 items 3, 6).

Reads the train cells' DVCLive curves (results/train/<algo>-s<seed>/live/plots/metrics/<name>.tsv,
written by tasks/train.py with model/diagnostics.py): the gradient reaching BarrierNet's nominal
action through the QP, the QP's correction and active rows, CBF-Beta's safe-box width.

Red flags (PHASE2_5.md's hand checks, automated), per BarrierNet seed, over the logged updates:
- the median per-sample gradient norm through the QP (``grad/nominal_norm_p50``) below
  ``GRAD_LOW`` or above ``GRAD_HIGH`` in any logged update;
- a zero turn-rate gradient (``grad/nominal_abs_w`` <= ``ZERO_GRAD``) in any logged update;
- the training-time QP infeasibility (``rollout/qp_infeasible_rate``) above ``INFEASIBLE_RATE``
  averaged over training (every algorithm with a safety layer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.artifacts import train_curve_path

GRAD_LOW, GRAD_HIGH = 1e-6, 1e3
ZERO_GRAD = 1e-12
INFEASIBLE_RATE = 0.05
CAPTION = ("Training diagnostics against env steps, one line per seed. Left: median per-sample gradient norm of "
           "the loss reaching BarrierNet's nominal action through the QP (log scale; dashed: the red-flag band "
           "1e-6..1e3). Middle: mean |gradient| per action component (v solid, turn rate w dotted). Right: share of "
           "training steps where the safety layer changed the action, per algorithm with one (BarrierNet's and the "
           "shield's QP; CBF-Beta's safe box, which changes the action without a QP).")


def read_curve(workdir: Path, algo: str, seed: int, name: str) -> pd.DataFrame | None:
    """One DVCLive curve -> DataFrame(step, value) (finite values), or None if the cell did not log it."""
    from tasks.report import _read_tsv_curve

    path = train_curve_path(workdir, algo, seed, name)
    return _read_tsv_curve(path, name.rsplit("/", 1)[1])


def red_flags(workdir: Path, algos: list[str], seeds: list[int]) -> list[str]:
    """The red flags of the module docstring, one line each ([] when none)."""
    flags = []
    for seed in seeds:
        if "barriernet" in algos:
            p50 = read_curve(workdir, "barriernet", seed, "grad/nominal_norm_p50")
            if p50 is not None and len(p50):
                low, high = p50[p50["value"] < GRAD_LOW], p50[p50["value"] > GRAD_HIGH]
                for name, rows, bound in (("below", low, GRAD_LOW), ("above", high, GRAD_HIGH)):
                    if len(rows):
                        flags.append(f"barriernet seed {seed}: the median gradient norm through the QP is {name} "
                                     f"{bound:g} in {len(rows)} of {len(p50)} logged updates (first at step "
                                     f"{int(rows['step'].iloc[0]):,})")
            turn = read_curve(workdir, "barriernet", seed, "grad/nominal_abs_w")
            if turn is not None and len(turn):
                zero = turn[turn["value"] <= ZERO_GRAD]
                if len(zero):
                    flags.append(f"barriernet seed {seed}: zero turn-rate gradient through the QP in {len(zero)} of "
                                 f"{len(turn)} logged updates (first at step {int(zero['step'].iloc[0]):,})")
        for algo in algos:
            infeasible = read_curve(workdir, algo, seed, "rollout/qp_infeasible_rate")
            if infeasible is not None and len(infeasible) and infeasible["value"].mean() > INFEASIBLE_RATE:
                flags.append(f"{algo} seed {seed}: the safety layer was infeasible on "
                             f"{100 * infeasible['value'].mean():.1f} % of training steps (> {100 * INFEASIBLE_RATE:g} %)")
    return flags


def figure(workdir: Path, algos: list[str], seeds: list[int], colours: dict[str, str]) -> bytes | None:
    """The three panels of CAPTION, or None when no cell logged the diagnostics (an older run)."""
    from tasks.report import _figure_bytes, _pyplot

    curves = {(a, s, n): read_curve(workdir, a, s, n) for a in algos for s in seeds
              for n in ("grad/nominal_norm_p50", "grad/nominal_abs_v", "grad/nominal_abs_w", "rollout/qp_intervention_rate")}
    if all(c is None for c in curves.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colour = colours.get("barriernet", "tab:blue")
    for seed in seeds:
        p50 = curves.get(("barriernet", seed, "grad/nominal_norm_p50"))
        if p50 is not None:
            axes[0].plot(p50["step"], p50["value"], color=colour, alpha=0.7, lw=0.8,
                         label="barriernet" if seed == seeds[0] else None)
        for name, style in (("grad/nominal_abs_v", "-"), ("grad/nominal_abs_w", ":")):
            curve = curves.get(("barriernet", seed, name))
            if curve is not None:
                axes[1].plot(curve["step"], curve["value"], style, color=colour, alpha=0.7, lw=0.8,
                             label=f"{name.rsplit('_', 1)[1]}" if seed == seeds[0] else None)
        for algo in algos:
            curve = curves.get((algo, seed, "rollout/qp_intervention_rate"))
            if curve is not None:
                axes[2].plot(curve["step"], 100 * curve["value"], color=colours.get(algo), alpha=0.7, lw=0.8,
                             label=algo if seed == seeds[0] else None)
    for bound in (GRAD_LOW, GRAD_HIGH):
        axes[0].axhline(bound, ls="--", color="grey", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("median ||dL/du_nom|| per sample")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("mean |dL/du_nom| per component")
    axes[2].set_ylabel("training steps the safety layer changed (%)")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Training diagnostics: the gradient through BarrierNet's QP and the safety layers' activity", fontsize=10)
    fig.tight_layout()
    return _figure_bytes(fig)


def _final(curve: pd.DataFrame | None) -> float:
    """Mean over the last tenth of the logged points (nan when absent)."""
    if curve is None or not len(curve):
        return float("nan")
    return float(curve["value"].iloc[-max(1, len(curve) // 10):].mean())


def section(workdir: Path, algos: list[str], seeds: list[int], colours: dict[str, str]) -> tuple[str, dict[str, bytes]]:
    """Markdown (table of end-of-training diagnostics per algorithm, the figure, red flags) and figures."""
    from tasks.report import md_table

    names = {"grad/nominal_norm_p50": "median grad norm through QP", "grad/nominal_abs_w": "mean |grad| turn rate",
             "rollout/qp_correction": "mean correction (normalised)", "rollout/qp_active_fraction": "steps with active QP rows",
             "rollout/box_width_v": "safe-box width v (share)", "rollout/box_width_w": "safe-box width w (share)"}
    rows = []
    for algo in algos:
        values = {n: [_final(read_curve(workdir, algo, s, n)) for s in seeds] for n in names}
        if all(np.isnan(v).all() for v in values.values()):
            continue
        rows.append([algo] + [("-" if np.isnan(v).all() else f"{np.nanmean(v):.3g}") for v in values.values()])
    png = figure(workdir, algos, seeds, colours)
    if not rows or png is None:
        return ("## Training diagnostics\n\nNo training diagnostics in this run's curves (trained before they "
                "were logged).\n"), {}
    flags = red_flags(workdir, algos, seeds)
    md = ["## Training diagnostics", "",
          "End of training (mean over the last tenth of the logged updates and over seeds; DVCLive curves, "
          "`dvc plots show` draws every one per seed):", "",
          md_table(["algorithm", *names.values()], rows), "",
          "![training_diagnostics](figures/training_diagnostics.png)", "", f"*{CAPTION}*", "",
          "Red flags (gradient through the QP outside [1e-6, 1e3], a zero turn-rate gradient, training-time "
          f"infeasibility above {100 * INFEASIBLE_RATE:g} %): "
          + ("**" + "; ".join(flags) + "**" if flags else "none."), ""]
    return "\n".join(md), {"training_diagnostics": png}
