"""The stage registry: the one place that says what each pipeline stage reads and writes.

Both front doors read it: `python -m tasks <stage>` (and through it `dvc repro`, whose
dvc.yaml is generated from this file by `python -m tasks dvc-yaml`) and the Prefect flow in
`flows/`. Paths may hold `{algo}` and `{seed}` for matrix stages; they become
`${item.algo}` / `${item.seed}` in dvc.yaml and concrete values on the command line.

The paths are spelled once, in the stages' contract (tasks/artifacts.py); a stage module is
named here by a "module:function" string and imported only when it runs, so the registry
imports no stage.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tasks import artifacts as A
from tasks.code_deps import import_closure
from tasks.params import Params

PYTHON = "python"
# the headline stage's wall time, where the report's stage table looks for it
HEADLINE_TIMING = str(A.stage_timing_path("", "headline"))


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function" — imported lazily so the CLI starts fast
    help: str
    deps: tuple[str, ...] = ()  # data produced by earlier stages
    params: tuple[str, ...] = ()  # params.yaml keys (sections or dotted keys)
    outs: tuple[str, ...] = ()  # cached outputs (DVC deletes these before running the stage)
    metrics: tuple[str, ...] = ()  # small JSON metrics (not cached; `dvc metrics show`)
    plots: tuple[Any, ...] = ()  # files or {file: {x:, y:, ...}} specs for `dvc plots show`
    matrix: tuple[tuple[str, str], ...] = ()  # (axis, params key holding its values)
    persist: tuple[str, ...] = field(default=())  # outs DVC must not delete
    uncached: tuple[str, ...] = field(default=())  # outs kept in git, not in DVC's cache
    timing: str | None = None  # where `run` records the stage's wall time (one of its outs)

    @property
    def code(self) -> tuple[str, ...]:
        """Source files the stage's result depends on: the import closure of its module in this repo
        (tasks/code_deps.py), so DVC's deps and the train stage's resume key follow the imports."""
        return import_closure(self.target.partition(":")[0])

    @property
    def function(self) -> Callable[..., dict]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def cells(self, params: Params) -> list[dict[str, Any]]:
        """Every matrix cell, e.g. [{'algo': 'barriernet', 'seed': 0}, ...]; [{}] without a matrix."""
        cells: list[dict[str, Any]] = [{}]
        for axis, key in self.matrix:
            values = _lookup(params, key)
            cells = [{**cell, axis: value} for cell in cells for value in values]
        return cells

    def paths(self, kind: str, cell: dict[str, Any]) -> list[str]:
        """Concrete `deps`/`outs`/`metrics` paths of one cell."""
        return [p.format(**cell) for p in getattr(self, kind)]

    def run(self, params: Params, workdir: str | Path = ".", **cell: Any) -> dict:
        started = time.perf_counter()
        result = self.function(params, Path(workdir), **cell)
        if self.timing:  # wall time for the report's stage table, apart from the deterministic outputs
            from tasks import io

            io.write_json(Path(workdir) / self.timing.format(**cell), {"wall_seconds": time.perf_counter() - started})
        return result


def _lookup(params: Params, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage(
            name="qp_benchmark",
            target="tasks.qp_benchmark:run",
            help="time qpth against the exact solver on CBF problems from real env states",
            params=("env", "cbf", "qp_benchmark"),
            outs=(str(A.QP_TABLE_PATH), f"{A.QP_BENCHMARK_DIR}/speedups.json", f"{A.QP_BENCHMARK_DIR}/speed.png",
                  f"{A.QP_BENCHMARK_DIR}/{A.TIMING_FILE}", str(A.QP_METRICS_PATH),
                  f"{A.QP_BENCHMARK_DIR}/dcbf_exact.csv"),
            # A plain output, not a DVC metric (about 200 numbers: `dvc exp show` would be unreadable);
            # in git, as before, so a fresh clone and the report's history see it.
            uncached=(str(A.QP_METRICS_PATH),),
            timing=f"{A.QP_BENCHMARK_DIR}/{A.TIMING_FILE}",
        ),
        Stage(
            name="train",
            target="tasks.train:run",
            help="PPO training of one (algo, seed) cell; resumes from its checkpoint",
            params=("env", "cbf", "barriernet", "train"),
            outs=(A.MODEL, A.TRAIN_SUMMARY, A.TRAIN_CURVES),
            # The DVCLive curves are plain outs in git; `dvc plots show` draws them through the
            # top-level plots below (per algorithm, seeds overlaid), not one chart per cell and file.
            uncached=(A.TRAIN_CURVES,),
            matrix=(("algo", "train.algos"), ("seed", "train.seeds")),
        ),
        Stage(
            name="evaluate",
            target="tasks.evaluate:run",
            help="evaluate one (algo, seed) cell on the dev and test splits (eval.dev_*, eval.test_*), every arm of it",
            deps=(A.MODEL,),
            params=("env", "cbf", "eval"),
            outs=(A.EVAL_CELL,),
            matrix=(("algo", "train.algos"), ("seed", "train.seeds")),
        ),
        Stage(
            name="scenarios",
            target="tasks.scenarios:run",
            help="every arm of one (algo, seed) cell in the named scenarios (seeds in scenarios.seeds; others: skipped.json)",
            # the evaluate cell holds filter_choice.json, the tuned filter's configuration
            deps=(A.MODEL, A.EVAL_CELL),
            params=("env", "cbf", "eval.arms", "scenarios"),
            outs=(A.SCENARIOS_CELL,),
            matrix=(("algo", "train.algos"), ("seed", "train.seeds")),
        ),
        Stage(
            name="compare",
            target="tasks.compare:run",
            help="test-split rates with crossed seed x scenario intervals, the alternative chosen on dev, the verdict",
            deps=(A.EVAL_ROOT,),
            params=("train.algos", "train.seeds", "eval", "decision"),
            outs=(str(A.SUMMARY_PATH), str(A.COMPARE_TIMING_PATH), str(A.METRICS_PATH)),
            # Plain output (every interval bound), not a DVC metric: the headline stage's small file
            # is. In git (cache: false): the report counts its committed versions (`git log`).
            uncached=(str(A.METRICS_PATH),),
            timing=str(A.COMPARE_TIMING_PATH),
        ),
        Stage(
            name="headline",
            target="tasks.headline:run",
            help="results/headline.json: verdict/outcome codes and per-arm capture and collision (the DVC metrics)",
            deps=(str(A.METRICS_PATH),),
            outs=(HEADLINE_TIMING,),
            metrics=(str(A.HEADLINE_PATH),),
            timing=HEADLINE_TIMING,
        ),
        Stage(
            name="report",
            target="tasks.report:run",
            help="the markdown decision report and its figures in reports/",
            # results/tuning/choice.json: the tuning study's budget (run once by hand, committed in git);
            # data/: the reference project's published table and the cross-machine spread it cites
            deps=(A.COMPARE_DIR, A.EVAL_ROOT, A.TRAIN_ROOT, A.QP_BENCHMARK_DIR, A.SCENARIOS_ROOT,
                  HEADLINE_TIMING,
                  str(A.TUNING_CHOICE_PATH), "data/reference_phase25.json", "data/numerics_spread.json"),
            params=("env", "cbf", "barriernet", "train", "eval", "decision", "scenarios"),
            # reports/animations: the scenario GIFs, DVC-cached (too large for git history)
            outs=("reports/decision_report.md", "reports/figures", "reports/animations"),
            # The report is what people read: it lives in git (a fresh clone shows it), DVC
            # still checks it is up to date with its inputs.
            uncached=("reports/decision_report.md", "reports/figures"),
        ),
    ]
}

PIPELINE_ORDER = ("qp_benchmark", "train", "evaluate", "scenarios", "compare", "headline", "report")


def iter_stages() -> Iterator[Stage]:
    for name in PIPELINE_ORDER:
        yield STAGES[name]


# ---------------------------------------------------------------------------------------------
# dvc.yaml


def _dvc_path(path: str) -> str:
    return path.replace("{algo}", "${item.algo}").replace("{seed}", "${item.seed}")


def dvc_yaml() -> dict[str, Any]:
    """The dvc.yaml contents generated from the registry (`python -m tasks dvc-yaml`)."""
    stages: dict[str, Any] = {}
    for stage in iter_stages():
        entry: dict[str, Any] = {}
        if stage.matrix:
            entry["matrix"] = {axis: "${" + key + "}" for axis, key in stage.matrix}
        cmd = f"{PYTHON} -m tasks {stage.name}"
        for axis, _ in stage.matrix:
            cmd += f" --{axis} ${{item.{axis}}}"
        entry["cmd"] = cmd
        entry["deps"] = [*stage.code, *(_dvc_path(d) for d in stage.deps)]
        if stage.params:
            entry["params"] = list(stage.params)
        outs: list[Any] = []
        for out in stage.outs:
            path = _dvc_path(out)
            options = {**({"persist": True} if out in stage.persist else {}),
                       **({"cache": False} if out in stage.uncached else {})}
            outs.append({path: options} if options else path)
        if outs:
            entry["outs"] = outs
        if stage.metrics:
            entry["metrics"] = [{_dvc_path(m): {"cache": False}} for m in stage.metrics]
        if stage.plots:
            entry["plots"] = [{_dvc_path(p): {"cache": False}} for p in stage.plots]
        stages[stage.name] = entry
    return {"stages": stages, "plots": [*training_plots(), *PLOTS]}


# Top-level plots: the report's PNG figures (evaluation charts) and the training curves below.
PLOTS: list[Any] = ["reports/figures"]
# DVCLive curves (results/train/<cell>/live/plots/metrics/<name>.tsv, columns step and the
# metric) drawn per algorithm with one line per seed: outcome rates, return, and diagnostics.
TRAINING_CURVES = ("rollout/capture_rate", "rollout/collision_rate", "rollout/episode_return",
                   "rollout/cbf_violation_rate", "rollout/collisions_cumulative", "losses/approx_kl",
                   "losses/explained_variance", "losses/entropy", "grad/actor_norm")
# The safety layer's diagnostics (model/diagnostics.py, tasks/train.py), for the algorithms that log them.
SAFETY_LAYER_CURVES = {
    "barriernet": ("rollout/qp_intervention_rate", "rollout/qp_correction", "rollout/qp_active_fraction",
                   "rollout/qp_infeasible_rate", "grad/nominal_norm_p50", "grad/nominal_norm_p99",
                   "grad/nominal_abs_v", "grad/nominal_abs_w"),
    "cbf_beta": ("rollout/qp_intervention_rate", "rollout/qp_correction", "rollout/box_width_v", "rollout/box_width_w"),
    "shielded": ("rollout/qp_intervention_rate", "rollout/qp_correction", "rollout/qp_infeasible_rate"),
}


def training_plots(params_path: str | Path | None = None) -> list[dict[str, Any]]:
    """One DVC plot per (algorithm, curve) with every seed of train.seeds overlaid.

    dvc.yaml's top-level plots cannot iterate a params list, so the algorithms and seeds are
    those of params.yaml when dvc.yaml is generated (`python -m tasks dvc-yaml --check` fails
    after train.algos or train.seeds change there until dvc.yaml is regenerated). A run with
    other seeds draws the files that exist; DVC skips the missing ones with a warning.
    """
    from tasks.params import load_params

    train = load_params(Path(params_path) if params_path else Path(__file__).resolve().parent.parent / "params.yaml").train
    plots = []
    for algo in train.algos:
        for curve in TRAINING_CURVES + SAFETY_LAYER_CURVES.get(algo, ()):
            field = curve.rsplit("/", 1)[1]
            files = {f"{A.TRAIN_CURVES.format(algo=algo, seed=seed)}/{curve}.tsv": field for seed in train.seeds}
            plots.append({f"training/{algo}/{field}": {"x": "step", "y": files, "title": f"{algo}: {field} per seed",
                                                      "x_label": "env steps", "y_label": field}})
    return plots
