"""A flow run with overrides is a DVC experiment named after the flow run (issue 19 item 1).

The flow runs with the flow tests' fake stages (same signatures and output paths as the real
ones) in a throw-away git + DVC workspace: the run is listed by `dvc exp show` with its params and
metrics, the workspace's tracked outputs are untouched, and `dvc exp apply` restores params.yaml,
dvc.lock and the outputs so that `dvc status` is clean. With the real stages the same is checked
by tests/test_flow.py's injected-fault run, which also has `dvc repro` find nothing to do and
recomputes the metrics byte for byte. The study flow's tests share this module's Prefect server
(tests/test_study.py holds the ones that need none).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flows.pipeline as pipeline
import tests.test_flow as fakes
from flows import experiments
from flows import study as studies
from tests.helpers import run_dvc
from tasks.params import ParamsError


def exp_show(workspace: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {"params": {...}, "metrics": {...}}} (files merged)."""
    shown = run_dvc(workspace, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    found: dict[str, dict] = {}

    def visit(node):
        if isinstance(node, dict):
            data = node.get("data")
            if node.get("name") and isinstance(data, dict) and "params" in data:
                merged = {}
                for kind in ("params", "metrics"):
                    merged[kind] = {}
                    for per_file in (data.get(kind) or {}).values():
                        merged[kind].update((per_file or {}).get("data") or {})
                found[node["name"]] = merged
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(json.loads(shown.stdout))
    return found


@pytest.fixture
def fake_workspace(monkeypatch, tmp_path):
    return fakes.faked_workspace(monkeypatch, tmp_path, {"train.seeds": [0], "orchestration.retry_delay_seconds": 0})


def test_valid_name_is_a_git_ref_component():
    assert experiments.valid_name("crafty lemur/../x.lock") == "crafty-lemur-.-x"
    assert experiments.valid_name("...") == "run"


def test_write_params_keeps_comments_and_sets_nested_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top comment\ntrain:\n  seeds: [0, 1]   # why\n  total_steps: 10\n")
    experiments.write_params(path, {"train.seeds": [3], "env.num_obstacles": 4})
    text = path.read_text()
    assert text.startswith("# top comment\n") and "# why" in text and "seeds: [3]" in text
    import yaml

    assert yaml.safe_load(text) == {"train": {"seeds": [3], "total_steps": 10}, "env": {"num_obstacles": 4}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_overrides_run_is_an_experiment_that_apply_restores(prefect_server, fake_workspace):
    workspace = fake_workspace
    result = pipeline.train_and_eval(overrides={"train.seeds": [3]}, workspace=str(workspace))
    name = Path(result["workdir"]).name
    assert result["experiment"]["experiment"] == name and result["experiment"]["ref"].endswith(f"/{name}")
    # The workspace's tracked outputs are untouched; the run's checkout is runs/<name>/.
    assert Path(result["workdir"]) == workspace / "runs" / name
    assert not (workspace / "dvc.lock").exists() and not (workspace / "results/train/barriernet-s3").exists()

    shown = exp_show(workspace)
    assert name in shown, sorted(shown)
    assert shown[name]["params"]["train"]["seeds"] == [3]
    assert shown[name]["metrics"] == json.loads((Path(result["workdir"]) / "results/headline.json").read_text())

    applied = run_dvc(workspace, "exp", "apply", name)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = run_dvc(workspace, "status")
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    assert "seeds: [3]" in (workspace / "params.yaml").read_text()
    for rel in ("dvc.lock", "results/train/barriernet-s3/model.pt", "results/headline.json",
                "reports/decision_report.md"):
        assert (workspace / rel).read_bytes() == (Path(result["workdir"]) / rel).read_bytes(), rel


# ---------------------------------------------------------------------------------------------
# Studies (issue 19 item 3)


def _trained() -> list[tuple[str, int]]:
    return sorted((cell["algo"], cell["seed"]) for name, cell, _ in fakes.CALLS if name == "train")


def test_bad_grid_is_refused_before_any_work(prefect_server, fake_workspace):
    cases = [
        ({"env.num_obstacle": [2, 4]}, r"unknown key 'env\.num_obstacle'; did you mean 'env\.num_obstacles'"),
        ({"cbf.form": ["dcbf", "exact"]}, r'(?s)grid point \{"cbf\.form": "exact"\}: .*cbf\.form.*dcbf_exact'),
        ({"env.num_obstacles": 2}, r"'env\.num_obstacles': 2 is not a list of values; accepted: a non-empty list"),
        ({}, r"accepted: a mapping of params keys to lists of values"),
    ]
    for grid, message in cases:
        with pytest.raises(ParamsError, match=message):
            studies.study(grid=grid, workspace=str(fake_workspace))
    with pytest.raises(ParamsError, match=r"train\.seeds in both the grid and the overrides"):
        studies.study(grid={"train.seeds": [[0]]}, overrides={"train.seeds": [1]}, workspace=str(fake_workspace))
    assert fakes.CALLS == [] and not (fake_workspace / "runs").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_points_are_experiments_and_finished_cells_are_never_retrained(prefect_server, fake_workspace):
    workspace = fake_workspace
    algos = studies.load_params(workspace / "params.yaml").train.algos
    # Two grid points with the same training: each cell trains once, for both.
    first = studies.study(grid={"eval.test_episodes": [4, 5]}, workspace=str(workspace), name="episodes")
    assert _trained() == sorted((algo, 0) for algo in algos)
    assert first["cells"] == {"trained": len(algos), "shared": len(algos), "reused": 0}
    assert [p["experiment"] for p in first["points"]] == ["episodes-1", "episodes-2"]

    # A later study: seed 0 finished with the same params and code (reused), seed 1 is new.
    fakes.CALLS.clear()
    second = studies.study(grid={"train.seeds": [[0, 1]]}, workspace=str(workspace), name="seeds")
    assert _trained() == sorted((algo, 1) for algo in algos)
    assert second["cells"] == {"trained": len(algos), "shared": 0, "reused": len(algos)}
    reused = Path(second["points"][0]["workdir"]) / "results/train/barriernet-s0/model.pt"
    assert reused.read_bytes() == (Path(first["points"][0]["workdir"]) / "results/train/barriernet-s0/model.pt").read_bytes()

    shown = exp_show(workspace)
    assert shown["episodes-1"]["params"]["eval"]["test_episodes"] == 4
    assert shown["episodes-2"]["params"]["eval"]["test_episodes"] == 5
    assert shown["seeds-1"]["params"]["train"]["seeds"] == [0, 1]
    report = Path(first["report"])
    assert report == workspace / "reports/studies/episodes.md"
    assert "`episodes-1`" in report.read_text() and "`episodes-2`" in report.read_text()
    assert Path(first["table"]).exists()
