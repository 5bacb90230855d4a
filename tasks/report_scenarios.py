"""The decision report's scenario section (stage `scenarios`' outputs -> markdown, PNGs, GIFs).

`section(params, workdir)` reads ``results/scenarios/<algo>-s<seed>/`` of the first seed in
``scenarios.seeds`` (every arm of every algo meets the same episodes there), writes

    reports/figures/scenarios/trajectories_<scenario>.png   every arm, episode 0, same start and
                                                            evader randomness; barrier margin as
                                                            colour, QP-correction arrows
    reports/figures/scenarios/heatmaps.png                  per arm: mean min barrier, violations,
                                                            QP correction by arena position
    reports/figures/scenarios/actions.png                   per arm: 2-D (v, w) histogram
    reports/animations/<scenario>.gif                       every arm side by side (DVC-cached)

and returns the markdown: a per-scenario table (capture, collision, violation, intervention,
infeasible with Wilson intervals; capture time), a one-line reading per scenario generated from
the numbers, behaviour measures per arm, and the red flags (the safety layer infeasible on > 5 % of steps).
Without scenario results it returns a one-line note (the stage may not have run).
"""

from __future__ import annotations

import io as _bytes_io
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from env.render import ArenaStyle, draw_arena
from tasks import io
from tasks.params import Params
from tasks.artifacts import (ARMS_WITHOUT_QP, BEHAVIOUR_FILE, EPISODES_FILE, HEATMAPS_FILE, SCENARIO_TRAJECTORIES_FILE,
                             scenarios_dir)
from tasks.scenario_catalogue import INFEASIBLE_RED_FLAG, NEAR_BARRIER, red_flags, scenario_geometry
from tasks.stats import rate_interval

FIGURE_DIR = Path("reports/figures/scenarios")
ANIMATION_DIR = Path("reports/animations")
GIF_LIMIT_BYTES = 1_000_000
ARROWS_PER_PANEL = 12
ARROW_GAIN = 2.0  # correction arrows drawn at twice the course shift, to be visible
MARGIN_RANGE = (-0.2, 1.0)  # m: colour scale of the barrier margin (RdYlGn: red at the low end, yellow midway)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scenario_seed(params: Params) -> int:
    """The training seed the section shows: the first of scenarios.seeds that was trained."""
    return next((s for s in params.scenarios.seeds if s in params.train.seeds), params.scenarios.seeds[0])


def read_results(params: Params, workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]] | None:
    """(episodes, behaviour, trajectories, heatmaps) of the first scenario seed, every algo; None
    when no cell has results."""
    seed = scenario_seed(params)
    episodes, behaviour, trajectories, heatmaps = [], [], {}, {}
    for algo in params.train.algos:
        cell = scenarios_dir(workdir, algo, seed)
        if not (cell / EPISODES_FILE).exists():
            continue
        episodes.append(pd.read_csv(cell / EPISODES_FILE))
        behaviour.append(pd.read_csv(cell / BEHAVIOUR_FILE))
        with np.load(cell / SCENARIO_TRAJECTORIES_FILE, allow_pickle=False) as data:
            trajectories.update({key: data[key] for key in data.files})
        with np.load(cell / HEATMAPS_FILE, allow_pickle=False) as data:
            heatmaps.update({key: data[key] for key in data.files})
    if not episodes:
        return None
    return pd.concat(episodes, ignore_index=True), pd.concat(behaviour, ignore_index=True), trajectories, heatmaps


def _ci(k: int, n: int) -> str:
    """k of n as a percentage with its 95 % Wilson interval, one decimal, or as many as an upper bound
    under 0.1 % needs for two significant digits (`percent_interval`: 0 of 10,000 steps: 0.0 % [0.0,
    0.038], not [0.0, 0.0]; 6 of 20,131: 0.030 % [0.014, 0.065], not 0.0 % outside its interval)."""
    # here, not at the top: importing the report package costs the spawned figure processes 0.6 s each
    from tasks.report.formatting import percent_interval

    interval = rate_interval(int(k), int(n))
    return percent_interval(interval.estimate, interval.low, interval.high, 1)


def _qp_ci(arm: str, k: int, n: int) -> str:
    """`_ci` of a QP count (interventions, infeasible steps); "n/a (no QP)" for an arm whose actions
    pass through no QP, whose zeros were never measured."""
    return "n/a (no QP)" if arm in ARMS_WITHOUT_QP else _ci(k, n)


def scenario_table(episodes: pd.DataFrame, dt: float) -> pd.DataFrame:
    """Per (scenario, arm): counts and rates. Episode rates (capture, collision, violation: an
    episode with any barrier < 0) over episodes; intervention and infeasible over steps."""
    frame = episodes.assign(
        capture=episodes.outcome.eq("capture"), collision=episodes.outcome.eq("collision"),
        violation=episodes.cbf_violation_steps.gt(0),
        capture_time=np.where(episodes.outcome.eq("capture"), episodes.length * dt, np.nan),
    )  # fmt: skip
    return frame.groupby(["scenario", "arm"], sort=False).agg(
        episodes=("episode", "size"), capture=("capture", "sum"), collision=("collision", "sum"),
        violation=("violation", "sum"), steps=("length", "sum"), interventions=("interventions", "sum"),
        infeasible=("infeasible_steps", "sum"), capture_time=("capture_time", "mean"),
        min_h=("min_h", "min"), correction=("correction", "mean"),
    ).reset_index()  # fmt: skip


def reading(name: str, rows: pd.DataFrame) -> str:
    """One line per scenario from its numbers (rows: scenario_table's rows of this scenario)."""
    rates = rows.assign(rate=rows.capture / rows.episodes)
    high, low = rates.rate.max(), rates.rate.min()
    if high == low:
        parts = [f"every arm captured {100 * high:.0f} %"]
    else:
        # every arm tied at either end is named: one name for a shared 100 % would read as a winner
        best, worst = rates[rates.rate == high], rates[rates.rate == low]
        parts = [f"highest capture {', '.join(best.arm)} ({100 * high:.0f} %), lowest {', '.join(worst.arm)} "
                 f"({100 * low:.0f} %)"]
        # whether the extremes' 95 % Wilson intervals overlap: a descriptive reading of so few
        # episodes, no test (non-overlap is the stricter condition)
        top = min(rate_interval(int(r.capture), int(r.episodes)).low for r in best.itertuples())
        bottom = max(rate_interval(int(r.capture), int(r.episodes)).high for r in worst.itertuples())
        if top <= bottom:
            parts[-1] += " (their 95 % intervals overlap)"
    colliding = rows[rows.collision > 0]
    parts.append("no collisions" if colliding.empty else
                 "collisions: " + ", ".join(f"{r.arm} {r.collision}/{r.episodes}" for r in colliding.itertuples()))
    violating = rows[rows.violation > 0]
    if not violating.empty:
        parts.append("barrier violated by " + ", ".join(f"{r.arm} ({r.violation} ep.)" for r in violating.itertuples()))
    flagged = rows[rows.infeasible > INFEASIBLE_RED_FLAG * rows.steps]
    if not flagged.empty:
        parts.append("QP infeasible > 5 % of steps: " + ", ".join(flagged.arm))
    if name == "corridor_tight":
        passed = rows[(rows.capture > 0) & rows.arm.str.contains("barriernet|filter|rcbf|shielded|cbf_beta")]
        parts.append("as expected, no CBF arm got through" if passed.empty else
                     "CBF arms captured anyway (the evader came out, or the gap was passed): " + ", ".join(passed.arm))
    return "; ".join(parts) + "."


def behaviour_table(behaviour: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean squared jerk (mean over scenarios) and steering vs braking near obstacles
    (weighted by the near steps of each scenario)."""
    rows = []
    for arm, group in behaviour.groupby("arm", sort=False):
        near = group.near_steps.sum()
        weights = group.near_steps.where(group.near_steps > 0, 0)
        dv = float((group.dv_near.fillna(0) * weights).sum() / near) if near else math.nan
        dw = float((group.dw_near.fillna(0) * weights).sum() / near) if near else math.nan
        rows.append({"arm": arm, "jerk_ms": float(group.jerk_ms.mean()), "near_steps": int(near), "dv_near": dv,
                     "dw_near": dw, "steer_share": dw / (dv + dw) if near and dv + dw > 0 else math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- figures ----------------------------------------------------------------------------------


# The panels' arena: thinner lines than the decision report's single large figure.
PANEL_ARENA = ArenaStyle(wall_width=1.2, obstacle_colour="dimgrey", obstacle_alpha=0.8, keep_out_colour="grey",
                         keep_out_width=0.6)


def _arena(ax, params: Params, obstacles: np.ndarray) -> None:
    """The arena of one panel: obstacles (K, 3) x, y, r; dotted where the body barrier is 0 (walls included)."""
    obstacles = np.asarray(obstacles, dtype=float).reshape(-1, 3)
    draw_arena(ax, obstacles[:, :2], obstacles[:, 2], params.env.arena_size,
               keep_out=params.env.robot_radius + params.env.safety_margin, wall_keep_out=True, margin=0.0,
               style=PANEL_ARENA)
    ax.tick_params(labelsize=6)


def _course_shift(pose: np.ndarray, executed: np.ndarray, proposal: np.ndarray, horizon: float = 1.0) -> np.ndarray:
    """Where the QP moved the pursuer's course: end point after `horizon` s at the executed
    (v, w) minus the end point at the proposal, both exact unicycle arcs from pose (T, 3)."""

    def end(u: np.ndarray) -> np.ndarray:
        v, w, theta = u[:, 0], u[:, 1], pose[:, 2]
        turn = w * horizon
        small = np.abs(turn) < 1e-6
        safe_w = np.where(small, 1.0, w)
        dx = np.where(small, v * horizon * np.cos(theta), v / safe_w * (np.sin(theta + turn) - np.sin(theta)))
        dy = np.where(small, v * horizon * np.sin(theta), -v / safe_w * (np.cos(theta + turn) - np.cos(theta)))
        return np.stack((dx, dy), axis=1)

    return end(executed) - end(proposal)


def _view(name: str, arms: list[str], trajectories: dict[str, Any], params: Params) -> tuple:
    """A square window (x range, y range) around every arm's paths, 1.5 m of margin, at least
    6 m wide, inside the arena: the arena is 20 m, the interesting part often 3 m."""
    half = params.env.arena_size / 2
    points = np.concatenate([trajectories[f"{name}/{arm}/{who}"][:, :2] for arm in arms for who in ("pursuer", "evader")])
    low, high = points.min(0) - 1.5, points.max(0) + 1.5
    centre, width = (low + high) / 2, max(float((high - low).max()), 6.0)
    width = min(width, 2 * half + 0.4)
    centre = np.clip(centre, -half - 0.2 + width / 2, half + 0.2 - width / 2)
    return tuple((c - width / 2, c + width / 2) for c in centre)


def figure_trajectories(name: str, arms: list[str], trajectories: dict[str, Any], params: Params) -> bytes:
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    cols = min(4, len(arms))
    rows = math.ceil(len(arms) / cols)
    # constrained layout: equal-aspect panels, the colour bar and the title packed without the
    # empty band a fixed subplots grid leaves above square panels
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 1.0, 3.0 * rows + 0.5), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("RdYlGn")
    norm = plt.Normalize(*MARGIN_RANGE)
    obstacles = trajectories[f"{name}/obstacles"]
    view = _view(name, arms, trajectories, params)
    for ax, arm in zip(axes.flat, arms):
        prefix = f"{name}/{arm}"
        _arena(ax, params, obstacles)
        pursuer, evader, h = trajectories[f"{prefix}/pursuer"], trajectories[f"{prefix}/evader"], trajectories[f"{prefix}/h"]
        ax.plot(evader[:, 0], evader[:, 1], color="tab:blue", lw=0.8, ls="--")
        segments = np.stack((pursuer[:-1, :2], pursuer[1:, :2]), axis=1)
        lines = LineCollection(segments, cmap=cmap, norm=norm, lw=1.8)
        lines.set_array(h[1:])
        ax.add_collection(lines)
        ax.plot(*pursuer[0, :2], "o", color="black", ms=3)
        ax.plot(*evader[0], "o", color="tab:blue", ms=3)
        moved = np.flatnonzero(trajectories[f"{prefix}/intervened"])
        if moved.size:
            pick = moved[np.linspace(0, moved.size - 1, min(ARROWS_PER_PANEL, moved.size)).astype(int)]
            shift = _course_shift(pursuer[pick].astype(np.float64), trajectories[f"{prefix}/executed"][pick],
                                  trajectories[f"{prefix}/proposal"][pick])  # fmt: skip
            ax.quiver(pursuer[pick, 0], pursuer[pick, 1], shift[:, 0], shift[:, 1], angles="xy", scale_units="xy",
                      scale=1.0 / ARROW_GAIN, color="purple", width=0.012)  # fmt: skip
        ax.set_xlim(*view[0])
        ax.set_ylim(*view[1])
        ax.set_title(f"{arm}\n{len(pursuer) - 1} steps, {moved.size} corrected", fontsize=7)  # arm names are long
    for ax in list(axes.flat)[len(arms):]:
        ax.axis("off")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6, label="barrier margin h (m)")
    fig.suptitle(f"{name}: episode 0 (pursuer coloured by h, evader dashed blue; purple: where the QP moved the "
                 f"1 s course, x{ARROW_GAIN:g})", fontsize=8)  # fmt: skip
    return _png(fig)


def figure_heatmaps(arms: list[str], heatmaps: dict[str, Any], params: Params) -> bytes:
    """Rows: arms; columns: mean min barrier, violating fraction, mean correction by the safety layer,
    each on one colour scale shared by every arm (one colour bar per column), so that arms compare by
    colour; cells no step reached are grey."""
    plt = _pyplot()
    half = params.env.arena_size / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        grids = {arm: (heatmaps[f"{arm}/min_h"] / heatmaps[f"{arm}/steps"],
                       heatmaps[f"{arm}/violations"] / heatmaps[f"{arm}/steps"],
                       # an arm without a QP has no correction to show: its zeros were never measured
                       np.full_like(heatmaps[f"{arm}/steps"], np.nan, dtype=float) if arm in ARMS_WITHOUT_QP
                       else heatmaps[f"{arm}/correction"] / heatmaps[f"{arm}/steps"]) for arm in arms}
    correction_max = max([float(np.nanmax(g[2])) for g in grids.values() if np.isfinite(g[2]).any()] + [1e-3])
    columns = (("mean min barrier h (m)", "RdYlGn", MARGIN_RANGE),
               ("violating steps (fraction)", "Reds", (0, 1)),
               ("mean correction |du| (normalised)", "Purples", (0, correction_max)))
    fig, axes = plt.subplots(len(arms), 3, figsize=(7.2, 2.1 * len(arms) + 1.0), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    for col, (title, cmap, (low, high)) in enumerate(columns):
        # cells no step reached are grey: the scales' low ends are near white, which a zero would share
        colours = plt.get_cmap(cmap).with_extremes(bad="lightgrey")
        for row, arm in enumerate(arms):
            ax = axes[row, col]
            image = ax.imshow(np.ma.masked_invalid(grids[arm][col].T), origin="lower",
                              extent=(-half, half, -half, half), cmap=colours, vmin=low, vmax=high)
            ax.tick_params(labelsize=6)
            if col == 2 and arm in ARMS_WITHOUT_QP:
                ax.text(0.5, 0.5, "n/a (no QP)", transform=ax.transAxes, ha="center", va="center", fontsize=7)
            if col == 0:
                ax.set_ylabel(arm, fontsize=7)
        bar = fig.colorbar(image, ax=axes[:, col], location="top", shrink=0.9, aspect=25, pad=0.01)
        bar.set_label(title, fontsize=8)
        bar.ax.tick_params(labelsize=6)
        bar.ax.locator_params(nbins=4)
    axes[0, 0].xaxis.set_major_locator(plt.MultipleLocator(5))  # shared by every panel
    axes[0, 0].yaxis.set_major_locator(plt.MultipleLocator(5))
    fig.supxlabel("arena x (m); rows: arms, y (m) upwards", fontsize=7)
    return _png(fig)


def figure_actions(arms: list[str], heatmaps: dict[str, Any], params: Params) -> bytes:
    plt = _pyplot()
    cols = min(4, len(arms))
    rows = math.ceil(len(arms) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.5 * rows + 0.4), squeeze=False, layout="constrained")
    v_max, w_max = params.env.pursuer_v_max, params.env.pursuer_w_max
    image = None
    for ax, arm in zip(axes.flat, arms):
        grid = heatmaps[f"{arm}/actions"]
        share = grid / max(grid.sum(), 1)
        image = ax.imshow(np.log10(share.T + 1e-5), origin="lower", extent=(0, v_max, -w_max, w_max), aspect="auto",
                  cmap="viridis", vmin=-5, vmax=0)  # fmt: skip
        ax.set_title(arm, fontsize=7)
        ax.set_xlabel("v (m/s)", fontsize=6)
        ax.set_ylabel("w (rad/s)", fontsize=6)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(arms):]:
        ax.axis("off")
    if image is not None:  # one scale for every arm (vmin, vmax fixed above)
        bar = fig.colorbar(image, ax=axes, location="right", shrink=0.8, aspect=30)
        bar.set_label("log10 share of the arm's steps (1e-5 added)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle("commanded actions (the safety layer's output), all scenario steps (log10 share of steps)",
                 fontsize=8)
    return _png(fig)


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def animation_gif(name: str, arms: list[str], trajectories: dict[str, Any], params: Params, path: Path) -> int:
    """Every arm's episode 0 side by side, the barrier boundary (dotted) drawn; at most
    scenarios.gif_frames frames (subsampled); returns the file size (bytes).

    Drawn with matplotlib, written with pillow. Not through matplotlib.animation: its writers
    redraw the whole figure for every frame; here the static arena is drawn once and only the
    moving artists are blitted onto it (about 5x faster, the same pictures).
    """
    plt = _pyplot()
    from PIL import Image

    frames_max = params.scenarios.gif_frames
    longest = max(len(trajectories[f"{name}/{arm}/pursuer"]) for arm in arms)
    frames = np.unique(np.linspace(0, longest - 1, min(frames_max, longest)).astype(int))
    obstacles = trajectories[f"{name}/obstacles"]
    cols = min(4, len(arms))
    rows = math.ceil(len(arms) / cols)
    size = 0
    for dpi in (90, 60, 45):  # the first that fits GIF_LIMIT_BYTES
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False, dpi=dpi)
        for ax in list(axes.flat)[len(arms):]:
            ax.axis("off")
        markers = []
        for ax, arm in zip(axes.flat, arms):
            _arena(ax, params, obstacles)
            ax.set_title(arm, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            trail, = ax.plot([], [], color="black", lw=0.8, animated=True)
            pursuer_dot, = ax.plot([], [], "o", color="black", ms=3, animated=True)
            evader_dot, = ax.plot([], [], "o", color="tab:blue", ms=3, animated=True)
            markers.append((ax, arm, trail, pursuer_dot, evader_dot))
        canvas = fig.canvas
        canvas.draw()  # the static part, once
        background = canvas.copy_from_bbox(fig.bbox)
        images = []
        for frame in frames:
            canvas.restore_region(background)
            for ax, arm, trail, pursuer_dot, evader_dot in markers:
                pursuer, evader = trajectories[f"{name}/{arm}/pursuer"], trajectories[f"{name}/{arm}/evader"]
                t = min(int(frame), len(pursuer) - 1)
                trail.set_data(pursuer[: t + 1, 0], pursuer[: t + 1, 1])
                pursuer_dot.set_data([pursuer[t, 0]], [pursuer[t, 1]])
                evader_dot.set_data([evader[t, 0]], [evader[t, 1]])
                for artist in (trail, pursuer_dot, evader_dot):
                    ax.draw_artist(artist)
            rgb = np.asarray(canvas.buffer_rgba())[..., :3]
            images.append(Image.fromarray(rgb.copy()))
        plt.close(fig)
        palette = images[0].quantize(colors=64)  # one palette for all frames: small and steady
        frames_p = [image.quantize(palette=palette) for image in images]
        with io.atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                frames_p[0].save(handle, format="GIF", save_all=True, append_images=frames_p[1:],
                                 duration=int(1000 / 6), loop=0)  # fmt: skip
        size = path.stat().st_size
        if size <= GIF_LIMIT_BYTES:
            return size
    return size


def render_scenario(name: str, arms: list[str], trajectories: dict[str, Any], params: Params, gif: Path) -> bytes:
    """One scenario's pictures: writes its animation to `gif`, returns its trajectory PNG."""
    png = figure_trajectories(name, arms, trajectories, params)
    animation_gif(name, arms, trajectories, params, gif)
    return png


def render_scenarios(names: list[str], arms: list[str], trajectories: dict[str, Any], params: Params,
                     animation_dir: Path) -> dict[str, bytes]:
    """`render_scenario` for every scenario: writes `animation_dir/<name>.gif`, returns
    {name: trajectory PNG}. The scenarios are drawn in parallel processes (one per CPU, spawned:
    the caller may run threads), since drawing them is most of the report stage's time and one
    process would leave the other cores idle; each process gets only its scenario's arrays. Agg
    draws the same bytes in any process."""
    animation_dir.mkdir(parents=True, exist_ok=True)
    jobs = {name: (name, arms, {key: value for key, value in trajectories.items() if key.startswith(f"{name}/")},
                   params, animation_dir / f"{name}.gif") for name in names}  # fmt: skip
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = min(len(jobs), cpus)
    if processes <= 1:
        return {name: render_scenario(*job) for name, job in jobs.items()}
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(render_scenario, *job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


# -- the section ------------------------------------------------------------------------------


def section(params: Params, workdir: str | Path = ".") -> str:
    """The report's scenario section (markdown); writes its PNGs and GIFs under `workdir`."""
    workdir = Path(workdir)
    results = read_results(params, workdir)
    if results is None:
        return "## Scenarios\n\nNo scenario results (results/scenarios/ is empty: the stage `scenarios` has not run).\n"
    episodes, behaviour, trajectories, heatmaps = results
    arms = list(dict.fromkeys(episodes.arm))
    names = [n for n in params.scenarios.names if n in set(episodes.scenario)]
    table = scenario_table(episodes, params.env.dt)
    figure_dir, animation_dir = workdir / FIGURE_DIR, workdir / ANIMATION_DIR
    figure_dir.mkdir(parents=True, exist_ok=True)

    def write_png(stem: str, png: bytes) -> str:
        with io.atomic_path(figure_dir / f"{stem}.png") as tmp:
            tmp.write_bytes(png)
        return f"figures/scenarios/{stem}.png"

    seed = scenario_seed(params)
    md = ["## Scenarios", "",
          f"Named situations (tasks/scenarios.py), {params.scenarios.episodes} episodes each, training seed {seed}; "
          f"every arm plays the same episodes (evader env seeds {params.scenarios.seed_base}.."
          f"{params.scenarios.seed_base + params.scenarios.episodes - 1}, start poses jittered by up to "
          f"{params.scenarios.jitter:g} m / rad). Rates with 95 % Wilson intervals; capture, collision and "
          "violation (any step with a barrier < 0) per episode, intervention and infeasible per step; capture "
          "time: mean over captured episodes. The step rates' intervals treat steps as independent (they are not: "
          "read them as too narrow). Every safety layer is a QP except CBF-Beta's own, a safe box that solves no "
          "QP on the action (the baseline has no layer): its 'intervention' is a step whose box moved the action "
          "from where the same Beta draw lands on the whole action box, its 'infeasible' a step whose box is "
          "empty.", "",
          "Figures per scenario: episode 0 for every arm (same start and evader randomness), the window zoomed to the "
          "paths; the pursuer's path coloured by its barrier margin h on a red-yellow-green scale from "
          f"{MARGIN_RANGE[0]:g} m and below (red) through {sum(MARGIN_RANGE) / 2:g} m (yellow) to {MARGIN_RANGE[1]:g} m "
          "and more (green), so h = 0 is orange; dotted rings: where the body barrier is 0; the evader dashed blue; "
          f"purple arrows at up to {ARROWS_PER_PANEL} evenly spaced steps where the safety layer changed the action (how far it "
          f"moved the pursuer's 1 s course, drawn x{ARROW_GAIN:g}). Animated GIFs of "
          "all arms side by side are in `reports/animations/` (DVC-cached, not in git).", ""]
    pictures = render_scenarios(names, arms, trajectories, params, animation_dir)
    flags = red_flags(episodes)
    md += ["**Red flags** (the safety layer infeasible on > 5 % of steps): " + ("; ".join(flags) if flags else "none") + ".", ""]
    for name in names:
        rows = table[table.scenario == name]
        geometry = scenario_geometry(name, params)
        md += [f"### {name}", "", f"*{geometry.reading}.* Reading: {reading(name, rows)}", ""]
        md += [_md_table(
            ["arm", "capture", "collision", "violation", "intervention (steps)", "infeasible (steps)", "capture time (s)"],
            [[r.arm, _ci(r.capture, r.episodes), _ci(r.collision, r.episodes), _ci(r.violation, r.episodes),
              _qp_ci(r.arm, r.interventions, r.steps), _qp_ci(r.arm, r.infeasible, r.steps),
              f"{r.capture_time:.1f}" if np.isfinite(r.capture_time) else "-"] for r in rows.itertuples()],
        ), ""]  # fmt: skip
        link = write_png(f"trajectories_{name}", pictures[name])
        md += [f"![{name}]({link})", "",
               f"*{name}: episode 0 for every arm (legend above). Animation: `reports/animations/{name}.gif`.*", ""]
    link = write_png("heatmaps", figure_heatmaps(arms, heatmaps, params))
    md += ["### Where in the arena", "", f"![heatmaps]({link})", "",
           "*Per arm, over every step of every scenario episode (pursuer position after the step, 0.5 m cells): mean "
           "minimum barrier margin, fraction of steps with a barrier < 0, mean correction by the safety layer "
           "|commanded - proposal| in normalised units ((dv / v_max, dw / w_max); n/a for an arm without one); one "
           "colour scale per column, shared by every arm; grey: no step there.*", ""]
    b = behaviour_table(behaviour)
    md += ["### Behaviour", "",
           f"Smoothness: mean squared jerk of the pursuer's path (m^2/s^6, mean over scenarios). Near an obstacle "
           f"or a wall (a body barrier within {NEAR_BARRIER:g} m): mean |change of the commanded v| / v_max and "
           "|change of w| / w_max per step (commanded: the safety layer's output, before the disturbance "
           "scenario's actuation noise); "
           "steer share = dw / (dv + dw) (1: only steers, 0: only changes speed, braking or speeding up).", "",
           _md_table(["arm", "jerk (m^2/s^6)", "near steps", "dv / v_max", "dw / w_max", "steer share"],
                     [[r.arm, f"{r.jerk_ms:.3g}", r.near_steps, f"{r.dv_near:.3f}", f"{r.dw_near:.3f}",
                       f"{r.steer_share:.2f}"] for r in b.itertuples()]), ""]  # fmt: skip
    link = write_png("actions", figure_actions(arms, heatmaps, params))
    md += [f"![actions]({link})", "", "*Commanded (v, w) (the safety layer's output, before any disturbance) of "
           "every scenario step per arm (log10 share of steps).*", ""]
    return "\n".join(md)
