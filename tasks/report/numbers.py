"""Numbers the text and the figures share, derived from the inputs: across-seed rows, the arms
present, the test-split episodes, the QP benchmark's side-by-side medians.
"""

from __future__ import annotations

import pandas as pd

from tasks.artifacts import KNOWN_ARMS
from tasks.params import Params
from tasks.report.inputs import Inputs


def across_seed_rows(summary: pd.DataFrame, aggregate: str = "mean") -> dict[str, pd.Series]:
    rows = summary[(summary["seed"] == "all") & (summary["aggregate"] == aggregate)]
    return {row["arm"]: row for _, row in rows.iterrows()}


def arms_present(summary: pd.DataFrame, params: Params) -> list[str]:
    present = set(summary["arm"])
    return [arm for arm in KNOWN_ARMS if arm in present and arm in params.eval.arms]


def all_episodes(inputs: Inputs) -> pd.DataFrame:
    """The TEST rows of every eval cell: every figure and table of results reads the held-out split."""
    episodes = pd.concat([cell.episodes for cell in inputs.evals], ignore_index=True)
    return episodes[episodes["split"] == "test"].reset_index(drop=True)


def qp_pivot(table: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    """Median ms per backend side by side for each setting, with the speed-up ratio.

    Returns (pivot, reference backend) or (None, None) when the needed columns are absent.
    The ratio is other backend's median / the reference backend's ("exact" if present).
    """
    if not {"backend", "batch_size", "median_ms"} <= set(table.columns):
        return None, None
    keys = [c for c in ("pass", "device", "dtype", "obstacles") if c in table.columns]
    backends = list(dict.fromkeys(table["backend"].astype(str)))
    reference = "exact" if "exact" in backends else backends[0]
    frame = table.copy()
    frame["backend"] = frame["backend"].astype(str)
    pivot = frame.pivot_table(index=keys + ["batch_size"], columns="backend", values="median_ms", aggfunc="median")
    pivot = pivot.reset_index()
    for other in backends:
        if other != reference and other in pivot.columns and reference in pivot.columns:
            pivot[f"{other}/{reference}"] = pivot[other] / pivot[reference]
    return pivot, reference


def _equal_budgets(inputs: Inputs) -> bool:
    return len({int(c.summary["total_steps"]) for c in inputs.train}) == 1
