"""Stage `headline`: the one DVC metrics file, small enough for `dvc exp show` and `dvc metrics diff`.

    results/compare/metrics.json  ->  results/headline.json

Point estimates only, every one a number (so `dvc metrics diff` shows a change):

    verdict_code       tasks.compare.VERDICT_CODES of the decision's verdict (2 BETTER ... -2 FAILS_STEP_1)
    outcome_code       OUTCOME_CODES of the plan's outcome letter, only when metrics.json carries one
    capture.<arm>      test capture rate of each evaluated arm (share of episodes, 0..1)
    collision.<arm>    test collision rate of each evaluated arm (share of episodes, 0..1)

No interval bounds (they stay in results/compare/metrics.json and summary.csv, plain outputs) and
no wall-clock numbers (they depend on the machine; metrics.json holds none either). Its own stage
reading compare's output keeps tasks/compare.py unaware of how DVC displays results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks import io
from tasks.artifacts import HEADLINE_PATH, METRICS_PATH
from tasks.params import Params

# The plan's outcomes (tasks/decision.py Outcome.letter) as numbers; 0: no approach chosen.
OUTCOME_CODES = {"A": 1, "B": 2, "C": 3, "D": 0}
RATES = (("capture", "capture_rate"), ("collision", "collision_rate"))


class HeadlineInputError(ValueError):
    """results/compare/metrics.json is missing or lacks what the headline needs (rerun compare).

    A ValueError: the flow does not retry it (the same input would fail again)."""


def _outcome_letter(metrics: dict[str, Any]) -> str | None:
    outcome = metrics.get("outcome")
    if isinstance(outcome, dict):
        outcome = outcome.get("letter")
    return outcome if isinstance(outcome, str) else None


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline dict from compare's metrics.json contents (see the module docstring)."""
    decision = metrics.get("decision")
    if not isinstance(decision, dict) or not isinstance(decision.get("verdict_code"), int):
        raise HeadlineInputError(f"{METRICS_PATH}: no decision.verdict_code (rerun the compare stage)")
    arms = metrics.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise HeadlineInputError(f"{METRICS_PATH}: no arms (rerun the compare stage)")
    out: dict[str, Any] = {"verdict_code": decision["verdict_code"]}
    letter = _outcome_letter(metrics)
    if letter is not None:
        if letter not in OUTCOME_CODES:
            raise HeadlineInputError(f"{METRICS_PATH}: outcome {letter!r}; accepted: {sorted(OUTCOME_CODES)}")
        out["outcome_code"] = OUTCOME_CODES[letter]
    for short, key in RATES:
        missing = [arm for arm, entry in arms.items() if not isinstance(entry.get(key), (int, float))]
        if missing:
            raise HeadlineInputError(f"{METRICS_PATH}: arms {missing} have no numeric '{key}' (rerun compare)")
        out[short] = {arm: entry[key] for arm, entry in arms.items()}
    return out


def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Write results/headline.json from results/compare/metrics.json; returns {"headline": path, **values}."""
    workdir = Path(workdir)
    source = workdir / METRICS_PATH
    try:
        metrics = json.loads(source.read_text())
    except FileNotFoundError:
        raise HeadlineInputError(f"{source} does not exist (run the compare stage first)") from None
    except json.JSONDecodeError as exc:
        raise HeadlineInputError(f"{source} is not JSON ({exc}); rerun the compare stage") from None
    values = headline(metrics)
    target = workdir / HEADLINE_PATH
    io.write_text(target, json.dumps(values, indent=2, allow_nan=False) + "\n")
    return {"headline": str(target), **values}
