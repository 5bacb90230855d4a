"""How the report prints numbers: rates, intervals, times, p-values, arm names, markdown tables."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.artifacts import ARMS_WITHOUT_QP
from tasks.decision import percent, two_digit_places
from tasks.params import Params

ARM_LABELS = {
    "barriernet": "BarrierNet PPO",
    "baseline": "Baseline PPO",
    "baseline_ct_filter": "Baseline + CT-CBF filter",
    "baseline_dcbf_filter": "Baseline + DCBF filter",
}


def is_finite_number(x: Any) -> bool:
    """True for an int or float (numpy's included) that is neither NaN nor inf: what can be printed."""
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def fmt_rate(x: Any) -> str:
    return percent(x) if is_finite_number(x) else "n/a"


def percent_interval(est: float, low: float, high: float, decimals: int = 2) -> str:
    """"est % [low, high]" as percentages, all three with one number of decimals: `decimals`, or
    where the upper bound is below 10^-decimals %, enough for its two significant digits (6 of
    20,131 at one decimal: 0.030 % [0.014, 0.065], not 0.0 % [0.014, 0.1], a rate outside its own
    interval), and where a positive rate would round to 0, enough for its two (0.0019 % [0.00,
    0.0100], not 0.00 % [0.00, 0.01], which reads as no event). Exact zeros print with `decimals`."""
    top, rate, places = 100 * float(high), abs(100 * float(est)), decimals
    if 0 < top < 10.0 ** -decimals:
        places = two_digit_places(top)
    if 0 < rate < 0.5 * 10.0 ** -places:  # a rare event's rate would print as none: two significant digits
        places = two_digit_places(rate)

    def number(v: float) -> str:
        return f"{0.0:.{decimals}f}" if v == 0 else f"{100 * float(v):.{places}f}"

    return f"{number(est)} % [{number(low)}, {number(high)}]"


def fmt_rate_ci(est: Any, low: Any, high: Any) -> str:
    if not is_finite_number(est):
        return "n/a"
    if not (is_finite_number(low) and is_finite_number(high)):
        return fmt_rate(est)
    if float(low) == float(high):  # a degenerate resampling interval says nothing: do not print it as one
        return f"{100 * float(est):.2f} % (no interval: every resample gave the same value)"
    return percent_interval(est, low, high)


def fmt_number_ci(est: Any, low: Any, high: Any, decimals: int = 3) -> str:
    """A number (ms, normalised units, steps, return) with its interval, `decimals` decimals each."""
    if not is_finite_number(est):
        return "n/a"
    if not (is_finite_number(low) and is_finite_number(high)):
        return f"{float(est):.{decimals}f}"
    return f"{float(est):.{decimals}f} [{float(low):.{decimals}f}, {float(high):.{decimals}f}]"


def fmt_pp_ci(est: Any, low: Any, high: Any) -> str:
    if not is_finite_number(est):
        return "n/a"
    text = f"{100 * float(est):+.2f} pp"
    if is_finite_number(low) and is_finite_number(high):
        text += f" [{100 * float(low):+.2f}, {100 * float(high):+.2f}]"
    return text


def triple(row: pd.Series | dict, name: str) -> tuple[Any, Any, Any]:
    """(estimate, low, high) of `name` in a summary row or metrics.json entry."""
    return row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")


# The summary's columns about the QP: read for an arm in ARMS_WITHOUT_QP they would print zeros that
# were never measured (with a Wilson bound that suggests they were)
QP_METRICS = ("intervention_rate", "mean_correction", "infeasible_rate")


def fmt_metric(kind: str, row: pd.Series | dict, name: str, arm: str | None = None) -> str:
    """One cell of the results tables: a rate or number with its interval from the summary row;
    "n/a (no QP)" for a QP column of an arm whose actions pass through no QP."""
    if arm in ARMS_WITHOUT_QP and name in QP_METRICS:
        return "n/a (no QP)"
    est, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    # steps to capture are whole env steps averaged over a few hundred episodes: a tenth is the
    # precision they have; ms and normalised corrections are below 1 and keep three decimals
    return fmt_rate_ci(est, low, high) if kind == "rate" else fmt_number_ci(est, low, high, 1 if kind == "steps" else 3)


def fmt_seconds(seconds: Any) -> str:
    if not is_finite_number(seconds):
        return "not recorded"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def arm_label(arm: str, params: Params) -> str:
    if arm == "baseline_dcbf_filter":
        return f"Baseline + DCBF filter (gamma {params.cbf.filter_gamma:g})"
    if arm == "baseline_ct_filter":
        return f"Baseline + CT-CBF filter (gamma {params.cbf.filter_gamma:g})"
    rcbf = f"RCBF-QP filter ({params.cbf.form}, gamma {params.cbf.filter_gamma:g}, margin {params.cbf.robust_margin:g} m)"
    if arm == "barriernet_rcbf":
        return f"BarrierNet + {rcbf}"
    if arm == "cbf_beta":
        return "CBF-Beta PPO (safe box)"
    if arm == "cbf_beta_rcbf":
        return f"CBF-Beta policy, unconstrained + {rcbf}"
    if arm == "baseline_tuned_filter":
        fixed = params.eval.tuned_filter
        if fixed is not None:  # chosen once by the tuning study, on its own models' dev episodes
            return f"Baseline + tuned filter ({fixed.form}, gamma {fixed.gamma:g}, margin {fixed.robust_margin:g} m)"
        return "Baseline + tuned filter (each seed's dev sweep, eval.filter_sweep's rule)"
    if arm == "shielded":
        return f"Shielded PPO ({params.cbf.form} filter in training, gamma {params.cbf.filter_gamma:g})"
    return ARM_LABELS.get(arm, arm)


def fmt_p(p: Any) -> str:
    if not is_finite_number(p):
        return "n/a"
    return "< 0.0001" if float(p) < 1e-4 else f"{float(p):.4f}"


def fmt_interval_pp(ci: dict[str, Any] | None) -> str:
    if not ci:
        return "n/a"
    return fmt_pp_ci(ci.get("estimate"), ci.get("low"), ci.get("high"))
