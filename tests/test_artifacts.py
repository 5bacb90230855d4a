"""The stages' contract (tasks/artifacts): stages import it and never each other, and the
vocabularies that several layers spell (arms, algorithms, episode columns) agree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks import artifacts as A
from tasks.code_deps import import_closure, module_file
from tasks.registry import STAGES

REPO = Path(__file__).resolve().parent.parent
# Front doors run stages; a stage importing one would pull every stage into its code deps.
FRONT_DOORS = ("tasks.registry", "tasks.__main__", "tasks.tuning", "flows")


def _stage_modules() -> dict[str, str]:
    """Every module that belongs to a stage -> the stage: the registry's target modules, the
    report's package, and the report_* sections the report embeds."""
    owner = {}
    for stage in STAGES.values():
        module = stage.target.partition(":")[0]
        path = module_file(module)
        owner[module] = stage.name
        if path.name == "__init__.py":  # a package: every module in it
            for file in path.parent.rglob("*.py"):
                owner[".".join(file.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = stage.name
    for file in (REPO / "tasks").glob("report_*.py"):
        owner[f"tasks.{file.stem}"] = "report"
    return owner


def _imports(module: str) -> set[str]:
    """Repo modules one file imports anywhere (lazy imports in functions included): `from a import b`
    counts as a.b when b is a module, else as a."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}") else base)
    return {name for name in found if module_file(name)}


def _belongs(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_stage_imports_another_stage_or_a_front_door():
    owner = _stage_modules()
    assert {"train", "evaluate", "scenarios", "compare", "headline", "report", "qp_benchmark"} <= set(owner.values())
    bad = []
    for module, stage in sorted(owner.items()):
        for imported in sorted(_imports(module)):
            other = owner.get(imported)
            if other is not None and other != stage:
                bad.append(f"{module} (stage {stage}) imports {imported} (stage {other})")
            elif any(_belongs(imported, door) for door in FRONT_DOORS):
                bad.append(f"{module} (stage {stage}) imports the front door {imported}")
    assert not bad, "stages share files through tasks/artifacts, not imports:\n  " + "\n  ".join(bad)


def test_no_stage_runs_another_stages_code():
    """Transitively too: a stage's code deps (what DVC watches) hold no other stage's module."""
    owner = _stage_modules()
    files_of = {stage: {module_file(m).relative_to(REPO).as_posix() for m, s in owner.items() if s == stage}
                for stage in set(owner.values())}
    for stage in STAGES.values():
        closure = set(import_closure(stage.target.partition(":")[0]))
        for other, files in files_of.items():
            if other != stage.name:
                assert not closure & files, f"stage {stage.name} loads stage {other}'s {sorted(closure & files)}"


def test_the_registry_imports_no_stage():
    owner = _stage_modules()
    assert not [m for m in _imports("tasks.registry") if m in owner]


def test_arm_vocabulary_is_one():
    from model.actors import ALGOS
    from tasks import params

    assert set(A.ALGO_OF_ARM.values()) == set(ALGOS)  # model/ owns the algorithm list
    assert set(A.ARMS_OF_ALGO) == set(ALGOS)
    assert sorted(sum(A.ARMS_OF_ALGO.values(), ())) == sorted(A.ARMS)
    for algo, arms in A.ARMS_OF_ALGO.items():
        assert algo in arms  # every algorithm is also played without a filter
        assert all(A.ALGO_OF_ARM[arm] == algo for arm in arms)
    assert params.ARMS is A.ARMS and params.SPLITS is A.SPLITS
    assert set(params.DECISION_ARMS) <= set(A.ARMS)
    assert list(params.EvalParams().arms) == list(A.ARMS)
    assert {A.REFERENCE_ARM, A.CANDIDATE_ARM} <= set(A.ARMS)
    with pytest.raises(ValueError, match="baseline_tuned_filter"):  # the schema accepts exactly these arms
        params.EvalParams(arms=["no_such_arm"])


def test_every_verdict_has_its_code():
    from tasks.compare import VERDICT_CODES

    assert set(VERDICT_CODES) == set(A.VERDICTS)


def test_episode_tables_share_their_common_columns_in_order():
    common = [c for c in A.EPISODE_COLUMNS if c in A.SCENARIO_EPISODE_COLUMNS]
    assert common == [c for c in A.SCENARIO_EPISODE_COLUMNS if c in A.EPISODE_COLUMNS]
    assert A.SCENARIO_EPISODE_COLUMNS[:3] == A.EPISODE_COLUMNS[:3] == ("arm", "algo", "seed")


def test_layout_functions_follow_the_registry_templates(tmp_path):
    assert A.cell_name("barriernet", 3) == "barriernet-s3"
    assert A.model_path(tmp_path, "baseline", 1) == tmp_path / "results/train/baseline-s1/model.pt"
    assert A.episodes_path(tmp_path, "baseline", 1) == tmp_path / "results/eval/baseline-s1/episodes.csv"
    assert A.scenarios_dir(tmp_path, "cbf_beta", 0) == tmp_path / "results/scenarios/cbf_beta-s0"
    assert A.train_curve_path(tmp_path, "shielded", 2, "rollout/capture_rate") == (
        tmp_path / "results/train/shielded-s2/live/plots/metrics/rollout/capture_rate.tsv")
    assert STAGES["evaluate"].paths("deps", {"algo": "baseline", "seed": 1}) == ["results/train/baseline-s1/model.pt"]
    assert STAGES["evaluate"].paths("outs", {"algo": "baseline", "seed": 1}) == ["results/eval/baseline-s1"]
    assert str(A.METRICS_PATH) in STAGES["headline"].deps
    assert str(A.HEADLINE_PATH) in STAGES["headline"].metrics


def test_report_declares_the_data_it_reads():
    from tasks.report.reference import REFERENCE_PATH
    from tasks.report_spread import SPREAD_PATH

    for path in (REFERENCE_PATH, SPREAD_PATH):
        assert path.relative_to(REPO).as_posix() in STAGES["report"].deps
