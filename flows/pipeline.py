"""The Prefect flow `train-and-eval`: every pipeline stage as a retryable Prefect task.

    [QP benchmark, train (algo x seed) -> evaluate -> scenarios (per cell)] on Dask
        -> compare -> headline -> report -> `dvc commit` (default params) or `dvc exp save` (overrides)

Each task calls the stage function from the registry, `STAGES[name].run(params, workdir, **cell)`;
nothing about a stage is written here twice. Retries, retry delay and timeouts come from
`params.orchestration`; Prefect's result caching and persistence are off (DVC is the cache).

Where it writes:
* no overrides: the workspace itself (the repo root by default) -- the tracked outputs -- and then
  `dvc commit -f`, so `dvc status` is clean and `dvc repro` has nothing to do;
* with overrides: a DVC experiment named after the flow run. The stages write in
  ``<workspace>/runs/<flow-run-name>/``, a git worktree of HEAD with params.yaml rewritten
  (flows/experiments.py), then `dvc commit -f` and `dvc exp save` record it there; the
  workspace's tracked outputs are left alone. `dvc exp show` lists it, `dvc exp apply` restores it.
Every trained cell is published to the workspace's cell store (flows/cells.py), from which a study
(flows/study.py) reuses finished cells instead of training them again.
Either way a workspace lock (flows/lock.py) refuses a second concurrent run on the same directory.

The code lives here (an importable module) rather than in the entrypoint file
`flows/train_and_eval.py`: Dask pickles tasks by reference, so their module must be importable in
the worker processes, which a module Prefect loads from a file path is not.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.lock import workspace_lock
from tasks import numerics
from tasks.params import OrchestrationParams, Params, load_params
from tasks.registry import STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORT_PATH = "reports/decision_report.md"
SUMMARY_PATH = "results/compare/summary.csv"
PROGRESS_EVERY_SECONDS = 5.0  # throttle for progress-artifact updates (each is an API call)
PROGRESS_EVERY_FRACTION = 0.05

log = logging.getLogger(__name__)


class MinibatchOutOfMemory(RuntimeError):
    """Training ran out of device memory with `minibatch_size`; the flow retries with half of it.

    Wraps tasks.train.TrainingOOMError / torch.cuda.OutOfMemoryError in an exception that
    survives pickling (Dask sends task failures between processes).
    """

    def __init__(self, message: str, minibatch_size: int):
        super().__init__(message)
        self.minibatch_size = minibatch_size

    def __reduce__(self):
        return (type(self), (str(self), self.minibatch_size))


class PipelineError(RuntimeError):
    """The pipeline cannot go on; the message says which stage and why."""


# ---------------------------------------------------------------------------------------------
# Helpers


def _deterministic_failure(exc: BaseException) -> bool:
    """Failures that a retry with the same inputs would only repeat.

    ValueError covers bad inputs (ParamsError, the stages' StageInputError, a NaN action);
    NumericsError a worker started without the pinned numerics (it needs a restart, not a retry).
    """
    from tasks.artifacts import CheckpointError  # lazy: keeps flow import light
    from tasks.train import NonFiniteError

    return isinstance(exc, (MinibatchOutOfMemory, CheckpointError, NonFiniteError, ValueError,
                            numerics.NumericsError))


def _retry_transient(task_, task_run, state) -> bool:
    """retry_condition_fn: retry unknown (possibly transient) failures, not deterministic ones.

    Out-of-memory is not retried as is: the flow resubmits training with a halved minibatch.
    """
    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # unreadable result: treat as transient
            return True
    return not (isinstance(exc, BaseException) and _deterministic_failure(exc))


def _release_device_memory() -> None:
    """Hand cached CUDA blocks back between stages (the GPU is shared with other jobs)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


class _ProgressArtifact:
    """A Prefect progress artifact fed by train.run's progress_callback(fraction), throttled."""

    def __init__(self, key: str, description: str):
        self.key, self.description = key, description
        self.artifact_id = None
        self.last_fraction, self.last_time = -1.0, 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and (fraction - self.last_fraction < PROGRESS_EVERY_FRACTION
                               and now - self.last_time < PROGRESS_EVERY_SECONDS):
            return
        self.last_fraction, self.last_time = fraction, now
        try:  # a progress display must never fail the training it reports on
            from prefect.artifacts import update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    100.0 * fraction, key=self.key, description=self.description
                )
            else:
                update_progress_artifact(self.artifact_id, 100.0 * fraction)
        except Exception as exc:  # pragma: no cover - API hiccup
            log.warning("progress artifact %s not updated: %s", self.key, exc)


def _read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run_name() -> str:
    from prefect.runtime import flow_run

    name = flow_run.name or flow_run.id or time.strftime("run-%Y%m%d-%H%M%S")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name))


def resolve_workdir(workspace: Path, overrides: dict[str, Any] | None, run_name: str) -> Path:
    """The workspace itself for default params; the experiment checkout ``<workspace>/runs/<run_name>``
    with overrides (flows/experiments.py)."""
    from flows.experiments import experiment_dir

    return experiment_dir(workspace, run_name) if overrides else workspace


# ---------------------------------------------------------------------------------------------
# Tasks: thin wrappers around the registry's stage functions

_TASK_DEFAULTS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_retry_transient)


@task(name="qp_benchmark", **_TASK_DEFAULTS)
def qp_benchmark_task(params: Params, workdir: Path) -> dict:
    try:
        return STAGES["qp_benchmark"].run(params, workdir)
    finally:
        _release_device_memory()


# Accounting hook: with BARRIERNET_TRAIN_CALLS_LOG set (in the environment of the process that runs
# the train task, e.g. a Dask worker), every train task execution appends one JSON line
# {"algo", "seed", "pid"} before training starts. The worker-loss test counts these lines to show
# that a finished cell is never recomputed and the killed one ran twice (read_train_calls).
TRAIN_CALLS_ENV = "BARRIERNET_TRAIN_CALLS_LOG"


def _record_train_call(algo: str, seed: int) -> None:
    path = os.environ.get(TRAIN_CALLS_ENV)
    if path:
        with open(path, "a") as handle:  # one short write per line: appends from processes don't mix
            handle.write(json.dumps({"algo": algo, "seed": int(seed), "pid": os.getpid()}) + "\n")


def read_train_calls(path: str | Path) -> list[dict[str, Any]]:
    """The lines `_record_train_call` appended, in order: [{"algo", "seed", "pid"}, ...] ([] if none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    fallback = f"-minibatch{p['minibatch_size']}" if p.get("minibatch_size") else ""
    return f"train-{p['algo']}-s{p['seed']}{fallback}"


@task(name="train", task_run_name=_train_run_name, **_TASK_DEFAULTS)
def train_task(params: Params, workdir: Path, algo: str, seed: int, minibatch_size: int | None = None) -> dict:
    """One training cell; a retry resumes from the cell's last checkpoint (train.run does that)."""
    numerics.require(params.numerics.mode)  # a Dask worker started by hand may not be pinned
    _record_train_call(algo, seed)
    import torch

    from tasks.train import TrainingOOMError

    logger = get_run_logger()
    progress = _ProgressArtifact(
        _artifact_key(f"train-{algo}-s{seed}"), f"training {algo} seed {seed}: fraction of train.total_steps done"
    )
    kwargs: dict[str, Any] = {"algo": algo, "seed": seed, "progress_callback": progress}
    if minibatch_size is not None:
        kwargs["minibatch_size"] = minibatch_size
        logger.warning("training %s-s%d with minibatch %d (out-of-memory fallback; planned %d)",
                       algo, seed, minibatch_size, params.train.minibatch_size)
    try:
        summary = STAGES["train"].run(params, workdir, **kwargs)
    except TrainingOOMError as exc:
        raise MinibatchOutOfMemory(str(exc), exc.minibatch_size) from None
    except torch.cuda.OutOfMemoryError as exc:  # raised outside the PPO update (e.g. the rollout)
        raise MinibatchOutOfMemory(
            f"out of memory: {exc}", minibatch_size or params.train.minibatch_size
        ) from None
    finally:
        _release_device_memory()
    progress(1.0)
    return summary


@task(name="evaluate", task_run_name="evaluate-{algo}-s{seed}", **_TASK_DEFAULTS)
def evaluate_task(params: Params, workdir: Path, algo: str, seed: int) -> dict:
    numerics.require(params.numerics.mode)
    try:
        return STAGES["evaluate"].run(params, workdir, algo=algo, seed=seed)
    finally:
        _release_device_memory()


@task(name="scenarios", task_run_name="scenarios-{algo}-s{seed}", **_TASK_DEFAULTS)
def scenarios_task(params: Params, workdir: Path, algo: str, seed: int) -> dict:
    numerics.require(params.numerics.mode)
    return STAGES["scenarios"].run(params, workdir, algo=algo, seed=seed)


@task(name="compare", **_TASK_DEFAULTS)
def compare_task(params: Params, workdir: Path) -> dict:
    return STAGES["compare"].run(params, workdir)


@task(name="headline", **_TASK_DEFAULTS)
def headline_task(params: Params, workdir: Path) -> dict:
    return STAGES["headline"].run(params, workdir)


@task(name="report", **_TASK_DEFAULTS)
def report_task(params: Params, workdir: Path) -> dict:
    return STAGES["report"].run(params, workdir)


def dvc(workspace: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `dvc <args>` in the workspace with this interpreter's DVC."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workspace, capture_output=True, text=True,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
    )
    if check and result.returncode != 0:
        raise PipelineError(
            f"`dvc {' '.join(args)}` failed in {workspace} (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return result


@task(name="dvc_commit", cache_policy=NO_CACHE, persist_result=False)
def dvc_commit_task(workspace: Path) -> dict:
    """Record the freshly written tracked outputs in dvc.lock (and the DVC cache).

    `dvc commit -f` hashes every stage's deps, params and outs as they are now; afterwards
    `dvc status` is clean and `dvc repro` has nothing to do.
    """
    logger = get_run_logger()
    dvc(workspace, "commit", "-f")
    status = dvc(workspace, "status", "--json", check=False)
    try:
        changed = json.loads(status.stdout or "{}")
    except json.JSONDecodeError:
        changed = {"unparsed": status.stdout[-500:]}
    if changed:
        logger.warning("dvc status is not clean after dvc commit: %s", json.dumps(changed)[:2000])
    else:
        logger.info("dvc commit done; dvc status is clean")
    return {"dvc_status": changed}


def default_remote(workspace: Path) -> str:
    """The DVC remote `dvc push` uses (core.remote of .dvc/config, or .dvc/config.local's); PipelineError if none."""
    found = dvc(workspace, "remote", "default", check=False)  # exit 1, "No default remote set": none
    name = found.stdout.strip() if found.returncode == 0 else ""
    if not name:
        raise PipelineError(
            f"orchestration.dvc_push=true but {workspace} has no default DVC remote; accepted: a remote set with "
            "`dvc remote add -d NAME URL` (.dvc/config ships `shared` = ../barriernet-dvc-remote), or dvc_push=false"
        )
    return name


@task(name="dvc_push", cache_policy=NO_CACHE, persist_result=False)
def dvc_push_task(workspace: Path) -> dict:
    """`dvc push`: the cache objects dvc.lock references go to the default remote, so a fresh
    clone gets them with `git pull && dvc pull`."""
    logger = get_run_logger()
    remote = default_remote(workspace)
    pushed = dvc(workspace, "push")
    logger.info("dvc push to remote %r: %s", remote, pushed.stdout.strip().splitlines()[-1:] or "done")
    return {"remote": remote, "output": pushed.stdout[-2000:]}


# ---------------------------------------------------------------------------------------------
# Task runner for the matrix


# Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-
# environ), to hand freed memory back to the OS. Setting it turns off glibc's dynamic mmap
# threshold, so every tensor above 128 KiB (a (1024, 64) float32 minibatch activation is 256 KiB)
# is mmap'ed, page-faulted and unmapped anew: a training cell ran 27 % slower per CPU-second in a
# worker than in a plain process (benchmarks/parallel_efficiency.py --dask). Memory is not what
# limits a cell here, so the workers keep glibc's defaults. The nanny also writes the variable
# into the process that runs it (distributed/nanny.py), which is this one for a LocalCluster, so a
# cluster started earlier in this process would hand it on to the next one's workers.
_DASK_MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
_DASK_DEFAULT_MALLOC_TRIM = "65536"


def _keep_glibc_malloc_defaults_in_workers() -> None:
    import dask
    import distributed  # noqa: F401  (loads the nanny's defaults first, so they cannot overwrite ours)

    dask.config.set({f"distributed.nanny.pre-spawn-environ.{_DASK_MALLOC_TRIM}": None})
    if os.environ.get(_DASK_MALLOC_TRIM) == _DASK_DEFAULT_MALLOC_TRIM:  # an earlier nanny's, not the user's
        del os.environ[_DASK_MALLOC_TRIM]


# A local cluster that listens on loopback only, on ports the OS picks. `dashboard_address=None`
# turns the dashboard off but not the scheduler's HTTP server (its health and metrics routes):
# distributed then binds the default port 8787, and warns "Port 8787 is already in use" whenever
# another cluster (a second flow, a user's Jupyter) holds it. The scheduler's own options win over
# LocalCluster's, so the HTTP server gets 127.0.0.1 and port 0 with the dashboard still off.
LOOPBACK_CLUSTER: dict[str, Any] = {
    "processes": True,
    "host": "127.0.0.1",  # loopback only: nothing listens on the network
    "dashboard_address": None,
    "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
}


def matrix_task_runner(orchestration: OrchestrationParams) -> TaskRunner:
    """Dask for the (algo, seed) matrix: an existing scheduler, or a local cluster of processes
    (started with glibc's malloc defaults: `_keep_glibc_malloc_defaults_in_workers`)."""
    from prefect_dask import DaskTaskRunner

    if orchestration.dask_address:
        return DaskTaskRunner(address=orchestration.dask_address)
    _keep_glibc_malloc_defaults_in_workers()
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": orchestration.dask_workers,
            "threads_per_worker": 1,  # one training per process: torch threads stay predictable
            **LOOPBACK_CLUSTER,
        },
    )


def _take(future) -> Any:
    """`future.result()`, then release the Dask future: the scheduler forgets the finished task.

    While a client holds a Dask future, its result is data the cluster keeps on the worker that
    computed it; if that worker dies, the scheduler recomputes the task to restore the data
    (prefect#15442, prefect-dask#101). The Prefect future keeps the final state it read, so
    nothing is lost here, and a finished cell is never trained again when its worker is lost.
    """
    try:
        return future.result()
    finally:
        release = getattr(getattr(future, "wrapped_future", None), "release", None)
        if callable(release):  # distributed.Future; the thread pool's futures have nothing to release
            release()


def _submit(task_, params: Params, *args, **kwargs):
    """`task_.submit(params, *args, **kwargs)` with params' retries and timeout."""
    return _with_orchestration(task_, params).submit(params, *args, **kwargs)


def _with_orchestration(task_, params: Params):
    orch = params.orchestration
    return task_.with_options(
        retries=orch.retries, retry_delay_seconds=orch.retry_delay_seconds, timeout_seconds=orch.stage_timeout_seconds
    )


@dataclasses.dataclass(frozen=True)
class Point:
    """One pipeline run inside a flow run: a name (its experiment's, "" for the workspace's own
    run), its validated params and the folder its stages write under."""

    name: str
    params: Params
    workdir: Path


# validate_parameters=False: the arguments are already-validated Python objects from the parent
# flow (pydantic cannot resolve the `Params` annotation when Prefect loads the flow by module path).
@flow(name="train-and-eval-matrix", persist_result=False, validate_parameters=False,
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def matrix_flow(params: Params | None = None, workdir: Path | None = None, points: list[Point] | None = None,
                cell_store: Path | None = None, reuse_cells: bool = False,
                benchmarks: list[Point] | None = None) -> dict[str, dict]:
    """Train every (algo, seed) cell in parallel, evaluate each as soon as its training is done.

    One point (`params`, `workdir`) or several (`points`, a study's grid): the training cells of
    every point are submitted together to the task runner the parent chooses from params
    (`matrix_task_runner`). Cells with the same training key (flows/cells.py) are trained once and
    copied to the other points. With `cell_store` (a workspace) every trained cell is published to
    its store; with `reuse_cells` too, a cell found there is copied in instead of trained.
    Out-of-memory in training resubmits the cell with the minibatch halved, down to
    gpu.min_minibatch; the fallback is recorded in the cell's summary.json by train.run.

    `benchmarks`: points whose QP benchmark runs here too, submitted first, so it runs on one
    worker while the others train: as a stage of its own before the matrix it left every other
    core idle for its whole length. Where a task runs moves no result (each computes the same bits
    on any worker), and the benchmark's timings are taken beside a training, as each training
    cell's env-steps/s are.

    Returns {cell name: {"train", "evaluate", "scenarios"}} for one point, {point name: that}
    for `points`.
    """
    from flows import cells as store

    logger = get_run_logger()
    single = points is None
    points = [Point("", params, Path(workdir))] if single else list(points)
    results: dict[str, dict[str, dict]] = {point.name: {} for point in points}
    cell_of: dict[Any, tuple[Point, dict]] = {}  # future -> (point, cell {algo, seed, minibatch_size, key})
    waiting: dict[str, list[tuple[Point, dict]]] = {}  # training key -> the jobs that need its cell
    kinds: dict[Any, str] = {}  # future -> "train" | "evaluate" | "scenarios"
    pending = []

    def after_training(point: Point, cell: dict, summary: dict) -> None:
        name = f"{cell['algo']}-s{cell['seed']}"
        results[point.name][name] = {"train": summary}
        evaluation = _submit(evaluate_task, point.params, point.workdir, algo=cell["algo"], seed=cell["seed"])
        cell_of[evaluation], kinds[evaluation] = (point, cell), "evaluate"
        pending.append(evaluation)

    for point in benchmarks or []:
        benchmark = _submit(qp_benchmark_task, point.params, point.workdir)
        cell_of[benchmark], kinds[benchmark] = (point, {}), "qp_benchmark"
        pending.append(benchmark)
    for point in points:
        for cell in STAGES["train"].cells(point.params):
            key = store.cell_key(point.params, cell["algo"], cell["seed"])
            job = (point, {**cell, "minibatch_size": point.params.train.minibatch_size, "key": key})
            found = store.lookup(cell_store, key, cell["algo"], cell["seed"]) if cell_store and reuse_cells else None
            if found is not None:
                logger.info("%s %s-s%d: finished cell reused from %s (not trained again)",
                            point.name or "workspace", cell["algo"], cell["seed"], found)
                after_training(point, job[1], store.restore(found, point.workdir, cell["algo"], cell["seed"]))
            elif key in waiting:  # another point trains the same cell
                waiting[key].append(job)
            else:
                waiting[key] = [job]
                future = _submit(train_task, point.params, point.workdir, algo=cell["algo"], seed=cell["seed"])
                cell_of[future], kinds[future] = job, "train"
                pending.append(future)

    # Evaluations join the same as_completed rounds as training, so each result is taken (and
    # released on the Dask side, see _take) as soon as it is ready, not held until the end.
    while pending:
        batch, pending[:] = list(pending), []
        for future in as_completed(batch):
            point, cell = cell_of[future]
            kind = kinds[future]
            if kind == "qp_benchmark":
                _take(future)  # its outputs are on disk; a failure raises here
                continue
            name = f"{cell['algo']}-s{cell['seed']}"
            if kind == "scenarios":
                results[point.name][name]["scenarios"] = _take(future)
                continue
            if kind == "evaluate":
                results[point.name][name]["evaluate"] = _take(future)
                # The scenario suite after evaluation. Every cell runs it: a seed outside
                # scenarios.seeds only writes skipped.json, which DVC's matrix needs as its output.
                played = _submit(scenarios_task, point.params, point.workdir, algo=cell["algo"],
                                 seed=cell["seed"])
                cell_of[played], kinds[played] = (point, cell), "scenarios"
                pending.append(played)
                continue
            try:
                summary = _take(future)
            except MinibatchOutOfMemory as exc:
                half = exc.minibatch_size // 2
                if half < point.params.gpu.min_minibatch:
                    raise PipelineError(
                        f"training {name} ran out of memory with minibatch {exc.minibatch_size}; halving "
                        f"would go below gpu.min_minibatch={point.params.gpu.min_minibatch}. Free GPU memory, "
                        f"lower train.num_envs, or lower gpu.min_minibatch. ({exc})"
                    ) from None
                logger.warning("training %s ran out of memory with minibatch %d; retrying with %d "
                               "(resumes from its last checkpoint)", name, exc.minibatch_size, half)
                retry = _submit(train_task, point.params, point.workdir, algo=cell["algo"], seed=cell["seed"],
                                minibatch_size=half)
                cell_of[retry], kinds[retry] = (point, {**cell, "minibatch_size": half}), "train"
                pending.append(retry)
                continue
            if cell_store:
                store.publish(cell_store, cell["key"], point.workdir, cell["algo"], cell["seed"])
            for other, other_cell in waiting.pop(cell["key"]):
                if other is point:
                    after_training(point, cell, summary)
                else:  # the same training in another grid point: its outputs, not a second run
                    copied = store.restore(store.cell_dir(point.workdir, cell["algo"], cell["seed"]),
                                           other.workdir, cell["algo"], cell["seed"])
                    after_training(other, other_cell, {**copied, "reused_from_store": False})
    return results[""] if single else results


def _stage_key(stage_name: str, params: Params) -> str:
    """What a stage's result depends on within one flow run (same code): its params' values."""
    from tasks.params import params_hash

    data = params.to_dict()
    values = {}
    for dotted in STAGES[stage_name].params:
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[dotted] = node
    return params_hash(values)


def _copy_outputs(stage_name: str, source: Path, target: Path) -> None:
    import shutil

    stage = STAGES[stage_name]
    for rel in stage.paths("outs", {}) + stage.paths("metrics", {}) + stage.paths("plots", {}):
        src, dst = source / rel, target / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def run_points(points: list[Point], cell_store: Path | None, reuse_cells: bool) -> dict[str, dict[str, Any]]:
    """The stages for every point: the training/evaluation matrix of all points together, with the
    QP benchmark on the same workers (once per distinct benchmark params, copied to the points
    that share them), then compare, headline and report per point. Returns {point name: {"cells", "compare", "headline",
    "report_result", "report", "summary"}}."""
    benchmarked: dict[str, Point] = {}  # benchmark params key -> the point that runs it
    for point in points:
        benchmarked.setdefault(_stage_key("qp_benchmark", point.params), point)
    runner = matrix_task_runner(points[0].params.orchestration)
    single = len(points) == 1 and points[0].name == ""
    matrix = matrix_flow.with_options(task_runner=runner)
    benchmarks = list(benchmarked.values())
    if single:
        all_cells = {"": matrix(points[0].params, points[0].workdir, cell_store=cell_store, reuse_cells=reuse_cells,
                                benchmarks=benchmarks)}
    else:
        all_cells = matrix(points=points, cell_store=cell_store, reuse_cells=reuse_cells, benchmarks=benchmarks)
    for point in points:  # the points that share a benchmark get its outputs
        source = benchmarked[_stage_key("qp_benchmark", point.params)]
        if source is not point:
            _copy_outputs("qp_benchmark", source.workdir, point.workdir)
    done: dict[str, dict[str, Any]] = {}
    for point in points:
        params, workdir = point.params, point.workdir
        compare = _with_orchestration(compare_task, params)(params, workdir)
        headline = _with_orchestration(headline_task, params)(params, workdir)
        report = _with_orchestration(report_task, params)(params, workdir)
        report_path, summary_path = workdir / REPORT_PATH, workdir / SUMMARY_PATH
        suffix = f"-{_artifact_key(point.name)}" if point.name else ""
        if report_path.exists():
            from flows.report_artifact import self_contained_markdown  # figures inlined for the UI

            create_markdown_artifact(self_contained_markdown(report_path), key=f"decision-report{suffix}",
                                     description=f"decision report ({report_path}; figures inlined)")
        if summary_path.exists():
            create_table_artifact(_read_table(summary_path), key=f"results-summary{suffix}",
                                  description=f"results table ({summary_path})")
        done[point.name] = {"cells": all_cells[point.name], "compare": compare, "headline": headline,
                            "report_result": report, "report": report_path, "summary": summary_path}
    return done


@task(name="record_experiment", cache_policy=NO_CACHE, persist_result=False)
def record_experiment_task(workspace: Path, checkout: Path, name: str) -> dict:
    """`dvc commit -f` and `dvc exp save --name <name>` in the run's experiment checkout."""
    from flows import experiments

    logger = get_run_logger()
    if not experiments.is_experiment_checkout(checkout):
        logger.warning("%s is not an experiment checkout (the workspace is not a git repository with a commit): "
                       "not recorded as a DVC experiment", checkout)
        return {"experiment": None}
    recorded = experiments.record(workspace, checkout, name)
    if recorded["experiment"] is None:
        logger.warning("%s not recorded as a DVC experiment: %s", checkout, recorded["missing"])
        return recorded
    if recorded["dvc_status"]:
        logger.warning("dvc status is not clean in %s after dvc commit: %s", checkout,
                       json.dumps(recorded["dvc_status"])[:2000])
    logger.info("recorded as DVC experiment '%s' (%s); `dvc exp show` lists it, `dvc exp apply %s` restores it",
                name, recorded["ref"], name)
    return recorded


# ---------------------------------------------------------------------------------------------
# The flow


@flow(name="train-and-eval", persist_result=False, log_prints=True)
def train_and_eval(overrides: dict[str, Any] | None = None, workspace: str | None = None) -> dict[str, Any]:
    """QP benchmark -> training (algo x seed) -> evaluation -> comparison -> decision report.

    Args:
        overrides: dotted params key -> value, validated like `python -m tasks --set`
            (e.g. {"train.total_steps": 20000}). With overrides the run is a DVC experiment named
            after the flow run: it writes in ``<workspace>/runs/<flow-run-name>/`` (a git worktree
            of HEAD, flows/experiments.py) and leaves the workspace's tracked outputs alone.
        workspace: the DVC workspace holding params.yaml and dvc.yaml (default: this repo).

    Returns paths of the report and the summary table, the per-cell summaries, the workdir and,
    with overrides, the experiment (`dvc exp show` lists it; `dvc exp apply NAME` restores it).
    """
    from flows import experiments

    logger = get_run_logger()
    workspace_dir = Path(workspace).resolve() if workspace else REPO_ROOT
    overrides = dict(overrides or {})
    # Validate everything before any work starts (ParamsError names the key and what is accepted).
    params = load_params(workspace_dir / "params.yaml", overrides)
    # This process computes the QP benchmark, compare and the report, and its environment is what
    # the local Dask workers inherit: it must already run the requested numerics.
    numerics.require(params.numerics.mode)
    if params.orchestration.dvc_push:  # a push that cannot happen is refused before hours of training
        default_remote(workspace_dir)
    run_name = _run_name()
    if overrides:
        workdir = experiments.prepare(workspace_dir, run_name, overrides)
    else:
        workdir = workspace_dir
    logger.info("workdir %s (%s)", workdir, "overrides: " + json.dumps(overrides) if overrides else "tracked outputs")

    with workspace_lock(workdir, flow_run=run_name):
        if overrides:
            from tasks import io

            # Beside the outputs, for readers of the folder; gitignored (.cache/), not in the experiment.
            io.write_json(workdir / ".cache" / "params.json", {"overrides": overrides, "params": params.to_dict()})
        done = run_points([Point("", params, workdir)], cell_store=workspace_dir, reuse_cells=False)[""]
        dvc_status, experiment = None, None
        if overrides:
            experiment = record_experiment_task(workspace_dir, workdir, run_name)
        else:
            dvc_status = dvc_commit_task(workspace_dir)["dvc_status"]
        pushed = None
        if params.orchestration.dvc_push:
            # From the experiment's checkout: its outputs (and the workspace's, one cache) go to the remote.
            pushed = dvc_push_task(workdir if experiment and experiment.get("experiment") else workspace_dir)
    print(f"decision report: {done['report']}")
    if experiment and experiment.get("experiment"):
        print(f"DVC experiment: {run_name} (`dvc exp show`; `dvc exp apply {run_name}` restores it)")
    return {
        "workdir": str(workdir),
        "report": str(done["report"]),
        "summary": str(done["summary"]),
        "cells": done["cells"],
        "compare": done["compare"],
        "headline": done["headline"],
        "report_result": done["report_result"],
        "dvc_status": dvc_status,
        "experiment": experiment,
        "dvc_push": pushed,
    }
