"""The DVC front door: dvc.yaml generated from the registry, the matrix expanded from params,
and (slow) `dvc repro` building the report, then having nothing to do, and reproducing metrics."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import REPO_ROOT, TINY_PIPELINE, make_workspace, run, run_dvc
from tasks.params import load_params
from tasks.registry import STAGES, iter_stages


TINY = dict(TINY_PIPELINE)


# ---------------------------------------------------------------------------------------------


def test_committed_dvc_yaml_matches_the_registry():
    result = run([sys.executable, "-m", "tasks", "dvc-yaml", "--check"], REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert (REPO_ROOT / ".dvc" / "config").exists(), "DVC is not initialised in the repo"


def test_drifted_dvc_yaml_fails_the_check(tmp_path):
    drifted = tmp_path / "dvc.yaml"
    text = (REPO_ROOT / "dvc.yaml").read_text()
    drifted.write_text(text.replace("python -m tasks compare", "python -m tasks compare --set decision.confidence=0.9"))
    assert drifted.read_text() != text
    result = run([sys.executable, "-m", "tasks", "dvc-yaml", "--check", "--path", str(drifted)], REPO_ROOT)
    assert result.returncode == 1
    assert str(drifted) in result.stderr and "python -m tasks dvc-yaml" in result.stderr
    # Regenerating restores it.
    assert run([sys.executable, "-m", "tasks", "dvc-yaml", "--path", str(drifted)], REPO_ROOT).returncode == 0
    assert drifted.read_text() == text


def test_dvc_expands_the_matrix_from_params(tmp_path):
    """DVC interpolates `${train.algos}` / `${train.seeds}` from params.yaml; the stage list it
    sees equals the registry's cells for the same params."""
    workspace = make_workspace(tmp_path, {"train.algos": ["baseline", "barriernet"], "train.seeds": [4, 7]})
    listed = run_dvc(workspace, "stage", "list", "--name-only")
    assert listed.returncode == 0, listed.stderr
    params = load_params(workspace / "params.yaml")
    expected = set()
    for stage in iter_stages():
        cells = stage.cells(params)
        if stage.matrix:
            expected |= {f"{stage.name}@{c['algo']}-{c['seed']}" for c in cells}
        else:
            expected.add(stage.name)
    assert set(listed.stdout.split()) == expected
    assert "train@baseline-7" in expected and len(expected) == 4 + 3 * 4  # qp_benchmark, compare, headline, report; train, evaluate, scenarios x 4 cells


def test_train_resume_state_is_outside_dvc_outputs():
    """DVC deletes a stage's outs before running it; training's checkpoints must not be among them."""
    from tasks.train import state_root

    outs = [o for stage in STAGES.values() for o in (*stage.outs, *stage.metrics, *stage.plots)]
    state = state_root().resolve()
    for out in outs:
        top = (REPO_ROOT / out.split("{")[0]).resolve()
        assert not state.is_relative_to(top), f"resume state {state} lies under the DVC output {out}"
    assert ".cache/" in (REPO_ROOT / ".gitignore").read_text().split()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dvc_repro_builds_the_report_then_has_nothing_to_do(tmp_path):
    workspace = make_workspace(tmp_path / "ws", TINY)
    state = {"BARRIERNET_STATE_DIR": str(tmp_path / "state")}
    first = run_dvc(workspace, "repro", **state)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (workspace / "reports/decision_report.md").read_text().strip()
    checkpoints = list((tmp_path / "state").glob("*/checkpoint.pt"))
    cells = load_params(workspace / "params.yaml")
    assert len(checkpoints) == len(cells.train.algos) * len(cells.train.seeds)  # one per (algo, seed), outside the outs

    status = run_dvc(workspace, "status", **state)
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    again = run_dvc(workspace, "repro", **state)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

    plots = run_dvc(workspace, "plots", "show", "-o", str(tmp_path / "plots"), **state)
    assert plots.returncode == 0, plots.stderr
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "live/plots/metrics" in html  # training curves
    figures = list((workspace / "reports/figures").glob("*.png"))
    assert figures and all(f"reports/figures/{f.name}" in html or f.name in html for f in figures)

    # A forced retrain from scratch (fresh resume state) reproduces the checkpoint byte for byte, so
    # every downstream stage's inputs are unchanged (BarrierNet: the QP inside the loop).
    model = workspace / "results/train/barriernet-s0/model.pt"
    summary_path = model.parent / "summary.json"
    model_before, summary_before = model.read_bytes(), json.loads(summary_path.read_text())
    forced = run_dvc(workspace, "repro", "-f", "-s", "train@barriernet-0",
                     BARRIERNET_STATE_DIR=str(tmp_path / "fresh-state"))
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "Running stage 'train@barriernet-0'" in forced.stdout
    assert list((tmp_path / "fresh-state").glob("barriernet-s0-*/checkpoint.pt"))  # it did train again
    assert model.read_bytes() == model_before
    timing = {"wall_seconds", "cpu_seconds", "env_steps_per_second"}
    assert {k: v for k, v in json.loads(summary_path.read_text()).items() if k not in timing} == {
        k: v for k, v in summary_before.items() if k not in timing}
    # the retrained cell's consumers see the same model: nothing to evaluate again
    status = run_dvc(workspace, "status", "evaluate@barriernet-0", **state)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
