"""Drawing the arena: rgb_array frames for the envs and trajectory figures for the reports.

Matplotlib figures on the Agg canvas, never through pyplot: no display needed and the caller's
pyplot state (backend, open figures) is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from env.core import PursuitEvasionCore

PURSUER_COLOUR = "tab:blue"
EVADER_COLOUR = "tab:red"
OBSTACLE_COLOUR = "0.45"


def draw_arena(ax: "Axes", obstacle_centres: np.ndarray, obstacle_radii: np.ndarray, arena_size: float) -> None:
    """Walls and obstacles: centres (K, 2), radii (K,) in metres; equal aspect, arena-sized limits."""
    half = arena_size / 2
    ax.add_patch(Rectangle((-half, -half), arena_size, arena_size, fill=False, linewidth=2.0, edgecolor="black"))
    for (cx, cy), radius in zip(np.asarray(obstacle_centres).reshape(-1, 2), np.asarray(obstacle_radii).reshape(-1)):
        ax.add_patch(Circle((cx, cy), radius, color=OBSTACLE_COLOUR, alpha=0.8))
    margin = 0.03 * arena_size
    ax.set_xlim(-half - margin, half + margin)
    ax.set_ylim(-half - margin, half + margin)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")


def draw_trajectories(
    ax: "Axes",
    obstacle_centres: np.ndarray,
    obstacle_radii: np.ndarray,
    arena_size: float,
    trajectories: Mapping[str, np.ndarray],
    evader: np.ndarray | None = None,
) -> None:
    """Pursuer paths of several policies over one arena.

    Args:
        ax: matplotlib axes to draw on.
        obstacle_centres: (K, 2) metres; obstacle_radii: (K,) metres.
        arena_size: side of the square arena (m), centred at the origin.
        trajectories: name -> (T, 2) pursuer positions; each gets a line, a start dot and an
            end cross, and the name in the legend.
        evader: optional (T, 2) evader positions (dashed red).
    """
    draw_arena(ax, obstacle_centres, obstacle_radii, arena_size)
    for name, path in trajectories.items():
        path = np.asarray(path, dtype=float).reshape(-1, 2)
        (line,) = ax.plot(path[:, 0], path[:, 1], linewidth=1.5, label=name)
        ax.plot(path[0, 0], path[0, 1], "o", color=line.get_color(), markersize=5)
        ax.plot(path[-1, 0], path[-1, 1], "x", color=line.get_color(), markersize=7)
    if evader is not None:
        path = np.asarray(evader, dtype=float).reshape(-1, 2)
        ax.plot(path[:, 0], path[:, 1], "--", color=EVADER_COLOUR, linewidth=1.2, label="evader")
        ax.plot(path[0, 0], path[0, 1], "o", color=EVADER_COLOUR, markersize=5)
    if trajectories or evader is not None:
        ax.legend(loc="upper right", fontsize="small")


def save_trajectories_png(
    path: str | Path,
    obstacle_centres: np.ndarray,
    obstacle_radii: np.ndarray,
    arena_size: float,
    trajectories: Mapping[str, np.ndarray],
    evader: np.ndarray | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """`draw_trajectories` on a fresh figure saved as a PNG at `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    draw_trajectories(ax, obstacle_centres, obstacle_radii, arena_size, trajectories, evader)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def _draw_robot(ax: "Axes", pose: np.ndarray, radius: float, colour: str, label: str) -> None:
    x, y, theta = (float(v) for v in pose)
    ax.add_patch(Circle((x, y), radius, color=colour, label=label))
    length = max(3 * radius, 0.4)
    ax.plot([x, x + length * np.cos(theta)], [y, y + length * np.sin(theta)], color=colour, linewidth=2)


def render_frame(core: "PursuitEvasionCore", index: int = 0, size_px: int = 400) -> np.ndarray:
    """Frame (size_px, size_px, 3) uint8 of env `index` of a core: arena, robots with headings,
    the capture radius around the evader."""
    p = core.params
    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    mask = core.obstacle_mask[index].cpu().numpy()
    draw_arena(ax, core.obstacle_centres[index].cpu().numpy()[mask], core.obstacle_radii[index].cpu().numpy()[mask], p.arena_size)
    ax.set_axis_off()
    pursuer = core.pursuer[index].cpu().numpy()
    evader = core.evader[index].cpu().numpy()
    ax.add_patch(Circle(tuple(evader[:2]), p.capture_radius, fill=False, linestyle=":", edgecolor=EVADER_COLOUR))
    _draw_robot(ax, pursuer, p.robot_radius, PURSUER_COLOUR, "pursuer")
    _draw_robot(ax, evader, p.robot_radius, EVADER_COLOUR, "evader")
    ax.text(-p.arena_size / 2, p.arena_size / 2, f" step {int(core.step_count[index])}", va="top", fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
