"""Drawing the arena: rgb_array frames for the envs, and the arena under the report's trajectory figures.

Matplotlib figures on the Agg canvas, never through pyplot: no display needed and the caller's
pyplot state (backend, open figures) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


@dataclass(frozen=True)
class ArenaStyle:
    """How `draw_arena` draws: line widths in points, matplotlib colours. The env's frames use the
    default; the report's figures pass their own (tasks/report/figures.py, tasks/report_scenarios.py)."""

    wall_width: float = 2.0
    obstacle_colour: str = OBSTACLE_COLOUR
    obstacle_alpha: float = 0.8
    keep_out_colour: str = OBSTACLE_COLOUR
    keep_out_width: float | None = None  # None: matplotlib's patch.linewidth


def draw_arena(
    ax: "Axes",
    obstacle_centres: np.ndarray,
    obstacle_radii: np.ndarray,
    arena_size: float,
    keep_out: float | None = None,
    wall_keep_out: bool = False,
    margin: float | None = None,
    style: ArenaStyle = ArenaStyle(),
) -> None:
    """Walls and obstacles of the square arena centred at the origin; equal aspect, arena-sized limits.

    Args:
        obstacle_centres: (K, 2) metres; obstacle_radii: (K,) metres (only obstacles present).
        arena_size: side of the arena (m).
        keep_out: if given, a dotted ring at radius + keep_out (m) around each obstacle: where the
            body barrier is 0 (robot_radius + safety_margin).
        wall_keep_out: also a dotted square keep_out inside the walls (needs keep_out).
        margin: metres beyond the walls the axes show; None: 3 % of the arena.
    """
    half = arena_size / 2
    ax.add_patch(Rectangle((-half, -half), arena_size, arena_size, fill=False, linewidth=style.wall_width,
                           edgecolor="black"))
    ring = {"fill": False, "linestyle": ":", "edgecolor": style.keep_out_colour,
            **({"linewidth": style.keep_out_width} if style.keep_out_width is not None else {})}
    if keep_out is not None and wall_keep_out:
        inner = half - keep_out
        ax.add_patch(Rectangle((-inner, -inner), 2 * inner, 2 * inner, **ring))
    for (cx, cy), radius in zip(np.asarray(obstacle_centres).reshape(-1, 2), np.asarray(obstacle_radii).reshape(-1)):
        ax.add_patch(Circle((cx, cy), radius, color=style.obstacle_colour, alpha=style.obstacle_alpha))
        if keep_out is not None:
            ax.add_patch(Circle((cx, cy), radius + keep_out, **ring))
    margin = 0.03 * arena_size if margin is None else margin
    ax.set_xlim(-half - margin, half + margin)
    ax.set_ylim(-half - margin, half + margin)
    ax.set_aspect("equal")


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
