"""Studies (issue 19 item 3): a grid of overrides as one flow, each grid point a DVC experiment.

Here the parts that need no Prefect server: the grid's validation and the study report, which
compares the grid points' verdicts and rates with their intervals (checked against metrics files
written here). The flow itself (experiments per grid point, shared and reused training cells) is
tested in tests/test_experiments.py, beside the experiment tests, on the same Prefect server.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flows import study as studies
from tasks.params import ParamsError

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_validate_grid_gives_every_point_its_params_in_grid_order():
    validated = studies.validate_grid(REPO_ROOT, {"env.num_obstacles": [2, 4], "cbf.form": ["ct", "dcbf_exact"]},
                                      {"train.total_steps": 512})
    assert [point for point, _ in validated] == [
        {"env.num_obstacles": 2, "cbf.form": "ct"}, {"env.num_obstacles": 2, "cbf.form": "dcbf_exact"},
        {"env.num_obstacles": 4, "cbf.form": "ct"}, {"env.num_obstacles": 4, "cbf.form": "dcbf_exact"}]
    assert [(p.env.num_obstacles, p.cbf.form, p.train.total_steps) for _, p in validated] == [
        (2, "ct", 512), (2, "dcbf_exact", 512), (4, "ct", 512), (4, "dcbf_exact", 512)]
    with pytest.raises(ParamsError, match=r'(?s)grid point \{"env\.num_obstacles": -1\}: .*env\.num_obstacles'):
        studies.validate_grid(REPO_ROOT, {"env.num_obstacles": [2, -1]})


def test_study_report_compares_verdicts_and_rates_with_intervals(tmp_path):
    arms = {"barriernet": (0.9, 0.85, 0.95, 0.0, 0.0, 0.01), "baseline": (0.8, 0.7, 0.9, 0.1, 0.05, 0.15)}
    points = []
    for index, (verdict, shift) in enumerate((("BETTER", 0.0), ("INCONCLUSIVE", 0.05)), start=1):
        workdir = tmp_path / f"p{index}"
        (workdir / "results/compare").mkdir(parents=True)
        metrics = {"decision": {"verdict": verdict}, "outcome": {"letter": "B"},
                   "arms": {arm: {"capture_rate": c - shift, "capture_rate_low": cl - shift,
                                  "capture_rate_high": ch - shift, "collision_rate": k, "collision_rate_low": kl,
                                  "collision_rate_high": kh} for arm, (c, cl, ch, k, kl, kh) in arms.items()}}
        (workdir / "results/compare/metrics.json").write_text(json.dumps(metrics))
        points.append({"experiment": f"s-{index}", "grid": {"env.num_obstacles": 2 * index}, "workdir": str(workdir)})
    rows = studies.study_rows(points)
    markdown = studies.render_report("s", {"env.num_obstacles": [2, 4]}, {"train.total_steps": 512}, rows,
                                     {"trained": 8, "shared": 0, "reused": 0})
    assert "| `s-1` | `2` | **BETTER** | B |" in markdown
    assert "| `s-2` | `4` | **INCONCLUSIVE** | B |" in markdown
    assert "| `s-1` | `2` | 90.00 % [85.00, 95.00] | 80.00 % [70.00, 90.00] |" in markdown  # capture
    assert "| `s-2` | `4` | 85.00 % [80.00, 90.00] | 75.00 % [65.00, 85.00] |" in markdown
    assert "| `s-2` | `4` | 0.00 % [0.00, 1.00] | 10.00 % [5.00, 15.00] |" in markdown  # collision
    report, table = studies.write_report(tmp_path, "s", markdown, rows)
    with open(table, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [(r["experiment"], r["arm"], r["env.num_obstacles"]) for r in read] == [
        ("s-1", "barriernet", "2"), ("s-1", "baseline", "2"), ("s-2", "barriernet", "4"), ("s-2", "baseline", "4")]
    assert float(read[3]["capture_rate_low"]) == pytest.approx(0.65) and read[3]["verdict"] == "INCONCLUSIVE"
    assert report.read_text() == markdown


def test_serve_marks_a_study_run_crashed_when_its_process_died(tmp_path, monkeypatch):
    """A study whose flow process died (a lost Prefect server) is marked Crashed by flows/serve.py:
    its first grid point's lock names the flow run and nobody holds it; a live one is left alone."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import prefect.client.orchestration as orchestration

    from flows import serve
    from flows.experiments import experiment_dir

    checkout = experiment_dir(tmp_path, "grid-1")
    holder = subprocess.run(  # takes the lock as the study flow does, then dies without releasing it
        [sys.executable, "-c", "import os; from flows.lock import workspace_lock\n"
         f"with workspace_lock({str(checkout)!r}, flow_run='lost-run'):\n    os._exit(0)"],
        cwd=REPO_ROOT)
    assert holder.returncode == 0
    # a live study: its lock names its flow run and a running process holds it
    live = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flows.lock import workspace_lock\n"
         f"with workspace_lock({str(experiment_dir(tmp_path, 'other-1'))!r}, flow_run='other-run'):\n"
         "    print('held', flush=True)\n    time.sleep(120)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert live.stdout.readline().strip() == "held"
    runs = [SimpleNamespace(id=1, name="lost-run", parameters={"grid": {"env.num_obstacles": [2]}, "name": "grid",
                                                               "workspace": str(tmp_path)}),
            SimpleNamespace(id=2, name="other-run", parameters={"grid": {"env.num_obstacles": [2]}, "name": "other",
                                                                "workspace": str(tmp_path)})]
    marked_states = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_flow_runs(self, **filters):
            return runs

        def set_flow_run_state(self, run_id, state, force):
            marked_states.append((run_id, state.type.value))

    monkeypatch.setattr(orchestration, "get_client", lambda sync_client: Client())
    try:
        lines = serve.mark_orphaned_runs()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert marked_states == [(1, "CRASHED")] and len(lines) == 1 and "lost-run" in lines[0]
