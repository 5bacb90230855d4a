"""The report's figures, rendered to PNG bytes first (written only when all are done)."""

from __future__ import annotations

import io as _bytes_io

import numpy as np
import pandas as pd

from env.render import ArenaStyle, draw_arena
from tasks.params import Params
from tasks.artifacts import ARMS_WITHOUT_QP
from tasks.report.formatting import ARM_LABELS, QP_METRICS, arm_label
from tasks.report.inputs import CURVE_METRICS, Inputs
from tasks.report.numbers import across_seed_rows, all_episodes

ARM_COLOURS = {
    "barriernet": "tab:blue",
    "baseline": "tab:orange",
    "baseline_ct_filter": "tab:green",
    "baseline_dcbf_filter": "tab:red",
    # one fixed colour per arm: every figure draws an arm the same way
    "barriernet_rcbf": "tab:cyan",
    "cbf_beta": "tab:purple",
    "cbf_beta_rcbf": "tab:pink",
    "shielded": "tab:brown",
    "baseline_tuned_filter": "tab:olive",
}
# The trajectory figure's arena (env/render.py draws it): walls, obstacles and their dotted barrier rings.
TRAJECTORY_ARENA = ArenaStyle(wall_width=1.5, obstacle_colour="dimgray", obstacle_alpha=0.7, keep_out_colour="dimgray")


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def seed_band(curves: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Seeds' curves -> (steps, mean, min, max, seeds counted) over the union of logged steps.

    At each step only the seeds that logged a point there count: nothing is interpolated. (Seeds
    with equal budgets log at the same steps; a seed misses a point when no episode ended in
    that window, since a rate over no episodes is not a number.)
    """
    curves = [c for c in curves if len(c)]
    if not curves:
        return None
    table = pd.concat([c.assign(seed_index=i) for i, c in enumerate(curves)])
    grouped = table.groupby("step")["value"]
    stats = grouped.agg(["mean", "min", "max", "count"]).sort_index()
    return (stats.index.to_numpy(float), stats["mean"].to_numpy(float), stats["min"].to_numpy(float),
            stats["max"].to_numpy(float), stats["count"].to_numpy(int))


def figure_learning_curves(inputs: Inputs, params: Params) -> bytes:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    titles = {"capture_rate": "capture rate (training rollouts)",
              "episode_return": "episode return (training rollouts)"}
    for ax, metric in zip(axes, CURVE_METRICS):
        drawn = 0
        for algo in params.train.algos:
            cells = [c for c in inputs.train if c.algo == algo and metric in c.curves]
            band = seed_band([c.curves[metric] for c in cells])
            if band is None:
                continue
            steps, mean, lo, hi, count = band
            colour = ARM_COLOURS.get(algo)
            n = len(cells)
            ax.plot(steps, mean, color=colour, marker="o" if len(steps) < 15 else None, ms=3,
                    label=f"{ARM_LABELS.get(algo, algo)} (mean of {n} seed{'s' if n != 1 else ''})")
            partial = count < n
            if partial.any():  # steps where some seed logged nothing: the mean is of fewer seeds
                ax.plot(steps[partial], mean[partial], ls="none", marker="o", ms=8, mfc="white", mec=colour,
                        label=f"{ARM_LABELS.get(algo, algo)}: fewer seeds logged here")
            if n > 1:
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
                for cell in cells:  # the seeds' own points, faint
                    ax.plot(cell.curves[metric]["step"], cell.curves[metric]["value"], ls="none", marker=".",
                            ms=4, color=colour, alpha=0.5)
            drawn += 1
        ax.set_title(titles[metric])
        ax.set_xlim(left=0)
        ax.set_xlabel("env steps")
        ax.set_ylabel(metric.replace("_", " "))
        if metric == "capture_rate":
            ax.set_ylim(-0.03, 1.03)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no episode ended during training:\nno points logged", ha="center", va="center",
                    transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.suptitle("Learning curves: line = mean across seeds, band = min..max across seeds, dots = single seeds")
    return _figure_bytes(fig)


def figure_outcome_rates(summary: pd.DataFrame, arms: list[str], params: Params, confidence: float) -> bytes:
    plt = _pyplot()
    rows = across_seed_rows(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = [
        (axes[0], [("capture_rate", "capture"), ("collision_rate", "collision"), ("timeout_rate", "timeout")],
         "episode outcomes (share of episodes)"),
        (axes[1], [("cbf_violation_rate", "body-barrier\nviolation steps"), ("intervention_rate", "QP intervention"),
                   ("infeasible_rate", "QP infeasible")], "step rates (share of steps)"),
    ]
    width = 0.8 / max(len(arms), 1)
    for ax, metrics, title in panels:
        x = np.arange(len(metrics))
        for i, arm in enumerate(arms):
            row = rows[arm]
            # the summary holds zeros for the QP columns of an arm without a QP: never measured, not drawn
            measured = [not (arm in ARMS_WITHOUT_QP and m in QP_METRICS) for m, _ in metrics]
            est, low, high = (np.array([row[f"{m}{suffix}"] if ok else np.nan for (m, _), ok in zip(metrics, measured)],
                                       float) for suffix in ("", "_low", "_high"))
            err = np.vstack([np.clip(est - low, 0, None), np.clip(high - est, 0, None)])
            err = np.nan_to_num(err)
            positions = x + (i - (len(arms) - 1) / 2) * width
            ax.bar(positions, 100 * np.nan_to_num(est), width, yerr=100 * err, capsize=3,
                   color=ARM_COLOURS.get(arm), label=arm_label(arm, params))
            for position in positions[~np.array(measured)]:
                ax.text(position, 0.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.3")
        ax.set_xticks(x, [label for _, label in metrics])
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 105)
    handles, labels = axes[0].get_legend_handles_labels()
    # below the figure (saved with bbox_inches="tight"), clear of the x tick labels
    fig.legend(handles, labels, loc="upper center", ncol=min(len(arms), 3), fontsize=8, bbox_to_anchor=(0.5, 0.0))
    seeds = int(max((r["seeds"] for r in rows.values()), default=1))
    fig.suptitle(f"Outcome rates per arm over {seeds} seed(s) (episode outcomes: mean over seeds; step rates: "
                 f"pooled steps), bars = the {100 * confidence:g} % intervals of the report's across-seed table",
                 fontsize=10)
    return _figure_bytes(fig)


def figure_qp_speed(table: pd.DataFrame) -> bytes | None:
    if not {"backend", "batch_size", "median_ms"} <= set(table.columns):
        return None
    plt = _pyplot()
    passes = list(dict.fromkeys(table["pass"].astype(str))) if "pass" in table.columns else [None]
    fig, axes = plt.subplots(1, len(passes), figsize=(6 * len(passes), 4.2), squeeze=False)
    keys = [c for c in ("backend", "device", "dtype", "obstacles") if c in table.columns]
    styles = {"float64": "-", "float32": "--"}
    obstacle_markers = {}
    if "obstacles" in table.columns:
        obstacle_markers = {k: m for k, m in zip(sorted(table["obstacles"].unique()), "os^Dv<>p")}
    for ax, pass_name in zip(axes[0], passes):
        part = table if pass_name is None else table[table["pass"].astype(str) == pass_name]
        for key, group in part.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            setting = dict(zip(keys, key))
            group = group.sort_values("batch_size")
            backend = str(setting["backend"])
            colour = "tab:blue" if backend == "exact" else "tab:orange" if backend == "qpth" else None
            label = " ".join(f"K={v}" if k == "obstacles" else str(v) for k, v in setting.items())
            marker = obstacle_markers.get(setting.get("obstacles"), "o")
            ax.plot(group["batch_size"], group["median_ms"], styles.get(str(setting.get("dtype")), "-"),
                    color=colour, marker=marker, ms=4, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (QPs solved together)")
        ax.set_ylabel("median time per batch (ms)")
        ax.set_title(f"pass: {pass_name}" if pass_name else "QP solve")
        ax.grid(alpha=0.3, which="both")
    # one legend below the panels (inside, it hid the small batches); long handles show the dashes
    handles, labels = axes[0][0].get_legend_handles_labels()
    columns = min(4, max(1, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, handlelength=4, frameon=False)
    fig.suptitle("QP solver speed by batch size (log-log; lower is faster; solid float64, dashed float32)")
    fig.tight_layout(rect=(0, 0.06 * -(-len(labels) // columns), 1, 0.95))
    return _figure_bytes(fig)


def trajectory_arms(inputs: Inputs, params: Params) -> tuple[dict[str, np.ndarray], list[str]]:
    """Merge the first seed's trajectory files (one per algo) -> (arrays, notes)."""
    first_seed = params.train.seeds[0]
    merged: dict[str, np.ndarray] = {}
    notes = []
    for cell in inputs.evals:
        if cell.seed != first_seed or cell.trajectory is None:
            continue
        for key, value in cell.trajectory.items():
            if key.startswith("obstacle") and key in merged:
                if merged[key].shape != value.shape or not np.allclose(merged[key], value):
                    notes.append(f"obstacles in {cell.algo}-s{cell.seed} differ from the other cell's")
                continue
            merged[key] = value
    return merged, notes


def figure_trajectories(inputs: Inputs, params: Params, arms: list[str]) -> tuple[bytes, list[str]]:
    plt = _pyplot()
    data, notes = trajectory_arms(inputs, params)
    episode = params.eval.trajectory_episode
    seed = params.train.seeds[0]
    episodes = all_episodes(inputs)
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    centres = np.atleast_2d(data.get("obstacle_centres", np.zeros((0, 2)))).reshape(-1, 2)
    radii = np.atleast_1d(data.get("obstacle_radii", np.zeros(0)))
    present = np.isfinite(centres).all(axis=1) & np.isfinite(radii) & (radii > 0)  # absent slots are not drawn
    # the dotted ring: where the body barrier is 0 (robot_radius + safety_margin from the obstacle)
    draw_arena(ax, centres[present], radii[present], params.env.arena_size,
               keep_out=params.env.robot_radius + params.env.safety_margin, margin=0.5, style=TRAJECTORY_ARENA)
    drawn = [arm for arm in arms if f"{arm}/pursuer" in data]
    evaders = {arm: data[f"{arm}/evader"] for arm in drawn if f"{arm}/evader" in data}
    # A random evader ignores the pursuer, so every arm meets the same evader path (each cut where
    # its episode ended): then draw it once; a reacting evader gets one path per arm.
    longest = max(evaders.values(), key=len) if evaders else None
    shared = longest is not None and all(np.allclose(path, longest[: len(path)]) for path in evaders.values())
    if shared:
        ax.plot(longest[:, 0], longest[:, 1], color="black", lw=1.0, ls="--", alpha=0.7,
                label="evader (the same path for every arm)")
    for rank, arm in enumerate(drawn):
        pursuer, evader = data[f"{arm}/pursuer"], evaders.get(arm)
        row = episodes[(episodes["arm"] == arm) & (episodes["seed"] == seed) & (episodes["episode"] == episode)]
        outcome = f"{row['outcome'].iloc[0]} after {int(row['length'].iloc[0])} steps" if len(row) else "?"
        colour = ARM_COLOURS.get(arm)
        # Earlier arms wider underneath, so coinciding paths stay visible.
        ax.plot(pursuer[:, 0], pursuer[:, 1], color=colour, lw=1.4 + 1.2 * (len(drawn) - 1 - rank), alpha=0.9,
                label=f"{arm_label(arm, params)}: {outcome}")
        if evader is not None:
            if not shared:
                ax.plot(evader[:, 0], evader[:, 1], color=colour, lw=0.9, ls="--", alpha=0.8)
            ax.plot(*evader[-1], marker="s", color=colour, ms=6, mec="black", ls="none")
        ax.plot(*pursuer[-1], marker="X" if "collision" in outcome else "o", color=colour, ms=9, mec="black",
                ls="none")
    if drawn:
        first = drawn[0]
        ax.plot(*data[f"{first}/pursuer"][0], marker="^", color="black", ms=10, ls="none", label="pursuer start")
        if first in evaders:
            ax.plot(*evaders[first][0], marker="*", color="black", ms=13, ls="none", label="evader start")
        ax.plot([], [], marker="o", color="gray", mec="black", ls="none", label="pursuer end (X: collision)")
        ax.plot([], [], marker="s", color="gray", mec="black", ls="none", label="evader at the arm's episode end")
    else:
        ax.text(0, 0, "no trajectory recorded", ha="center")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.grid(alpha=0.2)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Test episode {episode} (env seed {params.eval.test_seed_base + episode}), training seed {seed}\n"
                 "solid: pursuer, dashed: evader, grey: obstacles, dotted: barrier boundary h = 0")
    return _figure_bytes(fig), notes


def figure_min_margin(inputs: Inputs, arms: list[str], params: Params) -> bytes:
    """One histogram panel per arm (shared axes), so arms never hide each other."""
    plt = _pyplot()
    episodes = all_episodes(inputs)
    finite = episodes[np.isfinite(episodes["min_h"])]
    values = finite["min_h"].to_numpy(float)
    lo, hi = (min(values.min(), -0.05), max(values.max(), 0.05)) if len(values) else (-1.0, 1.0)
    bins = np.linspace(lo, hi, 49)
    fig, axes = plt.subplots(max(len(arms), 1), 1, figsize=(8, 1.6 + 1.3 * max(len(arms), 1)), sharex=True,
                             sharey=True, squeeze=False)
    for ax, arm in zip(axes[:, 0], arms):
        arm_values = finite.loc[finite["arm"] == arm, "min_h"].to_numpy(float)
        never = int(((episodes["arm"] == arm) & ~np.isfinite(episodes["min_h"])).sum())
        below = int((arm_values < 0).sum())
        total = len(arm_values) + never
        ax.hist(arm_values[arm_values < 0], bins=bins, color="black", alpha=0.85)
        ax.hist(arm_values[arm_values >= 0], bins=bins, color=ARM_COLOURS.get(arm), alpha=0.85)
        ax.axvline(0.0, color="black", lw=1.2, ls="--")
        note = f"; {never} with no barrier in reach" if never else ""
        ax.set_title(f"{arm_label(arm, params)}: {below}/{total} episodes below 0 (black){note}", fontsize=9,
                     loc="left")
        ax.set_ylabel("episodes")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("minimum barrier value min_h over the episode (m); dashed line h = 0, left of it the "
                           "CBF was violated")
    fig.suptitle("Distribution of the minimum safety margin per episode, one panel per arm (all seeds)")
    fig.tight_layout()
    return _figure_bytes(fig)


FIGURE_CAPTIONS = {
    "learning_curves": "Learning curves: training-rollout capture rate and episode return against env steps, "
                       "one line per algorithm (mean across the seeds that logged a point at that step), "
                       "band = min..max across seeds, dots = single seeds, open circles = steps where fewer seeds "
                       "logged a point (a rate is logged only when an episode ended in that rollout window).",
    "outcome_rates": "Outcome rates per arm with the {level} intervals of the across-seed table (episode "
                     "outcomes, left: the mean over seeds; step rates, right: steps pooled over seeds; both "
                     "generalized pivotal intervals of the crossed seed x scenario design, widened to at least the "
                     "pooled Wilson interval, so a zero count shows an upper bound, too small to see here, not "
                     "[0, 0]); 'n/a': the arm has no QP.",
    "qp_speed": "QP solver speed: median time per batched solve against batch size, log-log, per backend, "
                "dtype (solid float64, dashed float32) and obstacle count.",
    "trajectories": "One evaluation episode played by every arm (same start, obstacles and evader randomness): "
                    "pursuer paths solid, evader paths dashed, obstacles grey with the barrier boundary dotted.",
    "performance_profile": "Performance profile over training seeds (test split): left, the share of seeds whose "
                           "capture rate exceeds tau; right, each seed's capture rate per arm.",
    "min_safety_margin": "Distribution of each episode's minimum barrier value min_h, one panel per arm (all "
                         "seeds); the dashed line at 0 is the barrier boundary, episodes left of it (black) "
                         "violated the CBF.",
}


def figure_performance_profile(inputs: Inputs, arms: list[str], params: Params) -> bytes:
    """Per-seed test capture per arm: a performance profile (share of runs scoring above tau) and the runs."""
    plt = _pyplot()
    episodes = all_episodes(inputs)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for arm in arms:
        rates = episodes[episodes["arm"] == arm].groupby("seed")["outcome"].apply(lambda o: (o == "capture").mean())
        values = np.sort(rates.to_numpy(float))
        if not len(values):
            continue
        taus = np.linspace(max(0.0, values.min() - 0.05), min(1.0, values.max() + 0.02), 200)
        axes[0].plot(taus, [(values > t).mean() for t in taus], color=ARM_COLOURS.get(arm), label=arm_label(arm, params))
        y = arms.index(arm) + np.linspace(-0.15, 0.15, len(values))
        axes[1].plot(100 * values, y, "o", color=ARM_COLOURS.get(arm))
    axes[0].set_xlabel("test capture rate tau")
    axes[0].set_ylabel("share of training seeds with capture > tau")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    # the arm ids here (the left panel's legend has the long labels): long labels ran into the left panel
    axes[1].set_yticks(range(len(arms)), arms, fontsize=7)
    axes[1].set_xlabel("test capture rate of each training seed (%)")
    axes[1].grid(alpha=0.3)
    fig.suptitle("Performance profile over training seeds (test split): one point per seed")
    return _figure_bytes(fig)
