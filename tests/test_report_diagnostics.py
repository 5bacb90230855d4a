"""The report's training diagnostics: red flags from DVCLive curves, and the figure."""

from __future__ import annotations

from pathlib import Path

from tasks import report_diagnostics as diag


def _write(root: Path, algo: str, seed: int, name: str, values: list[float]) -> None:
    path = root / "results" / "train" / f"{algo}-s{seed}" / "live" / "plots" / "metrics" / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    field = name.rsplit("/", 1)[1]
    lines = ["step\t" + field] + [f"{1000 * (i + 1)}\t{v!r}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def test_red_flags_fire_exactly_where_the_plan_says(tmp_path: Path):
    # seed 0: healthy; seed 1: a vanishing gradient at the 3rd update, a zero turn-rate gradient at the 2nd,
    # and 6 % infeasible steps on average
    _write(tmp_path, "barriernet", 0, "grad/nominal_norm_p50", [0.5, 0.2, 0.1])
    _write(tmp_path, "barriernet", 0, "grad/nominal_abs_w", [0.1, 0.1, 0.1])
    _write(tmp_path, "barriernet", 0, "rollout/qp_infeasible_rate", [0.04, 0.05, 0.05])
    _write(tmp_path, "barriernet", 1, "grad/nominal_norm_p50", [0.5, 2e3, 1e-7])
    _write(tmp_path, "barriernet", 1, "grad/nominal_abs_w", [0.1, 0.0, 0.1])
    _write(tmp_path, "barriernet", 1, "rollout/qp_infeasible_rate", [0.04, 0.06, 0.08])
    flags = diag.red_flags(tmp_path, ["barriernet", "baseline"], [0, 1])
    assert len(flags) == 4, flags
    assert all("seed 1" in f for f in flags)
    text = " | ".join(flags)
    assert "below 1e-06 in 1 of 3 logged updates (first at step 3,000)" in text
    assert "above 1000 in 1 of 3 logged updates (first at step 2,000)" in text
    assert "zero turn-rate gradient through the QP in 1 of 3 logged updates (first at step 2,000)" in text
    assert "infeasible on 6.0 % of training steps" in text


def test_section_without_diagnostics_says_so(tmp_path: Path):
    md, figures = diag.section(tmp_path, ["barriernet"], [0], {})
    assert "No training diagnostics" in md and figures == {}


def test_section_with_diagnostics_draws_a_figure_and_a_table(tmp_path: Path):
    for seed in (0, 1):
        _write(tmp_path, "barriernet", seed, "grad/nominal_norm_p50", [0.5, 0.4, 0.3])
        _write(tmp_path, "barriernet", seed, "grad/nominal_abs_v", [0.2, 0.2, 0.2])
        _write(tmp_path, "barriernet", seed, "grad/nominal_abs_w", [0.1, 0.1, 0.1])
        _write(tmp_path, "barriernet", seed, "rollout/qp_intervention_rate", [0.1, 0.2, 0.3])
        _write(tmp_path, "cbf_beta", seed, "rollout/box_width_v", [0.9, 0.8, 0.7 + 0.1 * seed])
    md, figures = diag.section(tmp_path, ["barriernet", "cbf_beta"], [0, 1], {})
    assert figures["training_diagnostics"][:8] == b"\x89PNG\r\n\x1a\n"
    # the last tenth of 3 points is the last point; seeds 0.7 and 0.8 average to 0.75
    assert "| cbf_beta | - | - | - | - | 0.75 | - |" in md
    assert "| barriernet | 0.3 | 0.1 |" in md
    assert "Red flags" in md and "none." in md
