"""The reference project's published numbers (data/reference_phase25.json) are DESIGN.md's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.report.reference import REFERENCE_PATH, REFERENCE_ROWS, load_reference

REPO_ROOT = Path(__file__).resolve().parent.parent
DESIGN = REPO_ROOT.parent / "shared" / "DESIGN.md"  # beside the checkout, not in it (absent in CI)

# DESIGN.md, "The reference experiment", "Their published results" (200 episodes, one seed, unequal
# budgets), cell by cell; "-" and empty cells are None (no number published).
PUBLISHED = {
    "capture_rate": {"barriernet": "2.0 %", "baseline": "100 %", "baseline_ct_filter": "91.5 %",
                     "baseline_dcbf_filter": "100 % (100 episodes)"},
    "cbf_violation_rate": {"barriernet": "7.56 %", "baseline": "6.07 %", "baseline_ct_filter": "6.84 %",
                           "baseline_dcbf_filter": "3.57 %"},
    "intervention_rate": {"barriernet": "88.2 %", "baseline": None, "baseline_ct_filter": "44.5 %",
                          "baseline_dcbf_filter": "6.6 %"},
    "decision_ms": {"barriernet": "5.42 ms", "baseline": "0.18 ms", "baseline_ct_filter": "0.46 ms",
                    "baseline_dcbf_filter": None},
    "training": {"barriernet": "324 K steps, hours on an RTX 5090", "baseline": "1 M steps, 14 min (Stable-Baselines3)",
                 "baseline_ct_filter": None, "baseline_dcbf_filter": None},
}
# Their empty training cells for the filters: the filters ran on the baseline's policy; the file says so.
SAME_TRAINING = "the baseline's training"


def _stored() -> dict:
    return json.loads(REFERENCE_PATH.read_text())


def _published_cells(file_values: dict) -> dict:
    """The file's cells as DESIGN.md prints them (None where it has no number)."""
    return {metric: {arm: None if cell == SAME_TRAINING else cell for arm, cell in arms.items()}
            for metric, arms in file_values.items()}


def test_reference_file_holds_the_published_numbers():
    data = _stored()
    assert "safe-rl-pe" in data["source"] and "phase2_5_decision_report.md" in data["source"]
    assert "DESIGN.md" in data["source"]
    values = load_reference()
    assert _published_cells(values) == PUBLISHED
    assert values["training"]["baseline_ct_filter"] == values["training"]["baseline_dcbf_filter"] == SAME_TRAINING
    # Every row the report prints has its numbers in the file.
    assert [key for key, _ in REFERENCE_ROWS] == [row["metric"] for row in data["rows"]]


def _design_table(text: str) -> dict[str, list[str]]:
    """DESIGN.md's published table: row label -> its cells (stripped), in column order."""
    lines = text.split("Their published results", 1)[1].splitlines()
    table = [line for line in lines[1:12] if line.startswith("|")]
    header, rows = table[0], table[2:]
    assert "BarrierNet PPO" in header
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]] for cells in (row.split("|") for row in rows)}


@pytest.mark.skipif(not DESIGN.is_file(), reason=f"{DESIGN} is not beside this checkout")
def test_reference_file_matches_design_md():
    data = _stored()
    design = _design_table(DESIGN.read_text())
    header = DESIGN.read_text().split("Their published results", 1)[1]
    for arm, column in data["columns"].items():
        assert column in header
    arms = list(data["columns"])
    assert {row["published_row"] for row in data["rows"]} == set(design)
    for row in data["rows"]:
        published = design[row["published_row"]]
        for arm, cell in zip(arms, published):
            stored = row["values"][arm]
            if cell == "-":
                assert stored is None, (row["metric"], arm)
            elif cell == "":
                assert stored == SAME_TRAINING, (row["metric"], arm)
            else:
                assert stored == cell, (row["metric"], arm)
