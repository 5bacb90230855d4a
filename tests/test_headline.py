"""Stage `headline` and the DVC views: results/headline.json is the only DVC metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import headline
from tasks.compare import VERDICT_CODES
from tasks.params import load_params
from tasks.registry import STAGES, dvc_yaml
from tests.helpers import REPO_ROOT, make_workspace, run_dvc


def _metrics(**extra) -> dict:
    """A compare metrics.json in miniature: two arms with intervals and the fields the headline drops."""
    return {
        "confidence": 0.95,
        "arms": {
            "barriernet": {"seeds": 3, "episodes": 600, "capture_rate": 0.75, "capture_rate_low": 0.7,
                           "capture_rate_high": 0.8, "collision_rate": 0.0, "collision_rate_low": 0.0,
                           "collision_rate_high": 0.01},
            "baseline": {"seeds": 3, "episodes": 600, "capture_rate": 0.5, "capture_rate_low": 0.45,
                         "capture_rate_high": 0.55, "collision_rate": 0.125, "collision_rate_low": 0.1,
                         "collision_rate_high": 0.15},
        },
        "decision": {"verdict": "BETTER", "verdict_code": VERDICT_CODES["BETTER"], "reasons": ["x"]},
        **extra,
    }


def test_headline_keeps_point_estimates_and_codes_only():
    # Written out by hand from _metrics(): no bounds, no counts, no strings.
    assert headline.headline(_metrics()) == {
        "verdict_code": 2,
        "capture": {"barriernet": 0.75, "baseline": 0.5},
        "collision": {"barriernet": 0.0, "baseline": 0.125},
    }
    with_outcome = headline.headline(_metrics(outcome={"letter": "B", "arm": "barriernet"}))
    assert with_outcome["outcome_code"] == 2 and headline.headline(_metrics(outcome="D"))["outcome_code"] == 0


@pytest.mark.parametrize("metrics, words", [
    ({"arms": {}}, "decision.verdict_code"),
    (_metrics(arms={}), "no arms"),
    (_metrics(arms={"baseline": {"capture_rate": 0.5}}), "collision_rate"),
    (_metrics(outcome="E"), "accepted: ['A', 'B', 'C', 'D']"),
])
def test_bad_metrics_are_refused_with_what_is_missing(metrics, words):
    with pytest.raises(headline.HeadlineInputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        headline.headline(metrics)


def test_run_writes_results_headline_json(tmp_path):
    params = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(headline.HeadlineInputError, match="run the compare stage first"):
        headline.run(params, tmp_path)
    source = tmp_path / "results/compare/metrics.json"
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps(_metrics()))
    result = STAGES["headline"].run(params, tmp_path)
    written = json.loads((tmp_path / "results/headline.json").read_text())
    assert written == headline.headline(_metrics()) and result["verdict_code"] == written["verdict_code"]
    assert "wall" not in (tmp_path / "results/headline.json").read_text()


def test_headline_is_the_only_dvc_metrics_file_and_big_tables_are_plain_outs():
    stages = dvc_yaml()["stages"]
    metrics = [m for entry in stages.values() for item in entry.get("metrics", []) for m in item]
    assert metrics == ["results/headline.json"]
    outs = {name: [next(iter(o)) if isinstance(o, dict) else o for o in entry.get("outs", [])]
            for name, entry in stages.items()}
    assert "results/compare/metrics.json" in outs["compare"]
    assert "results/qp_benchmark/metrics.json" in outs["qp_benchmark"]
    assert stages["headline"]["deps"][-1] == "results/compare/metrics.json"


def test_training_curves_are_drawn_per_algorithm_with_every_seed_overlaid():
    train = load_params(REPO_ROOT / "params.yaml").train
    plots = {next(iter(p)): p[next(iter(p))] for p in dvc_yaml()["plots"] if isinstance(p, dict)}
    for algo in train.algos:
        spec = plots[f"training/{algo}/capture_rate"]
        assert spec["x"] == "step"
        assert spec["y"] == {f"results/train/{algo}-s{s}/live/plots/metrics/rollout/capture_rate.tsv": "capture_rate"
                             for s in train.seeds}
    registry = __import__("tasks.registry").registry
    assert len(plots) == sum(len(registry.TRAINING_CURVES) + len(registry.SAFETY_LAYER_CURVES.get(algo, ()))
                             for algo in train.algos)


def test_dvc_metrics_show_lists_only_the_headline(tmp_path):
    """DVC itself (not our reading of dvc.yaml): `dvc metrics show` reports the headline numbers only."""
    workspace = make_workspace(tmp_path / "ws")
    for rel in ("results/compare/metrics.json", "results/qp_benchmark/metrics.json"):  # must not be shown
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(json.dumps(_metrics()))
    target = workspace / "results/headline.json"
    target.write_text(json.dumps(headline.headline(_metrics())))
    shown = run_dvc(workspace, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    files = {path for rev in data.values() for path in rev.get("data", {})}
    assert files == {"results/headline.json"}, data
