"""The report's "how much would this move" line: the measured spread between runs whose numerics
differed, set beside the verdict's intervals (issue 13 item 4).

Pinned runs (numerics.mode: pinned) give byte-identical results on any x86-64 CPU with AVX2; on
other hardware (ARM, GPUs) or in native mode, identical code and params still move the numbers.
`data/numerics_spread.json` stores how far they moved once, with the CPUs and the commit. Each
step of the fixed sequence is then checked: would its conclusion change if the difference it
rests on moved by that much? A conclusion whose deciding interval bound lies closer to its
threshold than the spread is called fragile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPREAD_PATH = Path(__file__).resolve().parent.parent / "data" / "numerics_spread.json"


def load_spread(path: Path = SPREAD_PATH) -> dict[str, Any] | None:
    """{"capture": pp, "difference": pp, "collision": pp, "source": text} (largest moves), or None."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    capture, difference, collision, sources = 0.0, 0.0, 0.0, []
    for m in data.get("measurements", []):
        moves = lambda table: [abs(v["a"] - v["b"]) for v in table.values()]  # noqa: E731
        capture = max([capture, *moves(m.get("capture_rate", {}))])
        difference = max([difference, *moves(m.get("capture_difference_vs_baseline", {}))])
        collision = max([collision, *moves(m.get("collision_rate", {}))])
        runs = m.get("runs", {})
        sources.append(f"commit {m.get('commit')}: {runs.get('a', {}).get('cpu')} vs {runs.get('b', {}).get('cpu')}, "
                       f"{m.get('design')}")
    return {"capture": capture, "difference": difference, "collision": collision, "source": "; ".join(sources)}


def _bounds(step: dict[str, Any], decision) -> list[tuple[str, float, float]]:
    """(what, interval bound, threshold) pairs that decide one step's conclusion."""
    capture, collision = step.get("capture_diff") or {}, step.get("collision_diff") or {}
    if step.get("kind") == "vs_baseline":
        return [("capture non-inferiority", capture.get("low"), -decision.noninferiority_margin),
                ("collision reduction", collision.get("high"), -decision.min_collision_reduction)]
    m = decision.equivalence_margin
    return [("better (capture > 0)", capture.get("low"), 0.0), ("worse (capture < 0)", capture.get("high"), 0.0),
            ("equivalence lower", capture.get("low"), -m), ("equivalence upper", capture.get("high"), m)]


def fragile_steps(steps: list[dict[str, Any]], decision, spread: dict[str, Any]) -> list[str]:
    """Steps whose deciding bound is within the spread of its threshold (the conclusion could flip)."""
    out = []
    for step in steps:
        for what, bound, threshold in _bounds(step, decision):
            if bound is None:
                continue
            move = spread["collision"] if what.startswith("collision") else spread["difference"]
            if abs(float(bound) - threshold) < move:
                out.append(f"{step.get('id')} ({step.get('arm')} vs {step.get('against')}): {what} bound "
                           f"{100 * float(bound):+.2f} pp is {100 * abs(float(bound) - threshold):.2f} pp from its "
                           f"threshold {100 * threshold:+.2f} pp")
    return out


def section(metrics: dict[str, Any], params) -> str:
    spread = load_spread()
    pinned = params.numerics.mode == "pinned"
    head = ("**How much would this move?** "
            + ("This run used pinned numerics: a rerun on any x86-64 CPU with AVX2 gives byte-identical "
               "results (tests/test_numerics.py checks that host settings cannot escape the pin). "
               if pinned else "This run used native numerics: results depend on the CPU. "))
    if spread is None:
        return head + "No spread measurement is stored (data/numerics_spread.json)."
    text = (head + f"Without the pin (other CPUs, ARM, GPUs), identical code and params moved a capture rate by up to "
            f"{100 * spread['capture']:.1f} pp, a paired capture difference by {100 * spread['difference']:.1f} pp and "
            f"a collision rate by {100 * spread['collision']:.1f} pp ({spread['source']}; "
            "data/numerics_spread.json). ")
    fragile = fragile_steps(metrics.get("sequence") or [], params.decision, spread)
    if fragile:
        text += ("Within that spread the verdict COULD change: " + "; ".join(fragile) + ".")
    else:
        text += "No step of the fixed sequence has a deciding bound within that spread of its threshold: the verdict would not change."
    return text
